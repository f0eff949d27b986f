"""Weighted matrix factorisation trained by weighted alternating least squares (WALS)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

from . import _core
from ._validation import (
    as_csr,
    as_real_array,
    check_choice,
    check_finite,
    check_int,
    check_num_threads,
    check_real,
    check_seed,
)
from .estimator import Estimator, exclusion_union, most_similar, row_ids
from .io import register_model, save_arrays
from .recommend_all import DEFAULT_BATCH_SIZE, write_recommendations

__all__ = ["WALS"]

_SOLVERS = ("cg", "cholesky")


class _Csr:
    """A CSR matrix as the arrays the core takes (int64 indptr / indices, float32 values)."""

    def __init__(self, indptr, indices, targets, weights, n_cols):
        self.indptr = np.ascontiguousarray(indptr, dtype=np.int64)
        self.indices = np.ascontiguousarray(indices, dtype=np.int64)
        self.targets = np.ascontiguousarray(targets, dtype=np.float32)
        self.weights = None if weights is None else np.ascontiguousarray(weights, np.float32)
        self.n_rows = len(self.indptr) - 1
        self.n_cols = n_cols

    def transpose(self) -> _Csr:
        """The CSR of the transposed matrix (the columns as rows), values permuted along."""
        order = sp.csr_matrix(
            (np.arange(len(self.indices), dtype=np.int64), self.indices, self.indptr),
            shape=(self.n_rows, self.n_cols),
        ).tocsc()
        perm = order.data
        return _Csr(
            order.indptr,
            order.indices,
            self.targets[perm],
            None if self.weights is None else self.weights[perm],
            self.n_rows,
        )


def _training_data(interactions: Any, weights: Any) -> tuple[_Csr, tuple[int, int]]:
    """The training matrix as the core's CSR, rejecting an empty one."""
    rows, shape = _interactions_and_weights(interactions, weights)
    if shape[0] < 1 or shape[1] < 1:
        raise ValueError(f"interactions: expected at least one row and column, got {shape}")
    if rows.indptr[-1] == 0:
        raise ValueError(
            f"interactions: expected at least one stored entry, got none ({shape[0]} x "
            f"{shape[1]} matrix without interactions)"
        )
    return rows, shape


def _pattern(rows: _Csr, shape: tuple[int, int]) -> sp.csr_matrix:
    """The training interactions' sparsity pattern (int8 ones), for ``filter_seen``. It keeps
    the index arrays of ``rows`` (int64) alive after fit and adds one byte per entry."""
    ones = np.ones(len(rows.indices), dtype=np.int8)
    return sp.csr_matrix((ones, rows.indices, rows.indptr), shape=shape, copy=False)


def _interactions_and_weights(
    interactions: Any, weights: Any, *, n_cols: int | None = None
) -> tuple[_Csr, tuple[int, int]]:
    """Validate and convert the user's sparse interactions (and weights of the same sparsity)."""
    a = as_csr(interactions, "interactions")
    if n_cols is not None and a.shape[1] != n_cols:
        raise ValueError(
            f"interactions: expected {n_cols} columns (one per item), got shape {a.shape}"
        )
    if not np.isfinite(a.data).all():
        raise ValueError("interactions: expected finite values, found NaN or inf")
    w_data = None
    if weights is not None:
        w = as_csr(weights, "weights")
        if w.shape != a.shape:
            raise ValueError(
                f"weights: expected the shape of interactions {a.shape}, got {w.shape}"
            )
        if not (np.array_equal(w.indptr, a.indptr) and np.array_equal(w.indices, a.indices)):
            raise ValueError(
                "weights: expected the same sparsity pattern as interactions (one weight per "
                "stored entry)"
            )
        if not np.isfinite(w.data).all():
            raise ValueError("weights: expected finite values, found NaN or inf")
        if (w.data < 0).any():
            raise ValueError(f"weights: expected non-negative values, got {w.data.min()}")
        w_data = w.data
    return _Csr(a.indptr, a.indices, a.data, w_data, a.shape[1]), a.shape


# Rows per independent random stream of the initial embeddings.
_INIT_CHUNK = 4096


def _initial_embeddings(
    seed: int, side: int, start: int, stop: int, dim: int, scale: float
) -> np.ndarray:
    """Rows [start, stop) of the initial query (side 0) or item (side 1) embeddings, N(0, scale^2).

    Chunk k of _INIT_CHUNK rows is drawn from its own stream, seeded by (seed, side, k), so any
    block of rows (a Dask worker's, say) is generated without the others and the values do not
    depend on the blocking. Returns float32, shape (stop - start, dim).
    """
    out = np.empty((stop - start, dim), dtype=np.float32)
    for k in range(start // _INIT_CHUNK, -(-stop // _INIT_CHUNK)):
        lo, hi = k * _INIT_CHUNK, min((k + 1) * _INIT_CHUNK, stop)
        rng = np.random.default_rng([seed, side, k])
        rows = rng.standard_normal((hi - lo, dim), dtype=np.float32)  # a prefix of chunk k
        begin = max(lo, start)
        out[begin - start : hi - start] = rows[begin - lo :]
    out *= np.float32(scale)
    return out


def _objective(
    observed: float, gram_u: np.ndarray, gram_v: np.ndarray, w0: float, lam: float
) -> float:
    """The objective from the observed part (the row losses of the item half-sweep) and the
    Gramians: the all-pairs part is <U^T U, V^T V>_F."""
    return (
        observed
        + w0 * float(np.vdot(gram_u, gram_v))
        + lam * float(np.trace(gram_u) + np.trace(gram_v))
    )


# -- embed_similar: the mean embedding of similar training queries ----------------------------

# Pairs (group, training query) summed per chunk: bounds the temporary copies of embedding rows.
_SUM_CHUNK = 1 << 16
# Entries (float64) of the distance matrix of one block of new queries in the k-NN search.
_KNN_BLOCK = 1 << 22


def _similar_weights(weights: Any, n: int) -> np.ndarray | None:
    """Validate the training queries' weights: None, or n finite values >= 0, one of them > 0."""
    if weights is None:
        return None
    w = as_real_array(weights, "train_weights", dtype=np.float64, ndim=1)
    if len(w) != n:
        raise ValueError(
            f"train_weights: expected {n} values (one per training query), got {len(w)}"
        )
    check_finite(w, "train_weights")
    if (w < 0).any():
        raise ValueError(f"train_weights: expected non-negative values, got {w.min()}")
    if not (w > 0).any():
        raise ValueError("train_weights: expected at least one positive weight, got all zeros")
    return w


def _check_rows(arr: np.ndarray, n: int) -> None:
    if len(arr) != n:
        raise ValueError(
            f"train_features: expected {n} rows (one per training query, as query_embeddings), "
            f"got shape {arr.shape}"
        )


def _as_categories(values: Any, name: str) -> np.ndarray:
    """Categorical values, 1-D (one feature) or 2-D (one column per feature), as int64."""
    arr = np.asarray(values)
    if arr.dtype.kind not in "iu":
        raise TypeError(
            f"{name}: expected integer category values (pass k= for nearest neighbours of real "
            f"feature vectors), got dtype {arr.dtype}"
        )
    if arr.ndim not in (1, 2) or (arr.ndim == 2 and arr.shape[1] == 0):
        raise ValueError(
            f"{name}: expected a 1-D array (one value per query) or a 2-D array with at least "
            f"one column (one per categorical feature), got shape {arr.shape}"
        )
    if arr.dtype == np.uint64 and arr.size and arr.max() > np.uint64(np.iinfo(np.int64).max):
        raise ValueError(f"{name}: expected values below 2**63, got {arr.max()}")
    return arr.astype(np.int64, copy=False)


def _category_groups(
    train_values: Any, new_values: Any, n: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Group ids (the distinct rows of values) of the training and new queries, and their number."""
    train = _as_categories(train_values, "train_features")
    new = _as_categories(new_values, "new_features")
    _check_rows(train, n)
    train, new = (x[:, None] if x.ndim == 1 else x for x in (train, new))
    if new.shape[1] != train.shape[1]:
        raise ValueError(
            f"new_features: expected {train.shape[1]} column(s) as train_features, "
            f"got shape {new.shape}"
        )
    _, inverse = np.unique(np.concatenate([train, new]), axis=0, return_inverse=True)
    inverse = inverse.reshape(-1)
    return inverse[:n], inverse[n:], int(inverse.max()) + 1


def _knn_inputs(
    train_features: Any, new_features: Any, k: Any, n: int
) -> tuple[np.ndarray, np.ndarray, int]:
    """Validate the nearest-neighbour mode's features (float64, 2-D, finite) and k."""
    k = check_int(k, "k", minimum=1)
    if k > n:
        raise ValueError(f"k: expected at most n_queries = {n}, got {k}")
    train = as_real_array(train_features, "train_features", dtype=np.float64, ndim=2)
    new = as_real_array(new_features, "new_features", dtype=np.float64, ndim=2)
    _check_rows(train, n)
    if new.shape[1] != train.shape[1]:
        raise ValueError(
            f"new_features: expected {train.shape[1]} columns as train_features, "
            f"got shape {new.shape}"
        )
    check_finite(train, "train_features")
    check_finite(new, "new_features")
    return train, new, k


def _group_sums(
    groups: np.ndarray,
    members: np.ndarray | None,
    n_groups: int,
    emb: np.ndarray,
    weights: np.ndarray | None,
) -> tuple[np.ndarray, np.ndarray]:
    """Sum ``weights[m] * emb[m]`` into row ``g`` over the pairs (g, m) = (groups[p], members[p])
    (members None: m = p), in float64, rows of a group added in pair order; also each group's
    total weight. Returns float64 (n_groups, dim) and (n_groups,)."""
    sums = np.zeros((n_groups, emb.shape[1]))
    totals = np.zeros(n_groups)
    for lo in range(0, len(groups), _SUM_CHUNK):
        hi = min(lo + _SUM_CHUNK, len(groups))
        ids = np.arange(lo, hi) if members is None else members[lo:hi]
        order = np.argsort(groups[lo:hi], kind="stable")
        ids = ids[order]
        present, starts = np.unique(groups[lo:hi][order], return_index=True)
        w = np.ones(len(ids)) if weights is None else weights[ids]
        rows = emb[ids] if weights is None else emb[ids] * w[:, None]
        sums[present] += np.add.reduceat(rows, starts, axis=0, dtype=np.float64)
        totals[present] += np.add.reduceat(w, starts)
    return sums, totals


def _means(sums: np.ndarray, totals: np.ndarray, fallback: np.ndarray) -> np.ndarray:
    """sums / totals row by row, float32; ``fallback`` for the rows of total weight 0."""
    out = sums / np.where(totals > 0, totals, 1)[:, None]
    out[totals <= 0] = fallback
    return out.astype(np.float32)


def _category_means(
    train_values: Any, new_values: Any, emb: np.ndarray, weights: np.ndarray | None
) -> np.ndarray:
    """The (weighted) mean embedding of the training queries with each new query's values."""
    train_groups, new_groups, n_groups = _category_groups(train_values, new_values, len(emb))
    sums, totals = _group_sums(train_groups, None, n_groups, emb, weights)
    fallback = sums.sum(axis=0) / totals.sum()  # all training queries
    return _means(sums, totals, fallback)[new_groups]


def _nearest(train: np.ndarray, sq_train: np.ndarray, new: np.ndarray, k: int) -> np.ndarray:
    """The k nearest rows of ``train`` to each row of ``new`` (Euclidean; ties: lower index first),
    as int64 (len(new), k), ascending index."""
    # |x - y|^2 - |x|^2: the same order for each new query x.
    d = sq_train[None, :] - 2.0 * (new @ train.T)
    kth = np.partition(d, k - 1, axis=1)[:, k - 1 : k]
    closer = d < kth
    tied = d == kth
    room = k - closer.sum(axis=1, keepdims=True)
    keep = closer | (tied & (np.cumsum(tied, axis=1) <= room))
    return np.nonzero(keep)[1].reshape(len(new), k)


def _knn_means(
    train: np.ndarray, new: np.ndarray, k: int, emb: np.ndarray, weights: np.ndarray | None
) -> np.ndarray:
    """The (weighted) mean embedding of each new query's k nearest training queries; blocks of new
    queries keep the distance matrix at _KNN_BLOCK entries."""
    n = len(train)
    sums, totals = _group_sums(np.zeros(n, dtype=np.int64), None, 1, emb, weights)
    fallback = sums[0] / totals[0]
    sq_train = np.einsum("ij,ij->i", train, train)
    out = np.empty((len(new), emb.shape[1]), dtype=np.float32)
    step = max(1, _KNN_BLOCK // n)
    for lo in range(0, len(new), step):
        block = new[lo : lo + step]
        members = _nearest(train, sq_train, block, k).ravel()
        groups = np.repeat(np.arange(len(block)), k)
        sums, totals = _group_sums(groups, members, len(block), emb, weights)
        out[lo : lo + step] = _means(sums, totals, fallback)
    return out


class WALS(Estimator):
    """Weighted matrix factorisation A ~ U V^T trained by weighted alternating least squares.

    Minimises, over query embeddings U (n_queries x dim) and item embeddings V (n_items x dim),

        sum_{(i,j) observed} w_ij (a_ij - u_i.v_j)^2 + w0 sum_{(i,j) unobserved} (u_i.v_j)^2
        + lambda (|U|^2 + |V|^2)

    where a_ij are the stored values of ``interactions``, w_ij the ``weights`` (default 1) and
    w0 = ``unobserved_weight``. Each iteration solves for every row of U with V fixed, then for
    every row of V with U fixed (in C++, multithreaded over rows, the Gramian computed once per
    half-sweep). No dense n_queries x n_items matrix is ever formed: memory is O(nnz + (n + m) dim).

    With ``unobserved_weight=1``, targets 1 and ``weights = alpha * r``, this is the
    implicit-feedback ALS of Hu, Koren and Volinsky (2008), as in ``implicit``'s
    ``AlternatingLeastSquares`` with ``regularization = lambda``.

    Parameters
    ----------
    dim : int, default 64
        Embedding dimension, >= 1.
    unobserved_weight : float, default 0.1
        w0 >= 0, the weight pulling every unobserved entry towards 0 ("gravity" for MF; raising it
        reduces folding).
    regularization : float, default 0.05
        lambda >= 0 (L2 penalty on both factors). With lambda = 0 a row can be singular, which
        the Cholesky solver reports.
    iterations : int, default 15
        Number of full sweeps (U then V), >= 1.
    solver : {"cg", "cholesky"}, default "cg"
        ``"cholesky"`` solves every row's normal equations exactly (Eigen LLT, float64);
        ``"cg"`` runs ``cg_steps`` conjugate-gradient steps (float32) warm-started from the
        row's current value, without forming the d x d matrix.
    cg_steps : int, default 3
        Conjugate-gradient steps per row and half-sweep, >= 1.
    init_scale : float, default 0.01
        Standard deviation of the Gaussian initial embeddings, >= 0.
    num_threads : int, default 0
        Threads to use; 0 means all cores. Results are bit-identical for a fixed seed and any
        thread count.
    seed : int, default 0
        Seed in [0, 2**64) of the initial embeddings (one random stream per chunk of rows, so
        that :class:`fastsoftmax.distributed.DaskWALS` draws the same values block by block).

    Attributes
    ----------
    item_embeddings : numpy.ndarray, float32, shape (n_items, dim)
        V.
    training_log : list of dict
        ``{"loss": objective}`` after each completed iteration (the exact objective).
    loss_history : list of float
        The same objectives as a list.

    Notes
    -----
    The estimator contract of :mod:`fastsoftmax.estimator`: :meth:`fit` starts afresh,
    :meth:`partial_fit` continues, ``callback(iteration, model, logs)`` returning True stops.

    Examples
    --------
    >>> import numpy as np, scipy.sparse as sp
    >>> import fastsoftmax as fs
    >>> a = sp.random(100, 50, density=0.1, format="csr", random_state=0)
    >>> a.data[:] = 1
    >>> mf = fs.WALS(8, iterations=5).fit(a, show_progress=False)
    >>> mf.query_embeddings().shape, mf.item_embeddings.shape
    ((100, 8), (50, 8))
    """

    def __init__(
        self,
        dim: int = 64,
        *,
        unobserved_weight: float = 0.1,
        regularization: float = 0.05,
        iterations: int = 15,
        solver: str = "cg",
        cg_steps: int = 3,
        init_scale: float = 0.01,
        num_threads: int = 0,
        seed: int = 0,
    ) -> None:
        self.dim = check_int(dim, "dim", minimum=1)
        self.unobserved_weight = check_real(unobserved_weight, "unobserved_weight", minimum=0)
        self.regularization = check_real(regularization, "regularization", minimum=0)
        self.iterations = check_int(iterations, "iterations", minimum=1)
        self.solver = check_choice(solver, "solver", _SOLVERS)
        self.cg_steps = check_int(cg_steps, "cg_steps", minimum=1)
        self.init_scale = check_real(init_scale, "init_scale", minimum=0)
        self.num_threads = check_num_threads(num_threads)
        self.seed = check_seed(seed)
        self._u: np.ndarray | None = None
        self._v: np.ndarray | None = None
        self._seen: sp.csr_matrix | None = None  # the training interactions (filter_seen)
        self.training_log: list[dict[str, float]] = []

    _fitted_state = ("_u", "_v", "_seen", "training_log")

    def _config(self) -> dict[str, Any]:
        return {
            "dim": self.dim,
            "unobserved_weight": self.unobserved_weight,
            "regularization": self.regularization,
            "iterations": self.iterations,
            "solver": self.solver,
            "cg_steps": self.cg_steps,
            "init_scale": self.init_scale,
            "num_threads": self.num_threads,
            "seed": self.seed,
        }

    @property
    def loss_history(self) -> list[float]:
        """list of float: the objective after each completed iteration (``training_log``)."""
        return [log["loss"] for log in self.training_log]

    # -- fitted state -------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if self._u is None:
            raise RuntimeError("WALS: the model is not fitted yet; call fit() first")

    def query_embeddings(self, query_ids: Any = None) -> np.ndarray:
        """Embeddings of training queries: rows of U.

        Parameters
        ----------
        query_ids : int or array_like of int, shape (B,), optional
            Query (row) ids in ``[0, n_queries)``; default all.

        Returns
        -------
        numpy.ndarray, float32, shape (B, dim) (or (n_queries, dim): U itself, not a copy)
        """
        self._check_fitted()
        if query_ids is None:
            return self._u
        return self._u[row_ids(query_ids, "query_ids", len(self._u))]

    @property
    def item_embeddings(self) -> np.ndarray:
        """numpy.ndarray, float32, shape (n_items, dim): the rows of V."""
        self._check_fitted()
        return self._v

    # -- training -----------------------------------------------------------------------------

    def _half_sweep(
        self,
        a: _Csr,
        fixed: np.ndarray,
        gram: np.ndarray,
        x: np.ndarray,
        row_loss: np.ndarray | None = None,
        solver: str | None = None,
    ) -> None:
        _core.wals_solve_rows(
            a.indptr, a.indices, a.targets, a.weights, fixed, gram, x,
            self.unobserved_weight, self.regularization, solver or self.solver, self.cg_steps,
            self.num_threads, row_loss,
        )  # fmt: skip

    def fit(
        self,
        interactions: Any,
        weights: Any = None,
        *,
        show_progress: bool = True,
        callback: Callable[[int, WALS, dict[str, float]], Any] | None = None,
    ) -> WALS:
        """Train U and V from scratch (initial embeddings from ``seed``).

        Parameters
        ----------
        interactions : scipy.sparse matrix or array, shape (n_queries, n_items)
            CSR, CSC or COO (converted once to CSR, float32; duplicates summed). Stored values
            are the targets a_ij (1 for implicit feedback) and must be finite; every stored entry,
            explicit zeros included, is observed.
        weights : scipy.sparse matrix or array, shape (n_queries, n_items), optional
            Weights w_ij >= 0 with exactly the sparsity pattern of ``interactions``. Default: 1
            for every observed entry.
        show_progress : bool, default True
            Draw a tqdm progress bar with the current objective.
        callback : callable, optional
            ``callback(iteration, model, logs)`` after every iteration (``iteration`` from 0
            over all fit / partial_fit calls, ``logs = {"loss": objective}``, the model holds
            the current embeddings and ``training_log``); returning True stops training.

        Returns
        -------
        WALS
            ``self``.

        Raises
        ------
        TypeError
            If ``interactions`` / ``weights`` are not scipy.sparse matrices of real values.
        ValueError
            On NaN / inf values, negative weights, a weights matrix of another shape or
            sparsity, or an empty matrix.
        RuntimeError
            If ``solver="cholesky"`` meets a row whose normal equations are not positive
            definite (possible only with ``regularization=0``).
        KeyboardInterrupt
            On Ctrl-C (noticed within ~50 ms, also while the core runs); the model then holds
            the embeddings and ``training_log`` of the last completed iteration (the initial
            embeddings if none completed) and stays usable.

        Notes
        -----
        Numerics: the Cholesky solver works in float64 and raises the RuntimeError above on a
        singular row; the CG solver (float32) guards its step sizes, so a singular or
        near-singular system (``regularization=0``, duplicate item columns, rows without
        entries and ``unobserved_weight=0``) gives finite embeddings (it then minimises over
        the non-singular directions only), never NaN.
        """
        rows, shape = _training_data(interactions, weights)
        self._u = _initial_embeddings(self.seed, 0, 0, shape[0], self.dim, self.init_scale)
        self._v = _initial_embeddings(self.seed, 1, 0, shape[1], self.dim, self.init_scale)
        self.training_log = []
        self._seen = _pattern(rows, shape)
        return self._sweeps(rows, self.iterations, show_progress, callback)

    def partial_fit(
        self,
        interactions: Any,
        weights: Any = None,
        *,
        iterations: int | None = None,
        show_progress: bool = True,
        callback: Callable[[int, WALS, dict[str, float]], Any] | None = None,
    ) -> WALS:
        """Continue training from the current embeddings (of a fitted or loaded model).

        ``fit(a)`` for n iterations then ``partial_fit(a, iterations=m)`` gives exactly the
        embeddings of ``fit`` for n + m iterations.

        Parameters
        ----------
        interactions, weights, show_progress, callback
            As in :meth:`fit`; the matrix has the fitted shape (n_queries, n_items).
        iterations : int, optional
            Sweeps to run, >= 1; default ``self.iterations``.

        Returns
        -------
        WALS
            ``self``.

        Raises
        ------
        RuntimeError
            If the model is not fitted.
        ValueError
            As in :meth:`fit`, or for a matrix of another shape.
        """
        self._check_fitted()
        n = (
            self.iterations
            if iterations is None
            else check_int(iterations, "iterations", minimum=1)
        )
        rows, shape = _training_data(interactions, weights)
        fitted = (len(self._u), len(self._v))
        if shape != fitted:
            raise ValueError(f"interactions: expected the fitted shape {fitted}, got {shape}")
        self._seen = _pattern(rows, shape)
        return self._sweeps(rows, n, show_progress, callback)

    def _sweeps(self, rows: _Csr, iterations: int, show_progress: bool, callback: Any) -> WALS:
        """``iterations`` sweeps (U, then V) from the current embeddings, logged."""
        u, v = self._u, self._v
        cols = rows.transpose()
        col_loss = np.empty(len(v), dtype=np.float64)
        w0, lam = self.unobserved_weight, self.regularization
        gram_v = _core.wals_gramian(v, self.num_threads)
        with tqdm(total=iterations, disable=not show_progress, desc="WALS") as progress:
            for _ in range(iterations):
                # The half-sweeps update u and v in place; on Ctrl-C (KeyboardInterrupt raised
                # from the core) roll back to the last completed iteration.
                u_done, v_done = u.copy(), v.copy()
                try:
                    self._half_sweep(rows, v, gram_v, u)
                    gram_u = _core.wals_gramian(u, self.num_threads)
                    self._half_sweep(cols, u, gram_u, v, col_loss)
                    gram_v = _core.wals_gramian(v, self.num_threads)
                except BaseException:
                    u[...] = u_done
                    v[...] = v_done
                    raise
                # Observed part from the item half-sweep; the all-pairs part is <U^T U, V^T V>_F.
                logs = {"loss": _objective(float(col_loss.sum()), gram_u, gram_v, w0, lam)}
                self.training_log.append(logs)
                progress.update(1)
                progress.set_postfix(loss=f"{logs['loss']:.6g}")
                if (
                    callback is not None
                    and callback(len(self.training_log) - 1, self, logs) is True
                ):
                    break
        return self

    def objective(self, interactions: Any, weights: Any = None) -> float:
        """The exact training objective of the current embeddings on ``interactions``.

        Parameters
        ----------
        interactions, weights : scipy.sparse, shape (n_queries, n_items)
            As in :meth:`fit`.

        Returns
        -------
        float
            The objective in float64 (computed without a dense n_queries x n_items matrix).
        """
        self._check_fitted()
        rows, shape = _interactions_and_weights(interactions, weights, n_cols=len(self._v))
        if shape[0] != len(self._u):
            raise ValueError(
                f"interactions: expected {len(self._u)} rows (one per query), got shape {shape}"
            )
        return _core.wals_objective(
            rows.indptr, rows.indices, rows.targets, rows.weights, self._u, self._v,
            self.unobserved_weight, self.regularization, self.num_threads,
        )  # fmt: skip

    def fold_in(self, rows: Any, weights: Any = None) -> np.ndarray:
        """Embeddings of new queries from their interactions, with the item embeddings fixed.

        Each new query's embedding is the exact solution (Cholesky, whatever ``solver`` was used
        for training) of its row's normal equations given V; this is the cold-start path of
        matrix factorisation. A query with no interactions gets the zero vector.

        Prefer this to :meth:`embed_similar` whenever the new queries have some interactions:
        it solves exactly for the embedding that explains them. For queries with no
        interactions at all, only their features, use :meth:`embed_similar`.

        Parameters
        ----------
        rows : scipy.sparse matrix or array, shape (n_new, n_items)
            The new queries' interactions (targets), as in :meth:`fit`.
        weights : scipy.sparse, shape (n_new, n_items), optional
            Their weights, same sparsity as ``rows``; default 1.

        Returns
        -------
        numpy.ndarray, float32, shape (n_new, dim)
        """
        self._check_fitted()
        a, shape = _interactions_and_weights(rows, weights, n_cols=len(self._v))
        out = np.zeros((shape[0], self.dim), dtype=np.float32)
        gram_v = _core.wals_gramian(self._v, self.num_threads)
        self._half_sweep(a, self._v, gram_v, out, solver="cholesky")
        return out

    def embed_similar(
        self,
        train_features: Any,
        new_features: Any,
        *,
        k: int | None = None,
        train_weights: Any = None,
    ) -> np.ndarray:
        """Embeddings of new queries from their features alone: the mean query embedding of the
        training queries similar to each.

        The cold-start heuristic for queries with no interactions at all. It is cruder than
        :meth:`fold_in`, which needs the new query's interactions and solves exactly for its
        embedding given V; this needs only features that the training queries have too.

        Two notions of "similar":

        * categorical (``k`` None): the training queries with the same value, or with the same
          value in every column when the features are 2-D (several categorical features);
        * nearest neighbours (``k`` given): the ``k`` training queries nearest by Euclidean
          distance between real feature vectors (float64, as |y|^2 - 2 x.y, so duplicate
          training rows and integer-valued features tie exactly); ties go to the lower index.

        A new query with no similar training query (a category value never seen in training,
        or only similar queries of weight 0) gets the (weighted) mean of all training query
        embeddings, not the zero vector: the zero vector scores every item 0, so its top-k
        would be arbitrary, whereas the mean query ranks the items an average training query
        prefers.

        Parameters
        ----------
        train_features : array_like, shape (n_queries,) or (n_queries, F)
            Features of the training queries, row ``i`` for ``query_embeddings[i]``. Categorical
            mode: integer values, 1-D or one column per categorical feature. Nearest-neighbour
            mode: real numbers, 2-D (converted to float64), finite.
        new_features : array_like, shape (n_new,) or (n_new, F)
            The new queries' features, with the columns of ``train_features``.
        k : int, optional
            Number of nearest neighbours, in [1, n_queries]; selects nearest-neighbour mode.
            Distances are computed for blocks of new queries (about 4M distances at a time),
            never as a dense n_new x n_queries matrix; cost O(n_new n_queries F).
        train_weights : array_like of float, shape (n_queries,), optional
            Non-negative finite weights of the training queries (e.g. their interaction
            counts), at least one positive: each mean is weighted by them. Default: all 1.

        Returns
        -------
        numpy.ndarray, float32, shape (n_new, dim)
            Means computed in float64.

        Raises
        ------
        RuntimeError
            If the model is not fitted.
        TypeError
            If categorical features are not integers or real features are not real numbers.
        ValueError
            On a wrong number of dimensions, rows or columns, ``k`` out of range, or negative,
            NaN / inf or all-zero ``train_weights``; NaN / inf real features.

        Examples
        --------
        >>> import numpy as np, scipy.sparse as sp
        >>> import fastsoftmax as fs
        >>> a = sp.random(100, 50, density=0.1, format="csr", random_state=0)
        >>> mf = fs.WALS(8, iterations=2).fit(a, show_progress=False)
        >>> country = np.arange(100) % 5
        >>> mf.embed_similar(country, np.array([0, 3, 7])).shape  # 7: never seen
        (3, 8)
        >>> x = np.random.default_rng(0).random((100, 4))
        >>> mf.embed_similar(x, x[:2] + 0.01, k=10).shape
        (2, 8)
        """
        self._check_fitted()
        n = len(self._u)
        weights = _similar_weights(train_weights, n)
        if k is None:
            return _category_means(train_features, new_features, self._u, weights)
        train, new, k = _knn_inputs(train_features, new_features, k, n)
        return _knn_means(train, new, k, self._u, weights)

    # -- retrieval ----------------------------------------------------------------------------

    def recommend(
        self, query_ids: Any, k: int = 10, *, exclude: Any = None,
        filter_seen: bool = False, index: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Top-``k`` items by score ``u_q . v_j`` for training queries: exact
        (:func:`fastsoftmax.topk`), or approximate with an ``index`` from :meth:`build_index`.

        Parameters
        ----------
        query_ids : int or array_like of int, shape (B,)
            Query (row) ids in ``[0, n_queries)`` (an int is one query).
        k : int, default 10
            Items per query, >= 1.
        exclude : scipy.sparse matrix, shape (B, n_items), optional
            Items not to recommend, row ``b`` for query ``query_ids[b]``.
        filter_seen : bool, default False
            Also leave out each query's items in the interactions of the last
            :meth:`fit` / :meth:`partial_fit` (not kept by :meth:`save`).
        index : fastsoftmax.IVFIndex or fastsoftmax.ExactIndex, optional
            From :meth:`build_index` on this model as it is now (checked: an index of other
            items is a ValueError).

        Returns
        -------
        ids : numpy.ndarray, int64, shape (B, k)
            Best first; padded with -1 when fewer than ``k`` items are eligible.
        scores : numpy.ndarray, float32, shape (B, k)
            The matching scores (padding: -inf).

        Raises
        ------
        IndexError
            If a query id is out of range.
        ValueError
            With ``filter_seen`` on a model without its training interactions (loaded).
        """
        self._check_fitted()
        ids = row_ids(query_ids, "query_ids", len(self._u))
        if filter_seen:
            if self._seen is None:
                raise ValueError(
                    "filter_seen: the model has no training interactions (it was loaded from "
                    "a file); pass exclude=train[query_ids] instead"
                )
            seen = self._seen[ids]
            exclude = seen if exclude is None else exclusion_union(seen, exclude)
        return self._top_items(self._u[ids], k, exclude, index)

    def recommend_all(
        self,
        k: int = 10,
        *,
        out: str | os.PathLike,
        exclude: Any = None,
        filter_seen: bool = False,
        batch_size: int = DEFAULT_BATCH_SIZE,
        query_labels: Any = None,
        item_labels: Any = None,
        progress: bool | None = None,
        index: Any = None,
    ) -> int:
        """The top-``k`` items of every training query, streamed to the Parquet file ``out``.

        The rows of ``recommend(arange(n_queries), k, exclude=exclude,
        filter_seen=filter_seen, index=index)``, computed ``batch_size`` queries at a time (one
        Parquet row group each), so memory stays O(batch_size * k) whatever n_queries. Long format:
        columns ``query`` (row id or label), ``rank`` (int32, from 1), ``item`` (item id or
        label), ``score`` (float32); padding (fewer than ``k`` eligible items) is left out.
        Written atomically (see :func:`fastsoftmax.recommend_all.write_recommendations`).
        Needs pyarrow (``pip install 'fastsoftmax[data]'``).

        Parameters
        ----------
        k : int, default 10
            Items per query, >= 1.
        out : str or os.PathLike
            The Parquet file (its folder must exist; an existing file is replaced).
        exclude : scipy.sparse matrix, shape (n_queries, n_items), optional
            Items not to recommend, row ``q`` for query ``q`` (e.g. the training interactions
            of a loaded model).
        filter_seen : bool, default False
            Also leave out each query's items in the interactions of the last :meth:`fit` /
            :meth:`partial_fit`, as :meth:`recommend` does (False by default, as there: a
            loaded model does not have them; pass ``exclude=train`` then).
        batch_size : int, default 4096
            Queries per batch, >= 1.
        query_labels : array_like, shape (n_queries,), optional
            Labels (integers or strings, e.g. the original user ids) written instead of the
            query row ids.
        item_labels : array_like, shape (n_items,), optional
            Labels written instead of the item ids.
        progress : bool, optional
            tqdm progress bar on stderr; default: only when stderr is a terminal.
        index : fastsoftmax.IVFIndex or fastsoftmax.ExactIndex, optional
            Approximate search with an index from :meth:`build_index` (as in
            :meth:`recommend`).

        Returns
        -------
        int
            Rows written.

        Raises
        ------
        RuntimeError
            If the model is not fitted.
        ImportError
            If pyarrow is not installed.
        TypeError
            For an argument of the wrong type (``exclude`` not sparse, labels neither integers
            nor strings, ...).
        ValueError
            For ``k`` or ``batch_size`` < 1, ``out`` a folder or in a missing folder, labels of
            the wrong length, ``exclude`` of the wrong shape, or ``filter_seen`` on a model
            without its training interactions (loaded).
        """
        self._check_fitted()
        shape = (len(self._u), len(self._v))
        if filter_seen and self._seen is None:
            raise ValueError(
                "filter_seen: the model has no training interactions (it was loaded from a "
                "file); pass exclude=train instead"
            )
        if exclude is not None:
            exclude = as_csr(exclude, "exclude", dtype=None, shape=shape, canonical=False)

        def batch(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            part = None if exclude is None else exclude[int(rows[0]) : int(rows[-1]) + 1]
            return self.recommend(rows, k, exclude=part, filter_seen=filter_seen, index=index)

        return write_recommendations(
            batch, shape[0], k, out, batch_size=batch_size, query_labels=query_labels,
            item_labels=item_labels, n_items=shape[1], progress=progress,
        )  # fmt: skip

    def similar_queries(self, query_ids: Any, k: int = 10) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` training queries most similar to each given one by cosine similarity of the
        query embeddings (exact); the query itself is left out.

        Parameters
        ----------
        query_ids : int or array_like of int, shape (B,)
            Query (row) ids in ``[0, n_queries)``.
        k : int, default 10
            Queries per query, >= 1.

        Returns
        -------
        ids : numpy.ndarray, int64, shape (B, k)
            Most similar first; padded with -1 when fewer than ``k`` other queries exist.
        scores : numpy.ndarray, float32, shape (B, k)
            Cosine similarities (0 for a zero embedding; padding: -inf).

        Raises
        ------
        IndexError
            If a query id is out of range.
        """
        self._check_fitted()
        return most_similar(self._u, query_ids, "query_ids", k, self.num_threads)

    # -- persistence --------------------------------------------------------------------------

    def _to_arrays(self) -> dict[str, np.ndarray]:
        self._check_fitted()
        return {
            **{name: np.asarray(value) for name, value in self._config().items()},
            "seed": np.uint64(self.seed),  # the whole range [0, 2**64)
            "query_embeddings": self._u,
            "item_embeddings": self._v,
            "loss_history": np.asarray(self.loss_history, dtype=np.float64),
        }

    @classmethod
    def _from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> WALS:
        try:
            model = cls(
                int(arrays["dim"]),
                unobserved_weight=float(arrays["unobserved_weight"]),
                regularization=float(arrays["regularization"]),
                iterations=int(arrays["iterations"]),
                solver=str(arrays["solver"]),
                cg_steps=int(arrays["cg_steps"]),
                init_scale=float(arrays["init_scale"]),
                num_threads=int(arrays["num_threads"]),
                seed=int(arrays["seed"]),
            )
            u = np.ascontiguousarray(arrays["query_embeddings"], dtype=np.float32)
            v = np.ascontiguousarray(arrays["item_embeddings"], dtype=np.float32)
            history = [float(x) for x in arrays["loss_history"]]
        except KeyError as e:
            raise ValueError(f"path: the WALS model file has no field {e}") from None
        if u.ndim != 2 or v.ndim != 2 or u.shape[1] != model.dim or v.shape[1] != model.dim:
            raise ValueError(
                f"path: inconsistent WALS model file (dim {model.dim}, query_embeddings "
                f"{u.shape}, item_embeddings {v.shape})"
            )
        model._u, model._v = u, v
        model.training_log = [{"loss": x} for x in history]
        return model

    def save(self, path: str | os.PathLike) -> None:
        """Save the model (hyperparameters, embeddings, loss history) to the ``.npz`` file
        ``path``, atomically and without pickle; read it back with :func:`fastsoftmax.load`.
        """
        save_arrays(path, "WALS", self._to_arrays())


register_model("WALS", WALS)
