"""The real-data commands of the CLI: ``train``, ``recommend`` and ``evaluate``.

A model file written by ``fastsoftmax train`` is an ordinary model file (``fs.load`` reads it)
with a few extra arrays prefixed ``cli_``: the original user and item ids, the training
interactions (so that ``recommend`` excludes seen items and the softmax model can rebuild a
user's history features) and the user features.
"""

from __future__ import annotations

import argparse
import csv
import itertools
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from . import datasets, io
from .evaluation import evaluate as evaluate_model
from .softmax import QueryFeatures, SoftmaxModel
from .wals import WALS


class _UserError(ValueError):
    pass


def _load_data(args: argparse.Namespace) -> datasets.Dataset:
    path = Path(args.data)
    if not path.exists():
        raise _UserError(f"--data: no such file or folder: {path}")
    # By suffix: a Parquet file, or a folder named like one (as Spark writes data sets).
    parquet = path.suffix.lower() in datasets.PARQUET_SUFFIXES
    if path.is_dir() and not parquet:
        return datasets.load_movielens(path, min_rating=args.min_rating)
    if args.min_rating is not None and args.weight_col is None:
        raise _UserError("--min-rating: needs --weight-col (the column holding the ratings)")
    read = _read_parquet if parquet else _read_csv
    ds = read(path, args.user_col, args.item_col, args.weight_col)
    if args.min_rating is not None:
        m = ds.interactions.copy()
        m.data = (m.data >= args.min_rating).astype(np.float32)
        m.eliminate_zeros()
        if m.nnz == 0:
            raise _UserError(
                f"--min-rating: no rating is >= {args.min_rating}; nothing to train on"
            )
        ds = ds.replace(interactions=sp.csr_matrix(m))
    return ds


def _read_parquet(path: Path, user_col: str, item_col: str,
                  weight_col: str | None) -> datasets.Dataset:  # fmt: skip
    """--data FILE.parquet / .pq (or a folder of them): datasets.load_parquet, batch by batch.
    Ids keep the file's types (integer columns int64, string columns str)."""
    try:
        return datasets.load_parquet(path, user_col, item_col, weight_col)
    except ImportError:
        raise _UserError(
            "--data: reading Parquet needs pyarrow: pip install 'fastsoftmax[data]'"
        ) from None


def _read_csv(path: Path, user_col: str, item_col: str, weight_col: str | None) -> datasets.Dataset:
    """--data FILE: read with pandas and built by datasets.from_dataframe; without pandas, by
    the NumPy reader datasets.load_csv. Both give the same Dataset: header names stripped, ids
    that are all integers as int64 (sorted as numbers), any others as the strings written."""
    try:
        import pandas as pd
    except ImportError:
        return datasets.load_csv(path, user_col, item_col, weight_col)
    header = [str(h).strip() for h in pd.read_csv(path, nrows=0).columns]
    flags = {"--user-col": user_col, "--item-col": item_col, "--weight-col": weight_col}
    for flag, col in flags.items():
        if col is not None and col not in header:
            raise _UserError(f"{flag}: no column {col!r} in {path.name}; it has {header}")
    wanted = [c for c in flags.values() if c is not None]
    df = pd.read_csv(path, header=0, names=header, usecols=wanted,
                     dtype={user_col: str, item_col: str})  # fmt: skip
    if df.empty:
        raise _UserError(f"--data: {path} has a header but no interactions")
    for col in (user_col, item_col):
        try:
            numbers = pd.to_numeric(df[col])
        except (ValueError, TypeError):
            continue
        if numbers.dtype.kind in "iu":
            df[col] = numbers
    return datasets.from_dataframe(df, user_col, item_col, weight_col).replace(name=str(path))


def _features(ds_features: Any, history: sp.csr_matrix, rows: np.ndarray | None = None,
              dense: np.ndarray | None = None, categorical: dict | None = None) -> QueryFeatures:  # fmt: skip
    """Softmax query features: the user's training history as a bag, plus any user features."""
    if ds_features is not None:
        dense = ds_features.dense
        categorical = ds_features.categorical
    if rows is not None:
        dense = None if dense is None else dense[rows]
        categorical = {k: v[rows] for k, v in (categorical or {}).items()}
    return QueryFeatures(dense=dense, categorical=categorical or None,
                         bags={"history": sp.csr_matrix(history)})  # fmt: skip


# Defaults of `fastsoftmax train` where they differ from the estimators' own: WALS with its best
# hyperparameters on MovieLens ml-latest-small (bench/bench_quality.py tunes them on validation
# data: binary targets, dim 128, w0 0.03, lambda 3); the softmax DNN uses SoftmaxModel's
# defaults, which are its recipe, with the user's training items as its history feature.
WALS_DEFAULTS: dict[str, Any] = {"dim": 128, "unobserved_weight": 0.03, "regularization": 3.0,
                                 "iterations": 15}  # fmt: skip
# --tune: the grids searched on a validation split carved from the training part (the softmax
# DNN's epochs by early stopping on the same split).
WALS_GRID: dict[str, list[Any]] = {"dim": [64, 128], "unobserved_weight": [0.01, 0.03, 0.1, 0.3],
                                   "regularization": [0.3, 1.0, 3.0, 10.0]}  # fmt: skip
SOFTMAX_GRID: dict[str, list[Any]] = {"history_dropout": [0.5, 0.75, 0.9],
                                      "learning_rate": [0.05, 0.1]}  # fmt: skip
TUNE_PATIENCE = 20
_SOFTMAX_FLAGS = ("dim", "hidden", "embedding_dim", "loss", "sampler", "num_negatives",
                  "batch_size", "learning_rate", "epochs", "history_dropout", "history_target",
                  "row_weighting", "item_embedding", "item_buckets", "item_dedicated")  # fmt: skip


def _format_scores(scores: dict[str, float]) -> str:
    """``recall 0.1628, ..., k 10, n_queries 610``: metrics to 4 decimals, counts as integers."""
    return ", ".join(f"{k} {v}" if float(v).is_integer() and k in ("k", "n_queries")
                     else f"{k} {v:.4f}" for k, v in scores.items())  # fmt: skip


def _binary(m: sp.csr_matrix) -> sp.csr_matrix:
    out = sp.csr_matrix(m, dtype=np.float32, copy=True)
    out.data[:] = 1.0
    return out


def _wals(args: argparse.Namespace, **params: Any) -> WALS:
    opts = {k: getattr(args, k) for k in WALS_DEFAULTS if getattr(args, k) is not None}
    opts = {**WALS_DEFAULTS, **opts, **params}
    return WALS(opts.pop("dim"), num_threads=args.threads, seed=args.seed, **opts)


def _softmax(args: argparse.Namespace, n_items: int, **params: Any) -> SoftmaxModel:
    opts = {k: getattr(args, k) for k in _SOFTMAX_FLAGS if getattr(args, k) is not None}
    if getattr(args, "history_buckets", None) is not None:
        opts["hash_buckets"] = {"history": args.history_buckets}
    opts.update(params)
    return SoftmaxModel(n_items, history="history", num_threads=args.threads, seed=args.seed,
                        **opts)  # fmt: skip


def _carve(train_m: sp.csr_matrix, seed: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """A validation split from the training part: 10% of every user's training items."""
    return datasets.train_test_split(train_m, test_fraction=0.1, seed=seed + 1)


def _early_stopped(args: argparse.Namespace, ds: datasets.Dataset, part: sp.csr_matrix,
                   val: sp.csr_matrix, params: dict[str, Any], patience: int,
                   show: bool) -> tuple[float, int]:  # fmt: skip
    """(best validation recall@10, its epoch count) of a softmax model fitted on part."""
    model = _softmax(args, ds.n_items, **params)
    feats = _features(ds.features, part)
    model.fit(feats, part, validation=(feats, val), early_stopping=patience, show_progress=show)
    return max(log["recall@10"] for log in model.training_log), model.best_epoch + 1


def _fit(args: argparse.Namespace, ds: datasets.Dataset, train_m: sp.csr_matrix,
         params: dict[str, Any], *, show: bool) -> Any:  # fmt: skip
    """A model of args.model with these parameters, fitted on train_m. With --early-stopping,
    the softmax epochs are chosen on a split carved from train_m, then the model is refitted on
    all of train_m for that many epochs."""
    if args.model == "wals":
        return _wals(args, **params).fit(_binary(train_m), show_progress=show)
    if args.early_stopping is not None and "epochs" not in params:
        recall, epochs = _early_stopped(args, ds, *_carve(train_m, args.seed), params,
                                        args.early_stopping, show)  # fmt: skip
        print(f"early stopping: {epochs} epochs (validation recall@10 {recall:.4f})")
        params = {**params, "epochs": epochs}
    model = _softmax(args, ds.n_items, **params)
    return model.fit(_features(ds.features, train_m), train_m, show_progress=show)


def _tune(args: argparse.Namespace, ds: datasets.Dataset, train_m: sp.csr_matrix) -> dict:
    """The grid point with the best recall@10 on a validation split carved from train_m (for the
    softmax DNN each point's epochs are chosen by early stopping there)."""
    grid = WALS_GRID if args.model == "wals" else SOFTMAX_GRID
    part, val = _carve(train_m, args.seed)
    best, best_params = -1.0, {}
    for values in itertools.product(*grid.values()):
        params = dict(zip(grid, values, strict=True))
        if args.model == "wals":
            model = _wals(args, **params).fit(_binary(part), show_progress=False)
            recall = evaluate_model(model, part, val, k=10)["recall"]
        else:
            patience = args.early_stopping or TUNE_PATIENCE
            recall, epochs = _early_stopped(args, ds, part, val, params, patience, False)
            params["epochs"] = epochs
        print(f"tune: {params} validation recall@10 {recall:.4f}")
        if recall > best:
            best, best_params = recall, params
    print(f"tune: chose {best_params}")
    return best_params


def train(args: argparse.Namespace) -> int:
    """``fastsoftmax train``: fit WALS or the softmax DNN, report held-out metrics, save."""
    ds = _load_data(args)
    if not 0 < args.test_fraction < 1:
        raise _UserError(f"--test-fraction: expected a number in (0, 1), got {args.test_fraction}")
    print(f"data: {ds}")
    if args.no_eval:
        train_m, test_m = ds.interactions, None
    else:
        train_m, test_m = datasets.train_test_split(ds.interactions,
                                                    test_fraction=args.test_fraction,
                                                    seed=args.seed)  # fmt: skip
    show = not args.no_progress
    t0 = time.perf_counter()
    params = _tune(args, ds, train_m) if args.tune else {}
    model = _fit(args, ds, train_m, params, show=show)
    print(f"trained {args.model} in {time.perf_counter() - t0:.1f} s")
    if test_m is not None:
        feats = _features(ds.features, train_m) if args.model == "softmax" else None
        scores = evaluate_model(model, train_m, test_m, k=10, queries=feats)
        print("held-out: " + _format_scores(scores))
    _save(args.out, model, ds, train_m)
    print(f"saved {args.out}")
    return 0


def _save(path: str, model: Any, ds: datasets.Dataset, train_m: sp.csr_matrix) -> None:
    arrays = dict(model._to_arrays())
    t = sp.csr_matrix(train_m)
    arrays.update(
        cli_user_ids=np.asarray(ds.query_ids).astype(str),
        cli_item_ids=np.asarray(ds.item_ids).astype(str),
        cli_train_indptr=t.indptr.astype(np.int64),
        cli_train_indices=t.indices.astype(np.int64),
        cli_train_data=t.data.astype(np.float32),
    )
    if ds.item_names is not None:
        arrays["cli_item_names"] = np.asarray(ds.item_names).astype(str)
    if ds.features is not None:
        if ds.features.dense is not None:
            arrays["cli_dense"] = ds.features.dense
        for k, v in ds.features.categorical.items():
            arrays[f"cli_cat_{k}"] = v
    io.save_arrays(path, type(model).__name__, arrays)


class _Bundle:
    def __init__(self, path: str) -> None:
        p = Path(path)
        if not p.is_file():
            raise _UserError(f"--model: no such file: {p}")
        self.model = io.load(p)
        with np.load(p, allow_pickle=False) as f:
            if "cli_user_ids" not in f.files:
                raise _UserError(f"--model: {p} was not written by 'fastsoftmax train' "
                                 "(it has no user/item id maps)")  # fmt: skip
            self.user_ids = f["cli_user_ids"]
            self.item_ids = f["cli_item_ids"]
            n_items = len(self.item_ids)
            self.train = sp.csr_matrix((f["cli_train_data"], f["cli_train_indices"],
                                        f["cli_train_indptr"]),
                                       shape=(len(self.user_ids), n_items))  # fmt: skip
            self.item_names = f["cli_item_names"] if "cli_item_names" in f.files else None
            self.dense = f["cli_dense"] if "cli_dense" in f.files else None
            self.categorical = {k[len("cli_cat_"):]: f[k] for k in f.files
                                if k.startswith("cli_cat_")}  # fmt: skip
        self.user_row = {u: i for i, u in enumerate(self.user_ids)}
        self.item_col = {u: i for i, u in enumerate(self.item_ids)}

    def queries(self, rows: np.ndarray, history: sp.csr_matrix) -> Any:
        if isinstance(self.model, SoftmaxModel):
            return _features(None, history, rows, self.dense, self.categorical)
        return rows


def recommend(args: argparse.Namespace) -> int:
    """``fastsoftmax recommend``: top-k items for users given by their original ids (--user),
    or for every training user, written to a Parquet file (--all --out)."""
    if getattr(args, "all", False):
        return _recommend_all(args)
    if getattr(args, "out", None) is not None:
        raise _UserError("--out: only with --all (--user prints its recommendations)")
    b = _Bundle(args.model)
    missing = [u for u in args.user if u not in b.user_row]
    if missing:
        raise _UserError(f"--user: unknown user id(s) {', '.join(missing)} "
                         f"(the model knows {len(b.user_ids):,} users)")  # fmt: skip
    rows = np.array([b.user_row[u] for u in args.user], dtype=np.int64)
    seen = b.train[rows]
    k = min(args.k, len(b.item_ids))
    ids, scores = b.model.recommend(b.queries(rows, seen), k=k, exclude=seen)
    records = [
        {"user": u, "rank": rank, "item": str(b.item_ids[j]), "score": round(float(s), 6),
         **({"title": str(b.item_names[j])} if b.item_names is not None else {})}
        for u, r_ids, r_scores in zip(args.user, ids, scores, strict=True)
        for rank, (j, s) in enumerate(zip(r_ids, r_scores, strict=True), 1)
        if j >= 0
    ]  # fmt: skip
    _print_records(records, getattr(args, "format", "table"))
    return 0


def _recommend_all(args: argparse.Namespace) -> int:
    """``recommend --all --out FILE``: every training user's top-k, original user and item ids
    (as the model file holds them: strings), the user's training items excluded."""
    if args.out is None:
        raise _UserError("--all: needs --out FILE.parquet (where to write every user's top-k)")
    try:
        import pyarrow.parquet  # noqa: F401
    except ImportError:
        raise _UserError(
            "--all: writing Parquet needs pyarrow: pip install 'fastsoftmax[data]'"
        ) from None
    b = _Bundle(args.model)
    k = min(args.k, len(b.item_ids))
    labels = {"query_labels": b.user_ids, "item_labels": b.item_ids}
    if getattr(args, "index", "exact") == "ivf":  # approximate search (large catalogues)
        labels["index"] = b.model.build_index("ivf")
    if isinstance(b.model, SoftmaxModel):  # every user's features, the training items as history
        feats = _features(None, b.train, None, b.dense, b.categorical)
        rows = b.model.recommend_all(feats, k, out=args.out, exclude=b.train, **labels)
    else:
        rows = b.model.recommend_all(k, out=args.out, exclude=b.train, **labels)
    print(f"wrote {rows:,} recommendations for {len(b.user_ids):,} users to {args.out}")
    return 0


def _print_records(records: list[dict[str, Any]], fmt: str) -> None:
    """Recommendations as aligned columns per user, JSON records or CSV with a header."""
    if fmt == "json":
        print(json.dumps(records, indent=1, ensure_ascii=False))
        return
    columns = ["user", "rank", "item", "score"] + (["title"] if records and "title" in records[0]
                                                   else [])  # fmt: skip
    if fmt == "csv":
        writer = csv.DictWriter(sys.stdout, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(records)
        return
    width = max((len(r["item"]) for r in records), default=4)
    user = None
    for r in records:
        if r["user"] != user:
            user = r["user"]
            print(f"user {user}:")
            print(
                f"{'rank':>4}  {'item':<{width}}  {'score':>8}"
                + ("  title" if "title" in r else "")
            )
        title = f"  {r['title']}" if "title" in r else ""
        print(f"{r['rank']:>4}  {r['item']:<{width}}  {r['score']:>8.4f}{title}")


def evaluate(args: argparse.Namespace) -> int:
    """``fastsoftmax evaluate``: metrics of a saved model on the interactions in ``--data``.

    Users and items are matched by original id (unknown ones are dropped). The relevant items
    of a user are their interactions in ``--data`` that were not in the model's training data,
    and training items are excluded from the recommendations, so evaluating on the same data
    that ``train`` split reproduces its held-out evaluation.
    """
    b = _Bundle(args.model)
    ds = _load_data(args)
    coo = ds.interactions.tocoo()
    # The model's row / column of each distinct id (-1: unknown), then of every interaction: a
    # dictionary look-up per user and item, not per interaction.
    user_map = np.array([b.user_row.get(u, -1) for u in np.asarray(ds.query_ids).astype(str)],
                        dtype=np.int64)  # fmt: skip
    item_map = np.array([b.item_col.get(i, -1) for i in np.asarray(ds.item_ids).astype(str)],
                        dtype=np.int64)  # fmt: skip
    r, c = user_map[coo.row], item_map[coo.col]
    known = (r >= 0) & (c >= 0)
    if not known.any():
        raise _UserError("--data: no interaction matches the model's users and items")
    rel = sp.csr_matrix((np.ones(known.sum(), dtype=np.float32), (r[known], c[known])),
                        shape=b.train.shape)  # fmt: skip
    rel.sum_duplicates()
    rel = rel - rel.multiply(b.train > 0)
    rel.eliminate_zeros()
    rows = np.flatnonzero(np.diff(rel.indptr) > 0)
    if len(rows) == 0:
        raise _UserError("--data: every matching interaction was in the training data")
    k = min(args.k, len(b.item_ids))
    seen = b.train[rows]
    scores = evaluate_model(b.model, seen, sp.csr_matrix(rel[rows]), k=k,
                            queries=b.queries(rows, seen))  # fmt: skip
    print(f"{len(rows):,} users, {rel.nnz:,} held-out interactions "
          f"({(~known).sum():,} of {len(known):,} unknown to the model)")  # fmt: skip
    print(_format_scores(scores))
    return 0
