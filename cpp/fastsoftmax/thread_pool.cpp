#include "fastsoftmax/thread_pool.h"

#include <pthread.h>

#include <algorithm>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <exception>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

#include "fastsoftmax/common.h"

namespace fastsoftmax {
namespace {

using Clock = std::chrono::steady_clock;
constexpr auto kPollInterval = std::chrono::milliseconds(50);
// A worker that runs out of work, and a caller waiting for its job's last tasks, first spin this
// long before blocking on a condition variable: a training step issues dozens of short parallel
// regions, and a futex wake-up costs tens of microseconds (more in a VM) every time.
constexpr auto kSpin = std::chrono::microseconds(200);

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#endif
}

// Spins until ready() or kSpin has passed; returns ready().
template <class Ready>
bool spin_until(const Ready& ready) {
  const auto stop = Clock::now() + kSpin;
  for (int i = 1;; ++i) {
    if (ready()) return true;
    cpu_relax();
    if ((i & 63) == 0 && Clock::now() >= stop) return ready();
  }
}

thread_local std::function<bool()>* tl_checker = nullptr;
thread_local Clock::time_point tl_last_poll{};

// Polls the current thread's checker at most every kPollInterval; true if an interrupt is pending.
bool poll_interrupt() {
  if (tl_checker == nullptr) return false;
  const auto now = Clock::now();
  if (now - tl_last_poll < kPollInterval) return false;
  tl_last_poll = now;
  return (*tl_checker)();
}

struct Job {
  Job(std::int64_t n, int slots, const TaskFn* f) : n_tasks(n), max_slots(slots), fn(f) {}
  const std::int64_t n_tasks;
  const int max_slots;
  const TaskFn* fn;  // owned by the caller, who outlives every call through it
  std::atomic<std::int64_t> next_task{0};
  std::atomic<int> next_slot{0};
  std::atomic<bool> cancelled{false};
  bool interrupted = false;  // written by the caller only
  std::mutex mu;
  std::condition_variable cv;
  std::int64_t done = 0;       // guarded by mu
  std::atomic<std::int64_t> done_spin{0};  // a copy of done for the caller's spin-wait
  std::exception_ptr error;    // guarded by mu
};

// Claims and runs tasks of `job` until none are left. The caller's copy also polls for Ctrl-C.
void work_on(Job& job, bool is_caller) {
  const int slot = job.next_slot.fetch_add(1);
  if (slot >= job.max_slots) return;
  std::int64_t finished = 0;
  for (;;) {
    const std::int64_t task = job.next_task.fetch_add(1);
    if (task >= job.n_tasks) break;
    if (!job.cancelled.load(std::memory_order_relaxed)) {
      try {
        (*job.fn)(task, slot);
      } catch (...) {
        std::lock_guard<std::mutex> lock(job.mu);
        if (!job.error) job.error = std::current_exception();
        job.cancelled.store(true);
      }
      if (is_caller && poll_interrupt()) {
        job.interrupted = true;
        job.cancelled.store(true);
      }
    }
    ++finished;
  }
  if (finished > 0) {
    std::lock_guard<std::mutex> lock(job.mu);
    job.done += finished;
    job.done_spin.store(job.done, std::memory_order_release);
    if (job.done == job.n_tasks) job.cv.notify_all();
  }
}

class Pool {
 public:
  void ensure_workers(int n) {
    std::lock_guard<std::mutex> lock(mu_);
    while (static_cast<int>(workers_.size()) < n) workers_.emplace_back([this] { loop(); });
  }

  void post(const std::shared_ptr<Job>& job, int copies) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (int i = 0; i < copies; ++i) queue_.push_back(job);
      queued_.fetch_add(copies, std::memory_order_release);
    }
    if (copies == 1) {
      cv_.notify_one();
    } else {
      cv_.notify_all();
    }
  }

 private:
  void loop() {
    for (;;) {
      std::shared_ptr<Job> job;
      spin_until([this] { return queued_.load(std::memory_order_acquire) > 0; });
      {
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait(lock, [this] { return !queue_.empty(); });
        job = std::move(queue_.front());
        queue_.pop_front();
        queued_.fetch_sub(1, std::memory_order_relaxed);
      }
      work_on(*job, false);
    }
  }

  std::mutex mu_;
  std::condition_variable cv_;
  std::deque<std::shared_ptr<Job>> queue_;
  std::atomic<int> queued_{0};  // queue_.size(), readable without the lock
  std::vector<std::thread> workers_;
};

// The pool is deliberately leaked: joining threads during interpreter shutdown is fragile. After a
// fork() the child has none of the parent's threads, so it starts a fresh pool.
Pool* g_pool = nullptr;
std::once_flag g_pool_once;

void reset_pool_after_fork() { g_pool = new Pool(); }

Pool& pool() {
  std::call_once(g_pool_once, [] {
    g_pool = new Pool();
    pthread_atfork(nullptr, nullptr, reset_pool_after_fork);
  });
  return *g_pool;
}

}  // namespace

int resolve_num_threads(int num_threads) {
  if (num_threads < 0) {
    throw_invalid("num_threads: expected an integer >= 0 (0 = all cores), got ", num_threads);
  }
  if (num_threads == 0) {
    // Asked once: hardware_concurrency() reads /sys on Linux (~10 us, as long as a small search).
    static const int cores = [] {
      const unsigned hw = std::thread::hardware_concurrency();
      return hw == 0 ? 1 : static_cast<int>(hw);
    }();
    return cores;
  }
  return num_threads;
}

int threads_for(std::int64_t n_tasks, int num_threads) {
  const int t = resolve_num_threads(num_threads);
  if (n_tasks <= 1) return 1;
  return static_cast<int>(std::min<std::int64_t>(t, n_tasks));
}

void parallel_for(std::int64_t n_tasks, int num_threads, const TaskFn& fn) {
  const int threads = threads_for(n_tasks, num_threads);
  if (n_tasks <= 0) return;
  if (threads == 1) {
    for (std::int64_t t = 0; t < n_tasks; ++t) {
      fn(t, 0);
      if (poll_interrupt()) throw Interrupted();
    }
    return;
  }
  auto job = std::make_shared<Job>(n_tasks, threads, &fn);
  Pool& p = pool();
  p.ensure_workers(threads - 1);
  p.post(job, threads - 1);
  work_on(*job, true);
  spin_until([&] { return job->done_spin.load(std::memory_order_acquire) >= job->n_tasks; });
  {
    std::unique_lock<std::mutex> lock(job->mu);
    while (job->done < job->n_tasks) {
      job->cv.wait_for(lock, kPollInterval);
      if (job->done < job->n_tasks && !job->interrupted) {
        lock.unlock();
        if (poll_interrupt()) {
          job->interrupted = true;
          job->cancelled.store(true);
        }
        lock.lock();
      }
    }
  }
  if (job->error) std::rethrow_exception(job->error);
  if (job->interrupted) throw Interrupted();
}

InterruptScope::InterruptScope(std::function<bool()> checker)
    : previous_(tl_checker), checker_(std::move(checker)) {
  tl_checker = &checker_;
  tl_last_poll = Clock::now();
}

InterruptScope::~InterruptScope() { tl_checker = previous_; }

void check_interrupt() {
  if (poll_interrupt()) throw Interrupted();
}

}  // namespace fastsoftmax
