"""Sampled softmax kernel: NumPy reference, finite differences, accidental hits, bias vs m."""

import numpy as np
import pytest

from fastsoftmax import _core

from reference import full_softmax, sampled_softmax


def problem(B=5, n=30, d=4, scale=0.7, seed=0, max_pos=3):
    rng = np.random.default_rng(seed)
    psi = (scale * rng.standard_normal((B, d))).astype(np.float32)
    items = (scale * rng.standard_normal((n, d))).astype(np.float32)
    bias = (0.2 * rng.standard_normal(n)).astype(np.float32)
    rows = [np.sort(rng.choice(n, rng.integers(1, max_pos + 1), replace=False)) for _ in range(B)]
    indptr = np.r_[0, np.cumsum([len(r) for r in rows])].astype(np.int64)
    indices = np.concatenate(rows).astype(np.int64)
    w = rng.random(len(indices)) + 0.1
    for b in range(B):
        w[indptr[b] : indptr[b + 1]] /= w[indptr[b] : indptr[b + 1]].sum()
    return psi, items, bias, indptr, indices, w.astype(np.float32)


def kernel(
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
    logq=True,
    remove=True,
    gravity=0.0,
    scale=1.0,
    num_threads=1,
):
    loss, dpsi, rows, grad, bgrad = _core._testing.sampled_softmax(
        psi,
        items,
        bias,
        indptr,
        indices,
        weights,
        ids,
        log_q,
        pos_log_q,
        logq,
        remove,
        gravity,
        scale,
        num_threads,
    )
    dV = np.zeros(items.shape)
    dV[rows] = grad
    db = np.zeros(len(items))
    if bgrad is not None:
        db[rows] = bgrad
    assert len(np.unique(rows)) == len(rows)  # unique (sorted for shared draws only)
    return loss, dpsi, dV, db


def draws_with_hits(indices, n, R, m, seed=1):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, n, (R, m))
    ids[:, :3] = indices[:3]  # guaranteed accidental hits for the first rows
    log_q = np.log(rng.dirichlet(np.ones(n)))[ids].astype(np.float32)
    return ids.astype(np.int64), log_q


CASES = [
    dict(shared=True, logq=True, remove=True),
    dict(shared=True, logq=True, remove=False),
    dict(shared=True, logq=False, remove=True),
    dict(shared=True, logq=False, remove=False),
    dict(shared=False, logq=True, remove=True),
    dict(shared=False, logq=True, remove=False),
    dict(shared=True, logq=True, remove=True, gravity=0.3),
    dict(shared=False, logq=True, remove=False, gravity=0.3),
    dict(shared=True, logq=True, remove=True, no_bias=True),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items()))
def test_matches_numpy_reference(case):
    psi, items, bias, indptr, indices, w = problem()
    if case.get("no_bias"):
        bias = None
    B, n = len(psi), len(items)
    ids, log_q = draws_with_hits(indices, n, 1 if case["shared"] else B, 12)
    pos_log_q = np.log(np.random.default_rng(3).random(len(indices)) * 0.1).astype(np.float32)
    kw = dict(
        pos_log_q=pos_log_q,
        logq_correction=case["logq"],
        remove_accidental_hits=case["remove"],
        gravity=case.get("gravity", 0.0),
        grad_scale=0.25,
    )
    ref = sampled_softmax(psi, items, bias, indptr, indices, w, ids, log_q, **kw)
    got = kernel(
        psi,
        items,
        bias,
        indptr,
        indices,
        w,
        ids,
        log_q,
        pos_log_q=pos_log_q,
        logq=case["logq"],
        remove=case["remove"],
        gravity=case.get("gravity", 0.0),
        scale=0.25,
        num_threads=2,
    )
    np.testing.assert_allclose(got[0], ref[0], rtol=1e-5)
    n_out = 3 if bias is None else 4  # no bias: no bias gradient
    for a, b in zip(got[1:n_out], ref[1:n_out], strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


SHARED_CASES = [c for c in CASES if c["shared"]]


@pytest.mark.parametrize(
    "case", SHARED_CASES, ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items())
)
def test_wide_shapes_match_numpy_reference(case):
    """d and m multiples of 16 with shared draws take the AVX2 product kernel (where the CPU has
    it); B = 29 leaves partial row tiles and tasks."""
    psi, items, bias, indptr, indices, w = problem(B=29, n=80, d=32, scale=0.3, seed=4)
    if case.get("no_bias"):
        bias = None
    ids, log_q = draws_with_hits(indices, len(items), 1, 48)
    kw = dict(
        logq_correction=case["logq"],
        remove_accidental_hits=case["remove"],
        gravity=case.get("gravity", 0.0),
        grad_scale=0.5,
    )
    pos_log_q = np.log(np.random.default_rng(3).random(len(indices)) * 0.1).astype(np.float32)
    ref = sampled_softmax(
        psi, items, bias, indptr, indices, w, ids, log_q, pos_log_q=pos_log_q, **kw
    )
    for threads in (1, 2):
        got = kernel(
            psi,
            items,
            bias,
            indptr,
            indices,
            w,
            ids,
            log_q,
            pos_log_q=pos_log_q,
            logq=case["logq"],
            remove=case["remove"],
            gravity=case.get("gravity", 0.0),
            scale=0.5,
            num_threads=threads,
        )
        np.testing.assert_allclose(got[0], ref[0], rtol=1e-5)
        n_out = 3 if bias is None else 4
        for a, b in zip(got[1:n_out], ref[1:n_out], strict=True):
            np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_reference_gradients_match_finite_differences():
    psi, items, bias, indptr, indices, w = problem(B=3, n=12, d=3)
    ids, log_q = draws_with_hits(indices, 12, 1, 8)
    pos_log_q = np.full(len(indices), -2.0)
    for remove in (True, False):
        kw = dict(pos_log_q=pos_log_q, remove_accidental_hits=remove, gravity=0.2)
        _, dpsi, dV, db = sampled_softmax(psi, items, bias, indptr, indices, w, ids, log_q, **kw)
        eps = 1e-6
        for arr, g in ((psi, dpsi), (items, dV), (bias, db)):
            x = arr.astype(np.float64)
            for idx in list(np.ndindex(x.shape))[::3]:
                xp, xm = x.copy(), x.copy()
                xp[idx] += eps
                xm[idx] -= eps
                args = {"psi": psi, "items": items, "bias": bias}
                name = next(k for k, v in args.items() if v is arr)
                fp = sampled_softmax(
                    **{**args, name: xp},
                    indptr=indptr,
                    indices=indices,
                    weights=w,
                    ids=ids,
                    log_q=log_q,
                    **kw,
                )[0]
                fm = sampled_softmax(
                    **{**args, name: xm},
                    indptr=indptr,
                    indices=indices,
                    weights=w,
                    ids=ids,
                    log_q=log_q,
                    **kw,
                )[0]
                assert abs((fp - fm) / (2 * eps) - g[idx]) < 1e-5


def test_kernel_matches_finite_differences_in_float32():
    psi, items, bias, indptr, indices, w = problem(B=3, n=12, d=3)
    ids, log_q = draws_with_hits(indices, 12, 3, 8)
    _, dpsi, dV, _ = kernel(psi, items, bias, indptr, indices, w, ids, log_q, gravity=0.2)
    eps = 1e-2
    for b, c in [(0, 0), (1, 2), (2, 1)]:
        p1, p2 = psi.copy(), psi.copy()
        p1[b, c] += eps
        p2[b, c] -= eps
        fd = (
            kernel(p1, items, bias, indptr, indices, w, ids, log_q, gravity=0.2)[0]
            - kernel(p2, items, bias, indptr, indices, w, ids, log_q, gravity=0.2)[0]
        ) / (2 * eps)
        assert fd == pytest.approx(dpsi[b, c], rel=2e-2, abs=2e-3)
    for j in np.unique(np.r_[ids.ravel(), indices])[:6]:
        v1, v2 = items.copy(), items.copy()
        v1[j, 0] += eps
        v2[j, 0] -= eps
        fd = (
            kernel(psi, v1, bias, indptr, indices, w, ids, log_q, gravity=0.2)[0]
            - kernel(psi, v2, bias, indptr, indices, w, ids, log_q, gravity=0.2)[0]
        ) / (2 * eps)
        assert fd == pytest.approx(dV[j, 0], rel=2e-2, abs=2e-3)


def test_accidental_hits_never_contribute():
    """With removal, a draw equal to a positive changes nothing whatever its log Q."""
    psi, items, bias, indptr, indices, w = problem(B=1, max_pos=2)
    n = len(items)
    pos = indices[0]
    rng = np.random.default_rng(0)
    ids = np.r_[rng.integers(0, n, 10), [pos, pos]][None, :].astype(np.int64)
    ids[0, :10][ids[0, :10] == pos] = (pos + 1) % n
    log_q = np.full(ids.shape, -np.log(n), np.float32)
    other = log_q.copy()
    other[0, -2:] = -20.0  # the hits' own proposal probability: irrelevant when they are removed
    a = kernel(psi, items, bias, indptr, indices, w, ids, log_q)
    b = kernel(psi, items, bias, indptr, indices, w, ids, other)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    # The positive's row gradient is its softmax share minus its target only (m counts all 12
    # draws in the correction of the others).
    c = kernel(psi, items, bias, indptr, indices, w, ids, log_q)
    ref = sampled_softmax(psi, items, bias, indptr, indices, w, ids, log_q)
    np.testing.assert_allclose(c[2][pos], ref[2][pos], rtol=1e-5)
    # Without removal the same hits do change the result (the test above has power).
    d = kernel(
        psi,
        items,
        bias,
        indptr,
        indices,
        w,
        ids,
        other,
        remove=False,
        pos_log_q=np.full(len(indices), -np.log(n), np.float32),
    )
    assert not np.allclose(d[1], a[1])


def test_extreme_logits_are_finite():
    psi, items, bias, indptr, indices, w = problem(scale=60.0)  # |z| ~ 1e4
    z = psi.astype(np.float64) @ items.T.astype(np.float64)
    assert np.abs(z).max() > 5e3
    for shared in (True, False):
        ids, log_q = draws_with_hits(indices, len(items), 1 if shared else len(psi), 16)
        for remove in (True, False):
            out = kernel(
                psi,
                items,
                bias,
                indptr,
                indices,
                w,
                ids,
                log_q,
                remove=remove,
                pos_log_q=np.full(len(indices), -3.0, np.float32),
                gravity=1e-3,
            )
            for x in out:
                assert np.all(np.isfinite(x))
            ref = sampled_softmax(
                psi,
                items,
                bias,
                indptr,
                indices,
                w,
                ids,
                log_q,
                pos_log_q=np.full(len(indices), -3.0),
                remove_accidental_hits=remove,
                gravity=1e-3,
            )
            np.testing.assert_allclose(out[0], ref[0], rtol=1e-4)


def estimate(
    sampler,
    m,
    seed,
    psi,
    items,
    bias,
    indptr,
    indices,
    w,
    *,
    logq=True,
    remove=True,
    share=True,
    hard_pool=0,
    weights=None,
    gravity=0.0,
    num_threads=1,
):
    _loss, dpsi, rows, grad, _bgrad = _core._testing.sampled_softmax_estimate(
        sampler,
        m,
        share,
        hard_pool,
        1.0,
        1.0,
        weights,
        psi,
        items,
        bias,
        indptr,
        indices,
        w,
        logq,
        remove,
        gravity,
        1.0,
        seed,
        num_threads,
    )
    dV = np.zeros(items.shape)
    dV[rows] = grad
    return np.concatenate([dpsi.ravel(), dV.ravel()])


def mean_estimate(n_seeds, *args, **kwargs):
    return np.mean([estimate(*args[:2], s, *args[2:], **kwargs) for s in range(n_seeds)], axis=0)


def relative_bias(sampler, m, prob, n_seeds=300, **kwargs):
    psi, items, bias, indptr, indices, w = prob
    _, dpsi, dV, _ = full_softmax(
        psi, items, bias, indptr, indices, w, gravity=kwargs.get("gravity", 0.0)
    )
    full = np.concatenate([dpsi.ravel(), dV.ravel()])
    est = mean_estimate(n_seeds, sampler, m, psi, items, bias, indptr, indices, w, **kwargs)
    return np.linalg.norm(est - full) / np.linalg.norm(full)


def bias_problem():
    return problem(B=6, n=100, d=6, scale=0.8, seed=11)


def test_bias_vanishes_as_m_grows_uniform():
    prob = bias_problem()
    errs = [relative_bias("uniform", m, prob) for m in (4, 32, 256)]
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.03


def test_logq_correction_reduces_bias_under_a_skewed_proposal():
    prob = bias_problem()
    pop = 1.0 / np.arange(1, 101) ** 1.2
    with_q = [relative_bias("weights", m, prob, weights=pop) for m in (8, 256)]
    without = relative_bias("weights", 256, prob, weights=pop, logq=False)
    assert with_q[1] < with_q[0]
    assert with_q[1] < 0.1  # measured 0.05 (Monte Carlo noise included), m=8: 0.34
    assert without > 5 * with_q[1]


def test_bias_with_hits_kept_and_per_query_draws():
    prob = bias_problem()
    errs = [relative_bias("uniform", m, prob, remove=False, share=False) for m in (4, 256)]
    assert errs[1] < 0.5 * errs[0] and errs[1] < 0.05


def test_sampled_gravity_is_unbiased():
    prob = bias_problem()
    pop = 1.0 / np.arange(1, 101) ** 0.7
    err = relative_bias("weights", 512, prob, weights=pop, gravity=0.5)
    assert err < 0.05


def test_exact_gravity_matches_reference():
    psi, items, *_ = problem(B=7, n=5000, d=5)
    loss, dpsi, dV = _core._testing.gravity_exact(psi, items, 0.7, 0.5, 2)
    n = len(items)
    P, V = psi.astype(np.float64), items.astype(np.float64)
    assert loss == pytest.approx(0.7 * ((P @ V.T) ** 2).sum() / n, rel=1e-5)
    np.testing.assert_allclose(dpsi, 0.5 * 0.7 * 2 * P @ (V.T @ V) / n, rtol=1e-4, atol=1e-7)
    np.testing.assert_allclose(dV, 0.5 * 0.7 * 2 * V @ (P.T @ P) / n, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("sampler", ["uniform", "score"])
def test_deterministic_and_thread_count_independent(sampler):
    prob = problem(B=40, n=500, d=8)
    kw = dict(hard_pool=64, gravity=0.1)
    a = estimate(sampler, 64, 5, *prob, num_threads=1, **kw)
    b = estimate(sampler, 64, 5, *prob, num_threads=2, **kw)
    c = estimate(sampler, 64, 6, *prob, num_threads=2, **kw)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
