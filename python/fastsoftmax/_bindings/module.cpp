// The private extension module fastsoftmax._core (one build per level). Each concept lives in its own bind_<concept>.cpp
// with a function bind_<concept>(m); CMake generates bind_all.h, which declares and calls them all.
#include <pybind11/pybind11.h>

#include "bind_all.h"
#include "fastsoftmax/common.h"

// Built once per instruction-set level as fastsoftmax._core_<level> (CMakeLists.txt);
// fastsoftmax/_core.py loads one of them under the name fastsoftmax._core.
PYBIND11_MODULE(FASTSOFTMAX_MODULE, m) {
  m.doc() = "fastsoftmax C++ core (private; use the fastsoftmax package)";
  m.attr("__version__") = FASTSOFTMAX_VERSION;
  m.attr("kernel_level") = FASTSOFTMAX_LEVEL;
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
