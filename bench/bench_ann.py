"""Approximate maximum-inner-product search: fs.build_index (IVF) vs exact fs.topk, faiss
IndexIVFFlat and faiss IndexHNSWFlat, on 1e6 items of dimension 64.

    python bench/bench_ann.py [--items 1e6] [--dim 64] [--k 10] [--batch 1024] [--single 200]
                              [--data clustered wals] [--no-hnsw] [--json PATH]

Two item sets (same run, same queries for every method):

* ``clustered``: 20,000 Gaussian clusters (centres N(0, I), spread 0.5); queries drawn likewise.
* ``wals``: the item embeddings of fs.WALS (dim 64, 3 iterations) trained on a synthetic
  power-law corpus (200k users, 2,000 topics of skewed sizes, item popularity ~ rank^-0.8; each
  user draws from two topics and from the global popularity); queries are user embeddings.

For every knob value (n_probe for IVF, efSearch for HNSW): recall@10 against exact search,
single-query latency (median of --single calls of one query each) and batch throughput (one
call with --batch queries; queries/s). Ours and faiss are measured alternately, best of 3 each.
"At recall >= target" (0.95 and 0.98) picks, per method, the first (cheapest) knob value of the
sweep that reaches it; the speed-ups compare our fastest setting there (the default n_lists =
4 sqrt(n), or --more-lists) with each method. Build time and
index memory are reported too. faiss uses its default OpenMP threads, ours num_threads=0: both
all cores.
"""

from __future__ import annotations

import argparse
import math
import time
from collections.abc import Callable

import numpy as np
import scipy.sparse as sp

import fastsoftmax as fs

from _common import print_table, write_json

TARGETS = (0.95, 0.98)


def clustered(n: int, d: int, n_queries: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centers = rng.standard_normal((20_000, d), dtype=np.float32)

    def draw(m: int) -> np.ndarray:
        noise = rng.standard_normal((m, d), dtype=np.float32)
        return np.ascontiguousarray(centers[rng.integers(0, len(centers), m)] + 0.5 * noise)

    return draw(n), draw(n_queries)


def power_law_corpus(n_items: int, n_users: int, seed: int = 0) -> sp.csr_matrix:
    """Users x items interactions: each user takes 8 items from each of two topics (by item
    popularity within the topic) and 4 from the global popularity."""
    rng = np.random.default_rng(seed)
    n_topics = 2000
    topic = np.minimum((rng.pareto(1.0, n_items) * 50).astype(np.int64), n_topics - 1)
    topic = rng.permutation(n_topics)[topic]
    order = np.argsort(topic, kind="stable")
    starts = np.searchsorted(topic[order], np.arange(n_topics + 1))
    pop = rng.permutation(1.0 / np.arange(1, n_items + 1) ** 0.8)
    cum = np.concatenate([[0.0], np.cumsum(pop[order])])  # cumulative weight in topic order
    sizes = np.diff(starts).astype(float)
    topics = rng.choice(n_topics, size=(n_users, 2), p=sizes / sizes.sum())
    t = np.repeat(topics.ravel(), 8)
    lo, hi = cum[starts[t]], cum[starts[t + 1]]
    pos = np.searchsorted(cum, lo + rng.random(len(t)) * (hi - lo), side="right") - 1
    in_topic = order[np.clip(pos, starts[t], starts[t + 1] - 1)]
    global_cdf = np.cumsum(pop) / pop.sum()
    popular = np.minimum(np.searchsorted(global_cdf, rng.random(n_users * 4)), n_items - 1)
    rows = np.concatenate([np.repeat(np.arange(n_users), 16), np.repeat(np.arange(n_users), 4)])
    a = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, np.concatenate([in_topic, popular]))),
                      shape=(n_users, n_items))  # fmt: skip
    a.data[:] = 1.0  # duplicates summed: back to 1
    return a


def wals_embeddings(n: int, d: int, n_queries: int) -> tuple[np.ndarray, np.ndarray]:
    a = power_law_corpus(n, max(200_000, n_queries))
    model = fs.WALS(d, iterations=3, seed=0).fit(a, show_progress=False)
    return np.ascontiguousarray(model.item_embeddings), model.query_embeddings()[:n_queries]


def recall(ids: np.ndarray, exact: np.ndarray) -> float:
    hits = [len(np.intersect1d(a, b)) for a, b in zip(ids, exact, strict=True)]
    return float(np.sum(hits) / exact.size)


def median_latency(search: Callable[[np.ndarray], object], queries: np.ndarray) -> float:
    search(queries[:1])
    times = []
    for i in range(len(queries)):
        t0 = time.perf_counter()
        search(queries[i : i + 1])
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def batch_time(search: Callable[[np.ndarray], object], queries: np.ndarray) -> float:
    t0 = time.perf_counter()
    search(queries)
    return time.perf_counter() - t0


def measure(methods: dict[str, Callable[[np.ndarray], np.ndarray]], batch: np.ndarray,
            single: np.ndarray) -> dict[str, tuple[float, float]]:  # fmt: skip
    """(single-query latency s, batch time s) per method, alternating, best of 3."""
    best = {name: [math.inf, math.inf] for name in methods}
    for _ in range(3):
        for name, search in methods.items():
            best[name][0] = min(best[name][0], median_latency(search, single))
            best[name][1] = min(best[name][1], batch_time(search, batch))
    return {name: (v[0], v[1]) for name, v in best.items()}


def faiss_bytes(faiss, index) -> int:
    return int(faiss.serialize_index(index).nbytes)


def run_dataset(name: str, x: np.ndarray, q: np.ndarray, args: argparse.Namespace,
                faiss) -> dict:  # fmt: skip
    k = args.k
    batch, single = q[: args.batch], q[args.batch : args.batch + args.single]
    exact_batch = fs.topk(batch, x, k)[0]
    exact_single = fs.topk(single, x, k)[0]
    rows: list[dict] = []
    t_exact = measure({"exact": lambda qq: fs.topk(qq, x, k)[0]}, batch, single)["exact"]
    rows.append({"data": name, "method": "fs.topk exact", "knob": "-", "recall": 1.0,
                 "single_ms": 1e3 * t_exact[0], "batch_qps": len(batch) / t_exact[1]})  # fmt: skip

    t0 = time.perf_counter()
    index = fs.build_index(x)
    build_ours = time.perf_counter() - t0
    ours_bytes = index.n_items * index.dim * 4 + index.n_lists * index.dim * 4 + index.n_items * 16
    builds = [{"data": name, "method": "fs IVF", "n_lists": index.n_lists,
               "build_s": build_ours, "memory_MB": ours_bytes / 2**20}]  # fmt: skip
    fi = None
    if faiss is not None:
        t0 = time.perf_counter()
        fi = faiss.IndexIVFFlat(faiss.IndexFlatIP(x.shape[1]), x.shape[1], index.n_lists,
                                faiss.METRIC_INNER_PRODUCT)  # fmt: skip
        fi.train(x)
        fi.add(x)
        builds.append({"data": name, "method": "faiss IVF-Flat", "n_lists": index.n_lists,
                       "build_s": time.perf_counter() - t0,
                       "memory_MB": faiss_bytes(faiss, fi) / 2**20})  # fmt: skip
    for n_probe in args.n_probe:
        if n_probe > index.n_lists:
            continue
        methods = {"fs IVF": lambda qq, p=n_probe: index.search(qq, k, n_probe=p)[0]}
        if fi is not None:

            def faiss_ivf(qq: np.ndarray, p: int = n_probe) -> np.ndarray:
                fi.nprobe = p
                return fi.search(qq, k)[1]

            methods["faiss IVF-Flat"] = faiss_ivf
        times = measure(methods, batch, single)
        for method, search in methods.items():
            r = 0.5 * (recall(search(batch), exact_batch) + recall(search(single), exact_single))
            rows.append({"data": name, "method": method, "knob": f"n_probe={n_probe}",
                         "recall": r, "single_ms": 1e3 * times[method][0],
                         "batch_qps": len(batch) / times[method][1]})  # fmt: skip
        print(f"  {name} n_probe={n_probe} done", flush=True)
    for n_lists in args.more_lists:  # ours with other list counts (the knob beyond n_probe)
        t0 = time.perf_counter()
        other = fs.build_index(x, n_lists=n_lists)
        method = f"fs IVF {n_lists} lists"
        builds.append({"data": name, "method": method, "n_lists": n_lists,
                       "build_s": time.perf_counter() - t0, "memory_MB": ours_bytes / 2**20})  # fmt: skip
        for n_probe in args.n_probe:

            def search(qq: np.ndarray, p: int = n_probe, ix=other) -> np.ndarray:
                return ix.search(qq, k, n_probe=p)[0]

            t = measure({method: search}, batch, single)[method]
            r = 0.5 * (recall(search(batch), exact_batch) + recall(search(single), exact_single))
            rows.append({"data": name, "method": method, "knob": f"n_probe={n_probe}",
                         "recall": r, "single_ms": 1e3 * t[0], "batch_qps": len(batch) / t[1]})  # fmt: skip
        print(f"  {name} {method} done", flush=True)
    if faiss is not None and args.hnsw:
        t0 = time.perf_counter()
        hnsw = faiss.IndexHNSWFlat(x.shape[1], 32, faiss.METRIC_INNER_PRODUCT)
        hnsw.hnsw.efConstruction = 80
        hnsw.add(x)
        builds.append({"data": name, "method": "faiss HNSW32", "n_lists": "-",
                       "build_s": time.perf_counter() - t0,
                       "memory_MB": faiss_bytes(faiss, hnsw) / 2**20})  # fmt: skip
        for ef in args.ef_search:

            def faiss_hnsw(qq: np.ndarray, ef: int = ef) -> np.ndarray:
                hnsw.hnsw.efSearch = ef
                return hnsw.search(qq, k)[1]

            t = measure({"hnsw": faiss_hnsw}, batch, single)["hnsw"]
            r = 0.5 * (recall(faiss_hnsw(batch), exact_batch)
                       + recall(faiss_hnsw(single), exact_single))  # fmt: skip
            rows.append({"data": name, "method": "faiss HNSW32", "knob": f"efSearch={ef}",
                         "recall": r, "single_ms": 1e3 * t[0],
                         "batch_qps": len(batch) / t[1]})  # fmt: skip
    return {"rows": rows, "builds": builds, "summary": summarise(name, rows)}


def summarise(name: str, rows: list[dict]) -> list[dict]:
    """Per recall target and method, the first knob of the sweep (the cheapest) that reaches the
    target, and the ratios of ours to it and to exact search."""
    exact = next(r for r in rows if r["method"] == "fs.topk exact")
    out = []
    for target in TARGETS:
        at_target: dict[str, dict] = {}
        for r in rows:
            if r["method"] != "fs.topk exact" and r["recall"] >= target:
                at_target.setdefault(r["method"], r)
        mine = [r for m, r in at_target.items() if m.startswith("fs IVF")]
        ours = min(mine, key=lambda r: r["single_ms"]) if mine else None  # our best setting
        for method, r in at_target.items():
            out.append({
                "data": name, "target": target, "method": method, "knob": r["knob"],
                "recall": r["recall"], "single_ms": r["single_ms"], "batch_qps": r["batch_qps"],
                "single_vs_exact": exact["single_ms"] / r["single_ms"],
                "batch_vs_exact": r["batch_qps"] / exact["batch_qps"],
                "ours_single_speedup": r["single_ms"] / ours["single_ms"] if ours else None,
                "ours_batch_speedup": ours["batch_qps"] / r["batch_qps"] if ours else None,
            })  # fmt: skip
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--items", type=float, default=1e6)
    parser.add_argument("--dim", type=int, default=64)
    parser.add_argument("--k", type=int, default=10)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--single", type=int, default=200)
    parser.add_argument("--data", nargs="+", default=["clustered", "wals"],
                        choices=["clustered", "wals"])  # fmt: skip
    parser.add_argument("--n-probe", type=int, nargs="+", default=[4, 8, 16, 24, 32, 48, 64])
    parser.add_argument("--ef-search", type=int, nargs="+", default=[16, 32, 64, 128])
    parser.add_argument("--more-lists", type=int, nargs="*", default=[8000],
                        help="also measure fs IVF with these n_lists (default: 8000 = 8 sqrt(n))")  # fmt: skip
    parser.add_argument("--no-hnsw", dest="hnsw", action="store_false")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    try:
        import faiss
    except ImportError:
        faiss = None
        print("faiss not installed: ours and exact only (pip install faiss-cpu)")
    n = int(args.items)
    results = {}
    for name in args.data:
        maker = clustered if name == "clustered" else wals_embeddings
        x, q = maker(n, args.dim, args.batch + args.single)
        print(f"{name}: {x.shape[0]:,} items x {x.shape[1]}", flush=True)
        results[name] = run_dataset(name, x, q, args, faiss)
    rows = [r for res in results.values() for r in res["rows"]]
    print()
    print_table(rows, ["data", "method", "knob", "recall", "single_ms", "batch_qps"])
    print()
    print_table([b for res in results.values() for b in res["builds"]],
                ["data", "method", "n_lists", "build_s", "memory_MB"])  # fmt: skip
    print(f"\nat recall@{args.k} >= target (the cheapest knob of each method that reaches it); "
          "ours_*_speedup > 1: our fastest setting at the target is faster")  # fmt: skip
    summary = [s for res in results.values() for s in res["summary"]]
    print_table(summary, ["data", "target", "method", "knob", "recall", "single_ms", "batch_qps",
                          "single_vs_exact", "batch_vs_exact", "ours_single_speedup",
                          "ours_batch_speedup"])  # fmt: skip
    write_json("ann", {"config": vars(args), "results": results}, args.json)


if __name__ == "__main__":
    main()
