"""fs.WALS vs implicit's AlternatingLeastSquares (CG and Cholesky, CPU), same run, same threads.

    OPENBLAS_NUM_THREADS=1 python bench/bench_wals.py [--threads 2] [--dim 64] [--json PATH]

Equivalent hyperparameters: implicit-feedback ALS of Hu, Koren and Volinsky, i.e. ours with
unobserved_weight w0 = 1, targets 1 and weights w = alpha * r; implicit with confidence alpha * r
(its `alpha`) and the same `regularization` (lambda), dim, cg_steps and initial scale.

(1) Time per iteration on a synthetic power-law matrix (default 200k x 50k, ~5M nnz): the median
    wall time between consecutive iteration callbacks (setup such as format conversion excluded;
    ours includes the exact objective it computes every iteration, implicit computes none).
(2) NDCG@10 and recall@10 on a held-out split of MovieLens ml-latest-small
    (fs.datasets.load_movielens; every rating is an interaction, r = 1;
    fs.datasets.train_test_split, 20% per user, seed 0), scored by fs.evaluate (training items
    excluded, definitions in fastsoftmax.metrics) for both models' factors.
    Mean over --seeds initialisations (the standard deviation is printed too).
"""

from __future__ import annotations

import os

# implicit's advice: one BLAS thread, parallelism from the solver's own threads. Set before numpy
# is imported so that OpenBLAS starts with one thread.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import statistics
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

import fastsoftmax as fs

from _common import print_table, write_json

DEFAULT_ML = Path(__file__).resolve().parents[2] / "shared/data/ml-latest-small"


def power_law_matrix(n_rows: int, n_cols: int, nnz: int, seed: int = 0) -> sp.csr_matrix:
    """Random counts whose row and column marginals follow power laws (ids shuffled)."""
    rng = np.random.default_rng(seed)

    def ids(n, exponent, size):
        w = 1.0 / np.arange(1, n + 1) ** exponent
        draws = fs.AliasSampler(w).sample(size, seed=int(rng.integers(2**63)))
        return rng.permutation(n)[draws]

    draw = int(nnz * 1.08)  # duplicates merge into counts
    rows = ids(n_rows, 0.5, draw)
    cols = ids(n_cols, 0.8, draw)
    m = sp.csr_matrix((np.ones(draw, np.float32), (rows, cols)), shape=(n_rows, n_cols))
    m.sum_duplicates()
    return m


def cpu_seconds() -> float:
    t = os.times()
    return t.user + t.system


def timed_iterations(fit) -> tuple[float, float, list[float]]:
    """Run fit(callback); return the median wall and CPU (all threads) seconds per iteration and
    the list of wall times. The first interval includes setup (format conversion, transposition,
    initialisation) and is dropped when there are more."""
    stamps: list[tuple[float, float]] = []

    def callback(*_args):
        stamps.append((time.perf_counter(), cpu_seconds()))

    t0 = (time.perf_counter(), cpu_seconds())
    fit(callback)
    wall = np.diff([t0[0]] + [s[0] for s in stamps]).tolist()
    cpu = np.diff([t0[1]] + [s[1] for s in stamps]).tolist()
    if len(wall) > 1:
        return statistics.median(wall[1:]), statistics.median(cpu[1:]), wall
    return wall[0], cpu[0], wall


def ours(args, solver, iterations, seed=0):
    return fs.WALS(
        args.dim,
        unobserved_weight=1.0,
        regularization=args.reg,
        iterations=iterations,
        solver=solver,
        cg_steps=args.cg_steps,
        num_threads=args.threads,
        seed=seed,
    )


def theirs(args, solver, iterations, seed=0):
    from implicit.cpu.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(
        factors=args.dim,
        regularization=args.reg,
        alpha=args.alpha,
        iterations=iterations,
        use_cg=solver == "cg",
        num_threads=args.threads,
        random_state=seed,
    )
    model.cg_steps = args.cg_steps  # an attribute, not a constructor argument, in implicit 0.7
    return model


def fit_ours(model, r, alpha, callback=None):
    ones = r.copy()
    ones.data[:] = 1.0
    model.fit(ones, r * np.float32(alpha), show_progress=False, callback=callback)
    return model.query_embeddings(), model.item_embeddings


def fit_theirs(model, r, callback=None):
    model.fit(r, show_progress=False, callback=callback)
    return np.asarray(model.user_factors), np.asarray(model.item_factors)


# -- (1) speed ------------------------------------------------------------------------------------


def speed(args) -> list[dict]:
    t0 = time.perf_counter()
    r = power_law_matrix(args.rows, args.cols, int(args.nnz))
    print(
        f"synthetic {r.shape[0]} x {r.shape[1]}, nnz {r.nnz:,} ({time.perf_counter() - t0:.1f} s)"
    )
    rows = []
    for solver in args.solvers:
        its = args.iterations if solver == "cg" else args.chol_iterations
        t_ours, cpu_ours, all_ours = timed_iterations(
            lambda cb, s=solver, i=its: fit_ours(ours(args, s, i), r, args.alpha, cb)
        )
        t_theirs, cpu_theirs, all_theirs = timed_iterations(
            lambda cb, s=solver, i=its: fit_theirs(theirs(args, s, i), r, cb)
        )
        rows.append(
            {
                "task": f"speed {solver}",
                "ours_s_per_iter": t_ours,
                "implicit_s_per_iter": t_theirs,
                "speedup": t_theirs / t_ours,
                "ours_cpu_s_per_iter": cpu_ours,
                "implicit_cpu_s_per_iter": cpu_theirs,
                "cpu_ratio": cpu_theirs / cpu_ours,
                "iterations": its,
            }
        )
        print(f"  {solver}: ours {all_ours}, implicit {all_theirs}")
    return rows


# -- (2) quality ----------------------------------------------------------------------------------


class _Factors:
    """fs.evaluate adapter for a pair of factor matrices (recommendation via fs.topk)."""

    def __init__(self, u, v, threads):
        self.u, self.v, self.threads = u, v, threads

    def recommend(self, queries, *, k, exclude=None):
        return fs.topk(self.u[queries], self.v, k, exclude=exclude, num_threads=self.threads)


def quality(args) -> list[dict]:
    m = fs.datasets.load_movielens(Path(args.movielens), min_rating=0.0).interactions
    m = m[:, np.asarray((m != 0).sum(axis=0)).ravel() > 0]  # drop movies nobody rated
    train, test = fs.datasets.train_test_split(m, test_fraction=0.2, seed=0)
    print(
        f"ml-latest-small: {m.shape[0]} users x {m.shape[1]} items, "
        f"train {train.nnz}, test {test.nnz}"
    )

    def scores(u, v):
        res = fs.evaluate(_Factors(u, v, args.threads), train, test, k=10)
        return res["ndcg"], res["recall"]

    rows = []
    for solver in args.solvers:
        res = {"ours": [], "implicit": []}
        for seed in range(args.seeds):
            t = time.perf_counter()
            u, v = fit_ours(ours(args, solver, args.ml_iterations, seed), train, args.alpha)
            res["ours"].append((*scores(u, v), time.perf_counter() - t))
            t = time.perf_counter()
            u, v = fit_theirs(theirs(args, solver, args.ml_iterations, seed), train)
            res["implicit"].append((*scores(u, v), time.perf_counter() - t))
        mean = {k: np.mean(np.array(v), axis=0) for k, v in res.items()}
        std = {k: np.std(np.array(v), axis=0) for k, v in res.items()}
        rows.append(
            {
                "task": f"ml-small {solver}",
                "ours_ndcg@10": mean["ours"][0],
                "implicit_ndcg@10": mean["implicit"][0],
                "ours_recall@10": mean["ours"][1],
                "implicit_recall@10": mean["implicit"][1],
                "ndcg_std_ours": std["ours"][0],
                "ndcg_std_implicit": std["implicit"][0],
                "ours_fit_s": mean["ours"][2],
                "implicit_fit_s": mean["implicit"][2],
                "seeds": args.seeds,
            }
        )
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--reg", type=float, default=0.05, help="lambda (implicit: regularization)")
    ap.add_argument("--alpha", type=float, default=10.0, help="observed weight w = alpha * r")
    ap.add_argument("--cg-steps", type=int, default=3)
    ap.add_argument("--rows", type=int, default=200_000)
    ap.add_argument("--cols", type=int, default=50_000)
    ap.add_argument("--nnz", type=float, default=5e6)
    ap.add_argument("--iterations", type=int, default=5, help="timed CG iterations")
    ap.add_argument("--chol-iterations", type=int, default=3, help="timed Cholesky iterations")
    ap.add_argument("--ml-iterations", type=int, default=15)
    ap.add_argument("--seeds", type=int, default=3, help="initialisations averaged on MovieLens")
    ap.add_argument("--solvers", nargs="+", default=["cg", "cholesky"], choices=["cg", "cholesky"])
    ap.add_argument("--movielens", default=str(DEFAULT_ML), help="ml-latest-small folder")
    ap.add_argument("--skip-speed", action="store_true")
    ap.add_argument("--skip-quality", action="store_true")
    ap.add_argument("--json", default=None, help="output path (default bench/results/wals.json)")
    args = ap.parse_args()

    import implicit

    rows = []
    if not args.skip_speed:
        rows += speed(args)
    if not args.skip_quality:
        rows += quality(args)
    print(
        f"\nfs.WALS vs implicit {implicit.__version__} ALS (threads={args.threads}, dim={args.dim}, "
        f"lambda={args.reg}, alpha={args.alpha}, cg_steps={args.cg_steps}, "
        f"OPENBLAS_NUM_THREADS={os.environ['OPENBLAS_NUM_THREADS']})\n"
    )
    speed_rows = [r for r in rows if r["task"].startswith("speed")]
    quality_rows = [r for r in rows if r["task"].startswith("ml-small")]
    if speed_rows:
        print_table(speed_rows, list(speed_rows[0]))
        print()
    if quality_rows:
        print_table(quality_rows, list(quality_rows[0]))
    write_json(
        "wals",
        {"implicit": implicit.__version__, "args": vars(args), "rows": rows},
        args.json,
    )


if __name__ == "__main__":
    main()
