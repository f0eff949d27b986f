"""Draws per second of fs.AliasSampler.sample vs numpy's Generator.choice(p=...) and integers.

    python bench/bench_sampler.py [--sizes 1e5 1e6 1e7] [--draws 1e7] [--json PATH]

Same run, same machine: for each n and thread count, prints draws/s and the ratios
ours / choice(p) and ours / integers (uniform draws, the speed ceiling of any sampler).
"""

from __future__ import annotations

import argparse

import numpy as np

import fastsoftmax as fs

from _common import best_time, print_table, write_json


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--sizes", type=float, nargs="+", default=[1e5, 1e6, 1e7])
    ap.add_argument("--draws", type=float, default=1e7)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", default=None, help="output path (default bench/results/sampler.json)")
    args = ap.parse_args()

    draws = int(args.draws)
    rows = []
    for n in map(int, args.sizes):
        rng = np.random.default_rng(0)
        w = (1.0 / np.arange(1, n + 1) ** 0.8)[rng.permutation(n)]  # power law, shuffled
        p = w / w.sum()
        sampler = fs.AliasSampler(w)
        t_build = best_time(lambda w=w: fs.AliasSampler(w), repeat=args.repeat)
        gen = np.random.default_rng(1)
        t_choice = best_time(
            lambda p=p, n=n, gen=gen: gen.choice(n, size=draws, p=p), repeat=args.repeat
        )
        t_int = best_time(lambda n=n, gen=gen: gen.integers(0, n, size=draws), repeat=args.repeat)
        for t in args.threads:
            t_ours = best_time(
                lambda s=sampler, t=t: s.sample(draws, seed=0, num_threads=t), repeat=args.repeat
            )
            rows.append(
                {
                    "n": n,
                    "threads": t,
                    "ours_Mdraws_s": draws / t_ours / 1e6,
                    "choice_Mdraws_s": draws / t_choice / 1e6,
                    "integers_Mdraws_s": draws / t_int / 1e6,
                    "x_choice": t_choice / t_ours,
                    "x_integers": t_int / t_ours,
                    "build_ms": t_build * 1e3,
                }
            )
    print(f"AliasSampler.sample vs numpy (draws={draws:,}; numpy is single-threaded)\n")
    print_table(rows, list(rows[0]))
    write_json("sampler", {"draws": draws, "rows": rows}, args.json)


if __name__ == "__main__":
    main()
