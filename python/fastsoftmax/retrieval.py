"""Exact top-k retrieval by inner product (C++ core)."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from . import _core
from ._validation import (
    as_real_array,
    check_finite,
    check_int,
    check_num_threads,
    check_sparse_structure,
)

__all__ = ["topk"]


def topk(
    queries: np.typing.ArrayLike,
    items: np.typing.ArrayLike,
    k: int,
    *,
    exclude: sp.sparray | sp.spmatrix | None = None,
    num_threads: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-``k`` items by inner product for every query.

    Scores are ``queries[b] @ items[j]`` in float32. Items are scanned in panels of 16 by a
    register-tiled kernel (AVX2 + FMA when the CPU has it, an equivalent scalar kernel
    otherwise); a score touches the query's heap only when it beats the current k-th best, and
    no ``B x n`` score matrix is ever formed, so memory stays ``O(B k)`` for any ``n``.

    Parameters
    ----------
    queries : array_like, shape (B, d)
        Query embeddings; converted to C-contiguous float32 (no copy if they already are).
    items : array_like, shape (n, d)
        Item embeddings; converted like ``queries``. ``n`` may be 0.
    k : int
        Number of items to return per query, >= 1. May exceed ``n``.
    exclude : scipy.sparse matrix or array, shape (B, n), optional
        Items to skip per query, e.g. the training interactions of the queries (``train[ids]``).
        Every stored entry excludes its item, whatever its value. Any sparse format is accepted
        (CSR with sorted indices is used without a copy of the indices).
    num_threads : int, default 0
        Threads to use; 0 means all cores.

    Returns
    -------
    ids : numpy.ndarray, int64, shape (B, k)
        Item ids, best first; ties in score are broken by the lower id. When fewer than ``k`` items
        are eligible the row is padded with ``-1``.
    scores : numpy.ndarray, float32, shape (B, k)
        The matching scores, padded with ``-inf``.

    Notes
    -----
    Each score is one sequential fused multiply-add chain over the ``d`` dimensions, so results
    are bit-identical for every ``num_threads`` and whatever other queries share the batch.
    Scores may differ from ``queries @ items.T`` computed by a BLAS in the last bits. Queries
    must be finite. Items may hold inf / NaN: an item whose score is NaN or ``-inf`` is never
    returned (so a row of ``-inf`` masks an item), one scoring ``+inf`` ranks first; huge finite
    values can overflow a score to ``+-inf`` likewise.

    Safe to call from several Python threads at once (the GIL is released while it runs).

    Raises
    ------
    TypeError
        If ``queries``/``items`` are not real arrays, or ``exclude`` is not a scipy sparse matrix.
    ValueError
        If the shapes do not match, ``queries`` hold NaN or inf, ``k < 1``,
        ``num_threads < 0`` or ``exclude`` has a malformed ``indptr``.
    IndexError
        If ``exclude`` holds an item (or query) index outside its shape.

    Examples
    --------
    >>> import numpy as np, fastsoftmax as fs
    >>> items = np.eye(3, dtype=np.float32)
    >>> ids, scores = fs.topk(np.array([[0.5, 2.0, 1.0]]), items, 2)
    >>> ids.tolist(), scores.tolist()
    ([[1, 2]], [[2.0, 1.0]])
    """
    q = as_real_array(queries, "queries", dtype=np.float32, ndim=2)
    x = as_real_array(items, "items", dtype=np.float32, ndim=2)
    if x.shape[1] != q.shape[1]:
        raise ValueError(
            f"items: expected shape (n, {q.shape[1]}) to match queries of shape {q.shape}, "
            f"got {x.shape}"
        )
    check_finite(q, "queries")  # a NaN / inf query has no meaningful ranking
    k = check_int(k, "k", minimum=1)
    num_threads = check_num_threads(num_threads)
    indptr = indices = None
    if exclude is not None:
        indptr, indices = _exclude_csr(exclude, (q.shape[0], x.shape[0]))
    return _core.topk(q, x, k, indptr, indices, num_threads)


def _exclude_csr(exclude: object, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """(indptr int64, indices int32/int64 with sorted rows) of a sparse ``exclude`` matrix."""
    if not sp.issparse(exclude):
        raise TypeError(
            f"exclude: expected a scipy.sparse matrix of shape {shape}, "
            f"got {type(exclude).__name__}"
        )
    if exclude.shape != shape:
        raise ValueError(
            f"exclude: expected shape {shape} (n_queries, n_items), got {exclude.shape}"
        )
    check_sparse_structure(exclude, "exclude", column="item id")
    csr = exclude.tocsr()
    if not csr.has_sorted_indices:
        csr = csr.sorted_indices()
    indptr = np.ascontiguousarray(csr.indptr, dtype=np.int64)
    indices = csr.indices[: indptr[-1]]
    if indices.dtype not in (np.int32, np.int64):
        indices = indices.astype(np.int64)
    return indptr, np.ascontiguousarray(indices)
