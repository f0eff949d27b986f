"""Datasets with known structure, and honest train/test splits.

* :func:`make_categories` -- a synthetic corpus in which every query and item belongs to one
  category and queries interact (almost) only within their own category: the setting in which
  folding can be measured (:func:`fastsoftmax.metrics.folding_rate`).
* :func:`load_movielens`, :func:`load_csv` -- real interaction files from a local folder.
* :func:`load_parquet` -- interactions from a Parquet file or a folder of them, read in bounded
  batches with pyarrow (optional: ``pip install 'fastsoftmax[data]'``), for data at scale.
* :func:`from_dataframe` -- interactions from a pandas DataFrame or a pyarrow Table (both
  optional dependencies: ``pip install 'fastsoftmax[data]'``), keeping the original ids and,
  optionally, the time of every interaction.
* :func:`train_test_split` (a random share of each query's interactions held out),
  :func:`temporal_split` (each query's latest interactions held out) and
  :func:`cold_start_split` (whole queries held out).

Every loader returns a :class:`Dataset`.
"""

from __future__ import annotations

import csv
import dataclasses
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ._validation import (
    as_csr,
    check_finite,
    check_int,
    check_real,
    check_seed,
    check_sparse_structure,
)
from .sampler import AliasSampler

__all__ = [
    "Dataset",
    "Features",
    "cold_start_split",
    "from_dataframe",
    "load_csv",
    "load_movielens",
    "load_parquet",
    "make_categories",
    "temporal_split",
    "train_test_split",
]


@dataclass
class Features:
    """Query features of N queries, in the three kinds a softmax DNN consumes.

    Attributes
    ----------
    dense : numpy.ndarray, float32, shape (N, F), or None
        Dense real-valued features.
    categorical : dict of str -> numpy.ndarray, int64, shape (N,)
        Categorical features as ids in ``[0, cardinality)``; the cardinality of feature ``name``
        is ``cardinalities[name]``.
    bags : dict of str -> scipy.sparse.csr_matrix, shape (N, vocabulary)
        Bags of ids (e.g. a watch history): the stored entries of row ``b`` are query ``b``'s ids,
        the values their weights.
    cardinalities : dict of str -> int
        Number of distinct values of each categorical feature and vocabulary size of each bag.
    """

    dense: np.ndarray | None = None
    categorical: dict[str, np.ndarray] = field(default_factory=dict)
    bags: dict[str, sp.csr_matrix] = field(default_factory=dict)
    cardinalities: dict[str, int] = field(default_factory=dict)

    @property
    def n_queries(self) -> int:
        """Number of queries N."""
        for v in (self.dense, *self.categorical.values(), *self.bags.values()):
            if v is not None:
                return int(v.shape[0])
        return 0

    def __len__(self) -> int:
        return self.n_queries

    def take(self, rows: np.typing.ArrayLike) -> Features:
        """The features of the queries ``rows`` (int array or boolean mask), in that order."""
        rows = np.asarray(rows)
        return Features(
            dense=None if self.dense is None else self.dense[rows],
            categorical={k: v[rows] for k, v in self.categorical.items()},
            bags={k: sp.csr_matrix(v[rows]) for k, v in self.bags.items()},
            cardinalities=dict(self.cardinalities),
        )


@dataclass
class Dataset:
    """Interactions between queries (users) and items, with side information.

    Attributes
    ----------
    interactions : scipy.sparse.csr_matrix, float32, shape (n_queries, n_items)
        Interaction weights (counts, ratings or 1), canonical CSR (sorted, no duplicates).
    features : Features or None
        Query features, row ``b`` for query ``b``.
    query_groups : numpy.ndarray, int64, shape (n_queries,), or None
        Known group of each query (the category of a synthetic query), if any.
    item_groups : numpy.ndarray, int64, shape (n_items,), or None
        Group of each item (the category; the first genre of a movie), if any.
    query_ids, item_ids : numpy.ndarray, shape (n_queries,) / (n_items,)
        Original id of each row / column (e.g. MovieLens userId / movieId); ``arange`` when the
        data has none. ``user_ids`` is another name for ``query_ids``. Map between original ids
        and indices with :meth:`user_index` / :meth:`item_index` and :meth:`user_id` /
        :meth:`item_id`.
    group_names : list of str or None
        Name of each item group id, when groups have names (genres).
    item_features : dict of str -> scipy.sparse.csr_matrix or numpy.ndarray
        Extra item side information, e.g. ``"genres"``: a multi-hot CSR (n_items x n_genres).
    item_names : numpy.ndarray of str or None
        Item titles, when the files have them.
    name : str
        Where the data came from.
    timestamps : scipy.sparse.csr_matrix, int64 or float64, shape (n_queries, n_items), or None
        Time of each interaction, with exactly the stored entries of ``interactions`` (same
        ``indptr`` and ``indices``): ``timestamps.data[k]`` is the time of
        ``interactions.data[k]``. Datetimes are int64 nanoseconds since 1970-01-01 UTC. Used by
        :func:`temporal_split`.
    """

    interactions: sp.csr_matrix
    features: Features | None = None
    query_groups: np.ndarray | None = None
    item_groups: np.ndarray | None = None
    query_ids: np.ndarray | None = None
    item_ids: np.ndarray | None = None
    group_names: list[str] | None = None
    item_features: dict[str, object] = field(default_factory=dict)
    item_names: np.ndarray | None = None
    name: str = ""
    timestamps: sp.csr_matrix | None = None

    def __post_init__(self) -> None:
        n_q, n_i = self.interactions.shape
        if self.query_ids is None:
            self.query_ids = np.arange(n_q, dtype=np.int64)
        if self.item_ids is None:
            self.item_ids = np.arange(n_i, dtype=np.int64)
        if self.timestamps is not None and not _same_entries(self.timestamps, self.interactions):
            raise ValueError(
                "timestamps: expected a CSR matrix with exactly the stored entries of "
                "interactions (same shape, indptr and indices); replace both together"
            )

    @property
    def user_ids(self) -> np.ndarray:
        """Original id of each row: ``query_ids``, shape (n_queries,)."""
        return self.query_ids

    def user_index(self, ids: np.typing.ArrayLike) -> np.ndarray:
        """Row index of each original user id.

        Parameters
        ----------
        ids : scalar or array-like, any shape
            Original user ids, of the kind of ``user_ids`` (integers or strings).

        Returns
        -------
        numpy.ndarray, int64, same shape as ``ids`` (an int64 scalar for a scalar)
            ``user_ids[result] == ids``.

        Raises
        ------
        KeyError
            If an id is not in ``user_ids``.
        TypeError
            If the ids are strings and ``user_ids`` integers, or the other way round.
        """
        return _lookup(self.query_ids, ids, "user")

    def item_index(self, ids: np.typing.ArrayLike) -> np.ndarray:
        """Column index of each original item id; see :meth:`user_index`.

        Parameters
        ----------
        ids : scalar or array-like, any shape
            Original item ids, of the kind of ``item_ids``.

        Returns
        -------
        numpy.ndarray, int64, same shape as ``ids`` (an int64 scalar for a scalar)
            ``item_ids[result] == ids``.

        Raises
        ------
        KeyError
            If an id is not in ``item_ids``.
        TypeError
            If the ids are not of the kind of ``item_ids``.
        """
        return _lookup(self.item_ids, ids, "item")

    def user_id(self, index: np.typing.ArrayLike) -> np.ndarray:
        """Original id of each row index (the inverse of :meth:`user_index`).

        Unlike ``user_ids[index]``, negative indices (such as the ``-1`` padding of
        :func:`fastsoftmax.topk`) are rejected instead of counting from the end.

        Parameters
        ----------
        index : int or array-like of int, any shape
            Row indices in ``[0, n_queries)``.

        Returns
        -------
        numpy.ndarray, same dtype as ``user_ids``, same shape as ``index``

        Raises
        ------
        IndexError
            If an index is outside ``[0, n_queries)``.
        TypeError
            If ``index`` is not integer.
        """
        return _take(self.query_ids, index, "user")

    def item_id(self, index: np.typing.ArrayLike) -> np.ndarray:
        """Original id of each column index (the inverse of :meth:`item_index`).

        Parameters
        ----------
        index : int or array-like of int, any shape
            Column indices in ``[0, n_items)``; negative ones are rejected.

        Returns
        -------
        numpy.ndarray, same dtype as ``item_ids``, same shape as ``index``

        Raises
        ------
        IndexError
            If an index is outside ``[0, n_items)``.
        TypeError
            If ``index`` is not integer.
        """
        return _take(self.item_ids, index, "item")

    def query_features(self, rows: np.typing.ArrayLike | None = None, *, history: str = "history"):
        """Softmax query features of users: their interactions as the bag ``history`` (the
        ``history=`` feature of :class:`fastsoftmax.SoftmaxModel`), plus ``features``' dense and
        categorical columns.

        Parameters
        ----------
        rows : array-like of int, shape (B,), optional
            Row indices; default all rows.
        history : str, default "history"
            Name of the bag.

        Returns
        -------
        fastsoftmax.QueryFeatures
            B rows; the bag is (B, n_items).
        """
        from .softmax import QueryFeatures

        idx = np.arange(self.n_queries) if rows is None else np.asarray(rows, dtype=np.int64)
        f = self.features
        dense = None if f is None or f.dense is None else f.dense[idx]
        categorical = {} if f is None else {k: v[idx] for k, v in f.categorical.items()}
        return QueryFeatures(dense=dense, categorical=categorical or None,
                             bags={history: self.interactions[idx]})  # fmt: skip

    def recommend(
        self, model: object, user_ids: np.typing.ArrayLike, k: int = 10, *, filter_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-``k`` items of a model fitted on this dataset, for users given by their original
        ids, as original item ids.

        A model of queries by row (:class:`fastsoftmax.WALS`, :class:`fastsoftmax.Popularity`)
        gets the users' rows; a model of query features (:class:`fastsoftmax.SoftmaxModel`, fitted
        on :meth:`query_features`) gets their features, with their interactions as its history
        bag.

        Parameters
        ----------
        model : fitted model with ``recommend(queries, k, exclude=...)``
        user_ids : scalar or array-like, shape (B,)
            Original user ids.
        k : int, default 10
            Items per user (at most n_items).
        filter_seen : bool, default True
            Leave out each user's items in ``interactions``.

        Returns
        -------
        item_ids : numpy.ndarray, dtype of ``item_ids``, shape (B, k)
            Best first. Where fewer than ``k`` items are eligible, the row is padded with -1
            (integer ids) or "" (string ids).
        scores : numpy.ndarray, float32, shape (B, k)
            The model's scores (padding: -inf).

        Raises
        ------
        KeyError
            For a user id not in ``user_ids``.
        """
        rows = np.atleast_1d(self.user_index(user_ids))
        k = min(check_int(k, "k", minimum=1), self.n_items)
        seen = self.interactions[rows] if filter_seen else None
        if getattr(model, "needs_query_features", False):
            history = getattr(model, "history", None) or "history"
            queries: object = self.query_features(rows, history=history)
        else:
            queries = rows
        ids, scores = model.recommend(queries, k=k, exclude=seen)
        ids = np.asarray(ids)
        padding = -1 if self.item_ids.dtype.kind in "iu" else ""
        out = np.where(ids >= 0, self.item_ids[np.maximum(ids, 0)], padding)
        return out.astype(self.item_ids.dtype, copy=False), scores

    @property
    def n_queries(self) -> int:
        """Number of queries (rows)."""
        return int(self.interactions.shape[0])

    @property
    def n_items(self) -> int:
        """Number of items (columns)."""
        return int(self.interactions.shape[1])

    def __repr__(self) -> str:
        return (
            f"Dataset({self.name!r}: {self.n_queries:,} queries x {self.n_items:,} items, "
            f"{self.interactions.nnz:,} interactions)"
        )

    def replace(self, **changes: object) -> Dataset:
        """A copy with some attributes replaced (``dataclasses.replace``)."""
        return dataclasses.replace(self, **changes)


def _same_entries(a: object, b: sp.csr_matrix) -> bool:
    """Whether ``a`` is a CSR matrix with the shape, indptr and indices of ``b``."""
    return (
        sp.issparse(a)
        and a.format == "csr"
        and a.shape == b.shape
        and np.array_equal(a.indptr, b.indptr)
        and np.array_equal(a.indices, b.indices)
    )


def _lookup(universe: np.ndarray, ids: np.typing.ArrayLike, what: str) -> np.ndarray:
    """Position of every id of ``ids`` in ``universe`` (int64, shape of ``ids``)."""
    query = np.asarray(ids)
    numeric = universe.dtype.kind in "iu"
    if query.size and numeric != (query.dtype.kind in "iu"):
        kind = "integers" if numeric else "strings"
        raise TypeError(f"ids: the {what} ids are {kind} ({universe.dtype}), got {query.dtype}")
    if query.size == 0:
        return np.zeros(query.shape, dtype=np.int64)
    order = None if (universe[:-1] <= universe[1:]).all() else np.argsort(universe, kind="stable")
    ordered = universe if order is None else universe[order]
    pos = np.minimum(np.searchsorted(ordered, query), len(ordered) - 1)
    unknown = ordered[pos] != query
    if unknown.any():
        shown = ", ".join(repr(x) for x in np.unique(query[unknown])[:5].tolist())
        raise KeyError(
            f"ids: {int(unknown.sum())} unknown {what} id(s), e.g. {shown} "
            f"(there are {len(universe):,} {what}s)"
        )
    out = (pos if order is None else order[pos]).astype(np.int64)
    return out[()] if out.ndim == 0 else out


def _take(universe: np.ndarray, index: np.typing.ArrayLike, what: str) -> np.ndarray:
    """``universe[index]`` with every index checked to be in ``[0, len(universe))``."""
    idx = np.asarray(index)
    if idx.size == 0:
        return universe[:0].reshape(idx.shape)
    if idx.dtype.kind not in "iu":
        raise TypeError(f"index: expected integer {what} indices, got dtype {idx.dtype}")
    bad = (idx < 0) | (idx >= len(universe))
    if bad.any():
        raise IndexError(
            f"index: {what} index {idx[bad].flat[0]} is out of range [0, {len(universe)})"
        )
    return universe[idx]


def _csr_index_dtype(nnz: int, n_cols: int) -> type:
    """Index dtype of a CSR with ``nnz`` entries and ``n_cols`` columns: int32 while every offset
    and column fits (as scipy would choose), int64 from 2**31 on (scipy keeps int64 arrays whose
    values need it; the C++ core takes int64 either way)."""
    return np.int32 if max(nnz, n_cols) < 2**31 else np.int64


def _csr_from_pairs(
    rows: np.ndarray, cols: np.ndarray, weights: np.ndarray | None, shape: tuple[int, int]
) -> sp.csr_matrix:
    """Canonical float32 CSR from (row, col[, weight]) triples; duplicate pairs are summed
    (without weights: counted)."""
    data = np.ones(len(rows)) if weights is None else np.asarray(weights, dtype=np.float64)
    out = sp.coo_matrix((data, (rows, cols)), shape=shape).tocsr()  # sums duplicates (C++)
    out.sum_duplicates()
    return sp.csr_matrix(out, dtype=np.float32)


def make_categories(
    n_queries: int = 10_000,
    n_items: int = 1_000,
    n_categories: int = 10,
    *,
    seed: int = 0,
    interactions_per_query: float = 20.0,
    in_category: float = 0.95,
    popularity_exponent: float = 1.0,
    history_size: int = 10,
    n_dense: int = 4,
    dense_noise: float = 1.0,
    feature_noise: float = 0.1,
) -> Dataset:
    """A synthetic corpus with known categories ("languages") for measuring folding.

    Generative process (all draws vectorised; the same seed gives the same dataset):

    1. Items are split into ``n_categories`` categories of (almost) equal size, at random; so are
       queries.
    2. Inside each category, items get a random popularity rank ``r = 1, 2, ...`` and weight
       ``r ** -popularity_exponent`` (a power law; 0 gives uniform popularity).
    3. Query ``b`` makes ``1 + Poisson(interactions_per_query - 1)`` draws. Each draw picks the
       query's own category with probability ``in_category``, otherwise one of the other
       categories uniformly, then an item of that category by popularity. Repeated draws of the
       same item add up: ``interactions[b, j]`` is the number of times ``b`` drew ``j``.
    4. Features of each query, as a softmax DNN would see them:

       * ``categorical["category"]``: the query's category, replaced by a uniformly random
         category with probability ``feature_noise``;
       * ``dense`` (``n_dense`` float32 columns): a random per-category centre plus Gaussian noise
         of standard deviation ``dense_noise``;
       * ``bags["history"]``: ``history_size`` further draws of the same process (the query's
         past; weights count repeats). They are separate from ``interactions``, so no split of
         ``interactions`` can leak test items through the features.

    Parameters
    ----------
    n_queries, n_items, n_categories : int
        Corpus size; ``1 <= n_categories <= n_items``. 1e6 x 1e5 with the defaults builds in
        seconds.
    seed : int, default 0
        Seed in [0, 2**64).
    interactions_per_query : float, default 20
        Mean number of draws per query, >= 1.
    in_category : float, default 0.95
        Probability that a draw stays in the query's category, in [0, 1].
    popularity_exponent : float, default 1.0
        Power-law exponent of item popularity within a category, >= 0.
    history_size : int, default 10
        Draws in each query's history bag, >= 0.
    n_dense : int, default 4
        Number of dense features, >= 0 (0 gives ``dense = None``).
    dense_noise : float, default 1.0
        Standard deviation of the noise on the dense features, >= 0.
    feature_noise : float, default 0.1
        Probability that the categorical feature is wrong (uniformly random), in [0, 1].

    Returns
    -------
    Dataset
        ``interactions`` (float32 CSR, n_queries x n_items), ``features``, ``query_groups`` and
        ``item_groups`` (int64 category ids).

    Examples
    --------
    >>> import fastsoftmax as fs
    >>> data = fs.datasets.make_categories(1000, 200, 4, seed=0)
    >>> data.interactions.shape, data.item_groups.max()
    ((1000, 200), np.int64(3))
    """
    n_queries = check_int(n_queries, "n_queries", minimum=1)
    n_items = check_int(n_items, "n_items", minimum=1)
    n_categories = check_int(n_categories, "n_categories", minimum=1)
    if n_categories > n_items:
        raise ValueError(
            f"n_categories: expected at most n_items = {n_items} categories, got {n_categories}"
        )
    seed = check_seed(seed)
    mean = check_real(interactions_per_query, "interactions_per_query", minimum=1.0)
    in_cat = check_real(in_category, "in_category", minimum=0.0, maximum=1.0)
    alpha = check_real(popularity_exponent, "popularity_exponent", minimum=0.0)
    history_size = check_int(history_size, "history_size", minimum=0)
    n_dense = check_int(n_dense, "n_dense", minimum=0)
    dense_noise = check_real(dense_noise, "dense_noise", minimum=0.0)
    feature_noise = check_real(feature_noise, "feature_noise", minimum=0.0, maximum=1.0)

    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x0CA7E9]))
    n_cat = n_categories
    item_groups = (np.arange(n_items, dtype=np.int64) % n_cat)[rng.permutation(n_items)]
    query_groups = (np.arange(n_queries, dtype=np.int64) % n_cat)[rng.permutation(n_queries)]

    # Items sorted by (category, random popularity rank). Categories have one of (at most) two
    # sizes; the rank inside a category of size s is drawn from an alias table over
    # r ** -alpha, r = 1..s, and item = by_cat[cat_start[category] + rank].
    by_cat = np.lexsort((rng.random(n_items), item_groups))
    cat_start = np.searchsorted(item_groups[by_cat], np.arange(n_cat))
    cat_size = np.bincount(item_groups, minlength=n_cat)
    samplers = {
        int(size): AliasSampler(np.arange(1, size + 1, dtype=np.float64) ** -alpha)
        for size in np.unique(cat_size)
    }

    def draw(counts: np.ndarray) -> sp.csr_matrix:
        """counts[b] draws for query b, as a canonical CSR of draw counts."""
        cat = np.repeat(query_groups, counts)
        total = len(cat)
        if n_cat > 1 and in_cat < 1.0:
            leave = np.flatnonzero(rng.random(total) >= in_cat)
            cat[leave] = (cat[leave] + 1 + rng.integers(0, n_cat - 1, len(leave))) % n_cat
        pos = cat_start[cat]
        if len(samplers) == 1:
            (sampler,) = samplers.values()
            pos += sampler.sample(total, seed=int(rng.integers(0, 2**63)))
        else:
            sizes = cat_size[cat]
            for size, sampler in samplers.items():
                sel = np.flatnonzero(sizes == size)
                pos[sel] += sampler.sample(len(sel), seed=int(rng.integers(0, 2**63)))
        indptr = np.zeros(n_queries + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        idx_dtype = _csr_index_dtype(total, n_items)
        out = sp.csr_matrix(
            (
                np.ones(total, dtype=np.float32),
                by_cat[pos].astype(idx_dtype),
                indptr.astype(idx_dtype),
            ),
            shape=(n_queries, n_items),
        )
        out.sum_duplicates()  # sorts each row (C++) and adds repeated draws up
        return out

    counts = 1 + rng.poisson(mean - 1.0, n_queries)
    interactions = draw(counts)

    bags = {}
    if history_size > 0:
        bags["history"] = draw(np.full(n_queries, history_size))
    categorical = query_groups.copy()
    noisy = rng.random(n_queries) < feature_noise
    categorical[noisy] = rng.integers(0, n_cat, noisy.sum())
    dense = None
    if n_dense > 0:
        centres = rng.standard_normal((n_cat, n_dense))
        dense = (
            centres[query_groups] + dense_noise * rng.standard_normal((n_queries, n_dense))
        ).astype(np.float32)
    features = Features(
        dense=dense,
        categorical={"category": categorical},
        bags=bags,
        cardinalities={"category": n_cat, **({"history": n_items} if bags else {})},
    )
    return Dataset(
        interactions=interactions,
        features=features,
        query_groups=query_groups,
        item_groups=item_groups,
        name=f"categories(n_queries={n_queries}, n_items={n_items}, "
        f"n_categories={n_categories}, seed={seed})",
    )


def train_test_split(
    interactions: sp.spmatrix | sp.sparray, *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Hold out a random share of every query's interactions.

    A query with ``m`` interactions (stored non-zero entries) gets
    ``t = floor(test_fraction * m + U)`` of them, ``U ~ Uniform[0, 1)`` (stochastic rounding, so
    the expected share is exactly ``test_fraction``), capped at ``m - 1`` so that every query with
    an interaction keeps at least one for training. Which ones is uniform at random. Duplicate
    entries of the input are summed first, so an interaction is either in train or in test, never
    in both. The same seed gives the same split.

    Parameters
    ----------
    interactions : scipy sparse matrix, shape (n_queries, n_items)
        Any sparse format; explicit zeros are dropped.
    test_fraction : float, default 0.2
        Expected share of each query's interactions held out, in (0, 1).
    seed : int, default 0
        Seed in [0, 2**64).

    Returns
    -------
    train, test : scipy.sparse.csr_matrix, shape (n_queries, n_items)
        Disjoint, canonical, same dtype as the input; ``train + test == interactions``.
    """
    csr = as_csr(interactions, "interactions", dtype=None)
    frac = check_real(
        test_fraction,
        "test_fraction",
        minimum=0,
        maximum=1,
        exclusive_minimum=True,
        exclusive_maximum=True,
    )
    seed = check_seed(seed)
    if (csr.data == 0).any():
        csr = csr.copy()
        csr.eliminate_zeros()
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5B117]))
    n_rows = csr.shape[0]
    m = np.diff(csr.indptr).astype(np.int64)
    t = np.floor(frac * m + rng.random(n_rows)).astype(np.int64)
    t = np.clip(t, 0, np.maximum(m - 1, 0))
    rows = np.repeat(np.arange(n_rows, dtype=np.int64), m)
    # A random order inside each row: sort random keys per row (scipy's per-row C++ sort).
    keys = rng.integers(0, 2**31 - 1, csr.nnz, dtype=np.int32)
    shuffled = sp.csr_matrix(
        (np.arange(csr.nnz, dtype=np.float64), keys, csr.indptr), shape=(n_rows, 2**31 - 1)
    )
    shuffled.has_sorted_indices = False
    shuffled.sort_indices()
    order = shuffled.data.astype(np.int64)
    rank = np.empty(csr.nnz, dtype=np.int64)
    rank[order] = np.arange(csr.nnz) - csr.indptr[rows]
    is_test = rank < t[rows]
    return _select(csr, rows, ~is_test), _select(csr, rows, is_test)


def _select(csr: sp.csr_matrix, rows: np.ndarray, keep: np.ndarray) -> sp.csr_matrix:
    """The stored entries of ``csr`` (row of each entry: ``rows``) where ``keep`` is True, as a
    new canonical CSR."""
    indptr = np.zeros(csr.shape[0] + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows[keep], minlength=csr.shape[0]), out=indptr[1:])
    out = sp.csr_matrix(
        (csr.data[keep], csr.indices[keep], indptr.astype(csr.indptr.dtype)),
        shape=csr.shape,
        dtype=csr.dtype,
    )
    out.has_sorted_indices = True
    return out


def cold_start_split(
    interactions: sp.spmatrix | sp.sparray, *, test_fraction: float = 0.2, seed: int = 0
) -> tuple[np.ndarray, np.ndarray]:
    """Hold out whole queries (cold start).

    ``round(test_fraction * n_queries)`` queries, chosen uniformly at random, are held out; a
    model trained on ``interactions[train_queries]`` has never seen the ``test_queries``.

    Parameters
    ----------
    interactions : scipy sparse matrix, shape (n_queries, n_items)
        Only its number of rows is used.
    test_fraction : float, default 0.2
        Share of queries held out, in (0, 1).
    seed : int, default 0
        Seed in [0, 2**64).

    Returns
    -------
    train_queries, test_queries : numpy.ndarray, int64
        Disjoint, sorted query ids whose union is ``arange(n_queries)``.
    """
    if not sp.issparse(interactions):
        raise TypeError(
            f"interactions: expected a scipy.sparse matrix, got {type(interactions).__name__}"
        )
    frac = check_real(
        test_fraction,
        "test_fraction",
        minimum=0,
        maximum=1,
        exclusive_minimum=True,
        exclusive_maximum=True,
    )
    seed = check_seed(seed)
    n = interactions.shape[0]
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0xC01D]))
    n_test = round(frac * n)
    held = np.zeros(n, dtype=bool)
    held[rng.permutation(n)[:n_test]] = True
    return np.flatnonzero(~held).astype(np.int64), np.flatnonzero(held).astype(np.int64)


def temporal_split(
    interactions: Dataset | sp.spmatrix | sp.sparray,
    timestamps: sp.spmatrix | sp.sparray | None = None,
    *,
    n_last: int = 1,
) -> tuple[sp.csr_matrix, sp.csr_matrix]:
    """Leave the last ``n_last`` interactions of every query out, by time.

    The ``n_last`` latest interactions (stored non-zero entries) of each query go to the test
    part, the rest to the training part. A query with ``n_last`` interactions or fewer keeps all
    of them in training (as :func:`train_test_split`, every query with an interaction keeps at
    least one for training). Ties in time are broken by item index: of two interactions at the
    same time, the one in the higher column counts as the later one (with ids from
    :func:`from_dataframe`: the larger original item id), so the split is deterministic and
    does not depend on the order of the input rows.

    Parameters
    ----------
    interactions : Dataset or scipy sparse matrix, shape (n_queries, n_items)
        A :class:`Dataset` with ``timestamps`` (as :func:`from_dataframe` with
        ``timestamp_col`` returns), or an interaction matrix (any sparse format; duplicate
        entries are summed, explicit zeros dropped).
    timestamps : scipy sparse matrix, shape (n_queries, n_items), optional
        With a matrix (and only then): the time of each interaction, real numbers (e.g. int64
        nanoseconds, float seconds) with exactly the stored entries of ``interactions`` after
        its duplicates are summed, no duplicates of its own.
    n_last : int, default 1
        Interactions held out per query, >= 1.

    Returns
    -------
    train, test : scipy.sparse.csr_matrix, shape (n_queries, n_items)
        Disjoint, canonical, same dtype as the interactions; ``train + test == interactions``.

    Raises
    ------
    TypeError
        If an argument has the wrong type.
    ValueError
        If the timestamps are missing, misaligned with the interactions or not finite.
    """
    csr, times = _interactions_and_times(interactions, timestamps)
    n_last = check_int(n_last, "n_last", minimum=1)
    rows = np.repeat(np.arange(csr.shape[0], dtype=np.int64), np.diff(csr.indptr))
    if (csr.data == 0).any():
        keep = csr.data != 0
        csr, times, rows = _select(csr, rows, keep), times[keep], rows[keep]
    # Sorted by (row, time, column), a row's entries keep their CSR positions as a block. Two
    # stable sorts (the CSR order is already by column within a row) beat one lexsort.
    by_time = np.argsort(times, kind="stable")
    order = by_time[np.argsort(rows[by_time], kind="stable")]
    position = np.empty(csr.nnz, dtype=np.int64)
    position[order] = np.arange(csr.nnz)
    from_end = csr.indptr[rows + 1] - 1 - position  # 0 = the row's latest interaction
    m = np.diff(csr.indptr)[rows]
    is_test = (m > n_last) & (from_end < n_last)
    return _select(csr, rows, ~is_test), _select(csr, rows, is_test)


def _interactions_and_times(
    interactions: object, timestamps: object
) -> tuple[sp.csr_matrix, np.ndarray]:
    """Canonical CSR interactions and the timestamps aligned with their stored entries."""
    if isinstance(interactions, Dataset):
        if timestamps is not None:
            raise ValueError(
                "timestamps: a Dataset brings its own timestamps; pass a matrix to give them"
            )
        if interactions.timestamps is None:
            raise ValueError(
                "interactions: this Dataset has no timestamps (from_dataframe(..., "
                "timestamp_col=...) keeps them); pass a matrix and its timestamps instead"
            )
        interactions, timestamps = interactions.interactions, interactions.timestamps
    csr = as_csr(interactions, "interactions", dtype=None)
    if timestamps is None:
        raise ValueError("timestamps: required with an interaction matrix")
    if not sp.issparse(timestamps):
        raise TypeError(
            f"timestamps: expected a scipy.sparse matrix, got {type(timestamps).__name__}"
        )
    check_sparse_structure(timestamps, "timestamps")
    times = sp.csr_matrix(timestamps)
    if times.dtype.kind not in "iuf":
        raise TypeError(f"timestamps: expected real numbers, got dtype {times.dtype}")
    if not times.has_sorted_indices:
        times = times.copy()
        times.sort_indices()
    if not _same_entries(times, csr):
        raise ValueError(
            "timestamps: expected exactly the stored entries of interactions (same shape, "
            "same (row, column) pairs, no duplicates)"
        )
    if times.dtype.kind == "f":
        check_finite(times.data, "timestamps")
    return csr, times.data


# ---- Data frames (pandas / pyarrow) -------------------------------------------------------------

_DATA_EXTRA = "pip install 'fastsoftmax[data]'"


def from_dataframe(
    df: object,
    user_col: object,
    item_col: object,
    weight_col: object | None = None,
    timestamp_col: object | None = None,
) -> Dataset:
    """Interactions from a table with one row per interaction, keeping the original ids.

    Parameters
    ----------
    df : pandas.DataFrame or pyarrow.Table (or pyarrow.RecordBatch), n rows
        Neither library is a dependency of fastsoftmax (``pip install 'fastsoftmax[data]'``);
        the one ``df`` comes from is used. The index of a DataFrame is ignored.
    user_col, item_col : column name
        Columns of the user (query) ids and the item ids: integers or strings (also as a
        pandas categorical or a pyarrow dictionary), without missing values.
    weight_col : column name, optional
        Column of the interaction weights: finite numbers >= 0. Without it every row weighs 1.
    timestamp_col : column name, optional
        Column of the interaction times: integers, floats or datetimes (pandas ``datetime64``,
        pyarrow ``timestamp`` / ``date``), without missing values. Keeps them for
        :func:`temporal_split`.

    Returns
    -------
    Dataset
        * ``interactions``: canonical float32 CSR, shape (n_users, n_items). Rows of the same
          (user, item) pair are summed (without ``weight_col``: counted); pairs whose weights
          sum to 0 are not stored.
        * ``user_ids`` (= ``query_ids``) / ``item_ids``: the original id of each row / column,
          shape (n_users,) / (n_items,): the sorted unique ids (int64 for integer ids; NumPy
          ``str`` for string ids, in code point order). Map them with
          :meth:`Dataset.user_index`, :meth:`Dataset.item_index`, :meth:`Dataset.user_id` and
          :meth:`Dataset.item_id`.
        * ``timestamps`` (with ``timestamp_col``, else None): CSR with the stored entries of
          ``interactions``; a pair's time is the latest time of its rows. int64 for integer
          times and for datetimes (nanoseconds since 1970-01-01 UTC), float64 for floats.

    Raises
    ------
    TypeError
        If ``df`` is not a DataFrame / Table, or a column has the wrong type (float, boolean
        or mixed ids; non-numeric weights; timestamps neither numbers nor datetimes).
    ValueError
        If ``df`` is empty or lacks a column, or a column has missing values (NaN, None,
        null), and for weights that are negative or not finite. The message starts with the
        argument's name (``user_col: ...``).

    Examples
    --------
    >>> import pandas as pd
    >>> import fastsoftmax as fs
    >>> df = pd.DataFrame({"user": ["bob", "ann", "bob"], "item": [7, 3, 7]})
    >>> data = fs.datasets.from_dataframe(df, "user", "item")
    >>> data.user_ids.tolist(), data.item_ids.tolist()
    (['ann', 'bob'], [3, 7])
    >>> data.interactions.toarray()
    array([[1., 0.],
           [0., 2.]], dtype=float32)
    >>> int(data.user_index("bob")), data.item_id([1]).tolist()
    (1, [7])
    """
    frame = _frame(df)
    columns = {"user_col": user_col, "item_col": item_col, "weight_col": weight_col,
               "timestamp_col": timestamp_col}  # fmt: skip
    for arg, col in columns.items():
        if col is not None or arg in ("user_col", "item_col"):
            frame.check_column(col, arg)
    if frame.n_rows == 0:
        raise ValueError("df: expected at least one interaction, got an empty table")
    rows, user_ids = _sorted_codes(*frame.ids(user_col, "user_col"))
    cols, item_ids = _sorted_codes(*frame.ids(item_col, "item_col"))
    weights = np.ones(frame.n_rows)
    if weight_col is not None:
        weights = _checked_weights(frame.numbers(weight_col, "weight_col"), "weight_col")
    times = None
    if timestamp_col is not None:
        times = frame.times(timestamp_col, "timestamp_col")
        if times.dtype.kind == "f":
            check_finite(times, "timestamp_col")
    interactions, timestamps = _aggregate(
        rows, cols, weights, times, (len(user_ids), len(item_ids))
    )
    return Dataset(interactions=interactions, query_ids=user_ids, item_ids=item_ids,
                   timestamps=timestamps, name=f"from_dataframe({type(df).__name__})")  # fmt: skip


def _frame(df: object) -> _PandasFrame | _ArrowFrame:
    """Column access for a pandas DataFrame or a pyarrow Table / RecordBatch. Neither library
    is imported here: an object of theirs can only exist if they already are."""
    pd, pa = sys.modules.get("pandas"), sys.modules.get("pyarrow")
    if pd is not None and isinstance(df, pd.DataFrame):
        return _PandasFrame(df)
    if pa is not None and isinstance(df, (pa.Table, pa.RecordBatch)):
        return _ArrowFrame(df)
    raise TypeError(
        f"df: expected a pandas.DataFrame or a pyarrow.Table, got {type(df).__name__} "
        f"(both libraries are optional: {_DATA_EXTRA})"
    )


def _reject_missing(missing: np.ndarray, arg: str, what: str, offset: int = 0) -> None:
    """ValueError if any value is missing; ``offset``: the row number of ``missing[0]``."""
    if missing.any():
        raise ValueError(
            f"{arg}: expected no missing {what}, found {int(missing.sum())} (NaN / None / null), "
            f"the first in row {offset + int(np.argmax(missing))}"
        )


def _check_id_kind(kind: str, dtype: object, arg: str) -> None:
    if kind not in ("integer", "string"):
        raise TypeError(
            f"{arg}: expected integer or string ids, got {kind} values (dtype {dtype}); "
            "convert the column, e.g. with .astype(str)"
        )


def _id_values(values: np.ndarray, kind: str) -> np.ndarray:
    """Unique ids as str, or int64 (uint64 from 2**63 on)."""
    if kind == "string":
        return np.asarray(values, dtype=str)
    values = np.asarray(values)
    if values.dtype.kind == "u" and values.max() >= 2**63:
        return values.astype(np.uint64)
    return values.astype(np.int64)


def _sorted_codes(codes: np.ndarray, uniques: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Relabel codes into ``uniques`` (distinct, any order) so that the ids come sorted."""
    ordered, rank = np.unique(uniques, return_inverse=True)
    return rank.reshape(-1)[codes], ordered


def _checked_weights(weights: np.ndarray, arg: str) -> np.ndarray:
    weights = weights.astype(np.float64, copy=False)
    check_finite(weights, arg)
    if (weights < 0).any():
        row = int(np.argmax(weights < 0))
        raise ValueError(f"{arg}: expected weights >= 0, got {weights[row]} in row {row}")
    return weights


def _group_pairs(rows: np.ndarray, cols: np.ndarray, n_cols: int) -> tuple[np.ndarray, np.ndarray]:
    """``(order, starts)``: ``order`` sorts the (row, col) pairs stably; in that order, a new
    pair begins at each position of ``starts``."""
    if (int(rows.max()) + 1) * n_cols < 2**63:  # one int64 key per pair: ~3x faster than lexsort
        key = rows * n_cols + cols
        order = np.argsort(key, kind="stable")
        sorted_keys = [key[order]]
    else:
        order = np.lexsort((cols, rows))
        sorted_keys = [rows[order], cols[order]]
    new = np.zeros(len(order), dtype=bool)
    new[0] = True
    for k in sorted_keys:
        new[1:] |= k[1:] != k[:-1]
    return order, np.flatnonzero(new)


def _aggregate(
    rows: np.ndarray,
    cols: np.ndarray,
    weights: np.ndarray,
    times: np.ndarray | None,
    shape: tuple[int, int],
) -> tuple[sp.csr_matrix, sp.csr_matrix | None]:
    """Canonical float32 CSR of the summed weights of each (row, col) pair, and (with times)
    a CSR of the latest time of each pair with the same stored entries. Zero sums are dropped."""
    order, starts = _group_pairs(rows, cols, shape[1])
    sums = np.add.reduceat(weights[order], starts)
    if sums.max() > np.finfo(np.float32).max:
        raise ValueError("weight_col: the summed weights overflow float32")
    keep = sums != 0
    first = order[starts[keep]]  # one input row of every stored pair, in CSR order
    idx = _csr_index_dtype(len(first), shape[1])
    indptr = np.zeros(shape[0] + 1, dtype=idx)
    np.cumsum(np.bincount(rows[first], minlength=shape[0]), out=indptr[1:])  # int64 sums
    indices = cols[first].astype(idx)
    interactions = sp.csr_matrix((sums[keep].astype(np.float32), indices, indptr), shape=shape)
    if times is None:
        return interactions, None
    latest = np.maximum.reduceat(times[order], starts)[keep]
    return interactions, sp.csr_matrix((latest, indices.copy(), indptr.copy()), shape=shape)


class _PandasFrame:
    """The columns of a pandas.DataFrame as NumPy arrays, checked."""

    def __init__(self, df: object) -> None:
        import pandas as pd

        self.pd, self.df = pd, df
        self.n_rows = len(df)

    def check_column(self, col: object, arg: str) -> None:
        _check_column(list(self.df.columns), col, arg)

    def _series(self, col: object, arg: str, what: str) -> object:
        s = self.df[col]
        _reject_missing(s.isna().to_numpy(), arg, what)
        return s

    def ids(self, col: object, arg: str) -> tuple[np.ndarray, np.ndarray]:
        s = self._series(col, arg, "ids")
        infer = self.pd.api.types.infer_dtype
        kind = infer(s.cat.categories) if s.dtype == "category" else infer(s, skipna=False)
        _check_id_kind(kind, s.dtype, arg)
        codes, uniques = self.pd.factorize(s)
        return codes.astype(np.int64, copy=False), _id_values(np.asarray(uniques), kind)

    def numbers(self, col: object, arg: str) -> np.ndarray:
        s, types = self.df[col], self.pd.api.types
        if types.is_bool_dtype(s) or types.is_complex_dtype(s) or not types.is_numeric_dtype(s):
            raise TypeError(f"{arg}: expected a numeric column, got dtype {s.dtype}")
        s = self._series(col, arg, "values")
        return s.to_numpy(dtype=np.int64 if types.is_integer_dtype(s) else np.float64)

    def times(self, col: object, arg: str) -> np.ndarray:
        s = self.df[col]
        if not self.pd.api.types.is_datetime64_any_dtype(s):
            return self.numbers(col, arg)
        s = self._series(col, arg, "times")
        if getattr(s.dt, "tz", None) is not None:
            s = s.dt.tz_convert(None)  # UTC
        return s.to_numpy(dtype="datetime64[ns]").view(np.int64)


class _ArrowFrame:
    """The columns of a pyarrow.Table (or RecordBatch) as NumPy arrays, checked."""

    def __init__(self, table: object, offset: int = 0) -> None:
        import pyarrow as pa

        self.pa, self.offset = pa, offset  # offset: row number of the first row (in messages)
        self.table = table if isinstance(table, pa.Table) else pa.Table.from_batches([table])
        self.n_rows = self.table.num_rows

    def check_column(self, col: object, arg: str) -> None:
        _check_column(self.table.column_names, col, arg)

    def _column(self, col: str, arg: str, what: str) -> object:
        c = self.table.column(col)
        if c.null_count:
            _reject_missing(c.is_null().to_numpy(), arg, what, self.offset)
        return c

    def ids(self, col: str, arg: str) -> tuple[np.ndarray, np.ndarray]:
        types = self.pa.types
        c = self._column(col, arg, "ids")
        if types.is_dictionary(c.type):
            c = c.cast(c.type.value_type)
        kind = _arrow_id_kind(types, c.type)
        _check_id_kind(kind, c.type, arg)
        encoded = c.dictionary_encode().unify_dictionaries()
        codes = np.concatenate([chunk.indices.to_numpy() for chunk in encoded.chunks])
        uniques = encoded.chunk(0).dictionary.to_numpy(zero_copy_only=False)
        return codes.astype(np.int64), _id_values(uniques, kind)

    def numbers(self, col: str, arg: str) -> np.ndarray:
        types, t = self.pa.types, self.table.column(col).type
        if not (types.is_integer(t) or types.is_floating(t)):
            raise TypeError(f"{arg}: expected a numeric column, got type {t}")
        values = self._column(col, arg, "values").to_numpy()
        return values.astype(np.int64 if types.is_integer(t) else np.float64, copy=False)

    def times(self, col: str, arg: str) -> np.ndarray:
        pa, t = self.pa, self.table.column(col).type
        if not (pa.types.is_timestamp(t) or pa.types.is_date(t)):
            return self.numbers(col, arg)
        c = self._column(col, arg, "times")
        c = c.cast(pa.timestamp("ns", getattr(t, "tz", None)))  # checked: overflow raises
        return c.cast(pa.int64()).to_numpy()


def _arrow_id_kind(types: object, t: object) -> str:
    """The kind of ids of pyarrow type ``t``: "string", "integer", else the type's name."""
    view = getattr(types, "is_string_view", lambda _: False)  # pyarrow >= 16
    text = types.is_string(t) or types.is_large_string(t) or view(t)
    return "string" if text else "integer" if types.is_integer(t) else str(t)


def _check_column(columns: list, col: object, arg: str) -> None:
    count = sum(1 for c in columns if c == col)
    if count == 0:
        shown = columns[:20] + (["..."] if len(columns) > 20 else [])
        raise ValueError(f"{arg}: no column {col!r} in df; its columns are {shown}")
    if count > 1:
        raise ValueError(f"{arg}: df has {count} columns named {col!r}")


# ---- Loaders ------------------------------------------------------------------------------------

ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]  # fmt: skip


def _read_columns(
    path: Path, columns: list[int], *, delimiter: str, skip_header: bool, weight: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Read user ids, item ids (each column int64, or str if not all integers) and optional
    float64 weights from the given column positions of a delimited text file."""
    names = ("user", "item", "weight")[: len(columns)]
    for id_type in ("i8", "U64"):
        dtype = [(names[0], id_type), (names[1], id_type)] + ([("weight", "f8")] if weight else [])
        try:
            table = np.loadtxt(
                path,
                delimiter=delimiter,
                skiprows=1 if skip_header else 0,
                usecols=columns,
                dtype=dtype,
                ndmin=1,
                encoding="utf-8",
                comments=None,
            )
        except ValueError as err:
            if id_type == "U64":
                raise ValueError(f"path: cannot parse {path}: {err}") from None
            continue
        w = table["weight"].astype(np.float64) if weight else None
        # Read as text, a column of integers still becomes int64 (each column on its own, as
        # from_dataframe and load_parquet type them).
        return _integers_if_all(table["user"]), _integers_if_all(table["item"]), w
    raise AssertionError("unreachable")


def _integers_if_all(ids: np.ndarray) -> np.ndarray:
    """``ids`` as int64 if every one is an integer, else unchanged."""
    if ids.dtype.kind in "iu":
        return ids
    try:
        return ids.astype(np.int64)
    except (ValueError, OverflowError):
        return ids


def _index(ids: np.ndarray, universe: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(sorted unique ids, position of every id in them)."""
    uniq = np.unique(ids if universe is None else np.concatenate([universe, ids]))
    return uniq, np.searchsorted(uniq, ids)


def _check_path(path: str | os.PathLike, *, directory: bool) -> Path:
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"path: {str(p)!r} does not exist")
    if directory and not p.is_dir():
        raise NotADirectoryError(f"path: expected a folder, got the file {str(p)!r}")
    if not directory and not p.is_file():
        raise IsADirectoryError(f"path: expected a file, got the folder {str(p)!r}")
    return p


def load_csv(
    path: str | os.PathLike,
    user_col: str | int,
    item_col: str | int,
    weight_col: str | int | None = None,
    *,
    delimiter: str = ",",
    header: bool = True,
) -> Dataset:
    """Load a plain interaction file (one ``user, item[, weight]`` row per interaction).

    Parameters
    ----------
    path : str or path-like
        A delimited text file (UTF-8).
    user_col, item_col : str or int
        Column of the user (query) ids and of the item ids: a name from the header line, or a
        0-based position. Ids may be integers or strings (at most 64 characters).
    weight_col : str or int, optional
        Column of the interaction weights (floats). Without it every row weighs 1.
    delimiter : str, default ","
        Field separator (e.g. ``"\\t"``). Quoted fields are not supported in the id and weight
        columns.
    header : bool, default True
        Whether the first line is a header (required when columns are given by name).

    Returns
    -------
    Dataset
        ``interactions`` (float32 CSR, users x items; rows of the same (user, item) pair are
        summed), ``query_ids`` / ``item_ids``: the original ids of the rows / columns, sorted
        (each int64 when every id of its column is an integer, else str). No features or groups.
        :func:`load_parquet` reads the same from Parquet.

    Raises
    ------
    FileNotFoundError
        If ``path`` does not exist.
    ValueError
        If a column is missing or a value cannot be parsed.
    """
    p = _check_path(path, directory=False)
    cols = [user_col, item_col] + ([] if weight_col is None else [weight_col])
    names = ["user_col", "item_col", "weight_col"]
    positions = []
    header_fields: list[str] | None = None
    if header:
        with p.open(encoding="utf-8", newline="") as f:
            header_fields = [h.strip() for h in next(csv.reader(f, delimiter=delimiter), [])]
    for name, col in zip(names, cols, strict=False):
        if isinstance(col, str):
            if header_fields is None:
                raise ValueError(f"{name}: a column name needs header=True, got {col!r}")
            if col not in header_fields:
                raise ValueError(f"{name}: no column {col!r} in {p.name}; it has {header_fields}")
            positions.append(header_fields.index(col))
        else:
            positions.append(check_int(col, name, minimum=0))
    users, items, weights = _read_columns(
        p, positions, delimiter=delimiter, skip_header=header, weight=weight_col is not None
    )
    query_ids, rows = _index(users)
    item_ids, cols_ = _index(items)
    interactions = _csr_from_pairs(rows, cols_, weights, (len(query_ids), len(item_ids)))
    return Dataset(interactions=interactions, query_ids=query_ids, item_ids=item_ids, name=str(p))


PARQUET_SUFFIXES = (".parquet", ".pq")
_PARQUET_BATCH_ROWS = 1 << 20  # rows decoded at a time: bounds the memory of a reading step


def load_parquet(
    path: str | os.PathLike,
    user_col: str | int,
    item_col: str | int,
    weight_col: str | int | None = None,
    *,
    timestamp_col: str | int | None = None,
) -> Dataset:
    """Load interactions (one ``user, item[, weight]`` row each) from Parquet, in bounded memory.

    The file is read in batches of at most 2**20 rows (``ParquetFile.iter_batches``, row group
    by row group), and only the requested columns. Each batch's ids become NumPy codes at once
    (integers as int64, strings through pyarrow's dictionary encoding: no Python object per
    row), so the peak memory is a few 8-byte arrays of length n_rows plus one batch. Gives the
    :class:`Dataset` of :func:`from_dataframe` on the same table, and of :func:`load_csv` on the
    same rows written as text (with weights >= 0 whose sums are not 0). Needs pyarrow
    (``pip install 'fastsoftmax[data]'``).

    Parameters
    ----------
    path : str or path-like
        A Parquet file, or a folder: then every file under it whose name ends in ``.parquet``
        or ``.pq`` (recursively, in path order; as Spark and pyarrow write data sets; partition
        columns encoded in folder names are not read).
    user_col, item_col : str or int
        Column of the user (query) ids and of the item ids: a name, or a 0-based position in
        the file's schema. Ids are integers (any width; int64 in the result, uint64 from 2**63
        on) or strings (also dictionary-encoded), without nulls.
    weight_col : str or int, optional
        Column of the interaction weights: finite numbers >= 0. Without it every row weighs 1.
    timestamp_col : str or int, optional
        Column of the interaction times (integers, floats, pyarrow ``timestamp`` / ``date``),
        kept for :func:`temporal_split` as in :func:`from_dataframe`.

    Returns
    -------
    Dataset
        * ``interactions``: canonical float32 CSR, shape (n_users, n_items); rows of the same
          (user, item) pair are summed (without ``weight_col``: counted), pairs whose weights sum
          to 0 are not stored. ``indptr`` / ``indices`` are int32 below 2**31 entries, int64
          from there on.
        * ``query_ids`` (= ``user_ids``) / ``item_ids``: the original ids of the rows / columns,
          sorted, shape (n_users,) / (n_items,): int64 (or uint64) for integer ids, NumPy
          ``str`` for string ids.
        * ``timestamps`` (with ``timestamp_col``): as :func:`from_dataframe` returns them.

    Raises
    ------
    ImportError
        If pyarrow is not installed.
    FileNotFoundError
        If ``path`` does not exist.
    TypeError
        If an id column is neither integers nor strings (or integers in one file and strings in
        another), or the weights / times are not numbers.
    ValueError
        If a column is missing (the message starts with the argument's name: ``user_col: ...``),
        a value is null, a weight negative or not finite, a file is not Parquet, or there are no
        rows (an empty file, a folder without Parquet files).
    """
    pq = _pyarrow_parquet()
    files = _parquet_files(path)
    cols = {"user_col": user_col, "item_col": item_col, "weight_col": weight_col,
            "timestamp_col": timestamp_col}  # fmt: skip
    cols = {arg: col for arg, col in cols.items() if col is not None}
    plan = [(f, _parquet_columns(pq, f, cols)) for f in files]  # every schema checked first
    users, items = _IdColumn("user_col"), _IdColumn("item_col")
    weights: list[np.ndarray] = []
    times: list[np.ndarray] = []
    n_rows = 0
    for f, names in plan:
        with pq.ParquetFile(f) as reader:
            wanted = sorted(set(names.values()))
            for batch in reader.iter_batches(batch_size=_PARQUET_BATCH_ROWS, columns=wanted):
                users.add(batch.column(names["user_col"]), n_rows)
                items.add(batch.column(names["item_col"]), n_rows)
                frame = _ArrowFrame(batch, offset=n_rows)  # type and null checks of from_dataframe
                if weight_col is not None:
                    weights.append(frame.numbers(names["weight_col"], "weight_col"))
                if timestamp_col is not None:
                    times.append(frame.times(names["timestamp_col"], "timestamp_col"))
                n_rows += batch.num_rows
    if n_rows == 0:
        raise ValueError(f"path: expected at least one interaction, {str(path)!r} has no rows")
    rows, user_ids = users.codes()
    cols_, item_ids = items.codes()
    w = np.ones(n_rows)
    if weights:
        w = _checked_weights(np.concatenate(weights), "weight_col")
    t = np.concatenate(times) if times else None
    if t is not None and t.dtype.kind == "f":
        check_finite(t, "timestamp_col")
    interactions, timestamps = _aggregate(rows, cols_, w, t, (len(user_ids), len(item_ids)))
    return Dataset(interactions=interactions, query_ids=user_ids, item_ids=item_ids,
                   timestamps=timestamps, name=str(path))  # fmt: skip


def _pyarrow_parquet() -> object:
    """pyarrow.parquet, or an ImportError saying how to install it."""
    try:
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(
            f"load_parquet: reading Parquet files needs pyarrow ({_DATA_EXTRA})"
        ) from e
    return pq


def _parquet_files(path: str | os.PathLike) -> list[Path]:
    """The file ``path``, or the Parquet files under the folder ``path`` (sorted)."""
    p = Path(path)
    if not p.exists():
        raise FileNotFoundError(f"path: {str(p)!r} does not exist")
    if not p.is_dir():
        return [p]
    files = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in PARQUET_SUFFIXES)
    if not files:
        raise ValueError(f"path: the folder {str(p)!r} holds no .parquet / .pq file")
    return files


def _parquet_columns(pq: object, file: Path, cols: dict[str, str | int]) -> dict[str, str]:
    """The column name in ``file`` of each argument of ``cols`` (a name or a position)."""
    try:
        names = pq.read_schema(file).names
    except (OSError, ValueError) as err:  # pyarrow's ArrowInvalid is a ValueError
        raise ValueError(f"path: cannot read {str(file)!r} as Parquet: {err}") from None
    out = {}
    for arg, col in cols.items():
        if isinstance(col, str):
            if col not in names:
                raise ValueError(f"{arg}: no column {col!r} in {file.name}; it has {names}")
            out[arg] = col
        elif check_int(col, arg, minimum=0) < len(names):
            out[arg] = names[col]
        else:
            raise ValueError(f"{arg}: no column at position {col} in {file.name}; it has {names}")
    return out


class _IdColumn:
    """One id column read batch by batch, kept as each batch's dictionary (its distinct ids:
    NumPy int64 / uint64 for integers, pyarrow large_string for strings) and the batch's int32
    codes into it. Hashing, not sorting, per row; no Python object per row."""

    def __init__(self, arg: str) -> None:
        import pyarrow as pa
        import pyarrow.compute as pc

        self.pa, self.pc, self.arg = pa, pc, arg
        self.kind: str | None = None
        self.parts: list[np.ndarray] = []  # per batch: int32 codes into its dictionary
        self.dictionaries: list[object] = []  # per batch: its distinct ids

    def add(self, column: object, offset: int) -> None:
        """Append a batch's ids (a pyarrow Array); ``offset``: its first row number."""
        if column.null_count:
            _reject_missing(column.is_null().to_numpy(zero_copy_only=False), self.arg, "ids",
                            offset)  # fmt: skip
        if self.pa.types.is_dictionary(column.type):  # unused dictionary entries are no ids
            column = column.cast(column.type.value_type)
        kind = _arrow_id_kind(self.pa.types, column.type)
        _check_id_kind(kind, column.type, self.arg)
        if self.kind not in (None, kind):
            raise TypeError(f"{self.arg}: {self.kind} ids in one file, {kind} ids in another")
        self.kind = kind
        encoded = column.dictionary_encode()
        self.parts.append(encoded.indices.to_numpy())
        if kind == "integer":
            ids = encoded.dictionary.to_numpy()
            self.dictionaries.append(ids if ids.dtype == np.uint64 else ids.astype(np.int64))
        else:
            self.dictionaries.append(encoded.dictionary.cast(self.pa.large_string()))

    def codes(self) -> tuple[np.ndarray, np.ndarray]:
        """(int64 code of every row, sorted unique ids): as ``_sorted_codes`` of from_dataframe."""
        parts, self.parts = self.parts, []  # freed as soon as converted
        # Every dictionary entry's code among all distinct ids (the dictionaries together have
        # at most one entry per row, usually far fewer), then every row's through its batch's.
        if self.kind == "integer":
            ids, where = np.unique(_concat_int_ids(self.dictionaries, self.arg),
                                   return_inverse=True)  # fmt: skip
            ids = _id_values(ids, "integer")
        else:
            dictionaries = self.pa.concat_arrays(self.dictionaries)
            universe = self.pc.unique(dictionaries)
            position = self.pc.index_in(dictionaries, value_set=universe).to_numpy()
            ids, rank = np.unique(_id_values(universe.to_numpy(zero_copy_only=False), "string"),
                                  return_inverse=True)  # fmt: skip
            where = rank.reshape(-1)[position]
        # ids sorted (as from_dataframe and load_csv give them); one look-up per row
        where = where.reshape(-1).astype(np.int64, copy=False)
        starts = np.cumsum([0] + [len(d) for d in self.dictionaries])
        codes = np.concatenate([where[s + p] for s, p in zip(starts, parts, strict=False)])
        return codes, ids


def _concat_int_ids(parts: list[np.ndarray], arg: str) -> np.ndarray:
    """The integer ids of all batches as one array: int64, or uint64 when some are >= 2**63
    (uint64 columns)."""
    if all(p.dtype == parts[0].dtype for p in parts):
        return np.concatenate(parts)
    big = any(p.dtype == np.uint64 and p.max(initial=0) >= 2**63 for p in parts)
    negative = any(p.dtype == np.int64 and p.min(initial=0) < 0 for p in parts)
    if big and negative:
        raise TypeError(f"{arg}: ids mix negative integers and integers >= 2**63")
    return np.concatenate([p.astype(np.uint64 if big else np.int64) for p in parts])


def load_movielens(path: str | os.PathLike, *, min_rating: float | None = None) -> Dataset:
    """Load a MovieLens folder (no download: point it at an unpacked archive).

    Two layouts are recognised:

    * ml-100k: ``u.data`` (tab-separated user, item, rating, timestamp), ``u.user``
      (``id|age|gender|occupation|zip``) and ``u.item`` (``id|title|...|19 genre flags``,
      latin-1);
    * ml-latest / ml-latest-small / ml-25m ...: ``ratings.csv``
      (``userId,movieId,rating,timestamp``) and ``movies.csv`` (``movieId,title,genres`` with
      genres separated by ``|``).

    Parameters
    ----------
    path : str or path-like
        The folder.
    min_rating : float, optional
        Without it, interactions are weighted by the rating. With it, a rating >= ``min_rating``
        becomes an interaction of weight 1 and lower ratings are dropped.

    Returns
    -------
    Dataset
        * ``interactions``: float32 CSR, users x movies; the columns are every movie of the movie
          file plus any rated movie missing from it, sorted by movie id;
        * ``query_ids`` / ``item_ids``: the original userId / movieId of each row / column;
        * ``item_groups``: the first listed genre of each movie (int64 index into
          ``group_names``; -1 for a rated movie absent from the movie file);
          ``item_features["genres"]``: all genres, a multi-hot float32 CSR (n_items x n_genres);
          ``item_names``: the titles;
        * ``features`` (ml-100k only; ml-latest has no user file): ``dense`` = age (float32,
          (N, 1)), ``categorical`` = ``"gender"`` (F=0, M=1) and ``"occupation"`` (index into
          the sorted occupations). ``query_groups`` is None.

    Raises
    ------
    FileNotFoundError
        If the folder does not exist.
    ValueError
        If the folder has neither layout, or a file cannot be parsed.
    """
    folder = _check_path(path, directory=True)
    if min_rating is not None:
        min_rating = check_real(min_rating, "min_rating")
    if (folder / "u.data").is_file():
        return _load_ml100k(folder, min_rating)
    if (folder / "ratings.csv").is_file():
        return _load_ml_latest(folder, min_rating)
    found = sorted(x.name for x in folder.iterdir())[:20]
    raise ValueError(
        f"path: {str(folder)!r} is not a MovieLens folder: expected u.data (+ u.user, u.item; "
        f"ml-100k layout) or ratings.csv (+ movies.csv; ml-latest layout), found {found}"
    )


def _ratings_to_interactions(
    users: np.ndarray,
    movies: np.ndarray,
    ratings: np.ndarray,
    movie_universe: np.ndarray,
    user_universe: np.ndarray | None,
    min_rating: float | None,
) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    query_ids, rows = _index(users, user_universe)
    item_ids, cols = _index(movies, movie_universe)
    if min_rating is not None:
        keep = ratings >= min_rating
        rows, cols, ratings = rows[keep], cols[keep], np.ones(int(keep.sum()))
    return (
        _csr_from_pairs(rows, cols, ratings, (len(query_ids), len(item_ids))),
        query_ids,
        item_ids,
    )


def _genre_side_info(
    item_ids: np.ndarray, movie_ids: np.ndarray, genre_rows: list[list[int]], n_genres: int
) -> tuple[np.ndarray, sp.csr_matrix]:
    """item_groups (first genre, -1 if unknown) and the multi-hot genre CSR, aligned with
    item_ids."""
    pos = np.searchsorted(item_ids, movie_ids)
    groups = np.full(len(item_ids), -1, dtype=np.int64)
    groups[pos] = [g[0] if g else -1 for g in genre_rows]
    r = np.repeat(pos, [len(g) for g in genre_rows])
    c = np.array([x for g in genre_rows for x in g], dtype=np.int64)
    multi_hot = sp.csr_matrix(
        (np.ones(len(c), dtype=np.float32), (r, c)), shape=(len(item_ids), n_genres)
    )
    return groups, multi_hot


def _load_ml100k(folder: Path, min_rating: float | None) -> Dataset:
    users, movies, ratings = _read_columns(
        folder / "u.data", [0, 1, 2], delimiter="\t", skip_header=False, weight=True
    )
    movie_ids, titles, genre_rows = [], [], []
    item_file = folder / "u.item"
    if item_file.is_file():
        with item_file.open(encoding="latin-1") as f:
            for line_no, line in enumerate(f, 1):
                fields = line.rstrip("\n").split("|")
                if len(fields) < 2:
                    continue
                try:
                    movie_ids.append(int(fields[0]))
                except ValueError:
                    raise ValueError(f"path: u.item line {line_no}: bad movie id") from None
                titles.append(fields[1])
                flags = fields[-len(ML100K_GENRES) :] if len(fields) >= 5 + 19 else []
                genre_rows.append([g for g, v in enumerate(flags) if v.strip() == "1"])
    movie_ids_arr = np.asarray(movie_ids, dtype=np.int64)

    user_rows = {}
    user_file = folder / "u.user"
    if user_file.is_file():
        with user_file.open(encoding="latin-1") as f:
            for line_no, line in enumerate(f, 1):
                fields = line.rstrip("\n").split("|")
                if len(fields) < 4:
                    continue
                try:
                    user_rows[int(fields[0])] = (float(fields[1]), fields[2], fields[3])
                except ValueError:
                    raise ValueError(
                        f"path: u.user line {line_no}: cannot parse {line!r}"
                    ) from None

    interactions, query_ids, item_ids = _ratings_to_interactions(
        users,
        movies,
        ratings,
        movie_ids_arr,
        np.fromiter(user_rows, dtype=np.int64, count=len(user_rows)),
        min_rating,
    )
    groups, multi_hot = _genre_side_info(item_ids, movie_ids_arr, genre_rows, len(ML100K_GENRES))
    names = np.full(len(item_ids), "", dtype=object)
    names[np.searchsorted(item_ids, movie_ids_arr)] = titles

    features = None
    if user_rows:
        occupations = sorted({v[2] for v in user_rows.values()})
        occ_index = {o: i for i, o in enumerate(occupations)}
        age = np.zeros((len(query_ids), 1), dtype=np.float32)
        gender = np.zeros(len(query_ids), dtype=np.int64)
        occupation = np.zeros(len(query_ids), dtype=np.int64)
        for i, uid in enumerate(query_ids.tolist()):
            a, g, o = user_rows.get(uid, (np.nan, "", ""))
            age[i, 0] = a
            gender[i] = 1 if g == "M" else 0
            occupation[i] = occ_index.get(o, 0)
        features = Features(
            dense=age,
            categorical={"gender": gender, "occupation": occupation},
            cardinalities={"gender": 2, "occupation": len(occupations)},
        )
    return Dataset(
        interactions=interactions,
        features=features,
        item_groups=groups,
        query_ids=query_ids,
        item_ids=item_ids,
        group_names=list(ML100K_GENRES),
        item_features={"genres": multi_hot},
        item_names=names,
        name=str(folder),
    )


def _load_ml_latest(folder: Path, min_rating: float | None) -> Dataset:
    users, movies, ratings = _read_columns(
        folder / "ratings.csv", [0, 1, 2], delimiter=",", skip_header=True, weight=True
    )
    movie_ids, titles, genre_names = [], [], []
    movie_file = folder / "movies.csv"
    if movie_file.is_file():
        with movie_file.open(encoding="utf-8", newline="") as f:
            reader = csv.reader(f)
            next(reader, None)
            for row in reader:
                if len(row) < 3:
                    continue
                try:
                    movie_ids.append(int(row[0]))
                except ValueError:
                    raise ValueError(
                        f"path: movies.csv line {reader.line_num}: bad movieId {row[0]!r}"
                    ) from None
                titles.append(row[1])
                genre_names.append(row[2].split("|") if row[2] else [])
    all_genres = sorted({g for gs in genre_names for g in gs})
    g_index = {g: i for i, g in enumerate(all_genres)}
    genre_rows = [[g_index[g] for g in gs] for gs in genre_names]
    movie_ids_arr = np.asarray(movie_ids, dtype=np.int64)
    interactions, query_ids, item_ids = _ratings_to_interactions(
        users, movies, ratings, movie_ids_arr, None, min_rating
    )
    groups, multi_hot = _genre_side_info(item_ids, movie_ids_arr, genre_rows, len(all_genres))
    names = np.full(len(item_ids), "", dtype=object)
    names[np.searchsorted(item_ids, movie_ids_arr)] = titles
    return Dataset(
        interactions=interactions,
        item_groups=groups,
        query_ids=query_ids,
        item_ids=item_ids,
        group_names=all_genres,
        item_features={"genres": multi_hot},
        item_names=names,
        name=str(folder),
    )
