"""Exact top-k retrieval: fs.topk vs faiss.IndexFlatIP and numpy (matmul + argpartition).

    python bench/bench_topk.py [--sizes 1e5 1e6] [--dim 64] [--k 10] [--batch 1024]
                               [--single 50] [--threads 0] [--json PATH]

Same run, same data (standard normal float32 embeddings): for every n, batch throughput
(queries/s for one batch of --batch queries) and single-query latency (median over --single
queries, one call each). Ratios > 1 mean fs.topk is faster. numpy processes the batch in blocks
of 128 queries (a full B x n score matrix would need B * n * 4 bytes).
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
from types import ModuleType

import numpy as np

import fastsoftmax as fs

from _common import best_time, print_table, write_json


def numpy_topk(q: np.ndarray, x: np.ndarray, k: int, block: int = 128) -> np.ndarray:
    out = np.empty((len(q), k), dtype=np.int64)
    for b0 in range(0, len(q), block):
        s = q[b0 : b0 + block] @ x.T
        part = np.argpartition(-s, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(s, part, 1), axis=1, kind="stable")
        out[b0 : b0 + block] = np.take_along_axis(part, order, 1)
    return out


def median_latency(fn: Callable[[np.ndarray], object], queries: np.ndarray) -> float:
    fn(queries[:1])
    times = []
    for i in range(len(queries)):
        t0 = time.perf_counter()
        fn(queries[i : i + 1])
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run_size(n: int, args: argparse.Namespace, faiss: ModuleType | None, threads: int) -> dict:
    """One table row: batch throughput and single-query latency for n items."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((n, args.dim), dtype=np.float32)
    q = rng.standard_normal((args.batch, args.dim), dtype=np.float32)
    single = rng.standard_normal((args.single, args.dim), dtype=np.float32)
    k = args.k

    def ours(qq: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return fs.topk(qq, x, k, num_threads=args.threads)

    ids, _ = ours(q)
    row: dict = {"n": n, "d": args.dim, "k": k, "B": args.batch, "threads": threads}
    t_ours = best_time(lambda: ours(q), repeat=args.repeat)
    row["ours_qps"] = args.batch / t_ours
    if faiss is not None:
        index = faiss.IndexFlatIP(args.dim)
        index.add(x)
        _, ids_f = index.search(q, k)
        row["agree_faiss"] = float((ids_f == ids).mean())
        t_f = best_time(lambda: index.search(q, k), repeat=args.repeat)
        row["faiss_qps"] = args.batch / t_f
        row["x_faiss_batch"] = t_f / t_ours
    if not args.no_numpy:
        t_np = best_time(lambda: numpy_topk(q, x, k), repeat=max(1, args.repeat - 1))
        row["numpy_qps"] = args.batch / t_np
        row["x_numpy_batch"] = t_np / t_ours
    lat_ours = median_latency(ours, single)
    row["ours_ms_1q"] = lat_ours * 1e3
    if faiss is not None:
        lat_f = median_latency(lambda qq: index.search(qq, k), single)
        row["faiss_ms_1q"] = lat_f * 1e3
        row["x_faiss_1q"] = lat_f / lat_ours
    if not args.no_numpy:
        lat_np = median_latency(lambda qq: numpy_topk(qq, x, k), single)
        row["numpy_ms_1q"] = lat_np * 1e3
        row["x_numpy_1q"] = lat_np / lat_ours
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e5, 1e6])
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--single", type=int, default=50, help="queries timed one by one")
    ap.add_argument("--threads", type=int, default=0, help="0 = all cores (all libraries)")
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--no-numpy", action="store_true", help="skip the numpy baseline")
    ap.add_argument("--json", default=None, help="output path (default bench/results/topk.json)")
    args = ap.parse_args()

    try:
        import faiss
    except ImportError:  # pragma: no cover - depends on the machine
        faiss = None
        print("faiss is not installed: pip install faiss-cpu  (comparing with numpy only)\n")
    threads = args.threads or os.cpu_count()
    if faiss is not None:
        faiss.omp_set_num_threads(threads)

    rows = []
    for n in map(int, args.sizes):
        rows.append(run_size(n, args, faiss, threads))
        print(f"n={n:,} done", flush=True)

    print(
        f"\nfs.topk vs faiss.IndexFlatIP / numpy (d={args.dim}, k={args.k}; batch of "
        f"{args.batch}: queries/s; single query: median ms; x_* = speed-up of fs.topk)\n"
    )
    print_table(rows, list(dict.fromkeys(c for r in rows for c in r)))
    write_json("topk", {"args": vars(args), "rows": rows}, args.json)


if __name__ == "__main__":
    main()
