"""WALS on a Dask cluster: the row solver of :class:`fastsoftmax.WALS` on every worker.

Needs the optional extra ``fastsoftmax[dask]`` (``dask[distributed]``). The data stay on the
workers as row blocks (CSR of the query rows) and column blocks (CSR of the item rows, i.e. the CSC
of the same data), each block with its own factor rows. A half-sweep reduces the blocks' partial
Gramians (d x d each) in block order, sends every block only the fixed-side factor rows its
non-zeros touch, and solves the block's rows with the C++ kernel of ``fs.WALS``. Dask moves the
data and schedules the tasks; nothing here opens a socket.
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
from tqdm import tqdm

try:
    import dask
    import dask.array as da
    import distributed
    from dask.sizeof import sizeof
except ImportError as e:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "fastsoftmax.distributed needs Dask: pip install 'fastsoftmax[dask]' "
        "(dask[distributed] >= 2024.1)"
    ) from e

from . import _core
from ._validation import as_csr, check_int
from .wals import WALS, _Csr, _initial_embeddings, _interactions_and_weights, _objective

__all__ = ["DaskWALS"]

# -- what lives on the workers ------------------------------------------------------------------


@dataclass
class _Block:
    """A block of rows of one side, ready to solve.

    ``csr`` holds the block's entries with column ids remapped to positions in ``touched``, the
    sorted ids of the fixed-side rows the block's entries touch; ``splits[c]:splits[c + 1]`` is
    the part of ``touched`` inside fixed-side block c (fixed-side blocks are the ranges
    ``fixed_bounds[c]:fixed_bounds[c + 1]``). Concatenating the pieces sent by the fixed-side
    blocks in block order gives the compact fixed factors, row k for fixed row ``touched[k]``.
    """

    csr: _Csr
    touched: np.ndarray
    splits: np.ndarray
    fixed_bounds: np.ndarray


@dataclass
class _Factors:
    """A block's factor rows after a half-sweep (or initialisation), with the small results."""

    x: np.ndarray  # float32 (rows, dim)
    gram: np.ndarray  # float64 (dim, dim): x^T x
    loss: float  # observed part of the objective over the block's rows (0 if not computed)
    received: int  # fixed-side factor rows the solve received


def _csr_nbytes(a: _Csr) -> int:
    arrays = (a.indptr, a.indices, a.targets, a.weights)
    return sum(x.nbytes for x in arrays if x is not None)


# Dask places tasks and decides transfers by the size of their inputs: tell it the real sizes.
sizeof.register(_Csr)(_csr_nbytes)
sizeof.register(_Block)(lambda b: _csr_nbytes(b.csr) + b.touched.nbytes + b.splits.nbytes)
sizeof.register(_Factors)(lambda f: f.x.nbytes + f.gram.nbytes + 64)


def _task_threads(num_threads: int) -> int:
    """Threads for the C++ kernel inside a task: the given number, or the worker's thread count."""
    if num_threads:
        return num_threads
    try:
        return distributed.get_worker().state.nthreads
    except ValueError:  # not on a worker (a synchronous scheduler): all cores
        return 0


# -- tasks ----------------------------------------------------------------------------------------


def _to_rows(interactions: Any, weights: Any) -> _Csr:
    """A user's row block (scipy.sparse) checked and converted as ``fs.WALS.fit`` does."""
    rows, _ = _interactions_and_weights(interactions, weights)
    return rows


def _hstack(*chunks: Any) -> sp.csr_matrix:
    """One row of chunks of a dask array of scipy.sparse matrices as one CSR block."""
    return sp.hstack([as_csr(c, "interactions") for c in chunks], format="csr")


def _delayed_hstack(row: Sequence[Any]) -> Any:
    """A Delayed CSR block from one row of a dask array's Delayed chunks."""
    return dask.delayed(_hstack, pure=True)(*row)


def _shape(rows: _Csr) -> tuple[int, int]:
    return rows.n_rows, rows.n_cols


def _column_histogram(rows: _Csr, unit: int) -> np.ndarray:
    """Entries per group of ``unit`` columns (the load balance of the column blocks)."""
    return np.bincount(rows.indices // unit, minlength=-(-rows.n_cols // unit))


def _split_columns(rows: _Csr, row_offset: int, col_bounds: np.ndarray) -> list[tuple]:
    """The entries of a row block cut into the column blocks: per column block, (global row id,
    column id within the block, target, weight) in row-major order."""
    row_ids = np.repeat(np.arange(rows.n_rows, dtype=np.int64), np.diff(rows.indptr)) + row_offset
    block = np.searchsorted(col_bounds, rows.indices, side="right") - 1
    order = np.argsort(block, kind="stable")
    cuts = np.searchsorted(block[order], np.arange(len(col_bounds)))
    pieces = []
    for c in range(len(col_bounds) - 1):
        take = order[cuts[c] : cuts[c + 1]]
        pieces.append(
            (
                row_ids[take],
                rows.indices[take] - col_bounds[c],
                rows.targets[take],
                None if rows.weights is None else rows.weights[take],
            )
        )
    return pieces


def _assemble_columns(n_items: int, n_queries: int, anchor: Any, *pieces: tuple) -> _Csr:
    """The CSR of a column block (its items as rows, query ids as columns) from the pieces of
    every row block, in row-block order. Within an item, entries are in query order, as in the
    transpose of ``fs.WALS``. ``anchor`` (unused) is a row block: Dask runs the task where it is,
    which spreads the column blocks over the workers like the row blocks."""
    rows = np.concatenate([p[0] for p in pieces])
    cols = np.concatenate([p[1] for p in pieces])
    targets = np.concatenate([p[2] for p in pieces])
    weighted = pieces[0][3] is not None
    order = np.argsort(cols, kind="stable")  # row ids already ascending: stays so within items
    indptr = np.zeros(n_items + 1, dtype=np.int64)
    np.cumsum(np.bincount(cols, minlength=n_items), out=indptr[1:])
    weights = np.concatenate([p[3] for p in pieces])[order] if weighted else None
    return _Csr(indptr, rows[order], targets[order], weights, n_queries)


def _compact(rows: _Csr, fixed_bounds: np.ndarray) -> _Block:
    """Remap a block's column ids to the fixed-side rows it touches (see _Block)."""
    touched, local = np.unique(rows.indices, return_inverse=True)
    csr = _Csr(rows.indptr, local.reshape(-1), rows.targets, rows.weights, len(touched))
    return _Block(csr, touched, np.searchsorted(touched, fixed_bounds), fixed_bounds)


def _counts(block: _Block) -> np.ndarray:
    """How many rows of each fixed-side block this block needs."""
    return np.diff(block.splits)


def _needed(block: _Block, c: int) -> np.ndarray:
    """The ids, local to fixed-side block c, of the rows of c this block needs (sorted)."""
    lo, hi = block.splits[c], block.splits[c + 1]
    return block.touched[lo:hi] - block.fixed_bounds[c]


def _relocated(ids: np.ndarray, anchor: _Block) -> np.ndarray:
    """The same ids under a key of their own on the worker of the fixed-side block ``anchor``
    (unused: Dask runs the task where it is), so they stay there for every half-sweep instead
    of being a replica that Dask may drop and move again."""
    return ids


def _take_rows(factors: _Factors, ids: np.ndarray) -> np.ndarray:
    """The rows ``ids`` of a block's factors: what that block sends to one solving block."""
    return factors.x[ids]


def _init_factors(
    anchor: _Block,
    seed: int,
    side: int,
    start: int,
    stop: int,
    dim: int,
    scale: float,
    num_threads: int,
) -> _Factors:
    """Rows [start, stop) of the initial embeddings, exactly those of ``fs.WALS``, made where the
    block ``anchor`` (unused) is."""
    x = _initial_embeddings(seed, side, start, stop, dim, scale)
    return _Factors(x, _core.wals_gramian(x, _task_threads(num_threads)), 0.0, 0)


def _solve_block(
    block: _Block,
    previous: _Factors | None,
    fixed_gram: tuple,
    params: dict,
    with_loss: bool,
    *pieces: np.ndarray,
) -> _Factors:
    """One half-sweep on one block: ``fs.WALS``'s row solve against the compact fixed factors."""
    dim = params["dim"]
    threads = _task_threads(params["num_threads"])
    fixed = np.concatenate(pieces) if pieces else np.empty((0, dim), dtype=np.float32)
    if previous is not None:  # CG starts from the current rows
        x = previous.x.copy()
    else:
        x = np.empty((block.csr.n_rows, dim), dtype=np.float32)
    row_loss = np.empty(block.csr.n_rows, dtype=np.float64) if with_loss else None
    a = block.csr
    _core.wals_solve_rows(
        a.indptr, a.indices, a.targets, a.weights, fixed, fixed_gram[0], x,
        params["unobserved_weight"], params["regularization"], params["solver"],
        params["cg_steps"], threads, row_loss,
    )  # fmt: skip
    loss = float(row_loss.sum()) if with_loss else 0.0
    return _Factors(x, _core.wals_gramian(x, threads), loss, len(fixed))


def _small(factors: _Factors) -> tuple[np.ndarray, float, int]:
    """The d x d and scalar results of a block (what the reduction moves, not the rows)."""
    return factors.gram, factors.loss, factors.received


def _reduce(*parts: tuple) -> tuple[np.ndarray, float, np.ndarray]:
    """Sum of the blocks' Gramians and losses in block order (the same result on every run)."""
    gram = parts[0][0].copy()
    for p in parts[1:]:
        gram += p[0]
    loss = 0.0
    for p in parts:
        loss += p[1]
    return gram, loss, np.array([p[2] for p in parts], dtype=np.int64)


def _rows_of(factors: _Factors) -> np.ndarray:
    return factors.x


# -- partitioning -----------------------------------------------------------------------------------


def _balanced_bounds(cost: np.ndarray, k: int) -> np.ndarray:
    """k + 1 strictly increasing unit boundaries from 0 to len(cost), splitting the total cost
    into k parts of about equal sum (every part has at least one unit)."""
    n = len(cost)
    cum = np.concatenate([[0.0], np.cumsum(cost, dtype=np.float64)])
    inner = np.searchsorted(cum, cum[-1] * np.arange(1, k) / k)
    bounds = np.concatenate([[0], inner, [n]]).astype(np.int64)
    for i in range(1, k):
        bounds[i] = max(bounds[i], bounds[i - 1] + 1)
    for i in range(k - 1, 0, -1):
        bounds[i] = min(bounds[i], bounds[i + 1] - 1)
    return bounds


def _partition(per_unit_entries: np.ndarray, unit: int, n: int, k: int, dim: int) -> np.ndarray:
    """Block boundaries over n rows grouped in units of ``unit`` rows, balancing entries + dim per
    row (the cost of a row solve grows with both)."""
    rows_per_unit = np.minimum(unit, n - unit * np.arange(len(per_unit_entries)))
    units = _balanced_bounds(per_unit_entries + dim * rows_per_unit, k)
    return np.minimum(units * unit, n)


def _unit(n: int, k: int) -> int:
    """Blocks start at multiples of the Gramian's chunk when they are large enough, so that the
    partial Gramians add up to the single-machine Gramian up to float64 rounding."""
    chunk = _core.wals_gramian_chunk
    return chunk if n >= chunk * k else 1


# -- the estimator ----------------------------------------------------------------------------------


class DaskWALS:
    """:class:`fastsoftmax.WALS` on a Dask cluster: same hyperparameters, same results.

    The interactions are cut into ``num_row_blocks`` blocks of query rows (CSR) and
    ``num_col_blocks`` blocks of item rows (the CSC of the same data, built on the workers), and
    every block keeps its factor rows next to it, on the worker it was placed on. A half-sweep
    solving for U with V fixed (and then V with U fixed) is:

    1. the Gramian V^T V as the sum, in block order, of the column blocks' d x d Gramians;
    2. for every row block, only the rows of V its non-zeros touch, taken from the column blocks
       that hold them (never the whole of V);
    3. the block's rows solved by the C++ kernel of ``fs.WALS`` (GIL released, the worker's
       thread count), with the block's column ids remapped once to the compact fixed factors.

    The initial embeddings are those of ``fs.WALS`` with the same ``seed`` (drawn block by block
    on the workers), and every row sees the same data in the same order, so the embeddings equal
    ``fs.WALS``'s up to float rounding (the Gramians are summed block by block instead of chunk by
    chunk).

    **Losing a worker.** Every block is the result of Dask tasks, so when workers die mid-fit
    (even all of them at once, if the cluster replaces them), Dask recomputes what they held from
    the tasks' inputs, going back through the previous iterations (recovery can cost up to the
    fit so far), and the fit ends with exactly the embeddings of an undisturbed fit. A
    scipy.sparse matrix from the client goes into the task graph (the scheduler keeps a copy of
    it during the fit, as for ``da.from_array``), so it is recomputable; so are futures of tasks
    and dask arrays. Futures of data the user scattered cannot be recomputed: if they are lost
    and needed, :meth:`fit` raises RuntimeError saying so. No partial or mixed result is ever
    returned. A task whose worker dies more often than
    ``distributed.scheduler.allowed-failures`` fails with Dask's ``KilledWorker``.

    **Placement.** Tasks carry no worker restrictions (a restriction would outlive the worker it
    names); every task runs where its largest inputs are, so blocks and their factor rows stay
    where they were built. Dask's work stealing may still move a task whose inputs are small;
    set ``distributed.scheduler.work-stealing: False`` for strict placement.

    Parameters
    ----------
    client : distributed.Client
        The cluster to run on; it must have workers when :meth:`fit` is called.
    dim : int, default 64
        Embedding dimension, >= 1.
    num_row_blocks, num_col_blocks : int, optional
        Number of blocks of query rows and of item rows; default: the number of workers. Blocks
        are balanced by entries plus ``dim`` per row. ``num_row_blocks`` applies to a
        client-side matrix; futures and dask arrays bring their own row blocks, which stay
        where they are. Column block c is built where row block ``c % num_row_blocks`` is.
    unobserved_weight, regularization, iterations, solver, cg_steps, init_scale, seed
        As in :class:`fastsoftmax.WALS`.
    num_threads : int, default 0
        C++ threads per task; 0 means the worker's thread count (``nthreads``). Run one task
        per worker at a time (``threads_per_worker=1`` per process, or one thread per worker
        with ``num_threads`` set) to avoid oversubscription.

    Attributes
    ----------
    item_embeddings : numpy.ndarray, float32, shape (n_items, dim)
        Gathered to the client on first access after a fit (as U by ``query_embeddings()``).
    training_log : list of dict
        ``{"loss": objective}`` after each completed iteration (the exact objective).
    loss_history : list of float
        The same objectives as a list.
    row_bounds_, col_bounds_ : numpy.ndarray, int64
        Block boundaries: row block b holds queries ``row_bounds_[b]:row_bounds_[b + 1]``.
    received_rows_ : dict of str to numpy.ndarray, int64
        ``"query_blocks"``: per row block, the item-factor rows it received in the last
        half-sweep (the distinct items its non-zeros touch); ``"item_blocks"``: per column
        block, the query-factor rows it received. Each row is ``dim`` float32 values.

    Examples
    --------
    >>> from distributed import Client, LocalCluster
    >>> from fastsoftmax.distributed import DaskWALS
    >>> client = Client(LocalCluster(n_workers=2, threads_per_worker=1))  # doctest: +SKIP
    >>> mf = DaskWALS(client, 32, iterations=10).fit(interactions)  # doctest: +SKIP
    >>> model = mf.to_model()  # a plain fs.WALS: recommend, fold_in, save  # doctest: +SKIP
    """

    def __init__(
        self,
        client: distributed.Client,
        dim: int = 64,
        *,
        num_row_blocks: int | None = None,
        num_col_blocks: int | None = None,
        unobserved_weight: float = 0.1,
        regularization: float = 0.05,
        iterations: int = 15,
        solver: str = "cg",
        cg_steps: int = 3,
        init_scale: float = 0.01,
        num_threads: int = 0,
        seed: int = 0,
    ) -> None:
        if not isinstance(client, distributed.Client):
            raise TypeError(f"client: expected a distributed.Client, got {type(client).__name__}")
        # fs.WALS checks the shared hyperparameters (same messages); keep its checked values.
        local = WALS(
            dim,
            unobserved_weight=unobserved_weight,
            regularization=regularization,
            iterations=iterations,
            solver=solver,
            cg_steps=cg_steps,
            init_scale=init_scale,
            num_threads=num_threads,
            seed=seed,
        )
        self.client = client
        for name, value in local.get_params().items():  # dim, unobserved_weight, ..., seed
            setattr(self, name, value)
        self.num_row_blocks = (
            None
            if num_row_blocks is None
            else check_int(num_row_blocks, "num_row_blocks", minimum=1)
        )
        self.num_col_blocks = (
            None
            if num_col_blocks is None
            else check_int(num_col_blocks, "num_col_blocks", minimum=1)
        )
        self.training_log: list[dict[str, float]] = []
        self.row_bounds_: np.ndarray | None = None
        self.col_bounds_: np.ndarray | None = None
        self.received_rows_: dict[str, np.ndarray] = {}
        self._u: list[distributed.Future] | None = None  # _Factors per row block
        self._v: list[distributed.Future] | None = None  # _Factors per column block
        self._cache: dict[str, np.ndarray] = {}

    def __repr__(self) -> str:
        shape = (
            ""
            if self.row_bounds_ is None
            else f", fitted on {self.row_bounds_[-1]} x {self.col_bounds_[-1]}"
        )
        return (
            f"DaskWALS(dim={self.dim}, unobserved_weight={self.unobserved_weight}, "
            f"regularization={self.regularization}, solver={self.solver!r}{shape})"
        )

    # -- fitted state -------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if self._u is None:
            raise RuntimeError("DaskWALS: the model is not fitted yet; call fit() first")

    def _gather(self, name: str, blocks: list[distributed.Future]) -> np.ndarray:
        if name not in self._cache:
            parts = self._result([self.client.submit(_rows_of, f, pure=False) for f in blocks])
            self._cache[name] = np.concatenate(parts)
        return self._cache[name]

    @property
    def loss_history(self) -> list[float]:
        """list of float: the objective after each completed iteration (``training_log``)."""
        return [log["loss"] for log in self.training_log]

    def query_embeddings(self) -> np.ndarray:
        """U, gathered from the workers.

        Returns
        -------
        numpy.ndarray, float32, shape (n_queries, dim)
        """
        self._check_fitted()
        return self._gather("u", self._u)

    @property
    def item_embeddings(self) -> np.ndarray:
        """numpy.ndarray, float32, shape (n_items, dim): V, gathered from the workers."""
        self._check_fitted()
        return self._gather("v", self._v)

    def to_model(self) -> WALS:
        """A plain :class:`fastsoftmax.WALS` with these hyperparameters, embeddings and loss
        history, for ``fold_in``, ``objective``, ``save`` and retrieval on one machine."""
        self._check_fitted()
        model = WALS(**{name: getattr(self, name) for name in WALS().get_params()})
        # Copies: the WALS model may train further (partial_fit updates its arrays in place).
        model._u = self.query_embeddings().copy()
        model._v = self.item_embeddings.copy()
        model.training_log = [dict(log) for log in self.training_log]
        return model

    # -- helpers --------------------------------------------------------------------------------

    def _result(self, futures: Any) -> Any:
        """Gather futures; a lost scattered input becomes a RuntimeError that says so."""
        try:
            return self.client.gather(futures)
        except distributed.client.FutureCancelledError as e:
            raise RuntimeError(
                "DaskWALS: a worker was lost together with input data that Dask cannot "
                "recompute (futures of data scattered to the cluster); the fit is abandoned. "
                "Refit, or pass the interactions as futures of tasks or a dask array (e.g. "
                f"loaded from storage by tasks) so that Dask recomputes lost blocks. Dask said: {e}"
            ) from e

    def _submit(self, fn: Callable, *args: Any) -> distributed.Future:
        # No worker restrictions: Dask runs every task where its largest inputs are (the blocks,
        # and "anchors" for the tasks that build blocks). Restrictions would outlive the workers
        # they name: after a loss of every worker, Dask leaves tasks restricted to dead workers
        # unscheduled for good (loose restrictions included).
        return self.client.submit(fn, *args, pure=False)

    def _row_blocks(
        self, interactions: Any, weights: Any, workers: list[str]
    ) -> tuple[list[distributed.Future], np.ndarray, int]:
        """The row blocks as futures of _Csr, their row boundaries and the number of columns."""
        if isinstance(interactions, da.Array) or isinstance(interactions, (list, tuple)):
            blocks = self._blocks_on_cluster(interactions, weights)
            shapes = self._result([self.client.submit(_shape, b, pure=False) for b in blocks])
            n_cols = shapes[0][1]
            for b, (_, m) in enumerate(shapes):
                if m != n_cols:
                    raise ValueError(
                        f"interactions: row block {b} has {m} columns, expected {n_cols} (the "
                        "number of columns of block 0)"
                    )
            sizes = np.array([s[0] for s in shapes], dtype=np.int64)
            bounds = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)
            if bounds[-1] < 1 or n_cols < 1:
                raise ValueError(
                    f"interactions: expected at least one row and column, got shape "
                    f"({bounds[-1]}, {n_cols})"
                )
            return blocks, bounds, n_cols
        rows, shape = _interactions_and_weights(interactions, weights)
        if shape[0] < 1 or shape[1] < 1:
            raise ValueError(f"interactions: expected at least one row and column, got {shape}")
        k = self.num_row_blocks or len(workers)
        if k > shape[0]:
            raise ValueError(
                f"num_row_blocks: expected at most {shape[0]} (one row per block), got {k}"
            )
        unit = _unit(shape[0], k)
        per_unit = np.add.reduceat(np.diff(rows.indptr), np.arange(0, shape[0], unit))
        bounds = _partition(per_unit, unit, shape[0], k, self.dim)
        blocks = []
        for b in range(k):
            lo, hi = bounds[b], bounds[b + 1]
            e0, e1 = rows.indptr[lo], rows.indptr[hi]
            part = (
                rows.indptr[lo : hi + 1] - e0,
                rows.indices[e0:e1],
                rows.targets[e0:e1],
                None if rows.weights is None else rows.weights[e0:e1],
                shape[1],
            )
            # In the task graph, not scattered: the scheduler keeps the block's arrays (as for
            # da.from_array), so Dask can recompute the block if its worker dies.
            with warnings.catch_warnings():
                warnings.filterwarnings("ignore", "Sending large graph", UserWarning)
                blocks.append(self._submit(_Csr, *part))
        return blocks, bounds, shape[1]

    def _blocks_on_cluster(self, interactions: Any, weights: Any) -> list[distributed.Future]:
        """Futures of _Csr from a list of futures or a dask array (and the same for weights)."""
        if isinstance(interactions, da.Array):
            if interactions.ndim != 2:
                raise ValueError(
                    f"interactions: expected a 2-D dask array, got {interactions.ndim} dimension(s)"
                )
            if weights is not None and (
                not isinstance(weights, da.Array) or weights.chunks != interactions.chunks
            ):
                raise ValueError(
                    "weights: expected a dask array with the shape and chunks of interactions"
                )
            user = self.client.compute([_delayed_hstack(row) for row in interactions.to_delayed()])
            user_w = (
                [None] * len(user)
                if weights is None
                else self.client.compute([_delayed_hstack(row) for row in weights.to_delayed()])
            )
        else:
            user = list(interactions)
            if not user or not all(isinstance(f, distributed.Future) for f in user):
                raise TypeError(
                    "interactions: expected a scipy.sparse matrix, a dask array or a non-empty "
                    "list of distributed.Future (row blocks of scipy.sparse matrices)"
                )
            if weights is None:
                user_w = [None] * len(user)
            else:
                user_w = list(weights) if isinstance(weights, (list, tuple)) else None
                if user_w is None or len(user_w) != len(user):
                    raise ValueError(
                        f"weights: expected a list of {len(user)} futures (one per row block of "
                        "interactions) or None"
                    )
                if not all(isinstance(f, distributed.Future) for f in user_w):
                    raise TypeError("weights: expected a list of distributed.Future")
        if self.num_row_blocks is not None and self.num_row_blocks != len(user):
            raise ValueError(
                f"num_row_blocks: the interactions come in {len(user)} row blocks, got "
                f"num_row_blocks={self.num_row_blocks} (leave it None for futures and dask arrays)"
            )
        return [self._submit(_to_rows, a, w) for a, w in zip(user, user_w, strict=True)]

    # -- training -----------------------------------------------------------------------------

    def fit(
        self,
        interactions: Any,
        weights: Any = None,
        *,
        show_progress: bool = True,
        callback: Callable[[int, DaskWALS, dict[str, float]], Any] | None = None,
    ) -> DaskWALS:
        """Train U and V from scratch on the cluster (initial embeddings from ``seed``).

        Parameters
        ----------
        interactions : scipy.sparse matrix, list of distributed.Future, or dask.array.Array
            The (n_queries, n_items) targets, as in :meth:`fastsoftmax.WALS.fit`. A scipy.sparse
            matrix on the client is cut into ``num_row_blocks`` blocks, sent with the tasks. A
            list of futures gives the row blocks directly, top to bottom: each resolves to a
            scipy.sparse matrix with all n_items columns, so data that never fits on the client
            can be used. A dask array (of scipy.sparse chunks) gives one row block per row of
            chunks.
        weights : same kind as ``interactions``, optional
            w_ij >= 0 with the sparsity of ``interactions`` (block by block, chunk by chunk);
            default 1.
        show_progress : bool, default True
            Draw a tqdm progress bar with the current objective.
        callback : callable, optional
            ``callback(iteration, model, logs)`` after every iteration (``logs = {"loss":
            objective}``); returning True stops.

        Returns
        -------
        DaskWALS
            ``self``.

        Raises
        ------
        TypeError, ValueError
            On bad input, as :meth:`fastsoftmax.WALS.fit` (raised from the workers for blocks
            that live there), or blocks with different numbers of columns.
        RuntimeError
            If a worker holding scattered data was lost (see the class notes), or as
            :meth:`fastsoftmax.WALS.fit` for a Cholesky failure.
        """
        workers = sorted(self.client.scheduler_info()["workers"])
        if not workers:
            raise ValueError("client: the cluster has no workers")
        self._u = self._v = None
        self._cache = {}
        self.training_log = []
        self.received_rows_ = {}

        raw, row_bounds, n_cols = self._row_blocks(interactions, weights, workers)
        n_rows = int(row_bounds[-1])
        nb = len(raw)
        nc = self.num_col_blocks or len(workers)
        if nc > n_cols:
            raise ValueError(
                f"num_col_blocks: expected at most {n_cols} (one item per block), got {nc}"
            )
        unit = _unit(n_cols, nc)
        hists = self._result(
            [self.client.submit(_column_histogram, b, unit, pure=False) for b in raw]
        )
        col_bounds = _partition(np.sum(hists, axis=0), unit, n_cols, nc, self.dim)
        self.row_bounds_, self.col_bounds_ = row_bounds, col_bounds

        # The column blocks: every row block cut by column blocks, the cuts moved by Dask.
        splits = [
            self._submit(_split_columns, raw[b], int(row_bounds[b]), col_bounds) for b in range(nb)
        ]
        cols = [
            self._submit(
                _assemble_columns,
                int(col_bounds[c + 1] - col_bounds[c]),
                n_rows,
                raw[c % nb],
                *[self._submit(operator.getitem, splits[b], c) for b in range(nb)],
            )
            for c in range(nc)
        ]
        q_blocks = [self._submit(_compact, raw[b], col_bounds) for b in range(nb)]
        i_blocks = [self._submit(_compact, cols[c], row_bounds) for c in range(nc)]
        del raw, splits, cols  # kept by Dask as lineage only

        def nonzero(row: np.ndarray) -> list[int]:
            return [int(k) for k in np.flatnonzero(row)]

        counts = self._result([self._submit(_counts, f) for f in q_blocks + i_blocks])

        def needed(
            block: distributed.Future, k: int, fixed: distributed.Future
        ) -> distributed.Future:
            return self._submit(_relocated, self._submit(_needed, block, k), fixed)

        q_need = [
            {c: needed(q_blocks[b], c, i_blocks[c]) for c in nonzero(counts[b])} for b in range(nb)
        ]
        i_need = [
            {b: needed(i_blocks[c], b, q_blocks[b]) for b in nonzero(counts[nb + c])}
            for c in range(nc)
        ]

        params = {
            "dim": self.dim,
            "unobserved_weight": self.unobserved_weight,
            "regularization": self.regularization,
            "solver": self.solver,
            "cg_steps": self.cg_steps,
            "num_threads": self.num_threads,
        }
        args = (self.seed, self.dim, self.init_scale, self.num_threads)

        def init(side: int, bounds: np.ndarray, blocks: list) -> list[distributed.Future]:
            return [
                self._submit(
                    _init_factors,
                    block,
                    args[0],
                    side,
                    int(bounds[k]),
                    int(bounds[k + 1]),
                    *args[1:],
                )
                for k, block in enumerate(blocks)
            ]

        def reduce(blocks: list[distributed.Future]) -> distributed.Future:
            return self._submit(_reduce, *[self._submit(_small, f) for f in blocks])

        def half_sweep(blocks, need, previous, fixed, fixed_gram, with_loss):
            out = []
            for k, block in enumerate(blocks):
                pieces = [self._submit(_take_rows, fixed[c], ids) for c, ids in need[k].items()]
                prev = previous[k] if self.solver == "cg" else None
                out.append(
                    self._submit(_solve_block, block, prev, fixed_gram, params, with_loss, *pieces)
                )
            return out

        # U's initial values only matter as the CG starting point.
        u = init(0, row_bounds, q_blocks) if self.solver == "cg" else [None] * nb
        v = init(1, col_bounds, i_blocks)
        gram_v = reduce(v)
        with tqdm(total=self.iterations, disable=not show_progress, desc="DaskWALS") as progress:
            for iteration in range(self.iterations):
                u = half_sweep(q_blocks, q_need, u, v, gram_v, False)
                gram_u = reduce(u)
                v = half_sweep(i_blocks, i_need, v, u, gram_u, True)
                gram_v = reduce(v)
                (g_u, _, got_u), (g_v, observed, got_v) = self._result([gram_u, gram_v])
                self._u, self._v, self._cache = u, v, {}
                self.received_rows_ = {"query_blocks": got_u, "item_blocks": got_v}
                loss = _objective(observed, g_u, g_v, self.unobserved_weight, self.regularization)
                logs = {"loss": loss}
                self.training_log.append(logs)
                progress.update(1)
                progress.set_postfix(loss=f"{loss:.6g}")
                if callback is not None and callback(iteration, self, logs) is True:
                    break
        return self
