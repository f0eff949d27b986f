#include <chrono>
#include <stdexcept>
#include <thread>
#include <vector>

#include "binding_utils.h"
#include "fastsoftmax/thread_pool.h"

namespace fastsoftmax::py {

void bind_thread_pool(pyb::module_& m) {
  m.def("resolve_num_threads", &resolve_num_threads, pyb::arg("num_threads"),
        "Number of threads used for num_threads (0 = all cores).");
  testing_module(m).def(
      "parallel_sum",
      [](std::int64_t n_tasks, int num_threads, std::int64_t fail_task, double sleep_seconds) {
        if (n_tasks < 0) throw std::invalid_argument("n_tasks: expected >= 0");
        std::vector<std::int64_t> per_task(static_cast<std::size_t>(n_tasks), 0);
        {
          ReleaseGil release;
          parallel_for(n_tasks, num_threads, [&](std::int64_t task, int) {
            if (sleep_seconds > 0) {
              std::this_thread::sleep_for(std::chrono::duration<double>(sleep_seconds));
            }
            if (task == fail_task) {
              throw std::runtime_error(str_cat("task ", task, " failed on purpose"));
            }
            per_task[task] = task * task;
          });
        }
        std::int64_t total = 0;
        for (const auto v : per_task) total += v;
        return total;
      },
      pyb::arg("n_tasks"), pyb::arg("num_threads"), pyb::arg("fail_task") = -1,
      pyb::arg("sleep_seconds") = 0.0,
      "Test hook: sum of task**2 over a parallel_for; task `fail_task` throws in its worker.");
}

}  // namespace fastsoftmax::py
