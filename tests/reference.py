"""Pure-NumPy reference implementations that the C++ kernels are tested against."""

from __future__ import annotations

import numpy as np


def alias_table(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vose's alias table, processing the worklists in the same order as the C++ core.

    Returns ``keep`` (float64, shape (n,)) and ``alias`` (int64, shape (n,)).
    """
    w = np.asarray(weights, dtype=np.float64)
    n = len(w)
    scaled = w / w.sum() * n
    keep = np.ones(n)
    alias = np.arange(n)
    small = [i for i in range(n - 1, -1, -1) if scaled[i] < 1.0]
    large = [i for i in range(n - 1, -1, -1) if scaled[i] >= 1.0]
    while small and large:
        s = small.pop()
        g = large[-1]
        keep[s] = scaled[s]
        alias[s] = g
        scaled[g] -= 1.0 - scaled[s]
        if scaled[g] < 1.0:
            large.pop()
            small.append(g)
    positive = int(np.flatnonzero(w > 0)[0])
    for i in small + large:
        keep[i] = 1.0 if w[i] > 0 else 0.0
        alias[i] = i if w[i] > 0 else positive
    return keep, alias


def alias_distribution(keep: np.ndarray, alias: np.ndarray) -> np.ndarray:
    """The distribution an alias table samples: (keep_i + sum_{j: alias_j = i} (1 - keep_j)) / n."""
    keep = np.asarray(keep, dtype=np.float64)
    n = len(keep)
    p = keep + np.bincount(np.asarray(alias), weights=1.0 - keep, minlength=n)
    return p / n


def topk_reference(
    queries: np.ndarray, items: np.ndarray, k: int, exclude=None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product with a dense float64 score matrix: best first, ties -> lower id,
    excluded items (stored entries of the sparse ``exclude``) and NaN/-inf scores skipped, rows
    padded with (-1, -inf). Exact (bit-equal to any correct float32 kernel) when the inputs are
    small integers."""
    q = np.asarray(queries, dtype=np.float64)
    x = np.asarray(items, dtype=np.float64)
    B, n = q.shape[0], x.shape[0]
    scores = q @ x.T if n else np.zeros((B, 0))
    ids = np.full((B, k), -1, dtype=np.int64)
    out = np.full((B, k), -np.inf, dtype=np.float32)
    ex = None if exclude is None else exclude.tocsr()
    for b in range(B):
        s = scores[b].copy()
        if ex is not None:
            s[ex.indices[ex.indptr[b] : ex.indptr[b + 1]]] = -np.inf
        eligible = np.flatnonzero(np.isfinite(s) | (s == np.inf))
        order = eligible[np.lexsort((eligible, -s[eligible]))][:k]
        ids[b, : len(order)] = order
        out[b, : len(order)] = s[order]
    return ids, out


def ranking_metrics_reference(recommended, relevant, k: int) -> dict[str, float]:
    """Per-query loops over the textbook definitions (binary relevance; first occurrence of a
    repeated id only; mean over queries with a relevant item)."""
    rel = relevant.tocsr()
    values: dict[str, list[float]] = {
        m: [] for m in ("precision", "recall", "ndcg", "map", "hit_rate")
    }
    for b in range(rel.shape[0]):
        row = rel.getrow(b)
        relevant_set = {int(j) for j, v in zip(row.indices, row.data, strict=True) if v != 0}
        R = len(relevant_set)
        if R == 0:
            continue
        seen: set[int] = set()
        hits = []
        for j in recommended[b][:k]:
            j = int(j)
            hits.append(j >= 0 and j in relevant_set and j not in seen)
            seen.add(j)
        H = sum(hits)
        dcg = sum(1.0 / np.log2(i + 2) for i, h in enumerate(hits) if h)
        idcg = sum(1.0 / np.log2(i + 2) for i in range(min(k, R)))
        ap = sum(sum(hits[: i + 1]) / (i + 1) for i, h in enumerate(hits) if h) / min(k, R)
        values["precision"].append(H / k)
        values["recall"].append(H / R)
        values["ndcg"].append(dcg / idcg)
        values["map"].append(ap)
        values["hit_rate"].append(float(H > 0))
    return {m: float(np.mean(v)) for m, v in values.items()}
