"""Ranking metrics on held-out interactions, and the folding rate.

All ranking metrics take ``recommended`` (int64, shape (B, >= k): item ids per query, best first,
``-1`` for padding as returned by :func:`fastsoftmax.topk`), ``relevant`` (a scipy sparse matrix
of shape (B, n): the held-out items of each query; an item is relevant to query ``b`` when
``relevant[b, j]`` is a stored, non-zero entry) and ``k``. Only the first ``k`` columns of
``recommended`` are used. Relevance is binary. An item recommended twice to the same query counts
as a hit only at its first position; padding (``-1``) is never a hit.

Each metric is averaged over the queries that have at least one relevant item (queries without
any are skipped, not counted as zero); if no query has one, a ValueError is raised. Pass
``per_query=True`` to get the per-query values instead (NaN for skipped queries).

With ``h_i`` = 1 if the item at (1-based) position ``i`` is a hit, ``R`` = the number of relevant
items of the query and ``H = sum_{i<=k} h_i``:

* precision@k = H / k (always divided by k, also when fewer than k items were recommended);
* recall@k = H / R;
* NDCG@k = DCG / IDCG with DCG = sum_{i<=k} h_i / log2(i + 1) and IDCG = sum_{i <= min(k, R)}
  1 / log2(i + 1) (the DCG of a perfect list);
* MAP@k = mean over queries of AP@k = (sum_{i<=k} h_i * precision@i) / min(k, R);
* hit rate@k = share of queries with H >= 1.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ._validation import as_csr, check_int

__all__ = [
    "folding_rate",
    "hit_rate_at_k",
    "map_at_k",
    "ndcg_at_k",
    "precision_at_k",
    "ranking_metrics",
    "recall_at_k",
]

METRIC_NAMES = ("precision", "recall", "ndcg", "map", "hit_rate")


def _as_ids(recommended: object, k: int, n_rows: int, n_items: int) -> np.ndarray:
    rec = np.asarray(recommended)
    if rec.dtype.kind not in "iu":
        raise TypeError(
            f"recommended: expected an integer array of item ids, got dtype {rec.dtype}"
        )
    if rec.ndim != 2:
        raise ValueError(f"recommended: expected a 2-D array (B, >= k), got shape {rec.shape}")
    if rec.shape[0] != n_rows:
        raise ValueError(
            f"recommended: expected {n_rows} rows (one per query), got shape {rec.shape}"
        )
    if rec.shape[1] < k:
        raise ValueError(f"recommended: expected at least k = {k} columns, got shape {rec.shape}")
    rec = rec[:, :k].astype(np.int64, copy=False)
    if rec.size and (rec.min() < -1 or rec.max() >= n_items):
        bad = rec[(rec < -1) | (rec >= n_items)][0]
        raise IndexError(
            f"recommended: item ids must lie in [0, {n_items}) (or be -1 for padding), got {bad}"
        )
    return rec


def _first_occurrence(rec: np.ndarray) -> np.ndarray:
    """Boolean mask, True where rec[b, i] does not occur earlier in row b."""
    if rec.shape[1] <= 1:
        return np.ones(rec.shape, dtype=bool)
    order = np.argsort(rec, axis=1, kind="stable")
    srt = np.take_along_axis(rec, order, axis=1)
    dup_sorted = np.zeros(rec.shape, dtype=bool)
    dup_sorted[:, 1:] = srt[:, 1:] == srt[:, :-1]
    first = np.ones(rec.shape, dtype=bool)
    np.put_along_axis(first, order, ~dup_sorted, axis=1)
    return first


def _hits(recommended: object, relevant: object, k: object) -> tuple[np.ndarray, np.ndarray, int]:
    """(hits bool (B, k), number of relevant items int64 (B,), k) after validation."""
    k = check_int(k, "k", minimum=1)
    rel = as_csr(relevant, "relevant", dtype=None)
    n_rows, n_items = rel.shape
    rec = _as_ids(recommended, k, n_rows, n_items)
    nonzero = rel.data != 0
    rows = np.repeat(np.arange(n_rows, dtype=np.int64), np.diff(rel.indptr))[nonzero]
    rel_keys = rows * n_items + rel.indices[nonzero].astype(np.int64)  # sorted (canonical CSR)
    n_relevant = np.bincount(rows, minlength=n_rows).astype(np.int64)
    keys = np.arange(n_rows, dtype=np.int64)[:, None] * n_items + rec
    pos = np.searchsorted(rel_keys, keys)
    found = rel_keys[np.minimum(pos, len(rel_keys) - 1)] == keys if len(rel_keys) else False
    hits = (rec >= 0) & found & _first_occurrence(rec)
    return np.asarray(hits, dtype=bool).reshape(rec.shape), n_relevant, k


def _per_query(hits: np.ndarray, n_relevant: np.ndarray, k: int) -> dict[str, np.ndarray]:
    n_hits = hits.sum(axis=1).astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        ranks = np.arange(1, k + 1, dtype=np.float64)
        discounts = 1.0 / np.log2(ranks + 1.0)
        ideal = np.concatenate([[0.0], np.cumsum(discounts)])
        best = np.minimum(n_relevant, k)
        precision_at_i = np.cumsum(hits, axis=1) / ranks
        out = {
            "precision": n_hits / k,
            "recall": n_hits / n_relevant,
            "ndcg": (hits @ discounts) / ideal[best],
            "map": (precision_at_i * hits).sum(axis=1) / best,
            "hit_rate": (n_hits > 0).astype(np.float64),
        }
    skip = n_relevant == 0
    for v in out.values():
        v[skip] = np.nan
    return out


def _mean(values: np.ndarray, n_relevant: np.ndarray) -> float:
    keep = n_relevant > 0
    if not keep.any():
        raise ValueError("relevant: no query has a relevant item; the metric is undefined")
    return float(values[keep].mean())


def ranking_metrics(
    recommended: np.typing.ArrayLike, relevant: sp.spmatrix | sp.sparray, k: int
) -> dict[str, float]:
    """All ranking metrics at ``k`` in one pass (definitions in the module docstring).

    Parameters
    ----------
    recommended : array_like of int, shape (B, >= k)
        Recommended item ids per query, best first; ``-1`` marks padding.
    relevant : scipy sparse matrix, shape (B, n)
        Held-out (relevant) items per query.
    k : int
        Cut-off, >= 1.

    Returns
    -------
    dict
        ``{"precision", "recall", "ndcg", "map", "hit_rate"}`` -> float, each averaged over the
        queries with at least one relevant item.
    """
    hits, n_rel, k = _hits(recommended, relevant, k)
    per = _per_query(hits, n_rel, k)
    return {name: _mean(per[name], n_rel) for name in METRIC_NAMES}


def _metric(
    name: str, recommended: np.typing.ArrayLike, relevant: object, k: int, per_query: bool
) -> float | np.ndarray:
    hits, n_rel, k = _hits(recommended, relevant, k)
    values = _per_query(hits, n_rel, k)[name]
    return values if per_query else _mean(values, n_rel)


_DOC = """{title}

    Definition: {definition} Averaged over the queries with at least one relevant item.

    Parameters
    ----------
    recommended : array_like of int, shape (B, >= k)
        Recommended item ids per query, best first (only the first ``k`` columns are used);
        ``-1`` marks padding and is never a hit. A repeated id counts only at its first position.
    relevant : scipy sparse matrix, shape (B, n)
        Relevant (held-out) items: the stored non-zero entries of row ``b``.
    k : int
        Cut-off, >= 1.
    per_query : bool, default False
        Return the value of every query (float64, shape (B,), NaN where the query has no relevant
        item) instead of the mean.

    Returns
    -------
    float or numpy.ndarray

    Raises
    ------
    TypeError
        If ``recommended`` is not an integer array or ``relevant`` is not sparse.
    ValueError
        On shape mismatches, ``k < 1``, or (for the mean) when no query has a relevant item.
    IndexError
        If an id lies outside ``[-1, n)``.
{example}"""


def precision_at_k(
    recommended: np.typing.ArrayLike,
    relevant: sp.spmatrix | sp.sparray,
    k: int,
    *,
    per_query: bool = False,
) -> float | np.ndarray:
    return _metric("precision", recommended, relevant, k, per_query)


def recall_at_k(
    recommended: np.typing.ArrayLike,
    relevant: sp.spmatrix | sp.sparray,
    k: int,
    *,
    per_query: bool = False,
) -> float | np.ndarray:
    return _metric("recall", recommended, relevant, k, per_query)


def ndcg_at_k(
    recommended: np.typing.ArrayLike,
    relevant: sp.spmatrix | sp.sparray,
    k: int,
    *,
    per_query: bool = False,
) -> float | np.ndarray:
    return _metric("ndcg", recommended, relevant, k, per_query)


def map_at_k(
    recommended: np.typing.ArrayLike,
    relevant: sp.spmatrix | sp.sparray,
    k: int,
    *,
    per_query: bool = False,
) -> float | np.ndarray:
    return _metric("map", recommended, relevant, k, per_query)


def hit_rate_at_k(
    recommended: np.typing.ArrayLike,
    relevant: sp.spmatrix | sp.sparray,
    k: int,
    *,
    per_query: bool = False,
) -> float | np.ndarray:
    return _metric("hit_rate", recommended, relevant, k, per_query)


precision_at_k.__doc__ = _DOC.format(
    title="Precision at k: the share of the top-k positions that hold a relevant item.",
    definition="precision@k = (number of hits among the first k ids) / k. The denominator is "
    "always k, also when a row has fewer than k real ids (padding).",
    example="""
    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> rel = sp.csr_matrix(np.array([[0, 1, 1, 0, 0]]))
    >>> precision_at_k(np.array([[1, 3, 2]]), rel, 3)
    0.6666666666666666
""",
)
recall_at_k.__doc__ = _DOC.format(
    title="Recall at k: the share of a query's relevant items found in its top k.",
    definition="recall@k = (number of hits among the first k ids) / (number of relevant items).",
    example="",
)
ndcg_at_k.__doc__ = _DOC.format(
    title="Normalised discounted cumulative gain at k (binary relevance).",
    definition="DCG = sum over positions i = 1..k of hit_i / log2(i + 1); NDCG@k = DCG / IDCG, "
    "where IDCG = sum over i = 1..min(k, R) of 1 / log2(i + 1) is the DCG of a perfect list and R "
    "the number of relevant items.",
    example="",
)
map_at_k.__doc__ = _DOC.format(
    title="Mean average precision at k.",
    definition="AP@k = (sum over hit positions i <= k of precision@i) / min(k, R), with R the "
    "number of relevant items; MAP@k is its mean.",
    example="",
)
hit_rate_at_k.__doc__ = _DOC.format(
    title="Hit rate at k: the share of queries with at least one relevant item in the top k.",
    definition="hit_rate@k = 1 if any of the first k ids is relevant, else 0.",
    example="",
)


def folding_rate(
    recommended: np.typing.ArrayLike,
    query_groups: np.typing.ArrayLike,
    item_groups: np.typing.ArrayLike,
    k: int,
    *,
    per_query: bool = False,
) -> float | np.ndarray:
    """Share of recommended items that belong to a different group than their query.

    Definition: for query ``b`` with top-k ids ``r_1..r_k`` (padding ``-1`` dropped, leaving
    ``m_b`` items), ``fold_b = #{i : item_groups[r_i] != query_groups[b]} / m_b``. The folding
    rate is the mean of ``fold_b`` over the queries with ``m_b >= 1``. On data whose groups never
    interact (different languages, say) every cross-group item is a spurious recommendation: a
    well-separated model scores near 0, a folded one near ``1 - 1 / n_groups``.

    Parameters
    ----------
    recommended : array_like of int, shape (B, >= k)
        Recommended item ids per query, best first; ``-1`` marks padding.
    query_groups : array_like of int, shape (B,)
        Group of each query (row of ``recommended``).
    item_groups : array_like of int, shape (n,)
        Group of each item.
    k : int
        Cut-off, >= 1.
    per_query : bool, default False
        Return ``fold_b`` for every query (float64 (B,), NaN where ``m_b = 0``) instead of the mean.

    Returns
    -------
    float or numpy.ndarray

    Raises
    ------
    ValueError
        On shape mismatches, ``k < 1``, or (for the mean) when every row is padding only.
    IndexError
        If an id lies outside ``[-1, n)``.

    Examples
    --------
    >>> import numpy as np
    >>> folding_rate(np.array([[0, 2], [1, -1]]), np.array([0, 1]), np.array([0, 1, 1]), 2)
    0.25
    """
    k = check_int(k, "k", minimum=1)
    qg = np.asarray(query_groups)
    ig = np.asarray(item_groups)
    for name, g in (("query_groups", qg), ("item_groups", ig)):
        if g.ndim != 1 or g.dtype.kind not in "iub":
            raise ValueError(f"{name}: expected a 1-D integer array, got {g.dtype} {g.shape}")
    rec = _as_ids(recommended, k, len(qg), len(ig))
    valid = rec >= 0
    differ = (ig[np.maximum(rec, 0)] != qg[:, None]) & valid
    m = valid.sum(axis=1)
    with np.errstate(divide="ignore", invalid="ignore"):
        per = differ.sum(axis=1) / m
    per[m == 0] = np.nan
    if per_query:
        return per
    if not (m > 0).any():
        raise ValueError("recommended: every row is padding; the folding rate is undefined")
    return float(per[m > 0].mean())
