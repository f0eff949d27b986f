"""fs.datasets.load_parquet (interactions read from Parquet batch by batch) and the CLI's
``--data x.parquet``: the same Dataset as load_csv / from_dataframe on the same rows."""

import sys

import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax import datasets
from fastsoftmax.cli import main

pa = pytest.importorskip("pyarrow")
pq = pytest.importorskip("pyarrow.parquet")


def random_log(seed, n_rows=2000, n_users=120, n_items=50, user_kind="int", item_kind="str"):
    """Interactions with repeated (user, item) pairs; weights are multiples of 1/2 (sums exact)."""
    rng = np.random.default_rng(seed)
    u = rng.integers(0, n_users, n_rows)
    i = rng.integers(0, n_items, n_rows)
    return {
        "user": u * 7 - 300 if user_kind == "int" else np.array([f"u{x}" for x in u]),
        "item": i * 3 + 10 if item_kind == "int" else np.array([f"item-{x:03d}" for x in i]),
        "w": rng.integers(1, 6, n_rows) / 2,
        "t": rng.integers(0, 40, n_rows),
    }


def write_csv(path, log):
    lines = ["user,item,w"] + [f"{u},{i},{w}" for u, i, w in
                               zip(log["user"], log["item"], log["w"], strict=True)]  # fmt: skip
    path.write_text("\n".join(lines) + "\n")
    return path


def write_parquet(path, log, row_group_size=128):
    pq.write_table(pa.table(log), path, row_group_size=row_group_size)
    return path


def assert_same(a, b):
    """The same Dataset: user / item universes (values and kind) and the same CSR."""
    for ids_a, ids_b in ((a.query_ids, b.query_ids), (a.item_ids, b.item_ids)):
        assert ids_a.dtype.kind == ids_b.dtype.kind
        np.testing.assert_array_equal(ids_a, ids_b)
    ma, mb = a.interactions, b.interactions
    assert ma.shape == mb.shape and ma.dtype == mb.dtype == np.float32
    assert ma.has_canonical_format and mb.has_canonical_format
    for part in ("indptr", "indices", "data"):
        np.testing.assert_array_equal(getattr(ma, part), getattr(mb, part))


@pytest.mark.parametrize("kinds", [("int", "int"), ("str", "str"), ("int", "str"), ("str", "int")])
@pytest.mark.parametrize("weighted", [True, False])
def test_equals_load_csv_and_from_dataframe(tmp_path, kinds, weighted):
    log = random_log(0, user_kind=kinds[0], item_kind=kinds[1])
    weight = "w" if weighted else None
    parquet = datasets.load_parquet(write_parquet(tmp_path / "x.parquet", log), "user", "item",
                                    weight)  # fmt: skip
    csv = datasets.load_csv(write_csv(tmp_path / "x.csv", log), "user", "item", weight)
    assert_same(parquet, csv)
    assert_same(parquet, datasets.from_dataframe(pa.table(log), "user", "item", weight))
    # duplicates were summed (or counted): fewer stored pairs than rows, total weight kept
    assert parquet.interactions.nnz < len(log["user"])
    total = log["w"].sum() if weighted else len(log["user"])
    assert parquet.interactions.sum() == pytest.approx(total)
    assert parquet.query_ids.dtype.kind == ("i" if kinds[0] == "int" else "U")
    assert parquet.interactions.indptr.dtype == np.int32  # scipy's choice below 2**31 entries


def test_many_row_groups_and_batches_give_the_same_dataset(tmp_path, monkeypatch):
    log = random_log(1, user_kind="str", item_kind="str")
    path = write_parquet(tmp_path / "x.parquet", log, row_group_size=97)
    assert pq.ParquetFile(path).metadata.num_row_groups > 10
    whole = datasets.from_dataframe(pa.table(log), "user", "item", "w", "t")
    assert_same(datasets.load_parquet(path, "user", "item", "w", timestamp_col="t"), whole)
    # batches smaller than a row group: a batch's string dictionary is not the file's
    monkeypatch.setattr(datasets, "_PARQUET_BATCH_ROWS", 13)
    small = datasets.load_parquet(path, "user", "item", "w", timestamp_col="t")
    assert_same(small, whole)
    np.testing.assert_array_equal(small.timestamps.data, whole.timestamps.data)
    assert small.name == str(path)


def test_columns_by_position_and_a_folder_of_files(tmp_path):
    log = random_log(2, user_kind="int", item_kind="int")
    expected = datasets.from_dataframe(pa.table(log), "user", "item", "w")
    by_position = datasets.load_parquet(write_parquet(tmp_path / "x.parquet", log), 0, 1, 2)
    assert_same(by_position, expected)
    folder = tmp_path / "parts.parquet"  # a folder of files, as Spark writes one
    (folder / "sub").mkdir(parents=True)
    cut = [0, 500, 1300, 2000]
    names = ["part-0.parquet", "part-1.pq", "sub/part-2.parquet"]
    for name, lo, hi in zip(names, cut[:-1], cut[1:], strict=True):
        write_parquet(folder / name, {k: v[lo:hi] for k, v in log.items()}, row_group_size=64)
    (folder / "_SUCCESS").write_text("")  # not Parquet: ignored
    assert_same(datasets.load_parquet(folder, "user", "item", "w"), expected)


def test_id_types(tmp_path):
    # narrow integer types become int64; uint64 ids from 2**63 on stay uint64 (as from_dataframe)
    table = pa.table({"u": pa.array([3, 1, 3], pa.int8()), "i": pa.array([2**63 + 5, 7, 7],
                                                                          pa.uint64())})  # fmt: skip
    data = datasets.load_parquet(_write(tmp_path, table), "u", "i")
    assert data.query_ids.dtype == np.int64 and data.item_ids.dtype == np.uint64
    assert_same(data, datasets.from_dataframe(table, "u", "i"))
    # a dictionary column (a pandas categorical): unused categories are not items
    codes = pa.DictionaryArray.from_arrays(pa.array([0, 2, 0], pa.int32()),
                                           pa.array(["x", "never", "y"]))  # fmt: skip
    cat = pa.table({"u": pa.array([1, 2, 2]), "i": codes})
    data = datasets.load_parquet(_write(tmp_path, cat), "u", "i")
    assert data.item_ids.tolist() == ["x", "y"]
    np.testing.assert_array_equal(data.interactions.toarray(), [[1, 0], [1, 1]])


def _write(tmp_path, table, name="t.parquet", **kwargs):
    path = tmp_path / name
    pq.write_table(table, path, **kwargs)
    return path


def test_bad_input(tmp_path):
    path = write_parquet(tmp_path / "x.parquet", random_log(3))
    with pytest.raises(ValueError, match=r"^user_col: no column 'uid' in x.parquet; it has \["):
        datasets.load_parquet(path, "uid", "item")
    with pytest.raises(ValueError, match="weight_col: no column 'rating'"):
        datasets.load_parquet(path, "user", "item", "rating")
    with pytest.raises(ValueError, match="item_col: no column at position 9"):
        datasets.load_parquet(path, 0, 9)
    with pytest.raises(TypeError, match="user_col: expected an integer"):
        datasets.load_parquet(path, 1.0, "item")
    with pytest.raises(FileNotFoundError):
        datasets.load_parquet(tmp_path / "missing.parquet", "user", "item")
    not_parquet = tmp_path / "text.parquet"
    not_parquet.write_text("user,item\n1,2\n")
    with pytest.raises(ValueError, match="path: cannot read .* as Parquet"):
        datasets.load_parquet(not_parquet, "user", "item")
    (tmp_path / "empty_folder").mkdir()
    with pytest.raises(ValueError, match="holds no .parquet"):
        datasets.load_parquet(tmp_path / "empty_folder", "user", "item")
    # floats are no ids; negative weights are refused
    floats = _write(tmp_path, pa.table({"u": [1.0, 2.0], "i": [1, 2]}), "f.parquet")
    with pytest.raises(TypeError, match="user_col: expected integer or string ids"):
        datasets.load_parquet(floats, "u", "i")
    negative = _write(tmp_path, pa.table({"u": [1, 2], "i": [1, 2], "w": [1.0, -1.0]}), "n.pq")
    with pytest.raises(ValueError, match="weight_col: expected weights >= 0"):
        datasets.load_parquet(negative, "u", "i", "w")


def test_empty_file_and_nulls(tmp_path):
    empty = _write(tmp_path, pa.table({"user": pa.array([], pa.int64()),
                                       "item": pa.array([], pa.string())}), "e.parquet")  # fmt: skip
    with pytest.raises(ValueError, match="path: expected at least one interaction.*no rows"):
        datasets.load_parquet(empty, "user", "item")
    # a null in the third row group: the message gives its row in the whole file
    items = pa.array(["a"] * 25 + [None] + ["b"] * 4)
    nulls = _write(tmp_path, pa.table({"user": np.arange(30), "item": items}), "n.parquet",
                   row_group_size=10)  # fmt: skip
    with pytest.raises(ValueError, match="item_col: expected no missing ids, found 1 .* row 25"):
        datasets.load_parquet(nulls, "user", "item")
    # integer ids in one file, string ids in another
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    _write(mixed, pa.table({"user": [1], "item": [1]}), "a.parquet")
    _write(mixed, pa.table({"user": [1], "item": ["x"]}), "b.parquet")
    with pytest.raises(TypeError, match="item_col: integer ids in one file, string ids"):
        datasets.load_parquet(mixed, "user", "item")


def test_without_pyarrow_a_clear_import_error(tmp_path, monkeypatch, capsys):
    path = write_parquet(tmp_path / "x.parquet", random_log(4))
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # `import pyarrow.parquet` fails
    with pytest.raises(ImportError, match=r"load_parquet: .*needs pyarrow .*fastsoftmax\[data\]"):
        datasets.load_parquet(path, "user", "item")
    assert main(["train", "--data", str(path), "--user-col", "user", "--item-col", "item"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "needs pyarrow" in err


@pytest.fixture(scope="module")
def parquet_data(tmp_path_factory):
    ds = fs.datasets.make_categories(300, 120, 4, seed=1)
    coo = ds.interactions.tocoo()
    table = pa.table({"user": [f"u{r}" for r in coo.row], "item": coo.col.astype(np.int64),
                      "rating": coo.data.astype(np.float64)})  # fmt: skip
    path = tmp_path_factory.mktemp("parquet") / "data.parquet"
    pq.write_table(table, path, row_group_size=500)
    return path


@pytest.mark.parametrize("model", ["wals", "softmax"])
def test_cli_train_and_evaluate_on_parquet(parquet_data, tmp_path, model, capsys):
    out = tmp_path / "m.npz"
    args = ["train", "--data", str(parquet_data), "--user-col", "user", "--item-col", "item",
            "--weight-col", "rating", "--model", model, "--dim", "8", "--iterations", "2",
            "--epochs", "2", "--out", str(out), "--no-progress", "--threads", "1"]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "300 queries x 120 items" in text and "held-out" in text
    with np.load(out, allow_pickle=False) as f:
        assert f["cli_user_ids"][0].startswith("u") and f["cli_item_ids"][0] == "0"
    assert main(["evaluate", "--model", str(out), "--data", str(parquet_data), "--user-col",
                 "user", "--item-col", "item"]) == 0  # fmt: skip
    assert "recall" in capsys.readouterr().out


def test_cli_parquet_errors_name_the_flag(parquet_data, tmp_path, capsys):
    assert main(["train", "--data", str(parquet_data), "--user-col", "userId"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastsoftmax: error: --user-col: no column 'userId' in data.parquet")
    assert len(err.splitlines()) == 1
    assert main(["train", "--data", str(parquet_data), "--user-col", "user", "--item-col", "item",
                 "--min-rating", "3"]) == 2  # fmt: skip
    assert "--min-rating: needs --weight-col" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "Parquet file (.parquet / .pq" in " ".join(capsys.readouterr().out.split())
