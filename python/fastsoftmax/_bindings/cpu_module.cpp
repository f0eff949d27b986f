// fastsoftmax._cpu: which instruction-set levels this CPU runs. Compiled with the baseline flags
// and independent of the core, so the loader (fastsoftmax/_core.py) can import it on any CPU
// before it chooses a build of the core.
#include <pybind11/pybind11.h>

#include <string>

namespace {

bool supports(const std::string& level) {
#if defined(__x86_64__) || defined(_M_X64)
  // The levels are the x86-64 micro-architecture levels the builds are compiled for.
  __builtin_cpu_init();
  if (level == "generic") return __builtin_cpu_supports("x86-64-v2");
  if (level == "avx2") return __builtin_cpu_supports("x86-64-v3");
  if (level == "avx512") return __builtin_cpu_supports("x86-64-v4");
  return false;
#else
  return level == "generic";
#endif
}

}  // namespace

PYBIND11_MODULE(_cpu, m) {
  m.doc() = "CPU feature detection for the fastsoftmax loader (private)";
  m.def("supports", &supports, pybind11::arg("level"),
        "Whether this CPU runs the instructions of `level` (generic, avx2, avx512).");
}
