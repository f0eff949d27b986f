"""The contract every fastsoftmax model follows (:class:`Estimator`).

* ``fit`` trains from scratch; ``partial_fit`` continues from the current parameters.
* ``callback(epoch, model, logs)`` runs after every epoch (a WALS iteration is an epoch);
  returning True stops training. ``training_log`` lists one ``logs`` dict per completed epoch.
* ``query_embeddings(queries)`` and the property ``item_embeddings`` give the two sides of the
  score ``query . item``; ``recommend(queries, k)`` returns ``(ids, scores)`` of shape (B, k)
  for B queries (one query: (1, k)), exactly or, with ``index=model.build_index()``, by
  approximate search; ``recommend_all`` streams every query's top-k to Parquet;
  ``similar_items(item_ids, k)`` ranks items by the cosine of their embeddings.
* Hyperparameters are the constructor's arguments: ``get_params()`` returns them,
  ``set_params(**params)`` changes them (checked as the constructor checks them; they take
  effect at the next ``fit``), and ``repr`` shows those that differ from their defaults.
"""

from __future__ import annotations

import inspect
from typing import Any

import numpy as np
import scipy.sparse as sp

from ._validation import check_sparse_structure

__all__ = ["Estimator"]


class Estimator:
    """Base of :class:`fastsoftmax.WALS` and :class:`fastsoftmax.SoftmaxModel` (see the module
    docstring for the contract). Subclasses implement ``_config()`` (the constructor's
    arguments as stored), ``_fitted_state``, ``item_embeddings`` and ``num_threads``."""

    #: Attributes that hold what fit learns (set_params leaves them alone); every other
    #: attribute an unfitted model has is a (checked) hyperparameter.
    _fitted_state: tuple[str, ...] = ()

    def _config(self) -> dict[str, Any]:
        raise NotImplementedError

    # -- hyperparameters -------------------------------------------------------------------
    def get_params(self) -> dict[str, Any]:
        """The hyperparameters: the constructor's keyword arguments that build an equal,
        unfitted model (``type(m)(**m.get_params())``).

        Returns
        -------
        dict str -> object
        """
        return dict(self._config())

    def set_params(self, **params: Any) -> Estimator:
        """Change hyperparameters (checked as the constructor checks them). They take effect at
        the next :meth:`fit`; a fitted model keeps its parameters until then.

        Parameters
        ----------
        **params
            Constructor arguments by name.

        Returns
        -------
        Estimator
            ``self``.

        Raises
        ------
        ValueError
            For a name the constructor does not take (or a value it rejects; TypeError for a
            value of the wrong type).
        """
        current = self._config()
        unknown = sorted(set(params) - set(current))
        if unknown:
            raise ValueError(
                f"set_params: {type(self).__name__} has no hyperparameter {', '.join(unknown)} "
                f"(it has {', '.join(sorted(current))})"
            )
        checked = type(self)(**{**current, **params})
        for name, value in vars(checked).items():
            if name not in self._fitted_state:
                setattr(self, name, value)
        return self

    def __repr__(self) -> str:
        config = self._config()
        named = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        required = [
            name
            for name, p in inspect.signature(type(self).__init__).parameters.items()
            if name != "self" and p.kind in named and p.default is inspect.Parameter.empty
        ]
        # Defaults as stored (a default-constructed model's config, e.g. {} for None).
        defaults = type(self)(**{name: config[name] for name in required})._config()
        shown = [
            f"{name}={value!r}"
            for name, value in config.items()
            if name in required or not _equal(value, defaults.get(name))
        ]
        return f"{type(self).__name__}({', '.join(shown)})"

    # -- retrieval ---------------------------------------------------------------------------
    def _serving_items(self, rows: np.ndarray | None = None) -> np.ndarray:
        """The item side of the retrieval score (all items, or the given rows), float32 (n, d'):
        the item embeddings; models with more terms in the score (an item bias) add columns."""
        v = np.asarray(self.item_embeddings)
        return v if rows is None else v[rows]

    def _serving_queries(self, queries: np.ndarray) -> np.ndarray:
        """The query side matching :meth:`_serving_items` (B, d')."""
        return queries

    def build_index(self, method: str = "ivf", **params: Any) -> Any:
        """An index over the model's items for :meth:`recommend` (``index=``): approximate
        search for large catalogues.

        The index holds the vectors the model scores with (the item embeddings; for a
        :class:`fastsoftmax.SoftmaxModel` with ``item_bias``, the bias as one more column), so
        ``recommend(..., index=index)`` returns the model's scores. Rebuild it after training
        again: ``recommend`` checks that the index matches the current items.

        Parameters
        ----------
        method : {"ivf", "exact"}, default "ivf"
        **params
            Passed to :func:`fastsoftmax.build_index` (``n_lists``, ``n_probe``, ``seed``, ...);
            ``num_threads`` defaults to the model's.

        Returns
        -------
        fastsoftmax.IVFIndex or fastsoftmax.ExactIndex
        """
        from .ivf_index import build_index

        params.setdefault("num_threads", self.num_threads)
        return build_index(self._serving_items(), method, **params)

    def _top_items(
        self, queries: np.ndarray, k: int, exclude: Any, index: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of the serving score for query embeddings (B, d): exact, or by ``index``
        (checked against the model's items; k beyond n_items padded as in exact search)."""
        from .ivf_index import ExactIndex, IVFIndex
        from .retrieval import topk

        q = self._serving_queries(queries)
        if index is None:
            return topk(q, self._serving_items(), k, exclude=exclude, num_threads=self.num_threads)
        if not isinstance(index, IVFIndex | ExactIndex):
            raise TypeError(
                f"index: expected an index from model.build_index(), got {type(index).__name__}"
            )
        n = len(self.item_embeddings)
        shape = (n, self._serving_items(np.array([0])).shape[1])
        index._check_source(shape, self._serving_items, "index")
        ids, scores = index.search(q, min(k, n), exclude=exclude)
        if k > n:
            ids = np.pad(ids, ((0, 0), (0, k - n)), constant_values=-1)
            scores = np.pad(scores, ((0, 0), (0, k - n)), constant_values=-np.inf)
        return ids, scores

    def similar_items(self, item_ids: Any, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` items most similar to each given item by cosine similarity of the item
        embeddings (exact, via :func:`fastsoftmax.topk`); the item itself is left out.

        Parameters
        ----------
        item_ids : int or array_like of int, shape (B,)
            Item ids in ``[0, n_items)``.
        k : int, default 10
            Items per query item, >= 1.

        Returns
        -------
        ids : numpy.ndarray, int64, shape (B, k)
            Most similar first; padded with -1 when fewer than ``k`` other items exist.
        scores : numpy.ndarray, float32, shape (B, k)
            Cosine similarities in [-1, 1] (0 for items with a zero embedding; padding: -inf).

        Raises
        ------
        IndexError
            If an item id is out of range.
        """
        return most_similar(np.asarray(self.item_embeddings), item_ids, "item_ids", k,
                             self.num_threads)  # fmt: skip


def most_similar(
    v: np.ndarray, ids: Any, name: str, k: int, num_threads: int
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k rows of v by cosine with each of the rows ``ids``, the row itself left out."""
    from .retrieval import topk

    rows = row_ids(ids, name, len(v))
    norms = np.linalg.norm(v, axis=1)
    unit = v / np.where(norms > 0, norms, 1)[:, None].astype(np.float32)
    itself = sp.csr_matrix(
        (np.ones(len(rows), np.float32), rows, np.arange(len(rows) + 1)), shape=(len(rows), len(v))
    )
    return topk(unit[rows], unit, k, exclude=itself, num_threads=num_threads)


def _equal(a: object, b: object) -> bool:
    """a == b for hyperparameter values (arrays compared element-wise)."""
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and np.array_equal(a, b)
    try:
        return bool(a == b)
    except (TypeError, ValueError):
        return False


def row_ids(values: Any, name: str, n: int) -> np.ndarray:
    """An int or 1-D integer array-like of ids checked against [0, n), as int64 (an int is one
    id)."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "iu":  # bool's kind is "b"
        raise TypeError(f"{name}: expected integer ids, got dtype {arr.dtype}")
    arr = np.atleast_1d(arr)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected an int or a 1-D array of ids, got shape {arr.shape}")
    if arr.size and (arr.min() < 0 or arr.max() >= n):
        bad = arr[(arr < 0) | (arr >= n)][0]
        raise IndexError(f"{name}: id {bad} out of range [0, {n})")
    return arr.astype(np.int64, copy=False)


def exclusion_union(seen: sp.csr_matrix, exclude: Any) -> sp.csr_matrix:
    """The entries of either sparse matrix, as a CSR (exclude's shape checked against seen's;
    values do not matter: every stored entry excludes its item)."""
    if not sp.issparse(exclude):
        raise TypeError(
            f"exclude: expected a scipy.sparse matrix of shape {seen.shape}, "
            f"got {type(exclude).__name__}"
        )
    if exclude.shape != seen.shape:
        raise ValueError(f"exclude: expected shape {seen.shape}, got {exclude.shape}")
    check_sparse_structure(exclude, "exclude", column="item id")
    e = sp.csr_matrix(exclude)  # every stored entry counts, whatever its value
    e = sp.csr_matrix((np.ones(e.nnz, np.float32), e.indices, e.indptr), shape=e.shape)
    return (e + seen.astype(np.float32)).tocsr()
