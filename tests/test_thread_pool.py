import os
import signal
import threading
import time

import pytest

import fastsoftmax as fs

core = fs._core


@pytest.mark.parametrize("num_threads", [1, 2, 3, 0])
@pytest.mark.parametrize("n_tasks", [0, 1, 2, 17, 1000])
def test_parallel_for_runs_every_task_once(num_threads, n_tasks):
    assert core._testing.parallel_sum(n_tasks, num_threads) == sum(t * t for t in range(n_tasks))


@pytest.mark.parametrize("num_threads", [1, 2, 4])
def test_worker_exception_surfaces_in_python(num_threads):
    with pytest.raises(RuntimeError, match="task 37 failed on purpose"):
        core._testing.parallel_sum(200, num_threads, fail_task=37)
    # The pool is still usable afterwards.
    assert core._testing.parallel_sum(10, num_threads) == 285


def test_concurrent_callers_share_the_pool():
    results = []

    def call():
        results.append(core._testing.parallel_sum(500, 2, sleep_seconds=0.0001))

    threads = [threading.Thread(target=call) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [sum(t * t for t in range(500))] * 6


def test_num_threads_resolution():
    assert core.resolve_num_threads(0) == (os.cpu_count() or 1)
    assert core.resolve_num_threads(3) == 3
    with pytest.raises(ValueError, match="num_threads"):
        core.resolve_num_threads(-1)


@pytest.mark.parametrize("num_threads", [1, 2])
def test_ctrl_c_interrupts_a_parallel_loop(num_threads):
    """SIGINT during a long GIL-free loop raises KeyboardInterrupt within about a second."""
    timer = threading.Timer(0.3, os.kill, args=(os.getpid(), signal.SIGINT))
    start = time.monotonic()
    timer.start()
    with pytest.raises(KeyboardInterrupt):
        core._testing.parallel_sum(1000, num_threads, sleep_seconds=0.05)  # ~25-50 s if not stopped
    assert time.monotonic() - start < 2.0
    timer.join()
