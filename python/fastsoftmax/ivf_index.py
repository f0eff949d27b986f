"""Indexes for maximum-inner-product search: :func:`build_index`, :class:`IVFIndex` (approximate,
C++ core) and :class:`ExactIndex` (exact, :func:`fastsoftmax.topk`).

Both answer ``search(queries, k, exclude=None) -> (ids, scores)`` with the layout of
:func:`fastsoftmax.topk`, save to a ``.npz`` file read back by :func:`fastsoftmax.load`, and can be
passed to ``recommend(..., index=...)`` of :class:`fastsoftmax.WALS` and
:class:`fastsoftmax.SoftmaxModel` (see their ``build_index``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _core
from ._validation import (
    as_real_array,
    check_choice,
    check_finite,
    check_int,
    check_num_threads,
    check_seed,
)
from .io import register_model, save_arrays
from .retrieval import _exclude_csr

__all__ = ["ExactIndex", "IVFIndex", "build_index"]

_METHODS = ("ivf", "exact")
#: Items compared exactly when checking that an index was built for a model's items.
_FINGERPRINT_ROWS = 64


def build_index(
    item_embeddings: np.typing.ArrayLike,
    method: str = "ivf",
    *,
    n_lists: int | None = None,
    n_probe: int | None = None,
    iterations: int = 10,
    max_train: int | None = None,
    clustering: str = "spherical",
    seed: int = 0,
    num_threads: int = 0,
) -> IVFIndex | ExactIndex:
    """An index over item embeddings for top-k search by inner product.

    Parameters
    ----------
    item_embeddings : array_like, shape (n_items, dim)
        The items; converted to C-contiguous float32 (an exact index keeps a read-only view when
        they already are, an IVF index its own copy, in list order). Must be finite.
    method : {"ivf", "exact"}, default "ivf"
        ``"ivf"``: an inverted-file index (k-means lists, approximate; see :class:`IVFIndex`).
        ``"exact"``: :class:`ExactIndex`, exhaustive search with :func:`fastsoftmax.topk`.
    n_lists : int, optional
        IVF only: number of k-means lists, in [1, n_items]. Default ``round(4 sqrt(n_items))``
        (4,000 lists of ~250 items for 1e6 items). More lists cost build time (linear) and
        probe selection per query, and can find more per probe on data with many small
        clusters (bench/README.md).
    n_probe : int, optional
        IVF only: lists scanned per query by default (the recall/speed knob, changeable later
        via ``index.n_probe`` or ``search(n_probe=)``). Default ``max(ceil(n_lists / 250), 8)``
        (at most n_lists): 16 for 1e6 items, recall@10 0.985-0.998 in bench/bench_ann.py.
    iterations : int, default 10
        IVF only: k-means (Lloyd) iterations.
    max_train : int, optional
        IVF only: k-means trains on a seeded sample of this many items (>= n_lists). Default
        ``min(n_items, 256 n_lists)`` (faiss's default too); every item is then assigned to its
        list. Build time grows with ``iterations * max_train * n_lists``: a smaller sample
        builds faster for somewhat lower recall per probe (bench/README.md).
    clustering : {"spherical", "l2"}, default "spherical"
        IVF only: ``"spherical"`` groups items by direction (unit centroids, largest inner
        product) and probes each list by its centroid scaled to the list's largest item norm,
        which keeps the long embeddings of popular items findable; ``"l2"`` is plain k-means
        (nearest mean), probed by the mean. See bench/README.md for the comparison.
    seed : int, default 0
        IVF only: seed of the sample and of the initial centroids.
    num_threads : int, default 0
        Threads for building and, by default, for searching; 0 means all cores.

    Returns
    -------
    IVFIndex or ExactIndex

    Raises
    ------
    TypeError
        If ``item_embeddings`` is not a real array or a count is not an integer.
    ValueError
        For an unknown ``method``, empty or non-finite items, or a parameter out of range.

    Examples
    --------
    >>> import numpy as np, fastsoftmax as fs
    >>> items = np.random.default_rng(0).normal(size=(1000, 16)).astype(np.float32)
    >>> index = fs.build_index(items, n_lists=20, n_probe=20)  # every list: exact
    >>> ids, scores = index.search(items[:2], 3)
    >>> bool((ids == fs.topk(items[:2], items, 3)[0]).all())
    True
    """
    method = check_choice(method, "method", _METHODS)
    clustering = check_choice(clustering, "clustering", ("spherical", "l2"))
    items = as_real_array(item_embeddings, "item_embeddings", dtype=np.float32, ndim=2)
    if items.shape[0] == 0 or items.shape[1] == 0:
        raise ValueError(f"item_embeddings: expected a non-empty (n_items, dim) array, "
                         f"got shape {items.shape}")  # fmt: skip
    check_finite(items, "item_embeddings")
    num_threads = check_num_threads(num_threads)
    if method == "exact":
        extra = {"n_lists": n_lists, "n_probe": n_probe, "max_train": max_train}
        given = [name for name, value in extra.items() if value is not None]
        if given:
            raise ValueError(f"{', '.join(given)}: only for method='ivf'")
        return ExactIndex(items, num_threads=num_threads)
    n = items.shape[0]
    if n_lists is None:
        n_lists = max(1, min(n, round(4 * math.sqrt(n))))
    n_lists = check_int(n_lists, "n_lists", minimum=1)
    if n_lists > n:
        raise ValueError(f"n_lists: expected at most n_items = {n}, got {n_lists}")
    if max_train is None:
        max_train = min(n, 256 * n_lists)
    max_train = check_int(max_train, "max_train", minimum=1)
    if max_train < n_lists:
        raise ValueError(f"max_train: expected at least n_lists = {n_lists}, got {max_train}")
    iterations = check_int(iterations, "iterations", minimum=0)
    core = _core.IvfIndex.build(items, n_lists, iterations, max_train, clustering == "spherical",
                                check_seed(seed), num_threads)  # fmt: skip
    if n_probe is None:
        n_probe = max(math.ceil(n_lists / 250), min(n_lists, 8))
    return IVFIndex(core, n_probe=n_probe, num_threads=num_threads)


class _Index:
    """What both index kinds share: shape, argument checks, the item fingerprint."""

    method: str
    n_items: int
    dim: int
    num_threads: int

    def _vectors_of(self, ids: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _check_search(self, queries: Any, k: Any, exclude: Any, num_threads: Any) -> tuple:
        """Checked (queries, k, exclude indptr / indices, threads); the finiteness of the queries
        is checked by the caller (the IVF binding does it in C++, cheaper for one query)."""
        q = as_real_array(queries, "queries", dtype=np.float32, ndim=2)
        if q.shape[1] != self.dim:
            raise ValueError(
                f"queries: expected shape (B, {self.dim}) for an index of {self.dim}-d items, "
                f"got {q.shape}"
            )
        k = check_int(k, "k", minimum=1)
        if k > self.n_items:
            raise ValueError(f"k: expected at most n_items = {self.n_items}, got {k}")
        threads = self.num_threads if num_threads is None else check_num_threads(num_threads)
        indptr = indices = None
        if exclude is not None:
            indptr, indices = _exclude_csr(exclude, (q.shape[0], self.n_items))
        return q, k, indptr, indices, threads

    def check_items(self, item_embeddings: np.typing.ArrayLike, name: str = "index") -> None:
        """Check that this index was built over these items: the same shape and, for 64 items
        spread over the range, exactly the same vectors.

        Parameters
        ----------
        item_embeddings : array_like, shape (n_items, dim)
        name : str, default "index"
            The argument named in the error.

        Raises
        ------
        ValueError
            If the shape or a compared vector differs.
        """
        items = np.asarray(item_embeddings)
        self._check_source(items.shape, lambda ids: items[ids], name)

    def _check_source(self, shape: tuple, rows_of: Any, name: str) -> None:
        """check_items for items of this shape whose rows ``rows_of(ids)`` returns."""
        if tuple(shape) != (self.n_items, self.dim):
            raise ValueError(
                f"{name}: built for {self.n_items} items of dim {self.dim}, but the items have "
                f"shape {tuple(shape)}; rebuild it (model.build_index())"
            )
        ids = np.unique(np.linspace(0, self.n_items - 1, _FINGERPRINT_ROWS).astype(np.int64))
        if not np.array_equal(self._vectors_of(ids), np.asarray(rows_of(ids), np.float32)):
            raise ValueError(
                f"{name}: built for other item embeddings (a retrained or another model); "
                "rebuild it (model.build_index())"
            )


class ExactIndex(_Index):
    """Exhaustive top-k by inner product over a fixed item matrix (:func:`fastsoftmax.topk`):
    the exact reference with the index interface. Built by :func:`build_index` with
    ``method="exact"``.

    Parameters
    ----------
    item_embeddings : numpy.ndarray, float32, shape (n_items, dim)
        C-contiguous and finite; kept as a read-only view (not copied).
    num_threads : int, default 0
        Default threads of :meth:`search`; 0 means all cores.

    Attributes
    ----------
    n_items, dim : int
    method : str
        ``"exact"``.
    """

    method = "exact"

    def __init__(self, item_embeddings: np.ndarray, *, num_threads: int = 0) -> None:
        items = as_real_array(item_embeddings, "item_embeddings", dtype=np.float32, ndim=2)
        check_finite(items, "item_embeddings")
        self._items = items.view()
        self._items.flags.writeable = False
        self.n_items, self.dim = items.shape
        self.num_threads = check_num_threads(num_threads)

    def _vectors_of(self, ids: np.ndarray) -> np.ndarray:
        return self._items[ids]

    def search(
        self, queries: np.typing.ArrayLike, k: int, *, exclude: Any = None,
        num_threads: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Exact top-``k`` items by inner product for every query.

        Parameters
        ----------
        queries : array_like, shape (B, dim)
            Finite query embeddings.
        k : int
            Items per query, in [1, n_items].
        exclude : scipy.sparse matrix, shape (B, n_items), optional
            Items to skip per query (every stored entry). Rows keep k items while k eligible
            items exist, else they are padded with -1 / -inf.
        num_threads : int, optional
            Default: the index's ``num_threads``.

        Returns
        -------
        ids : numpy.ndarray, int64, shape (B, k)
        scores : numpy.ndarray, float32, shape (B, k)
        """
        q, k, indptr, indices, threads = self._check_search(queries, k, exclude, num_threads)
        check_finite(q, "queries")
        return _core.topk(q, self._items, k, indptr, indices, threads)

    def save(self, path: str | os.PathLike) -> None:
        """Save to a ``.npz`` file (read back with :func:`fastsoftmax.load`).

        Parameters
        ----------
        path : str or os.PathLike
        """
        save_arrays(path, "ExactIndex", {"items": self._items,
                                         "num_threads": np.int64(self.num_threads)})  # fmt: skip

    @classmethod
    def _from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> ExactIndex:
        return cls(np.ascontiguousarray(arrays["items"]), num_threads=int(arrays["num_threads"]))

    def __repr__(self) -> str:
        return f"ExactIndex(n_items={self.n_items}, dim={self.dim})"


class IVFIndex(_Index):
    """Approximate top-k by inner product with an inverted-file index.

    k-means (on a seeded sample) splits the items into ``n_lists`` lists; a query scans the
    ``n_probe`` lists whose centroids have the largest inner product with it and returns the
    best ``k`` items among them by exact inner product. A batch of queries is grouped by list, so
    each probed list is read once and scored against all its queries with the register-tiled
    kernel of :func:`fastsoftmax.topk`. Built by :func:`build_index`.

    ``n_probe`` is the recall/speed knob: ``n_probe = n_lists`` is exact search (same ids and
    scores as :func:`fastsoftmax.topk`). When the probed lists hold fewer than ``k`` eligible
    items (small lists, or ``exclude``), further lists are scanned in the query's centroid
    order, so a row has ``k`` items whenever ``k`` eligible items exist.

    Results are bit-identical for every ``num_threads`` and every batching of the queries.

    Attributes
    ----------
    n_items, dim, n_lists : int
    n_probe : int
        Lists scanned per query by default, in [1, n_lists] (settable).
    method : str
        ``"ivf"``.
    """

    method = "ivf"

    def __init__(self, core: _core.IvfIndex, *, n_probe: int, num_threads: int = 0) -> None:
        self._core = core
        self.n_items, self.dim, self.n_lists = core.n_items, core.dim, core.n_lists
        self.n_probe = n_probe
        self.num_threads = check_num_threads(num_threads)

    @property
    def n_probe(self) -> int:
        """int: lists scanned per query by default, in [1, n_lists]."""
        return self._n_probe

    @n_probe.setter
    def n_probe(self, value: int) -> None:
        self._n_probe = self._check_n_probe(value)

    def _check_n_probe(self, value: Any) -> int:
        value = check_int(value, "n_probe", minimum=1)
        if value > self.n_lists:
            raise ValueError(f"n_probe: expected at most n_lists = {self.n_lists}, got {value}")
        return value

    def _vectors_of(self, ids: np.ndarray) -> np.ndarray:
        return self._core.gather(ids)

    def search(
        self, queries: np.typing.ArrayLike, k: int, *, exclude: Any = None,
        n_probe: int | None = None, num_threads: int | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Approximate top-``k`` items by inner product for every query.

        Parameters
        ----------
        queries : array_like, shape (B, dim)
            Finite query embeddings (float32 C-contiguous input is used without a copy).
        k : int
            Items per query, in [1, n_items].
        exclude : scipy.sparse matrix, shape (B, n_items), optional
            Items to skip per query (every stored entry); rows still get k items while k
            eligible items exist (further lists are scanned), else they are padded with -1.
        n_probe : int, optional
            Lists to scan per query, in [1, n_lists]; default :attr:`n_probe`.
        num_threads : int, optional
            Default: the index's ``num_threads``.

        Returns
        -------
        ids : numpy.ndarray, int64, shape (B, k)
            Best first (score descending, then id ascending).
        scores : numpy.ndarray, float32, shape (B, k)
            Exact inner products of the returned items.

        Raises
        ------
        TypeError, ValueError, IndexError
            For queries of the wrong width or with NaN / inf, ``k`` outside [1, n_items],
            ``n_probe`` outside [1, n_lists] or a malformed ``exclude``.
        """
        q, k, indptr, indices, threads = self._check_search(queries, k, exclude, num_threads)
        probe = self._n_probe if n_probe is None else self._check_n_probe(n_probe)
        return self._core.search(q, k, probe, indptr, indices, threads)

    @property
    def list_sizes(self) -> np.ndarray:
        """int64 array, shape (n_lists,): the number of items in each list."""
        return np.diff(self._core.list_offsets())

    @property
    def centroids(self) -> np.ndarray:
        """float32 array, shape (n_lists, dim): the k-means centroids (a copy)."""
        return self._core.centroids()

    def save(self, path: str | os.PathLike) -> None:
        """Save to a ``.npz`` file (read back with :func:`fastsoftmax.load`; the loaded index
        returns exactly the same results).

        Parameters
        ----------
        path : str or os.PathLike
        """
        save_arrays(path, "IVFIndex", {
            "centroids": self._core.centroids(),
            "list_offsets": self._core.list_offsets(),
            "list_ids": self._core.list_ids(),
            "vectors": self._core.vectors(),
            "n_probe": np.int64(self._n_probe),
            "num_threads": np.int64(self.num_threads),
        })  # fmt: skip

    @classmethod
    def _from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> IVFIndex:
        parts = [np.ascontiguousarray(arrays[name], dtype=dtype) for name, dtype in
                 (("centroids", np.float32), ("list_offsets", np.int64),
                  ("list_ids", np.int64), ("vectors", np.float32))]  # fmt: skip
        core = _core.IvfIndex(*parts)
        return cls(core, n_probe=int(arrays["n_probe"]), num_threads=int(arrays["num_threads"]))

    def __repr__(self) -> str:
        return (f"IVFIndex(n_items={self.n_items}, dim={self.dim}, n_lists={self.n_lists}, "
                f"n_probe={self.n_probe})")  # fmt: skip


register_model("IVFIndex", IVFIndex)
register_model("ExactIndex", ExactIndex)
