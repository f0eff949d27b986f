"""Every query's top-k, streamed to a Parquet file in bounded memory.

:func:`write_recommendations` is the one implementation behind
:meth:`fastsoftmax.WALS.recommend_all`, :meth:`fastsoftmax.SoftmaxModel.recommend_all` and
``fastsoftmax recommend --all``: it asks a ``recommend_batch(rows)`` function for the top-k of
``batch_size`` queries at a time and writes each batch as one Parquet row group, so memory stays
O(batch_size * k) whatever the number of queries. Needs pyarrow (``pip install
'fastsoftmax[data]'``).

The file is in long format, one row per (query, rank), padding left out:

========  ======================================  =============================================
column    type                                    value
========  ======================================  =============================================
query     int64, or the type of ``query_labels``  query row id (or its label)
rank      int32                                   1 for the best item of the query, 2, ...
item      int64, or the type of ``item_labels``   item id (or its label)
score     float32                                 the model's score
========  ======================================  =============================================
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ._validation import check_int
from .io import atomic_file

__all__ = ["DEFAULT_BATCH_SIZE", "write_recommendations"]

#: Queries per batch (and Parquet row group) unless ``batch_size`` says otherwise.
DEFAULT_BATCH_SIZE = 4096

_DATA_EXTRA = "pip install 'fastsoftmax[data]'"


def _parquet() -> tuple[Any, Any]:
    """(pyarrow, pyarrow.parquet), or an ImportError saying how to install them."""
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as e:
        raise ImportError(
            f"recommend_all: writing Parquet files needs pyarrow ({_DATA_EXTRA})"
        ) from e
    return pa, pq


def _check_out(out: object) -> Path:
    """``out`` as a Path to a file that can be created: not a folder, in an existing folder."""
    if not isinstance(out, str | os.PathLike):
        raise TypeError(f"out: expected a file path (str or os.PathLike), got {type(out).__name__}")
    path = Path(os.fspath(out))
    if not str(path) or path.is_dir():
        raise ValueError(f"out: {str(path)!r} is a folder, expected a file path (.parquet)")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ValueError(f"out: the folder {str(folder)!r} does not exist")
    return path


def _labels(labels: Any, name: str, n: int | None, what: str) -> np.ndarray | None:
    """Labels as a 1-D array of integers or strings (bytes, str or Python str objects), one
    per id when ``n`` is given."""
    if labels is None:
        return None
    arr = np.asarray(labels)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array (one label per {what}), got shape "
                         f"{arr.shape}")  # fmt: skip
    if arr.size == 0 and arr.dtype.kind == "f":  # an empty list: no labels to map
        arr = arr.astype(np.int64)
    if arr.dtype.kind not in "iuUSO":
        raise TypeError(f"{name}: expected integer or string labels, got dtype {arr.dtype}")
    if n is not None and len(arr) != n:
        raise ValueError(f"{name}: expected {n} labels (one per {what}), got {len(arr)}")
    return arr


def _label_type(pa: Any, labels: np.ndarray | None) -> Any:
    """The Arrow type of a column of these labels (int64 row ids without labels; object arrays
    hold strings)."""
    if labels is None:
        return pa.int64()
    kind = labels.dtype.kind
    if kind in "iu":
        return pa.from_numpy_dtype(labels.dtype)
    return pa.binary() if kind == "S" else pa.string()


def _column(pa: Any, ids: np.ndarray, labels: np.ndarray | None, type_: Any, name: str) -> Any:
    """The Arrow column of these ids, mapped through ``labels`` if given."""
    if labels is None:
        return pa.array(ids, type=type_)
    try:
        column = pa.array(labels[ids], type=type_)
    except (TypeError, pa.ArrowInvalid) as e:
        raise TypeError(f"{name}: expected integer or string labels ({e})") from None
    if column.null_count:
        raise ValueError(f"{name}: expected labels, found None")
    return column


def write_recommendations(
    recommend_batch: Callable[[np.ndarray], tuple[Any, Any]],
    n_queries: int,
    k: int,
    out: str | os.PathLike,
    *,
    batch_size: int = DEFAULT_BATCH_SIZE,
    query_labels: Any = None,
    item_labels: Any = None,
    n_items: int | None = None,
    progress: bool | None = None,
) -> int:
    """Write the top-``k`` items of queries ``0 .. n_queries - 1`` to the Parquet file ``out``,
    ``batch_size`` queries at a time.

    Each batch becomes one row group of the file (a batch whose queries have no eligible item
    at all adds none; pyarrow splits a batch beyond its maximum row group length); memory stays O(batch_size * k) whatever ``n_queries``. Rows are in long
    format (see the module docstring): ``query``, ``rank`` (int32, from 1), ``item``, ``score``
    (float32), queries in increasing row order and each query's items best first; padding
    entries (item id -1) are left out. The file is written atomically: to a temporary file in
    the folder of ``out``, renamed over ``out`` once complete (an existing file is replaced
    only then); on an error or KeyboardInterrupt the temporary file is removed and ``out`` is
    left as it was.

    Parameters
    ----------
    recommend_batch : callable
        ``recommend_batch(rows) -> (ids, scores)``: ``rows`` is ``numpy.arange(lo, hi)``
        (int64, consecutive query ids, so a caller may slice its inputs ``[lo:hi]``), ``ids``
        the items (int64, shape (B, k), best first, -1 for padding) and ``scores`` their
        scores (float32, shape (B, k)) for those B queries, as a model's ``recommend``
        returns them.
    n_queries : int
        Number of queries, >= 0 (0 writes a file with the columns and no rows).
    k : int
        Items per query, >= 1 (the width of ``recommend_batch``'s arrays).
    out : str or os.PathLike
        The Parquet file to write (its folder must exist; an existing file is replaced).
    batch_size : int, default 4096
        Queries per batch and row group, >= 1.
    query_labels : array_like, shape (n_queries,), optional
        Label of each query (e.g. the original user ids), integers or strings, written in the
        ``query`` column instead of the row ids (its type follows the labels: an integer dtype
        as is, str / object as Arrow string, bytes as binary).
    item_labels : array_like, shape (n_items,), optional
        Label of each item (e.g. the original item ids), written in the ``item`` column.
    n_items : int, optional
        Number of items: the length ``item_labels`` must have (unchecked if None).
    progress : bool, optional
        Show a tqdm progress bar (on stderr) over the queries; None (the default) shows it
        only when stderr is a terminal.

    Returns
    -------
    int
        The number of rows written (recommendations without the padding).

    Raises
    ------
    ImportError
        If pyarrow is not installed (``pip install 'fastsoftmax[data]'``).
    TypeError
        If ``recommend_batch`` is not callable, ``k`` / ``batch_size`` / ``n_queries`` not
        integers, ``out`` not a path, ``progress`` not a bool or None, or labels neither
        integers nor strings.
    ValueError
        If ``k`` or ``batch_size`` < 1, ``n_queries`` < 0, ``out`` is a folder or in a folder
        that does not exist, labels are not 1-D or not one per query / item, or
        ``recommend_batch`` returns arrays of another shape (TypeError: ids not integers).
    Exception
        Whatever ``recommend_batch`` raises (``out`` is then left as it was).
    """
    if not callable(recommend_batch):
        raise TypeError(
            f"recommend_batch: expected a callable rows -> (ids, scores), got "
            f"{type(recommend_batch).__name__}"
        )
    n_queries = check_int(n_queries, "n_queries", minimum=0)
    k = check_int(k, "k", minimum=1)
    batch_size = check_int(batch_size, "batch_size", minimum=1)
    if n_items is not None:
        n_items = check_int(n_items, "n_items", minimum=0)
    path = _check_out(out)
    query_labels = _labels(query_labels, "query_labels", n_queries, "query")
    item_labels = _labels(item_labels, "item_labels", n_items, "item")
    if progress is not None and not isinstance(progress, bool | np.bool_):
        raise TypeError(f"progress: expected True, False or None, got {progress!r}")
    show = sys.stderr.isatty() if progress is None else bool(progress)
    pa, pq = _parquet()
    from tqdm import tqdm

    query_type = _label_type(pa, query_labels)
    item_type = _label_type(pa, item_labels)
    schema = pa.schema([("query", query_type), ("rank", pa.int32()), ("item", item_type),
                        ("score", pa.float32())])  # fmt: skip
    ranks = np.arange(1, k + 1, dtype=np.int32)
    written = 0
    with (
        atomic_file(path) as f,
        tqdm(total=n_queries, disable=not show, desc="recommend_all", unit="query",
             file=sys.stderr) as bar,
    ):  # fmt: skip
        writer = pq.ParquetWriter(f, schema)
        try:
            for lo in range(0, n_queries, batch_size):
                rows = np.arange(lo, min(lo + batch_size, n_queries), dtype=np.int64)
                ids, scores = recommend_batch(rows)
                ids = np.asarray(ids)
                if ids.dtype.kind not in "iu":
                    raise TypeError(
                        f"recommend_batch: expected integer item ids, got dtype {ids.dtype}"
                    )
                scores = np.asarray(scores, dtype=np.float32)
                if ids.shape != (len(rows), k) or scores.shape != ids.shape:
                    raise ValueError(
                        f"recommend_batch: expected ids and scores of shape "
                        f"({len(rows)}, {k}) for {len(rows)} queries, got {ids.shape} and "
                        f"{scores.shape}"
                    )
                keep = ids >= 0
                count = int(keep.sum())
                if count:
                    table = pa.Table.from_arrays([
                        _column(pa, np.repeat(rows, keep.sum(axis=1)), query_labels,
                                query_type, "query_labels"),
                        pa.array(np.broadcast_to(ranks, ids.shape)[keep]),
                        _column(pa, ids[keep].astype(np.int64, copy=False), item_labels,
                                item_type, "item_labels"),
                        pa.array(scores[keep]),
                    ], schema=schema)  # fmt: skip
                    writer.write_table(table, row_group_size=count)
                    written += count
                bar.update(len(rows))
        except BaseException:
            try:
                writer.close()
            except Exception:  # the first error is the one to report
                pass
            raise
        writer.close()
    return written


def _query_feature_rows(feats: Any, lo: int, hi: int) -> Any:
    """Rows ``[lo, hi)`` of query features: a :class:`fastsoftmax.QueryFeatures` sliced without
    copying more than those rows, a :class:`fastsoftmax.datasets.Features` by its ``take``."""
    from .softmax import QueryFeatures, _as_query_features

    if not isinstance(feats, QueryFeatures):
        if callable(getattr(feats, "take", None)):
            return feats.take(np.arange(lo, hi))
        feats = _as_query_features(feats)
    import scipy.sparse as sp

    bags = {}
    for name, (indptr, indices, data) in feats.bags.items():
        begin, end = indptr[lo], indptr[hi]
        bags[name] = sp.csr_matrix(
            (data[begin:end], indices[begin:end], indptr[lo : hi + 1] - begin),
            shape=(hi - lo, feats.bag_vocab[name]),
        )
    part = QueryFeatures(
        dense=None if feats.dense is None else feats.dense[lo:hi],
        categorical={name: v[lo:hi] for name, v in feats.categorical.items()} or None,
        bags=bags or None,
    )
    part.cardinalities = dict(feats.cardinalities)
    return part
