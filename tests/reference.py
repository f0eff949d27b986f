"""Pure-NumPy reference implementations that the C++ kernels are tested against."""

from __future__ import annotations

import numpy as np


def alias_table(weights: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Vose's alias table, processing the worklists in the same order as the C++ core.

    Returns ``keep`` (float64, shape (n,)) and ``alias`` (int64, shape (n,)).
    """
    w = np.asarray(weights, dtype=np.float64)
    n = len(w)
    scaled = w / w.sum() * n
    keep = np.ones(n)
    alias = np.arange(n)
    small = [i for i in range(n - 1, -1, -1) if scaled[i] < 1.0]
    large = [i for i in range(n - 1, -1, -1) if scaled[i] >= 1.0]
    while small and large:
        s = small.pop()
        g = large[-1]
        keep[s] = scaled[s]
        alias[s] = g
        scaled[g] -= 1.0 - scaled[s]
        if scaled[g] < 1.0:
            large.pop()
            small.append(g)
    positive = int(np.flatnonzero(w > 0)[0])
    for i in small + large:
        keep[i] = 1.0 if w[i] > 0 else 0.0
        alias[i] = i if w[i] > 0 else positive
    return keep, alias


def alias_distribution(keep: np.ndarray, alias: np.ndarray) -> np.ndarray:
    """The distribution an alias table samples: (keep_i + sum_{j: alias_j = i} (1 - keep_j)) / n."""
    keep = np.asarray(keep, dtype=np.float64)
    n = len(keep)
    p = keep + np.bincount(np.asarray(alias), weights=1.0 - keep, minlength=n)
    return p / n
