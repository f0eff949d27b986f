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


def topk_reference(
    queries: np.ndarray, items: np.ndarray, k: int, exclude=None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-k by inner product with a dense float64 score matrix: best first, ties -> lower id,
    excluded items (stored entries of the sparse ``exclude``) and NaN/-inf scores skipped, rows
    padded with (-1, -inf). Exact (bit-equal to any correct float32 kernel) when the inputs are
    small integers."""
    q = np.asarray(queries, dtype=np.float64)
    x = np.asarray(items, dtype=np.float64)
    B, n = q.shape[0], x.shape[0]
    scores = q @ x.T if n else np.zeros((B, 0))
    ids = np.full((B, k), -1, dtype=np.int64)
    out = np.full((B, k), -np.inf, dtype=np.float32)
    ex = None if exclude is None else exclude.tocsr()
    for b in range(B):
        s = scores[b].copy()
        if ex is not None:
            s[ex.indices[ex.indptr[b] : ex.indptr[b + 1]]] = -np.inf
        eligible = np.flatnonzero(np.isfinite(s) | (s == np.inf))
        order = eligible[np.lexsort((eligible, -s[eligible]))][:k]
        ids[b, : len(order)] = order
        out[b, : len(order)] = s[order]
    return ids, out


def ranking_metrics_reference(recommended, relevant, k: int) -> dict[str, float]:
    """Per-query loops over the textbook definitions (binary relevance; first occurrence of a
    repeated id only; mean over queries with a relevant item)."""
    rel = relevant.tocsr()
    values: dict[str, list[float]] = {
        m: [] for m in ("precision", "recall", "ndcg", "map", "hit_rate")
    }
    for b in range(rel.shape[0]):
        row = rel.getrow(b)
        relevant_set = {int(j) for j, v in zip(row.indices, row.data, strict=True) if v != 0}
        R = len(relevant_set)
        if R == 0:
            continue
        seen: set[int] = set()
        hits = []
        for j in recommended[b][:k]:
            j = int(j)
            hits.append(j >= 0 and j in relevant_set and j not in seen)
            seen.add(j)
        H = sum(hits)
        dcg = sum(1.0 / np.log2(i + 2) for i, h in enumerate(hits) if h)
        idcg = sum(1.0 / np.log2(i + 2) for i in range(min(k, R)))
        ap = sum(sum(hits[: i + 1]) / (i + 1) for i, h in enumerate(hits) if h) / min(k, R)
        values["precision"].append(H / k)
        values["recall"].append(H / R)
        values["ndcg"].append(dcg / idcg)
        values["map"].append(ap)
        values["hit_rate"].append(float(H > 0))
    return {m: float(np.mean(v)) for m, v in values.items()}


# --- softmax DNN (issue 5) -------------------------------------------------------------------


def bag_coefficients(indptr, indices, weights, pooling):
    """Per-entry pooling coefficient c_k (see fastsoftmax.SoftmaxModel, ``pooling``), float64."""
    w = np.asarray(weights, dtype=np.float64)
    rows = np.repeat(np.arange(len(indptr) - 1), np.diff(indptr))
    if pooling == "sum":
        return w, rows
    norm = np.bincount(rows, weights=w if pooling == "mean" else w * w, minlength=len(indptr) - 1)
    if pooling == "sqrtn":
        norm = np.sqrt(norm)
    scale = np.divide(1.0, norm, out=np.zeros_like(norm), where=norm > 0)
    return w * scale[rows], rows


def row_weights(targets, row_weighting="targets", sample_weight=None):
    """SoftmaxModel's weight per row: (target total / mean row total with "targets", else 1)
    times sample_weight; float64, shape (N,)."""
    totals = np.asarray(targets.sum(axis=1), dtype=np.float64).ravel()
    w = totals / totals.mean() if row_weighting == "targets" else np.ones_like(totals)
    return w if sample_weight is None else w * np.asarray(sample_weight, dtype=np.float64)


def softmax_dnn(params, feats, targets, *, pooling="mean", loss="full", weights=None):
    """Float64 forward and backward of the softmax DNN on all rows at once.

    ``params``: dict name -> array as ``SoftmaxModel.parameters``; ``feats``: fs.QueryFeatures
    (categorical / bag features in the model's order); ``targets``: scipy sparse (N, n);
    ``weights``: per row (default: :func:`row_weights` of the targets, the model's default).
    Returns (mean over rows of weight x loss, dict name -> its gradient).
    """
    w = row_weights(targets) if weights is None else np.asarray(weights, dtype=np.float64)
    p = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
    n_layers = sum(1 for k in p if k.startswith("mlp.") and k.endswith(".weight"))
    parts = [] if feats.dense is None else [feats.dense.astype(np.float64)]
    for name, ids in feats.categorical.items():
        parts.append(p[f"categorical.{name}"][ids])
    bag_cache = {}
    for name, (indptr, indices, data) in feats.bags.items():
        c, rows = bag_coefficients(indptr, indices, data, pooling)
        table = p[f"bags.{name}"]
        pooled = np.zeros((feats.n_rows, table.shape[1]))
        np.add.at(pooled, rows, c[:, None] * table[indices])
        bag_cache[name] = (c, rows, indices)
        parts.append(pooled)
    acts = [np.hstack(parts)]
    for layer in range(n_layers):
        h = acts[-1] @ p[f"mlp.{layer}.weight"] + p[f"mlp.{layer}.bias"]
        acts.append(np.maximum(h, 0.0) if layer + 1 < n_layers else h)
    psi = acts[-1]
    V = p["item_embeddings"]
    Z = psi @ V.T + (p["item_bias"] if "item_bias" in p else 0.0)
    T = np.asarray(targets.todense(), dtype=np.float64)
    P = T / T.sum(axis=1, keepdims=True)
    N = len(Z)
    if loss == "positives":
        Z = np.where(T > 0, Z, -np.inf)
    m = Z.max(axis=1, keepdims=True)
    E = np.exp(Z - m)
    lse = m + np.log(E.sum(axis=1, keepdims=True))
    row_loss = np.sum(np.where(P > 0, P * (lse - np.where(P > 0, Z, 0.0)), 0.0), axis=1)
    value = float(np.sum(w * row_loss) / N)
    dZ = w[:, None] * (E / E.sum(axis=1, keepdims=True) - P) / N
    grads = {"item_embeddings": dZ.T @ psi}
    if "item_bias" in p:
        grads["item_bias"] = dZ.sum(axis=0)
    dh = dZ @ V
    for layer in range(n_layers - 1, -1, -1):
        if layer + 1 < n_layers:
            dh = dh * (acts[layer + 1] > 0)
        grads[f"mlp.{layer}.weight"] = acts[layer].T @ dh
        grads[f"mlp.{layer}.bias"] = dh.sum(axis=0)
        dh = dh @ p[f"mlp.{layer}.weight"].T
    col = 0 if feats.dense is None else feats.dense.shape[1]
    for name, ids in feats.categorical.items():
        table = p[f"categorical.{name}"]
        g = np.zeros_like(table)
        np.add.at(g, ids, dh[:, col : col + table.shape[1]])
        grads[f"categorical.{name}"] = g
        col += table.shape[1]
    for name in feats.bags:
        table = p[f"bags.{name}"]
        c, rows, indices = bag_cache[name]
        g = np.zeros_like(table)
        np.add.at(g, indices, c[:, None] * dh[rows, col : col + table.shape[1]])
        grads[f"bags.{name}"] = g
        col += table.shape[1]
    return value, grads


# --- WALS (weighted matrix factorisation) ------------------------------------------------------


def wals_solve_dense(
    targets: np.ndarray, weights: np.ndarray, fixed: np.ndarray, regularization: float
) -> np.ndarray:
    """Exact WALS half-sweep with dense matrices, float64.

    ``targets`` and ``weights`` are dense (n, m): the weight of an unobserved entry is w0 there.
    Row i solves (Y^T diag(weights_i) Y + lambda I) x_i = Y^T diag(weights_i) targets_i.
    """
    y = np.asarray(fixed, dtype=np.float64)
    d = y.shape[1]
    out = np.zeros((targets.shape[0], d))
    for i in range(targets.shape[0]):
        c = weights[i]
        lhs = (y.T * c) @ y + regularization * np.eye(d)
        rhs = y.T @ (c * targets[i])
        out[i] = np.linalg.solve(lhs, rhs)
    return out


def wals_objective_dense(
    targets: np.ndarray, weights: np.ndarray, u: np.ndarray, v: np.ndarray, regularization: float
) -> float:
    """sum_ij weights_ij (targets_ij - u_i.v_j)^2 + lambda (|U|^2 + |V|^2) with dense (n, m)
    targets and weights (w0 at unobserved entries), float64."""
    u = np.asarray(u, dtype=np.float64)
    v = np.asarray(v, dtype=np.float64)
    pred = u @ v.T
    return float(
        (weights * (targets - pred) ** 2).sum() + regularization * ((u**2).sum() + (v**2).sum())
    )


def hkv_implicit_als(
    confidence, u: np.ndarray, v: np.ndarray, regularization: float, iterations: int
) -> tuple[np.ndarray, np.ndarray]:
    """Implicit-feedback ALS of Hu, Koren and Volinsky (2008), as written in the paper.

    ``confidence`` is a scipy.sparse (n, m) matrix of the confidences c_ui of the observed pairs
    (preference p_ui = 1 there, 0 and confidence 1 elsewhere). Each half-sweep uses the paper's
    speed-up: x_u = (Y^T Y + Y^T (C^u - I) Y + lambda I)^-1 Y^T C^u p(u), with Y^T Y computed once.
    Starts from (u, v), solves users first; returns float64 (U, V).
    """
    c_rows = confidence.tocsr()
    c_cols = confidence.T.tocsr()
    x = np.array(u, dtype=np.float64)
    y = np.array(v, dtype=np.float64)

    def sweep(c, fixed, out):
        d = fixed.shape[1]
        yty = fixed.T @ fixed
        for i in range(c.shape[0]):
            idx = c.indices[c.indptr[i] : c.indptr[i + 1]]
            conf = c.data[c.indptr[i] : c.indptr[i + 1]].astype(np.float64)
            yi = fixed[idx]
            lhs = yty + (yi.T * (conf - 1.0)) @ yi + regularization * np.eye(d)
            rhs = yi.T @ conf  # Y^T C^u p(u): p is 1 exactly on the observed pairs
            out[i] = np.linalg.solve(lhs, rhs)

    for _ in range(iterations):
        sweep(c_rows, y, x)
        sweep(c_cols, x, y)
    return x, y


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
    pos_log_q=None,
    logq_correction=True,
    remove_accidental_hits=True,
    gravity=0.0,
    grad_scale=1.0,
):
    """Float64 sampled softmax of one batch, candidate by candidate (see sampled_softmax.h).

    ``ids``/``log_q``: (1, m) shared draws or (B, m) per-query draws. Returns ``(loss, dpsi (B, d), ditems (n, d),
    dbias (n,))`` where loss is the sum over rows (plus gravity) and the gradients are those of
    ``grad_scale * loss``. A row's weights may sum to any mass (the row's weight).
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
        cand = list(pos) + list(draw)
        z = np.array([psi[b] @ V[j] + bvec[j] for j in cand])
        corr = np.zeros(len(cand))
        mask = np.zeros(len(cand), bool)
        for k in range(len(pos)):
            if logq_correction and not remove_accidental_hits:
                corr[k] = np.log1p(m * np.exp(pos_log_q[indptr[b] + k]))
        for i in range(m):
            c = len(pos) + i
            hit = draw[i] in set(pos.tolist())
            if hit and remove_accidental_hits:
                mask[c] = True
            elif logq_correction:
                corr[c] = np.log1p(m * np.exp(lq[i])) if hit else np.log(m) + lq[i]
        zc = np.where(mask, -np.inf, z - corr)
        mx = zc.max()
        lse = mx + np.log(np.exp(zc - mx).sum())
        total += float(p @ (lse - zc[: len(pos)]))
        g = p.sum() * np.exp(zc - lse)  # the row's mass (1 for a distribution) x softmax
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
