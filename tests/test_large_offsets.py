"""CSR offsets beyond 2**31 (issue #23, data at scale): the Python layer hands the C++ core int64
indptr / indices and never narrows offsets to 32 bits.

A real CSR with 2**31 entries needs tens of GB, so these tests check the conversion code itself:
index arrays holding values above 2**31 (in objects that only look like a CSR, or with few
entries), the dtypes of the arrays given to the core (a spy in front of ``_core``), and that
int64 index arrays give the same results as int32 ones everywhere a user's CSR goes in.
"""

import sys
import types

import numpy as np
import pytest
import scipy.sparse as sp

import fastsoftmax as fs
from fastsoftmax import datasets, retrieval, softmax, wals
from fastsoftmax._validation import as_csr, check_sparse_structure

BIG = 2**31 + 5  # an offset that does not fit int32
HUGE = 2**32 + 7  # ... nor uint32; as int32 it would wrap to 7


def fake_csr(indptr, n_cols=10, n_entries=3):
    """An object with a CSR's attributes whose indptr may promise more entries than it has."""
    return types.SimpleNamespace(
        format="csr", shape=(len(indptr) - 1, n_cols), indptr=np.asarray(indptr, dtype=np.int64),
        indices=np.zeros(n_entries, dtype=np.int64), data=np.ones(n_entries, dtype=np.float32),
    )  # fmt: skip


def with_int64_indices(m):
    """The same CSR with int64 indptr / indices (scipy builds int32 ones while they fit)."""
    m = sp.csr_matrix(m, copy=True)
    m.indptr, m.indices = m.indptr.astype(np.int64), m.indices.astype(np.int64)
    return m


class CoreSpy:
    """Stands in for ``fastsoftmax._core``: records every call's arguments, then makes it."""

    def __init__(self, core):
        self.core, self.calls = core, []

    def __getattr__(self, name):
        target = getattr(self.core, name)
        if not callable(target):
            return target

        def call(*args, **kwargs):
            self.calls.append((name, args))
            return target(*args, **kwargs)

        return call


# ---- the conversions themselves, on offsets above 2**31 ------------------------------------------


def test_index_dtype_rule_switches_to_int64_at_2_31():
    assert datasets._csr_index_dtype(2**31 - 1, 10) is np.int32
    assert datasets._csr_index_dtype(2**31, 10) is np.int64
    assert datasets._csr_index_dtype(10, 2**31) is np.int64


def test_core_arrays_keep_int64_offsets_without_copy():
    indptr = np.array([0, BIG, HUGE], dtype=np.int64)
    m = fake_csr(indptr)
    out_indptr, out_indices, _ = softmax._csr_arrays(m)  # QueryFeatures bags, softmax targets
    assert out_indptr.dtype == np.int64 and out_indptr.tolist() == [0, BIG, HUGE]
    assert out_indptr is indptr  # no conversion, so nothing could narrow it
    assert out_indices.dtype == np.int64
    rows = wals._Csr(indptr, m.indices, m.data, None, 10)  # WALS's training matrix
    assert rows.indptr.dtype == np.int64 and rows.indptr.tolist() == [0, BIG, HUGE]
    assert rows.n_rows == 2
    # int32 offsets are widened, never the other way round
    widened = wals._Csr(np.array([0, 2, 3], np.int32), m.indices, m.data, None, 10)
    assert widened.indptr.dtype == np.int64


def test_structure_check_reads_offsets_above_2_31_exactly():
    # As int32 these would wrap (HUGE -> 7, BIG -> negative) and the check would pass or
    # report a wrong number; in int64 the missing entries are found and named exactly.
    with pytest.raises(ValueError, match=f"indptr ends at {HUGE}, but there are only 3 indices"):
        check_sparse_structure(fake_csr([0, 1, HUGE]), "interactions")
    with pytest.raises(ValueError, match=f"indptr ends at {BIG}"):
        check_sparse_structure(fake_csr([0, BIG]), "interactions")
    with pytest.raises(ValueError, match="non-decreasing"):
        check_sparse_structure(fake_csr([0, HUGE, 3]), "interactions")


def test_aggregate_builds_int64_offsets_when_the_rule_says_so(monkeypatch):
    # Force the rule's int64 branch on a small input and look at the arrays handed to scipy
    # (scipy itself keeps int64 only for values that need it).
    handed = []
    real = sp.csr_matrix

    def spy(arg, *args, **kwargs):
        if isinstance(arg, tuple) and len(arg) == 3:
            handed.append(arg)
        return real(arg, *args, **kwargs)

    monkeypatch.setattr(datasets, "_csr_index_dtype", lambda nnz, n_cols: np.int64)
    monkeypatch.setattr(datasets.sp, "csr_matrix", spy)
    rows, cols = np.array([2, 0, 2, 1]), np.array([1, 3, 1, 0])
    out, _ = datasets._aggregate(rows, cols, np.ones(4), None, (3, 4))
    ((_data, indices, indptr),) = handed
    assert indptr.dtype == indices.dtype == np.int64
    assert indptr.tolist() == [0, 1, 2, 3] and indices.tolist() == [3, 0, 1]
    np.testing.assert_array_equal(out.toarray(), [[0, 0, 0, 1], [1, 0, 0, 0], [0, 2, 0, 0]])


def test_pair_grouping_falls_back_when_the_int64_key_would_overflow():
    # (rows.max() + 1) * n_cols >= 2**63: one int64 key per pair would overflow, so lexsort.
    rows = np.array([2**40, 0, 2**40, 5], dtype=np.int64)
    cols = np.array([2**40 - 1, 7, 2**40 - 1, 7], dtype=np.int64)
    order, starts = datasets._group_pairs(rows, cols, 2**40)
    assert order.tolist() == [1, 3, 0, 2] and starts.tolist() == [0, 1, 2]


# ---- int64 index arrays in, int64 arrays to the core, the same results -----------------------------


@pytest.fixture(scope="module")
def data():
    return fs.datasets.make_categories(200, 60, 4, seed=3)


def test_wals_hands_int64_indices_to_the_core(data, monkeypatch):
    m32, m64 = data.interactions, with_int64_indices(data.interactions)
    assert m32.indptr.dtype == np.int32
    fitted = []
    for m in (m32, m64):
        spy = CoreSpy(wals._core)
        monkeypatch.setattr(wals, "_core", spy)
        fitted.append(fs.WALS(8, iterations=2, seed=0, num_threads=1).fit(m))
        solves = [args for name, args in spy.calls if name == "wals_solve_rows"]
        assert solves
        for indptr, indices, *_ in solves:
            assert indptr.dtype == indices.dtype == np.int64
        assert solves[0][0][-1] == m.nnz  # the offsets arrive unchanged
    np.testing.assert_array_equal(fitted[0].query_embeddings(), fitted[1].query_embeddings())


def test_softmax_inputs_keep_int64_indices(data):
    m64 = with_int64_indices(data.interactions)
    indptr, indices, _weights, _ = softmax._targets_arrays(m64, *m64.shape)
    assert indptr.dtype == indices.dtype == np.int64
    assert np.shares_memory(indptr, m64.indptr)  # already int64: passed through, not copied
    feats = fs.QueryFeatures(bags={"history": m64})
    assert all(a.dtype == np.int64 for a in feats.bags["history"][:2])
    via32 = fs.QueryFeatures(bags={"history": data.interactions})
    for a, b in zip(feats.bags["history"], via32.bags["history"], strict=True):
        np.testing.assert_array_equal(a, b)


def test_topk_exclusions_with_int64_indices(data, monkeypatch):
    rng = np.random.default_rng(0)
    q = rng.standard_normal((data.n_queries, 8)).astype(np.float32)
    x = rng.standard_normal((data.n_items, 8)).astype(np.float32)
    results = []
    for m in (data.interactions, with_int64_indices(data.interactions)):
        spy = CoreSpy(retrieval._core)
        monkeypatch.setattr(retrieval, "_core", spy)
        results.append(fs.topk(q, x, 5, exclude=m, num_threads=1))
        ((_name, args),) = spy.calls
        assert args[3].dtype == np.int64  # exclude indptr
        assert args[4].dtype == m.indices.dtype  # indices as given: int32 or int64, not narrowed
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)


def test_splits_and_metrics_accept_int64_indices(data):
    m32, m64 = data.interactions, with_int64_indices(data.interactions)
    for split in (datasets.train_test_split, lambda m: datasets.train_test_split(m, seed=4)):
        for a, b in zip(split(m32), split(m64), strict=True):
            assert (a != b).nnz == 0 and a.shape == b.shape
    times = sp.csr_matrix((np.arange(m32.nnz, dtype=np.int64), m32.indices, m32.indptr),
                          shape=m32.shape)  # fmt: skip
    for a, b in zip(datasets.temporal_split(m32, times),
                    datasets.temporal_split(m64, with_int64_indices(times)), strict=True):  # fmt: skip
        assert (a != b).nnz == 0
    canonical = as_csr(m64, "m")
    assert canonical.indptr.dtype == np.int64  # not narrowed (and not copied):
    assert np.shares_memory(canonical.indptr, m64.indptr)
    ids = np.tile(np.arange(5), (m32.shape[0], 1))
    np.testing.assert_array_equal(fs.metrics.recall_at_k(ids, m32, 5),
                                  fs.metrics.recall_at_k(ids, m64, 5))  # fmt: skip


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the hook reserves memory by mmap")
def test_bag_kernels_read_entries_beyond_2_31():
    """C++ side: a bag CSR with 2**31 + 4 entries (its index array reserved, not allocated: only
    the last row's pages are touched) pooled and back-propagated at its last row, whose entries
    sit at offsets 2**31 + 1 .. 2**31 + 3."""
    from fastsoftmax import _core

    rng = np.random.default_rng(0)
    table = rng.standard_normal((5, 4)).astype(np.float32)
    dout = rng.standard_normal(4).astype(np.float32)
    try:
        pooled, ids, grad = _core._testing.bag_beyond_2_31(table, dout)
    except RuntimeError as err:  # no 16 GB of address space to reserve
        pytest.skip(str(err))
    np.testing.assert_allclose(pooled, table[[1, 2, 3]].mean(axis=0), rtol=1e-6)
    order = np.argsort(ids)
    np.testing.assert_array_equal(ids[order], [1, 2, 3])
    np.testing.assert_allclose(grad[order], np.tile(dout / 3, (3, 1)), rtol=1e-6)
