import itertools
import json
import subprocess
import sys

import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax.cli import main


def read_png(path):
    """Decode a PNG file with Pillow (installed with matplotlib): returns (H, W, 3) uint8."""
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG"
        return np.asarray(im.convert("RGB"))


@pytest.fixture(scope="module")
def demo_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo")
    status = main(["demo", "--quick", "--out", str(out), "--no-progress", "--threads", "2"])
    assert status == 0
    return out, json.loads((out / "results.json").read_text())


def test_demo_writes_table_json_and_png(demo_run, capsys):
    out, res = demo_run
    names = ["Popularity", "WALS w0=0", "Softmax positives-only", "Softmax uniform neg.",
             "Softmax hard neg.", "Softmax full", "Softmax item tower"]  # fmt: skip
    for name in names:
        assert name in res["models"]
    tuned = [m for m in res["models"] if m.startswith("WALS w0=") and m != "WALS w0=0"]
    assert len(tuned) == 1
    for name, row in res["models"].items():
        for key in ["recall@10", "ndcg@10", "folding rate", "cold-start recall@10",
                    "training time (s)", "latency per query (ms)",
                    "latency per 1000 queries (ms)", "parameters"]:  # fmt: skip
            assert key in row, (name, key)
            assert np.isfinite(row[key]), (name, key)
        assert 0 <= row["recall@10"] <= 1 and 0 <= row["folding rate"] <= 1
        if name.startswith("Softmax"):
            assert 0 <= row["cold-start recall@10 (features only)"] <= 1
        if name.startswith("WALS"):
            assert 0 <= row["cold-start recall@10 (similar queries)"] <= 1
    md = (out / "results.md").read_text()
    assert md.startswith("| |") and "folding rate" in md and len(res["sentences"]) >= 5
    pytest.importorskip("matplotlib")  # the figure (optional, the `test` extra installs it)
    assert res["files"] == {"json": "results.json", "markdown": "results.md",
                            "png": "folding.png"}  # fmt: skip
    png = out / "folding.png"
    assert png.stat().st_size < 2_000_000
    img = read_png(png)
    # 2 x 2 panels (two softmax models, two WALS models) at 150 dpi: 10.4 x 10.8 inches.
    assert img.shape == (1620, 1560, 3)
    # Not blank: many distinct colours (six categories, anti-aliased markers and text).
    assert len(np.unique(img.reshape(-1, 3), axis=0)) > 200


def test_demo_without_matplotlib_skips_png(tmp_path, monkeypatch, capsys):
    """Without matplotlib the demo still writes its results, and says how to get the figure."""
    # None in sys.modules makes `import matplotlib` (and its submodules) raise ImportError.
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    status = main(["demo", "--quick", "--scale", "0.1", "--out", str(tmp_path), "--no-progress",
                   "--threads", "2"])  # fmt: skip
    assert status == 0
    res = json.loads((tmp_path / "results.json").read_text())
    assert res["files"] == {"json": "results.json", "markdown": "results.md"}
    assert (tmp_path / "results.md").read_text().startswith("| |")
    assert not (tmp_path / "folding.png").exists()
    out = capsys.readouterr().out
    hints = [line for line in out.splitlines() if "pip install 'fastsoftmax[demo]'" in line]
    assert len(hints) == 1 and "folding.png" in hints[0]
    wrote = next(line for line in out.splitlines() if line.startswith("wrote "))
    assert "folding.png" not in wrote


def test_demo_claims_hold_on_its_data(demo_run):
    """The sentences the demo prints are checked here, not assumed."""
    out, res = demo_run
    m = res["models"]
    tuned = next(r for n, r in m.items() if n.startswith("WALS w0=") and n != "WALS w0=0")
    assert (
        m["Softmax positives-only"]["folding rate"]
        > m["Softmax uniform neg."]["folding rate"] + 0.2
    )
    assert m["WALS w0=0"]["folding rate"] > tuned["folding rate"] + 0.2
    # The learned models beat popularity on held-out interactions.
    assert m["Softmax uniform neg."]["recall@10"] > m["Popularity"]["recall@10"]
    assert tuned["recall@10"] > m["Popularity"]["recall@10"]
    sentences = " ".join(res["sentences"])
    assert "folds more than with uniform negatives" in sentences
    assert "lowers the folding rate" in sentences
    # New items (10% held out of training): the item tower ranks them far above chance (a random
    # ranking of the n/10 new items has expected recall@10 = 10 / (n / 10)); no other model can.
    n_new = res["config"]["n_items"] // 10
    assert m["Softmax item tower"]["new items recall@10"] > 2 * 10 / n_new
    assert all("new items recall@10" not in r for n, r in m.items() if n != "Softmax item tower")
    assert "New items: the item tower ranks items held out of training" in sentences
    assert "| new items recall@10 | cannot |" in (out / "results.md").read_text()


@pytest.fixture(scope="module")
def csv_data(tmp_path_factory):
    d = tmp_path_factory.mktemp("csv")
    ds = fs.datasets.make_categories(300, 120, 4, seed=1)
    coo = ds.interactions.tocoo()
    lines = ["user,item,rating"] + [f"u{r},i{c},{v:g}" for r, c, v in
                                    zip(coo.row, coo.col, coo.data, strict=True)]  # fmt: skip
    path = d / "data.csv"
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.mark.parametrize("model", ["wals", "softmax"])
def test_train_recommend_evaluate_on_csv(csv_data, tmp_path, model, capsys):
    out = tmp_path / "m.npz"
    args = ["train", "--data", str(csv_data), "--user-col", "user", "--item-col", "item",
            "--weight-col", "rating", "--model", model, "--dim", "8", "--iterations", "3",
            "--epochs", "2", "--out", str(out), "--no-progress", "--threads", "1"]  # fmt: skip
    assert main(args) == 0
    text = capsys.readouterr().out
    assert "held-out" in text and "recall" in text
    loaded = fs.load(out)
    assert type(loaded).__name__ == ("WALS" if model == "wals" else "SoftmaxModel")

    assert main(["recommend", "--model", str(out), "--user", "u3", "-k", "5"]) == 0
    lines = [ln.split() for ln in capsys.readouterr().out.splitlines()[2:]]  # user, header
    assert len(lines) == 5
    recommended = {ln[1] for ln in lines}
    assert all(i.startswith("i") for i in recommended)
    # Seen items are excluded: none of user u3's training items is recommended.
    with np.load(out, allow_pickle=False) as f:
        users, items = list(f["cli_user_ids"]), f["cli_item_ids"]
        row = users.index("u3")
        indptr, indices = f["cli_train_indptr"], f["cli_train_indices"]
        seen = set(items[indices[indptr[row] : indptr[row + 1]]])
    assert not recommended & seen

    assert main(["evaluate", "--model", str(out), "--data", str(csv_data), "--user-col", "user",
                 "--item-col", "item"]) == 0  # fmt: skip
    assert "recall" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("argv", "match"),
    [
        (["train", "--data", "/nonexistent/path"], "no such file"),
        (["train", "--data", "."], ""),
        (["train", "--model", "nope", "--data", "x"], "invalid choice"),
        (["demo", "--scale", "-1"], "positive"),
        (["recommend", "--model", "/nonexistent.npz", "--user", "1"], "no such file"),
        (["frobnicate"], "invalid choice"),
        (["train"], "required"),
    ],
)
def test_cli_errors_are_one_line(argv, match, capsys):
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastsoftmax") and "Traceback" not in err
    assert len(err.splitlines()) == 1 and match in err


def test_recommend_unknown_user_and_foreign_model_file(csv_data, tmp_path, capsys):
    out = tmp_path / "m.npz"
    assert main(["train", "--data", str(csv_data), "--user-col", "user", "--item-col", "item",
                 "--dim", "4", "--iterations", "2", "--out", str(out), "--no-eval",
                 "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    assert main(["recommend", "--model", str(out), "--user", "nobody"]) == 2
    assert "unknown user" in capsys.readouterr().err
    plain = tmp_path / "plain.npz"
    fs.WALS(4, iterations=1).fit(fs.datasets.make_categories(50, 20, 2).interactions,
                                 show_progress=False).save(plain)  # fmt: skip
    assert main(["recommend", "--model", str(plain), "--user", "1"]) == 2
    assert "not written by" in capsys.readouterr().err
    bad = tmp_path / "bad.npz"
    bad.write_bytes(b"not a zip file")
    assert main(["recommend", "--model", str(bad), "--user", "1"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err


@pytest.fixture(scope="module")
def movielens_folder(tmp_path_factory):
    """A tiny MovieLens-format folder: ratings.csv and movies.csv with titles."""
    d = tmp_path_factory.mktemp("ml")
    ds = fs.datasets.make_categories(60, 40, 3, seed=2)
    coo = ds.interactions.tocoo()
    rows = ["userId,movieId,rating,timestamp"] + [
        f"{r + 1},{c + 100},4.0,{1000 + k}"
        for k, (r, c) in enumerate(zip(coo.row, coo.col, strict=True))
    ]
    (d / "ratings.csv").write_text("\n".join(rows) + "\n")
    movies = ["movieId,title,genres"] + [f'{c + 100},"Film {c}, The (19{c + 50})",Drama'
                                         for c in range(40)]  # fmt: skip
    (d / "movies.csv").write_text("\n".join(movies) + "\n")
    return d


def test_recommend_formats_with_titles(movielens_folder, tmp_path, capsys):
    import csv
    import io
    import json

    out = tmp_path / "m.npz"
    assert main(["train", "--data", str(movielens_folder), "--dim", "4", "--iterations", "2",
                 "--out", str(out), "--no-eval", "--no-progress"]) == 0  # fmt: skip
    capsys.readouterr()
    base = ["recommend", "--model", str(out), "--user", "3", "--user", "7", "-k", "4"]
    assert main([*base, "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [(r["user"], r["rank"]) for r in records] == [(u, k) for u in ("3", "7") for k in
                                                          range(1, 5)]  # fmt: skip
    for r in records:  # original movie ids, their titles, scores best first
        assert r["title"] == f"Film {int(r['item']) - 100}, The (19{int(r['item']) - 50})"
    assert all(a["score"] >= b["score"] for a, b in itertools.pairwise(records)
               if a["user"] == b["user"])  # fmt: skip
    assert main([*base, "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(rows[0]) == ["user", "rank", "item", "score", "title"]
    assert [(r["item"], r["title"]) for r in rows] == [(r["item"], r["title"]) for r in records]
    assert main(base) == 0
    lines = capsys.readouterr().out.splitlines()
    table = [ln for ln in lines if not ln.startswith("user ")]
    assert table[0].split() == ["rank", "item", "score", "title"]
    films = [t for t in table if "Film" in t]
    starts = {ln.index(r["title"]) for ln, r in zip(films, records, strict=True)}
    assert len(starts) == 1  # the title column is aligned


def test_python_dash_m_entry_point():
    r = subprocess.run([sys.executable, "-m", "fastsoftmax", "--help"], capture_output=True,
                       text=True, check=False)  # fmt: skip
    assert r.returncode == 0 and "demo" in r.stdout and "train" in r.stdout


def _train_args(csv_data, out, *extra):
    return ["train", "--data", str(csv_data), "--user-col", "user", "--item-col", "item",
            "--out", str(out), "--no-progress", "--threads", "1", *extra]  # fmt: skip


def test_train_softmax_flags_reach_the_model(csv_data, tmp_path, capsys):
    out = tmp_path / "m.npz"
    assert main(_train_args(csv_data, out, "--model", "softmax", "--hidden", "16,8", "--dim", "6",
                            "--embedding-dim", "5", "--history-dropout", "0.3",
                            "--history-target", "dropped", "--row-weighting", "uniform",
                            "--batch-size", "32", "--loss",
                            "sampled", "--sampler", "popularity", "--num-negatives", "7",
                            "--learning-rate", "0.2", "--epochs", "2")) == 0  # fmt: skip
    m = fs.load(out)
    assert (m.hidden, m.dim, m.embedding_dim, m.batch_size, m.epochs) == ((16, 8), 6, 5, 32, 2)
    assert (m.history, m.history_dropout, m.history_target) == ("history", 0.3, "dropped")
    assert m.row_weighting == "uniform"
    assert (m.loss_kind, m.learning_rate) == ("sampled", 0.2)
    assert m._config()["sampler"] == "popularity" and m._config()["num_negatives"] == 7
    assert main(_train_args(csv_data, out, "--model", "softmax", "--item-embedding", "hybrid",
                            "--item-buckets", "3", "--item-dedicated", "4", "--epochs", "1",
                            "--history-buckets", "64")) == 0  # fmt: skip
    m = fs.load(out)
    assert m.hash_buckets == {"history": 64} and m.parameters["bags.history"].shape[0] == 64
    assert (m.item_embedding, m.item_buckets, m.item_dedicated) == ("hybrid", 3, 4)
    assert m.parameters["item_qr.dedicated"].shape == (4, m.dim)
    # Without flags: the model's own defaults (its recipe) with the history feature.
    assert main(_train_args(csv_data, out, "--model", "softmax", "--epochs", "1")) == 0
    d = fs.load(out)
    ref = fs.SoftmaxModel(d.n_items)
    assert (d.hidden, d.dim, d.history_dropout) == (ref.hidden, ref.dim, ref.history_dropout)
    assert "held-out" in capsys.readouterr().out


def test_train_early_stopping_refits_for_the_best_epoch_count(csv_data, tmp_path, capsys):
    out = tmp_path / "m.npz"
    assert main(_train_args(csv_data, out, "--model", "softmax", "--epochs", "12", "--dim", "8",
                            "--early-stopping", "2")) == 0  # fmt: skip
    text = capsys.readouterr().out
    epochs = int(text.split("early stopping: ")[1].split()[0])
    assert 1 <= epochs <= 12 and fs.load(out).epochs == epochs


@pytest.mark.parametrize("model", ["wals", "softmax"])
def test_train_tune_searches_the_grid_and_refits_the_best(csv_data, tmp_path, capsys, monkeypatch,
                                                          model):  # fmt: skip
    from fastsoftmax import _cli_models

    grid = {"unobserved_weight": [0.01, 0.3], "regularization": [0.1, 1.0]}
    if model == "softmax":
        grid = {"history_dropout": [0.2, 0.8], "learning_rate": [0.05, 0.1]}
        monkeypatch.setattr(_cli_models, "SOFTMAX_GRID", grid)
    else:
        monkeypatch.setattr(_cli_models, "WALS_GRID", grid)
    out = tmp_path / "m.npz"
    assert main(_train_args(csv_data, out, "--model", model, "--tune", "--dim", "6",
                            "--epochs", "3", "--iterations", "3")) == 0  # fmt: skip
    lines = capsys.readouterr().out.splitlines()
    tried = [ln for ln in lines if ln.startswith("tune: {")]
    assert len(tried) == 4
    scores = [float(ln.rsplit(" ", 1)[1]) for ln in tried]
    chosen = next(ln for ln in lines if ln.startswith("tune: chose"))
    best = tried[int(np.argmax(scores))]
    assert best.split(" validation")[0].removeprefix("tune: ") == chosen.removeprefix(
        "tune: chose "
    )
    m = fs.load(out)
    for key in grid:
        assert f"'{key}': {getattr(m, key)}" in chosen


def test_train_bad_history_dropout_names_the_flag(csv_data, tmp_path, capsys):
    assert main(_train_args(csv_data, tmp_path / "m.npz", "--model", "softmax",
                            "--history-dropout", "1.5")) == 2  # fmt: skip
    err = capsys.readouterr().err
    assert "error: --history-dropout: expected a finite number in [0, 1)" in err
    assert len(err.strip().splitlines()) == 1


def test_min_rating_needs_ratings_and_must_leave_interactions(csv_data, tmp_path, capsys):
    args = _train_args(csv_data, tmp_path / "m.npz", "--min-rating", "3")
    assert main(args) == 2
    assert "--min-rating: needs --weight-col" in capsys.readouterr().err
    assert main([*args, "--weight-col", "rating", "--min-rating", "100"]) == 2
    assert "--min-rating: no rating is >= 100.0" in capsys.readouterr().err
    assert not (tmp_path / "m.npz").exists()


def test_held_out_counts_print_as_integers_and_help_shows_defaults(csv_data, tmp_path, capsys):
    assert main(_train_args(csv_data, tmp_path / "m.npz", "--dim", "4", "--iterations", "2")) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("held-out"))
    assert ", k 10, n_queries " in line and ".0000" not in line.split(", k ")[1]
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    assert "(default: 0.9)" in text and "(default: 0.03)" in text and "(default: wals)" in text
