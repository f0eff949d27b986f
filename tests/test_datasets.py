import itertools
import sys

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
    with pytest.raises(ValueError, match=r"test_fraction: expected a finite number in \(0, 1\)"):
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


# ---- from_dataframe, Dataset id maps, temporal_split --------------------------------------------


def random_log(seed, n_rows=3000, n_users=150, n_items=60, n_times=40):
    """A random interaction log with repeated (user, item) pairs and many equal times."""
    rng = np.random.default_rng(seed)
    return {
        "user": rng.integers(0, n_users, n_rows) * 7 - 300,  # negative ids too
        "item": np.array([f"item-{j:03d}" for j in rng.integers(0, n_items, n_rows)]),
        "w": rng.integers(1, 5, n_rows).astype(np.float64) / 2,
        "t": rng.integers(0, n_times, n_rows),
    }


def test_from_dataframe_string_ids_round_trip():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"user": ["zoe", "bob", "zoe", "ann", "é", ""],
                       "item": ["x", "y", "y", "x", "z", "z"]})  # fmt: skip
    data = datasets.from_dataframe(df, "user", "item")
    assert data.user_ids.tolist() == ["", "ann", "bob", "zoe", "é"]  # sorted (code points)
    assert data.item_ids.tolist() == ["x", "y", "z"]
    assert data.user_ids is data.query_ids and data.user_ids.dtype.kind == "U"
    rows = data.user_index(df["user"].to_numpy())
    cols = data.item_index(df["item"].tolist())
    assert rows.dtype == cols.dtype == np.int64
    assert data.user_id(rows).tolist() == df["user"].tolist()
    assert data.item_id(cols).tolist() == df["item"].tolist()
    assert (data.interactions[rows, cols] == 1).all()
    assert data.user_index("zoe") == 3 and isinstance(data.user_index("zoe"), np.int64)
    np.testing.assert_array_equal(data.item_index([["z", "x"], ["y", "y"]]), [[2, 0], [1, 1]])
    assert data.timestamps is None and "5 queries x 3 items, 6 interactions" in repr(data)


@pytest.mark.parametrize("backend", ["pandas", "pyarrow"])
def test_from_dataframe_integer_ids_round_trip(backend):
    pytest.importorskip(backend)
    log = random_log(0)
    data = datasets.from_dataframe(make_frame(backend, log), "user", "item")
    assert data.user_ids.dtype == np.int64
    assert (np.diff(data.user_ids) > 0).all()  # sorted as numbers
    np.testing.assert_array_equal(data.user_ids, np.unique(log["user"]))
    rows = data.user_index(log["user"])
    np.testing.assert_array_equal(data.user_id(rows), log["user"])
    np.testing.assert_array_equal(data.user_index(data.user_ids), np.arange(data.n_queries))
    np.testing.assert_array_equal(data.item_id(data.item_index(log["item"])), log["item"])


def make_frame(backend, columns, *, chunks=1):
    if backend == "pandas":
        import pandas as pd

        return pd.DataFrame(columns)
    import pyarrow as pa

    table = pa.table(columns)
    if chunks > 1:  # the same rows in several record batches
        n = table.num_rows
        cuts = np.linspace(0, n, chunks + 1).astype(int)
        table = pa.Table.from_batches(
            [
                b
                for lo, hi in itertools.pairwise(cuts)
                for b in table.slice(lo, hi - lo).to_batches()
            ]
        )
    return table


@pytest.mark.parametrize("backend", ["pandas", "pyarrow"])
def test_from_dataframe_sums_duplicates_and_respects_weights(backend):
    pytest.importorskip(backend)
    log = {"u": [3, 1, 3, 3, 1], "i": [20, 10, 20, 10, 10], "w": [0.5, 2.0, 1.5, 4.0, 0.25]}
    frame = make_frame(backend, log)
    weighted = datasets.from_dataframe(frame, "u", "i", weight_col="w")
    X = weighted.interactions
    assert isinstance(X, sp.csr_matrix) and X.dtype == np.float32 and X.has_canonical_format
    np.testing.assert_array_equal(weighted.user_ids, [1, 3])
    np.testing.assert_array_equal(weighted.item_ids, [10, 20])
    np.testing.assert_array_equal(X.toarray(), [[2.25, 0], [4.0, 2.0]])
    counts = datasets.from_dataframe(frame, "u", "i")  # no weights: rows are counted
    np.testing.assert_array_equal(counts.interactions.toarray(), [[2, 0], [1, 2]])


def test_from_dataframe_zero_weights_are_not_stored():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"u": [1, 1, 2, 2], "i": [1, 2, 1, 1], "w": [0, 3, 0, 0],
                       "t": [5, 6, 7, 8]})  # fmt: skip
    data = datasets.from_dataframe(df, "u", "i", "w", "t")
    assert data.interactions.nnz == 1 and (data.interactions.data != 0).all()
    np.testing.assert_array_equal(data.user_ids, [1, 2])  # user 2 stays, as an empty row
    np.testing.assert_array_equal(data.interactions.toarray(), [[0, 3], [0, 0]])
    np.testing.assert_array_equal(data.timestamps.data, [6])


def test_from_dataframe_pandas_and_pyarrow_agree():
    pytest.importorskip("pandas")
    pytest.importorskip("pyarrow")
    for seed in range(3):
        log = random_log(seed)
        a = datasets.from_dataframe(make_frame("pandas", log), "user", "item", "w", "t")
        for chunks in (1, 4):
            b = datasets.from_dataframe(make_frame("pyarrow", log, chunks=chunks), "user",
                                        "item", "w", "t")  # fmt: skip
            for x, y in ((a.interactions, b.interactions), (a.timestamps, b.timestamps)):
                assert x.dtype == y.dtype and x.shape == y.shape
                np.testing.assert_array_equal(x.indptr, y.indptr)
                np.testing.assert_array_equal(x.indices, y.indices)
                np.testing.assert_array_equal(x.data, y.data)
            np.testing.assert_array_equal(a.user_ids, b.user_ids)
            np.testing.assert_array_equal(a.item_ids, b.item_ids)


def test_from_dataframe_matches_a_plain_reference():
    pd = pytest.importorskip("pandas")
    log = random_log(5)
    data = datasets.from_dataframe(pd.DataFrame(log), "user", "item", "w", "t")
    ref = pd.DataFrame(log).groupby(["user", "item"]).agg(w=("w", "sum"), t=("t", "max"))
    users, items = ref.index.get_level_values(0), ref.index.get_level_values(1)
    rows, cols = data.user_index(users.to_numpy()), data.item_index(items.to_numpy())
    np.testing.assert_array_equal(np.asarray(data.interactions[rows, cols]).ravel(), ref["w"])
    np.testing.assert_array_equal(np.asarray(data.timestamps[rows, cols]).ravel(), ref["t"])
    assert data.interactions.nnz == len(ref) and data.timestamps.dtype == np.int64


def test_from_dataframe_id_and_time_types():
    pd = pytest.importorskip("pandas")
    pa = pytest.importorskip("pyarrow")
    users = ["b", "a", "b"]
    expected = datasets.from_dataframe(pd.DataFrame({"u": users, "i": [1, 2, 1]}), "u", "i")
    variants = [
        pd.DataFrame(
            {"u": pd.Categorical(users, ["z", "b", "a"]), "i": pd.array([1, 2, 1], "Int64")}
        ),
        pd.DataFrame({"u": np.array(users, dtype=object), "i": np.array([1, 2, 1], np.uint8)}),
        pa.table({"u": pa.array(users).dictionary_encode(), "i": pa.array([1, 2, 1], pa.int8())}),
        pa.table({"u": pa.array(users, pa.large_string()), "i": [1, 2, 1]}).to_batches()[0],
    ]
    for frame in variants:
        data = datasets.from_dataframe(frame, "u", "i")
        assert data.user_ids.tolist() == ["a", "b"] and data.item_ids.dtype == np.int64
        assert (data.interactions != expected.interactions).nnz == 0
    # Datetimes become int64 nanoseconds since the epoch (UTC), whatever the unit or time zone.
    when = pd.to_datetime(["2024-03-01 12:00", "2024-03-02 00:00", "2024-03-01 00:00"])
    ns = when.as_unit("ns").asi8
    frames = [
        pd.DataFrame({"u": users, "i": [1, 2, 1], "t": when}),
        pd.DataFrame({"u": users, "i": [1, 2, 1], "t": when.tz_localize("UTC").tz_convert("Asia/Tokyo")}),
        pa.table({"u": users, "i": [1, 2, 1], "t": pa.array(ns // 10**9, pa.timestamp("s"))}),
    ]  # fmt: skip
    for frame in frames:
        data = datasets.from_dataframe(frame, "u", "i", timestamp_col="t")
        assert data.timestamps.dtype == np.int64
        np.testing.assert_array_equal(data.timestamps.toarray(), [[0, ns[1]], [ns[0], 0]])
    dates = pa.table({"u": ["a"], "i": [1], "t": pa.array([1], pa.date32())})
    np.testing.assert_array_equal(
        datasets.from_dataframe(dates, "u", "i", timestamp_col="t").timestamps.data, [86400 * 10**9]
    )
    floats = pd.DataFrame({"u": [1, 1], "i": [1, 1], "t": [1.5, 0.5]})
    data = datasets.from_dataframe(floats, "u", "i", timestamp_col="t")
    assert data.timestamps.dtype == np.float64 and data.timestamps.data.tolist() == [1.5]


def _bad_pandas_inputs():
    pd = pytest.importorskip("pandas")
    ok = {"u": ["a", "b"], "i": [1, 2], "w": [1.0, 2.0], "t": [1, 2]}

    def frame(**changes):
        return pd.DataFrame({**ok, **changes})

    dup = frame()
    dup.columns = ["u", "i", "w", "w"]
    return [
        # (df, kwargs, error, match)
        ({"u": ["a"], "i": [1]}, {}, TypeError, "df: expected a pandas.DataFrame or a pyarrow.Table"),
        (frame(), {"user_col": "user"}, ValueError, "user_col: no column 'user' in df"),
        (frame(), {"item_col": 0}, ValueError, "item_col: no column 0"),
        (frame(), {"weight_col": "weight"}, ValueError, "weight_col: no column 'weight'"),
        (frame(), {"timestamp_col": "time"}, ValueError, "timestamp_col: no column 'time'"),
        (dup, {"weight_col": "w"}, ValueError, "weight_col: df has 2 columns named 'w'"),
        (frame().iloc[:0], {}, ValueError, "df: expected at least one interaction"),
        (frame(u=["a", None]), {}, ValueError, r"user_col: expected no missing ids, found 1 .* row 1"),
        (frame(i=[1.0, np.nan]), {}, ValueError, "item_col: expected no missing ids"),
        (frame(i=pd.array([1, None], dtype="Int64")), {}, ValueError, "item_col: expected no missing"),
        (frame(i=[1.0, 2.0]), {}, TypeError, "item_col: expected integer or string ids, got floating"),
        (frame(u=[1, "b"]), {}, TypeError, "user_col: expected integer or string ids, got mixed"),
        (frame(u=[True, False]), {}, TypeError, "user_col: expected integer or string ids, got boolean"),
        (frame(w=["1", "2"]), {"weight_col": "w"}, TypeError, "weight_col: expected a numeric column"),
        (frame(w=[True, True]), {"weight_col": "w"}, TypeError, "weight_col: expected a numeric column"),
        (frame(w=[1.0, np.nan]), {"weight_col": "w"}, ValueError, "weight_col: expected no missing values"),
        (frame(w=[1.0, np.inf]), {"weight_col": "w"}, ValueError, "weight_col: expected finite values"),
        (frame(w=[1.0, -0.5]), {"weight_col": "w"}, ValueError, r"weight_col: expected weights >= 0, got -0.5 in row 1"),
        (frame(w=[3e38, 3e38], i=[1, 1], u=["a", "a"]), {"weight_col": "w"}, ValueError, "weight_col: the summed weights overflow"),
        (frame(t=["x", "y"]), {"timestamp_col": "t"}, TypeError, "timestamp_col: expected a numeric column"),
        (frame(t=[1.0, np.nan]), {"timestamp_col": "t"}, ValueError, "timestamp_col: expected no missing"),
        (frame(t=pd.to_datetime(["2024-01-01", None])), {"timestamp_col": "t"}, ValueError, "timestamp_col: expected no missing times"),
        (frame(t=[1.0, np.inf]), {"timestamp_col": "t"}, ValueError, "timestamp_col: expected finite"),
    ]  # fmt: skip


def test_from_dataframe_bad_pandas_input():
    for df, kwargs, error, match in _bad_pandas_inputs():
        args = {"user_col": "u", "item_col": "i", **kwargs}
        with pytest.raises(error, match=match):
            datasets.from_dataframe(df, **args)


def test_from_dataframe_bad_pyarrow_input():
    pa = pytest.importorskip("pyarrow")
    ok = {"u": ["a", "b"], "i": [1, 2], "w": [1.0, 2.0]}

    def table(**changes):
        return pa.table({**ok, **changes})

    cases = [
        (table(), {"user_col": "user"}, ValueError, "user_col: no column 'user' in df; its columns are"),
        (table().slice(0, 0), {}, ValueError, "df: expected at least one interaction"),
        (table(u=pa.array(["a", None])), {}, ValueError, "user_col: expected no missing ids, found 1 .* row 1"),
        (table(i=pa.array([1.0, 2.0])), {}, TypeError, "item_col: expected integer or string ids, got double"),
        (table(w=pa.array([1.0, None])), {"weight_col": "w"}, ValueError, "weight_col: expected no missing values"),
        (table(w=pa.array([1.0, float("nan")])), {"weight_col": "w"}, ValueError, "weight_col: expected finite"),
        (table(w=pa.array([1, -1])), {"weight_col": "w"}, ValueError, "weight_col: expected weights >= 0"),
        (table(w=pa.array(["1", "2"])), {"weight_col": "w"}, TypeError, "weight_col: expected a numeric column, got type string"),
        (table(t=pa.array([True, False])), {"timestamp_col": "t"}, TypeError, "timestamp_col: expected a numeric column"),
    ]  # fmt: skip
    for df, kwargs, error, match in cases:
        with pytest.raises(error, match=match):
            datasets.from_dataframe(df, **{"user_col": "u", "item_col": "i", **kwargs})


def test_dataset_id_maps_errors():
    X = sp.csr_matrix(np.eye(3, dtype=np.float32))
    data = datasets.Dataset(X, query_ids=np.array([30, 10, 20]), item_ids=np.array(["c", "a", "b"]))
    np.testing.assert_array_equal(data.user_index([10, 20, 30]), [1, 2, 0])  # unsorted ids
    np.testing.assert_array_equal(data.item_index(["a", "c"]), [1, 0])
    assert data.user_index([]).shape == (0,) and data.item_id([]).shape == (0,)
    with pytest.raises(KeyError, match=r"ids: 2 unknown user id\(s\), e.g. 11, 99"):
        data.user_index([10, 99, 11])
    with pytest.raises(KeyError, match="unknown item id"):
        data.item_index("d")
    with pytest.raises(TypeError, match="ids: the user ids are integers"):
        data.user_index("10")
    with pytest.raises(TypeError, match="ids: the item ids are strings"):
        data.item_index([0])
    with pytest.raises(IndexError, match=r"index: user index -1 is out of range \[0, 3\)"):
        data.user_id([0, -1])
    with pytest.raises(IndexError, match="index: item index 3 is out of range"):
        data.item_id(3)
    with pytest.raises(TypeError, match="index: expected integer item indices"):
        data.item_id([0.0])
    plain = datasets.Dataset(X)  # no original ids: the indices are the ids
    np.testing.assert_array_equal(plain.user_index([2, 0]), [2, 0])


def test_dataset_timestamps_must_match_interactions():
    X = sp.csr_matrix(np.array([[1, 0], [1, 1]], dtype=np.float32))
    T = sp.csr_matrix(np.array([[5, 0], [6, 7]], dtype=np.int64))
    data = datasets.Dataset(X, timestamps=T)
    with pytest.raises(ValueError, match="timestamps: expected a CSR matrix with exactly"):
        data.replace(interactions=sp.csr_matrix(np.eye(2, dtype=np.float32)))
    with pytest.raises(ValueError, match="timestamps: expected a CSR matrix"):
        datasets.Dataset(X, timestamps=T.tocoo())
    assert data.replace(name="x").timestamps is T


def temporal_reference(X, T, n_last):
    """Each row's entries sorted by (time, column) in plain Python; the last n_last to test if
    the row has more than n_last."""
    test = np.zeros(X.shape, dtype=bool)
    for r in range(X.shape[0]):
        lo, hi = X.indptr[r], X.indptr[r + 1]
        entries = sorted(zip(T.data[lo:hi].tolist(), X.indices[lo:hi].tolist(), strict=True))
        if len(entries) > n_last:
            for _, c in entries[-n_last:]:
                test[r, c] = True
    return test


@pytest.mark.parametrize("n_last", [1, 2, 5])
def test_temporal_split_matches_reference(n_last):
    pd = pytest.importorskip("pandas")
    for seed in range(3):
        log = random_log(seed, n_rows=2000, n_times=15)  # many ties in time
        data = datasets.from_dataframe(pd.DataFrame(log), "user", "item", "w", "t")
        X, T = data.interactions, data.timestamps
        train, test = datasets.temporal_split(data, n_last=n_last)
        is_test = temporal_reference(X, T, n_last)
        np.testing.assert_array_equal(test.toarray() != 0, is_test)
        np.testing.assert_array_equal(test.toarray(), np.where(is_test, X.toarray(), 0))
        np.testing.assert_array_equal(train.toarray(), np.where(is_test, 0, X.toarray()))
        assert train.shape == test.shape == X.shape and train.dtype == test.dtype == np.float32
        assert train.has_canonical_format and test.has_canonical_format
        m = np.diff(X.indptr)
        np.testing.assert_array_equal(np.diff(test.indptr), np.where(m > n_last, n_last, 0))
        # The same split from the matrix and its timestamps.
        again = datasets.temporal_split(X, T, n_last=n_last)
        assert (again[0] != train).nnz == 0 and (again[1] != test).nnz == 0


def test_temporal_split_ties_and_row_order():
    pd = pytest.importorskip("pandas")
    df = pd.DataFrame({"u": ["a"] * 4 + ["b"] * 2 + ["c"],
                       "i": ["p", "r", "q", "s", "p", "q", "p"],
                       "t": [5, 9, 9, 1, 3, 3, 8]})  # fmt: skip
    data = datasets.from_dataframe(df, "u", "i", timestamp_col="t")
    train, test = datasets.temporal_split(data)
    # a: q and r both at time 9 -> the larger item id (r) is the latest. b: p and q tie -> q.
    # c has a single interaction: it stays in training.
    assert test.toarray().tolist() == [[0, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    np.testing.assert_array_equal((train + test).toarray(), data.interactions.toarray())
    _, test2 = datasets.temporal_split(data, n_last=2)
    assert test2.toarray().tolist() == [[0, 1, 1, 0], [0, 0, 0, 0], [0, 0, 0, 0]]
    shuffled = datasets.from_dataframe(df.sample(frac=1.0, random_state=3), "u", "i",
                                       timestamp_col="t")  # fmt: skip
    assert (datasets.temporal_split(shuffled)[1] != test).nnz == 0


def test_temporal_split_bad_input():
    X = sp.csr_matrix(np.array([[1, 2, 0], [0, 1, 0]], dtype=np.float32))
    T = sp.csr_matrix(np.array([[3, 1, 0], [0, 7, 0]], dtype=np.int64))
    with pytest.raises(ValueError, match="timestamps: required with an interaction matrix"):
        datasets.temporal_split(X)
    with pytest.raises(TypeError, match="timestamps: expected a scipy.sparse matrix"):
        datasets.temporal_split(X, T.toarray())
    with pytest.raises(TypeError, match="interactions: expected a scipy.sparse matrix"):
        datasets.temporal_split(X.toarray(), T)
    with pytest.raises(ValueError, match="timestamps: expected exactly the stored entries"):
        datasets.temporal_split(X, sp.csr_matrix(np.eye(2, 3)))
    with pytest.raises(ValueError, match="timestamps: expected exactly the stored entries"):
        datasets.temporal_split(X, T[:, :2])
    with pytest.raises(TypeError, match="timestamps: expected real numbers"):
        datasets.temporal_split(X, T.astype(bool))
    nan = T.astype(np.float64)
    nan.data[0] = np.nan
    with pytest.raises(ValueError, match="timestamps: expected finite values"):
        datasets.temporal_split(X, nan)
    with pytest.raises(ValueError, match="n_last: expected an integer >= 1"):
        datasets.temporal_split(X, T, n_last=0)
    with pytest.raises(TypeError, match="n_last: expected an integer"):
        datasets.temporal_split(X, T, n_last=1.0)
    with pytest.raises(ValueError, match="interactions: this Dataset has no timestamps"):
        datasets.temporal_split(datasets.Dataset(X))
    with pytest.raises(ValueError, match="timestamps: a Dataset brings its own"):
        datasets.temporal_split(datasets.Dataset(X, timestamps=T), T)
    # Matrix input in any format; explicit zeros are not interactions.
    Z = sp.csr_matrix((np.array([1, 0, 1], np.float32), [0, 1, 1], [0, 2, 3]), shape=(2, 3))
    train, test = datasets.temporal_split(Z.tocsr(), T.tocoo())
    assert train.toarray().tolist() == [[1, 0, 0], [0, 1, 0]] and test.nnz == 0


def test_cli_reads_csv_through_from_dataframe_or_numpy(tmp_path, monkeypatch):
    """The CLI's --data FILE gives the same Dataset with pandas (from_dataframe) as without it
    (the NumPy reader load_csv): same ids, same order, same matrix."""
    import argparse

    from fastsoftmax import _cli_models

    pytest.importorskip("pandas")
    files = {
        "strings.csv": "user,item,rating,ts\nu10,i2,4,1\nu9,i1,3.5,2\nu10,i2,1,3\n",
        "numbers.csv": "rating,user,item\n5,10,7\n3,9,100\n1,10,7\n2,-3,007\n",
        "mixed.csv": "user,item,rating\n1,a,1\nx,2,2\n1.5,3,3\n",
        "spaces.csv": "user, item, rating\nu1, a, 1\nu2,b ,2\n 3,c,3\n",
    }
    for name, text in files.items():
        path = tmp_path / name
        path.write_text(text)
        args = argparse.Namespace(data=str(path), user_col="user", item_col="item",
                                  weight_col="rating", min_rating=None)  # fmt: skip
        with_pandas = _cli_models._load_data(args)
        with monkeypatch.context() as m:
            m.setitem(sys.modules, "pandas", None)  # `import pandas` raises ImportError
            without = _cli_models._load_data(args)
        assert with_pandas.name == without.name == str(path)
        assert with_pandas.query_ids.dtype.kind == without.query_ids.dtype.kind
        np.testing.assert_array_equal(with_pandas.query_ids, without.query_ids)
        np.testing.assert_array_equal(with_pandas.item_ids, without.item_ids)
        np.testing.assert_array_equal(with_pandas.interactions.toarray(),
                                      without.interactions.toarray())  # fmt: skip
    numbers = _cli_models._load_data(argparse.Namespace(
        data=str(tmp_path / "numbers.csv"), user_col="user", item_col="item", weight_col=None,
        min_rating=None))  # fmt: skip
    np.testing.assert_array_equal(numbers.query_ids, [-3, 9, 10])
    np.testing.assert_array_equal(numbers.item_ids, [7, 100])
    bad_files = {
        "holes.csv": ("user,item,rating\n1,2,\n", "weight_col: expected no missing values"),
        "no_rating.csv": ("user,item,w\n1,2,3\n",
                          r"--weight-col: no column 'rating' in no_rating.csv; it has \['user'"),
        "empty.csv": ("user,item,rating\n", "--data: .* has a header but no interactions"),
    }  # fmt: skip
    for name, (text, match) in bad_files.items():
        (tmp_path / name).write_text(text)
        with pytest.raises(ValueError, match=match):
            _cli_models._load_data(argparse.Namespace(
                data=str(tmp_path / name), user_col="user", item_col="item",
                weight_col="rating", min_rating=None))  # fmt: skip
