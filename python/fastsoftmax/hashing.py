"""Hashed feature ids: any integer or string id to a fixed number of embedding rows.

A feature named in ``SoftmaxModel(hash_buckets={name: B})`` needs no vocabulary: its ids may be
negative, beyond any table, strings, or never seen in training, and each goes to row(s) in
``[0, B)`` by a fixed, seeded 64-bit mixer (documented below, so that other systems can
reproduce it):

* an integer id is taken as its 64-bit two's-complement pattern x (uint64 ids as they are);
* a string id is x = FNV-1a 64 of its UTF-8 bytes (offset basis 0xCBF29CE484222325, prime
  0x100000001B3), never Python's salted ``hash()``;
* hash h (h = 0 .. num_hashes - 1) of x is ``mix64(x ^ mix64(seed * 0x9E3779B97F4A7C15 + h + 1))
  mod B``, with mix64 the SplitMix64 finaliser: z ^= z >> 30; z *= 0xBF58476D1CE4E5B9;
  z ^= z >> 27; z *= 0x94D049BB133111EB; z ^= z >> 31 (all modulo 2^64).

With ``num_hashes = k > 1`` an id has k rows whose embeddings are pooled (hash embeddings,
Svenstrup et al. 2017): two ids collide in all k rows only with probability ~B^-k.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._validation import check_int

__all__ = ["hash_ids", "id_bits"]

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)
_GOLDEN = 0x9E3779B97F4A7C15
_FNV_OFFSET = np.uint64(0xCBF29CE484222325)
_FNV_PRIME = np.uint64(0x100000001B3)
_MASK = (1 << 64) - 1
_CHUNK = 1 << 20  # ids hashed at a time


def _mix64(z: np.ndarray) -> np.ndarray:
    """SplitMix64 finaliser on a uint64 array (arithmetic modulo 2^64)."""
    z = z ^ (z >> np.uint64(30))
    z = z * _M1
    z = z ^ (z >> np.uint64(27))
    z = z * _M2
    return z ^ (z >> np.uint64(31))


def _fnv1a(strings: np.ndarray) -> np.ndarray:
    """FNV-1a 64 of each string's UTF-8 bytes, vectorised over the strings (loop over bytes)."""
    encoded = [str(s).encode("utf-8") for s in strings]
    width = max((len(b) for b in encoded), default=0)
    lengths = np.array([len(b) for b in encoded], dtype=np.int64)
    raw = np.zeros((len(encoded), max(width, 1)), dtype=np.uint8)
    for i, b in enumerate(encoded):
        raw[i, : len(b)] = np.frombuffer(b, dtype=np.uint8)
    h = np.full(len(encoded), _FNV_OFFSET, dtype=np.uint64)
    for j in range(width):
        live = lengths > j
        step = (h ^ raw[:, j].astype(np.uint64)) * _FNV_PRIME
        h = np.where(live, step, h)
    return h


def id_bits(values: Any, name: str = "ids") -> np.ndarray:
    """The 64-bit pattern x of each id (see the module docstring), as uint64, shape (N,).

    Parameters
    ----------
    values : array_like, shape (N,)
        Integers (any sign and size within int64 / uint64) or strings.
    name : str
        Argument name for error messages.

    Returns
    -------
    numpy.ndarray, uint64, shape (N,)

    Raises
    ------
    TypeError
        For ids that are neither integers nor strings (floats, booleans, objects).
    ValueError
        For an array that is not 1-D.
    """
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D array of ids, got shape {arr.shape}")
    if arr.dtype.kind in "iu":
        return (
            arr.astype(np.uint64) if arr.dtype.kind == "u" else arr.astype(np.int64).view(np.uint64)
        )
    if arr.dtype.kind in "US" or (
        arr.dtype == object and all(isinstance(v, str | bytes) for v in arr)
    ):
        return _fnv1a(np.array([v.decode("utf-8") if isinstance(v, bytes) else v for v in arr],
                               dtype=object))  # fmt: skip
    if arr.dtype == object and all(isinstance(v, int | np.integer) for v in arr):
        return np.array([int(v) & _MASK for v in arr], dtype=np.uint64)
    raise TypeError(f"{name}: expected integer or string ids, got dtype {arr.dtype}")


def hash_ids(values: Any, buckets: int, *, seed: int = 0, num_hashes: int = 1) -> np.ndarray:
    """Rows of each id in a table of ``buckets`` rows (the mixer of the module docstring).

    Parameters
    ----------
    values : array_like, shape (N,)
        Integer or string ids.
    buckets : int
        Table rows B >= 1.
    seed : int, default 0
        Seed of the mixer (>= 0).
    num_hashes : int, default 1
        Rows per id, k >= 1.

    Returns
    -------
    numpy.ndarray, int64, shape (N, num_hashes)
        Rows in ``[0, buckets)``.

    Examples
    --------
    >>> hash_ids(["a", "b", -7, 2**62], 1000).shape
    (4, 1)
    """
    buckets = check_int(buckets, "buckets", minimum=1)
    seed = check_int(seed, "seed", minimum=0)
    num_hashes = check_int(num_hashes, "num_hashes", minimum=1)
    arr = np.asarray(values)
    if arr.ndim != 1 or len(arr) == 0:
        id_bits(arr)  # its checks (shape, dtype) also for inputs the loop below never sees
    out = np.empty((len(arr), num_hashes), dtype=np.int64)
    keys = [_mix64(np.array([(seed * _GOLDEN + h + 1) & _MASK], dtype=np.uint64))
            for h in range(num_hashes)]  # fmt: skip
    # In chunks: the mixer's temporaries stay O(chunk), whatever N.
    for i0 in range(0, len(arr), _CHUNK):
        x = id_bits(arr[i0 : i0 + _CHUNK])
        for h, key in enumerate(keys):
            out[i0 : i0 + len(x), h] = _mix64(x ^ key) % np.uint64(buckets)
    return out
