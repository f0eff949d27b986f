// The private extension module fastsoftmax._core. Each concept lives in its own bind_<concept>.cpp
// with a function bind_<concept>(m); CMake generates bind_all.h, which declares and calls them all.
#include <pybind11/pybind11.h>

#include "bind_all.h"
#include "fastsoftmax/common.h"

PYBIND11_MODULE(_core, m) {
  m.doc() = "fastsoftmax C++ core (private; use the fastsoftmax package)";
  m.attr("__version__") = FASTSOFTMAX_VERSION;
  pybind11::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const fastsoftmax::Interrupted&) {
      PyErr_SetNone(PyExc_KeyboardInterrupt);
    }
  });
  using namespace fastsoftmax::py;
  FASTSOFTMAX_BIND_ALL(m);
}
