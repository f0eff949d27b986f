"""Ctrl-C: a SIGINT sent from another thread during a long fit raises KeyboardInterrupt promptly
and leaves the model usable."""

from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest
import scipy.sparse as sp

import fastsoftmax as fs

pytestmark = pytest.mark.skipif(
    threading.current_thread() is not threading.main_thread() or os.name != "posix",
    reason="needs SIGINT delivered to the main thread",
)

# Liveness bound, not a performance check: without polling the fits below would run for minutes.
MAX_LATENCY = 10.0
DELAY = 0.5


def _interrupt_after(delay: float) -> tuple[threading.Timer, list[float]]:
    sent: list[float] = []

    def fire() -> None:
        sent.append(time.perf_counter())
        os.kill(os.getpid(), signal.SIGINT)

    timer = threading.Timer(delay, fire)
    timer.start()
    return timer, sent


@pytest.mark.parametrize(
    ("solver", "num_threads", "after_first_iteration"),
    [("cholesky", 1, False), ("cg", 2, True)],
)
def test_ctrl_c_during_wals_fit(solver, num_threads, after_first_iteration):
    """SIGINT in the first iteration, or (timer started by the callback) in a later one."""
    rng = np.random.default_rng(0)
    nnz = 900_000
    a = sp.csr_matrix(
        (np.ones(nnz, np.float32), (rng.integers(0, 30_000, nnz), rng.integers(0, 3_000, nnz))),
        shape=(30_000, 3_000),
    )
    a.data[:] = 1
    snapshots: list[tuple[np.ndarray, np.ndarray]] = []
    timers: list[tuple[threading.Timer, list[float]]] = []

    def callback(it, model, logs):
        snapshots.append((model.query_embeddings().copy(), model.item_embeddings.copy()))
        if not timers:
            timers.append(_interrupt_after(0.3))

    model = fs.WALS(48, iterations=100_000, solver=solver, num_threads=num_threads, seed=1)
    if not after_first_iteration:
        half_sweep = model._half_sweep

        def start_timer_then_sweep(*args, **kwargs):  # fires inside the first C++ half-sweep
            if not timers:
                timers.append(_interrupt_after(0.2))
            return half_sweep(*args, **kwargs)

        model._half_sweep = start_timer_then_sweep
    try:
        with pytest.raises(KeyboardInterrupt):
            model.fit(a, show_progress=False, callback=callback)
        latency = time.perf_counter() - timers[0][1][0]
    finally:
        for timer, _ in timers:
            timer.cancel()
    assert latency < MAX_LATENCY
    # The model holds the last completed iteration, exactly, and still works.
    assert len(model.loss_history) == len(snapshots)
    if after_first_iteration:
        assert snapshots
    u, v = model.query_embeddings(), model.item_embeddings
    assert np.isfinite(u).all() and np.isfinite(v).all()
    if snapshots:
        np.testing.assert_array_equal(u, snapshots[-1][0])
        np.testing.assert_array_equal(v, snapshots[-1][1])
    else:  # no iteration completed: the initial embeddings, untouched by the partial sweep
        assert np.abs(u).max() < 0.1 and np.abs(v).max() < 0.1
    folded = model.fold_in(a[:5])
    assert folded.shape == (5, 48) and np.isfinite(folded).all()
    ids, _ = model.recommend(np.arange(5), k=3)
    assert (ids >= 0).all()


def test_ctrl_c_during_softmax_fit():
    data = fs.datasets.make_categories(20_000, 5_000, 10, seed=0)
    model = fs.SoftmaxModel(
        data.n_items, hidden=(64,), dim=32, loss="full", epochs=10_000, batch_size=512, seed=0
    )
    epochs: list[int] = []
    timer, sent = _interrupt_after(DELAY)
    try:
        with pytest.raises(KeyboardInterrupt):
            model.fit(
                data.features,
                data.interactions,
                show_progress=False,
                callback=lambda e, m, logs: epochs.append(e),
            )
        latency = time.perf_counter() - sent[0]
    finally:
        timer.cancel()
    assert latency < MAX_LATENCY
    assert len(model.training_log) == len(epochs)
    for name, value in model.parameters.items():
        assert np.isfinite(value).all(), name
    ids, scores = model.recommend(data.features.take(np.arange(5)), k=5)
    assert ids.shape == (5, 5) and (ids >= 0).all() and np.isfinite(scores).all()
    # Training can continue after the interrupt.
    small = np.arange(256)
    model.epochs = 1
    model.fit(data.features.take(small), data.interactions[small], show_progress=False)
    assert np.isfinite(model.item_embeddings).all()
