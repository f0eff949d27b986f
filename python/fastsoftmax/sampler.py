"""Sampling from fixed discrete distributions with a Walker/Vose alias table."""

from __future__ import annotations

import numpy as np

from . import _core
from ._validation import as_real_array, check_int, check_num_threads, check_seed

__all__ = ["AliasSampler"]


class AliasSampler:
    """Draw item ids in O(1) each from a fixed discrete distribution (Walker/Vose alias table).

    The table is built in O(n) in C++; each draw costs one random 64-bit word and one memory
    access. Draws are generated in fixed chunks with one random stream per chunk, so a seed gives
    the same ids for every ``num_threads``.

    Parameters
    ----------
    weights : array_like, shape (n,)
        Non-negative, finite weights of any real dtype (converted to float64; no copy if it
        already is a contiguous float64 array) with a positive sum. Item ``i`` is drawn with
        probability ``weights[i] / weights.sum()``; zero-weight items are never drawn.
        At most ``2**31 - 1`` items.

    Raises
    ------
    TypeError
        If ``weights`` is not numeric (or complex).
    ValueError
        If ``weights`` is empty, not 1-D, has NaN/inf or negative values, or sums to zero.

    Examples
    --------
    >>> import fastsoftmax as fs
    >>> s = fs.AliasSampler([1.0, 0.0, 3.0])
    >>> ids = s.sample(1000, seed=0)
    >>> bool((ids != 1).all())
    True
    """

    def __init__(self, weights: np.typing.ArrayLike) -> None:
        w = as_real_array(weights, "weights", dtype=np.float64, ndim=1)
        self._impl = _core.AliasSampler(w)

    def __len__(self) -> int:
        """Number of items n (including zero-weight items)."""
        return len(self._impl)

    def __repr__(self) -> str:
        return f"AliasSampler(n={len(self)})"

    @property
    def probabilities(self) -> np.ndarray:
        """float64 array, shape (n,): the normalised weights, i.e. the sampled distribution."""
        return self._impl.probabilities

    def table(self) -> tuple[np.ndarray, np.ndarray]:
        """Return the alias table.

        Returns
        -------
        keep : numpy.ndarray, float32, shape (n,)
            Probability that column ``j`` returns ``j`` itself.
        alias : numpy.ndarray, int32, shape (n,)
            Item returned by column ``j`` otherwise. Item ``i`` is drawn with probability
            ``(keep[i] + sum(1 - keep[j] for j with alias[j] == i)) / n``.
        """
        return self._impl.table()

    def sample(self, size: int, *, seed: int = 0, num_threads: int = 0) -> np.ndarray:
        """Draw ``size`` item ids independently from the distribution.

        Parameters
        ----------
        size : int
            Number of draws, >= 0.
        seed : int, default 0
            Seed in [0, 2**64). The same seed gives the same ids for every ``num_threads``.
        num_threads : int, default 0
            Threads to use; 0 means all cores.

        Returns
        -------
        numpy.ndarray, int64, shape (size,)
            Item ids in [0, n).
        """
        size = check_int(size, "size", minimum=0)
        return self._impl.sample(size, check_seed(seed), check_num_threads(num_threads))
