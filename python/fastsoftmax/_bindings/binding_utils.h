#pragma once
// Helpers shared by the bind_<concept>.cpp files: strict array checks with messages that name the
// argument, and a GIL release that keeps Ctrl-C working. Bindings convert and check; they do no maths.

#include <Python.h>
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cstdint>
#include <string>

#include "fastsoftmax/common.h"
#include "fastsoftmax/thread_pool.h"

namespace fastsoftmax::py {

namespace pyb = pybind11;

template <class T>
const char* dtype_name();
template <> inline const char* dtype_name<float>() { return "float32"; }
template <> inline const char* dtype_name<double>() { return "float64"; }
template <> inline const char* dtype_name<std::int32_t>() { return "int32"; }
template <> inline const char* dtype_name<std::int64_t>() { return "int64"; }

/// Returns `obj` as a C-contiguous array of T with `ndim` dimensions (ndim < 0: any), without
/// copying. Throws TypeError for a non-array or a different dtype, ValueError for a wrong ndim or
/// a non-contiguous array. The Python layer converts user input before it gets here.
template <class T>
pyb::array_t<T, pyb::array::c_style> require_array(pyb::handle obj, const char* name, int ndim) {
  if (!pyb::isinstance<pyb::array>(obj)) {
    throw pyb::type_error(str_cat(name, ": expected a numpy.ndarray, got ",
                                  std::string(pyb::str(pyb::type::handle_of(obj).attr("__name__")))));
  }
  auto arr = pyb::reinterpret_borrow<pyb::array>(obj);
  // equal(), not is(): an unpickled array (multiprocessing, Dask) has an equal dtype object that
  // is not numpy's cached one. Byte-swapped dtypes are not equal and still rejected.
  if (!arr.dtype().equal(pyb::dtype::of<T>())) {
    throw pyb::type_error(str_cat(name, ": expected dtype ", dtype_name<T>(), ", got ",
                                  std::string(pyb::str(arr.dtype()))));
  }
  if (ndim >= 0 && arr.ndim() != ndim) {
    throw std::invalid_argument(
        str_cat(name, ": expected a ", ndim, "-D array, got ", arr.ndim(), " dimension(s)"));
  }
  if (!(arr.flags() & pyb::array::c_style)) {
    throw std::invalid_argument(str_cat(name, ": expected a C-contiguous array"));
  }
  return pyb::reinterpret_borrow<pyb::array_t<T, pyb::array::c_style>>(arr);
}

/// Releases the GIL for the duration of a long call and lets the core poll for Ctrl-C: the
/// checker briefly re-acquires the GIL and runs Python's signal handlers; a pending
/// KeyboardInterrupt cancels the computation, which then raises Interrupted -> KeyboardInterrupt.
class ReleaseGil {
 public:
  ReleaseGil()
      : scope_([] {
          pyb::gil_scoped_acquire acquire;
          if (PyErr_CheckSignals() != 0) {
            PyErr_Clear();
            return true;
          }
          return false;
        }) {}

 private:
  InterruptScope scope_;            // constructed first, removed last
  pyb::gil_scoped_release release_;  // released last, re-acquired first
};

/// The submodule _core._testing, which holds the hooks the tests call (not part of the API).
inline pyb::module_ testing_module(pyb::module_& m) {
  if (pyb::hasattr(m, "_testing")) return m.attr("_testing").cast<pyb::module_>();
  return m.def_submodule("_testing", "Test hooks of fastsoftmax (not part of the API).");
}

}  // namespace fastsoftmax::py
