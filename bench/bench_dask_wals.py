"""DaskWALS on a local Dask cluster vs single-machine fs.WALS, same data, same run.

    OPENBLAS_NUM_THREADS=1 python bench/bench_dask_wals.py [--workers 2] [--dim 64] [--json PATH]

Data: the synthetic power-law matrix of bench_wals.py (default 200k x 50k, ~5M nnz), implicit
feedback (targets 1, weights alpha * r, w0 = 1). Single machine: fs.WALS with all
workers x threads_per_worker threads. Dask: a LocalCluster of --workers processes with
--threads-per-worker threads each (DaskWALS uses the worker's thread count).

Reported per solver: the median wall time per iteration (first iteration, which includes setup,
dropped), the setup time (data to the cluster, column blocks, first iteration), the bytes moved
between workers per iteration (the sum over workers of distributed's
transfer_outgoing_bytes_total between two iteration callbacks, median), the factor rows every
block received per iteration (sum over blocks of DaskWALS.received_rows_, x dim x 4 bytes), what
broadcasting the whole fixed side to every block would move, and the largest difference of the
embeddings from fs.WALS (same seed).
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import statistics
import time

import numpy as np
from bench_wals import power_law_matrix

import fastsoftmax as fs

from _common import print_table, write_json


def iteration_times(fit) -> tuple[float, float, list[float]]:
    """Run fit(callback); return (median seconds per iteration after the first, the first
    interval (setup + first iteration), all intervals)."""
    stamps = [time.perf_counter()]
    fit(lambda *_: stamps.append(time.perf_counter()))
    wall = np.diff(stamps).tolist()
    return statistics.median(wall[1:]), wall[0], wall


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--threads-per-worker", type=int, default=1)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--reg", type=float, default=0.05)
    ap.add_argument("--alpha", type=float, default=10.0)
    ap.add_argument("--cg-steps", type=int, default=3)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--cols", type=int, default=50_000)
    ap.add_argument("--nnz", type=float, default=5e6)
    ap.add_argument("--iterations", type=int, default=4)
    ap.add_argument("--solvers", nargs="+", default=["cg", "cholesky"], choices=["cg", "cholesky"])
    ap.add_argument(
        "--json", default=None, help="output path (default bench/results/dask_wals.json)"
    )
    args = ap.parse_args()

    from distributed import Client, LocalCluster

    from fastsoftmax.distributed import DaskWALS

    r = power_law_matrix(args.rows, args.cols, int(args.nnz))
    ones = r.copy()
    ones.data[:] = 1.0
    weights = r * np.float32(args.alpha)
    n, m = r.shape
    print(f"matrix {n} x {m}, nnz {r.nnz}, dim {args.dim}, {args.workers} workers")
    threads = args.workers * args.threads_per_worker
    kw = dict(
        unobserved_weight=1.0,
        regularization=args.reg,
        iterations=args.iterations,
        cg_steps=args.cg_steps,
        seed=0,
    )

    rows = []
    with (
        LocalCluster(
            n_workers=args.workers,
            threads_per_worker=args.threads_per_worker,
            processes=True,
            dashboard_address=":0",  # a free port: other runs may hold 8787
        ) as cluster,
        Client(cluster) as client,
    ):

        def bytes_sent() -> int:
            def sent(dask_worker):
                return dask_worker.transfer_outgoing_bytes_total

            return sum(client.run(sent).values())

        for solver in args.solvers:
            local = fs.WALS(args.dim, solver=solver, num_threads=threads, **kw)
            t_local, first_local, _ = iteration_times(
                lambda cb, local=local: local.fit(ones, weights, show_progress=False, callback=cb)
            )
            dist = DaskWALS(client, args.dim, solver=solver, **kw)
            sent = [bytes_sent()]

            def fit(cb, dist=dist, sent=sent):
                def callback(*a):
                    cb(*a)
                    sent.append(bytes_sent())

                dist.fit(ones, weights, show_progress=False, callback=callback)

            t_dist, first_dist, _ = iteration_times(fit)
            per_iteration = statistics.median(np.diff(sent[1:]).tolist())
            received = sum(int(x.sum()) for x in dist.received_rows_.values())
            b, c = len(dist.row_bounds_) - 1, len(dist.col_bounds_) - 1
            diff = max(
                np.abs(dist.query_embeddings() - local.query_embeddings()).max(),
                np.abs(dist.item_embeddings - local.item_embeddings).max(),
            )
            rows.append(
                {
                    "solver": solver,
                    "s/it local": t_local,
                    "s/it dask": t_dist,
                    "x local": t_dist / t_local,
                    "setup+it1 local": first_local,
                    "setup+it1 dask": first_dist,
                    "MB/it moved": per_iteration / 1e6,
                    "B/nnz/it": per_iteration / r.nnz,
                    "MB/it received": received * args.dim * 4 / 1e6,
                    "MB/it broadcast": (b * m + c * n) * args.dim * 4 / 1e6,
                    "max |diff|": float(diff),
                    "rows/s local": (n + m) / t_local,
                    "nnz": int(r.nnz),
                    "blocks": f"{b}x{c}",
                }
            )
            print(f"{solver}: local {t_local:.2f} s/it, dask {t_dist:.2f} s/it", flush=True)

    columns = [
        "solver", "s/it local", "s/it dask", "x local", "setup+it1 local", "setup+it1 dask",
        "MB/it moved", "B/nnz/it", "MB/it received", "MB/it broadcast", "max |diff|",
    ]  # fmt: skip
    print_table(rows, columns)
    write_json(
        "dask_wals",
        {"args": vars(args), "shape": [n, m], "nnz": int(r.nnz), "rows": rows},
        args.json,
    )


if __name__ == "__main__":
    main()
