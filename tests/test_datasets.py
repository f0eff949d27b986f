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


ML100K_ITEM_LINES = [
    "1|Toy Story (1995)|01-Jan-1995||http://x|0|0|0|1|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0",
    "2|GoldenEye (1995)|01-Jan-1995||http://x|0|1|1|0|0|0|0|0|0|0|0|0|0|0|0|0|1|0|0",
    "7|Caf\xe9 (1995)|01-Jan-1995||http://x|1|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0|0",
]


def write_ml100k(folder):
    folder.mkdir()
    (folder / "u.data").write_text(
        "10\t1\t5\t881250949\n10\t2\t3\t891717742\n20\t1\t4\t878887116\n20\t7\t1\t880606923\n"
    )
    (folder / "u.user").write_text(
        "10|24|M|technician|85711\n20|53|F|other|94043\n30|23|M|writer|32067\n"
    )
    (folder / "u.item").write_bytes("\n".join(ML100K_ITEM_LINES).encode("latin-1") + b"\n")


def test_load_movielens_100k(tmp_path):
    write_ml100k(tmp_path / "ml-100k")
    data = datasets.load_movielens(tmp_path / "ml-100k")
    np.testing.assert_array_equal(data.query_ids, [10, 20, 30])  # user 30 has no rating
    np.testing.assert_array_equal(data.item_ids, [1, 2, 7])
    np.testing.assert_array_equal(data.interactions.toarray(), [[5, 3, 0], [4, 0, 1], [0, 0, 0]])
    assert data.interactions.dtype == np.float32
    np.testing.assert_array_equal(data.item_groups, [3, 1, 0])  # first genre of each movie
    assert data.group_names[3] == "Animation" and data.group_names[0] == "unknown"
    np.testing.assert_array_equal(
        data.item_features["genres"].toarray()[:, [0, 1, 2, 3, 4, 5, 16]],
        [[0, 0, 0, 1, 1, 1, 0], [0, 1, 1, 0, 0, 0, 1], [1, 0, 0, 0, 0, 0, 0]],
    )
    assert list(data.item_names) == ["Toy Story (1995)", "GoldenEye (1995)", "Caf\xe9 (1995)"]
    f = data.features
    np.testing.assert_array_equal(f.dense, [[24], [53], [23]])
    np.testing.assert_array_equal(f.categorical["gender"], [1, 0, 1])
    np.testing.assert_array_equal(f.categorical["occupation"], [1, 0, 2])  # other, tech, writer
    assert f.cardinalities == {"gender": 2, "occupation": 3}
    binary = datasets.load_movielens(tmp_path / "ml-100k", min_rating=4)
    np.testing.assert_array_equal(binary.interactions.toarray(), [[1, 0, 0], [1, 0, 0], [0, 0, 0]])


def test_load_movielens_latest(tmp_path):
    folder = tmp_path / "ml-latest-small"
    folder.mkdir()
    (folder / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n1,1,4.0,964982703\n1,50,2.5,964981247\n"
        "3,1,5.0,964982224\n3,99,3.5,964982224\n"
    )
    (folder / "movies.csv").write_text(
        "movieId,title,genres\n1,Toy Story (1995),Adventure|Animation\n"
        '50,"Usual Suspects, The (1995)",Crime|Mystery|Thriller\n'
        "60,Unrated (2000),(no genres listed)\n"
    )
    data = datasets.load_movielens(folder)
    np.testing.assert_array_equal(data.query_ids, [1, 3])
    np.testing.assert_array_equal(data.item_ids, [1, 50, 60, 99])  # 60 unrated, 99 not listed
    np.testing.assert_array_equal(data.interactions.toarray(), [[4.0, 2.5, 0, 0], [5.0, 0, 0, 3.5]])
    assert data.group_names == [
        "(no genres listed)", "Adventure", "Animation", "Crime", "Mystery", "Thriller",
    ]  # fmt: skip
    np.testing.assert_array_equal(data.item_groups, [1, 3, 0, -1])
    assert data.item_features["genres"].shape == (4, 6)
    assert data.item_features["genres"].sum() == 6
    assert data.item_names[1] == "Usual Suspects, The (1995)"
    assert data.features is None and data.query_groups is None
    binary = datasets.load_movielens(folder, min_rating=3.5)
    np.testing.assert_array_equal(binary.interactions.toarray(), [[1, 0, 0, 0], [1, 0, 0, 1]])


def test_load_movielens_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        datasets.load_movielens(tmp_path / "nope")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "readme.txt").write_text("hi")
    with pytest.raises(ValueError, match="is not a MovieLens folder: expected u.data"):
        datasets.load_movielens(tmp_path / "other")
    with pytest.raises(NotADirectoryError):
        datasets.load_movielens(tmp_path / "other" / "readme.txt")
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "ratings.csv").write_text("userId,movieId,rating,timestamp\n1,2,four,0\n")
    with pytest.raises(ValueError, match="path: cannot parse"):
        datasets.load_movielens(bad)
    with pytest.raises(TypeError, match="min_rating"):
        datasets.load_movielens(bad, min_rating="4")


def test_load_csv(tmp_path):
    path = tmp_path / "clicks.tsv"
    path.write_text("item\tuser\tw\nb\tu2\t1.5\na\tu1\t2\nb\tu2\t0.5\nc\tu1\t1\n")
    data = datasets.load_csv(path, "user", "item", "w", delimiter="\t")
    assert list(data.query_ids) == ["u1", "u2"] and list(data.item_ids) == ["a", "b", "c"]
    np.testing.assert_array_equal(data.interactions.toarray(), [[2, 0, 1], [0, 2, 0]])  # summed
    counts = datasets.load_csv(path, 1, 0, delimiter="\t")  # by position, no weights
    np.testing.assert_array_equal(counts.interactions.toarray(), [[1, 0, 1], [0, 2, 0]])
    numeric = tmp_path / "n.csv"
    numeric.write_text("7,100\n3,100\n7,5\n")
    data = datasets.load_csv(numeric, 0, 1, header=False)
    assert data.query_ids.dtype == np.int64
    np.testing.assert_array_equal(data.query_ids, [3, 7])
    np.testing.assert_array_equal(data.interactions.toarray(), [[0, 1], [1, 1]])
    with pytest.raises(ValueError, match="user_col: no column 'uid'"):
        datasets.load_csv(path, "uid", "item", delimiter="\t")
    with pytest.raises(ValueError, match="item_col: a column name needs header=True"):
        datasets.load_csv(numeric, 0, "item", header=False)
    with pytest.raises(FileNotFoundError):
        datasets.load_csv(tmp_path / "missing.csv", 0, 1)
