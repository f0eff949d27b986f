"""Evaluation of any retrieval model on held-out interactions."""

from __future__ import annotations

from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp

from ._validation import as_csr, check_int
from .metrics import METRIC_NAMES, _hits, _mean, _per_query, folding_rate

__all__ = ["Recommender", "evaluate"]


class Recommender(Protocol):
    """What :func:`evaluate` needs from a model.

    ``recommend(queries, k=k, exclude=exclude)`` returns ``(ids, scores)``: ids int64 of shape
    (B, >= k), best first, ``-1`` for padding, and scores of the same shape. ``queries`` is either
    a 1-D int64 array of B query ids (models that know their queries, e.g. WALS) or an object
    describing B new queries (e.g. query features); ``exclude`` is None or a scipy CSR matrix of
    shape (B, n_items) whose stored entries must not be recommended to the matching query.
    """

    def recommend(self, queries: Any, *, k: int, exclude: Any = None) -> tuple[Any, Any]: ...


def _is_id_array(queries: object) -> bool:
    if isinstance(queries, (np.ndarray, list, tuple, range)):
        return np.asarray(queries).dtype.kind in "iu"
    return False


def evaluate(
    model: Recommender,
    train: sp.spmatrix | sp.sparray | None,
    test: sp.spmatrix | sp.sparray,
    *,
    k: int = 10,
    exclude_seen: bool = True,
    queries: Any = None,
    query_groups: np.typing.ArrayLike | None = None,
    item_groups: np.typing.ArrayLike | None = None,
) -> dict[str, float]:
    """Recommend for held-out queries and score the lists against their test interactions.

    The contract with the model: this function makes exactly one call,
    ``ids, scores = model.recommend(queries, k=k, exclude=exclude)``, where

    * ``queries`` is, by default, the ids of the rows of ``test`` that have at least one stored
      non-zero entry (int64, sorted). You may pass your own ids (any 1-D integer array-like;
      ``test``/``train`` rows are selected with them), or any other object describing B queries
      (e.g. a ``QueryFeatures`` for new users), which is passed through unchanged; then row ``b``
      of ``test`` (and of ``train``) must belong to query ``b`` of that object.
    * ``exclude`` is ``train`` restricted to the same rows (CSR, B x n_items) when
      ``exclude_seen`` is True, else None: items a query interacted with in training are not
      recommended again (the standard protocol; otherwise they crowd out the held-out items).
    * ``ids`` must be an integer array of shape (B, >= k), best first, ``-1`` for padding.

    Metrics (see :mod:`fastsoftmax.metrics` for the exact definitions) are averaged over the
    queries with at least one test interaction.

    Parameters
    ----------
    model : object with ``recommend(queries, *, k, exclude)``
        See :class:`Recommender`.
    train : scipy sparse matrix, shape (n_queries, n_items), or None
        Training interactions (used only for ``exclude``; may be None if ``exclude_seen`` is
        False).
    test : scipy sparse matrix, shape (n_queries, n_items)
        Held-out interactions: the relevant items.
    k : int, default 10
        Cut-off, >= 1.
    exclude_seen : bool, default True
        Exclude each query's training items from its recommendations.
    queries : array_like of int or object, optional
        Which queries to evaluate (see above).
    query_groups : array_like of int, shape (n_queries,) or (B,), optional
        Query groups; with ``item_groups`` adds ``"folding_rate"``. Indexed by the query ids when
        ``queries`` are ids (shape (n_queries,)), else aligned with the rows (shape (B,)).
    item_groups : array_like of int, shape (n_items,), optional
        Item groups.

    Returns
    -------
    dict
        ``"precision"``, ``"recall"``, ``"ndcg"``, ``"map"``, ``"hit_rate"`` (floats, at ``k``),
        ``"folding_rate"`` if groups were given, ``"k"`` and ``"n_queries"`` (the number of
        queries averaged over).

    Examples
    --------
    >>> import numpy as np, fastsoftmax as fs
    >>> data = fs.datasets.make_categories(500, 100, 5, seed=0)
    >>> train, test = fs.datasets.train_test_split(data.interactions, seed=0)
    >>> class Popular:
    ...     def __init__(self, train):
    ...         self.scores = np.asarray(train.sum(axis=0), dtype=np.float32)
    ...     def recommend(self, queries, *, k, exclude=None):
    ...         q = np.ones((len(queries), 1), dtype=np.float32)
    ...         return fs.topk(q, self.scores.T, k, exclude=exclude)
    >>> result = fs.evaluate(Popular(train), train, test, k=10)
    >>> sorted(result)
    ['hit_rate', 'k', 'map', 'n_queries', 'ndcg', 'precision', 'recall']
    """
    k = check_int(k, "k", minimum=1)
    test = as_csr(test, "test", dtype=None)
    if train is not None:
        train = as_csr(train, "train", dtype=None, shape=test.shape)
    elif exclude_seen:
        raise ValueError("train: required when exclude_seen is True (got None)")
    by_id = queries is None or _is_id_array(queries)
    if by_id and getattr(model, "needs_query_features", False):
        raise TypeError(
            f"queries: {type(model).__name__} recommends from query features: pass "
            "queries=<its features for the rows of test> (row b of test for query b)"
        )
    if queries is None:
        queries = np.flatnonzero(np.diff((test != 0).indptr)).astype(np.int64)
    if by_id:
        ids = np.asarray(queries)
        if ids.ndim != 1:
            raise ValueError(f"queries: expected a 1-D array of query ids, got shape {ids.shape}")
        ids = ids.astype(np.int64, copy=False)
        if ids.size and (ids.min() < 0 or ids.max() >= test.shape[0]):
            raise IndexError(f"queries: ids must lie in [0, {test.shape[0]}) (rows of test)")
        queries = ids
        relevant = test[ids]
        exclude = train[ids] if exclude_seen else None
    else:
        relevant = test
        exclude = train if exclude_seen else None
    rec, _ = model.recommend(queries, k=k, exclude=exclude)
    rec = np.asarray(rec)
    if rec.ndim != 2 or rec.shape[0] != relevant.shape[0] or rec.shape[1] < k:
        raise ValueError(
            f"model.recommend returned ids of shape {rec.shape}; expected "
            f"({relevant.shape[0]}, >= {k})"
        )
    hits, n_rel, k = _hits(rec, relevant, k)
    per = _per_query(hits, n_rel, k)
    result: dict[str, float] = {name: _mean(per[name], n_rel) for name in METRIC_NAMES}
    if (query_groups is None) != (item_groups is None):
        raise ValueError("query_groups, item_groups: pass both or neither")
    if query_groups is not None:
        qg = np.asarray(query_groups)
        if by_id:
            if qg.ndim != 1 or len(qg) != test.shape[0]:
                raise ValueError(
                    f"query_groups: expected shape ({test.shape[0]},) (one per query), "
                    f"got {qg.shape}"
                )
            qg = qg[queries]
        elif qg.ndim != 1 or len(qg) != rec.shape[0]:
            raise ValueError(
                f"query_groups: expected shape ({rec.shape[0]},) (one per row of test), "
                f"got {qg.shape}"
            )
        keep = n_rel > 0
        result["folding_rate"] = folding_rate(rec[keep], qg[keep], item_groups, k)
    result["k"] = k
    result["n_queries"] = int((n_rel > 0).sum())
    return result
