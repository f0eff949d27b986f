"""Very large corpora: sampled softmax with a plain, a quotient-remainder ("qr") and a hybrid item
table, and WALS, on synthetic power-law data with 1e6 to 5e7 items: peak memory, training speed,
recall@10 on held-out interactions, and the memory model behind them.

    python bench/bench_scale.py [--items 1e6 1e7 5e7] [--queries 1e6 1e6 1e7]
        [--models table qr hybrid wals] [--epochs 2] [--threads 2] [--json PATH]

Every (scale, model) runs in a fresh worker process (this script with --worker), so that its peak
resident memory (VmHWM) is its own. The worker generates the data (same seed for every model),
resets its peak (/proc/self/clear_refs), then trains and evaluates: "peak GB" is the peak during
training and evaluation with the data resident; "data GB" the resident memory before training.

Data (synthetic, deterministic): item popularity follows a Zipf law of exponent 1 over ranks; an
item's rank r is stored under id (a r + c) mod n (a bijection), so frequent items are spread over
the ids; items fall into C = 1000 clusters (rank mod C). Each of Q queries has a cluster and
`--per-query` (10) interactions: 80% drawn Zipf-wise among its cluster's items, 20% among all
items (duplicates merged). Query features: the cluster id (categorical) and the query's items as a
history bag hashed into 2^18 rows (fs.SoftmaxModel(hash_buckets=...)), so that the item table is
the one table that grows with the corpus. Held out: 1000 more queries with 20 interactions each,
80% their history (features, or WALS fold-in) and 20% to predict; history items excluded.

Models (dim 64, --threads threads):
* table / qr / hybrid: fs.SoftmaxModel(loss="sampled", num_negatives=256, shared uniform negatives
  with logQ correction, batch 256, Adagrad 0.05, history dropout 0.9, --epochs epochs) with
  item_embedding "table", "qr" (b = ceil(sqrt(n))) or "hybrid" (the n/100 most frequent items
  dedicated). "examples/s": training rows per second over the last epoch.
* wals: fs.WALS(64, iterations=--wals-iterations, CG); "examples/s" is iterations per second here.
* popularity (reference, no training): the query's cluster's most frequent training items, the
  signal the generator planted; how far the trained models are from it.
A model whose memory model exceeds --memory-limit GB is not run (reported as such).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import json
import math
import subprocess
import sys
import time
from typing import Any

import numpy as np
import scipy.sparse as sp

from _common import machine_info, print_table, write_json

CLUSTERS = 1000
HISTORY_BUCKETS = 1 << 18
DIM = 64
TEST_QUERIES = 1000


# -- data -------------------------------------------------------------------------------------------


def zipf_ranks(rng: np.random.Generator, n: np.ndarray | int, size: int) -> np.ndarray:
    """Ranks in [0, n) with P(r) about proportional to 1 / (r + 1) (inverse CDF of the
    continuous law)."""
    u = rng.random(size)
    return np.minimum(
        np.exp(u * np.log(np.asarray(n) + 1.0)).astype(np.int64) - 1, np.asarray(n) - 1
    )


def interactions(n_items: int, n_queries: int, per_query: int, seed: int):
    """(binary CSR n_queries x n_items with int64 indices, the queries' clusters)."""
    rng = np.random.default_rng(seed)
    cluster = rng.integers(0, CLUSTERS, n_queries)
    chunks = []
    step = max(1, (1 << 22) // per_query)  # queries per chunk: bounded temporaries
    a = 2_654_435_761 % n_items or 1
    while math.gcd(a, n_items) != 1:
        a += 1
    for q0 in range(0, n_queries, step):
        q1 = min(n_queries, q0 + step)
        rows = np.repeat(np.arange(q0, q1), per_query)
        members = (n_items - cluster[rows] + CLUSTERS - 1) // CLUSTERS  # items of the cluster
        within = zipf_ranks(rng, members, len(rows)) * CLUSTERS + cluster[rows]
        anywhere = zipf_ranks(rng, n_items, len(rows))
        rank = np.where(rng.random(len(rows)) < 0.8, within, anywhere)
        cols = (a * rank + 12345) % n_items
        m = sp.csr_matrix((np.ones(len(rows), np.float32), (rows - q0, cols)),
                          shape=(q1 - q0, n_items))  # fmt: skip
        m.sum_duplicates()
        m.data[:] = 1.0
        chunks.append(m)
    x = sp.vstack(chunks, format="csr")
    x.indices = x.indices.astype(np.int64)
    x.indptr = x.indptr.astype(np.int64)
    return x, cluster


def dataset(n_items: int, n_queries: int, per_query: int):
    """Training matrix and clusters; held-out queries: history, targets, clusters."""
    import fastsoftmax as fs

    train, clusters = interactions(n_items, n_queries, per_query, seed=0)
    test, test_clusters = interactions(n_items, TEST_QUERIES, 2 * per_query, seed=1)
    history, targets = fs.datasets.train_test_split(test, test_fraction=0.2, seed=0)
    return train, clusters, history, targets, test_clusters


# -- memory model -----------------------------------------------------------------------------------


def table_rows(kind: str, n: int) -> float:
    """Rows of dim floats that the item parameters take."""
    b = math.isqrt(n - 1) + 1
    if kind == "table":
        return n
    qr = math.ceil(n / b) + b
    return qr if kind == "qr" else qr + n // 100


def model_bytes(kind: str, n: int, dim: int = DIM) -> float:
    """Training memory that grows with the items: parameters and Adagrad state (2 x 4 bytes per
    float), and the per-item arrays: the sampled loss's 4-byte row-gradient slots (every kind),
    the compact-table slots of computed tables (4 bytes), the hybrid's dedicated slots (4 bytes);
    WALS: about 12 floats per factor column, as measured (item factors, their solve copies and
    the item-major interaction index)."""
    if kind == "wals":
        return n * dim * 4.0 * 3.05
    if kind == "popularity":
        return 0.0
    per_item = 4.0 + (8.0 if kind == "hybrid" else 4.0 if kind == "qr" else 0.0)
    return table_rows(kind, n) * dim * 8.0 + n * per_item


# -- worker -----------------------------------------------------------------------------------------


def rss_gb(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 2**20
    return float("nan")


def recall(ids: np.ndarray, targets: sp.csr_matrix) -> float:
    import fastsoftmax as fs

    return fs.metrics.recall_at_k(ids, targets, 10)


def run_softmax(cfg: dict, train, clusters, history, targets, test_clusters) -> dict:
    import fastsoftmax as fs

    options = {"table": {}, "qr": {"item_embedding": "qr"},
               "hybrid": {"item_embedding": "hybrid", "item_dedicated": cfg["n_items"] // 100}}  # fmt: skip
    model = fs.SoftmaxModel(
        cfg["n_items"], dim=DIM, embedding_dim=DIM, history="history", loss="sampled",
        num_negatives=256, epochs=1, hash_buckets={"history": HISTORY_BUCKETS},
        num_threads=cfg["threads"], **options[cfg["model"]],
    )  # fmt: skip
    feats = fs.QueryFeatures(categorical={"cluster": clusters}, bags={"history": train})
    fit_s = []
    for epoch in range(cfg["epochs"]):
        t0 = time.perf_counter()
        if epoch == 0:
            model.fit(feats, train, show_progress=False)
        else:
            model.partial_fit(feats, train, epochs=1, show_progress=False)
        fit_s.append(time.perf_counter() - t0)
    test = fs.QueryFeatures(categorical={"cluster": test_clusters}, bags={"history": history})
    t0 = time.perf_counter()
    ids = model.recommend(test, 10, exclude=history)[0]
    return {"examples_per_s": train.shape[0] / fit_s[-1], "fit_s": fit_s,
            "recall@10": recall(ids, targets), "recommend_s": time.perf_counter() - t0}  # fmt: skip


def run_wals(cfg: dict, train, clusters, history, targets, test_clusters) -> dict:
    import fastsoftmax as fs

    model = fs.WALS(DIM, iterations=cfg["wals_iterations"], num_threads=cfg["threads"])
    t0 = time.perf_counter()
    model.fit(train, show_progress=False)
    fit_s = time.perf_counter() - t0
    u = model.fold_in(history)
    ids = fs.topk(u, model.item_embeddings, 10, exclude=history, num_threads=cfg["threads"])[0]
    return {"examples_per_s": cfg["wals_iterations"] / fit_s, "fit_s": [fit_s],
            "recall@10": recall(ids, targets)}  # fmt: skip


def run_popularity(cfg: dict, train, clusters, history, targets, test_clusters) -> dict:
    """Reference: each held-out query gets its cluster's most frequent training items (the
    data's main signal, known here because the data is synthetic), history excluded."""
    onehot = sp.csr_matrix((np.ones(len(clusters), np.float32), (clusters, np.arange(len(clusters)))),
                           shape=(CLUSTERS, len(clusters)))  # fmt: skip
    counts = (onehot @ train).tocsr()
    ids = np.full((history.shape[0], 10), -1, np.int64)
    for i, c in enumerate(test_clusters):
        row = counts[c]
        seen = set(history.indices[history.indptr[i] : history.indptr[i + 1]].tolist())
        top = row.indices[np.argsort(-row.data, kind="stable")[: 10 + len(seen)]]
        best = [j for j in top if j not in seen][:10]
        ids[i, : len(best)] = best
    return {"recall@10": recall(ids, targets)}


def worker(cfg: dict) -> None:
    t0 = time.perf_counter()
    data = dataset(cfg["n_items"], cfg["n_queries"], cfg["per_query"])
    out = {"data_s": time.perf_counter() - t0, "data_gb": rss_gb("VmRSS"),
           "interactions": int(data[0].nnz)}  # fmt: skip
    with open("/proc/self/clear_refs", "w") as f:  # peak RSS := current RSS
        f.write("5")
    run = {"wals": run_wals, "popularity": run_popularity}.get(cfg["model"], run_softmax)
    out.update(run(cfg, *data))
    out["peak_gb"] = rss_gb("VmHWM")
    print("RESULT " + json.dumps(out), flush=True)


# -- driver -----------------------------------------------------------------------------------------


def run_worker(cfg: dict) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(cfg)],
                          capture_output=True, text=True)  # fmt: skip
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[len("RESULT ") :])
    raise RuntimeError(f"worker {cfg} failed:\n{proc.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--items", nargs="+", type=float, default=[1e6, 1e7, 5e7])
    ap.add_argument(
        "--queries",
        nargs="+",
        type=float,
        default=[1e6, 1e6, 1e7],
        help="training queries per scale (one per --items entry)",
    )
    ap.add_argument("--per-query", type=int, default=10)
    ap.add_argument("--models", nargs="+", default=["table", "qr", "hybrid", "wals", "popularity"],
                    choices=["table", "qr", "hybrid", "wals", "popularity"])  # fmt: skip
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--wals-iterations", type=int, default=2)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--memory-limit", type=float, default=20.0, help="GB a model may take")
    ap.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--json", default=None, help="output (default bench/results/scale.json)")
    args = ap.parse_args()
    if args.worker is not None:
        worker(json.loads(args.worker))
        return
    if len(args.queries) != len(args.items):
        ap.error("--queries: one entry per --items entry")

    results: list[dict[str, Any]] = []
    for n_items, n_queries in zip(args.items, args.queries, strict=True):
        for kind in args.models:
            cfg = {"n_items": int(n_items), "n_queries": int(n_queries),
                   "per_query": args.per_query, "model": kind, "epochs": args.epochs,
                   "wals_iterations": args.wals_iterations, "threads": args.threads}  # fmt: skip
            need = model_bytes(kind, cfg["n_items"]) / 2**30
            rec: dict[str, Any] = {**cfg, "model_gb_predicted": need}
            if need > args.memory_limit:
                rec["skipped"] = f"memory model {need:.1f} GB > --memory-limit {args.memory_limit}"
            else:
                rec.update(run_worker(cfg))
            results.append(rec)
            print(json.dumps(rec), flush=True)

    rows = []
    for r in results:
        base = next((x for x in results if x["n_items"] == r["n_items"]
                     and x["model"] == "table" and "peak_gb" in x), None)  # fmt: skip
        row = {"items": f"{r['n_items']:.0e}", "queries": f"{r['n_queries']:.0e}",
               "model": r["model"], "model GB (pred.)": f"{r['model_gb_predicted']:.2f}"}  # fmt: skip
        if "skipped" in r:
            row.update({"peak GB": "not run", "note": r["skipped"]})
        else:
            speed = "-"
            if "examples_per_s" in r:
                speed = f"{r['examples_per_s']:.3g}" + (" it/s" if r["model"] == "wals" else "")
            row.update({
                "data GB": f"{r['data_gb']:.2f}", "peak GB": f"{r['peak_gb']:.2f}",
                "examples/s": speed, "recall@10": f"{r['recall@10']:.4f}",
            })  # fmt: skip
            if base is not None and r["model"] in ("qr", "hybrid"):
                row["vs table"] = (f"RSS {r['peak_gb'] / base['peak_gb']:.2f}x, "
                                   f"speed {r['examples_per_s'] / base['examples_per_s']:.2f}x")  # fmt: skip
        rows.append(row)
    print_table(rows, ["items", "queries", "model", "model GB (pred.)", "data GB", "peak GB",
                       "examples/s", "recall@10", "vs table", "note"])  # fmt: skip
    per_item = {k: model_bytes(k, 10**9) / 1e9 for k in ("table", "qr", "hybrid", "wals")}
    print(
        "bytes per item at 1e9 items (memory model):", {k: round(v, 2) for k, v in per_item.items()}
    )
    write_json("scale", {"machine": machine_info(), "results": results,
                         "bytes_per_item_1e9": per_item}, args.json)  # fmt: skip


if __name__ == "__main__":
    main()
