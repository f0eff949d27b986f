#pragma once
// One process-wide pool of std::threads and a parallel_for over a fixed number of tasks.
//
// * `num_threads = 0` means all cores (std::thread::hardware_concurrency()); negative is an error.
// * Tasks are indices 0..n_tasks-1 fixed by the caller, never by the thread count: results that are
//   computed per task and combined in task order are identical for every thread count.
// * The calling thread takes part in the work; concurrent callers (several Python threads with the
//   GIL released) share the pool safely, and a task may itself call parallel_for.
// * The first exception thrown by a task is caught, the remaining tasks are skipped, and the
//   exception is re-thrown in the caller once every started task has finished.
// * While it waits, the caller polls the interrupt checker installed for its thread (see
//   InterruptScope); a pending interrupt cancels the remaining tasks and throws Interrupted.

#include <cstdint>
#include <functional>

namespace fastsoftmax {

/// Resolves a user-facing thread count: 0 -> all cores; < 0 -> std::invalid_argument.
int resolve_num_threads(int num_threads);

/// Task body: `task` in [0, n_tasks), `slot` in [0, threads used) identifies the running thread
/// for per-thread scratch memory (which slot runs which task is not deterministic).
using TaskFn = std::function<void(std::int64_t task, int slot)>;

/// Runs fn(task, slot) for every task in [0, n_tasks) on at most `num_threads` threads (after
/// resolve_num_threads). Runs inline on the caller when one thread or one task suffices.
void parallel_for(std::int64_t n_tasks, int num_threads, const TaskFn& fn);

/// Tasks of per_task items each that cover n items (the last one may be short).
inline std::int64_t n_tasks(std::int64_t n, std::int64_t per_task) {
  return (n + per_task - 1) / per_task;
}

/// Number of threads parallel_for would use for these arguments (an upper bound on `slot` + 1).
int threads_for(std::int64_t n_tasks, int num_threads);

/// Installs, for the lifetime of the object, a function that the current thread calls every
/// ~50 ms inside long computations; returning true requests cancellation (Ctrl-C).
class InterruptScope {
 public:
  explicit InterruptScope(std::function<bool()> checker);
  ~InterruptScope();
  InterruptScope(const InterruptScope&) = delete;
  InterruptScope& operator=(const InterruptScope&) = delete;

 private:
  std::function<bool()>* previous_;
  std::function<bool()> checker_;
};

/// Polls the current thread's interrupt checker (rate-limited); throws Interrupted if it fires.
/// Cheap enough to call between batches or rows of a long serial loop.
void check_interrupt();

}  // namespace fastsoftmax
