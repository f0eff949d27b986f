"""Non-learned reference models."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ._validation import check_int, check_num_threads
from .retrieval import topk

__all__ = ["Popularity"]


def _n_queries(queries: object) -> int:
    if hasattr(queries, "n_queries"):
        return int(queries.n_queries)
    return len(queries)  # type: ignore[arg-type]


class Popularity:
    """Recommend the items with the most training interactions to every query.

    The score of item j is the number of queries with a positive interaction with j. It is the
    baseline every learned model must beat; it never folds within a category and knows nothing
    about the query.

    Parameters
    ----------
    num_threads : int, default 0
        Threads for retrieval; 0 means all cores.
    """

    def __init__(self, *, num_threads: int = 0) -> None:
        self.num_threads = check_num_threads(num_threads)
        self.item_counts: np.ndarray | None = None

    def fit(self, interactions: sp.spmatrix | sp.sparray) -> Popularity:
        """Count, per item, the queries that interacted with it.

        Parameters
        ----------
        interactions : scipy.sparse matrix, shape (n_queries, n_items)
            Training interactions; entries > 0 count.

        Returns
        -------
        Popularity
            ``self``, with ``item_counts`` (float32, shape (n_items,)) set.
        """
        if not sp.issparse(interactions):
            raise TypeError(
                f"interactions: expected a scipy.sparse matrix, got {type(interactions).__name__}"
            )
        m = sp.csc_matrix(interactions)
        positive = m.data > 0
        self.item_counts = np.bincount(
            np.repeat(np.arange(m.shape[1]), np.diff(m.indptr))[positive], minlength=m.shape[1]
        ).astype(np.float32)
        return self

    @property
    def n_items(self) -> int:
        """Number of items seen in ``fit``."""
        self._check_fitted()
        return len(self.item_counts)

    @property
    def n_parameters(self) -> int:
        """Number of stored numbers (one count per item)."""
        return self.n_items

    def recommend(
        self, queries: object, k: int = 10, *, exclude: sp.spmatrix | sp.sparray | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` most popular items for each query.

        Parameters
        ----------
        queries : sequence
            Anything with a length B (query ids, or a ``QueryFeatures`` object); only the
            number of queries is used.
        k : int, default 10
            Number of items per query.
        exclude : scipy.sparse CSR matrix, shape (B, n_items), optional
            Items to skip per query (for example the items seen in training).

        Returns
        -------
        ids : numpy.ndarray, int64, shape (B, k)
        scores : numpy.ndarray, float32, shape (B, k)
            The interaction counts of the recommended items.
        """
        self._check_fitted()
        k = check_int(k, "k", minimum=1)
        b = _n_queries(queries)
        ones = np.ones((b, 1), dtype=np.float32)
        return topk(ones, self.item_counts[:, None], k, exclude=exclude,
                    num_threads=self.num_threads)  # fmt: skip

    def _check_fitted(self) -> None:
        if self.item_counts is None:
            raise ValueError("Popularity: call fit() before using the model")
