"""Our kernels in two builds of fastsoftmax, alternated in the same run: a portable build's
level (e.g. the avx2 build of a normal install) against a ``-DFASTSOFTMAX_NATIVE=ON`` build, or
the same level of two commits (before / after a change).

    python bench/bench_levels.py --a "$VENV/bin/python" --a-cpu avx2 \\
        --b "$NATIVE_VENV/bin/python" --repeats 5

Each repeat runs every workload once per build, in separate processes, alternating; the fastest
time of each build is kept and the ratio a / b printed (> 1: build a is slower). Workloads: a
sampled-softmax epoch (1e5 items, 256 shared uniform negatives, d 64, batch 256, 40 batches), a
full-softmax epoch (2e4 items, 20 batches), exact top-k (2e5 x 64 items, 1024 queries, k 10) and
three WALS sweeps (CG, 50k x 20k, 1M non-zeros, d 64). Writes JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from _common import print_table, write_json

WORKER = r"""
import json, time, numpy as np, scipy.sparse as sp, fastsoftmax as fs
rng = np.random.default_rng(0)

def best(fn, n=2):
    times = []
    for _ in range(n):
        t0 = time.perf_counter(); fn(); times.append(time.perf_counter() - t0)
    return min(times)

def softmax_epoch(n_items, loss, batches):
    rows = 256 * batches
    bag = sp.csr_matrix((np.ones(rows * 50, np.float32), rng.integers(0, n_items, rows * 50),
                         np.arange(0, rows * 50 + 1, 50)), shape=(rows, n_items))
    bag.sum_duplicates()
    t = sp.csr_matrix((np.ones(rows, np.float32), rng.integers(0, n_items, rows),
                       np.arange(rows + 1)), shape=(rows, n_items))
    feats = fs.QueryFeatures(dense=rng.normal(size=(rows, 16)), bags={"h": bag})
    m = fs.SoftmaxModel(n_items, hidden=(256, 128), dim=64, embedding_dim=64, loss=loss,
                        num_negatives=256, epochs=1, batch_size=256)
    m.fit(feats, t, show_progress=False)  # build + warm up
    more = getattr(m, "partial_fit", m.fit)  # builds before the estimator contract: fit continued
    return best(lambda: more(feats, t, show_progress=False))

out = {"level": fs._core.kernel_level}
out["sampled epoch"] = softmax_epoch(100_000, "sampled", 40)
out["full epoch"] = softmax_epoch(20_000, "full", 20)
q = rng.normal(size=(1024, 64)).astype(np.float32)
v = rng.normal(size=(200_000, 64)).astype(np.float32)
out["topk"] = best(lambda: fs.topk(q, v, 10), 3)
a = sp.csr_matrix((np.ones(1_000_000, np.float32), rng.integers(0, 20_000, 1_000_000),
                   np.arange(0, 1_000_001, 20)), shape=(50_000, 20_000))
a.sum_duplicates()
a.data[:] = 1
out["wals 3 sweeps"] = best(lambda: fs.WALS(64, iterations=3).fit(a, show_progress=False))
print(json.dumps(out))
"""


def run(python: str, cpu: str | None) -> dict:
    env = dict(os.environ)
    env.pop("FASTSOFTMAX_CPU", None)
    if cpu:
        env["FASTSOFTMAX_CPU"] = cpu
    res = subprocess.run([python, "-c", WORKER], capture_output=True, text=True, env=env,
                         check=True)  # fmt: skip
    return json.loads(res.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--a", default=sys.executable, help="python of build a")
    ap.add_argument("--a-cpu", default=None, help="FASTSOFTMAX_CPU for build a")
    ap.add_argument("--b", required=True, help="python of build b")
    ap.add_argument("--b-cpu", default=None, help="FASTSOFTMAX_CPU for build b")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()
    runs: dict[str, list[dict]] = {"a": [], "b": []}
    for r in range(args.repeats):
        runs["a"].append(run(args.a, args.a_cpu))
        runs["b"].append(run(args.b, args.b_cpu))
        print(f"repeat {r + 1}/{args.repeats} done", flush=True)
    la, lb = runs["a"][0]["level"], runs["b"][0]["level"]
    rows = []
    for key in runs["a"][0]:
        if key == "level":
            continue
        ta = min(x[key] for x in runs["a"])
        tb = min(x[key] for x in runs["b"])
        rows.append({"workload": key, f"a {la} (s)": f"{ta:.4f}", f"b {lb} (s)": f"{tb:.4f}",
                     "a / b": f"{ta / tb:.3f}"})  # fmt: skip
    print_table(rows, list(rows[0]))
    write_json("levels", {"args": vars(args), "runs": runs, "rows": rows}, args.json)


if __name__ == "__main__":
    main()
