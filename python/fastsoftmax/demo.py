"""`fastsoftmax demo`: measure the matrix-factorisation vs softmax-DNN comparison on one corpus.

The demo builds a synthetic corpus with known categories (:func:`fastsoftmax.datasets.make_categories`),
trains every model on the same split, and measures each comparison point — quality on held-out
interactions, folding, cold start, training time, serving latency, size — instead of asserting it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from . import datasets, figures, metrics
from .baselines import Popularity
from .retrieval import topk
from .softmax import QueryFeatures, SoftmaxModel
from .wals import WALS

__all__ = ["DemoConfig", "run_demo"]

K = 10


@dataclass
class DemoConfig:
    """Sizes and hyperparameters of a demo run.

    Parameters
    ----------
    n_queries, n_items, n_categories : int
        Corpus size (see :func:`fastsoftmax.datasets.make_categories`).
    dim : int
        Embedding dimension of every model.
    wals_iterations : int
        WALS sweeps.
    epochs : int
        Softmax training epochs.
    w0_grid : tuple of float
        Unobserved weights tried when tuning WALS on a validation split.
    num_negatives : int
        Negatives per batch for the sampled softmax models.
    cold_fraction : float
        Share of queries held out entirely for the cold-start evaluation.
    cold_revealed : int
        Interactions revealed per cold-start query (fold-in input / history features).
    seed, num_threads : int
        Seed of everything; threads (0 = all cores).
    """

    n_queries: int = 50_000
    n_items: int = 10_000
    n_categories: int = 8
    dim: int = 32
    wals_iterations: int = 10
    epochs: int = 6
    w0_grid: tuple[float, ...] = (0.003, 0.01, 0.03, 0.1, 0.3)
    num_negatives: int = 128
    cold_fraction: float = 0.1
    cold_revealed: int = 3
    seed: int = 0
    num_threads: int = 0
    show_progress: bool = True

    @classmethod
    def preset(cls, *, quick: bool = False, scale: float = 1.0, **kw: object) -> DemoConfig:
        """The default configuration, the ``--quick`` one, or one scaled by ``scale``."""
        if quick:
            base = cls(n_queries=4_000, n_items=1_000, n_categories=6, dim=24, wals_iterations=6,
                       epochs=4, w0_grid=(0.01, 0.1), num_negatives=64)  # fmt: skip
        else:
            base = cls()
        if scale <= 0:
            raise ValueError(f"scale: expected a positive number, got {scale}")
        base.n_queries = max(200, int(base.n_queries * scale))
        base.n_items = max(100, int(base.n_items * scale))
        for key, value in kw.items():
            setattr(base, key, value)
        return base


@dataclass
class ModelResult:
    name: str
    model: object
    train_seconds: float
    row: dict[str, float] = field(default_factory=dict)


def _log(msg: str, cfg: DemoConfig) -> None:
    if cfg.show_progress:
        print(msg, flush=True)


def _timeit(fn: Callable[[], object]) -> tuple[object, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def _subset_features(feats: QueryFeatures, rows: np.ndarray) -> QueryFeatures:
    return QueryFeatures(
        dense=None if feats.dense is None else feats.dense[rows],
        categorical={k: v[rows] for k, v in feats.categorical.items()},
        bags={k: sp.csr_matrix((data, indices, indptr), shape=(len(feats), feats.bag_vocab[k]))[rows]
              for k, (indptr, indices, data) in feats.bags.items()},
    )  # fmt: skip


def _reveal(rows: sp.csr_matrix, n_reveal: int, seed: int) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Split each row into ``n_reveal`` revealed interactions and the hidden rest."""
    rows = sp.csr_matrix(rows)
    rng = np.random.default_rng(seed)
    keys = rng.random(rows.nnz)
    row_of = np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))
    order = np.lexsort((keys, row_of))
    rank = np.empty(rows.nnz, dtype=np.int64)
    rank[order] = np.arange(rows.nnz) - rows.indptr[row_of[order]]
    revealed = rank < n_reveal

    def pick(mask: np.ndarray) -> sp.csr_matrix:
        m = sp.csr_matrix(
            (
                rows.data[mask],
                rows.indices[mask],
                np.r_[0, np.cumsum(np.bincount(row_of[mask], minlength=rows.shape[0]))],
            ),
            shape=rows.shape,
        )
        m.sort_indices()
        return m

    return pick(revealed), pick(~revealed)


def run_demo(out_dir: str | Path = "fastsoftmax-demo", config: DemoConfig | None = None) -> dict:
    """Train every model on one corpus, measure the comparison table and write the results.

    Parameters
    ----------
    out_dir : str or pathlib.Path
        Folder for ``results.json``, ``results.md`` and ``folding.png`` (created if missing).
    config : DemoConfig, optional
        Sizes and hyperparameters; default ``DemoConfig()``.

    Returns
    -------
    dict
        The content of ``results.json``: ``config``, ``models`` (per model: every measured
        row), ``rows`` (the table's row labels), ``sentences`` and ``files``.
    """
    cfg = config or DemoConfig()
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()

    # --- data and splits ----------------------------------------------------------------------
    data = datasets.make_categories(n_queries=cfg.n_queries, n_items=cfg.n_items,
                                    n_categories=cfg.n_categories, seed=cfg.seed)  # fmt: skip
    warm_idx, cold_idx = datasets.cold_start_split(data.interactions,
                                                   test_fraction=cfg.cold_fraction, seed=cfg.seed)  # fmt: skip
    warm = sp.csr_matrix(data.interactions[warm_idx])
    train, test = datasets.train_test_split(warm, test_fraction=0.2, seed=cfg.seed)
    cold_revealed, cold_hidden = _reveal(data.interactions[cold_idx], cfg.cold_revealed, cfg.seed)
    qgroups_warm = data.query_groups[warm_idx]
    _log(f"corpus: {cfg.n_queries:,} queries x {cfg.n_items:,} items, {cfg.n_categories} "
         f"categories, {data.interactions.nnz:,} interactions; {len(cold_idx):,} cold-start "
         "queries held out", cfg)  # fmt: skip

    base = data.features

    def feats_for(rows: np.ndarray, history: sp.csr_matrix) -> QueryFeatures:
        """Query features; the history bag comes from the given (training-side) interactions."""
        return QueryFeatures(dense=base.dense[rows],
                             categorical={k: v[rows] for k, v in base.categorical.items()},
                             bags={"history": sp.csr_matrix(history)})  # fmt: skip

    feats_warm = feats_for(warm_idx, train)
    feats_cold = feats_for(cold_idx, cold_revealed)
    # The same new queries with an empty history: the DNN from its other features alone.
    feats_cold_bare = feats_for(cold_idx, sp.csr_matrix(cold_revealed.shape, dtype=np.float32))

    results: list[ModelResult] = []

    # --- models ---------------------------------------------------------------------------------
    pop, t = _timeit(lambda: Popularity(num_threads=cfg.num_threads).fit(train))
    results.append(ModelResult("Popularity", pop, t))

    def make_wals(w0: float, iterations: int) -> WALS:
        return WALS(cfg.dim, unobserved_weight=w0, regularization=0.05, iterations=iterations,
                    solver="cg", cg_steps=3, num_threads=cfg.num_threads, seed=cfg.seed)  # fmt: skip

    wals0, t = _timeit(
        lambda: make_wals(0.0, cfg.wals_iterations).fit(train, show_progress=cfg.show_progress)
    )
    results.append(ModelResult("WALS w0=0", wals0, t))

    # Tune w0 on a validation split carved out of the training interactions.
    tr2, val = datasets.train_test_split(train, test_fraction=0.2, seed=cfg.seed + 1)
    scores = {}
    for w0 in cfg.w0_grid:
        m = make_wals(w0, cfg.wals_iterations).fit(tr2, show_progress=False)
        ids, _ = m.recommend(np.arange(tr2.shape[0]), k=K, exclude=tr2)
        scores[w0] = metrics.recall_at_k(ids, val, K)
    best_w0 = max(scores, key=lambda w: scores[w])
    _log("WALS w0 tuning (validation recall@10): "
         + ", ".join(f"{w}: {s:.3f}" for w, s in scores.items()), cfg)  # fmt: skip
    wals_t, t = _timeit(
        lambda: make_wals(best_w0, cfg.wals_iterations).fit(train, show_progress=cfg.show_progress)
    )
    results.append(ModelResult(f"WALS w0={best_w0:g}", wals_t, t))

    # The history bag is trained the denoising way (SoftmaxModel's history recipe); the other
    # settings suit this corpus's categorical and dense features.
    softmax_common = dict(history="history", hidden=(128,), dim=cfg.dim, embedding_dim=16,
                          epochs=cfg.epochs,
                          optimizer="adagrad", learning_rate=0.1, batch_size=256,
                          num_threads=cfg.num_threads, seed=cfg.seed)  # fmt: skip
    softmax_variants = _softmax_variants(cfg)
    for name, opts in softmax_variants:
        _log(f"training {name}", cfg)
        model = SoftmaxModel(cfg.n_items, **softmax_common, **opts)
        _, t = _timeit(lambda model=model: model.fit(feats_warm, train,
                                                     show_progress=cfg.show_progress))  # fmt: skip
        results.append(ModelResult(name, model, t))

    # The item tower: item j embedded from its features (here its category) plus its own id
    # embedding; new items get embeddings from their features, without retraining.
    item_feats = QueryFeatures(categorical={"category": data.item_groups})
    tower_opts = dict(loss="sampled", sampler="uniform", num_negatives=cfg.num_negatives)
    _log("training Softmax item tower", cfg)
    tower = SoftmaxModel(cfg.n_items, **softmax_common, **tower_opts)
    _, t = _timeit(lambda: tower.fit(feats_warm, train, item_features=item_feats,
                                     show_progress=cfg.show_progress))  # fmt: skip
    results.append(ModelResult("Softmax item tower", tower, t))
    new_items_recall = _new_items_recall(cfg, data, warm_idx, warm, feats_for, softmax_common,
                                         tower_opts)  # fmt: skip

    # --- measurements ---------------------------------------------------------------------------
    for r in results:
        is_softmax = isinstance(r.model, SoftmaxModel)
        queries = feats_warm if is_softmax else np.arange(train.shape[0])
        ids, _ = r.model.recommend(queries, k=K, exclude=train)
        r.row["recall@10"] = metrics.recall_at_k(ids, test, K)
        r.row["ndcg@10"] = metrics.ndcg_at_k(ids, test, K)
        r.row["folding rate"] = metrics.folding_rate(ids, qgroups_warm, data.item_groups, K)
        r.row["cold-start recall@10"] = _cold_start_recall(r.model, feats_cold, cold_revealed,
                                                           cold_hidden, mode="fold_in")  # fmt: skip
        if isinstance(r.model, SoftmaxModel):
            ids_bare, _ = r.model.recommend(feats_cold_bare, k=K, exclude=cold_revealed)
            r.row["cold-start recall@10 (features only)"] = metrics.recall_at_k(
                ids_bare, cold_hidden, K
            )
        if isinstance(r.model, WALS):
            r.row["cold-start recall@10 (similar queries)"] = _cold_start_similar(
                r.model, base.categorical, warm_idx, cold_idx, cold_revealed, cold_hidden
            )
        if r.name == "Softmax item tower":
            r.row["new items recall@10"] = new_items_recall
        r.row["training time (s)"] = r.train_seconds
        single, batch = _latency(r.model, queries)
        r.row["latency per query (ms)"] = single * 1e3
        r.row["latency per 1000 queries (ms)"] = batch * 1e3
        r.row["parameters"] = float(_n_parameters(r.model))

    rows = ["recall@10", "ndcg@10", "folding rate", "cold-start recall@10",
            "cold-start recall@10 (features only)", "cold-start recall@10 (similar queries)",
            "new items recall@10", "training time (s)",
            "latency per query (ms)", "latency per 1000 queries (ms)", "parameters"]  # fmt: skip
    sentences = _sentences(results)
    table = _markdown_table(results, rows)

    png = out / "folding.png"
    try:
        _folding_picture(png, results, data, warm_idx, feats_warm)
        png_written = True
    except figures.MatplotlibMissing:
        png_written = False  # results.json / results.md are still written, without the figure
    files = {"json": "results.json", "markdown": "results.md"}
    if png_written:
        files["png"] = png.name
    payload = {
        "config": {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(cfg).items()},
        "corpus": {
            "n_queries": cfg.n_queries,
            "n_items": cfg.n_items,
            "n_categories": cfg.n_categories,
            "nnz": int(data.interactions.nnz),
            "n_cold_queries": len(cold_idx),
        },
        "wals_w0_validation_recall": {str(k): v for k, v in scores.items()},
        "rows": rows,
        "models": {r.name: r.row for r in results},
        "sentences": sentences,
        "seconds": time.perf_counter() - t_start,
        "files": files,
    }
    (out / "results.json").write_text(json.dumps(payload, indent=2))
    (out / "results.md").write_text(table + "\n\n" + "\n".join(f"* {s}" for s in sentences) + "\n")
    print()
    print(table)
    print()
    for s in sentences:
        print(f"* {s}")
    written = [out / name for name in files.values()]
    print(f"\nwrote {', '.join(map(str, written))} ({payload['seconds']:.0f} s)")
    if not png_written:
        print(f"skipped {png.name}: the figure needs matplotlib, install it with "
              f"`{figures.INSTALL_HINT}`")  # fmt: skip
    return payload


def _softmax_variants(cfg: DemoConfig) -> list[tuple[str, dict]]:
    """The softmax DNN configurations compared: (column name, SoftmaxModel options)."""
    return [
        ("Softmax positives-only", dict(loss="positives")),
        ("Softmax uniform neg.", dict(loss="sampled", sampler="uniform",
                                      num_negatives=cfg.num_negatives)),
        ("Softmax hard neg.", dict(loss="sampled", sampler="score", hard_pool=4 * cfg.num_negatives,
                                   hard_fraction=0.5, num_negatives=cfg.num_negatives)),
        ("Softmax full", dict(loss="full")),
    ]  # fmt: skip


def _new_items_recall(cfg, data, warm_idx, warm, feats_for, common, opts) -> float:
    """Recall@10 of the item tower on items held out of training entirely (10% of the items):
    a twin of the item-tower model trained without them ranks them for every warm query from
    their features alone; relevant: the query's interactions with them. MF and an item table
    cannot rank an item they never trained on."""
    rng = np.random.default_rng(cfg.seed + 17)
    n = cfg.n_items
    new = np.sort(rng.choice(n, max(1, n // 10), replace=False))
    old = np.setdiff1d(np.arange(n), new)
    train_old = sp.csr_matrix(warm[:, old])
    keep = np.flatnonzero(train_old.getnnz(axis=1))  # every training row needs a positive
    feats = feats_for(warm_idx[keep], train_old[keep])
    twin = SoftmaxModel(len(old), **common, **opts)
    twin.fit(feats, train_old[keep], show_progress=False,
             item_features=QueryFeatures(categorical={"category": data.item_groups[old]}))  # fmt: skip
    v_new = twin.item_embeddings_from(
        QueryFeatures(categorical={"category": data.item_groups[new]})
    )
    ids, _ = topk(twin.query_embeddings(feats), v_new, K, num_threads=cfg.num_threads)
    return metrics.recall_at_k(ids, sp.csr_matrix(warm[keep][:, new]), K)


def _cold_start_recall(model, feats_cold, revealed, hidden, *, mode: str) -> float:
    """Recall@10 on the hidden interactions of cold-start queries, revealed ones excluded."""
    if isinstance(model, SoftmaxModel):
        ids, _ = model.recommend(feats_cold, k=K, exclude=revealed)
    elif isinstance(model, WALS):
        emb = model.fold_in(revealed)
        ids, _ = topk(emb, model.item_embeddings, K, exclude=revealed)
    else:
        ids, _ = model.recommend(np.arange(revealed.shape[0]), k=K, exclude=revealed)
    return metrics.recall_at_k(ids, hidden, K)


def _cold_start_similar(model: WALS, categorical: dict, warm_idx, cold_idx, revealed,
                        hidden) -> float:  # fmt: skip
    """Cold start for MF without fold-in (:meth:`WALS.embed_similar`): a new query gets the mean
    embedding of the training queries that share its (noisy) category feature."""
    cat = next(iter(categorical.values()))
    emb = model.embed_similar(cat[warm_idx], cat[cold_idx])
    ids, _ = topk(emb, model.item_embeddings, K, exclude=revealed)
    return metrics.recall_at_k(ids, hidden, K)


def _latency(model, queries) -> tuple[float, float]:
    """Median seconds to recommend for one query, and best of 3 for a batch of 1000."""
    n = len(queries)

    def sub(rows):
        if isinstance(queries, QueryFeatures):
            return _subset_features(queries, rows)
        return queries[rows]

    singles = []
    for i in range(30):
        q = sub(np.array([i % n]))
        t0 = time.perf_counter()
        model.recommend(q, k=K)
        singles.append(time.perf_counter() - t0)
    batch_q = sub(np.arange(1000) % n)
    batch = min(_timeit(lambda: model.recommend(batch_q, k=K))[1] for _ in range(3))
    return float(np.median(singles)), batch


def _n_parameters(model) -> int:
    if isinstance(model, SoftmaxModel):
        return int(sum(p.size for p in model.parameters.values()))
    if isinstance(model, WALS):
        return int(model.query_embeddings().size + model.item_embeddings.size)
    return int(model.n_parameters)


def _fmt(row: str, v: float | None) -> str:
    if row == "new items recall@10" and v is None:
        return "cannot"  # an item never trained on has no embedding (MF, item table)
    if v is None or (isinstance(v, float) and np.isnan(v)):
        return "—"
    if row == "parameters":
        return f"{v / 1e6:.2f}M" if v >= 1e5 else f"{int(v):,}"
    if "time" in row or "latency" in row:
        return f"{v:.3g}"
    return f"{v:.3f}"


def _markdown_table(results: list[ModelResult], rows: list[str]) -> str:
    head = "| | " + " | ".join(r.name for r in results) + " |"
    sep = "|---" * (len(results) + 1) + "|"
    lines = [head, sep]
    for row in rows:
        lines.append(f"| {row} | " + " | ".join(_fmt(row, r.row.get(row)) for r in results) + " |")
    return "\n".join(lines)


def _sentences(results: list[ModelResult]) -> list[str]:
    """Plain statements generated from the measured numbers (never assumed)."""
    by = {r.name: r.row for r in results}
    s = []

    def best(row, higher=True, among=None):
        cands = [r for r in results if row in r.row and (among is None or r.name in among)]
        key = (lambda r: r.row[row]) if higher else (lambda r: -r.row[row])
        ranked = sorted(cands, key=key, reverse=True)
        return ranked[0], ranked[1]

    w, second = best("recall@10")
    s.append(f"Quality: {w.name} has the best recall@10 ({w.row['recall@10']:.3f}), "
             f"{_ratio(w.row['recall@10'], second.row['recall@10'])} {second.name} "
             f"({second.row['recall@10']:.3f}).")  # fmt: skip
    pos, uni = by.get("Softmax positives-only"), by.get("Softmax uniform neg.")
    hard = by.get("Softmax hard neg.")
    if pos and uni:
        verb = "folds more" if pos["folding rate"] > uni["folding rate"] else "does NOT fold more"
        s.append(f"Folding: positives-only softmax {verb} than with uniform negatives: "
                 f"{pos['folding rate']:.1%} of its top-10 items come from another category, "
                 f"vs {uni['folding rate']:.1%}"
                 + (f" (and {hard['folding rate']:.1%} with hard negatives)." if hard else "."))  # fmt: skip
    wals = [r for r in results if r.name.startswith("WALS")]
    if len(wals) == 2:
        a, b = wals
        verb = "lowers" if b.row["folding rate"] < a.row["folding rate"] else "does NOT lower"
        s.append(f"Folding in MF: raising the unobserved weight from 0 ({a.name}) to the tuned "
                 f"value ({b.name}) {verb} the folding rate, {a.row['folding rate']:.1%} -> "
                 f"{b.row['folding rate']:.1%}, and recall@10 goes {a.row['recall@10']:.3f} -> "
                 f"{b.row['recall@10']:.3f}.")  # fmt: skip
    w, second = best("cold-start recall@10")
    s.append(f"Cold start: {w.name} is best on held-out queries ({w.row['cold-start recall@10']:.3f}"
             f" recall@10), {_ratio(w.row['cold-start recall@10'], second.row['cold-start recall@10'])}"
             f" {second.name}; the softmax models embed the new query's features, MF folds in its "
             "revealed interactions.")  # fmt: skip
    for r in wals:
        sim = r.row.get("cold-start recall@10 (similar queries)")
        if sim is not None:
            better = "better" if sim > r.row["cold-start recall@10"] else "worse"
            s.append(f"For {r.name}, the mean embedding of training queries with the same "
                     f"category feature does {better} than fold-in ({sim:.3f} vs "
                     f"{r.row['cold-start recall@10']:.3f}).")  # fmt: skip
    tower = by.get("Softmax item tower")
    if tower and tower.get("new items recall@10") is not None:
        s.append(f"New items: the item tower ranks items held out of training from their "
                 f"features ({tower['new items recall@10']:.3f} recall@10 among them); MF and the "
                 "item-table softmax models cannot rank an item they never trained on.")  # fmt: skip
    learned = [r.name for r in results if r.name != "Popularity"]
    w, second = best("training time (s)", higher=False, among=learned)
    speedup = second.row["training time (s)"] / max(w.row["training time (s)"], 1e-9)
    how = (
        f"{speedup:.1f}x faster than the next, {second.name}"
        if speedup >= 1.1
        else f"about as fast as {second.name} ({second.row['training time (s)']:.2f} s)"
    )
    s.append(f"Training: {w.name} trains fastest ({w.row['training time (s)']:.2f} s), {how}.")
    w, _ = best("latency per 1000 queries (ms)", higher=False, among=learned)
    sm = [r for r in results if r.name.startswith("Softmax")]
    mf = [r for r in results if r.name.startswith("WALS")]
    line = (f"Serving: {w.name} answers 1000 queries fastest "
            f"({w.row['latency per 1000 queries (ms)']:.1f} ms)")  # fmt: skip
    if sm and mf:
        fs_ = min(r.row["latency per 1000 queries (ms)"] for r in sm)
        fm = min(r.row["latency per 1000 queries (ms)"] for r in mf)
        line += (f"; the fastest softmax model needs {fs_:.1f} ms (query tower + top-k), the "
                 f"fastest MF model {fm:.1f} ms (embedding lookup + top-k)")  # fmt: skip
    s.append(line + ".")
    return s


def _ratio(a: float, b: float) -> str:
    if b <= 0:
        return "ahead of"
    return f"{a / b:.2f}x"


def _folding_picture(path: Path, results, data, warm_idx, feats_warm) -> None:
    """Write the folding figure (:mod:`fastsoftmax.figures`): one panel per model, positives-only
    beside negative-sampled softmax, WALS w0=0 beside the tuned w0; raises
    :class:`fastsoftmax.figures.MatplotlibMissing` without matplotlib."""
    rng = np.random.default_rng(0)
    by = {r.name: r for r in results}
    order = ["Softmax positives-only", "Softmax uniform neg."]
    order += [r.name for r in results if r.name.startswith("WALS")]
    # A sample of each: 600 + 600 points per panel stay readable.
    items_shown = rng.choice(data.item_groups.size, size=min(600, data.item_groups.size),
                             replace=False)  # fmt: skip
    queries_shown = rng.choice(len(warm_idx), size=min(600, len(warm_idx)), replace=False)
    panels = []
    for name in order:
        model = by[name].model
        if isinstance(model, SoftmaxModel):
            q = model.query_embeddings(_subset_features(feats_warm, queries_shown))
        else:
            q = model.query_embeddings()[queries_shown]
        panels.append(figures.folding_panel(
            name, by[name].row["folding rate"],
            q, data.query_groups[warm_idx][queries_shown],
            model.item_embeddings[items_shown], data.item_groups[items_shown]))  # fmt: skip
    figures.save_folding_figure(path, panels, category_names=data.group_names, k=K)
