import numpy as np
import pytest
import scipy.sparse as sp

import fastsoftmax as fs
from fastsoftmax import datasets


def assert_same_dataset(a, b):
    assert (a.interactions != b.interactions).nnz == 0
    np.testing.assert_array_equal(a.query_groups, b.query_groups)
    np.testing.assert_array_equal(a.item_groups, b.item_groups)
    np.testing.assert_array_equal(a.features.dense, b.features.dense)
    np.testing.assert_array_equal(
        a.features.categorical["category"], b.features.categorical["category"]
    )
    assert (a.features.bags["history"] != b.features.bags["history"]).nnz == 0


def test_make_categories_shapes_and_dtypes():
    data = datasets.make_categories(3000, 500, 7, seed=1, n_dense=3, history_size=5)
    X = data.interactions
    assert isinstance(X, sp.csr_matrix) and X.dtype == np.float32 and X.shape == (3000, 500)
    assert X.has_canonical_format and (X.data >= 1).all()
    assert data.n_queries == 3000 and data.n_items == 500
    assert data.query_groups.dtype == data.item_groups.dtype == np.int64
    assert data.query_groups.shape == (3000,) and data.item_groups.shape == (500,)
    # Balanced categories: sizes differ by at most one.
    for groups in (data.query_groups, data.item_groups):
        counts = np.bincount(groups, minlength=7)
        assert counts.max() - counts.min() <= 1
    f = data.features
    assert f.dense.dtype == np.float32 and f.dense.shape == (3000, 3)
    assert f.categorical["category"].dtype == np.int64
    assert f.categorical["category"].shape == (3000,)
    h = f.bags["history"]
    assert h.shape == (3000, 500) and np.allclose(h.sum(axis=1), 5)
    assert f.cardinalities == {"category": 7, "history": 500}
    assert len(f) == 3000 and len(f.take(np.arange(10))) == 10
    np.testing.assert_array_equal(data.item_ids, np.arange(500))
    assert (np.diff(X.indptr) >= 1).all()  # every query interacts at least once


def test_make_categories_is_deterministic():
    a = datasets.make_categories(2000, 300, 5, seed=42)
    b = datasets.make_categories(2000, 300, 5, seed=42)
    assert_same_dataset(a, b)
    c = datasets.make_categories(2000, 300, 5, seed=43)
    assert (a.interactions != c.interactions).nnz > 0


def test_make_categories_structure():
    data = datasets.make_categories(
        20000, 1000, 10, seed=3, in_category=0.9, feature_noise=0.0, popularity_exponent=1.0
    )
    X = data.interactions.tocoo()
    same = data.item_groups[X.col] == data.query_groups[X.row]
    share = X.data[same].sum() / X.data.sum()  # weights count repeated draws
    assert share == pytest.approx(0.9, abs=0.01)
    mean = X.data.sum() / 20000
    assert mean == pytest.approx(20.0, rel=0.03)
    np.testing.assert_array_equal(data.features.categorical["category"], data.query_groups)
    # Power law inside a category: the most popular item of each category gets ~1/H_100 of its
    # in-category draws (H_100 = harmonic number), the 10th about a tenth of that.
    pop = np.asarray(data.interactions.sum(axis=0)).ravel()
    for c in range(10):
        p = np.sort(pop[data.item_groups == c])[::-1]
        assert p[0] / p[9] == pytest.approx(10, rel=0.35)
    # Dense features carry the category: per-category means are far apart relative to noise.
    centre = np.array([data.features.dense[data.query_groups == c].mean(0) for c in range(10)])
    assert np.linalg.norm(centre[0] - centre[1]) > 0.3


def test_make_categories_options_and_errors():
    data = datasets.make_categories(100, 20, 1, n_dense=0, history_size=0, in_category=0.5)
    assert data.features.dense is None and data.features.bags == {}
    assert (data.item_groups == 0).all()
    with pytest.raises(ValueError, match="n_categories: expected at most n_items = 5"):
        datasets.make_categories(10, 5, 6)
    with pytest.raises(ValueError, match="in_category: expected a finite number"):
        datasets.make_categories(10, 5, 2, in_category=1.5)
    with pytest.raises(ValueError, match="interactions_per_query"):
        datasets.make_categories(10, 5, 2, interactions_per_query=0.5)
    with pytest.raises(TypeError, match="n_queries: expected an integer"):
        datasets.make_categories(10.0, 5, 2)
    with pytest.raises(ValueError, match="seed"):
        datasets.make_categories(10, 5, 2, seed=-1)


def test_train_test_split_never_leaks():
    data = datasets.make_categories(2000, 200, 4, seed=0)
    X = data.interactions
    train, test = datasets.train_test_split(X, test_fraction=0.25, seed=7)
    assert train.shape == test.shape == X.shape
    assert train.dtype == test.dtype == X.dtype
    assert train.multiply(test).nnz == 0  # disjoint
    assert abs(train + test - X).max() == 0  # nothing lost, weights kept
    assert train.has_canonical_format and test.has_canonical_format
    assert test.nnz / X.nnz == pytest.approx(0.25, abs=0.02)
    m = np.diff(X.indptr)
    assert (np.diff(train.indptr)[m >= 1] >= 1).all()  # every query keeps a training item
    again = datasets.train_test_split(X, test_fraction=0.25, seed=7)
    assert (again[1] != test).nnz == 0
    other = datasets.train_test_split(X, test_fraction=0.25, seed=8)
    assert (other[1] != test).nnz > 0


def test_train_test_split_duplicates_and_zeros():
    rows = np.array([0, 0, 0, 0, 1, 1, 1])
    cols = np.array([1, 1, 2, 3, 0, 4, 5])
    vals = np.array([1.0, 2.0, 1.0, 0.0, 1.0, 1.0, 1.0])
    coo = sp.coo_matrix((vals, (rows, cols)), shape=(3, 6))  # (0,1) twice, (0,3) explicit zero
    train, test = datasets.train_test_split(coo, test_fraction=0.5, seed=0)
    total = (train + test).toarray()
    np.testing.assert_array_equal(total, coo.toarray())
    assert train.multiply(test).nnz == 0
    assert (train.data != 0).all() and (test.data != 0).all()
    with pytest.raises(ValueError, match=r"test_fraction: expected a number in \(0, 1\)"):
        datasets.train_test_split(coo, test_fraction=1.0)
    with pytest.raises(TypeError, match="interactions: expected a scipy.sparse matrix"):
        datasets.train_test_split(coo.toarray())


def test_cold_start_split():
    X = sp.random(1000, 50, density=0.1, format="csr", random_state=0)
    tr, te = datasets.cold_start_split(X, test_fraction=0.3, seed=1)
    assert tr.dtype == te.dtype == np.int64
    assert len(te) == 300 and len(tr) == 700
    assert np.intersect1d(tr, te).size == 0
    np.testing.assert_array_equal(np.union1d(tr, te), np.arange(1000))
    assert (np.diff(te) > 0).all()
    np.testing.assert_array_equal(datasets.cold_start_split(X, test_fraction=0.3, seed=1)[1], te)
    assert not np.array_equal(datasets.cold_start_split(X, test_fraction=0.3, seed=2)[1], te)


def test_exported():
    assert fs.datasets is datasets
