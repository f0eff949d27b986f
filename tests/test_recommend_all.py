"""recommend_all: every query's top-k streamed to Parquet (WALS, SoftmaxModel, the CLI)."""

import os
import sys

import numpy as np
import pytest
import scipy.sparse as sp
from test_cli import _train_args, csv_data  # noqa: F401 (csv_data: a fixture)

import fastsoftmax as fs
from fastsoftmax.cli import main
from fastsoftmax.recommend_all import write_recommendations

pq = pytest.importorskip("pyarrow.parquet")

N_QUERIES, N_ITEMS = 37, 23


def _interactions(seed=0):
    a = sp.random(N_QUERIES, N_ITEMS, density=0.2, format="csr", random_state=seed,
                  dtype=np.float32)  # fmt: skip
    a.data[:] = 1
    return a


@pytest.fixture(scope="module")
def train():
    return _interactions()


@pytest.fixture(scope="module")
def wals(train):
    return fs.WALS(4, iterations=2, num_threads=1).fit(train, show_progress=False)


@pytest.fixture(scope="module")
def softmax(train):
    feats = _features(train)
    model = fs.SoftmaxModel(N_ITEMS, dim=8, embedding_dim=4, history="history", epochs=2,
                            num_threads=1)  # fmt: skip
    return model.fit(feats, train, show_progress=False)


def _features(train):
    rng = np.random.default_rng(1)
    return fs.QueryFeatures(dense=rng.standard_normal((N_QUERIES, 3)),
                            categorical={"country": rng.integers(0, 5, N_QUERIES)},
                            bags={"history": train})  # fmt: skip


def _read(path):
    return pq.read_table(path).to_pydict()


def _expected(ids, scores, query_labels=None, item_labels=None):
    """The long-format rows of recommend's (ids, scores), padding dropped."""
    q, r = np.nonzero(ids >= 0)
    return {
        "query": (q if query_labels is None else np.asarray(query_labels)[q]).tolist(),
        "rank": (r + 1).tolist(),
        "item": (ids[q, r] if item_labels is None else np.asarray(item_labels)[ids[q, r]]).tolist(),
        "score": scores[q, r].tolist(),
    }


def _folder_files(path):
    return sorted(os.listdir(path))


@pytest.mark.parametrize("batch_size", [1, 5, N_QUERIES, 100])
@pytest.mark.parametrize("k", [3, N_ITEMS + 7])  # k > n_items: the padding is dropped
def test_wals_file_equals_recommend(wals, train, tmp_path, batch_size, k):
    out = tmp_path / "recs.parquet"
    exclude = _interactions(seed=5)
    n = wals.recommend_all(k, out=out, batch_size=batch_size, filter_seen=True, exclude=exclude,
                           progress=False)  # fmt: skip
    ids, scores = wals.recommend(np.arange(N_QUERIES), k, filter_seen=True, exclude=exclude)
    expected = _expected(ids, scores)
    assert _read(out) == expected and n == len(expected["query"])
    assert (ids < 0).any() == (k > N_ITEMS)
    table = pq.read_table(out)
    assert [str(t) for t in table.schema.types] == ["int64", "int32", "int64", "float"]
    assert pq.ParquetFile(out).num_row_groups == -(-N_QUERIES // batch_size)
    assert _folder_files(tmp_path) == ["recs.parquet"]  # no temporary file left


def test_wals_defaults_to_recommend_defaults(wals, tmp_path):
    out = tmp_path / "recs.parquet"
    wals.recommend_all(out=out)
    assert _read(out) == _expected(*wals.recommend(np.arange(N_QUERIES)))


@pytest.mark.parametrize("batch_size", [4, 16, 1000])
@pytest.mark.parametrize("kind", ["QueryFeatures", "datasets.Features"])
def test_softmax_file_equals_recommend(softmax, train, tmp_path, batch_size, kind):
    feats = _features(train)
    if kind == "datasets.Features":
        feats = fs.datasets.Features(dense=feats.dense, categorical=feats.categorical,
                                     bags={"history": train})  # fmt: skip
    out = tmp_path / "recs.parquet"
    exclude = _interactions(seed=7)
    k = N_ITEMS - 2  # some queries have fewer eligible items: padding dropped
    n = softmax.recommend_all(feats, k, out=out, exclude=exclude, filter_seen=True,
                              batch_size=batch_size, progress=False)  # fmt: skip
    ids, scores = softmax.recommend(feats, k, exclude=exclude, filter_seen=True)
    assert (ids < 0).any()
    expected = _expected(ids, scores)
    assert _read(out) == expected and n == len(expected["query"])
    assert pq.ParquetFile(out).num_row_groups == -(-N_QUERIES // batch_size)


def test_labels_map_rows_and_items(wals, softmax, train, tmp_path):
    users = np.array([f"user{i}" for i in range(N_QUERIES)])
    items = np.arange(N_ITEMS, dtype=np.int64) * 10 + 1000
    out = tmp_path / "recs.parquet"
    wals.recommend_all(4, out=out, batch_size=6, query_labels=users, item_labels=items)
    assert _read(out) == _expected(*wals.recommend(np.arange(N_QUERIES), 4), users, items)
    table = pq.read_table(out)
    assert [str(t) for t in table.schema.types] == ["string", "int32", "int64", "float"]
    # Python lists work too; object arrays of str are strings.
    names = np.array([f"item {j}" for j in range(N_ITEMS)], dtype=object)
    softmax.recommend_all(_features(train), 2, out=out, query_labels=list(range(N_QUERIES)),
                          item_labels=names)  # fmt: skip
    ids, scores = softmax.recommend(_features(train), 2)
    assert _read(out) == _expected(ids, scores, None, names)
    assert str(pq.read_table(out).schema.field("item").type) == "string"


def test_existing_file_replaced_only_when_complete(tmp_path):
    out = tmp_path / "recs.parquet"
    out.write_bytes(b"old content")

    def failing(rows):
        if rows[0] >= 20:
            raise RuntimeError("boom")
        return np.zeros((len(rows), 2), np.int64), np.ones((len(rows), 2), np.float32)

    with pytest.raises(RuntimeError, match="boom"):
        write_recommendations(failing, 50, 2, out, batch_size=10)
    assert out.read_bytes() == b"old content"
    assert _folder_files(tmp_path) == ["recs.parquet"]

    def interrupted(rows):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        write_recommendations(interrupted, 50, 2, tmp_path / "new.parquet", batch_size=10)
    assert _folder_files(tmp_path) == ["recs.parquet"]

    def fine(rows):
        ids = np.tile(np.array([[3, -1]], np.int64), (len(rows), 1))
        return ids, np.ones(ids.shape, np.float32)

    assert write_recommendations(fine, 50, 2, out, batch_size=10) == 50
    assert _read(out) == {"query": list(range(50)), "rank": [1] * 50, "item": [3] * 50,
                          "score": [1.0] * 50}  # fmt: skip
    assert _folder_files(tmp_path) == ["recs.parquet"]
    mask = os.umask(0)
    os.umask(mask)
    assert out.stat().st_mode & 0o777 == 0o666 & ~mask


def test_no_queries_and_all_padding_give_files_without_rows(tmp_path):
    def padding(rows):
        return np.full((len(rows), 3), -1, np.int64), np.full((len(rows), 3), -np.inf, np.float32)

    for n in (0, 9):
        out = tmp_path / f"{n}.parquet"
        labels = np.array([f"q{i}" for i in range(n)], dtype=str)
        assert write_recommendations(padding, n, 3, out, query_labels=labels) == 0
        table = pq.read_table(out)
        assert table.num_rows == 0 and table.column_names == ["query", "rank", "item", "score"]
        assert str(table.schema.field("query").type) == "string"


def test_progress_bar_on_stderr_only_when_asked(wals, tmp_path, capsys):
    out = tmp_path / "recs.parquet"
    wals.recommend_all(3, out=out, batch_size=10, progress=False)
    assert capsys.readouterr().err == ""
    wals.recommend_all(3, out=out, batch_size=10)  # None: stderr is not a terminal here
    assert capsys.readouterr().err == ""
    wals.recommend_all(3, out=out, batch_size=10, progress=True)
    err = capsys.readouterr().err
    assert "recommend_all" in err and f"{N_QUERIES}/{N_QUERIES}" in err


def test_bad_input_names_the_argument(wals, softmax, train, tmp_path):
    out = tmp_path / "recs.parquet"
    cases = [
        (dict(k=0), ValueError, "k: expected an integer >= 1"),
        (dict(k=2.5), TypeError, "k: expected an integer"),
        (dict(batch_size=0), ValueError, "batch_size: expected an integer >= 1"),
        (dict(out=tmp_path), ValueError, "out: .* is a folder"),
        (dict(out=tmp_path / "missing" / "r.parquet"), ValueError, "out: the folder"),
        (dict(out=3), TypeError, "out: expected a file path"),
        (dict(query_labels=np.arange(N_QUERIES - 1)), ValueError, "query_labels: expected 37"),
        (dict(item_labels=np.arange(N_ITEMS + 1)), ValueError, "item_labels: expected 23"),
        (dict(item_labels=np.zeros((N_ITEMS, 2), int)), ValueError, "item_labels: expected a 1-D"),
        (dict(query_labels=np.zeros(N_QUERIES)), TypeError, "query_labels: expected integer or"),
        (dict(progress="yes"), TypeError, "progress: expected True, False or None"),
        (dict(exclude=train[:3]), ValueError, "exclude: expected shape"),
        (dict(exclude=train.toarray()), TypeError, "exclude: expected a scipy.sparse"),
    ]
    for kwargs, error, match in cases:
        args = {"k": 3, "out": out, **kwargs}
        with pytest.raises(error, match=match):
            wals.recommend_all(**args)
        with pytest.raises(error, match=match):
            softmax.recommend_all(_features(train), **args)
    assert not out.exists() and _folder_files(tmp_path) == []
    wals.save(tmp_path / "m.npz")
    loaded = fs.load(tmp_path / "m.npz")
    with pytest.raises(ValueError, match="filter_seen: the model has no training interactions"):
        loaded.recommend_all(out=out, filter_seen=True)
    with pytest.raises(TypeError, match="feats: expected fs.QueryFeatures"):
        softmax.recommend_all(np.zeros((3, 3)), out=out)
    with pytest.raises(RuntimeError, match="not fitted"):
        fs.WALS(2).recommend_all(out=out)
    with pytest.raises(TypeError, match="item_labels: expected integer or string labels"):
        wals.recommend_all(out=out, item_labels=np.array([1.5] * N_ITEMS, dtype=object))
    with pytest.raises(ValueError, match="recommend_batch: expected ids and scores of shape"):
        write_recommendations(lambda rows: (np.zeros((1, 2), int), np.zeros((1, 2))), 5, 2, out)
    with pytest.raises(TypeError, match="recommend_batch: expected integer item ids"):
        write_recommendations(lambda rows: (np.zeros((5, 2)), np.zeros((5, 2))), 5, 2, out)
    with pytest.raises(TypeError, match="recommend_batch: expected a callable"):
        write_recommendations(None, 5, 2, out)
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]


def test_missing_pyarrow_says_how_to_install(wals, tmp_path, monkeypatch):
    for name in [m for m in sys.modules if m == "pyarrow" or m.startswith("pyarrow.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "pyarrow", None)
    with pytest.raises(ImportError, match=r"pip install 'fastsoftmax\[data\]'"):
        wals.recommend_all(out=tmp_path / "recs.parquet")
    assert _folder_files(tmp_path) == []


@pytest.mark.parametrize("model", ["wals", "softmax"])
def test_cli_recommend_all_writes_original_ids(csv_data, tmp_path, capsys, model):  # noqa: F811
    import csv
    import io

    path = tmp_path / "m.npz"
    assert main(_train_args(csv_data, path, "--model", model, "--dim", "6", "--iterations", "2",
                            "--epochs", "2", "--no-eval")) == 0  # fmt: skip
    capsys.readouterr()
    out = tmp_path / "recs.parquet"
    assert main(["recommend", "--model", str(path), "--all", "--out", str(out), "--k", "4"]) == 0
    assert "recommendations for 300 users" in capsys.readouterr().out
    recs = _read(out)
    with np.load(path, allow_pickle=False) as f:
        users, items = f["cli_user_ids"], f["cli_item_ids"]
        indptr, indices = f["cli_train_indptr"], f["cli_train_indices"]
    assert sorted(set(recs["query"])) == sorted(users)  # every training user, original ids
    assert len(recs["query"]) == 4 * len(users)
    seen = {(users[r], items[j]) for r in range(len(users))
            for j in indices[indptr[r] : indptr[r + 1]]}  # fmt: skip
    assert not seen & set(zip(recs["query"], recs["item"], strict=True))  # training items left out
    # The same rows as `recommend --user` for a few users.
    picked = ["u3", "u250", "u17"]
    argv = ["recommend", "--model", str(path), "-k", "4", "--format", "csv"]
    assert main([*argv, *(x for u in picked for x in ("--user", u))]) == 0
    printed = [(r["user"], int(r["rank"]), r["item"], float(r["score"]))
               for r in csv.DictReader(io.StringIO(capsys.readouterr().out))]  # fmt: skip
    written = [(u, r, i, s) for u, r, i, s in
               zip(recs["query"], recs["rank"], recs["item"], recs["score"], strict=True)]  # fmt: skip
    expected = [row for u in picked for row in written if row[0] == u]
    # Same users, ranks and items; scores to the printed 6 decimals (the query embeddings of 3
    # users and of all users in one batch may differ in the last bit: the generic build's
    # dense layers use Eigen, whose blocking depends on the batch size).
    assert [row[:3] for row in printed] == [row[:3] for row in expected]
    np.testing.assert_allclose([row[3] for row in printed], [row[3] for row in expected],
                               rtol=0, atol=2e-6)  # fmt: skip
    # --index ivf: approximate search over the same users; its scores are the model's
    ivf = tmp_path / "ivf.parquet"
    assert main(["recommend", "--model", str(path), "--all", "--out", str(ivf), "--k", "4",
                 "--index", "ivf"]) == 0  # fmt: skip
    approx = _read(ivf)
    assert len(approx["query"]) == 4 * len(users)
    exact = {(u, i): s for u, i, s in zip(recs["query"], recs["item"], recs["score"], strict=True)}
    found = [(u, i) in exact for u, i in zip(approx["query"], approx["item"], strict=True)]
    assert np.mean(found) > 0.5
    for u, i, s, hit in zip(approx["query"], approx["item"], approx["score"], found, strict=True):
        assert not hit or s == exact[(u, i)]


def test_cli_recommend_all_errors(csv_data, tmp_path, capsys):  # noqa: F811
    path = tmp_path / "m.npz"
    assert main(_train_args(csv_data, path, "--dim", "4", "--iterations", "1", "--no-eval")) == 0
    capsys.readouterr()
    base = ["recommend", "--model", str(path)]
    cases = [
        (["--all"], "--all: needs --out"),
        (["--all", "--user", "u1", "--out", "r.parquet"], "not allowed with argument"),
        ([], "one of the arguments --user --all is required"),
        (["--user", "u1", "--out", str(tmp_path / "r.parquet")], "--out: only with --all"),
        (["--all", "--out", str(tmp_path / "no" / "r.parquet")], "--out: the folder"),
        (["--all", "--out", str(tmp_path)], "--out: '.*' is a folder"),
    ]
    import re

    for extra, match in cases:
        assert main([*base, *extra]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and "Traceback" not in err
        assert re.search(match, err), err
    assert sorted(os.listdir(tmp_path)) == ["m.npz"]
