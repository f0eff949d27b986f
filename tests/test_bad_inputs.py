"""Bad input across the public API: every case must raise TypeError / ValueError / IndexError with
a message naming the argument -- never crash, hang or return garbage."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

import fastsoftmax as fs
from fastsoftmax import datasets, metrics

RNG = np.random.default_rng(0)
N_Q, N_I, DIM = 12, 9, 4


def _interactions(n_q=N_Q, n_i=N_I, seed=0):
    rng = np.random.default_rng(seed)
    a = sp.random(n_q, n_i, density=0.4, format="csr", random_state=rng, dtype=np.float32)
    a.data[:] = 1
    # every row and column gets at least one entry
    a = a + sp.csr_matrix((np.ones(n_q), (np.arange(n_q), np.arange(n_q) % n_i)), shape=(n_q, n_i))
    a.data[:] = 1
    return a.astype(np.float32).tocsr()


A = _interactions()


def _csr_unchecked(indptr, indices, data, shape):
    """A csr_matrix built from raw arrays without scipy's (partial) format checks."""
    m = sp.csr_matrix(shape, dtype=np.float32)
    m.indptr = np.asarray(indptr, dtype=np.int32)
    m.indices = np.asarray(indices, dtype=np.int32)
    m.data = np.asarray(data, dtype=np.float32)
    return m


def _csc_unchecked(indptr, indices, data, shape):
    m = sp.csc_matrix(shape, dtype=np.float32)
    m.indptr = np.asarray(indptr, dtype=np.int32)
    m.indices = np.asarray(indices, dtype=np.int32)
    m.data = np.asarray(data, dtype=np.float32)
    return m


@pytest.fixture(scope="module")
def wals():
    return fs.WALS(DIM, iterations=2, num_threads=1).fit(A, show_progress=False)


def _feats(n=N_Q, seed=0):
    rng = np.random.default_rng(seed)
    return fs.QueryFeatures(
        dense=rng.standard_normal((n, 3)).astype(np.float32),
        categorical={"c": rng.integers(0, 5, n)},
        bags={"b": sp.random(n, 7, density=0.3, format="csr", random_state=rng)},
    )


FEATS = _feats()


@pytest.fixture(scope="module")
def softmax():
    m = fs.SoftmaxModel(N_I, hidden=(8,), dim=DIM, epochs=1, batch_size=4, num_threads=1)
    return m.fit(FEATS, A, show_progress=False)


def _readonly(a):
    a = np.array(a)
    a.flags.writeable = False
    return a


# --- cases that need no fitted model: (callable, exception, message regex) --------------------
X = RNG.standard_normal((5, DIM)).astype(np.float32)
ITEMS = RNG.standard_normal((N_I, DIM)).astype(np.float32)

CASES = {
    # AliasSampler
    "sampler-str-weights": (lambda: fs.AliasSampler(["a", "b"]), TypeError, "weights"),
    "sampler-complex": (lambda: fs.AliasSampler(np.ones(3, complex)), TypeError, "weights"),
    "sampler-2d": (lambda: fs.AliasSampler(np.ones((2, 2))), ValueError, "weights"),
    "sampler-empty": (lambda: fs.AliasSampler(np.array([])), ValueError, "weights"),
    "sampler-nan": (lambda: fs.AliasSampler([1.0, np.nan]), ValueError, "weights"),
    "sampler-inf": (lambda: fs.AliasSampler([1.0, np.inf]), ValueError, "weights"),
    "sampler-negative": (lambda: fs.AliasSampler([1.0, -1.0]), ValueError, "weights"),
    "sampler-zero-sum": (lambda: fs.AliasSampler([0.0, 0.0]), ValueError, "weights"),
    "sampler-size-neg": (lambda: fs.AliasSampler([1.0]).sample(-1), ValueError, "size"),
    "sampler-size-float": (lambda: fs.AliasSampler([1.0]).sample(2.5), TypeError, "size"),
    "sampler-seed-neg": (lambda: fs.AliasSampler([1.0]).sample(2, seed=-1), ValueError, "seed"),
    "sampler-seed-big": (
        lambda: fs.AliasSampler([1.0]).sample(2, seed=2**64),
        ValueError,
        "seed",
    ),
    "sampler-threads-neg": (
        lambda: fs.AliasSampler([1.0]).sample(2, num_threads=-1),
        ValueError,
        "num_threads",
    ),
    # topk
    "topk-k0": (lambda: fs.topk(X, ITEMS, 0), ValueError, "k"),
    "topk-k-float": (lambda: fs.topk(X, ITEMS, 2.0), TypeError, "k"),
    "topk-queries-1d": (lambda: fs.topk(X[0], ITEMS, 2), ValueError, "queries"),
    "topk-items-str": (lambda: fs.topk(X, np.array([["a"] * DIM]), 2), TypeError, "items"),
    "topk-dim-mismatch": (lambda: fs.topk(X, ITEMS[:, :2], 2), ValueError, "items"),
    "topk-nan-queries": (
        lambda: fs.topk(np.where(X > 1, np.nan, X), ITEMS, 2),
        ValueError,
        "queries",
    ),
    "topk-inf-queries": (lambda: fs.topk(np.full_like(X, np.inf), ITEMS, 2), ValueError, "queries"),
    "topk-threads-neg": (lambda: fs.topk(X, ITEMS, 2, num_threads=-2), ValueError, "num_threads"),
    "topk-exclude-dense": (
        lambda: fs.topk(X, ITEMS, 2, exclude=np.zeros((5, N_I))),
        TypeError,
        "exclude",
    ),
    "topk-exclude-shape": (
        lambda: fs.topk(X, ITEMS, 2, exclude=sp.csr_matrix((5, N_I + 1))),
        ValueError,
        "exclude",
    ),
    "topk-exclude-id-out-of-range": (
        lambda: fs.topk(
            X, ITEMS, 2, exclude=_csr_unchecked([0, 1, 1, 1, 1, 1], [N_I], [1], (5, N_I))
        ),
        IndexError,
        "exclude",
    ),
    "topk-exclude-negative-id": (
        lambda: fs.topk(
            X, ITEMS, 2, exclude=_csr_unchecked([0, 1, 1, 1, 1, 1], [-3], [1], (5, N_I))
        ),
        IndexError,
        "exclude",
    ),
    "topk-exclude-bad-indptr": (
        lambda: fs.topk(
            X, ITEMS, 2, exclude=_csr_unchecked([0, 2, 1, 1, 1, 1], [0, 1], [1, 1], (5, N_I))
        ),
        ValueError,
        "exclude",
    ),
    # WALS construction
    "wals-dim0": (lambda: fs.WALS(0), ValueError, "dim"),
    "wals-dim-neg": (lambda: fs.WALS(-3), ValueError, "dim"),
    "wals-dim-float": (lambda: fs.WALS(2.5), TypeError, "dim"),
    "wals-solver": (lambda: fs.WALS(2, solver="qr"), ValueError, "solver"),
    "wals-w0-neg": (lambda: fs.WALS(2, unobserved_weight=-0.1), ValueError, "unobserved_weight"),
    "wals-lambda-nan": (lambda: fs.WALS(2, regularization=np.nan), ValueError, "regularization"),
    "wals-iterations0": (lambda: fs.WALS(2, iterations=0), ValueError, "iterations"),
    "wals-cg-steps0": (lambda: fs.WALS(2, cg_steps=0), ValueError, "cg_steps"),
    "wals-threads-neg": (lambda: fs.WALS(2, num_threads=-1), ValueError, "num_threads"),
    "wals-seed-neg": (lambda: fs.WALS(2, seed=-5), ValueError, "seed"),
    # WALS.fit
    "wals-fit-dense": (
        lambda: fs.WALS(2).fit(A.toarray(), show_progress=False),
        TypeError,
        "interactions",
    ),
    "wals-fit-complex": (
        lambda: fs.WALS(2).fit(A.astype(np.complex64), show_progress=False),
        TypeError,
        "interactions",
    ),
    "wals-fit-empty": (
        lambda: fs.WALS(2).fit(sp.csr_matrix((0, 5)), show_progress=False),
        ValueError,
        "interactions",
    ),
    "wals-fit-no-entries": (
        lambda: fs.WALS(2).fit(sp.csr_matrix((4, 5)), show_progress=False),
        ValueError,
        "interactions: expected at least one stored entry",
    ),
    "wals-fit-no-columns": (
        lambda: fs.WALS(2).fit(sp.csr_matrix((4, 0)), show_progress=False),
        ValueError,
        "interactions",
    ),
    "wals-fit-nan": (
        lambda: fs.WALS(2).fit(
            sp.csr_matrix(([np.nan], ([0], [0])), shape=(2, 2)), show_progress=False
        ),
        ValueError,
        "interactions",
    ),
    "wals-fit-weights-negative": (
        lambda: fs.WALS(2).fit(A, -A, show_progress=False),
        ValueError,
        "weights",
    ),
    "wals-fit-weights-inf": (
        lambda: fs.WALS(2).fit(A, A * np.inf, show_progress=False),
        ValueError,
        "weights",
    ),
    "wals-fit-weights-shape": (
        lambda: fs.WALS(2).fit(A, A[:, :-1], show_progress=False),
        ValueError,
        "weights",
    ),
    "wals-fit-weights-pattern": (
        lambda: fs.WALS(2).fit(A, sp.eye(N_Q, N_I, format="csr"), show_progress=False),
        ValueError,
        "weights",
    ),
    "wals-fit-index-out-of-range-csr": (
        lambda: fs.WALS(2).fit(
            _csr_unchecked([0, 1, 2], [0, 7], [1, 1], (2, 3)), show_progress=False
        ),
        IndexError,
        "interactions",
    ),
    "wals-fit-index-beyond-int32": (
        lambda: fs.WALS(2).fit(
            sp.csr_matrix(
                (
                    np.ones(1, np.float32),
                    np.array([2**40], np.int64),
                    np.array([0, 1, 1], np.int64),
                ),
                shape=(2, 3),
            ),
            show_progress=False,
        ),
        IndexError,
        "interactions",
    ),
    "wals-fit-index-out-of-range-csc": (
        lambda: fs.WALS(2).fit(
            _csc_unchecked([0, 1, 2], [0, 9], [1, 1], (3, 2)), show_progress=False
        ),
        IndexError,
        "interactions",
    ),
    "wals-fit-indptr-decreasing": (
        lambda: fs.WALS(2).fit(
            _csr_unchecked([0, 2, 1], [0, 1], [1, 1], (2, 3)), show_progress=False
        ),
        ValueError,
        "interactions",
    ),
    "wals-fit-indptr-too-long": (
        lambda: fs.WALS(2).fit(
            _csr_unchecked([0, 1, 5], [0, 1], [1, 1], (2, 3)), show_progress=False
        ),
        ValueError,
        "interactions",
    ),
    # SoftmaxModel construction
    "softmax-n-items0": (lambda: fs.SoftmaxModel(0), ValueError, "n_items"),
    "softmax-dim0": (lambda: fs.SoftmaxModel(5, dim=0), ValueError, "dim"),
    "softmax-hidden0": (lambda: fs.SoftmaxModel(5, hidden=(4, 0)), ValueError, "hidden"),
    "softmax-loss": (lambda: fs.SoftmaxModel(5, loss="hinge"), ValueError, "loss"),
    "softmax-optimizer": (lambda: fs.SoftmaxModel(5, optimizer="lbfgs"), ValueError, "optimizer"),
    "softmax-pooling": (lambda: fs.SoftmaxModel(5, pooling="max"), ValueError, "pooling"),
    "softmax-sampler": (
        lambda: fs.SoftmaxModel(5, loss="sampled", sampler="magic"),
        ValueError,
        "sampler",
    ),
    "softmax-lr0": (lambda: fs.SoftmaxModel(5, learning_rate=0.0), ValueError, "learning_rate"),
    "softmax-lr-nan": (
        lambda: fs.SoftmaxModel(5, learning_rate=np.nan),
        ValueError,
        "learning_rate",
    ),
    "softmax-batch0": (lambda: fs.SoftmaxModel(5, batch_size=0), ValueError, "batch_size"),
    "softmax-threads-neg": (lambda: fs.SoftmaxModel(5, num_threads=-1), ValueError, "num_threads"),
    "softmax-item-bias-str": (lambda: fs.SoftmaxModel(5, item_bias="yes"), TypeError, "item_bias"),
    "softmax-negatives0": (
        lambda: fs.SoftmaxModel(5, loss="sampled", num_negatives=0),
        ValueError,
        "num_negatives",
    ),
    "softmax-sampler-weights-negative": (
        lambda: fs.SoftmaxModel(
            3, loss="sampled", sampler="weights", sampler_weights=[1.0, -1.0, 1.0]
        ),
        ValueError,
        "sampler_weights",
    ),
    "softmax-gravity-neg": (lambda: fs.SoftmaxModel(5, gravity=-1.0), ValueError, "gravity"),
    # QueryFeatures
    "features-none": (lambda: fs.QueryFeatures(), ValueError, "QueryFeatures"),
    "features-dense-nan": (lambda: fs.QueryFeatures(dense=[[np.nan]]), ValueError, "dense"),
    "features-dense-3d": (lambda: fs.QueryFeatures(dense=np.zeros((2, 2, 2))), ValueError, "dense"),
    "features-categorical-float": (
        lambda: fs.QueryFeatures(categorical={"c": np.array([0.5, 1.0])}),
        TypeError,
        "categorical",
    ),
    "features-bag-dense": (lambda: fs.QueryFeatures(bags={"b": np.eye(3)}), TypeError, "bags"),
    "features-bag-inf": (
        lambda: fs.QueryFeatures(bags={"b": sp.csr_matrix(np.array([[np.inf, 0.0]]))}),
        ValueError,
        "bags",
    ),
    "features-rows-mismatch": (
        lambda: fs.QueryFeatures(dense=np.zeros((3, 2)), categorical={"c": np.zeros(4, int)}),
        ValueError,
        "rows",
    ),
    # SoftmaxModel.fit
    "softmax-fit-targets-dense": (
        lambda: fs.SoftmaxModel(N_I, hidden=(), dim=2).fit(FEATS, A.toarray(), show_progress=False),
        TypeError,
        "targets",
    ),
    "softmax-fit-targets-rows": (
        lambda: fs.SoftmaxModel(N_I, hidden=(), dim=2).fit(FEATS, A[:-1], show_progress=False),
        ValueError,
        "targets",
    ),
    "softmax-fit-targets-columns": (
        lambda: fs.SoftmaxModel(N_I + 1, hidden=(), dim=2).fit(FEATS, A, show_progress=False),
        ValueError,
        "targets",
    ),
    "softmax-fit-targets-negative": (
        lambda: fs.SoftmaxModel(N_I, hidden=(), dim=2).fit(FEATS, -A, show_progress=False),
        ValueError,
        "targets",
    ),
    "softmax-fit-targets-nan": (
        lambda: fs.SoftmaxModel(N_I, hidden=(), dim=2).fit(FEATS, A * np.nan, show_progress=False),
        ValueError,
        "targets",
    ),
    "softmax-fit-empty-row": (
        lambda: fs.SoftmaxModel(N_I, hidden=(), dim=2).fit(
            FEATS, sp.vstack([A[:-1], sp.csr_matrix((1, N_I))]).tocsr(), show_progress=False
        ),
        ValueError,
        "targets",
    ),
    "softmax-fit-targets-index-out-of-range": (
        lambda: fs.SoftmaxModel(3, hidden=(), dim=2).fit(
            fs.QueryFeatures(dense=np.ones((2, 1))),
            _csr_unchecked([0, 1, 2], [0, 5], [1, 1], (2, 3)),
            show_progress=False,
        ),
        IndexError,
        "targets",
    ),
    "softmax-fit-feats-type": (
        lambda: fs.SoftmaxModel(N_I, hidden=(), dim=2).fit(
            np.ones((N_Q, 3)), A, show_progress=False
        ),
        TypeError,
        "feats",
    ),
    "softmax-fit-bag-index-out-of-range": (
        lambda: fs.SoftmaxModel(3, hidden=(), dim=2, vocab_sizes={"b": 4}).fit(
            fs.QueryFeatures(bags={"b": _csr_unchecked([0, 1, 2], [0, 9], [1, 1], (2, 4))}),
            sp.csr_matrix(np.eye(2, 3, dtype=np.float32)),
            show_progress=False,
        ),
        IndexError,
        "bags",
    ),
    # datasets / metrics / evaluate
    "make-categories-n0": (lambda: datasets.make_categories(0, 10, 2), ValueError, "n_queries"),
    "make-categories-fraction": (
        lambda: datasets.make_categories(10, 10, 2, in_category=1.5),
        ValueError,
        "in_category",
    ),
    "split-fraction": (
        lambda: datasets.train_test_split(A, test_fraction=1.0),
        ValueError,
        "test_fraction",
    ),
    "split-dense": (lambda: datasets.train_test_split(A.toarray()), TypeError, "interactions"),
    "cold-start-fraction": (
        lambda: datasets.cold_start_split(A, test_fraction=0.0),
        ValueError,
        "test_fraction",
    ),
    "load-csv-missing": (
        lambda: datasets.load_csv("/nonexistent/x.csv", 0, 1),
        FileNotFoundError,
        "path",
    ),
    "metrics-k0": (lambda: metrics.recall_at_k(np.zeros((N_Q, 3), int), A, k=0), ValueError, "k"),
    "metrics-float-ids": (
        lambda: metrics.recall_at_k(np.zeros((N_Q, 3)), A, k=3),
        TypeError,
        "recommended",
    ),
    "metrics-id-out-of-range": (
        lambda: metrics.recall_at_k(np.full((N_Q, 3), N_I), A, k=3),
        IndexError,
        "recommended",
    ),
    "metrics-rows": (
        lambda: metrics.recall_at_k(np.zeros((2, 3), int), A, k=3),
        ValueError,
        "recommended",
    ),
    "evaluate-no-train": (lambda: fs.evaluate(None, None, A), ValueError, "train"),
    # load
    "load-missing": (lambda: fs.load("/nonexistent/model.npz"), FileNotFoundError, "model.npz"),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input(case):
    fn, exc, match = CASES[case]
    with pytest.raises(exc, match=match):
        fn()


# --- cases on fitted models ----------------------------------------------------------------------


def test_wals_fold_in_bad_inputs(wals):
    with pytest.raises(ValueError, match="interactions"):
        wals.fold_in(A[:, :-1])  # wrong number of items
    with pytest.raises(TypeError, match="interactions"):
        wals.fold_in(A.toarray())
    with pytest.raises(IndexError, match="interactions"):
        wals.fold_in(_csr_unchecked([0, 1], [N_I + 2], [1.0], (1, N_I)))
    with pytest.raises(ValueError, match="weights"):
        wals.fold_in(A[:2], -A[:2])
    # rows without entries are fine: the zero vector
    out = wals.fold_in(sp.csr_matrix((3, N_I)))
    assert out.shape == (3, DIM) and not out.any()
    # unsorted indices and duplicates are canonicalised (duplicates summed), not misread
    dup = sp.csr_matrix(
        (np.array([1.0, 1.0, 1.0], np.float32), np.array([3, 1, 3]), np.array([0, 3])),
        shape=(1, N_I),
    )
    canonical = sp.csr_matrix((np.array([1.0, 2.0], np.float32), ([0, 0], [1, 3])), shape=(1, N_I))
    np.testing.assert_array_equal(wals.fold_in(dup), wals.fold_in(canonical))


def test_wals_recommend_bad_inputs(wals):
    with pytest.raises(IndexError, match="query_ids"):
        wals.recommend([0, N_Q])
    with pytest.raises(IndexError, match="query_ids"):
        wals.recommend(np.array([2**40]))
    with pytest.raises(IndexError, match="query_ids"):
        wals.recommend(-1)
    with pytest.raises(TypeError, match="query_ids"):
        wals.recommend([0.5])
    with pytest.raises(ValueError, match="query_ids"):
        wals.recommend(np.zeros((2, 2), int))
    with pytest.raises(ValueError, match="k"):
        wals.recommend([0], k=0)
    with pytest.raises(ValueError, match="exclude"):
        wals.recommend([0, 1], exclude=A[:1])
    with pytest.raises(IndexError, match="item_ids"):
        wals.similar_items([N_I])
    with pytest.raises(TypeError, match="item_ids"):
        wals.similar_items("a")
    ids, _ = wals.recommend(np.array([], dtype=np.int64), k=3)
    assert ids.shape == (0, 3)


def test_wals_objective_bad_inputs(wals):
    with pytest.raises(ValueError, match="interactions"):
        wals.objective(A[:-1])
    with pytest.raises(RuntimeError, match="fit"):
        fs.WALS(2).fold_in(A)


@pytest.mark.parametrize("where", [0, 37, -1])
def test_bag_entries_changed_after_construction_are_caught_by_the_core(where):
    """QueryFeatures checks its bags when built; arrays the user mutates afterwards are checked
    again by the core before any step (every entry, wherever the bad one is: a vectorised pass
    over all entries, then a search for the culprit)."""
    rng = np.random.default_rng(0)
    bag = sp.random(30, 40, density=0.3, format="csr", random_state=rng, dtype=np.float32)
    feats = fs.QueryFeatures(bags={"b": bag})
    targets = sp.csr_matrix(
        (np.ones(30, np.float32), (np.arange(30), np.arange(30) % 5)), shape=(30, 5)
    )
    model = fs.SoftmaxModel(5, hidden=(), dim=2, vocab_sizes={"b": 40}, epochs=1)
    model.fit(feats, targets, show_progress=False)
    _, indices, weights = feats.bags["b"]
    before = model.parameters["bags.b"].copy()
    for bad_id, exc in ((40, IndexError), (-1, IndexError)):
        indices[where] = bad_id
        for train in (model.partial_fit, model.fit):  # fit keeps the fitted model on bad input
            with pytest.raises(exc, match=f"bags 'b': expected ids in \\[0, 40\\), got {bad_id}"):
                train(feats, targets, show_progress=False)
        indices[where] = 3
    for bad_w in (np.nan, np.inf, -np.inf):
        weights[where] = bad_w
        for train in (model.partial_fit, model.fit):
            with pytest.raises(ValueError, match="bags 'b': expected finite weights"):
                train(feats, targets, show_progress=False)
        weights[where] = 1.0
    np.testing.assert_array_equal(model.parameters["bags.b"], before)  # no step was taken
    model.fit(feats, targets, show_progress=False)  # valid again


def test_softmax_predict_bad_inputs(softmax):
    with pytest.raises(ValueError, match="feats"):
        softmax.query_embeddings(fs.QueryFeatures(dense=np.zeros((2, 3))))  # missing features
    bad_cat = fs.QueryFeatures(
        dense=np.zeros((2, 3)),
        categorical={"c": np.array([0, 2**40])},
        bags={"b": sp.csr_matrix((2, 7))},
    )
    with pytest.raises(IndexError, match="categorical 'c'"):
        softmax.query_embeddings(bad_cat)
    negative = fs.QueryFeatures(dense=np.zeros((2, 3)), categorical={"c": np.array([0, -1])},
                                bags={"b": sp.csr_matrix((2, 7))})  # fmt: skip
    with pytest.raises(IndexError, match="categorical 'c': expected ids >= 0"):
        softmax.query_embeddings(negative)
    wide_bag = fs.QueryFeatures(
        dense=np.zeros((2, 3)),
        categorical={"c": np.array([0, 1])},
        bags={"b": sp.csr_matrix((2, 70))},
    )
    with pytest.raises(IndexError, match="bags 'b'"):
        softmax.query_embeddings(wide_bag)
    with pytest.raises(ValueError, match="k"):
        softmax.recommend(FEATS, k=0)
    with pytest.raises(ValueError, match="exclude"):
        softmax.recommend(FEATS, k=2, exclude=sp.csr_matrix((N_Q, N_I + 1)))
    with pytest.raises(ValueError, match="seed"):
        softmax.gradients(FEATS, A, seed=-1)
    with pytest.raises(ValueError, match="targets"):
        softmax.loss(FEATS, A[:, :-1])
    with pytest.raises(TypeError, match="validation"):
        softmax.fit(FEATS, A, validation=[FEATS, A], show_progress=False)
    # read-only and non-contiguous inputs are accepted (copied only when needed)
    dense = np.asfortranarray(FEATS.dense)
    cat = _readonly(FEATS.categorical["c"])
    ok = fs.QueryFeatures(dense=dense, categorical={"c": cat}, bags={"b": sp.csr_matrix((N_Q, 7))})
    assert np.isfinite(softmax.query_embeddings(ok)).all()


def test_read_only_and_strided_inputs_are_accepted():
    w = _readonly(np.arange(1, 7, dtype=np.float64))[::2]
    assert len(fs.AliasSampler(w)) == 3
    q = _readonly(np.ones((3, 8), np.float32))[:, ::2]
    items = np.asfortranarray(ITEMS)
    ids, _ = fs.topk(q, items, 3)
    ref, _ = fs.topk(np.ascontiguousarray(q), np.ascontiguousarray(items), 3)
    np.testing.assert_array_equal(ids, ref)


def test_unsorted_and_duplicate_csr_indices():
    """Unsorted / duplicate CSR indices are canonicalised, never misread."""
    dup = sp.csr_matrix(
        (np.ones(4, np.float32), np.array([2, 0, 2, 1]), np.array([0, 3, 4])), shape=(2, 3)
    )
    canonical = dup.copy()
    canonical.sum_duplicates()
    kw = dict(iterations=2, num_threads=1, solver="cholesky")
    a = fs.WALS(2, **kw).fit(dup, show_progress=False)
    b = fs.WALS(2, **kw).fit(canonical, show_progress=False)
    np.testing.assert_array_equal(a.item_embeddings, b.item_embeddings)
    # topk's exclude: unsorted rows
    q = np.ones((2, DIM), np.float32)
    ids, _ = fs.topk(q, ITEMS[:3], 3, exclude=dup)
    ids_ref, _ = fs.topk(q, ITEMS[:3], 3, exclude=canonical)
    np.testing.assert_array_equal(ids, ids_ref)


def test_case_count():
    # the issue asks for at least 40 cases
    assert len(CASES) >= 40
