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


# --- Sampled softmax (issue 6) ----------------------------------------------------------------


def sampled_softmax(
    psi,
    items,
    bias,
    indptr,
    indices,
    weights,
    ids,
    log_q,
    *,
    owner=None,
    pos_log_q=None,
    logq_correction=True,
    remove_accidental_hits=True,
    gravity=0.0,
    grad_scale=1.0,
):
    """Float64 sampled softmax of one batch, candidate by candidate (see sampled_softmax.h).

    ``ids``/``log_q``: (1, m) shared draws or (B, m) per-query draws. ``owner`` (m,): in-batch draw
    owners (a draw never is a negative of its owner). Returns ``(loss, dpsi (B, d), ditems (n, d),
    dbias (n,))`` where loss is the sum over rows (plus gravity) and the gradients are those of
    ``grad_scale * loss``.
    """
    psi = np.asarray(psi, np.float64)
    V = np.asarray(items, np.float64)
    bvec = np.zeros(len(V)) if bias is None else np.asarray(bias, np.float64)
    ids = np.asarray(ids)
    log_q = np.asarray(log_q, np.float64)
    B, d = psi.shape
    n = len(V)
    R, m = ids.shape
    dpsi = np.zeros((B, d))
    dV = np.zeros((n, d))
    db = np.zeros(n)
    total = 0.0
    for b in range(B):
        pos = indices[indptr[b] : indptr[b + 1]]
        p = np.asarray(weights[indptr[b] : indptr[b + 1]], np.float64)
        if len(pos) == 0:
            continue
        r = 0 if R == 1 else b
        draw = ids[r]
        lq = log_q[r]
        own = np.zeros(m, bool) if owner is None else np.asarray(owner) == b
        m_b = m - own.sum()
        cand = list(pos) + list(draw)
        z = np.array([psi[b] @ V[j] + bvec[j] for j in cand])
        corr = np.zeros(len(cand))
        mask = np.zeros(len(cand), bool)
        for k in range(len(pos)):
            if logq_correction and not remove_accidental_hits:
                corr[k] = np.log1p(m_b * np.exp(pos_log_q[indptr[b] + k]))
        for i in range(m):
            c = len(pos) + i
            if own[i]:
                mask[c] = True
                continue
            hit = draw[i] in set(pos.tolist())
            if hit and remove_accidental_hits:
                mask[c] = True
            elif logq_correction:
                corr[c] = np.log1p(m_b * np.exp(lq[i])) if hit else np.log(m_b) + lq[i]
        zc = np.where(mask, -np.inf, z - corr)
        mx = zc.max()
        lse = mx + np.log(np.exp(zc - mx).sum())
        total += float(p @ (lse - zc[: len(pos)]))
        g = np.exp(zc - lse)
        g[: len(pos)] -= p
        g *= grad_scale
        for c, j in enumerate(cand):
            dpsi[b] += g[c] * V[j]
            dV[j] += g[c] * psi[b]
            db[j] += g[c]
    if gravity > 0 and m > 0:
        rows = ids[0]
        w = np.exp(-log_q[0]) / (m * n)
        gram_items = (V[rows] * w[:, None]).T @ V[rows]
        nonempty = np.diff(indptr) > 0
        P = psi[nonempty]
        gram_q = P.T @ P
        total += gravity * float((gram_q * gram_items).sum())
        dpsi[nonempty] += 2 * gravity * grad_scale * P @ gram_items
        np.add.at(dV, rows, 2 * gravity * grad_scale * w[:, None] * (V[rows] @ gram_q))
    return total, dpsi, dV, db


def full_softmax(psi, items, bias, indptr, indices, weights, *, gravity=0.0):
    """Float64 full softmax (sum over rows) plus exact gravity; gradients of that sum.

    Returns ``(loss, dpsi (B, d), ditems (n, d), dbias (n,))``.
    """
    psi = np.asarray(psi, np.float64)
    V = np.asarray(items, np.float64)
    bvec = np.zeros(len(V)) if bias is None else np.asarray(bias, np.float64)
    B, n = len(psi), len(V)
    P = np.zeros((B, n))
    for b in range(B):
        P[b, indices[indptr[b] : indptr[b + 1]]] = weights[indptr[b] : indptr[b + 1]]
    Z = psi @ V.T + bvec
    mx = Z.max(axis=1, keepdims=True)
    lse = mx + np.log(np.exp(Z - mx).sum(axis=1, keepdims=True))
    loss = float((P * (lse - Z)).sum())
    G = np.exp(Z - lse) - P
    dpsi, dV, db = G @ V, G.T @ psi, G.sum(axis=0)
    if gravity > 0:
        gram_items = V.T @ V / n
        gram_q = psi.T @ psi
        loss += gravity * float((gram_q * gram_items).sum())
        dpsi += 2 * gravity * psi @ gram_items
        dV += 2 * gravity * V @ gram_q / n
    return loss, dpsi, dV, db
