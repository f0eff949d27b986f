"""Recommendation quality on MovieLens ml-latest-small: baselines (and softmax DNNs) under the weak
and the strong generalisation protocols, hyperparameters tuned on validation data only.

    OPENBLAS_NUM_THREADS=1 python bench/bench_quality.py [--models popularity ease implicit wals]
        [--seeds 0 1 2] [--threads 2] [--data PATH] [--json PATH]

Data: fs.datasets.load_movielens(--data) without min_rating, so every rating is an interaction
whose value is the rating (as ``fastsoftmax train`` loads it); the 18 movies nobody rated are
dropped. 610 users x 9724 movies, 100,836 interactions.

Protocols (the same splits for every model; one run per seed in --seeds):

weak
    ``train, test = train_test_split(X, 0.2, seed=s)``: 20% of every user's items are held out.
    Models train on ``train`` and recommend to every user with test items, excluding the user's
    training items. Tuning: ``fit_part, val = train_test_split(train, 0.2, seed=s + 1000)``, fit on
    ``fit_part``, score recall@10 on ``val`` (excluding ``fit_part``); the best configuration is
    refitted on the whole ``train`` and scored on ``test``.
strong (Liang et al. 2018, "Variational autoencoders for collaborative filtering")
    ``cold_start_split(X, 0.1, seed=s)`` holds out 10% of the users as test users, and
    ``cold_start_split(rest, 0.1, seed=s + 1000)`` 10% of the remaining ones as validation users.
    Models train on the other users' full rows. Every held-out user's items are split 80/20
    (``train_test_split(rows, 0.2, seed=s)``): the 80% are the history the model sees (folded in
    for WALS / implicit ALS, multiplied by B for EASE), the 20% are to be predicted; history items
    are excluded. Configurations are chosen on the validation users, reported on the test users
    (the model is refitted with the chosen configuration on the same training users, so that its
    fit time is measured like the weak protocol's).

Metrics (fs.metrics, averaged over the users with at least one held-out item): recall@10,
recall@20, ndcg@10, ndcg@100. Recall is fastsoftmax's: hits / |held-out items| (not Liang et
al.'s hits / min(k, |held-out items|), which the JSON records too as ``recall_liang@k``).
"fit s" is the wall time of the final fit (2 threads by default; EASE's dense algebra runs on one
BLAS thread, OPENBLAS_NUM_THREADS=1, as implicit recommends). Tables show the mean over seeds
+- the sample standard deviation; the JSON has every per-seed number, the chosen
hyperparameters, every validation score and the grids.

Models: popularity (fs.Popularity); EASE (Steck 2019, closed form); implicit's
AlternatingLeastSquares; fs.WALS; softmax DNNs (fs.SoftmaxModel, see ``softmax_configs``).
A model's input is ``binary`` (every interaction 1) or ``rating`` (the rating as the value:
EASE's X; implicit's confidence alpha * r; fs.WALS's weight r on target 1): a hyperparameter of
EASE, fixed for the others (see ``model_specs``). Every fit uses --threads threads; hyperparameter
grids, ``model_specs``; iterations 15 for both ALS implementations (CG solvers, their defaults).
"""

from __future__ import annotations

import os

# implicit's advice: one BLAS thread, parallelism from the solvers' own threads. Set before numpy
# is imported so that OpenBLAS starts with one thread.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")

import argparse
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

import fastsoftmax as fs

from _common import print_table, write_json

DEFAULT_DATA = Path(__file__).resolve().parents[1] / ".." / "shared/data/ml-latest-small"
METRICS = {"recall@10": ("recall", 10), "recall@20": ("recall", 20),
           "ndcg@10": ("ndcg", 10), "ndcg@100": ("ndcg", 100)}  # fmt: skip
K_MAX = 100
ITERATIONS = 15


# -- data and protocols ---------------------------------------------------------------------------


@dataclass
class Queries:
    """Users to recommend to: their input items (also excluded from the lists) and the items to
    predict; ``rows`` are their rows of the training matrix when they were trained on (weak
    protocol), None for users the model has never seen (strong protocol: fold-in)."""

    history: sp.csr_matrix
    targets: sp.csr_matrix
    rows: np.ndarray | None = None


@dataclass
class Stage:
    """One training matrix and the users it is scored on."""

    train: sp.csr_matrix
    queries: Queries


def load(path: Path) -> sp.csr_matrix:
    """The rating matrix (users x rated movies, values = ratings)."""
    x = fs.datasets.load_movielens(path).interactions
    return sp.csr_matrix(x[:, np.flatnonzero(x.getnnz(axis=0))])  # drop movies nobody rated


def _with_targets(history: sp.csr_matrix, targets: sp.csr_matrix, rows: np.ndarray | None):
    """Queries restricted to the users with at least one item to predict."""
    keep = np.flatnonzero(targets.getnnz(axis=1))
    return Queries(history[keep], targets[keep], None if rows is None else rows[keep])


def weak_protocol(x: sp.csr_matrix, seed: int) -> tuple[Stage, Stage]:
    """(tuning stage, final stage): held-out items of users the model trains on."""
    split = fs.datasets.train_test_split
    train, test = split(x, test_fraction=0.2, seed=seed)
    fit_part, val = split(train, test_fraction=0.2, seed=seed + 1000)
    users = np.arange(x.shape[0])
    return (
        Stage(fit_part, _with_targets(fit_part, val, users)),
        Stage(train, _with_targets(train, test, users)),
    )


def strong_protocol(x: sp.csr_matrix, seed: int) -> tuple[Stage, Stage]:
    """(tuning stage, final stage): held-out users, each with an 80% history and 20% to predict."""
    rest, test_users = fs.datasets.cold_start_split(x, test_fraction=0.1, seed=seed)
    fit_idx, val_idx = fs.datasets.cold_start_split(x[rest], test_fraction=0.1, seed=seed + 1000)
    train = x[rest[fit_idx]]

    def held_out(users: np.ndarray) -> Queries:
        history, targets = fs.datasets.train_test_split(x[users], test_fraction=0.2, seed=seed)
        return _with_targets(history, targets, None)

    return Stage(train, held_out(rest[val_idx])), Stage(train, held_out(test_users))


PROTOCOLS = {"weak": weak_protocol, "strong": strong_protocol}


def as_input(m: sp.csr_matrix, kind: str) -> sp.csr_matrix:
    """The interactions as a model's input: ``binary`` (values 1) or ``rating`` (unchanged)."""
    if kind == "rating":
        return m
    out = m.copy()
    out.data[:] = 1.0
    return out


# -- models ---------------------------------------------------------------------------------------
# Each model is a Spec: a grid of hyperparameter dicts, fit(train, params, seed, threads)
# -> (state, params), and recommend(state, queries, k) -> ids (B, k).


@dataclass
class Spec:
    grid: list[dict[str, Any]]
    fit: Callable[..., tuple[Any, dict[str, Any]]]
    recommend: Callable[[Any, Queries, int], np.ndarray]


def grid(**values: list) -> list[dict[str, Any]]:
    """Every combination of the given values, as dicts."""
    return [dict(zip(values, combo, strict=True)) for combo in itertools.product(*values.values())]


def fit_popularity(train, params, seed, threads):
    return fs.Popularity(num_threads=threads).fit(train), params


def recommend_popularity(model, queries, k):
    return model.recommend(np.arange(queries.history.shape[0]), k, exclude=queries.history)[0]


@dataclass
class Ease:
    """EASE's item-item matrix B in factored form: for an item j outside the query's history x,
    (x B)_j = (x X^T) . item_factors[j]."""

    x: sp.csr_matrix  # the training input X (n_users x n_items)
    item_factors: np.ndarray  # float32 (n_items, n_users)
    input: str
    threads: int


def fit_ease(train, params, seed, threads):
    """EASE (Steck 2019): B = I - P / diag(P) column-wise, P = (X^T X + lam I)^-1, diag(B) = 0.

    Computed exactly through the Woodbury identity P = (I - X^T M) / lam with
    M = (X X^T + lam I)^-1 X: ml-latest-small has 16x fewer users than items, so this is one
    n_users x n_users solve (under a second) instead of a dense 9.7k x 9.7k inverse (60-80 s
    here), and B is never formed. For j outside the history of a query x,
    (x B)_j = -(x P)_j / P_jj = (x X^T M)_j / d_j with d_j = lam P_jj = 1 - sum_u X_uj M_uj > 0;
    history items are excluded from the lists anyway. Checked against the dense inverse on this
    data: the same top-100 lists up to float32 near-ties (99.98% of the ids, same NDCG@100).
    """
    x = as_input(train, params["input"])
    # X and M are dense n_users x n_items (float64, ~40 MB each here): like EASE's scores for the
    # evaluated users (610 x 9.7k), inherent to EASE and fine at this size; the other models
    # never form a dense users x items matrix.
    dense = x.toarray().astype(np.float64)
    gram = dense @ dense.T + params["lambda"] * np.eye(x.shape[0])
    m = np.linalg.solve(gram, dense)
    d = 1.0 - np.einsum("uj,uj->j", dense, m)
    return Ease(x, np.ascontiguousarray((m / d).T, np.float32), params["input"], threads), params


def recommend_ease(model, queries, k):
    qx = (as_input(queries.history, model.input) @ model.x.T).toarray().astype(np.float32)
    ids, _ = fs.topk(qx, model.item_factors, k, exclude=queries.history,
                     num_threads=model.threads)  # fmt: skip
    return ids


def fit_implicit(train, params, seed, threads):
    from implicit.cpu.als import AlternatingLeastSquares

    model = AlternatingLeastSquares(
        factors=params["factors"],
        regularization=params["regularization"],
        alpha=params["alpha"],  # confidence alpha * value (implicit scales its input by alpha)
        iterations=ITERATIONS,
        num_threads=threads,
        random_state=seed,
    )
    model.fit(as_input(train, params["input"]), show_progress=False)
    return (model, params["input"]), params


def recommend_implicit(state, queries, k):
    model, kind = state
    history = as_input(queries.history, kind)
    fold_in = queries.rows is None
    users = np.arange(history.shape[0]) if fold_in else queries.rows
    ids, _ = model.recommend(users, history, N=k, filter_already_liked_items=True,
                             recalculate_user=fold_in)  # fmt: skip
    return ids


def fit_wals(train, params, seed, threads):
    """Targets 1 on the observed entries, weights 1 (binary) or the rating."""
    model = fs.WALS(
        params["dim"],
        unobserved_weight=params["unobserved_weight"],
        regularization=params["regularization"],
        iterations=ITERATIONS,
        num_threads=threads,
        seed=seed,
    )
    model.fit(as_input(train, "binary"), as_input(train, params["input"]), show_progress=False)
    return (model, params["input"]), params


def recommend_wals(state, queries, k):
    model, kind = state
    if queries.rows is not None:
        return model.recommend(queries.rows, k, exclude=queries.history)[0]
    history = queries.history
    u = model.fold_in(as_input(history, "binary"), as_input(history, kind))
    ids, _ = fs.topk(u, model.item_embeddings, k, exclude=history, num_threads=model.num_threads)
    return ids


# -- softmax DNNs ---------------------------------------------------------------------------------
# fs.SoftmaxModel with the history bag trained the denoising way. Each (name, kwargs) of
# softmax_configs is one row of the tables, fitted with fs.SoftmaxModel's defaults (its recipe:
# nothing is tuned, a user who changes nothing gets these numbers) plus the row's kwargs and
# --softmax's options.

SOFTMAX_OPTIONS: dict[str, Any] = {}  # from --softmax


def softmax_configs() -> list[tuple[str, dict[str, Any]]]:
    """The softmax models to compare: (row name, fs.SoftmaxModel keyword arguments)."""
    sampled = [("softmax in-batch", {"loss": "sampled", "sampler": "in_batch"})]
    for m in (256, 1024):
        for sampler in ("uniform", "popularity", "score"):
            kw = {"loss": "sampled", "sampler": sampler, "num_negatives": m}
            sampled.append((f"softmax {sampler} m={m}", kw))
    return [("softmax (defaults)", {}), *sampled]


def _history_features(history: sp.csr_matrix) -> Any:
    return fs.QueryFeatures(bags={"history": history})


def fit_softmax(train, params, seed, threads):
    """The training users' rows are both the history bag and the targets."""
    model = fs.SoftmaxModel(train.shape[1], history="history", num_threads=threads, seed=seed,
                            **{**SOFTMAX_OPTIONS, **params})  # fmt: skip
    model.fit(_history_features(train), train, show_progress=False)
    return model, params


def recommend_softmax(model, queries, k):
    return model.recommend(_history_features(queries.history), k, exclude=queries.history)[0]


def model_specs() -> dict[str, Spec]:
    """Every model by name, with its hyperparameter grid.

    The grids were set from pilot runs' validation scores (seed 0, both protocols; no test
    numbers): the optima of implicit's and fs.WALS's first grids lay at their edges (strongest
    regularisation, smallest alpha / largest w0), hence the ranges. Binary and rating inputs
    tied within noise there once the regularisation was tuned, so the MF models keep one each
    (implicit: rating, i.e. confidence alpha * r; fs.WALS: binary) to stay within the time
    budget; EASE, cheap to fit, tunes it.
    """
    ease = grid(**{"lambda": [10, 30, 100, 300, 1000, 3000, 10000]}, input=["binary", "rating"])
    als = grid(
        factors=[64, 128],
        regularization=[0.1, 1.0, 10.0, 30.0, 100.0],
        alpha=[0.25, 1.0, 5.0],
        input=["rating"],
    )
    wals = grid(
        dim=[64, 128],
        unobserved_weight=[0.01, 0.03, 0.1, 0.3, 1.0],
        regularization=[0.3, 1.0, 3.0, 10.0],
        input=["binary"],
    )
    specs = {
        "popularity": Spec([{}], fit_popularity, recommend_popularity),
        "ease": Spec(ease, fit_ease, recommend_ease),
        "implicit": Spec(als, fit_implicit, recommend_implicit),
        "wals": Spec(wals, fit_wals, recommend_wals),
    }
    for name, kwargs in softmax_configs():
        specs[name] = Spec([kwargs], fit_softmax, recommend_softmax)
    # The defaults' neighbourhood, tuned like the baselines (validation recall@10).
    tuned = grid(history_dropout=[0.75, 0.9], history_target=["all", "dropped"],
                 learning_rate=[0.05, 0.1])  # fmt: skip
    specs["softmax tuned"] = Spec(tuned, fit_softmax, recommend_softmax)
    return specs


# -- running --------------------------------------------------------------------------------------


def scores(ids: np.ndarray, targets: sp.csr_matrix) -> dict[str, float]:
    """The table's metrics, plus Liang et al.'s recall (hits / min(k, R)) at 10 and 20."""
    out = {}
    for name, (metric, k) in METRICS.items():
        fn = fs.metrics.recall_at_k if metric == "recall" else fs.metrics.ndcg_at_k
        out[name] = fn(ids, targets, k)
    n_rel = targets.getnnz(axis=1)
    for k in (10, 20):
        hits = fs.metrics.recall_at_k(ids, targets, k, per_query=True) * n_rel
        out[f"recall_liang@{k}"] = float(np.mean(hits / np.minimum(k, n_rel)))
    return out


def tune(spec: Spec, stage: Stage, seed: int, threads: int) -> tuple[dict, list[dict]]:
    """The configuration with the best validation recall@10, and every configuration's score
    (nothing to tune with a single configuration)."""
    if len(spec.grid) == 1:
        return spec.grid[0], []
    results = []
    for params in spec.grid:
        model, fitted = spec.fit(stage.train, params, seed, threads)
        ids = spec.recommend(model, stage.queries, 10)
        recall = fs.metrics.recall_at_k(ids, stage.queries.targets, 10)
        results.append({"params": fitted, "recall@10": recall})
    best = max(results, key=lambda r: r["recall@10"])
    return best["params"], results


def run_model(spec: Spec, tuning: Stage, final: Stage, seed: int, threads: int) -> dict:
    params, validation = tune(spec, tuning, seed, threads)
    t0 = time.perf_counter()
    model, _ = spec.fit(final.train, params, seed, threads)
    fit_s = time.perf_counter() - t0
    ids = spec.recommend(model, final.queries, K_MAX)
    return {"seed": seed, "params": params, "fit_s": fit_s, **scores(ids, final.queries.targets),
            "n_test_users": final.queries.targets.shape[0], "validation": validation}  # fmt: skip


def summary_rows(records: dict[str, list[dict]]) -> list[dict]:
    """One table row per model: mean +- sample standard deviation over seeds."""
    rows = []
    for name, recs in records.items():
        row: dict[str, Any] = {"model": name}
        for metric in METRICS:
            v = np.array([r[metric] for r in recs])
            spread = v.std(ddof=1) if len(v) > 1 else 0.0
            row[metric] = f"{v.mean():.4f} +- {spread:.4f}"
        row["fit s"] = f"{np.mean([r['fit_s'] for r in recs]):.2f}"
        rows.append(row)
    return rows


def main() -> None:
    specs = model_specs()
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA), help="ml-latest-small folder")
    ap.add_argument("--models", nargs="+", default=list(specs), choices=list(specs))
    ap.add_argument("--protocols", nargs="+", default=list(PROTOCOLS), choices=list(PROTOCOLS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--softmax", type=json.loads, default={}, metavar="JSON",
                    help="fs.SoftmaxModel options for every softmax row, over its defaults")  # fmt: skip
    ap.add_argument("--json", default=None, help="output path (default bench/results/quality.json)")
    args = ap.parse_args()
    SOFTMAX_OPTIONS.update(args.softmax)

    t_start = time.perf_counter()
    x = load(Path(args.data))
    print(f"ml-latest-small: {x.shape[0]} users x {x.shape[1]} items, {x.nnz} interactions")
    records = {p: {m: [] for m in args.models} for p in args.protocols}
    for seed in args.seeds:
        for protocol in args.protocols:
            tuning, final = PROTOCOLS[protocol](x, seed)
            for name in args.models:
                t0 = time.perf_counter()
                rec = run_model(specs[name], tuning, final, seed, args.threads)
                records[protocol][name].append(rec)
                print(f"seed {seed} {protocol:6} {name:10} recall@10 {rec['recall@10']:.4f} "
                      f"params {rec['params']} ({time.perf_counter() - t0:.0f} s)")  # fmt: skip
    runtime = time.perf_counter() - t_start

    for protocol in args.protocols:
        print(f"\n{protocol} generalisation (mean +- std over seeds {args.seeds})\n")
        print_table(summary_rows(records[protocol]), ["model", *METRICS, "fit s"])
        for name, recs in records[protocol].items():
            if recs and recs[0]["params"]:
                print(f"  {name} chosen: " + "; ".join(str(r["params"]) for r in recs))
    print(f"\ntotal runtime {runtime:.0f} s")
    write_json(
        "quality",
        {
            "args": vars(args),
            "iterations": ITERATIONS,
            "grids": {m: specs[m].grid for m in args.models},
            "runtime_s": runtime,
            "results": records,
        },
        args.json,
    )


if __name__ == "__main__":
    main()
