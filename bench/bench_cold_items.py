"""New items without retraining, on MovieLens ml-latest-small: the item tower against content and
random baselines on items held out of training, and against the item-table model on the others.

    OPENBLAS_NUM_THREADS=1 python bench/bench_cold_items.py [--seeds 0 1 2] [--threads 2]
        [--data PATH] [--json PATH]

Data: the rating matrix of bench_quality.py (610 users x 9,724 rated movies, values = ratings).
Item features: the genres (a bag over the 20 genre names) and the release year from the title (a
categorical feature: 5-year buckets from 1900, one bucket for earlier or unknown years).

Protocol, per seed s: 10% of the movies (seeded) are cold: every interaction with them is removed
from training. The warm part is split per user 80/20 (``train_test_split(warm, 0.2, seed=s)``);
every model trains on the 80% (the users' training items are their history bag and their targets,
as bench_quality's softmax models). Two evaluations, recall@10 and ndcg@10 over the users with at
least one held-out item (fs.metrics):

cold items
    Each user ranks the cold movies only (none of them was seen in training), from their training
    history; relevant: the user's cold movies. Baselines: random (a seeded permutation), and
    content: the user's genre profile (the sum of the genre vectors of their training movies,
    L2-normalised) dotted with each cold movie's genre vector (L2-normalised). Matrix
    factorisation and an item table cannot rank an item they never trained on.
warm items
    Each user ranks the warm movies, training ones excluded; relevant: the held-out 20%. The item
    tower against the item-table model with the same recipe (fs.SoftmaxModel defaults with the
    history feature).

Models: ``softmax item table``: fs.SoftmaxModel(history="history") defaults; ``item tower``: the
same with ``fit(item_features=...)`` (defaults: each item's own id embedding added to the tower's
output, id-dropout 0.25: chosen on a development seed, 100, not among the reported ones, from
0.1 / 0.25 / 0.5); ``item tower, no ids``: ``item_id_embedding=False`` (features only);
``item tower, in-batch + 256 uniform, streaming logQ``: sampled softmax over the batch's items and
256 uniform draws (mixed negatives) with the streaming frequency estimate (the YouTube recipe).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import re
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

import fastsoftmax as fs
from fastsoftmax.metrics import ranking_metrics

from _common import print_table, write_json

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared/data/ml-latest-small"
COLD_FRACTION = 0.1
K = 10


def load(path: Path) -> tuple[sp.csr_matrix, fs.QueryFeatures, sp.csr_matrix]:
    """(ratings users x rated movies, item features of those movies, their genre multi-hot)."""
    ds = fs.datasets.load_movielens(path)
    x = ds.interactions
    rated = np.flatnonzero(x.getnnz(axis=0))
    genres = sp.csr_matrix(ds.item_features["genres"][rated], dtype=np.float32)
    years = np.array([_year(t) for t in np.asarray(ds.item_names)[rated]])
    bucket = np.where(years >= 1900, (years - 1900) // 5 + 1, 0).astype(np.int64)
    items = fs.QueryFeatures(categorical={"year": bucket}, bags={"genres": genres})
    return sp.csr_matrix(x[:, rated]), items, genres


def _year(title: str) -> int:
    m = re.search(r"\((\d{4})\)\s*$", str(title).strip())
    return int(m.group(1)) if m else 0


def take_items(items: fs.QueryFeatures, rows: np.ndarray) -> fs.QueryFeatures:
    indptr, indices, data = items.bags["genres"]
    g = sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, items.bag_vocab["genres"]))
    return fs.QueryFeatures(categorical={"year": items.categorical["year"][rows]},
                            bags={"genres": g[rows]})  # fmt: skip


def split(x: sp.csr_matrix, seed: int):
    rng = np.random.default_rng(seed)
    n = x.shape[1]
    cold = np.sort(rng.choice(n, round(COLD_FRACTION * n), replace=False))
    warm = np.setdiff1d(np.arange(n), cold)
    train, test = fs.datasets.train_test_split(
        sp.csr_matrix(x[:, warm]), test_fraction=0.2, seed=seed
    )
    users = np.flatnonzero(train.getnnz(axis=1))  # every training row needs a positive
    return warm, cold, train[users], test[users], sp.csr_matrix(x[users][:, cold])


def scores(ids: np.ndarray, relevant: sp.csr_matrix) -> dict[str, float]:
    keep = np.flatnonzero(relevant.getnnz(axis=1))
    r = ranking_metrics(ids[keep], relevant[keep], K)
    return {"recall@10": float(r["recall"]), "ndcg@10": float(r["ndcg"])}


def fit(train, items, seed, threads, **kwargs):
    model = fs.SoftmaxModel(train.shape[1], history="history", num_threads=threads, seed=seed,
                            **kwargs)  # fmt: skip
    feats = fs.QueryFeatures(bags={"history": train})
    t0 = time.perf_counter()
    model.fit(feats, train, item_features=items, show_progress=False)
    return model, time.perf_counter() - t0


def run_seed(x, items, genres, seed, threads) -> dict[str, dict[str, float]]:
    warm, cold, train, test, cold_test = split(x, seed)
    feats = fs.QueryFeatures(bags={"history": train})
    out: dict[str, dict[str, float]] = {}
    # Baselines on the cold items.
    n_cold = len(cold)
    rng = np.random.default_rng(seed + 7)
    random_ids = np.stack([rng.permutation(n_cold)[:K] for _ in range(train.shape[0])])
    out["random"] = {f"cold {k}": v for k, v in scores(random_ids, cold_test).items()}
    profile = train @ genres[warm]
    profile = sp.csr_matrix(profile.multiply(1 / np.maximum(
        np.sqrt(np.asarray(profile.multiply(profile).sum(axis=1))), 1e-12)))  # fmt: skip
    g_cold = genres[cold].toarray()
    g_cold /= np.maximum(np.linalg.norm(g_cold, axis=1, keepdims=True), 1e-12)
    content_ids, _ = fs.topk(profile.toarray().astype(np.float32), g_cold.astype(np.float32), K)
    out["content (genre profile)"] = {
        f"cold {k}": v for k, v in scores(content_ids, cold_test).items()
    }
    warm_items = take_items(items, warm)
    cold_items = take_items(items, cold)
    for name, kw, tower in (
        ("softmax item table", {}, False),
        ("item tower", {}, True),
        ("item tower, no ids", {"item_id_embedding": False}, True),
        ("item tower, in-batch + 256 uniform, streaming logQ",
         {"loss": "sampled", "sampler": "in_batch", "mixed_negatives": 256,
          "frequency_estimate": "streaming"}, True),
    ):  # fmt: skip
        model, seconds = fit(train, warm_items if tower else None, seed, threads, **kw)
        row = {f"warm {k}": v for k, v in scores(
            model.recommend(feats, K, exclude=train)[0], test).items()}  # fmt: skip
        if tower:
            psi = model.query_embeddings(feats)
            ids, _ = fs.topk(psi, model.item_embeddings_from(cold_items), K)
            row.update({f"cold {k}": v for k, v in scores(ids, cold_test).items()})
        row["fit s"] = seconds
        out[name] = row
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--data", type=Path, default=DEFAULT_DATA)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    x, items, genres = load(args.data)
    per_seed = [run_seed(x, items, genres, s, args.threads) for s in args.seeds]
    columns = ["cold recall@10", "cold ndcg@10", "warm recall@10", "warm ndcg@10", "fit s"]
    rows = []
    for name in per_seed[0]:
        row = {"model": name}
        for c in columns:
            values = [r[name][c] for r in per_seed if c in r[name]]
            if values:
                row[c] = (
                    f"{np.mean(values):.4f} +- {np.std(values, ddof=1) if len(values) > 1 else 0:.4f}"
                )
            else:
                row[c] = "cannot" if c.startswith("cold") else "-"
        rows.append(row)
    print_table(rows, ["model", *columns])
    write_json("cold_items", {"seeds": args.seeds, "per_seed": per_seed, "table": rows},
               args.json)  # fmt: skip


if __name__ == "__main__":
    main()
