"""Determinism (bit-identical results for a fixed seed and thread count), concurrency (several
Python threads at once) and numerics at the extremes (huge logits and weights, singular WALS)."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import scipy.sparse as sp

import fastsoftmax as fs


def _interactions(n_q=200, n_i=80, density=0.05, seed=0):
    rng = np.random.default_rng(seed)
    a = sp.random(n_q, n_i, density=density, format="csr", random_state=rng, dtype=np.float32)
    a.data[:] = 1
    a = a + sp.csr_matrix(
        (np.ones(n_q, np.float32), (np.arange(n_q), np.arange(n_q) % n_i)), shape=(n_q, n_i)
    )
    a.data[:] = 1
    return a.tocsr()


@pytest.fixture(scope="module")
def data():
    return fs.datasets.make_categories(600, 150, 5, seed=3, interactions_per_query=6)


# --- determinism -------------------------------------------------------------------------------


@pytest.mark.parametrize("solver", ["cg", "cholesky"])
def test_wals_bit_identical_across_runs_and_thread_counts(solver):
    a = _interactions(seed=1)
    w = a.copy()
    w.data = np.random.default_rng(2).uniform(0.5, 3.0, w.nnz).astype(np.float32)
    runs = []
    for threads in (1, 2, 3, 1):
        m = fs.WALS(8, iterations=3, solver=solver, num_threads=threads, seed=7)
        m.fit(a, w, show_progress=False)
        runs.append(
            (m.query_embeddings(), m.item_embeddings, m.loss_history, m.fold_in(a[:9], w[:9]))
        )
    for u, v, hist, folded in runs[1:]:
        np.testing.assert_array_equal(u, runs[0][0])
        np.testing.assert_array_equal(v, runs[0][1])
        np.testing.assert_array_equal(folded, runs[0][3])
        assert hist == runs[0][2]
    other_seed = fs.WALS(8, iterations=3, solver=solver, num_threads=1, seed=8)
    assert not np.array_equal(other_seed.fit(a, w, show_progress=False).item_embeddings, runs[0][1])


@pytest.mark.parametrize(
    "options",
    [
        {"loss": "full"},
        {"loss": "positives", "gravity": 0.1, "num_negatives": 16},
        {"loss": "sampled", "num_negatives": 16, "sampler": "popularity"},
        {"loss": "sampled", "num_negatives": 8, "sampler": "score", "hard_pool": 32,
         "share_negatives": False},
        {"loss": "sampled", "sampler": "in_batch", "optimizer": "adam", "item_bias": True},
    ],
    ids=["full", "positives-gravity", "sampled-popularity", "sampled-score", "in-batch-adam"],
)  # fmt: skip
def test_softmax_bit_identical_across_runs(data, options):
    def train(threads):
        m = fs.SoftmaxModel(
            data.n_items, hidden=(16,), dim=8, epochs=2, batch_size=64, seed=5,
            num_threads=threads, **options,
        )  # fmt: skip
        m.fit(data.features, data.interactions, show_progress=False)
        return m

    for threads in (1, 2):
        a, b = train(threads), train(threads)
        pa, pb = a.parameters, b.parameters
        assert pa.keys() == pb.keys()
        for name in pa:
            np.testing.assert_array_equal(pa[name], pb[name], err_msg=name)
        assert a.training_log == b.training_log
        np.testing.assert_array_equal(
            a.query_embeddings(data.features), b.query_embeddings(data.features)
        )


def test_sampler_and_topk_identical_across_thread_counts():
    s = fs.AliasSampler(np.random.default_rng(0).random(1000))
    ref = s.sample(50_000, seed=3, num_threads=1)
    for threads in (2, 3, 0):
        np.testing.assert_array_equal(s.sample(50_000, seed=3, num_threads=threads), ref)
    rng = np.random.default_rng(1)
    q = rng.standard_normal((70, 16)).astype(np.float32)
    x = rng.standard_normal((500, 16)).astype(np.float32)
    ids1, sc1 = fs.topk(q, x, 7, num_threads=1)
    for threads in (2, 3):
        ids, sc = fs.topk(q, x, 7, num_threads=threads)
        np.testing.assert_array_equal(ids, ids1)
        np.testing.assert_array_equal(sc, sc1)


# --- concurrency -------------------------------------------------------------------------------


def test_topk_from_many_python_threads():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((3000, 32)).astype(np.float32)
    queries = [rng.standard_normal((40, 32)).astype(np.float32) for _ in range(16)]
    exclude = [_interactions(40, 3000, 0.01, seed=i) for i in range(16)]
    serial = [
        fs.topk(q, x, 10, exclude=e, num_threads=2) for q, e in zip(queries, exclude, strict=False)
    ]
    with ThreadPoolExecutor(8) as ex:
        parallel = list(ex.map(lambda qe: fs.topk(qe[0], x, 10, exclude=qe[1], num_threads=2),
                               zip(queries, exclude, strict=False)))  # fmt: skip
    for (i1, s1), (i2, s2) in zip(serial, parallel, strict=False):
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(s1, s2)


def test_softmax_recommend_from_many_python_threads(data):
    m = fs.SoftmaxModel(data.n_items, hidden=(16,), dim=8, epochs=1, seed=0, num_threads=2)
    m.fit(data.features, data.interactions, show_progress=False)
    chunks = [data.features.take(np.arange(i, 600, 8)) for i in range(8)]
    serial = [m.recommend(f, k=5) for f in chunks]
    with ThreadPoolExecutor(8) as ex:
        parallel = list(ex.map(lambda f: m.recommend(f, k=5), chunks * 2))
    for (i1, s1), (i2, s2) in zip(serial * 2, parallel, strict=False):
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(s1, s2)


def test_wals_fold_in_and_fit_from_many_python_threads():
    a = _interactions(seed=4)
    m = fs.WALS(8, iterations=2, num_threads=2).fit(a, show_progress=False)
    serial = [m.fold_in(a[i::6]) for i in range(6)]
    with ThreadPoolExecutor(6) as ex:
        parallel = list(ex.map(lambda i: m.fold_in(a[i::6]), range(6)))
        fits = list(ex.map(lambda s: fs.WALS(4, iterations=2, seed=s, num_threads=1)
                           .fit(a, show_progress=False).item_embeddings, [0, 1, 0, 1]))  # fmt: skip
    for x, y in zip(serial, parallel, strict=False):
        np.testing.assert_array_equal(x, y)
    rec_serial = [m.recommend(np.arange(i, 200, 6), k=7, exclude=a[i::6]) for i in range(6)]
    sim_serial = [m.similar_items(np.arange(i, 80, 6), k=4) for i in range(6)]
    with ThreadPoolExecutor(6) as ex:
        rec = list(ex.map(lambda i: m.recommend(np.arange(i, 200, 6), k=7, exclude=a[i::6]),
                          range(6)))  # fmt: skip
        sim = list(ex.map(lambda i: m.similar_items(np.arange(i, 80, 6), k=4), range(6)))
    for (i1, s1), (i2, s2) in zip(rec_serial + sim_serial, rec + sim, strict=True):
        np.testing.assert_array_equal(i1, i2)
        np.testing.assert_array_equal(s1, s2)
    np.testing.assert_array_equal(fits[0], fits[2])
    np.testing.assert_array_equal(fits[1], fits[3])


# --- numerics ----------------------------------------------------------------------------------


@pytest.mark.parametrize("loss", ["full", "positives", "sampled"])
def test_softmax_extreme_logits_stay_finite(loss):
    """Logits of magnitude ~1e4 (and more): loss and gradients finite, training stays finite."""
    rng = np.random.default_rng(0)
    n_items, n = 50, 64
    feats = fs.QueryFeatures(dense=rng.standard_normal((n, 4)).astype(np.float32))
    targets = sp.csr_matrix(
        (np.ones(n, np.float32), (np.arange(n), rng.integers(0, n_items, n))), shape=(n, n_items)
    )
    m = fs.SoftmaxModel(n_items, hidden=(), dim=4, loss=loss, num_negatives=8, epochs=1,
                        optimizer="sgd", learning_rate=1e-6, num_threads=1)  # fmt: skip
    m.fit(feats, targets, show_progress=False)
    params = m.parameters
    params["mlp.0.weight"][...] = 100.0 * np.sign(rng.standard_normal(params["mlp.0.weight"].shape))
    params["item_embeddings"][...] = 100.0 * np.sign(
        rng.standard_normal(params["item_embeddings"].shape)
    )
    logits = m.query_embeddings(feats) @ m.item_embeddings.T
    assert np.abs(logits).max() > 1e4
    value = m.loss(feats, targets)
    assert np.isfinite(value) and value >= 0
    for name, g in m.gradients(feats, targets).items():
        assert np.isfinite(g).all(), name
    m.fit(feats, targets, show_progress=False)
    for name, p in m.parameters.items():
        assert np.isfinite(p).all(), name
    ids, _scores = m.recommend(feats, k=3)
    assert (ids >= 0).all()


def test_softmax_huge_target_weights():
    """Target weights are normalised per row: 1e30 behaves like 1."""
    rng = np.random.default_rng(1)
    feats = fs.QueryFeatures(dense=rng.standard_normal((20, 3)))
    t = sp.csr_matrix(
        (np.ones(20, np.float32), (np.arange(20), rng.integers(0, 10, 20))), shape=(20, 10)
    )
    kw = dict(hidden=(4,), dim=3, epochs=2, num_threads=1, seed=0)
    a = fs.SoftmaxModel(10, **kw).fit(feats, t, show_progress=False)
    b = fs.SoftmaxModel(10, **kw).fit(feats, t * np.float32(1e30), show_progress=False)
    np.testing.assert_allclose(a.item_embeddings, b.item_embeddings, rtol=1e-5, atol=1e-6)


def test_wals_huge_weights_and_targets_stay_finite():
    a = _interactions(seed=5)
    w = a.copy()
    w.data[:] = 1e30
    m = fs.WALS(4, iterations=2, solver="cg", num_threads=1)
    m.fit(a * np.float32(1e15), w, show_progress=False)
    assert np.isfinite(m.query_embeddings()).all() and np.isfinite(m.item_embeddings).all()
    assert np.isfinite(m.loss_history).all()
    # Cholesky (float64): lambda is lost next to 1e30 weights; a clear error, never NaN.
    chol = fs.WALS(4, iterations=2, solver="cholesky", num_threads=1)
    try:
        chol.fit(a * np.float32(1e15), w, show_progress=False)
    except RuntimeError as e:
        assert "weights" in str(e)
    else:
        assert (
            np.isfinite(chol.query_embeddings()).all() and np.isfinite(chol.item_embeddings).all()
        )


def test_wals_singular_systems():
    """lambda = 0, duplicate item columns, empty rows: CG stays finite; Cholesky either solves or
    raises the documented RuntimeError (never NaN)."""
    a = _interactions(60, 20, seed=6).tolil()
    a[:, 5] = a[:, 4]  # duplicate columns
    a[7, :] = 0  # an empty row
    a = a.tocsr()
    a.eliminate_zeros()
    for w0 in (0.0, 0.1):
        m = fs.WALS(16, iterations=3, regularization=0.0, unobserved_weight=w0, solver="cg",
                    num_threads=1).fit(a, show_progress=False)  # fmt: skip
        assert np.isfinite(m.query_embeddings()).all() and np.isfinite(m.item_embeddings).all()
        assert np.isfinite(m.loss_history).all()
        try:  # fold_in solves exactly (Cholesky): a singular row is the documented error
            assert np.isfinite(m.fold_in(a[:5])).all()
        except RuntimeError as e:
            assert "regularization" in str(e)
        chol = fs.WALS(16, iterations=3, regularization=0.0, unobserved_weight=w0,
                       solver="cholesky", num_threads=1)  # fmt: skip
        try:
            chol.fit(a, show_progress=False)
        except RuntimeError as e:
            assert "regularization" in str(e)
        else:
            assert np.isfinite(chol.item_embeddings).all()
