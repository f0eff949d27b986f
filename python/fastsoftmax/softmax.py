"""The softmax DNN: query features -> MLP -> psi(x); item table V; softmax cross-entropy.

The whole training loop runs in C++ (``fastsoftmax._core.SoftmaxModel``) with the GIL released;
:meth:`SoftmaxModel.fit` hands the data over once and gets control back at every epoch boundary
(progress bar, validation, callback, Ctrl-C).
"""

from __future__ import annotations

import json
import math
import numbers
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import scipy.sparse as sp

from . import _core
from ._sampled_options import SampledOptions
from ._validation import (
    as_csr,
    as_real_array,
    check_choice,
    check_int,
    check_num_threads,
    check_real,
    check_seed,
)
from .estimator import Estimator, exclusion_union
from .io import register_model, save_arrays
from .recommend_all import DEFAULT_BATCH_SIZE, _query_feature_rows, write_recommendations

__all__ = ["QueryFeatures", "SoftmaxModel"]

_LOSSES = ("full", "positives", "sampled")
_OPTIMIZERS = ("sgd", "adagrad", "adam")
_POOLINGS = ("mean", "sum", "sqrtn")
_HISTORY_TARGETS = ("all", "dropped")
_ROW_WEIGHTINGS = ("targets", "uniform")
_ITEM_EMBEDDINGS = ("table", "qr", "hybrid")
_MODEL_TYPE = "SoftmaxModel"


def _csr_arrays(m: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(indptr int64, indices int64, data float32), copying only what needs converting."""
    return (
        np.ascontiguousarray(m.indptr, dtype=np.int64),
        np.ascontiguousarray(m.indices, dtype=np.int64),
        np.ascontiguousarray(m.data, dtype=np.float32),
    )


def _compressed_size(
    value: object, name: str, applies: bool, needs: str, minimum: int, maximum: int
) -> int | None:
    """A size option of the compressed item tables: None, or an int in [minimum, maximum] when
    the chosen item_embedding uses it."""
    if value is None:
        return None
    if not applies:
        raise ValueError(f"{name}: only used with {needs}")
    value = check_int(value, name, minimum=minimum)
    if value > maximum:
        raise ValueError(
            f"{name}: expected an integer in [{minimum}, {maximum}] (n_items), got {value}"
        )
    return value


def _most_frequent(target_items: np.ndarray, n_items: int, k: int) -> np.ndarray:
    """The k items with the most target entries (ties: smaller id first), sorted by id."""
    counts = np.bincount(target_items, minlength=n_items)
    top = np.argsort(-counts, kind="stable")[:k]
    return np.sort(top).astype(np.int64)


def _named(value: object, name: str, prefix: str) -> dict[str, Any]:
    if value is None:
        return {}
    if isinstance(value, Mapping):
        out = {}
        for key, v in value.items():
            if not isinstance(key, str) or not key:
                raise TypeError(f"{name}: expected non-empty string keys, got {key!r}")
            out[key] = v
        return out
    if isinstance(value, Sequence) and not isinstance(value, str | bytes):
        return {f"{prefix}{i}": v for i, v in enumerate(value)}
    raise TypeError(
        f"{name}: expected a dict name -> values (or a list), got {type(value).__name__}"
    )


class QueryFeatures:
    """The features of N queries: dense columns, categorical ids and bags of ids.

    Parameters
    ----------
    dense : array_like, shape (N, F), optional
        Dense real features, converted to C-contiguous float32 (no copy if they already are).
        Must be finite.
    categorical : dict str -> array_like of int, shape (N,), optional
        One column of ids per categorical feature; each feature gets its own embedding table. A
        list is accepted too (names ``"categorical_0"``, ...). Ids must be >= 0, except for a
        feature the model hashes (``SoftmaxModel(hash_buckets=...)``): any integers or strings.
    bags : dict str -> scipy.sparse matrix, shape (N, vocabulary), optional
        One bag of ids per row (e.g. watch history), each feature with its own embedding table;
        the stored values are per-id weights (use 1 for an unweighted bag). A list is accepted
        too (names ``"bag_0"``, ...). The vocabulary size is the matrix's column count.

    Raises
    ------
    TypeError
        For non-numeric input or a bag that is not a scipy sparse matrix.
    ValueError
        If the features disagree on N, no feature is given, or a value is not finite.
    """

    def __init__(
        self,
        dense: np.typing.ArrayLike | None = None,
        categorical: Mapping[str, np.typing.ArrayLike] | Sequence | None = None,
        bags: Mapping[str, Any] | Sequence | None = None,
    ) -> None:
        sizes: dict[str, int] = {}
        self.dense: np.ndarray | None = None
        if dense is not None:
            self.dense = as_real_array(dense, "dense", dtype=np.float32, ndim=2)
            if not np.isfinite(self.dense).all():
                raise ValueError("dense: expected finite values, got NaN or inf")
            sizes["dense"] = self.dense.shape[0]
        self.categorical: dict[str, np.ndarray] = {}
        for key, v in _named(categorical, "categorical", "categorical_").items():
            arr = np.asarray(v)
            if arr.ndim != 1:
                raise ValueError(
                    f"categorical '{key}': expected a 1-D array, got shape {arr.shape}"
                )
            if arr.dtype.kind in "iu":
                arr = np.ascontiguousarray(arr, dtype=np.int64)  # uint64: the same 64 bits
            elif arr.dtype.kind in "US" or (
                arr.dtype == object and all(isinstance(x, str) for x in arr)
            ):
                arr = arr.astype(str)  # ids for hashing (SoftmaxModel's hash_buckets)
            else:
                raise TypeError(
                    f"categorical '{key}': expected integer ids (or string ids of a hashed "
                    f"feature), got dtype {arr.dtype}"
                )
            self.categorical[key] = arr
            sizes[f"categorical '{key}'"] = len(arr)
        self.bags: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        self.bag_vocab: dict[str, int] = {}
        for key, v in _named(bags, "bags", "bag_").items():
            m = as_csr(v, f"bags '{key}'", dtype=None, canonical=False)
            indptr, indices, data = _csr_arrays(m)
            if not np.isfinite(data).all():
                raise ValueError(f"bags '{key}': expected finite weights, got NaN or inf")
            self.bags[key] = (indptr, indices, data)
            self.bag_vocab[key] = int(m.shape[1])
            sizes[f"bags '{key}'"] = int(m.shape[0])
        if not sizes:
            raise ValueError("QueryFeatures: expected at least one of dense, categorical, bags")
        if len(set(sizes.values())) > 1:
            raise ValueError(f"QueryFeatures: features disagree on the number of rows: {sizes}")
        self.n_rows: int = next(iter(sizes.values()))
        #: Default table sizes per feature name (filled from ``fs.datasets.Features``).
        self.cardinalities: dict[str, int] = {}

    @classmethod
    def from_features(cls, features: Any) -> QueryFeatures:
        """Wrap a :class:`fastsoftmax.datasets.Features` (its ``cardinalities`` become the default
        table sizes of the model built from it)."""
        q = cls(
            dense=features.dense,
            categorical=features.categorical or None,
            bags=features.bags or None,
        )
        q.cardinalities = {str(k): int(v) for k, v in features.cardinalities.items()}
        return q

    def __len__(self) -> int:
        """Number of rows N."""
        return self.n_rows

    def __repr__(self) -> str:
        f = 0 if self.dense is None else self.dense.shape[1]
        return (
            f"QueryFeatures(n_rows={self.n_rows}, dense={f}, "
            f"categorical={list(self.categorical)}, bags={list(self.bags)})"
        )


def _layer_sizes(sizes: object, name: str) -> tuple[int, ...]:
    """Hidden layer sizes: an int or a sequence of ints >= 1, as a tuple."""
    if isinstance(sizes, numbers.Integral):
        sizes = (sizes,)
    if isinstance(sizes, str | bytes) or not hasattr(sizes, "__iter__"):
        raise TypeError(f"{name}: expected a sequence of layer sizes, got {type(sizes).__name__}")
    return tuple(check_int(h, name, minimum=1) for h in sizes)


def _as_query_features(feats: object, name: str = "feats") -> QueryFeatures:
    """QueryFeatures as is; a ``fs.datasets.Features`` wrapped; anything else a TypeError."""
    if isinstance(feats, QueryFeatures):
        return feats
    if all(hasattr(feats, a) for a in ("dense", "categorical", "bags", "cardinalities")):
        return QueryFeatures.from_features(feats)
    raise TypeError(
        f"{name}: expected fs.QueryFeatures (or fs.datasets.Features), got {type(feats).__name__}"
    )


def _row_weights(m: Any, row_weighting: str, sample_weight: object) -> np.ndarray | None:
    """Per-row weights of the loss (float32, shape (N,)), or None when every row weighs 1:
    ``sample_weight`` times, with ``row_weighting="targets"``, the row's target total over the
    mean row's."""
    w = None
    if row_weighting == "targets":
        totals = np.asarray(m.sum(axis=1), dtype=np.float64).ravel()
        mean = totals.mean() if len(totals) else 1.0
        w = totals / mean if mean > 0 else None
    if sample_weight is not None:
        sw = np.asarray(sample_weight)
        if sw.dtype.kind not in "biuf":
            raise TypeError(f"sample_weight: expected real numbers, got dtype {sw.dtype}")
        if sw.shape != (m.shape[0],):
            raise ValueError(
                f"sample_weight: expected shape ({m.shape[0]},) (one per row), got {sw.shape}"
            )
        sw = sw.astype(np.float64)
        if not np.isfinite(sw).all() or (sw < 0).any():
            raise ValueError("sample_weight: expected finite weights >= 0")
        w = sw if w is None else w * sw
    return None if w is None else w.astype(np.float32)


def _targets_arrays(
    targets: object,
    n_rows: int,
    n_items: int,
    row_weighting: str = "uniform",
    sample_weight: object = None,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray | None]:
    """Canonical CSR (sorted, duplicates summed, explicit zeros dropped) of the targets, and
    the rows' weights (:func:`_row_weights`)."""
    m = as_csr(targets, "targets", dtype=None, canonical=False)
    if m.shape[0] != n_rows:
        raise ValueError(
            f"targets: expected {n_rows} rows (one per feature row), got shape {m.shape}"
        )
    if m.shape[1] != n_items:
        raise ValueError(f"targets: expected {n_items} columns (n_items), got shape {m.shape}")
    if not m.has_canonical_format or (m.nnz and (m.data == 0).any()):
        m = m.copy()
        m.sum_duplicates()
        m.eliminate_zeros()
    return (*_csr_arrays(m), _row_weights(m, row_weighting, sample_weight))


class _SampledOption:
    """A sampled-softmax hyperparameter of SoftmaxModel, read from its validated SampledOptions
    (so that every hyperparameter is an attribute under its own name)."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: object, objtype: type | None = None) -> Any:
        return self if obj is None else getattr(obj._sampled, self.name)


class SoftmaxModel(Estimator):
    """Softmax DNN for retrieval: query tower psi(x), item table V, softmax over all items.

    The query tower concatenates the dense features, one embedding per categorical feature and
    one pooled embedding per bag feature, then applies ``len(hidden)`` ReLU layers and a linear
    layer to ``dim``. Item ``j``'s score for query x is ``psi(x) . V_j`` (+ ``b_j`` with
    ``item_bias``). Training minimises the weighted mean over the rows of the cross-entropy
    between each row's target distribution p_b (its target weights normalised to sum 1) and the
    softmax of the scores, row b weighted by ``w_b`` (``row_weighting``, ``sample_weight``).

    Parameters
    ----------
    n_items : int
        Number of items n (>= 1).
    hidden : sequence of int, default ()
        Sizes of the ReLU layers (empty: a linear tower).
    dim : int, default 128
        Embedding dimension d of psi(x) and of V.
    embedding_dim : int or dict str -> int, default 128
        Embedding size of every categorical / bag feature, or per feature name.
    pooling : {"mean", "sum", "sqrtn"}, default "mean"
        How a bag's embeddings are combined, with per-id weights w: ``sum_k w_k e_k`` divided by
        ``sum_k w_k`` (mean), 1 (sum) or ``sqrt(sum_k w_k^2)`` (sqrtn). An empty bag gives 0.
    history : str, optional
        Name of the bag feature that holds each query's past items (e.g. the user's training
        interactions), trained the denoising way: at every step each of a row's history entries
        is dropped independently with probability ``history_dropout`` and the bag is pooled
        over the kept ones (sum pooling scales the kept weights by ``1 / (1 - p)``). Without it
        a history that equals the targets teaches the network to copy its input. The draws come
        from a random stream of (seed, epoch, row): they do not depend on the thread count or
        the batch. Prediction (:meth:`recommend`, :meth:`query_embeddings`, :meth:`loss`,
        :meth:`gradients`) always uses the whole history.
    history_dropout : float, default 0.9
        Probability p in [0, 1) of dropping a history entry at a step (with ``history`` set).
    history_target : {"all", "dropped"}, default "all"
        ``"all"``: the targets are all the row's positives (Mult-DAE). ``"dropped"``: only the
        row's positives that are not among its kept history items (predict what was hidden); a
        row with none sits that step out.
    row_weighting : {"targets", "uniform"}, default "targets"
        How much each training row counts. ``"targets"``: in proportion to the total of its
        target weights (relative to the mean row's), i.e. the loss is the multinomial
        log-likelihood of the target weights (Mult-DAE's), so a user with 300 rated items counts
        ten times one with 30. ``"uniform"``: every row's target distribution counts the same.
        ``fit(sample_weight=)`` multiplies either.
    loss : {"full", "positives", "sampled"}, default "full"
        ``"full"``: exact softmax over all n items (gradient touches every item).
        ``"positives"``: softmax restricted to each row's positives (positives-only training:
        cheap, but prone to folding).
        ``"sampled"``: sampled softmax over each row's positives and ``num_negatives`` negatives
        drawn from ``sampler`` (options below; the item gradient touches the candidates only).
    optimizer : {"sgd", "adagrad", "adam"}, default "adagrad"
        Dense updates for the MLP; lazy row-sparse updates for the embedding tables, and for V
        when the loss gives a row-sparse gradient. Adagrad/Adam follow PyTorch's formulas.
    learning_rate : float, default 0.05
    l2 : float, default 0.0
        Weight decay: ``l2 * theta`` is added to the gradient of every parameter row a step
        updates (lazily for sparse rows). Not part of :meth:`loss` / :meth:`gradients`.
    batch_size : int, default 256
    epochs : int, default 100
        Epochs of a :meth:`fit` call (from scratch; :meth:`partial_fit` continues). With
        ``validation`` and ``early_stopping``, an upper bound.
    num_threads : int, default 0
        Threads of the C++ pool; 0 means all cores. Results are bit-identical for a fixed seed and
        thread count.
    seed : int, default 0
        Seeds the initialisation and the shuffling.
    item_bias : bool, default False
        Learn a bias per item.
    vocab_sizes : dict str -> int, optional
        Table sizes of categorical / bag features; by default taken from the data at the first
        :meth:`fit` (categorical: max id + 1; bags: the matrix's column count). An id outside its
        table at predict time raises IndexError (there is no out-of-vocabulary bucket).
    num_negatives : int, optional
        ``loss="sampled"``: negatives m per batch (shared) or per row, default 256; with
        ``sampler="in_batch"`` a cap (default: none). With ``gravity`` and ``loss="positives"``:
        the uniform rows the item Gramian is estimated on (default 256).
    sampler : {"uniform", "popularity", "weights", "in_batch", "score"}, default "uniform"
        Proposal Q of the negatives: uniform; an alias table over the training item counts
        ``** sampler_alpha`` (counts of rows with the item as a positive, taken at each
        :meth:`fit`); an alias table over ``sampler_weights``; in-batch negatives: each distinct
        item among the batch's positive entries once, so a batch costs at most its distinct items
        (a uniform subset of ``num_negatives`` of them when set; a row's own positives there are
        accidental hits), corrected by its inclusion probability ``1 - (1 - Q(j))^E`` for the
        batch's E positive entries as draws from Q = the items' positive-entry frequency in the
        training targets (times ``num_negatives / distinct`` under a cap); or hard negatives
        ``Q_b(j) ~ exp(score_bj / temperature)`` (below).
    sampler_alpha : float, default 0.75
    sampler_weights : array_like, shape (n_items,), optional
        Non-negative weights for ``sampler="weights"``; with ``sampler="score"``, the proposal of
        the candidate pool (uniform otherwise).
    share_negatives : bool, default True
        One set of negatives per batch (their logits are one B x m GEMM) or one per row. The shared
        score proposal is the batch mixture ``mean_b Q_b``. Per-row draws come from a random
        stream of the row's index in the data (and of the step), so where a shuffle puts a row
        in its batch does not change its negatives.
    hard_pool : int or None, default 2048
        ``sampler="score"``: ``None`` samples exactly from all n scores (a full forward pass: the
        reference mode); an int M resamples m of M pool candidates with weights
        ``exp(score / T) / Q0`` (sampling-importance-resampling). The logQ correction then uses
        the implied ``Q_b(j) = exp(score_bj / T) / Zhat_b`` with ``Zhat_b`` the pool's
        importance-sampling estimate of the normaliser, an O(1/M) approximation. A pool of
        n_items or more is replaced by exact sampling (``None``), which costs no more (one
        B x n product either way) and has no bias.
    temperature : float, default 1.0
    hard_fraction : float, default 1.0
        Share of the m negatives drawn by the score sampler; the rest are uniform (the correction
        uses the mixture).
    logq_correction : bool, default True
        Subtract ``log(m Q(j))`` (the expected count) from every sampled logit, so that the
        expected gradient approaches the full softmax's as m grows.
    remove_accidental_hits : bool, default True
        Mask sampled negatives equal to one of the row's positives. (Positives, then in the
        candidate set exactly once, are not corrected; with hits kept, a positive and its hits
        are corrected by ``log(1 + m Q(j))``.)
    gravity : float, default 0.0
        Coefficient of the gravity term ``<Psi^T Psi / B, V^T V / n>_F`` (any loss): exact for
        ``"full"``; ``V^T V / n`` estimated on the sampled rows (``"sampled"``) or on
        ``num_negatives`` uniform rows (``"positives"``).
    mixed_negatives : int, default 0
        ``sampler="in_batch"``: also this many uniform draws from the whole catalogue per batch
        (mixed negative sampling, Yang et al. 2020), so that items rarely among the positives are
        pushed away too. Each candidate is corrected by its expected count, the in-batch
        inclusion probability plus ``mixed_negatives / n_items``.
    frequency_estimate : {"counts", "streaming"}, default "counts"
        ``sampler="in_batch"``: where the inclusion probability of the logQ correction comes from.
        ``"counts"``: the items' positive-entry frequencies in the training targets (see
        ``sampler``). ``"streaming"``: estimated during training from the batches themselves
        (Yi et al. 2019): per item, the step it was last among a batch's positives and a moving
        average (rate 0.01, bias-corrected for its start at 0) of the gap between such steps,
        probability = 1 / gap (capped at 1); needs no statistics of the data and follows a
        drifting stream. It continues across
        :meth:`partial_fit` calls and is not saved.
    hash_buckets : dict str -> int, optional
        Hashed features (categorical or bag, query or item side): the feature's ids, any
        integers (negative, huge) or strings, go to a table of that many rows through a fixed,
        seeded 64-bit mixer (:mod:`fastsoftmax.hashing`, seeded by ``seed``) instead of indexing
        it: no vocabulary, and ids never seen in training (a new user id) are no error. A bag
        feature's ids are its matrix's column indices.
    num_hashes : int or dict str -> int, default 1
        Rows per id of a hashed feature (hash embeddings): with k > 1 an id's k rows are
        pooled (``pooling``), so that two ids share all their rows only with probability about
        buckets^-k; a categorical feature then becomes a bag of k rows (its parameter
        ``bags.<name>``).
    item_hidden : sequence of int, default ()
        Sizes of the ReLU layers of the item tower (``fit(item_features=...)``; empty: linear).
    item_id_embedding : bool, default True
        With an item tower: each training item also has its own id embedding E_j (``dim``
        columns, starting at 0, the parameter ``item_id_embeddings``) added to the tower's
        output, ``V_j = tower(features_j) + E_j``, so that warm items can move away from what
        their features alone say. New items (:meth:`add_items`, :meth:`item_embeddings_from`)
        have none: ``V = tower(features)``.
    item_id_dropout : float, default 0.25
        Probability p in [0, 1) that a training step leaves out an item's E_j (drawn per step
        and item), so that the features alone also learn to place items: all a new item has.
    item_embedding : {"table", "qr", "hybrid"}, default "table"
        How V is stored (without item features). ``"table"``: one row per item, n_items x dim.
        ``"qr"``: quotient-remainder compositional embeddings (Shi et al. 2020),
        ``V_j = Q[j // b] * R[j % b]`` element-wise with Q (ceil(n_items / b) x dim) and R
        (b x dim): ``(n_items / b + b) * dim`` parameters, and no two items share both rows, so
        every item stays distinct. ``"hybrid"`` (Zhang et al. 2020): the ``item_dedicated``
        items most frequent in the first fit's targets keep a row of their own (the parameter
        ``item_qr.dedicated``), the others use QR. Every loss and sampler works with them; each
        step computes V only at the items the loss reads (all of them for ``loss="full"`` and the
        score sampler) and updates only the touched rows of Q, R and the dedicated table.
        :attr:`item_embeddings` materialises V; :meth:`recommend` scores it block by block.
    item_buckets : int, optional
        b, the rows of R, in [1, n_items]; default ``ceil(sqrt(n_items))`` (the most compression:
        about ``sqrt(n_items) / 2`` times fewer parameters than the table).
    item_dedicated : int, optional
        ``"hybrid"``: the number of items with a row of their own, in [0, n_items]; default
        ``n_items // 10``.

    Attributes
    ----------
    parameters : dict str -> numpy.ndarray
        Writable float32 views of the model's own parameter arrays (after the first fit).
    item_embeddings : numpy.ndarray, float32, shape (n_items, dim)
        Read-only view of V.

    Notes
    -----
    The defaults are the recipe measured best on MovieLens ml-latest-small with the users' items
    as the history feature (``bench/bench_quality.py``; bench/README.md has the table): a linear
    tower (a ReLU layer of 256 lost ~10% recall@10 there), d = 128 (d = 64: -4%), heavy history
    dropout (0.9; 0.5: -8%), rows weighted by their target totals (uniform: -2% under the strong
    protocol, equal under the weak one), full softmax, Adagrad 0.05, 100 epochs (150: +2%
    recall@10 at 1.5x the time). Other data may want hidden layers, e.g. with dense query features.

    Rows of the targets without any positive weight are an error (drop them before fitting).
    Parameters are initialised by every :meth:`fit` (and by a first :meth:`partial_fit`), when
    the feature schema is known (a model with ``epochs=0`` is built by ``fit`` without training,
    e.g. to inspect :meth:`gradients` at the initial point). Training runs in C++ with the GIL
    released; Ctrl-C stops it between batches (or inside a long batch) with KeyboardInterrupt.
    The optimiser state is not saved by :meth:`save`.
    """

    #: fs.evaluate: queries are described by their features, not by row ids.
    needs_query_features = True
    _fitted_state = (
        "_impl", "_schema", "_item_schema", "_item_features", "_added_items", "_epoch",
        "training_log", "best_epoch", "_dedicated",
    )  # fmt: skip

    # The sampled-softmax options, read-only attributes (change them with set_params). The
    # ``loss`` hyperparameter is the attribute ``loss_kind``: ``loss`` is the method.
    num_negatives = _SampledOption()
    sampler = _SampledOption()
    sampler_alpha = _SampledOption()
    sampler_weights = _SampledOption()
    share_negatives = _SampledOption()
    hard_pool = _SampledOption()
    temperature = _SampledOption()
    hard_fraction = _SampledOption()
    logq_correction = _SampledOption()
    remove_accidental_hits = _SampledOption()
    gravity = _SampledOption()
    mixed_negatives = _SampledOption()
    frequency_estimate = _SampledOption()

    def __init__(
        self,
        n_items: int,
        *,
        hidden: Sequence[int] = (),
        dim: int = 128,
        embedding_dim: int | Mapping[str, int] = 128,
        pooling: str = "mean",
        history: str | None = None,
        history_dropout: float = 0.9,
        history_target: str = "all",
        row_weighting: str = "targets",
        loss: str = "full",
        optimizer: str = "adagrad",
        learning_rate: float = 0.05,
        l2: float = 0.0,
        batch_size: int = 256,
        epochs: int = 100,
        num_threads: int = 0,
        seed: int = 0,
        item_bias: bool = False,
        vocab_sizes: Mapping[str, int] | None = None,
        num_negatives: int | None = None,
        sampler: str = "uniform",
        sampler_alpha: float = 0.75,
        sampler_weights: Any = None,
        share_negatives: bool = True,
        hard_pool: int | None = 2048,
        temperature: float = 1.0,
        hard_fraction: float = 1.0,
        logq_correction: bool = True,
        remove_accidental_hits: bool = True,
        gravity: float = 0.0,
        mixed_negatives: int = 0,
        frequency_estimate: str = "counts",
        hash_buckets: Mapping[str, int] | None = None,
        num_hashes: int | Mapping[str, int] = 1,
        item_hidden: Sequence[int] = (),
        item_id_embedding: bool = True,
        item_id_dropout: float = 0.25,
        item_embedding: str = "table",
        item_buckets: int | None = None,
        item_dedicated: int | None = None,
    ) -> None:
        self.n_items = check_int(n_items, "n_items", minimum=1)
        self.hidden = _layer_sizes(hidden, "hidden")
        self.item_hidden = _layer_sizes(item_hidden, "item_hidden")
        if not isinstance(item_id_embedding, bool | np.bool_):
            raise TypeError(
                f"item_id_embedding: expected a bool, got {type(item_id_embedding).__name__}"
            )
        self.item_id_embedding = bool(item_id_embedding)
        self.item_id_dropout = check_real(
            item_id_dropout, "item_id_dropout", minimum=0, maximum=1, exclusive_maximum=True
        )
        self.dim = check_int(dim, "dim", minimum=1)
        self.item_embedding = check_choice(item_embedding, "item_embedding", _ITEM_EMBEDDINGS)
        self.item_buckets = _compressed_size(
            item_buckets, "item_buckets", self.item_embedding in ("qr", "hybrid"),
            "item_embedding='qr' or 'hybrid'", 1, self.n_items,
        )  # fmt: skip
        self.item_dedicated = _compressed_size(
            item_dedicated, "item_dedicated", self.item_embedding == "hybrid",
            "item_embedding='hybrid'", 0, self.n_items,
        )  # fmt: skip
        if isinstance(embedding_dim, Mapping):
            self.embedding_dim: int | dict[str, int] = {
                str(k): check_int(v, f"embedding_dim['{k}']", minimum=1)
                for k, v in embedding_dim.items()
            }
        else:
            self.embedding_dim = check_int(embedding_dim, "embedding_dim", minimum=1)
        self.pooling = check_choice(pooling, "pooling", _POOLINGS)
        if history is not None and (not isinstance(history, str) or not history):
            raise TypeError(f"history: expected the name of a bag feature, got {history!r}")
        self.history = history
        self.history_dropout = check_real(
            history_dropout, "history_dropout", minimum=0, maximum=1, exclusive_maximum=True
        )
        self.history_target = check_choice(history_target, "history_target", _HISTORY_TARGETS)
        self.row_weighting = check_choice(row_weighting, "row_weighting", _ROW_WEIGHTINGS)
        self.loss_kind = check_choice(loss, "loss", _LOSSES)
        self.optimizer = check_choice(optimizer, "optimizer", _OPTIMIZERS)
        self.learning_rate = check_real(
            learning_rate, "learning_rate", minimum=0, exclusive_minimum=True
        )
        self.l2 = check_real(l2, "l2", minimum=0)
        self.batch_size = check_int(batch_size, "batch_size", minimum=1)
        self.epochs = check_int(epochs, "epochs", minimum=0)
        self.num_threads = check_num_threads(num_threads)
        self.seed = check_seed(seed)
        if not isinstance(item_bias, bool | np.bool_):
            raise TypeError(f"item_bias: expected a bool, got {type(item_bias).__name__}")
        self.item_bias = bool(item_bias)
        self.vocab_sizes = {
            str(k): check_int(v, f"vocab_sizes['{k}']", minimum=1)
            for k, v in (vocab_sizes or {}).items()
        }
        if hash_buckets is not None and not isinstance(hash_buckets, Mapping):
            raise TypeError(
                f"hash_buckets: expected a dict feature name -> buckets, got "
                f"{type(hash_buckets).__name__}"
            )
        self.hash_buckets = {
            str(k): check_int(v, f"hash_buckets['{k}']", minimum=1)
            for k, v in (hash_buckets or {}).items()
        }
        if isinstance(num_hashes, Mapping):
            self.num_hashes: int | dict[str, int] = {
                str(k): check_int(v, f"num_hashes['{k}']", minimum=1) for k, v in num_hashes.items()
            }
            for k in self.num_hashes:
                if k not in self.hash_buckets:
                    raise ValueError(f"num_hashes: '{k}' is not a feature of hash_buckets")
        else:
            self.num_hashes = check_int(num_hashes, "num_hashes", minimum=1)
        for k in self.hash_buckets:
            if k in self.vocab_sizes:
                raise ValueError(
                    f"vocab_sizes: '{k}' is hashed (hash_buckets), its table has "
                    f"hash_buckets['{k}'] rows"
                )
        self._sampled = SampledOptions(
            self.n_items,
            num_negatives=num_negatives,
            sampler=sampler,
            sampler_alpha=sampler_alpha,
            sampler_weights=sampler_weights,
            share_negatives=share_negatives,
            hard_pool=hard_pool,
            temperature=temperature,
            hard_fraction=hard_fraction,
            logq_correction=logq_correction,
            remove_accidental_hits=remove_accidental_hits,
            gravity=gravity,
            mixed_negatives=mixed_negatives,
            frequency_estimate=frequency_estimate,
        )
        self._impl: Any = None
        self._schema: dict[str, Any] | None = None
        # Item tower: its feature schema, the training items' features (pinned for the C++
        # loop) and the embeddings of items added after training (add_items).
        self._item_schema: dict[str, Any] | None = None
        self._item_features: QueryFeatures | None = None
        self._added_items = np.zeros((0, self.dim), np.float32)
        self._item_cache: tuple[Any, np.ndarray] | None = None  # (key, computed V)
        # Hybrid item table: the items with a row of their own (sorted int64), from the first fit.
        self._dedicated = np.zeros(0, np.int64)
        self._epoch = 0
        self.training_log: list[dict[str, float]] = []
        self.best_epoch: int | None = None

    # -- building --------------------------------------------------------------------------------
    def _loss_options(self) -> dict[str, Any]:
        return self._sampled.loss_options(self.loss_kind)

    def _feature_dim(self, name: str) -> int:
        if isinstance(self.embedding_dim, dict):
            if name not in self.embedding_dim:
                raise ValueError(f"embedding_dim: no dimension given for feature '{name}'")
            return self.embedding_dim[name]
        return self.embedding_dim

    def _feature_schema(self, feats: QueryFeatures, name: str) -> dict[str, Any]:
        """Table sizes and embedding dimensions of the features of one tower."""
        where = "" if name == "feats" else f"{name}: "
        cat_vocab = []
        for key, ids in feats.categorical.items():
            seen = int(ids.max()) + 1 if len(ids) else 1
            v = self.vocab_sizes.get(key, max(seen, feats.cardinalities.get(key, seen)))
            if v < seen:
                raise IndexError(
                    f"{where}categorical '{key}': id {seen - 1} is outside "
                    f"vocab_sizes['{key}'] = {v}"
                )
            cat_vocab.append(v)
        bag_vocab = []
        for key in feats.bags:
            seen = feats.bag_vocab[key]
            v = self.vocab_sizes.get(key, max(seen, feats.cardinalities.get(key, seen)))
            if v < seen:
                raise ValueError(
                    f"{where}bags '{key}': {seen} columns exceed vocab_sizes['{key}'] = {v}"
                )
            bag_vocab.append(v)
        return {
            "n_dense": 0 if feats.dense is None else int(feats.dense.shape[1]),
            "categorical_names": list(feats.categorical),
            "categorical_vocab": cat_vocab,
            "categorical_dim": [self._feature_dim(k) for k in feats.categorical],
            "bag_names": list(feats.bags),
            "bag_vocab": bag_vocab,
            "bag_dim": [self._feature_dim(k) for k in feats.bags],
        }

    def _build(
        self, feats: QueryFeatures, item_features: QueryFeatures | None = None,
        target_items: np.ndarray | None = None,
    ) -> None:  # fmt: skip
        """Makes the C++ model for these features (target_items: the item of every target entry,
        for the hybrid table's most frequent items)."""
        self._check_hash_names(feats, item_features)
        feats = self._hashed(feats, "feats")
        if item_features is not None:
            item_features = self._hashed(item_features, "item_features")
        schema = self._feature_schema(feats, "feats")
        if (self.history is not None and self.history_target == "dropped"
                and self.history in self.hash_buckets):  # fmt: skip
            raise ValueError(
                "history_target: 'dropped' compares history entries with target items, which a "
                "hashed history (hash_buckets) no longer has; use 'all'"
            )
        if self.history is not None and self.history not in feats.bags:
            raise ValueError(
                f"history: expected the name of a bag feature of feats, got {self.history!r} "
                f"(bag features: {list(feats.bags)})"
            )
        item_schema = None
        if item_features is not None:
            if self.item_bias:
                raise ValueError(
                    "item_bias: not available with item_features (a new item would have none)"
                )
            if self.item_embedding != "table":
                raise ValueError(
                    f"item_embedding: {self.item_embedding!r} is not available with "
                    "item_features (the item tower computes V)"
                )
            item_schema = self._feature_schema(item_features, "item_features")
        self._dedicated = np.zeros(0, np.int64)
        if self.item_embedding == "hybrid":
            items = np.zeros(0, np.int64) if target_items is None else target_items
            self._dedicated = _most_frequent(items, self.n_items, self._dedicated_count())
        self._impl = self._make_impl(schema, item_schema)
        self._schema = schema
        self._item_schema = item_schema
        self._added_items = np.zeros((0, self.dim), np.float32)
        self._item_cache = None

    def _make_impl(self, schema: dict[str, Any], item_schema: dict[str, Any] | None) -> Any:
        return _core.SoftmaxModel(
            n_items=self.n_items,
            dim=self.dim,
            hidden=list(self.hidden),
            **schema,
            pooling=self.pooling,
            history_bag=-1 if self.history is None else schema["bag_names"].index(self.history),
            history_dropout=self.history_dropout,
            history_target=self.history_target,
            item_bias=self.item_bias,
            loss=self.loss_kind,
            loss_options=self._loss_options(),
            optimizer=self.optimizer,
            learning_rate=self.learning_rate,
            l2=self.l2,
            batch_size=self.batch_size,
            seed=self.seed,
            num_threads=self.num_threads,
            item_schema=item_schema,
            item_hidden=list(self.item_hidden),
            item_id_embedding=self.item_id_embedding,
            item_id_dropout=self.item_id_dropout,
            item_buckets=self._bucket_count() if self.item_embedding != "table" else 0,
            item_dedicated=self._dedicated,
        )

    def _bucket_count(self) -> int:
        if self.item_buckets is not None:
            return self.item_buckets
        return max(1, min(self.n_items, math.isqrt(self.n_items - 1) + 1))

    def _dedicated_count(self) -> int:
        return self.n_items // 10 if self.item_dedicated is None else self.item_dedicated

    def _require_built(self) -> None:
        if self._impl is None:
            raise RuntimeError("SoftmaxModel: not fitted yet (call fit first)")

    def _hashes(self, key: str) -> int:
        k = self.num_hashes
        return k.get(key, 1) if isinstance(k, dict) else k

    def _hashed(self, feats: QueryFeatures, name: str) -> QueryFeatures:
        """feats with the hashed features' ids replaced by their rows (fastsoftmax.hashing);
        the other categorical features checked for non-negative integer ids."""
        from .hashing import hash_ids

        where = "" if name == "feats" else f"{name}: "
        categorical, bags = {}, {}
        for key, ids in feats.categorical.items():
            if key not in self.hash_buckets:
                if ids.dtype.kind not in "iu":
                    raise TypeError(
                        f"{where}categorical '{key}': expected integer ids, got dtype "
                        f"{ids.dtype} (strings need hash_buckets['{key}'])"
                    )
                if len(ids) and ids.min() < 0:
                    raise IndexError(
                        f"{where}categorical '{key}': expected ids >= 0, got {ids.min()}"
                    )
                categorical[key] = ids
                continue
            if not self.hash_buckets:
                continue
            b, k = self.hash_buckets[key], self._hashes(key)
            rows = hash_ids(ids, b, seed=self.seed, num_hashes=k)
            if k == 1:
                categorical[key] = rows[:, 0]
            else:  # k rows per id: a bag with weight 1 each (duplicates summed)
                n = len(ids)
                m = sp.csr_matrix((np.ones(n * k, np.float32), rows.ravel(),
                                   np.arange(0, n * k + 1, k)), shape=(n, b))  # fmt: skip
                m.sum_duplicates()
                bags[key] = m
        if not self.hash_buckets:
            return feats
        for key, (indptr, indices, data) in feats.bags.items():
            m = sp.csr_matrix(
                (data, indices, indptr), shape=(len(indptr) - 1, feats.bag_vocab[key])
            )
            if key in self.hash_buckets:
                # Entry e becomes k entries of the same row (its k rows): no COO round trip,
                # and sum_duplicates works in place on arrays made here (not the caller's).
                b, k = self.hash_buckets[key], self._hashes(key)
                rows = hash_ids(m.indices, b, seed=self.seed, num_hashes=k)
                data = np.repeat(m.data, k) if k > 1 else m.data.copy()
                m = sp.csr_matrix((data, rows.reshape(-1), m.indptr.astype(np.int64) * k),
                                  shape=(m.shape[0], b))  # fmt: skip
                m.sum_duplicates()
            bags[key] = m
        out = QueryFeatures(dense=feats.dense, categorical=categorical or None, bags=bags or None)
        out.cardinalities = {**feats.cardinalities, **self.hash_buckets}
        return out

    def _check_hash_names(self, *features: QueryFeatures | None) -> None:
        names = set()
        for f in features:
            if f is not None:
                names |= set(f.categorical) | set(f.bags)
        for key in self.hash_buckets:
            if key not in names:
                raise ValueError(
                    f"hash_buckets: '{key}' is not a categorical or bag feature "
                    f"(features: {sorted(names)})"
                )

    def _check_schema(self, feats: QueryFeatures, s: dict[str, Any], name: str) -> None:
        """Feature names, dense width and bag widths of feats against a tower's schema."""
        f = 0 if feats.dense is None else feats.dense.shape[1]
        if f != s["n_dense"]:
            raise ValueError(f"{name}: expected {s['n_dense']} dense features, got {f}")
        for kind, have, want in (
            ("categorical", list(feats.categorical), s["categorical_names"]),
            ("bags", list(feats.bags), s["bag_names"]),
        ):
            if sorted(have) != sorted(want):
                raise ValueError(f"{name}: expected {kind} features {want}, got {have}")
        where = "" if name == "feats" else f"{name}: "
        for i, key in enumerate(s["bag_names"]):
            if feats.bag_vocab[key] > s["bag_vocab"][i]:
                raise IndexError(
                    f"{where}bags '{key}': {feats.bag_vocab[key]} columns, but the table has "
                    f"{s['bag_vocab'][i]} rows"
                )

    def _data(
        self,
        feats: object,
        targets: object = None,
        *,
        name: str = "feats",
        sample_weight: object = None,
    ) -> Any:
        feats = self._hashed(_as_query_features(feats, name), name)
        s = self._schema
        assert s is not None
        self._check_schema(feats, s, name)
        t = None
        if targets is not None:
            t = _targets_arrays(
                targets, feats.n_rows, self.n_items, self.row_weighting, sample_weight
            )
        return self._impl.data(
            feats.n_rows,
            feats.dense,
            [feats.categorical[k] for k in s["categorical_names"]],
            [feats.bags[k] for k in s["bag_names"]],
            t,
        )

    def _item_data(self, feats: object, name: str = "item_features") -> Any:
        """Item features checked against the item tower and pinned for the C++ calls."""
        if self._item_schema is None:
            raise ValueError(f"{name}: the model was fitted without item features")
        feats = self._hashed(_as_query_features(feats, name), name)
        s = self._item_schema
        self._check_schema(feats, s, name)
        return self._impl.item_data(
            feats.n_rows,
            feats.dense,
            [feats.categorical[k] for k in s["categorical_names"]],
            [feats.bags[k] for k in s["bag_names"]],
        )

    def _training_items(self) -> Any:
        """The pinned features of the n_items training items (None without an item tower)."""
        if self._item_schema is None:
            return None
        return self._item_data(self._item_features)

    # -- training --------------------------------------------------------------------------------
    def fit(
        self,
        feats: QueryFeatures,
        targets: Any,
        *,
        validation: tuple | None = None,
        early_stopping: int | None = None,
        metric: str = "recall@10",
        sample_weight: Any = None,
        show_progress: bool = True,
        callback: Callable[[int, SoftmaxModel, dict[str, float]], Any] | None = None,
        item_features: Any = None,
    ) -> SoftmaxModel:
        """Train for ``epochs`` epochs from a fresh initialisation (drawn from ``seed``);
        :meth:`partial_fit` continues from the current parameters instead.

        Parameters
        ----------
        feats : QueryFeatures or fastsoftmax.datasets.Features
            Features of the N training queries.
        targets : scipy.sparse matrix, shape (N, n_items)
            Non-negative target weights; row b is normalised to the distribution p_b. Every row
            needs at least one positive weight.
        validation : (QueryFeatures, scipy.sparse matrix[, scipy.sparse matrix]), optional
            ``(features, relevant)`` or ``(features, relevant, exclude)`` of V held-out queries:
            ``relevant`` (V x n_items) are their held-out items, ``exclude`` (V x n_items) the
            items not to recommend to them. Without ``exclude``, a model with a ``history``
            feature excludes each validation query's history items (when the history bag has
            n_items columns), as :func:`fastsoftmax.evaluate` excludes the training items.
            ``logs[metric]`` is reported every epoch.
        early_stopping : int, optional
            Patience: stop when ``metric`` on ``validation`` has not improved for this many
            epochs, and restore the parameters of the best epoch (``self.best_epoch``; the
            optimiser state stays that of the last epoch). Requires ``validation``.
        metric : str, default "recall@10"
            ``"<name>@<k>"`` with name one of precision, recall, ndcg, map, hit_rate
            (:mod:`fastsoftmax.metrics`): the validation metric, higher is better.
        sample_weight : array_like, shape (N,), optional
            Non-negative weight per row, multiplying the ``row_weighting`` weight of the row.
        show_progress : bool, default True
            Show a tqdm progress bar over epochs.
        callback : callable, optional
            ``callback(epoch, model, logs)`` after each epoch (``epoch`` counted from 0 over
            fit and the partial_fit calls after it); returning True stops training.
        item_features : QueryFeatures or fastsoftmax.datasets.Features, optional
            Features of the n_items items (row j: item j). With them, item j's embedding is an
            item tower over its features (the query tower's building blocks: dense columns,
            categorical and bag embeddings with ``embedding_dim`` and ``vocab_sizes`` by
            feature name, ``item_hidden`` ReLU layers, a linear layer to ``dim``) instead of a
            row of an item table, so items never seen in training get embeddings from their
            features (:meth:`item_embeddings_from`, :meth:`add_items`). Each step runs the
            tower over the items the loss reads: every item for ``loss="full"`` (and the score
            sampler), the positives and negatives for ``"sampled"`` / ``"positives"``. An item
            id as a categorical item feature gives each training item its own embedding too.
            Not with ``item_bias``.

        Returns
        -------
        SoftmaxModel
            self. ``self.training_log`` gets one ``logs`` dict per epoch (``"loss"``: mean
            training loss over the epoch; ``metric`` with validation).

        Raises
        ------
        TypeError, ValueError, IndexError
            For malformed features, targets or validation data (wrong types, shapes, N
            mismatch, no rows, negative or non-finite targets, a row without positives, ids
            outside their tables), an unknown metric, or ``early_stopping`` without
            ``validation``.
        FloatingPointError
            When an epoch's mean training loss is not finite (training diverged, e.g. with a
            learning rate far too large); the model's parameters are then not finite either:
            build a new model or load a saved one.
        KeyboardInterrupt
            On Ctrl-C, noticed between batches (and inside long batches) within ~50 ms. The
            model keeps the parameters of the last completed optimiser step (a consistent state:
            every step is applied whole) and ``training_log`` lists the completed epochs only;
            it predicts, saves and can continue training (:meth:`partial_fit`).

        Notes
        -----
        Numerics: the losses use a max-shifted log-sum-exp, so logits of magnitude 1e4 and more
        give finite losses and gradients; target weights are normalised per row in float64, so
        their scale (even 1e30) does not matter.
        """
        before = {name: getattr(self, name) for name in self._fitted_state}
        self._impl, self._schema, self._epoch, self.best_epoch = None, None, 0, None
        self.training_log = []
        try:
            return self.partial_fit(feats, targets, validation=validation,
                                    early_stopping=early_stopping, metric=metric,
                                    sample_weight=sample_weight, show_progress=show_progress,
                                    callback=callback,
                                    item_features=item_features)  # fmt: skip
        except Exception:
            if not self.training_log:  # bad input (or divergence in the first epoch)
                for name, value in before.items():
                    setattr(self, name, value)
            raise

    def partial_fit(
        self,
        feats: QueryFeatures,
        targets: Any,
        *,
        epochs: int | None = None,
        validation: tuple | None = None,
        early_stopping: int | None = None,
        metric: str = "recall@10",
        sample_weight: Any = None,
        show_progress: bool = True,
        callback: Callable[[int, SoftmaxModel, dict[str, float]], Any] | None = None,
        item_features: Any = None,
    ) -> SoftmaxModel:
        """Continue training from the current parameters and optimiser state (an unfitted
        model is initialised first, as by :meth:`fit`).

        ``fit`` for n epochs then ``partial_fit(..., epochs=m)`` on the same data gives exactly
        the parameters of ``fit`` for n + m epochs (the random streams are keyed by the epoch
        number, which continues).

        Parameters
        ----------
        epochs : int, optional
            Epochs to run, >= 0; default ``self.epochs``.
        feats, targets, validation, early_stopping, metric, sample_weight, show_progress, callback
            As in :meth:`fit`.
        item_features : QueryFeatures or fastsoftmax.datasets.Features, optional
            As in :meth:`fit`; default: those of the previous fit (a model with an item tower).

        Returns
        -------
        SoftmaxModel
            self.
        """
        epochs = self.epochs if epochs is None else check_int(epochs, "epochs", minimum=0)
        feats = _as_query_features(feats)
        if feats.n_rows == 0:
            raise ValueError("feats: expected at least one row to fit on, got 0")
        metric_name, metric_k = _parse_metric(metric)
        if early_stopping is not None:
            early_stopping = check_int(early_stopping, "early_stopping", minimum=1)
            if validation is None:
                raise ValueError("early_stopping: requires validation=(features, relevant)")
        if item_features is not None:
            item_features = _as_query_features(item_features, "item_features")
            if item_features.n_rows != self.n_items:
                raise ValueError(
                    f"item_features: expected {self.n_items} rows (one per item, n_items), "
                    f"got {item_features.n_rows}"
                )
        if self._impl is None:
            # Check the targets before building (their errors should not depend on build order).
            arrays = _targets_arrays(targets, feats.n_rows, self.n_items, "uniform", sample_weight)
            self._build(feats, item_features, arrays[1])
        elif item_features is not None and self._item_schema is None:
            raise ValueError(
                "item_features: the model was fitted without item features (fit afresh to "
                "train an item tower)"
            )
        if item_features is not None:
            self._item_data(item_features)  # checked before the features are kept
            self._item_features = item_features
        data = self._data(feats, targets, sample_weight=sample_weight)
        items = self._training_items()
        val = None if validation is None else self._validation_set(validation)
        self._impl.prepare_loss(data)  # e.g. the popularity proposal of loss="sampled"
        stopper = _BestEpoch(self, early_stopping)
        bar = None
        if show_progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=epochs, desc="fit", unit="epoch")
        try:
            for _ in range(epochs):
                logs = {"loss": self._fit_epoch(data, items)}
                if val is not None:
                    logs[metric] = self._score(val, metric_name, metric_k)
                self.training_log.append(logs)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(logs)
                if stopper.update(logs.get(metric)):
                    break
                if callback is not None and callback(self._epoch - 1, self, logs) is True:
                    break
        finally:
            if bar is not None:
                bar.close()
        stopper.restore()
        return self

    def _fit_epoch(self, data: Any, items: Any = None) -> float:
        loss = self._impl.fit_epoch(data, self._epoch, items)
        self._epoch += 1
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"fit: the mean training loss of epoch {self._epoch - 1} is {loss}: "
                "training diverged (the parameters are no longer finite); lower "
                "learning_rate, add l2, or check the features for huge values"
            )
        return float(loss)

    def _validation_set(self, validation: object) -> tuple[QueryFeatures, Any, Any]:
        """(features, relevant, exclude) of a validation argument, checked."""
        if not isinstance(validation, tuple) or len(validation) not in (2, 3):
            raise TypeError(
                "validation: expected a tuple (features, relevant) or (features, relevant, exclude)"
            )
        val_feats = _as_query_features(validation[0], "validation features")
        self._data(val_feats, None, name="validation features")
        shape = (val_feats.n_rows, self.n_items)
        relevant = as_csr(validation[1], "validation relevant", dtype=None)
        if relevant.shape != shape:
            raise ValueError(f"validation relevant: expected shape {shape}, got {relevant.shape}")
        exclude = validation[2] if len(validation) == 3 else self._history_matrix(val_feats)
        if exclude is not None:
            exclude = as_csr(exclude, "validation exclude", dtype=None)
            if exclude.shape != shape:
                raise ValueError(f"validation exclude: expected shape {shape}, got {exclude.shape}")
        return val_feats, relevant, exclude

    def _history_matrix(self, feats: QueryFeatures) -> sp.csr_matrix | None:
        """The history bag of feats as an (N, n_items) CSR, if the model has one of that width."""
        if self.history is None or feats.bag_vocab[self.history] != self.n_items:
            return None
        indptr, indices, data = feats.bags[self.history]
        return sp.csr_matrix((data, indices, indptr), shape=(feats.n_rows, self.n_items))

    def _score(self, val: tuple[QueryFeatures, Any, Any], name: str, k: int) -> float:
        from .metrics import ranking_metrics

        feats, relevant, exclude = val
        ids, _ = self.recommend(feats, k=k, exclude=exclude)
        return float(ranking_metrics(ids, relevant, k)[name])

    def history_kept(self, feats: QueryFeatures, epoch: int) -> np.ndarray:
        """Which history entries the corruption of training epoch ``epoch`` keeps.

        Parameters
        ----------
        feats : QueryFeatures or fastsoftmax.datasets.Features
            N queries, with the history bag; row r's draws are those of data row r.
        epoch : int
            Epoch number (``fit`` counts epochs over all its calls, from 0).

        Returns
        -------
        numpy.ndarray, bool, shape (nnz,)
            One flag per stored entry of the history bag, in CSR order.
        """
        self._require_built()
        if self.history is None:
            raise ValueError("history: the model has no history feature")
        epoch = check_int(epoch, "epoch", minimum=0)
        return self._impl.history_kept(self._data(feats), epoch)

    # -- prediction ------------------------------------------------------------------------------
    def query_embeddings(self, feats: QueryFeatures) -> np.ndarray:
        """psi(x) for every row of ``feats``.

        Returns
        -------
        numpy.ndarray, float32, shape (N, dim)
        """
        self._require_built()
        return self._impl.query_embeddings(self._data(feats))

    @property
    def item_embeddings(self) -> np.ndarray:
        """float32 array, shape (n_items, dim): read-only view of the item table V.

        With an item tower: the tower's embeddings of the training items, followed by those of
        the items added with :meth:`add_items` (shape (n_items + added, dim)), computed from the
        parameters and kept until the next training step, :meth:`add_items` or access to
        :attr:`parameters` (whose views may be written). A compressed table (``item_embedding``
        "qr" / "hybrid") is materialised here the same way.
        """
        self._require_built()
        if self.item_embedding != "table" and self._item_schema is None:
            key = (id(self._impl), self._impl.steps)
            if self._item_cache is None or self._item_cache[0] != key:
                self._item_cache = (key, self._impl.item_rows(0, self.n_items))
            v = self._item_cache[1].view()
        elif self._item_schema is not None:
            # Cached until the next training step, add_items, or access to `parameters`.
            key = (id(self._impl), self._impl.steps, len(self._added_items))
            if self._item_cache is None or self._item_cache[0] != key:
                v = self._impl.item_embeddings(self._training_items(), True)
                if len(self._added_items):
                    v = np.vstack([v, self._added_items])
                self._item_cache = (key, v)
            v = self._item_cache[1].view()
        else:
            v = self._impl.parameters()["item_embeddings"].view()
        v.flags.writeable = False
        return v

    def item_embeddings_from(self, item_features: Any) -> np.ndarray:
        """The item tower's embeddings of any items, seen in training or not.

        Parameters
        ----------
        item_features : QueryFeatures or fastsoftmax.datasets.Features
            Features of M items, with the names and kinds the model was fitted with.

        Returns
        -------
        numpy.ndarray, float32, shape (M, dim)

        Raises
        ------
        ValueError
            If the model has no item tower, or the features do not match its item features.
        IndexError
            For a categorical id or bag column outside its table.
        """
        self._require_built()
        return self._impl.item_embeddings(self._item_data(item_features), False)

    def add_items(self, item_features: Any) -> np.ndarray:
        """Add new items, embedded by the item tower from their features, to what
        :meth:`recommend`, :meth:`recommend_all`, :meth:`similar_items` and
        :meth:`build_index` rank, without retraining.

        The new items get the ids ``len(item_embeddings)`` on; their embeddings are fixed when
        added (training again does not update them: add them again, or train with them). A new
        ``fit`` forgets them. ``exclude`` matrices with n_items columns are widened with
        empty columns for them.

        Parameters
        ----------
        item_features : QueryFeatures or fastsoftmax.datasets.Features
            Features of M new items.

        Returns
        -------
        numpy.ndarray, int64, shape (M,)
            The new items' ids.
        """
        v = self.item_embeddings_from(item_features)
        first = self.n_items + len(self._added_items)
        self._added_items = np.vstack([self._added_items, v])
        return np.arange(first, first + len(v), dtype=np.int64)

    def _widen_exclude(self, exclude: Any) -> Any:
        """An (N, n_items) exclusion matrix widened to the added items (nothing excluded there)."""
        if exclude is None or not len(self._added_items) or not sp.issparse(exclude):
            return exclude
        if exclude.shape[1] != self.n_items:
            return exclude
        e = sp.csr_matrix(exclude, copy=True)
        e.resize((e.shape[0], self.n_items + len(self._added_items)))
        return e

    def recommend(
        self, feats: QueryFeatures, k: int = 10, *, exclude: Any = None,
        filter_seen: bool = False, index: Any = None,
    ) -> tuple[np.ndarray, np.ndarray]:  # fmt: skip
        """Top-``k`` items per query by score ``psi(x) . V_j (+ b_j)``: exact (fs.topk), or
        approximate with an ``index`` from :meth:`build_index`.

        Parameters
        ----------
        feats : QueryFeatures or fastsoftmax.datasets.Features
            N queries.
        k : int, default 10
        exclude : scipy.sparse matrix, shape (N, n_items), optional
            Items not to recommend per query (e.g. the training interactions).
        filter_seen : bool, default False
            Also leave out the items of each query's ``history`` bag (a model with a history
            feature over the n_items items).
        index : fastsoftmax.IVFIndex or fastsoftmax.ExactIndex, optional
            From :meth:`build_index` on this model as it is now (checked: an index of other
            items is a ValueError).

        Returns
        -------
        ids : numpy.ndarray, int64, shape (N, k)
            Best first; padded with -1 when fewer than k items are eligible.
        scores : numpy.ndarray, float32, shape (N, k)
        """
        psi = self.query_embeddings(feats)
        if filter_seen:
            seen = self._history_matrix(_as_query_features(feats))
            if seen is None:
                raise ValueError(
                    "filter_seen: the model has no history bag feature over its n_items items; "
                    "pass exclude= instead"
                )
            exclude = seen if exclude is None else exclusion_union(seen, exclude)
        return self._top_items(psi, k, self._widen_exclude(exclude), index)

    def _top_items(
        self, queries: np.ndarray, k: int, exclude: Any, index: Any
    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact top-k: a compressed item table not materialised yet is scored block by block
        (memory O(block * dim), not O(n_items * dim)); otherwise as Estimator."""
        materialised = self._item_cache is not None and self._item_cache[0] == (
            id(self._impl),
            self._impl.steps,
        )
        if self.item_embedding == "table" or index is not None or materialised:
            return super()._top_items(queries, k, exclude, index)
        from .retrieval import topk

        q = self._serving_queries(queries)
        if exclude is not None:
            exclude = as_csr(exclude, "exclude", dtype=None, shape=(len(q), self.n_items),
                             canonical=False)  # fmt: skip
        best_ids = np.full((len(q), 0), -1, np.int64)
        best_scores = np.full((len(q), 0), -np.inf, np.float32)
        for j0 in range(0, self.n_items, _SCORE_BLOCK):
            j1 = min(self.n_items, j0 + _SCORE_BLOCK)
            part = None if exclude is None else exclude[:, j0:j1]
            ids, scores = topk(q, self._serving_items(slice(j0, j1)), min(k, j1 - j0),
                               exclude=part, num_threads=self.num_threads)  # fmt: skip
            ids = np.where(ids >= 0, ids + j0, -1)
            best_ids, best_scores = _merge_top(best_ids, best_scores, ids, scores, k)
        return best_ids, best_scores

    # psi . V_j + b_j == [psi, 1] . [V_j, b_j]: with an item bias, one more column on each side.
    def _serving_items(self, rows: np.ndarray | slice | None = None) -> np.ndarray:
        if isinstance(rows, slice) and self.item_embedding != "table":
            # A block of a compressed table (the blocked top-k), without materialising the rest.
            items = self._impl.item_rows(rows.start, rows.stop)
        else:
            items = super()._serving_items(rows)
        if not self.item_bias:
            return items
        bias = self._impl.parameters()["item_bias"]
        bias = bias if rows is None else bias[rows]
        return np.hstack([items, bias[:, None]])

    def _serving_queries(self, queries: np.ndarray) -> np.ndarray:
        if not self.item_bias:
            return queries
        return np.hstack([queries, np.ones((len(queries), 1), dtype=np.float32)])

    def recommend_all(
        self,
        feats: QueryFeatures,
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
        """The top-``k`` items of every row of ``feats``, streamed to the Parquet file ``out``.

        The rows of ``recommend(feats, k, exclude=exclude, filter_seen=filter_seen,
        index=index)``, computed ``batch_size`` queries at a time (one Parquet row group each; the features
        and ``exclude`` are sliced per batch), so memory stays O(batch_size * (k + dim)) on top
        of the inputs, whatever N. Long format: columns ``query`` (row of ``feats`` or its
        label), ``rank`` (int32, from 1), ``item`` (item id or label), ``score`` (float32);
        padding (fewer than ``k`` eligible items) is left out. Written atomically (see
        :func:`fastsoftmax.recommend_all.write_recommendations`). Needs pyarrow
        (``pip install 'fastsoftmax[data]'``).

        Parameters
        ----------
        feats : QueryFeatures or fastsoftmax.datasets.Features
            N queries.
        k : int, default 10
            Items per query, >= 1.
        out : str or os.PathLike
            The Parquet file (its folder must exist; an existing file is replaced).
        exclude : scipy.sparse matrix, shape (N, n_items), optional
            Items not to recommend per query (e.g. the training interactions).
        filter_seen : bool, default False
            Also leave out the items of each query's ``history`` bag, as in :meth:`recommend`.
        batch_size : int, default 4096
            Queries per batch, >= 1.
        query_labels : array_like, shape (N,), optional
            Labels (integers or strings, e.g. the original user ids) written instead of the
            row numbers of ``feats``.
        item_labels : array_like, shape (n_items,), optional
            Labels written instead of the item ids (with added items, one per item of
            :attr:`item_embeddings`).
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
            For an argument of the wrong type (``feats`` not query features, ``exclude`` not
            sparse, labels neither integers nor strings, ...).
        ValueError, IndexError
            For ``k`` or ``batch_size`` < 1, ``out`` a folder or in a missing folder, labels of
            the wrong length, ``exclude`` of the wrong shape, features that do not fit the
            model, or ``filter_seen`` without a history bag over the n_items items.
        """
        self._require_built()
        if not isinstance(feats, QueryFeatures) and not callable(getattr(feats, "take", None)):
            feats = _as_query_features(feats)
        n = len(feats)
        if exclude is not None:
            exclude = as_csr(exclude, "exclude", dtype=None, shape=(n, self.n_items),
                             canonical=False)  # fmt: skip

        def batch(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            lo, hi = int(rows[0]), int(rows[-1]) + 1
            part = None if exclude is None else exclude[lo:hi]
            return self.recommend(_query_feature_rows(feats, lo, hi), k, exclude=part,
                                  filter_seen=filter_seen, index=index)  # fmt: skip

        return write_recommendations(
            batch, n, k, out, batch_size=batch_size, query_labels=query_labels,
            item_labels=item_labels, n_items=self.n_items + len(self._added_items),
            progress=progress,
        )  # fmt: skip

    def loss(self, feats: QueryFeatures, targets: Any, *, sample_weight: Any = None) -> float:
        """Loss of the configured kind over the given rows (without the L2 term): the mean over
        the N rows of each row's weight (``row_weighting``, ``sample_weight``) times its loss.

        Parameters
        ----------
        feats : QueryFeatures or fastsoftmax.datasets.Features
            N queries.
        targets : scipy.sparse matrix, shape (N, n_items)
            Their target weights (see :meth:`fit`).
        sample_weight : array_like, shape (N,), optional
            Non-negative weight per row (see :meth:`fit`).

        Returns
        -------
        float
        """
        self._require_built()
        data = self._data(feats, targets, sample_weight=sample_weight)
        value, _ = self._impl.evaluate(data, 0, False, self._training_items())
        return float(value)

    def gradients(
        self, feats: QueryFeatures, targets: Any, *, sample_weight: Any = None, seed: int = 0
    ) -> dict[str, np.ndarray]:
        """Gradient of :meth:`loss` with respect to every parameter.

        Parameters
        ----------
        feats, targets, sample_weight
            As for :meth:`loss`.
        seed : int, default 0
            Seed of the loss's randomness (sampled losses); deterministic losses ignore it. With
            the model's ``seed`` and all N rows in one batch, this is the gradient of ``fit``'s
            first step on an untrained model (per-row negatives are keyed by the row's index, not
            its batch position).

        Returns
        -------
        dict str -> numpy.ndarray
            float32 arrays with the names and shapes of :attr:`parameters`.
        """
        self._require_built()
        data = self._data(feats, targets, sample_weight=sample_weight)
        _, grads = self._impl.evaluate(data, check_seed(seed), True, self._training_items())
        return dict(grads)

    @property
    def parameters(self) -> dict[str, np.ndarray]:
        """dict str -> writable float32 views of the model's own parameter arrays.

        Names: ``mlp.<l>.weight`` (in x out, so a layer is ``x @ W + b``), ``mlp.<l>.bias``,
        ``categorical.<name>``, ``bags.<name>``, ``item_embeddings`` and ``item_bias``; with an
        item tower, its parameters as ``item_tower.mlp.<l>.weight``, ... and
        ``item_id_embeddings`` instead of the last two.
        Writing into them changes the model (the optimiser state is kept).
        """
        self._require_built()
        self._item_cache = None  # the caller may write into the item tower's parameters
        return dict(self._impl.parameters())

    # -- persistence -----------------------------------------------------------------------------
    def _config(self) -> dict[str, Any]:
        return {
            "n_items": self.n_items,
            "hidden": self.hidden,
            "dim": self.dim,
            "embedding_dim": self.embedding_dim,
            "pooling": self.pooling,
            "history": self.history,
            "history_dropout": self.history_dropout,
            "history_target": self.history_target,
            "row_weighting": self.row_weighting,
            "loss": self.loss_kind,
            "optimizer": self.optimizer,
            "learning_rate": self.learning_rate,
            "l2": self.l2,
            "batch_size": self.batch_size,
            "epochs": self.epochs,
            "num_threads": self.num_threads,
            "seed": self.seed,
            "item_bias": self.item_bias,
            "vocab_sizes": self.vocab_sizes,
            "hash_buckets": self.hash_buckets,
            "num_hashes": self.num_hashes,
            "item_hidden": self.item_hidden,
            "item_id_embedding": self.item_id_embedding,
            "item_id_dropout": self.item_id_dropout,
            "item_embedding": self.item_embedding,
            "item_buckets": self.item_buckets,
            "item_dedicated": self.item_dedicated,
            **self._sampled.config(),
        }

    def _to_arrays(self) -> dict[str, np.ndarray]:
        self._require_built()
        meta = {
            "config": self._config(), "schema": self._schema, "epoch": self._epoch,
            "item_schema": self._item_schema,
        }  # fmt: skip
        arrays = {"meta_json": np.array(json.dumps(meta))}
        for name, value in self._impl.parameters().items():
            arrays[f"param/{name}"] = value
        if self.item_embedding == "hybrid":
            arrays["layout/item_dedicated"] = self._dedicated
        if self._item_features is not None:
            arrays.update(_features_to_arrays(self._item_features, "items/"))
            arrays["added_items"] = self._added_items
        return arrays

    @classmethod
    def _from_arrays(cls, arrays: Mapping[str, np.ndarray]) -> SoftmaxModel:
        meta = json.loads(str(arrays["meta_json"]))
        meta["config"].setdefault("row_weighting", "uniform")  # files from before the option
        model = cls(**meta["config"])
        item_schema = meta.get("item_schema")
        if model.item_embedding == "hybrid":
            model._dedicated = np.asarray(arrays["layout/item_dedicated"], dtype=np.int64)
        model._impl = model._make_impl(meta["schema"], item_schema)
        model._schema = meta["schema"]
        if item_schema is not None:
            model._item_schema = item_schema
            model._item_features = _features_from_arrays(arrays, "items/", item_schema)
            model._added_items = np.asarray(arrays["added_items"], dtype=np.float32)
            model._item_cache = None
        model._epoch = int(meta["epoch"])
        params = model._impl.parameters()
        stored = {k[len("param/") :] for k in arrays if k.startswith("param/")}
        if stored != set(params):
            raise ValueError(
                f"path: parameters {sorted(stored)} do not match the model's {sorted(params)}"
            )
        for name, view in params.items():
            value = arrays[f"param/{name}"]
            if value.shape != view.shape:
                raise ValueError(
                    f"path: parameter {name} has shape {value.shape}, expected {view.shape}"
                )
            view[...] = value
        return model

    def save(self, path: str | os.PathLike) -> None:
        """Save configuration and parameters to the ``.npz`` file ``path`` (no pickle).

        Load with :func:`fastsoftmax.load`; the loaded model predicts identically. The optimiser
        state is not saved: further training restarts it.
        """
        save_arrays(path, _MODEL_TYPE, self._to_arrays())


def _features_to_arrays(feats: QueryFeatures, prefix: str) -> dict[str, np.ndarray]:
    """The arrays of a QueryFeatures for a model file (names under ``prefix``)."""
    out: dict[str, np.ndarray] = {}
    if feats.dense is not None:
        out[f"{prefix}dense"] = feats.dense
    for key, ids in feats.categorical.items():
        out[f"{prefix}categorical/{key}"] = ids
    for key, (indptr, indices, data) in feats.bags.items():
        out[f"{prefix}bags/{key}/indptr"] = indptr
        out[f"{prefix}bags/{key}/indices"] = indices
        out[f"{prefix}bags/{key}/data"] = data
        out[f"{prefix}bags/{key}/columns"] = np.array(feats.bag_vocab[key])
    return out


def _features_from_arrays(
    arrays: Mapping[str, np.ndarray], prefix: str, schema: dict[str, Any]
) -> QueryFeatures:
    """The QueryFeatures that :func:`_features_to_arrays` stored."""
    dense = arrays[f"{prefix}dense"] if schema["n_dense"] else None
    categorical = {k: arrays[f"{prefix}categorical/{k}"] for k in schema["categorical_names"]}
    bags = {}
    for k in schema["bag_names"]:
        indptr = arrays[f"{prefix}bags/{k}/indptr"]
        shape = (len(indptr) - 1, int(arrays[f"{prefix}bags/{k}/columns"]))
        bags[k] = sp.csr_matrix(
            (arrays[f"{prefix}bags/{k}/data"], arrays[f"{prefix}bags/{k}/indices"], indptr),
            shape=shape,
        )
    return QueryFeatures(dense=dense, categorical=categorical or None, bags=bags or None)


_SCORE_BLOCK = 1 << 16  # items per block of the blocked top-k of compressed tables


def _merge_top(
    ids_a: np.ndarray, scores_a: np.ndarray, ids_b: np.ndarray, scores_b: np.ndarray, k: int
) -> tuple[np.ndarray, np.ndarray]:
    """The k best of two top lists per row (score descending, ties by the lower id, padding
    -1 / -inf last), padded to k columns."""
    ids = np.hstack([ids_a, ids_b])
    scores = np.hstack([scores_a, scores_b])
    # Padding sorts after every real id with the same (-inf) score.
    tie = np.where(ids < 0, np.iinfo(np.int64).max, ids)
    order = np.lexsort((tie, -scores.astype(np.float64)), axis=-1)[:, :k]
    ids = np.take_along_axis(ids, order, axis=1)
    scores = np.take_along_axis(scores, order, axis=1)
    if ids.shape[1] < k:
        pad = k - ids.shape[1]
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
    return ids, scores


def _parse_metric(metric: object) -> tuple[str, int]:
    """("recall", 10) from "recall@10"; a ValueError naming `metric` for anything else."""
    from .metrics import METRIC_NAMES

    name, _, k = str(metric).partition("@") if isinstance(metric, str) else ("", "", "")
    if name not in METRIC_NAMES or not k.isdigit() or int(k) < 1:
        raise ValueError(
            f"metric: expected '<name>@<k>' with name in {list(METRIC_NAMES)} and k >= 1, "
            f"got {metric!r}"
        )
    return name, int(k)


class _BestEpoch:
    """Early stopping: remembers the best epoch's parameters and restores them at the end."""

    def __init__(self, model: SoftmaxModel, patience: int | None) -> None:
        self.model, self.patience = model, patience
        self.best: float = -math.inf
        self.best_params: dict[str, np.ndarray] | None = None
        self.since_best = 0

    def update(self, score: float | None) -> bool:
        """Record an epoch's validation score; True when training should stop."""
        if self.patience is None or score is None:
            return False
        if score > self.best:
            self.best, self.since_best = score, 0
            self.best_params = {k: v.copy() for k, v in self.model.parameters.items()}
            self.model.best_epoch = self.model._epoch - 1
            return False
        self.since_best += 1
        return self.since_best >= self.patience

    def restore(self) -> None:
        if self.best_params is None:
            return
        for name, view in self.model.parameters.items():
            view[...] = self.best_params[name]


register_model(_MODEL_TYPE, SoftmaxModel)
