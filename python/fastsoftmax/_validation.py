"""Argument checks shared by the public API.

Every public entry point validates user input here, before anything reaches the C++ core, and
raises TypeError / ValueError / IndexError with a message that names the argument and says what was
expected and what was given.
"""

from __future__ import annotations

import numbers
import operator

import numpy as np

__all__ = [
    "as_csr",
    "as_real_array",
    "check_choice",
    "check_finite",
    "check_int",
    "check_num_threads",
    "check_real",
    "check_seed",
    "check_sparse_structure",
]

_MAX_SEED = 2**64


def check_int(value: object, name: str, *, minimum: int | None = None) -> int:
    """Return ``value`` as a Python int, rejecting bools, floats and out-of-range values."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name}: expected an integer, got {type(value).__name__} {value!r}")
    value = operator.index(value)
    if minimum is not None and value < minimum:
        raise ValueError(f"{name}: expected an integer >= {minimum}, got {value}")
    return value


def check_num_threads(num_threads: object) -> int:
    """Validate a thread count: an integer >= 0, where 0 means all cores."""
    return check_int(num_threads, "num_threads (0 = all cores)", minimum=0)


def check_seed(seed: object) -> int:
    """Validate a seed: an integer in [0, 2**64)."""
    seed = check_int(seed, "seed", minimum=0)
    if seed >= _MAX_SEED:
        raise ValueError(f"seed: expected an integer < 2**64, got {seed}")
    return seed


def check_choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    """Validate an option string against its allowed values."""
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, got {value!r}")
    return value


def as_real_array(value: object, name: str, *, dtype: type, ndim: int) -> np.ndarray:
    """Convert ``value`` to a C-contiguous array of ``dtype`` with ``ndim`` dimensions.

    Accepts any real (bool, integer or floating) input; copies only when the dtype or the memory
    layout differs. Raises TypeError for non-numeric or complex input, ValueError for a wrong
    number of dimensions.
    """
    arr = np.asarray(value)
    if arr.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected an array of real numbers, got dtype {arr.dtype}")
    if arr.ndim != ndim:
        raise ValueError(f"{name}: expected a {ndim}-D array, got shape {arr.shape}")
    return np.ascontiguousarray(arr, dtype=dtype)


def check_real(
    value: object,
    name: str,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    exclusive_minimum: bool = False,
    exclusive_maximum: bool = False,
) -> float:
    """Return ``value`` as a finite Python float within the bounds (inclusive unless
    ``exclusive_*``). Raises TypeError for bools and non-numbers, ValueError for NaN, inf and
    values out of range; the message names ``name`` and the range."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name}: expected a real number, got {type(value).__name__} {value!r}")
    v = float(value)
    low_ok = minimum is None or (v > minimum if exclusive_minimum else v >= minimum)
    high_ok = maximum is None or (v < maximum if exclusive_maximum else v <= maximum)
    if not (np.isfinite(v) and low_ok and high_ok):
        if minimum is not None and maximum is not None:
            left, right = "(" if exclusive_minimum else "[", ")" if exclusive_maximum else "]"
            bounds = f" in {left}{minimum:g}, {maximum:g}{right}"
        elif minimum is not None:
            bounds = f" {'>' if exclusive_minimum else '>='} {minimum:g}"
        elif maximum is not None:
            bounds = f" {'<' if exclusive_maximum else '<='} {maximum:g}"
        else:
            bounds = ""
        raise ValueError(f"{name}: expected a finite number{bounds}, got {value!r}")
    return v


def as_csr(
    value: object,
    name: str,
    *,
    dtype: type | None = np.float32,
    shape: tuple[int, int] | None = None,
    canonical: bool = True,
):
    """Convert a scipy.sparse matrix or array (CSR, CSC, COO, ...) to a ``csr_matrix``.

    With ``canonical``, indices sorted and duplicate entries summed; data of ``dtype`` (None: kept).
    The input is never modified, and not copied when it already is such a CSR. Stored zeros stay
    stored. Raises TypeError for anything that is not a 2-D scipy.sparse matrix with real values,
    ValueError for a shape other than ``shape`` and IndexError for indices outside the shape.
    """
    import scipy.sparse as sp

    if not sp.issparse(value):
        raise TypeError(
            f"{name}: expected a scipy.sparse matrix (CSR, CSC or COO), got {type(value).__name__}"
        )
    if value.ndim != 2:
        raise ValueError(f"{name}: expected a 2-D sparse matrix, got {value.ndim} dimension(s)")
    if shape is not None and tuple(value.shape) != tuple(shape):
        raise ValueError(f"{name}: expected shape {tuple(shape)}, got {tuple(value.shape)}")
    if value.dtype.kind not in "biuf":
        raise TypeError(f"{name}: expected real values, got dtype {value.dtype}")
    check_sparse_structure(value, name)
    csr = sp.csr_matrix(value)  # no copy for a csr_matrix; a new object for anything else
    if canonical and not csr.has_canonical_format:
        csr = csr.copy()
        csr.sum_duplicates()  # also sorts the indices
    if dtype is not None and csr.dtype != dtype:
        csr = csr.astype(dtype)
    return csr


def check_sparse_structure(value: object, name: str, *, column: str = "column index") -> None:
    """Check the index arrays of a scipy.sparse CSR / CSC / COO matrix before anything uses them.

    scipy does not fully check index arrays that were set or built by hand, and its conversions
    (``tocsr``, ``tocsc``, ...) write out of bounds on such input; this check runs first.
    Raises ValueError for a malformed ``indptr`` and IndexError for an index outside the shape.
    Costs one pass over the index arrays; other formats are left to scipy.
    """
    fmt = getattr(value, "format", None)
    shape = value.shape
    if fmt in ("csr", "csc"):
        major, minor = (shape[0], shape[1]) if fmt == "csr" else (shape[1], shape[0])
        indptr, indices = value.indptr, value.indices
        if indptr.ndim != 1 or len(indptr) != major + 1:
            raise ValueError(
                f"{name}: expected an indptr of length {major + 1} for a {fmt.upper()} matrix "
                f"of shape {shape}, got {indptr.shape}"
            )
        nnz = int(indptr[-1])
        if indptr[0] != 0 or (np.diff(indptr) < 0).any():
            raise ValueError(f"{name}: indptr must start at 0 and be non-decreasing")
        if nnz > len(indices) or nnz > len(value.data):
            raise ValueError(
                f"{name}: indptr ends at {nnz}, but there are only {len(indices)} indices and "
                f"{len(value.data)} values"
            )
        ids = indices[:nnz]
        if nnz and (ids.min() < 0 or ids.max() >= minor):
            pos = int(np.flatnonzero((ids < 0) | (ids >= minor))[0])
            line = int(np.searchsorted(indptr, pos, side="right")) - 1
            what, where = (column, "row") if fmt == "csr" else ("row index", "column")
            raise IndexError(
                f"{name}: {what} {ids[pos]} in {where} {line} is out of range [0, {minor})"
            )
    elif fmt == "coo":
        for ids, size, axis in ((value.row, shape[0], "row"), (value.col, shape[1], "column")):
            if len(ids) and (ids.min() < 0 or ids.max() >= size):
                bad = ids[(ids < 0) | (ids >= size)][0]
                raise IndexError(f"{name}: {axis} index {bad} out of range [0, {size})")


def check_finite(arr: np.ndarray, name: str) -> None:
    """Raise ValueError if the float array ``arr`` holds NaN or inf (no large temporary)."""
    if arr.size == 0:
        return
    if arr.size <= 4096:  # small (a query): a temporary is cheaper than errstate's bookkeeping
        finite = bool(np.isfinite(arr).all())
    else:
        with np.errstate(invalid="ignore"):
            lo, hi = arr.min(), arr.max()
        finite = bool(np.isfinite(lo) and np.isfinite(hi))
    if not finite:
        raise ValueError(f"{name}: expected finite values, found NaN or inf")
