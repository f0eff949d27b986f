"""Recommendation quality against item-table compression on MovieLens ml-latest-small: the
default softmax model with its item table stored whole, as quotient-remainder factors ("qr")
and as the frequency hybrid ("hybrid"), at 2x, 4x and 16x fewer item parameters.

    python bench/bench_compression.py [--seeds 0 1 2] [--threads 2] [--data PATH] [--json PATH]

Protocol: bench_quality.py's weak generalisation (per-user random 80/20 split of every user's
items, seed s; the training users' items are the history feature and the targets; the training
items are excluded from the lists), the same split for every row. The softmax model is
bench_quality's default (fs.SoftmaxModel defaults, history = the user's items); only
``item_embedding`` / ``item_buckets`` / ``item_dedicated`` change. No tuning: every row uses the
same hyperparameters, so differences are the tables'.

Compression = n_items / (rows of item parameters), each row ``dim`` floats (and its optimiser
state): the table has n_items rows; qr with b buckets ceil(n / b) + b; hybrid with K dedicated
items K + ceil(n / b) + b, b = ceil(sqrt(n)). For a target ratio c, qr takes the smallest b
reaching c and hybrid the K with K + ceil(n / b) + b = n / c. The item bias and the per-item
4-byte index of the hybrid are not counted.
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
from bench_quality import DEFAULT_DATA, fit_softmax, load, recommend_softmax, scores, weak_protocol

from _common import print_table, write_json

RATIOS = (2, 4, 16)


def qr_buckets(n: int, ratio: float) -> int:
    """The smallest b whose QR table has at most n / ratio rows."""
    for b in range(1, n + 1):
        if math.ceil(n / b) + b <= n / ratio:
            return b
    raise ValueError(f"a QR table of {n} items cannot be {ratio}x smaller")


def configs(n: int) -> list[tuple[str, dict[str, Any], int]]:
    """(row name, fs.SoftmaxModel options, rows of item parameters)."""
    out: list[tuple[str, dict[str, Any], int]] = [("table", {}, n)]
    b_hybrid = math.isqrt(n - 1) + 1
    qr_rows = math.ceil(n / b_hybrid) + b_hybrid
    for ratio in RATIOS:
        b = qr_buckets(n, ratio)
        out.append((f"qr {ratio}x", {"item_embedding": "qr", "item_buckets": b},
                    math.ceil(n / b) + b))  # fmt: skip
        k = int(n / ratio) - qr_rows
        out.append((f"hybrid {ratio}x", {"item_embedding": "hybrid", "item_dedicated": k},
                    k + qr_rows))  # fmt: skip
    out.append(("qr (defaults)", {"item_embedding": "qr"}, qr_rows))
    out.append(("hybrid (defaults)", {"item_embedding": "hybrid"}, n // 10 + qr_rows))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="ml-latest-small folder")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", default=None, help="output (default bench/results/compression.json)")
    args = ap.parse_args()

    x = load(Path(args.data))
    n = x.shape[1]
    rows = configs(n)
    records: dict[str, list[dict]] = {name: [] for name, _, _ in rows}
    for seed in args.seeds:
        _, final = weak_protocol(x, seed)
        for name, options, _ in rows:
            t0 = time.perf_counter()
            model, _ = fit_softmax(final.train, options, seed, args.threads)
            fit_s = time.perf_counter() - t0
            rec = {"seed": seed, "fit_s": fit_s,
                   **scores(recommend_softmax(model, final.queries, 100), final.queries.targets)}  # fmt: skip
            records[name].append(rec)
            print(f"seed {seed} {name:18} recall@10 {rec['recall@10']:.4f} ({fit_s:.1f} s)")

    table_recall = np.mean([r["recall@10"] for r in records["table"]])
    summary = []
    for name, _options, n_rows in rows:
        recall = np.array([r["recall@10"] for r in records[name]])
        spread = recall.std(ddof=1) if len(recall) > 1 else 0.0
        summary.append({
            "table": name, "item rows": n_rows, "compression": f"{n / n_rows:.1f}x",
            "recall@10": f"{recall.mean():.4f} +- {spread:.4f}",
            "vs table": f"{recall.mean() / table_recall:.3f}",
            "ndcg@10": f"{np.mean([r['ndcg@10'] for r in records[name]]):.4f}",
            "fit s": f"{np.mean([r['fit_s'] for r in records[name]]):.2f}",
        })  # fmt: skip
    print_table(summary, list(summary[0]))
    write_json("compression", {"n_items": n, "configs": [[c, o, r] for c, o, r in rows],
                               "records": records, "summary": summary}, args.json)  # fmt: skip


if __name__ == "__main__":
    main()
