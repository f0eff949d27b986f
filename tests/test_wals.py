import itertools
import os
import signal
import threading

import numpy as np
import pytest
import scipy.sparse as sp

import fastsoftmax as fs
from fastsoftmax import _core

from reference import hkv_implicit_als, wals_objective_dense, wals_solve_dense


def make_problem(n=40, m=30, density=0.15, seed=0, empty_rows=(3, 17), empty_cols=(5,)):
    """Random targets and weights in CSR with a few empty rows and columns."""
    rng = np.random.default_rng(seed)
    mask = rng.random((n, m)) < density
    mask[list(empty_rows), :] = False
    mask[:, list(empty_cols)] = False
    a = sp.csr_matrix(np.where(mask, rng.random((n, m)) + 0.5, 0.0).astype(np.float32))
    w = a.copy()
    w.data = (rng.random(a.nnz) * 3).astype(np.float32)
    return a, w


def dense(a, w, w0):
    """Dense targets and weights (w0 on unobserved entries), float64."""
    targets = a.toarray().astype(np.float64)
    weights = np.full(a.shape, w0)
    rows, cols = a.nonzero()
    weights[rows, cols] = (
        np.asarray(w[rows, cols], dtype=np.float64).ravel() if w is not None else 1
    )
    return targets, weights


def csr_args(a, w):
    return (
        a.indptr.astype(np.int64),
        a.indices.astype(np.int64),
        a.data.astype(np.float32),
        None if w is None else w.data.astype(np.float32),
    )


def snapshots(model_kwargs, a, w=None):
    """Fit and record (U, V) after every iteration."""
    seen = []
    mf = fs.WALS(**model_kwargs)
    mf.fit(
        a,
        w,
        show_progress=False,
        callback=lambda it, m, logs: seen.append(
            (m.query_embeddings().copy(), m.item_embeddings.copy())
        ),
    )
    return mf, seen


# -- the row solve ------------------------------------------------------------------------------


@pytest.mark.parametrize("side", ["rows", "cols"])
@pytest.mark.parametrize("d", [4, 6, 8, 12, 64])  # d % 4 == 0: the AVX2 kernels
def test_cholesky_half_sweep_equals_dense_normal_equations(side, d):
    a, w = make_problem()
    if side == "cols":
        a, w = a.T.tocsr(), w.T.tocsr()
    w0, lam = 0.3, 0.1
    rng = np.random.default_rng(1)
    fixed = rng.standard_normal((a.shape[1], d)).astype(np.float32)
    x = rng.standard_normal((a.shape[0], d)).astype(np.float32)
    gram = _core.wals_gramian(fixed, 2)
    np.testing.assert_allclose(gram, fixed.astype(np.float64).T @ fixed, rtol=1e-6, atol=1e-5)
    _core.wals_solve_rows(*csr_args(a, w), fixed, gram, x, w0, lam, "cholesky", 1, 2)
    targets, weights = dense(a, w, w0)
    ref = wals_solve_dense(targets, weights, fixed, lam)
    # d = 64 > 30 columns: the systems are w0 G + lambda I plus a few rank-1 terms with G of rank
    # <= 30 (condition number ~500 for the shared part), so float32 outputs differ by up to ~2e-6
    # from the float64 reference (with Eigen's LLT too).
    np.testing.assert_allclose(x, ref, rtol=1e-5, atol=1e-6 if d < 64 else 1e-5)


@pytest.mark.parametrize("d", [6, 8, 64])
def test_cholesky_reports_a_singular_row(d):
    """lambda = 0, w0 = 0 and fewer observed entries than d: the row's normal equations are
    singular, a clear error from either factorisation (Eigen's, or the kernel's when d % 4 == 0)."""
    a = sp.csr_matrix(np.array([[1.0, 1.0, 0.0, 0.0], [0.0, 0.0, 1.0, 0.0]], np.float32))
    fixed = np.random.default_rng(0).standard_normal((4, d)).astype(np.float32)
    gram = _core.wals_gramian(fixed, 1)
    x = np.zeros((2, d), np.float32)
    with pytest.raises(RuntimeError, match="row 0 .*not positive definite"):
        _core.wals_solve_rows(*csr_args(a, None), fixed, gram, x, 0.0, 0.0, "cholesky", 1, 1)


def test_cg_converges_to_the_exact_solve():
    a, w = make_problem(density=0.3)
    w0, lam, d = 0.2, 0.05, 8
    rng = np.random.default_rng(2)
    fixed = rng.standard_normal((a.shape[1], d)).astype(np.float32)
    start = rng.standard_normal((a.shape[0], d)).astype(np.float32)
    gram = _core.wals_gramian(fixed, 1)
    targets, weights = dense(a, w, w0)
    ref = wals_solve_dense(targets, weights, fixed, lam)
    errors = []
    for steps in (1, 2, 4, 8, 16):
        x = start.copy()
        _core.wals_solve_rows(*csr_args(a, w), fixed, gram, x, w0, lam, "cg", steps, 1)
        errors.append(np.abs(x - ref).max())
    assert all(e1 > e2 for e1, e2 in itertools.pairwise(errors)), errors
    assert errors[0] > 1e-2  # one step is far from converged: the test can tell the difference
    assert errors[-1] < 1e-4 * max(1.0, np.abs(ref).max())
    # The warm start matters: from the exact solution, CG stays there.
    x = ref.astype(np.float32)
    _core.wals_solve_rows(*csr_args(a, w), fixed, gram, x, w0, lam, "cg", 1, 1)
    np.testing.assert_allclose(x, ref, atol=1e-4)


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_every_half_sweep_of_fit_solves_the_normal_equations(solver):
    a, w = make_problem(seed=3)
    kw = dict(dim=5, unobserved_weight=0.25, regularization=0.1, iterations=4, solver=solver)
    _, seen = snapshots({**kw, "cg_steps": 40}, a, w)
    targets, weights = dense(a, w, 0.25)
    for (_, v_prev), (u, v) in itertools.pairwise(seen):
        np.testing.assert_allclose(u, wals_solve_dense(targets, weights, v_prev, 0.1), atol=2e-4)
        np.testing.assert_allclose(v, wals_solve_dense(targets.T, weights.T, u, 0.1), atol=2e-4)


# -- the objective ------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
def test_loss_history_is_the_exact_objective(solver):
    a, w = make_problem(seed=4)
    w0, lam = 0.15, 0.07
    mf, seen = snapshots(
        dict(dim=4, unobserved_weight=w0, regularization=lam, iterations=5, solver=solver), a, w
    )
    targets, weights = dense(a, w, w0)
    ref = [wals_objective_dense(targets, weights, u, v, lam) for u, v in seen]
    np.testing.assert_allclose(mf.loss_history, ref, rtol=1e-6)
    assert mf.objective(a, w) == pytest.approx(ref[-1], rel=1e-6)
    u, v = seen[-1]
    assert _core.wals_objective(*csr_args(a, w), u, v, w0, lam, 3) == pytest.approx(ref[-1], 1e-6)


@pytest.mark.parametrize("w0", [0.0, 0.1, 1.0])
def test_cholesky_objective_never_increases(w0):
    a, w = make_problem(n=60, m=50, density=0.1, seed=5)
    mf = fs.WALS(8, unobserved_weight=w0, regularization=0.05, iterations=12, solver="cholesky")
    mf.fit(a, w, show_progress=False)
    loss = np.array(mf.loss_history)
    assert len(loss) == 12 and np.isfinite(loss).all()
    assert (np.diff(loss) <= 1e-6 * loss[:-1]).all(), loss
    assert loss[-1] < 0.9 * loss[0]  # and it does decrease


def test_implicit_feedback_als_of_hu_koren_volinsky():
    """w0 = 1, w = alpha * r, targets 1: the iterations are HKV's implicit ALS."""
    rng = np.random.default_rng(6)
    r = sp.random(50, 35, density=0.12, format="csr", random_state=7, dtype=np.float64)
    r.data = np.ceil(rng.random(r.nnz) * 5)  # play counts 1..5
    alpha, lam = 2.0, 0.1
    ones = r.copy()
    ones.data[:] = 1.0
    weights = r * alpha
    _, seen = snapshots(
        dict(dim=6, unobserved_weight=1.0, regularization=lam, iterations=4, solver="cholesky"),
        ones,
        weights,
    )
    u0, v0 = seen[0]
    u_ref, v_ref = hkv_implicit_als(weights, u0, v0, lam, iterations=3)
    u, v = seen[-1]
    np.testing.assert_allclose(u, u_ref, atol=1e-5)
    np.testing.assert_allclose(v, v_ref, atol=1e-5)


# -- fold-in, empty rows, determinism -----------------------------------------------------------


def test_fold_in_is_the_exact_row_solve():
    a, w = make_problem(seed=8)
    w0, lam = 0.2, 0.1
    mf = fs.WALS(6, unobserved_weight=w0, regularization=lam, iterations=3, solver="cg")
    mf.fit(a, w, show_progress=False)
    new = sp.random(7, a.shape[1], density=0.3, format="coo", random_state=9, dtype=np.float32)
    new_w = new.tocsr()
    new_w.data = np.linspace(0.5, 2, new_w.nnz, dtype=np.float32)
    emb = mf.fold_in(new, new_w)
    assert emb.dtype == np.float32 and emb.shape == (7, 6)
    targets, weights = dense(new.tocsr(), new_w, w0)
    ref = wals_solve_dense(targets, weights, mf.item_embeddings, lam)
    np.testing.assert_allclose(emb, ref, rtol=1e-5, atol=1e-6)
    # Default weights are 1.
    t1, w1 = dense(new.tocsr(), None, w0)
    np.testing.assert_allclose(
        mf.fold_in(new), wals_solve_dense(t1, w1, mf.item_embeddings, lam), rtol=1e-5, atol=1e-6
    )


def test_fold_in_of_a_training_row_gives_back_its_embedding_once_converged():
    a, w = make_problem(seed=10)
    mf = fs.WALS(4, unobserved_weight=0.1, regularization=0.5, iterations=120, solver="cholesky")
    mf.fit(a, w, show_progress=False)
    np.testing.assert_allclose(mf.fold_in(a, w), mf.query_embeddings(), atol=1e-4)


@pytest.mark.parametrize("solver", ["cholesky", "cg"])
@pytest.mark.parametrize(("w0", "lam"), [(0.1, 0.05), (0.0, 0.0)])
def test_empty_rows_and_columns_give_zero_embeddings(solver, w0, lam):
    a, w = make_problem(empty_rows=(0, 3, 39), empty_cols=(0, 5, 29))
    mf = fs.WALS(5, unobserved_weight=w0, regularization=lam, iterations=3, solver=solver)
    if lam == 0.0 and solver == "cholesky":
        lam_ok = 1e-3  # a non-empty row may be singular without regularization
        mf = fs.WALS(5, unobserved_weight=w0, regularization=lam_ok, iterations=3, solver=solver)
    mf.fit(a, w, show_progress=False)
    u, v = mf.query_embeddings(), mf.item_embeddings
    assert np.isfinite(u).all() and np.isfinite(v).all()
    assert not u[[0, 3, 39]].any() and not v[[0, 5, 29]].any()
    assert np.abs(u).sum(axis=1)[1:3].min() > 0
    assert np.isfinite(mf.loss_history).all()
    assert not mf.fold_in(sp.csr_matrix((2, a.shape[1]), dtype=np.float32)).any()


def test_results_are_identical_for_every_thread_count():
    a, w = make_problem(n=300, m=200, density=0.05, seed=11, empty_rows=(), empty_cols=())
    ref = None
    for threads in (1, 2, 3):
        for solver in ("cg", "cholesky"):
            mf = fs.WALS(8, iterations=3, solver=solver, num_threads=threads, seed=5)
            mf.fit(a, w, show_progress=False)
            got = (solver, mf.query_embeddings(), mf.item_embeddings, mf.loss_history)
            if threads == 1:
                ref = ref or {}
                ref[solver] = got
            else:
                np.testing.assert_array_equal(got[1], ref[solver][1])
                np.testing.assert_array_equal(got[2], ref[solver][2])
                assert got[3] == ref[solver][3]
    other = fs.WALS(8, iterations=3, seed=6).fit(a, w, show_progress=False)
    assert not np.array_equal(other.item_embeddings, ref["cg"][2])


def test_sparse_formats_give_the_same_model_and_input_is_not_modified():
    a, _ = make_problem(seed=12)
    coo = a.tocoo()
    # Split one entry into two duplicates that sum to it: a non-canonical COO.
    dup = sp.coo_matrix(
        (np.r_[coo.data[:-1], coo.data[-1] / 2, coo.data[-1] / 2],
         (np.r_[coo.row, coo.row[-1]], np.r_[coo.col, coo.col[-1]])),
        shape=a.shape,
    )  # fmt: skip
    dup_copy = dup.copy()
    ref = fs.WALS(4, iterations=2).fit(a, show_progress=False)
    for x in (a.tocsc(), coo, dup, sp.csr_array(a), a.astype(np.float64)):
        mf = fs.WALS(4, iterations=2).fit(x, show_progress=False)
        np.testing.assert_allclose(mf.item_embeddings, ref.item_embeddings, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(dup.data, dup_copy.data)
    np.testing.assert_array_equal(dup.row, dup_copy.row)


# -- training loop ------------------------------------------------------------------------------


def test_callback_can_stop_training_and_sees_the_model():
    a, _ = make_problem()
    calls = []

    def callback(iteration, model, logs):
        calls.append((iteration, len(model.loss_history), logs))
        return iteration == 2  # True stops, as for SoftmaxModel

    mf = fs.WALS(4, iterations=10).fit(a, show_progress=False, callback=callback)
    assert [c[:2] for c in calls] == [(0, 1), (1, 2), (2, 3)]
    assert [c[2] for c in calls] == mf.training_log == [{"loss": x} for x in mf.loss_history]
    assert len(mf.loss_history) == 3
    # Anything but True (None, False, a number) continues.
    for value in (None, False, 1):
        mf = fs.WALS(4, iterations=4).fit(
            a, show_progress=False, callback=lambda i, m, g, v=value: v
        )
        assert len(mf.loss_history) == 4


def test_progress_bar(capsys):
    a, _ = make_problem()
    fs.WALS(4, iterations=2).fit(a, show_progress=True)
    assert "WALS" in capsys.readouterr().err
    fs.WALS(4, iterations=2).fit(a, show_progress=False)
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize("num_threads", [1, 2])
def test_ctrl_c_interrupts_fit(num_threads):
    rng = np.random.default_rng(0)
    rows, cols = rng.integers(0, 20000, 800_000), rng.integers(0, 4000, 800_000)
    a = sp.csr_matrix((np.ones(800_000, np.float32), (rows, cols)), shape=(20000, 4000))
    mf = fs.WALS(32, iterations=100000, num_threads=num_threads, solver="cholesky")
    timer = threading.Timer(0.3, os.kill, args=(os.getpid(), signal.SIGINT))
    timer.start()
    try:
        with pytest.raises(KeyboardInterrupt):
            mf.fit(a, show_progress=False)
    finally:
        timer.cancel()


# -- persistence --------------------------------------------------------------------------------


def test_save_load_roundtrip(tmp_path):
    a, w = make_problem()
    mf = fs.WALS(5, unobserved_weight=0.3, regularization=0.2, iterations=3, solver="cholesky",
                 cg_steps=4, init_scale=0.05, num_threads=1, seed=2**64 - 1)  # fmt: skip
    mf.fit(a, w, show_progress=False)
    path = tmp_path / "model"  # saved exactly there, no suffix added
    mf.save(path)
    assert os.listdir(tmp_path) == ["model"]  # no temporary file left behind
    with np.load(path, allow_pickle=False) as f:
        assert str(f["model_type"]) == "WALS" and int(f["format_version"]) == 1
    back = fs.load(str(path))
    assert isinstance(back, fs.WALS)
    np.testing.assert_array_equal(back.query_embeddings(), mf.query_embeddings())
    np.testing.assert_array_equal(back.item_embeddings, mf.item_embeddings)
    assert back.loss_history == mf.loss_history
    for name in ("dim", "unobserved_weight", "regularization", "iterations", "solver",
                 "cg_steps", "init_scale", "num_threads", "seed"):  # fmt: skip
        assert getattr(back, name) == getattr(mf, name), name
    np.testing.assert_array_equal(back.fold_in(a[:3], w[:3]), mf.fold_in(a[:3], w[:3]))
    mf.save(path)  # overwrite
    assert os.listdir(tmp_path) == ["model"]


def test_load_errors(tmp_path):
    np.savez(tmp_path / "plain.npz", x=np.ones(3))
    with pytest.raises(ValueError, match="not a fastsoftmax model"):
        fs.load(tmp_path / "plain.npz")
    np.savez(tmp_path / "alien.npz", model_type=np.array("Alien"), format_version=np.array(1))
    with pytest.raises(ValueError, match="unknown model_type 'Alien'.*WALS"):
        fs.load(tmp_path / "alien.npz")
    np.savez(tmp_path / "future.npz", model_type=np.array("WALS"), format_version=np.array(99))
    with pytest.raises(ValueError, match="format_version 99"):
        fs.load(tmp_path / "future.npz")
    np.savez(tmp_path / "broken.npz", model_type=np.array("WALS"), format_version=np.array(1))
    with pytest.raises(ValueError, match="no field"):
        fs.load(tmp_path / "broken.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(ValueError, match="not a fastsoftmax model file"):
        fs.load(tmp_path / "text.npz")
    with pytest.raises(FileNotFoundError):
        fs.load(tmp_path / "missing.npz")
    with pytest.raises(RuntimeError, match="not fitted"):
        fs.WALS(3).save(tmp_path / "x.npz")


def test_register_model_checks_its_arguments():
    with pytest.raises(TypeError, match="_from_arrays"):
        fs.register_model("Thing", object)
    with pytest.raises(ValueError, match="type_name"):
        fs.register_model("", fs.WALS)


# -- bad input ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"dim": 0}, ValueError, "dim"),
        ({"dim": -3}, ValueError, "dim"),
        ({"dim": 2.5}, TypeError, "dim"),
        ({"unobserved_weight": -0.1}, ValueError, "unobserved_weight"),
        ({"unobserved_weight": float("nan")}, ValueError, "unobserved_weight"),
        ({"regularization": -1}, ValueError, "regularization"),
        ({"regularization": float("inf")}, ValueError, "regularization"),
        ({"regularization": "0.1"}, TypeError, "regularization"),
        ({"iterations": 0}, ValueError, "iterations"),
        ({"solver": "lu"}, ValueError, "solver"),
        ({"cg_steps": 0}, ValueError, "cg_steps"),
        ({"init_scale": -1.0}, ValueError, "init_scale"),
        ({"num_threads": -1}, ValueError, "num_threads"),
        ({"seed": -1}, ValueError, "seed"),
    ],
)
def test_bad_hyperparameters(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fs.WALS(**{"dim": 4, **kwargs})


def test_bad_training_input():
    a, w = make_problem()
    mf = fs.WALS(3, iterations=1)
    with pytest.raises(TypeError, match="interactions.*scipy.sparse"):
        mf.fit(a.toarray())
    with pytest.raises(TypeError, match="interactions.*real"):
        mf.fit(sp.csr_matrix(np.array([[1j, 0]])))
    bad = a.copy()
    bad.data[4] = np.nan
    with pytest.raises(ValueError, match="interactions.*finite"):
        mf.fit(bad)
    neg = w.copy()
    neg.data[2] = -1
    with pytest.raises(ValueError, match="weights.*non-negative"):
        mf.fit(a, neg)
    nan_w = w.copy()
    nan_w.data[2] = np.inf
    with pytest.raises(ValueError, match="weights.*finite"):
        mf.fit(a, nan_w)
    with pytest.raises(ValueError, match="weights.*shape"):
        mf.fit(a, w[:, :-1])
    other = w.copy()
    other.indices = other.indices.copy()
    other = sp.csr_matrix(w.toarray() + (np.arange(w.shape[1]) == 0))
    with pytest.raises(ValueError, match="weights.*sparsity"):
        mf.fit(a, other)
    with pytest.raises(TypeError, match="weights.*scipy.sparse"):
        mf.fit(a, w.data)
    with pytest.raises(ValueError, match="interactions.*at least one"):
        mf.fit(sp.csr_matrix((0, 5), dtype=np.float32))
    with pytest.raises(RuntimeError, match="not fitted"):
        mf.fold_in(a)
    with pytest.raises(RuntimeError, match="not fitted"):
        _ = mf.query_embeddings()


def test_bad_fold_in_input():
    a, _ = make_problem()
    mf = fs.WALS(3, iterations=1).fit(a, show_progress=False)
    with pytest.raises(ValueError, match="interactions.*30 columns"):
        mf.fold_in(sp.csr_matrix((2, 29), dtype=np.float32))
    with pytest.raises(ValueError, match="weights.*sparsity"):
        mf.fold_in(a, sp.csr_matrix(a.shape, dtype=np.float32))
    with pytest.raises(TypeError, match="interactions"):
        mf.fold_in([[1, 0]])


def test_cholesky_failure_has_a_hint():
    a, _ = make_problem()
    mf = fs.WALS(3, regularization=0.0, init_scale=0.0, solver="cholesky", iterations=1)
    with pytest.raises(RuntimeError, match="not positive definite.*increase regularization"):
        mf.fit(a, show_progress=False)


def test_core_checks_its_arrays():
    a, w = make_problem()
    ip, ix, t, wt = csr_args(a, w)
    y = np.ones((a.shape[1], 3), np.float32)
    g = np.eye(3)
    x = np.zeros((a.shape[0], 3), np.float32)
    args = (0.1, 0.1, "cg", 3, 1)
    with pytest.raises(TypeError, match="indices.*int64"):
        _core.wals_solve_rows(ip, ix.astype(np.int32), t, wt, y, g, x, *args)
    with pytest.raises(TypeError, match="x.*float32"):
        _core.wals_solve_rows(ip, ix, t, wt, y, g, x.astype(np.float64), *args)
    with pytest.raises(ValueError, match="x.*shape"):
        _core.wals_solve_rows(ip, ix, t, wt, y, g, x[:-1], *args)
    with pytest.raises(ValueError, match="gramian.*shape"):
        _core.wals_solve_rows(ip, ix, t, wt, y, np.eye(4), x, *args)
    with pytest.raises(ValueError, match="targets"):
        _core.wals_solve_rows(ip, ix, t[:-1], wt, y, g, x, *args)
    with pytest.raises(ValueError, match="indptr"):
        _core.wals_solve_rows(ip[:-1], ix, t, wt, y, g, x, *args)
    bad_ix = ix.copy()
    bad_ix[0] = a.shape[1]
    with pytest.raises(IndexError, match="column index 30 out of range"):
        _core.wals_solve_rows(ip, bad_ix, t, wt, y, g, x, *args)
    bad_ip = ip.copy()
    bad_ip[5] = bad_ip[6] + 1
    with pytest.raises(ValueError, match="non-decreasing"):
        _core.wals_solve_rows(bad_ip, ix, t, wt, y, g, x, *args)
    with pytest.raises(ValueError, match="solver"):
        _core.wals_solve_rows(ip, ix, t, wt, y, g, x, 0.1, 0.1, "qr", 3, 1)
    with pytest.raises(ValueError, match="cg_steps"):
        _core.wals_solve_rows(ip, ix, t, wt, y, g, x, 0.1, 0.1, "cg", 0, 1)
    with pytest.raises(ValueError, match="unobserved_weight"):
        _core.wals_solve_rows(ip, ix, t, wt, y, g, x, -1.0, 0.1, "cg", 3, 1)
    x.flags.writeable = False
    with pytest.raises(ValueError, match="x.*writeable"):
        _core.wals_solve_rows(ip, ix, t, wt, y, g, x, *args)


# -- embed_similar ------------------------------------------------------------------------------


def similar_mean_reference(emb, train, new, weights=None, k=None):
    """Loops: the weighted mean of emb[i] over the training queries i similar to each new query
    (same values in every column, or the k nearest, ties to the lower index); the weighted mean
    of all training queries when there is none or their weights sum to 0."""
    n = len(emb)
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=np.float64)
    train = np.asarray(train).reshape(n, -1)
    new = np.asarray(new).reshape(len(new), -1)
    out = np.zeros((len(new), emb.shape[1]))
    for b, x in enumerate(new):
        if k is None:
            similar = [i for i in range(n) if (train[i] == x).all()]
        else:
            dist = [float(np.sum((train[i].astype(np.float64) - x) ** 2)) for i in range(n)]
            similar = sorted(range(n), key=dist.__getitem__)[:k]  # stable: ties by index
        if sum(w[i] for i in similar) == 0:
            similar = range(n)
        for i in similar:
            out[b] += w[i] * emb[i].astype(np.float64)
        out[b] /= sum(w[i] for i in similar)
    return out


@pytest.fixture(scope="module")
def fitted():
    a, _ = make_problem()
    return fs.WALS(5, iterations=2).fit(a, show_progress=False)


def test_embed_similar_categorical_is_the_mean_of_the_same_category(fitted):
    u = fitted.query_embeddings()
    rng = np.random.default_rng(3)
    train = rng.integers(0, 6, 40)
    new = np.array([0, 5, 2, 9, 0, -1])  # 9 and -1: never seen
    emb = fitted.embed_similar(train, new)
    assert emb.dtype == np.float32 and emb.shape == (6, 5)
    np.testing.assert_allclose(emb, similar_mean_reference(u, train, new), rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(emb[3], u.mean(axis=0), rtol=1e-5, atol=1e-7)
    # Integer dtypes other than int64 and a list are accepted.
    got = fitted.embed_similar(train.astype(np.uint8).tolist(), new.astype(np.int32))
    np.testing.assert_array_equal(got, emb)
    assert fitted.embed_similar(train, new[:0]).shape == (0, 5)


def test_embed_similar_categorical_weighted(fitted):
    u = fitted.query_embeddings()
    rng = np.random.default_rng(4)
    train = rng.integers(0, 5, 40)
    weights = rng.integers(0, 4, 40).astype(np.float64)
    weights[train == 3] = 0  # category 3: seen, but of total weight 0 -> the weighted mean of all
    new = np.array([3, 1, 4, 7, 0])
    emb = fitted.embed_similar(train, new, train_weights=weights)
    ref = similar_mean_reference(u, train, new, weights)
    np.testing.assert_allclose(emb, ref, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(emb[0], weights @ u.astype(np.float64) / weights.sum(), rtol=1e-5)
    assert not np.allclose(emb, fitted.embed_similar(train, new))


def test_embed_similar_several_categorical_columns(fitted):
    rng = np.random.default_rng(5)
    train = rng.integers(0, 3, (40, 2))
    new = np.array([[0, 0], [2, 1], [1, 7], [1, 2]])
    weights = rng.random(40)
    for w in (None, weights):
        emb = fitted.embed_similar(train, new, train_weights=w)
        ref = similar_mean_reference(fitted.query_embeddings(), train, new, w)
        np.testing.assert_allclose(emb, ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("k", [1, 3, 7, 40])
def test_embed_similar_nearest_neighbours_with_ties(fitted, k):
    """Integer-valued features on a 3 x 3 grid: many exact ties, broken by the lower index."""
    rng = np.random.default_rng(6)
    train = rng.integers(0, 3, (40, 2)).astype(np.float64)
    new = np.array([[1, 1], [0, 0], [2.5, 0.5], [-4, 9], [1, 1]])
    weights = rng.integers(0, 3, 40)
    for w in (None, weights):
        emb = fitted.embed_similar(train, new, k=k, train_weights=w)
        assert emb.dtype == np.float32 and emb.shape == (5, 5)
        ref = similar_mean_reference(fitted.query_embeddings(), train, new, w, k=k)
        np.testing.assert_allclose(emb, ref, rtol=1e-6, atol=1e-7)


def test_embed_similar_nearest_neighbours_in_blocks(fitted, monkeypatch):
    """Blocks of one new query (and small chunks of the sums) give the same embeddings."""
    import fastsoftmax.wals as wals

    rng = np.random.default_rng(7)
    train, new = rng.standard_normal((40, 3)), rng.standard_normal((9, 3))
    weights = rng.random(40)
    whole = fitted.embed_similar(train, new, k=4, train_weights=weights)
    monkeypatch.setattr(wals, "_KNN_BLOCK", 1)
    blocks = fitted.embed_similar(train, new, k=4, train_weights=weights)
    np.testing.assert_array_equal(blocks, whole)
    monkeypatch.setattr(wals, "_SUM_CHUNK", 3)
    chunks = fitted.embed_similar(train, new, k=4, train_weights=weights)
    np.testing.assert_allclose(chunks, whole, rtol=1e-6)
    ref = similar_mean_reference(fitted.query_embeddings(), train, new, weights, k=4)
    np.testing.assert_allclose(whole, ref, rtol=1e-6, atol=1e-7)


def test_embed_similar_needs_a_fitted_model():
    with pytest.raises(RuntimeError, match="not fitted"):
        fs.WALS(3).embed_similar(np.zeros(4, np.int64), np.zeros(2, np.int64))


_CAT, _NEW_CAT = np.arange(40) % 4, np.array([0, 1])
_X, _NEW_X = np.zeros((40, 3)), np.zeros((2, 3))


@pytest.mark.parametrize(
    ("args", "kwargs", "exc", "match"),
    [
        ((_CAT, _NEW_CAT), {"train_weights": np.ones((40, 1))}, ValueError, "train_weights.*1-D"),
        ((_CAT, _NEW_CAT), {"train_weights": ["a"] * 40}, TypeError, "train_weights.*real"),
        ((_CAT, _NEW_CAT), {"train_weights": np.ones(39)}, ValueError, "train_weights.*40 values"),
        ((_CAT, _NEW_CAT), {"train_weights": np.r_[np.nan, np.ones(39)]}, ValueError,
         "train_weights.*finite"),
        ((_CAT, _NEW_CAT), {"train_weights": np.r_[-1, np.ones(39)]}, ValueError,
         "train_weights.*non-negative values, got -1.0"),
        ((_CAT, _NEW_CAT), {"train_weights": np.zeros(40)}, ValueError,
         "train_weights.*at least one positive"),
        ((_CAT * 0.5, _NEW_CAT), {}, TypeError, "train_features.*integer.*k="),
        ((_CAT > 0, _NEW_CAT), {}, TypeError, "train_features.*integer.*got dtype bool"),
        ((_CAT, _NEW_CAT * 1.0), {}, TypeError, "new_features.*integer"),
        ((_CAT.reshape(40, 1, 1), _NEW_CAT), {}, ValueError, r"train_features.*\(40, 1, 1\)"),
        ((np.zeros((40, 0), np.int64), _NEW_CAT), {}, ValueError,
         "train_features.*at least one column"),
        ((_CAT, np.array([2**63], np.uint64)), {}, ValueError, r"new_features.*below 2\*\*63"),
        ((_CAT[:39], _NEW_CAT), {}, ValueError, r"train_features.*40 rows.*got shape \(39,\)"),
        ((_CAT, np.zeros((2, 2), np.int64)), {}, ValueError, "new_features.*1 column"),
        ((_X, _NEW_X), {"k": 0}, ValueError, "k: expected an integer >= 1, got 0"),
        ((_X, _NEW_X), {"k": 2.0}, TypeError, "k: expected an integer"),
        ((_X, _NEW_X), {"k": 41}, ValueError, "k: expected at most n_queries = 40, got 41"),
        ((_X[:, 0], _NEW_X), {"k": 2}, ValueError, "train_features.*2-D"),
        ((_X, _NEW_X[:, 0]), {"k": 2}, ValueError, "new_features.*2-D"),
        ((_X.astype(str), _NEW_X), {"k": 2}, TypeError, "train_features.*real"),
        ((_X[:30], _NEW_X), {"k": 2}, ValueError, "train_features.*40 rows"),
        ((_X, _NEW_X[:, :2]), {"k": 2}, ValueError, "new_features.*3 columns"),
        ((np.r_[_X[:39], [[0, np.inf, 0]]], _NEW_X), {"k": 2}, ValueError,
         "train_features.*finite"),
        ((_X, np.r_[_NEW_X[:1], [[np.nan, 0, 0]]]), {"k": 2}, ValueError, "new_features.*finite"),
    ],
)  # fmt: skip
def test_bad_embed_similar_input(fitted, args, kwargs, exc, match):
    with pytest.raises(exc, match=match):
        fitted.embed_similar(*args, **kwargs)


# -- retrieval ----------------------------------------------------------------------------------


def test_recommend_is_the_exact_top_k_with_exclusions():
    a, w = make_problem(seed=13)
    mf = fs.WALS(6, iterations=3).fit(a, w, show_progress=False)
    queries = np.array([0, 5, 7, 39, 5])
    ids, scores = mf.recommend(queries, k=4, exclude=a[queries])
    assert ids.shape == scores.shape == (5, 4) and ids.dtype == np.int64
    full = mf.query_embeddings()[queries].astype(np.float64) @ mf.item_embeddings.T
    full[a[queries].nonzero()] = -np.inf
    for b in range(len(queries)):
        np.testing.assert_allclose(scores[b], np.sort(full[b])[::-1][:4], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(full[b, ids[b]], scores[b], rtol=1e-5, atol=1e-6)
        assert not np.isin(ids[b], a[queries[b]].indices).any()
    one_ids, _ = mf.recommend(5, k=4)  # one query: (1, k), as SoftmaxModel's
    assert one_ids.shape == (1, 4)
    np.testing.assert_array_equal(one_ids, mf.recommend([5], k=4)[0])
    assert (mf.recommend([1], k=40)[0] >= 0).sum() == 30  # padding beyond n_items


def test_similar_items_by_cosine_without_the_item_itself():
    a, w = make_problem(seed=14)
    mf = fs.WALS(6, iterations=3).fit(a, w, show_progress=False)
    v = mf.item_embeddings.astype(np.float64)
    unit = v / np.maximum(np.linalg.norm(v, axis=1), 1e-300)[:, None]
    items = np.array([0, 3, 29])
    ids, scores = mf.similar_items(items, k=5)
    for b, j in enumerate(items):
        cos = unit @ unit[j]
        cos[j] = -np.inf
        assert j not in ids[b]
        np.testing.assert_allclose(scores[b], np.sort(cos)[::-1][:5], atol=1e-5)
    assert (scores[np.isfinite(scores)] <= 1 + 1e-5).all()
    # Item 5 has no interactions: a zero embedding, cosine 0 with everything, no NaN.
    ids5, scores5 = mf.similar_items(5, k=3)
    assert ids5.shape == (1, 3) and np.isfinite(scores5).all() and (scores5 == 0).all()


def test_raising_the_unobserved_weight_lowers_the_folding_rate():
    """Queries and items in 5 categories that never meet: w0 = 0 folds them together."""
    data = fs.datasets.make_categories(2000, 300, 5, seed=0, in_category=1.0)
    rates = []
    for w0 in (0.0, 0.01, 0.1, 1.0):
        mf = fs.WALS(16, unobserved_weight=w0, regularization=0.05, iterations=10, seed=0)
        mf.fit(data.interactions, show_progress=False)
        queries = np.arange(data.interactions.shape[0])
        ids, _ = mf.recommend(queries, k=10, exclude=data.interactions)
        rates.append(fs.metrics.folding_rate(ids, data.query_groups, data.item_groups, 10))
    assert all(r1 > r2 for r1, r2 in itertools.pairwise(rates)), rates
    assert rates[0] > 0.6 and rates[-1] < 0.1, rates


def test_bad_retrieval_input():
    a, _ = make_problem()
    mf = fs.WALS(3, iterations=1).fit(a, show_progress=False)
    with pytest.raises(IndexError, match="query_ids: id 40 out of range"):
        mf.recommend([0, 40])
    with pytest.raises(IndexError, match="query_ids: id -1 out of range"):
        mf.recommend(-1)
    with pytest.raises(TypeError, match="query_ids.*integer"):
        mf.recommend([0.5])
    with pytest.raises(ValueError, match="query_ids.*1-D"):
        mf.recommend([[0, 1]])
    with pytest.raises(ValueError, match="k"):
        mf.recommend([0], k=0)
    with pytest.raises(ValueError, match="exclude"):
        mf.recommend([0, 1], exclude=a[:3])
    with pytest.raises(IndexError, match="item_ids: id 30 out of range"):
        mf.similar_items([30])
    with pytest.raises(RuntimeError, match="not fitted"):
        fs.WALS(3).recommend([0])


# -- pieces shared with fastsoftmax.distributed -------------------------------------------------


def test_initial_embeddings_do_not_depend_on_the_blocking():
    from fastsoftmax.wals import _INIT_CHUNK, _initial_embeddings

    n = 2 * _INIT_CHUNK + 37
    full = _initial_embeddings(11, 0, 0, n, 3, 0.5)
    assert full.dtype == np.float32 and full.shape == (n, 3)
    cuts = [0, 5, _INIT_CHUNK - 1, _INIT_CHUNK + 2, 2 * _INIT_CHUNK, n]
    parts = [_initial_embeddings(11, 0, lo, hi, 3, 0.5) for lo, hi in itertools.pairwise(cuts)]
    np.testing.assert_array_equal(np.concatenate(parts), full)
    # A shorter matrix is a prefix; the item side and another seed are other streams.
    np.testing.assert_array_equal(_initial_embeddings(11, 0, 0, 100, 3, 0.5), full[:100])
    assert not np.array_equal(_initial_embeddings(11, 1, 0, 100, 3, 0.5), full[:100])
    assert not np.array_equal(_initial_embeddings(12, 0, 0, 100, 3, 0.5), full[:100])
    assert abs(full.std() - 0.5) < 0.02


def test_core_accepts_unpickled_arrays():
    """Arrays that went through pickle (multiprocessing, Dask) have equal, not identical, dtypes."""
    import pickle

    a, w = make_problem()
    y = np.random.default_rng(0).standard_normal((a.shape[1], 3)).astype(np.float32)
    args = [pickle.loads(pickle.dumps(x)) for x in (*csr_args(a, w), y)]
    assert args[0].dtype is not np.dtype(np.int64)  # what the test is about
    gram = _core.wals_gramian(args[-1], 1)
    np.testing.assert_array_equal(gram, _core.wals_gramian(y, 1))
    x = np.zeros((a.shape[0], 3), np.float32)
    _core.wals_solve_rows(*args, gram, x, 0.1, 0.1, "cholesky", 1, 1)
    with pytest.raises(TypeError, match="float32, got >f4"):
        _core.wals_gramian(y.astype(">f4"), 1)
