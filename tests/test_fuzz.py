"""Property-based fuzzing of the public entry points over shapes (zero sizes included), dtypes and
random sparse structure: either a correct result (checked against NumPy) or a clean
TypeError / ValueError / IndexError -- never a crash, a hang or garbage.

Bounded and reproducible: ``derandomize=True`` and small ``max_examples``.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

import fastsoftmax as fs

from reference import softmax_dnn, topk_reference, wals_solve_dense

CLEAN = (TypeError, ValueError, IndexError)
FUZZ = settings(
    max_examples=120,
    derandomize=True,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# Every example of this module, counted (reported by the last test).
EXAMPLES = {"n": 0}


def _count():
    EXAMPLES["n"] += 1


@st.composite
def sparse_matrices(draw, *, max_rows=8, max_cols=8, values=None, malformed=True):
    """A scipy.sparse matrix in a random format; optionally with unsorted / duplicate indices,
    explicit zeros, or (rarely) malformed index arrays."""
    n_rows = draw(st.integers(0, max_rows))
    n_cols = draw(st.integers(0, max_cols))
    nnz = draw(st.integers(0, 3 * n_rows * n_cols // 2 + 1)) if n_rows and n_cols else 0
    rows = draw(hnp.arrays(np.int64, nnz, elements=st.integers(0, max(n_rows - 1, 0))))
    cols = draw(hnp.arrays(np.int64, nnz, elements=st.integers(0, max(n_cols - 1, 0))))
    values = values or st.sampled_from([1.0, 0.5, 2.0, 0.0, 3.0])
    data = draw(hnp.arrays(np.float32, nnz, elements=values))
    fmt = draw(st.sampled_from(["csr", "csc", "coo", "csr_raw"]))
    if fmt == "csr_raw":  # unsorted, duplicate entries kept as they are
        order = np.argsort(rows, kind="stable")
        indptr = np.concatenate([[0], np.cumsum(np.bincount(rows, minlength=n_rows))])
        m = sp.csr_matrix((n_rows, n_cols), dtype=np.float32)
        m.indptr, m.indices, m.data = (
            indptr.astype(np.int32),
            cols[order].astype(np.int32),
            data[order],
        )
        if malformed and nnz and draw(st.integers(0, 4)) == 0:
            m.indices = m.indices.copy()
            m.indices[draw(st.integers(0, nnz - 1))] = draw(st.sampled_from([-1, n_cols, 2**30]))
        return m
    coo = sp.coo_matrix((data, (rows, cols)), shape=(n_rows, n_cols))
    return coo if fmt == "coo" else coo.asformat(fmt)


def _dense_of(m):
    """Dense float64 of a (possibly non-canonical) valid sparse matrix: duplicates summed."""
    coo = sp.coo_matrix(m)
    out = np.zeros(m.shape)
    np.add.at(out, (coo.row, coo.col), coo.data.astype(np.float64))
    return out


def _stored_mask(m):
    coo = sp.coo_matrix(m)
    out = np.zeros(m.shape, dtype=bool)
    out[coo.row, coo.col] = True
    return out


def _valid_structure(m):
    if m.format != "csr":
        return True
    ids = m.indices[: m.indptr[-1]]
    return not len(ids) or (ids.min() >= 0 and ids.max() < m.shape[1])


# --- AliasSampler ------------------------------------------------------------------------------

_SPECIAL = [0.0, 1e-30, 1e30, -1.0, np.nan, np.inf, 0.25, 1e300]


@st.composite
def weights_strategy(draw):
    dtype = draw(
        st.sampled_from([np.float64, np.float32, np.int32, np.uint8, np.float16, np.bool_])
    )
    values = draw(hnp.arrays(np.float64, st.integers(0, 40),
                             elements=st.one_of(st.integers(0, 5).map(float),
                                                st.sampled_from(_SPECIAL))))  # fmt: skip
    with np.errstate(all="ignore"):  # overflow to inf, NaN -> int: part of the fuzzing
        return values.astype(dtype)


@FUZZ
@given(w=weights_strategy(), size=st.integers(0, 300), seed=st.integers(0, 2**64 - 1),
       threads=st.integers(0, 3))  # fmt: skip
def test_fuzz_alias_sampler(w, size, seed, threads):
    _count()
    wd = w.astype(np.float64)
    valid = len(wd) > 0 and np.isfinite(wd).all() and (wd >= 0).all() and np.isfinite(wd.sum())
    valid = valid and wd.sum() > 0
    try:
        s = fs.AliasSampler(w)
    except ValueError as e:
        assert "weights" in str(e)
        assert not valid
        return
    assert valid
    p = wd / wd.sum()
    np.testing.assert_allclose(s.probabilities, p, rtol=1e-12, atol=1e-300)
    ids = s.sample(size, seed=seed, num_threads=threads)
    assert ids.dtype == np.int64 and ids.shape == (size,)
    assert ((ids >= 0) & (ids < len(w))).all()
    assert (wd[ids] > 0).all()  # zero-weight items are never drawn
    np.testing.assert_array_equal(ids, s.sample(size, seed=seed, num_threads=1))


# --- topk --------------------------------------------------------------------------------------


@FUZZ
@given(
    b=st.integers(0, 6),
    n=st.integers(0, 25),
    d=st.integers(0, 6),
    k=st.integers(-1, 30),
    dtype=st.sampled_from([np.float32, np.float64, np.int8, np.int64, np.float16, np.bool_]),
    layout=st.sampled_from(["C", "F", "strided"]),
    exclude=st.one_of(st.none(), sparse_matrices(max_rows=6, max_cols=25)),
    threads=st.integers(0, 3),
    data=st.data(),
)
def test_fuzz_topk(b, n, d, k, dtype, layout, exclude, threads, data):
    _count()
    q = data.draw(hnp.arrays(np.int64, (b, d), elements=st.integers(-3, 3))).astype(dtype)
    x = data.draw(hnp.arrays(np.int64, (n, d), elements=st.integers(-3, 3))).astype(dtype)
    if layout == "F":
        q, x = np.asfortranarray(q), np.asfortranarray(x)
    elif layout == "strided":
        q, x = np.repeat(q, 2, axis=1)[:, ::2], np.repeat(x, 2, axis=1)[:, ::2]
    try:
        ids, scores = fs.topk(q, x, k, exclude=exclude, num_threads=threads)
    except CLEAN as e:
        bad_shape = exclude is not None and exclude.shape != (b, n)
        assert k < 1 or bad_shape or not _valid_structure(exclude), e
        return
    assert k >= 1
    assert ids.shape == scores.shape == (b, k)
    ref_ids, ref_scores = topk_reference(q, x, k, exclude=None if exclude is None else
                                         sp.csr_matrix(_stored_mask(exclude)))  # fmt: skip
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores)


# --- WALS --------------------------------------------------------------------------------------


@FUZZ
@given(
    a=sparse_matrices(max_rows=7, max_cols=6),
    dim=st.integers(1, 4),
    solver=st.sampled_from(["cg", "cholesky"]),
    w0=st.sampled_from([0.0, 0.3, 1.0]),
    lam=st.sampled_from([0.0, 0.05, 1.0]),
    weighted=st.booleans(),
    threads=st.integers(1, 3),
)
def test_fuzz_wals_fit_and_fold_in(a, dim, solver, w0, lam, weighted, threads):
    _count()
    weights = None
    if weighted and _valid_structure(a):
        weights = a.copy()
        weights.data = np.linspace(0.5, 4.0, len(weights.data)).astype(np.float32)
    model = fs.WALS(dim, iterations=2, solver=solver, unobserved_weight=w0, regularization=lam,
                    num_threads=threads, seed=1)  # fmt: skip
    try:
        model.fit(a, weights, show_progress=False)
    except CLEAN as e:
        assert 0 in a.shape or not _valid_structure(a) or "one stored entry" in str(e), e
        return
    except RuntimeError as e:  # documented: Cholesky on a singular row needs lambda > 0
        assert solver == "cholesky" and lam == 0 and "regularization" in str(e)
        return
    assert _valid_structure(a) and 0 not in a.shape
    u, v = model.query_embeddings(), model.item_embeddings
    assert u.shape == (a.shape[0], dim) and v.shape == (a.shape[1], dim)
    assert np.isfinite(u).all() and np.isfinite(v).all()
    assert np.isfinite(model.loss_history).all()
    # fold_in is the exact row solve given V: compare with the dense NumPy solve.
    try:
        folded = model.fold_in(a, weights)
    except RuntimeError:
        assert lam == 0
        return
    target = _dense_of(a)
    w = np.full(a.shape, w0)
    stored = _stored_mask(a)
    w[stored] = 1.0 if weights is None else _dense_of(weights)[stored]
    if lam > 0:
        ref = wals_solve_dense(target, w, v, lam)
        ref[~stored.any(axis=1)] = 0.0
        np.testing.assert_allclose(folded, ref, rtol=2e-3, atol=2e-4)


# --- SoftmaxModel ------------------------------------------------------------------------------


@st.composite
def softmax_problems(draw):
    n = draw(st.integers(0, 7))
    n_items = draw(st.integers(1, 6))
    n_dense = draw(st.integers(0, 3))
    dense_dtype = draw(st.sampled_from([np.float32, np.float64, np.int16]))
    dense = (
        draw(hnp.arrays(np.int64, (n, n_dense), elements=st.integers(-2, 2))).astype(dense_dtype)
        if n_dense
        else None
    )
    categorical = None
    if draw(st.booleans()):
        categorical = {"c": draw(hnp.arrays(np.int64, n, elements=st.integers(0, 4)))}
    bags = None
    if draw(st.booleans()):
        bags = {"b": draw(sparse_matrices(max_rows=n, max_cols=5, malformed=False)
                          .filter(lambda m, n=n: m.shape[0] == n))}  # fmt: skip
    targets = draw(sparse_matrices(max_rows=n, max_cols=n_items)
                   .filter(lambda m, n=n: m.shape[0] == n))  # fmt: skip
    return n_items, dense, categorical, bags, targets


@FUZZ
@given(
    problem=softmax_problems(),
    loss=st.sampled_from(["full", "positives", "sampled"]),
    hidden=st.sampled_from([(), (3,)]),
    pooling=st.sampled_from(["mean", "sum", "sqrtn"]),
    batch_size=st.integers(1, 4),
    threads=st.integers(1, 2),
)
def test_fuzz_softmax_fit_and_gradients(problem, loss, hidden, pooling, batch_size, threads):
    _count()
    n_items, dense, categorical, bags, targets = problem
    try:
        feats = fs.QueryFeatures(dense=dense, categorical=categorical, bags=bags)
    except CLEAN as e:
        assert dense is None and categorical is None and bags is None, e
        return
    model = fs.SoftmaxModel(n_items, hidden=hidden, dim=2, embedding_dim=2, loss=loss,
                            num_negatives=3, pooling=pooling, batch_size=batch_size, epochs=1,
                            num_threads=threads, seed=0)  # fmt: skip
    try:
        model.fit(feats, targets, show_progress=False)
    except CLEAN as e:
        if targets.shape[1] == n_items and _valid_structure(targets):
            t = _dense_of(targets)
            assert t.shape[0] == 0 or (t.sum(axis=1) <= 0).any() or (t < 0).any(), e
        return
    assert targets.shape[0] > 0
    for name, p in model.parameters.items():
        assert np.isfinite(p).all(), name
    value = model.loss(feats, targets)
    grads = model.gradients(feats, targets)
    assert np.isfinite(value) and all(np.isfinite(g).all() for g in grads.values())
    if loss != "sampled":
        ref_value, ref_grads = softmax_dnn(
            model.parameters, feats, sp.csr_matrix(_dense_of(targets)), pooling=pooling, loss=loss
        )
        np.testing.assert_allclose(value, ref_value, rtol=1e-4, atol=1e-5)
        for name, g in ref_grads.items():
            np.testing.assert_allclose(grads[name], g, rtol=1e-3, atol=1e-5, err_msg=name)
    emb = model.query_embeddings(feats)
    assert emb.shape == (feats.n_rows, 2) and np.isfinite(emb).all()


def test_fuzz_example_count():
    """Runs last in this module: every fuzz test above ran its examples."""
    if EXAMPLES["n"] == 0:
        pytest.skip("run together with the fuzz tests")
    assert EXAMPLES["n"] >= 4 * 20
