"""fastsoftmax.distributed.DaskWALS on a real LocalCluster (2 worker processes)."""

import itertools
import os
import signal
import threading

import numpy as np
import pytest
import scipy.sparse as sp

import fastsoftmax as fs

distributed = pytest.importorskip("distributed")
da = pytest.importorskip("dask.array")

from fastsoftmax.distributed import DaskWALS  # noqa: E402


@pytest.fixture(scope="module")
def client():
    import dask

    # Strict placement (see DaskWALS, "Placement"): the traffic test counts bytes per worker.
    with (
        dask.config.set({"distributed.scheduler.work-stealing": False}),
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",  # a free port: other runs may hold 8787
            worker_dashboard_address=None,
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


def make_problem(n=60, m=45, density=0.12, seed=0, empty_rows=(3, 17), empty_cols=(5,)):
    """Random targets and weights (CSR, float32) with a few empty rows and columns."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n, m)) < density
    mask[list(empty_rows), :] = False
    mask[:, list(empty_cols)] = False
    a = sp.csr_matrix(np.where(mask, rng.random((n, m)) + 0.5, 0.0).astype(np.float32))
    w = a.copy()
    w.data = (rng.random(a.nnz) * 3).astype(np.float32)
    return a, w


def assert_same_model(dist, local, atol=2e-6):
    np.testing.assert_allclose(dist.query_embeddings(), local.query_embeddings(), rtol=0, atol=atol)
    np.testing.assert_allclose(dist.item_embeddings, local.item_embeddings, rtol=0, atol=atol)
    np.testing.assert_allclose(dist.loss_history, local.loss_history, rtol=1e-6)


# -- same results as fs.WALS --------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["cg", "cholesky"])
@pytest.mark.parametrize(
    ("shape", "blocks"), [((60, 45), (3, 2)), ((2300, 700), (2, 2)), ((60, 45), (1, 1))]
)
def test_same_embeddings_as_single_machine(client, solver, shape, blocks):
    density = 0.12 if shape[0] < 100 else 0.01
    a, w = make_problem(*shape, density=density, seed=shape[0])
    kw = dict(dim=6, unobserved_weight=0.2, regularization=0.1, iterations=3, solver=solver, seed=7)
    local = fs.WALS(**kw).fit(a, w, show_progress=False)
    dist = DaskWALS(client, num_row_blocks=blocks[0], num_col_blocks=blocks[1], **kw)
    dist.fit(a, w, show_progress=False)
    assert len(dist.row_bounds_) == blocks[0] + 1 and len(dist.col_bounds_) == blocks[1] + 1
    assert dist.query_embeddings().dtype == np.float32
    assert dist.query_embeddings().shape == (shape[0], 6)
    assert_same_model(dist, local)
    # Empty rows and columns get the exact solution 0, as on one machine.
    assert not dist.query_embeddings()[[3, 17]].any() and not dist.item_embeddings[5].any()


def test_blocks_start_at_gramian_chunks_when_large():
    from fastsoftmax import _core
    from fastsoftmax.distributed import _partition, _unit

    chunk = _core.wals_gramian_chunk
    assert _unit(2300, 2) == chunk and _unit(2300, 3) == 1
    bounds = _partition(np.full(3, 10.0), chunk, 2300, 2, 4)
    assert bounds[0] == 0 and bounds[-1] == 2300 and bounds[1] % chunk == 0
    # Balanced by entries: a heavy first unit gets a block of its own.
    assert list(_partition(np.array([100.0, 1, 1, 1]), 1, 4, 2, 0)) == [0, 1, 4]
    # Every block non-empty even when the cost is all in one place (which gets its own block).
    assert list(_partition(np.array([0.0, 0, 0, 50]), 1, 4, 3, 0)) == [0, 2, 3, 4]


def test_futures_and_dask_array_inputs(client):
    a, w = make_problem(n=70, m=40, seed=2)
    kw = dict(dim=5, iterations=3, seed=1)
    local = fs.WALS(**kw).fit(a, w, show_progress=False)
    cuts = [0, 25, 26, 70]  # uneven row blocks, one of a single row
    fa = [client.scatter(a[lo:hi].tocoo()) for lo, hi in itertools.pairwise(cuts)]
    fw = [client.scatter(w[lo:hi]) for lo, hi in itertools.pairwise(cuts)]
    dist = DaskWALS(client, **kw).fit(fa, fw, show_progress=False)
    assert list(dist.row_bounds_) == cuts
    assert_same_model(dist, local)
    # A dask array of scipy.sparse chunks: one row block per row of chunks.
    xa = da.from_array(a, chunks=(30, 15), asarray=False)
    xw = da.from_array(w, chunks=(30, 15), asarray=False)
    dist = DaskWALS(client, **kw).fit(xa, xw, show_progress=False)
    assert list(dist.row_bounds_) == [0, 30, 60, 70]
    assert_same_model(dist, local)
    # Without weights (all 1).
    local1 = fs.WALS(**kw).fit(a, show_progress=False)
    assert_same_model(DaskWALS(client, **kw).fit(xa, show_progress=False), local1)


def test_to_model_is_a_plain_wals(client, tmp_path):
    a, w = make_problem(seed=3)
    kw = dict(dim=4, unobserved_weight=0.3, regularization=0.2, iterations=2, solver="cholesky")
    dist = DaskWALS(client, **kw, seed=5).fit(a, w, show_progress=False)
    model = dist.to_model()
    assert isinstance(model, fs.WALS)
    assert (model.dim, model.solver, model.seed, model.regularization) == (4, "cholesky", 5, 0.2)
    np.testing.assert_array_equal(model.item_embeddings, dist.item_embeddings)
    assert model.loss_history == dist.loss_history
    assert model.objective(a, w) == pytest.approx(dist.loss_history[-1], rel=1e-6)
    local = fs.WALS(**kw, seed=5).fit(a, w, show_progress=False)
    np.testing.assert_allclose(model.fold_in(a[:4], w[:4]), local.fold_in(a[:4], w[:4]), atol=2e-6)
    model.save(tmp_path / "m.npz")
    np.testing.assert_array_equal(
        fs.load(tmp_path / "m.npz").query_embeddings(), model.query_embeddings()
    )


def test_callback_and_progress(client, capsys):
    a, _ = make_problem(seed=4)
    seen = []

    def callback(iteration, model, logs):
        seen.append((iteration, len(model.loss_history), model.query_embeddings().copy()))
        assert logs == model.training_log[-1]
        return iteration >= 1

    dist = DaskWALS(client, 3, iterations=5).fit(a, callback=callback)
    assert [s[:2] for s in seen] == [(0, 1), (1, 2)] and len(dist.loss_history) == 2
    np.testing.assert_array_equal(seen[-1][2], dist.query_embeddings())
    assert not np.array_equal(seen[0][2], seen[1][2])
    assert "DaskWALS" in capsys.readouterr().err


# -- every block receives only the factor rows it needs -----------------------------------------


def grouped_problem(rows_per_group=300, items_per_group=1000, per_item=3, cross=400, seed=0):
    """Two groups of queries and items that interact within their group (every item with
    ``per_item`` queries), plus one query of group 0 for each of the first ``cross`` items of
    group 1. The first ``cross`` items of group 0 get one more query of their own group, so that
    both groups of items have the same number of entries."""
    rng = np.random.default_rng(seed)
    n, m = 2 * rows_per_group, 2 * items_per_group
    rows, cols = [], []
    for j in range(m):
        g = j // items_per_group
        k = per_item + (g == 0 and j < cross)
        rows.extend(rng.choice(rows_per_group, k, replace=False) + g * rows_per_group)
        cols.extend([j] * k)
    for j in range(items_per_group, items_per_group + cross):  # the cross-group entries
        rows.append(rng.integers(rows_per_group))
        cols.append(j)
    return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n, m))


def test_each_block_receives_only_the_rows_it_touches(client):
    a = grouped_problem()
    n, m = a.shape
    dim = 16
    workers = sorted(client.scheduler_info()["workers"])
    assert len(workers) == 2
    half = n // 2
    blocks = [
        client.scatter(a[:half], workers=[workers[0]]),
        client.scatter(a[half:], workers=[workers[1]]),
    ]
    totals = []

    def bytes_sent(dask_worker):
        return dask_worker.transfer_outgoing_bytes_total

    def record(iteration, model, logs):
        totals.append(sum(client.run(bytes_sent).values()))

    dist = DaskWALS(client, dim, iterations=4, num_col_blocks=2)
    dist.fit(blocks, show_progress=False, callback=record)
    rb, cb = dist.row_bounds_, dist.col_bounds_
    assert list(rb) == [0, half, n] and list(cb) == [0, m // 2, m]  # items balanced exactly

    # What each block needs: the distinct fixed-side rows its non-zeros touch.
    csc = a.tocsc()
    need_q = [len(np.unique(a[rb[b] : rb[b + 1]].indices)) for b in range(2)]
    need_i = [len(np.unique(csc[:, cb[c] : cb[c + 1]].indices)) for c in range(2)]
    np.testing.assert_array_equal(dist.received_rows_["query_blocks"], need_q)
    np.testing.assert_array_equal(dist.received_rows_["item_blocks"], need_i)
    assert need_q == [m // 2 + 400, m // 2]  # not all m item rows
    assert need_i[0] == n // 2 and n // 2 < need_i[1] < n

    # Bytes between workers in one iteration: the pieces that cross (column block b is built
    # where row block b is), plus at most a few d x d Gramians and scheduling messages.
    cross_q = len(np.unique(a[:half, m // 2 :].indices))  # row block 0 <- column block 1
    cross_i = len(np.unique(csc[:, : m // 2][half:].indices))  # item block 0 <- row block 1
    cross_i += len(np.unique(csc[:, m // 2 :][:half].indices))  # item block 1 <- row block 0
    assert cross_q == 400 and cross_i > 0
    expected = (cross_q + cross_i) * dim * 4
    per_iteration = np.diff(totals)[1:]  # after the first iteration's one-time moves
    assert (per_iteration >= expected).all(), (per_iteration, expected)
    assert (per_iteration <= expected + 24_000).all(), (per_iteration, expected)
    # Far less than a broadcast: every block would get the other worker's whole factor block.
    assert per_iteration.max() < (m + n) * dim * 4 / 2


# -- bad input ----------------------------------------------------------------------------------


def test_bad_arguments(client):
    a, w = make_problem()
    with pytest.raises(TypeError, match="client.*distributed.Client"):
        DaskWALS("tcp://127.0.0.1:8786")
    for kwargs, exc, match in [
        ({"dim": 0}, ValueError, "dim"),
        ({"regularization": -1}, ValueError, "regularization"),
        ({"solver": "lu"}, ValueError, "solver"),
        ({"num_row_blocks": 0}, ValueError, "num_row_blocks"),
        ({"num_col_blocks": 1.5}, TypeError, "num_col_blocks"),
        ({"seed": -1}, ValueError, "seed"),
    ]:
        with pytest.raises(exc, match=match):
            DaskWALS(client, **kwargs)
    mf = DaskWALS(client, 3, iterations=1)
    with pytest.raises(RuntimeError, match="not fitted"):
        _ = mf.query_embeddings()
    with pytest.raises(RuntimeError, match="not fitted"):
        mf.to_model()
    with pytest.raises(TypeError, match="interactions.*scipy.sparse"):
        mf.fit(a.toarray(), show_progress=False)
    with pytest.raises(TypeError, match="interactions.*list of distributed.Future"):
        mf.fit([a], show_progress=False)
    with pytest.raises(ValueError, match="weights.*sparsity"):
        mf.fit(a, sp.csr_matrix(a.shape, dtype=np.float32), show_progress=False)
    with pytest.raises(ValueError, match="num_row_blocks.*at most 60"):
        DaskWALS(client, 3, num_row_blocks=61).fit(a, show_progress=False)
    with pytest.raises(ValueError, match="num_col_blocks.*at most 45"):
        DaskWALS(client, 3, num_col_blocks=46).fit(a, show_progress=False)
    with pytest.raises(ValueError, match="interactions.*at least one"):
        mf.fit(sp.csr_matrix((0, 5), dtype=np.float32), show_progress=False)
    # Blocks on the cluster are checked there, with the same messages.
    bad = a[:30].copy()
    bad.data[0] = np.nan
    with pytest.raises(ValueError, match="interactions.*finite"):
        mf.fit([client.scatter(bad), client.scatter(a[30:])], show_progress=False)
    with pytest.raises(ValueError, match="row block 1 has 44 columns, expected 45"):
        mf.fit([client.scatter(a[:30]), client.scatter(a[30:, :-1])], show_progress=False)
    with pytest.raises(ValueError, match="weights.*list of 2 futures"):
        mf.fit([client.scatter(a[:30]), client.scatter(a[30:])], [w], show_progress=False)
    with pytest.raises(ValueError, match="num_row_blocks.*2 row blocks"):
        DaskWALS(client, 3, num_row_blocks=3).fit(
            [client.scatter(a[:30]), client.scatter(a[30:])], show_progress=False
        )
    xa = da.from_array(a, chunks=(30, 45), asarray=False)
    with pytest.raises(ValueError, match="weights.*chunks"):
        mf.fit(xa, da.from_array(w, chunks=(20, 45), asarray=False), show_progress=False)
    with pytest.raises(TypeError, match="interactions.*scipy.sparse"):
        mf.fit(da.ones((10, 10), chunks=5), show_progress=False)
    # A Cholesky failure on a worker is the single-machine RuntimeError with its hint.
    chol = DaskWALS(client, 3, regularization=0.0, init_scale=0.0, solver="cholesky", iterations=1)
    with pytest.raises(RuntimeError, match="not positive definite.*increase regularization"):
        chol.fit(a, show_progress=False)


# -- a worker killed mid-fit --------------------------------------------------------------------


@pytest.fixture
def watchdog():
    """Turn a hang (e.g. a worker that never comes back) into an interrupted run after 300 s."""
    import _thread

    timer = threading.Timer(300, _thread.interrupt_main)
    timer.start()
    yield
    timer.cancel()


def kill_worker(client, address):
    pid = client.run(os.getpid, workers=[address])[address]
    os.kill(pid, signal.SIGKILL)


def test_killed_workers_are_recomputed_from_the_inputs(client, watchdog):
    """One worker killed between two iterations, another while an iteration runs: Dask
    recomputes what they held and the fit ends with exactly the undisturbed embeddings."""
    client.wait_for_workers(2, timeout=120)
    a, w = make_problem(n=400, m=300, density=0.03, seed=5, empty_rows=(), empty_cols=())
    kw = dict(dim=8, iterations=5, seed=3)
    ref = DaskWALS(client, **kw).fit(a, w, show_progress=False)
    timer = None

    def callback(iteration, model, logs):
        nonlocal timer
        workers = sorted(client.scheduler_info()["workers"])
        if iteration == 0:  # between two iterations
            kill_worker(client, workers[0])
        elif iteration == 2:  # while iteration 3 runs
            timer = threading.Timer(0.02, kill_worker, args=(client, workers[-1]))
            timer.start()

    got = DaskWALS(client, **kw).fit(a, w, show_progress=False, callback=callback)
    timer.join()
    np.testing.assert_array_equal(got.query_embeddings(), ref.query_embeddings())
    np.testing.assert_array_equal(got.item_embeddings, ref.item_embeddings)
    assert got.loss_history == ref.loss_history
    assert_same_model(got, fs.WALS(**kw).fit(a, w, show_progress=False))


def kill_all_workers(client):
    # On a loaded machine a LocalCluster nanny sometimes fails to restart its worker after this:
    # the tests that use it need only one worker back.
    for address in sorted(client.scheduler_info()["workers"]):
        kill_worker(client, address)


def test_losing_every_worker_recomputes_blocks_made_by_tasks(client, watchdog):
    """Row blocks made by tasks, every worker killed mid-fit (the nannies replace them)."""
    client.wait_for_workers(1, timeout=120)
    blocks = [
        client.submit(sp.random, 200, 300, density=0.03, format="csr", random_state=s,
                      dtype=np.float32, pure=False)
        for s in (1, 2)
    ]  # fmt: skip
    kw = dict(dim=8, iterations=3, seed=3, solver="cholesky")
    ref = DaskWALS(client, **kw).fit(blocks, show_progress=False)

    def callback(iteration, model, logs):
        if iteration == 0:
            kill_all_workers(client)

    got = DaskWALS(client, **kw).fit(blocks, show_progress=False, callback=callback)
    np.testing.assert_array_equal(got.query_embeddings(), ref.query_embeddings())
    np.testing.assert_array_equal(got.item_embeddings, ref.item_embeddings)


def test_lost_scattered_input_is_a_clear_error(client, watchdog):
    """Futures of scattered data cannot be recomputed: RuntimeError, not a hang or a result."""
    client.wait_for_workers(1, timeout=120)
    a, _ = make_problem(n=200, m=100, density=0.05, seed=9, empty_rows=(), empty_cols=())
    blocks = [client.scatter(a[:100]), client.scatter(a[100:])]

    def callback(iteration, model, logs):
        if iteration == 0:
            kill_all_workers(client)

    with pytest.raises(RuntimeError, match="cannot recompute.*scattered"):
        DaskWALS(client, 4, iterations=3).fit(blocks, show_progress=False, callback=callback)
    client.wait_for_workers(1, timeout=120)
    # The cluster is usable again afterwards.
    assert len(DaskWALS(client, 4, iterations=1).fit(a, show_progress=False).loss_history) == 1
