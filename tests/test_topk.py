import numpy as np
import pytest
import scipy.sparse as sp

import fastsoftmax as fs
from fastsoftmax import _core

from reference import topk_reference


def int_data(rng, b, n, d, lo=-3, hi=4):
    """Small-integer embeddings: every score is exact in float32, and ties are everywhere."""
    q = rng.integers(lo, hi, (b, d)).astype(np.float32)
    x = rng.integers(lo, hi, (n, d)).astype(np.float32)
    return q, x


def random_exclude(rng, b, n, density):
    return sp.random(b, n, density=density, format="csr", random_state=rng, dtype=np.float32)


@pytest.mark.parametrize(
    ("b", "n", "d", "k"),
    [(50, 1000, 5, 10), (7, 333, 9, 37), (200, 130, 16, 1), (3, 20000, 3, 5), (1, 17, 1, 17)],
)
def test_matches_reference_with_ties(kernel, b, n, d, k):
    rng = np.random.default_rng(b * 1000 + n)
    q, x = int_data(rng, b, n, d)
    ids, scores = fs.topk(q, x, k)
    ref_ids, ref_scores = topk_reference(q, x, k)
    assert ids.dtype == np.int64 and scores.dtype == np.float32
    assert ids.shape == scores.shape == (b, k)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores)


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_exclusions_match_reference(kernel, index_dtype):
    rng = np.random.default_rng(1)
    q, x = int_data(rng, 300, 2000, 6)
    ex = random_exclude(rng, 300, 2000, 0.05)
    ex.indices = ex.indices.astype(index_dtype)
    ex.indptr = ex.indptr.astype(index_dtype)
    ids, scores = fs.topk(q, x, 20, exclude=ex)
    ref_ids, ref_scores = topk_reference(q, x, 20, ex)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores)
    assert (ids >= 0).all()
    recommended = sp.csr_matrix(
        (np.ones(ids.size), ids.ravel(), np.arange(0, ids.size + 1, 20)), shape=ex.shape
    )
    assert recommended.multiply(ex).nnz == 0  # no excluded item is ever returned


def test_exclude_any_format_unsorted_and_duplicates():
    rng = np.random.default_rng(2)
    q, x = int_data(rng, 5, 50, 3)
    rows = np.array([0, 0, 0, 2, 2, 4])
    cols = np.array([9, 3, 9, 49, 0, 7])  # unsorted, with a duplicate
    coo = sp.coo_matrix((np.ones(6), (rows, cols)), shape=(5, 50))
    csr_unsorted = sp.csr_matrix((np.ones(6), cols, [0, 3, 3, 5, 5, 6]), shape=(5, 50))
    ref = topk_reference(q, x, 10, coo)
    for ex in (coo, csr_unsorted, sp.csr_array(coo), coo.tocsc(), coo.tolil()):
        ids, scores = fs.topk(q, x, 10, exclude=ex)
        np.testing.assert_array_equal(ids, ref[0])
        np.testing.assert_array_equal(scores, ref[1])


def test_random_real_data_is_the_true_top_k(kernel):
    rng = np.random.default_rng(3)
    q = rng.standard_normal((64, 32)).astype(np.float32)
    x = rng.standard_normal((5000, 32)).astype(np.float32)
    ids, scores = fs.topk(q, x, 15)
    exact = q.astype(np.float64) @ x.T.astype(np.float64)
    np.testing.assert_allclose(scores, np.take_along_axis(exact, ids, 1), rtol=0, atol=1e-4)
    assert (np.diff(scores, axis=1) <= 0).all()
    kth = np.sort(exact, axis=1)[:, -15]
    assert (scores[:, -1] >= kth - 1e-4).all()
    assert (np.unique(ids, axis=1).shape[1] == 15) and all(len(set(r)) == 15 for r in ids)


def test_padding_when_fewer_than_k_items_are_eligible():
    q = np.ones((3, 2), dtype=np.float32)
    x = np.arange(10, dtype=np.float32).reshape(5, 2)
    ex = sp.csr_matrix(np.array([[0, 0, 0, 0, 0], [1, 0, 1, 0, 1], [1, 1, 1, 1, 1]]))
    ids, scores = fs.topk(q, x, 7, exclude=ex)
    np.testing.assert_array_equal(ids[0], [4, 3, 2, 1, 0, -1, -1])
    np.testing.assert_array_equal(ids[1], [3, 1, -1, -1, -1, -1, -1])
    np.testing.assert_array_equal(ids[2], [-1] * 7)
    np.testing.assert_array_equal(scores[1], [13, 5] + [-np.inf] * 5)
    assert np.isneginf(scores[2]).all()


def test_empty_and_degenerate_shapes():
    rng = np.random.default_rng(4)
    ids, scores = fs.topk(np.zeros((0, 4), np.float32), rng.random((10, 4)), 3)
    assert ids.shape == scores.shape == (0, 3)
    ids, scores = fs.topk(rng.random((2, 4)), np.zeros((0, 4), np.float32), 3)
    np.testing.assert_array_equal(ids, -np.ones((2, 3)))
    assert np.isneginf(scores).all()
    ids, scores = fs.topk(np.zeros((2, 0), np.float32), np.zeros((5, 0), np.float32), 3)
    np.testing.assert_array_equal(ids, [[0, 1, 2], [0, 1, 2]])  # all scores 0: lowest ids
    np.testing.assert_array_equal(scores, np.zeros((2, 3)))
    ids, _ = fs.topk(np.ones((1, 1)), np.ones((1, 1)), 1000)
    assert ids.shape == (1, 1000) and ids[0, 0] == 0 and (ids[0, 1:] == -1).all()


def test_nan_and_infinite_scores():
    x = np.array([[1.0], [np.nan], [np.inf], [-np.inf], [2.0]], dtype=np.float32)
    ids, scores = fs.topk(np.ones((1, 1), np.float32), x, 5)
    np.testing.assert_array_equal(ids, [[2, 4, 0, -1, -1]])  # NaN and -inf are not eligible
    np.testing.assert_array_equal(scores, [[np.inf, 2, 1, -np.inf, -np.inf]])


@pytest.mark.parametrize(("b", "n"), [(1, 50000), (5, 40000), (450, 3000), (1000, 700)])
def test_identical_for_every_thread_count_and_batching(b, n):
    rng = np.random.default_rng(b)
    q = rng.standard_normal((b, 24)).astype(np.float32)
    x = rng.standard_normal((n, 24)).astype(np.float32)
    ex = random_exclude(rng, b, n, 0.01)
    ids1, s1 = fs.topk(q, x, 10, exclude=ex, num_threads=1)
    for t in (2, 3, 0):
        ids_t, s_t = fs.topk(q, x, 10, exclude=ex, num_threads=t)
        np.testing.assert_array_equal(ids_t, ids1)
        np.testing.assert_array_equal(s_t, s1)
    # A query's result does not depend on which other queries share its batch.
    for i in {0, b // 2, b - 1}:
        ids_i, s_i = fs.topk(q[i : i + 1], x, 10, exclude=ex[i : i + 1])
        np.testing.assert_array_equal(ids_i[0], ids1[i])
        np.testing.assert_array_equal(s_i[0], s1[i])


def test_scalar_and_avx2_kernels_agree_bitwise():
    if not _core._testing.topk_uses_avx2():
        pytest.skip("CPU without AVX2/FMA")
    rng = np.random.default_rng(5)
    q = rng.standard_normal((37, 19)).astype(np.float32)
    x = rng.standard_normal((3001, 19)).astype(np.float32)
    fast = fs.topk(q, x, 50)
    _core._testing.topk_force_scalar(True)
    try:
        slow = fs.topk(q, x, 50)
    finally:
        _core._testing.topk_force_scalar(False)
    np.testing.assert_array_equal(fast[0], slow[0])
    np.testing.assert_array_equal(fast[1], slow[1])


def test_input_conversion():
    rng = np.random.default_rng(6)
    q, x = int_data(rng, 4, 30, 5)
    ref = fs.topk(q, x, 3)
    for qq, xx in [
        (q.astype(np.float64), x.astype(np.int16)),
        (np.asfortranarray(q), x[::1]),
        (q.tolist(), np.concatenate([x, x], axis=1)[:, :5]),
    ]:
        ids, scores = fs.topk(qq, xx, 3)
        np.testing.assert_array_equal(ids, ref[0])
        np.testing.assert_array_equal(scores, ref[1])


def test_bad_input_errors_name_the_argument():
    q = np.ones((2, 3), np.float32)
    x = np.ones((4, 3), np.float32)
    with pytest.raises(ValueError, match="queries: expected a 2-D"):
        fs.topk(np.ones(3, np.float32), x, 1)
    with pytest.raises(ValueError, match=r"items: expected shape \(n, 3\)"):
        fs.topk(q, np.ones((4, 2), np.float32), 1)
    with pytest.raises(TypeError, match="items: expected an array of real numbers"):
        fs.topk(q, x.astype(np.complex64), 1)
    with pytest.raises(TypeError, match="queries"):
        fs.topk(np.array([["a", "b", "c"]]), x, 1)
    with pytest.raises(ValueError, match="k: expected an integer >= 1, got 0"):
        fs.topk(q, x, 0)
    with pytest.raises(TypeError, match="k: expected an integer"):
        fs.topk(q, x, 2.0)
    with pytest.raises(ValueError, match="num_threads"):
        fs.topk(q, x, 1, num_threads=-1)
    with pytest.raises(TypeError, match="exclude: expected a scipy.sparse matrix"):
        fs.topk(q, x, 1, exclude=np.zeros((2, 4)))
    with pytest.raises(ValueError, match=r"exclude: expected shape \(2, 4\)"):
        fs.topk(q, x, 1, exclude=sp.csr_matrix((2, 5)))
    bad = sp.csr_matrix((2, 4))
    bad.indices = np.array([7], dtype=np.int32)
    bad.indptr = np.array([0, 1, 1], dtype=np.int32)
    bad.data = np.ones(1)
    with pytest.raises(IndexError, match="exclude: item id 7 in row 0 is out of range"):
        fs.topk(q, x, 1, exclude=bad)


def test_core_checks_without_the_python_layer():
    q = np.ones((2, 3), np.float32)
    x = np.ones((4, 3), np.float32)
    with pytest.raises(TypeError, match="items: expected dtype float32"):
        _core.topk(q, x.astype(np.float64), 1, None, None, 0)
    with pytest.raises(ValueError, match="exclude: expected indptr of length"):
        _core.topk(q, x, 1, np.zeros(5, np.int64), np.zeros(0, np.int64), 0)
    with pytest.raises(ValueError, match="must be sorted"):
        _core.topk(q, x, 1, np.array([0, 2, 2]), np.array([3, 1]), 0)
