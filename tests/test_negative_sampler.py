"""Negative samplers of the sampled softmax: draws follow the stated proposal, log Q is right."""

import numpy as np
import pytest
from scipy import stats
from test_sampler import chi_square_pvalue

from fastsoftmax import _core


def draw(
    sampler,
    n,
    m,
    *,
    share=True,
    hard_pool=0,
    temperature=1.0,
    hard_fraction=1.0,
    weights=None,
    psi=None,
    items=None,
    bias=None,
    indptr=None,
    indices=None,
    seed=0,
    num_threads=1,
    mixed_negatives=0,
):
    return _core._testing.sample_negatives(
        sampler,
        n,
        m,
        share,
        hard_pool,
        temperature,
        hard_fraction,
        weights,
        psi,
        items,
        bias,
        indptr,
        indices,
        seed,
        num_threads,
        mixed_negatives,
    )


def score_problem(B=3, n=40, d=6, scale=1.0, seed=0):
    rng = np.random.default_rng(seed)
    psi = (rng.standard_normal((B, d)) * scale).astype(np.float32)
    items = rng.standard_normal((n, d)).astype(np.float32)
    bias = (0.3 * rng.standard_normal(n)).astype(np.float32)
    indptr = np.arange(B + 1, dtype=np.int64)
    indices = rng.integers(0, n, B).astype(np.int64)
    return psi, items, bias, indptr, indices


def softmax_rows(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def logits(psi, items, bias):
    return psi.astype(np.float64) @ items.T.astype(np.float64) + bias


def test_uniform_shared_and_per_query():
    n = 37
    out = draw("uniform", n, 200_000)
    assert out["ids"].shape == (1, 200_000)
    assert chi_square_pvalue(out["ids"][0], np.full(n, 1 / n)) > 1e-4
    np.testing.assert_allclose(out["log_q"], -np.log(n), rtol=1e-6)
    psi, items, bias, indptr, indices = score_problem(B=4, n=n)
    per = draw(
        "uniform",
        n,
        50_000,
        share=False,
        psi=psi,
        items=items,
        bias=bias,
        indptr=indptr,
        indices=indices,
    )
    assert per["ids"].shape == (4, 50_000)
    assert not np.array_equal(per["ids"][0], per["ids"][1])
    for row in per["ids"]:
        assert chi_square_pvalue(row, np.full(n, 1 / n)) > 1e-4


def test_weights_sampler_draws_the_popularity_distribution():
    w = 1.0 / np.arange(1, 61) ** 0.9
    w[[3, 10]] = 0.0
    out = draw("weights", 60, 300_000, weights=w, seed=5)
    p = w / w.sum()
    assert chi_square_pvalue(out["ids"][0], p) > 1e-4
    assert not np.isin(out["ids"], [3, 10]).any()
    np.testing.assert_allclose(out["log_q"][0], np.log(p[out["ids"][0]]), rtol=1e-5)


def in_batch_problem():
    n = 20
    freq = np.arange(1.0, n + 1)
    indptr = np.array([0, 2, 3, 6, 9], dtype=np.int64)
    indices = np.array([1, 5, 5, 0, 7, 19, 1, 5, 7], dtype=np.int64)
    kw = dict(weights=freq, psi=np.zeros((4, 2), np.float32), items=np.zeros((n, 2), np.float32),
              indptr=indptr, indices=indices)  # fmt: skip
    return n, freq / freq.sum(), indices, kw


def test_in_batch_takes_each_distinct_batch_item_once_with_its_inclusion_probability():
    n, q, indices, kw = in_batch_problem()
    out = draw("in_batch", n, 0, **kw)  # 0: no cap
    distinct = np.unique(indices)
    np.testing.assert_array_equal(out["ids"][0], distinct)
    # Each of the E = 9 positive entries a draw from Q: P(j in the set) = 1 - (1 - Q(j))^E, and
    # log_q = log(P / m), so that the loss's log(m Q) is log P.
    inclusion = 1 - (1 - q[distinct]) ** len(indices)
    np.testing.assert_allclose(out["log_q"][0], np.log(inclusion / len(distinct)), rtol=1e-6)


def test_in_batch_cap_keeps_a_uniform_subset():
    n, q, indices, kw = in_batch_problem()
    distinct = np.unique(indices)
    counts = np.zeros(n)
    trials = 4000
    for seed in range(trials):
        out = draw("in_batch", n, 2, seed=seed, **kw)
        ids = out["ids"][0]
        assert len(ids) == 2 and np.all(np.diff(ids) > 0) and np.isin(ids, distinct).all()
        counts[ids] += 1
        inclusion = (1 - (1 - q[ids]) ** len(indices)) * 2 / len(distinct)
        np.testing.assert_allclose(out["log_q"][0], np.log(inclusion / 2), rtol=1e-6)
    # Each of the 5 distinct items is kept with probability 2 / 5.
    share = counts[distinct] / trials
    assert np.all(np.abs(share - 0.4) < 5 * np.sqrt(0.4 * 0.6 / trials))
    same = draw("in_batch", n, 2, seed=7, **kw)["ids"]
    np.testing.assert_array_equal(same, draw("in_batch", n, 2, seed=7, **kw)["ids"])


def test_mixed_negatives_add_uniform_draws_corrected_by_the_expected_count():
    n, q, indices, kw = in_batch_problem()
    distinct = np.unique(indices)
    u, trials = 6, 3000
    uniform = []
    for seed in range(trials):
        out = draw("in_batch", n, 0, seed=seed, mixed_negatives=u, **kw)
        ids = out["ids"][0]
        np.testing.assert_array_equal(ids[: len(distinct)], distinct)  # the in-batch set first
        uniform.append(ids[len(distinct) :])
        # Expected count of j among the candidates: P(j in the batch set) + u / n; log_q is
        # log(count / m) so that the loss's log(m Q) is log(count).
        count = 1 - (1 - q[ids]) ** len(indices) + u / n
        np.testing.assert_allclose(out["log_q"][0], np.log(count / len(ids)), rtol=1e-5)
    assert chi_square_pvalue(np.concatenate(uniform), np.full(n, 1 / n)) > 1e-4  # uniform
    assert not np.array_equal(draw("in_batch", n, 0, seed=1, mixed_negatives=u, **kw)["ids"],
                              draw("in_batch", n, 0, seed=2, mixed_negatives=u, **kw)["ids"])  # fmt: skip


def streaming_reference(n, batches, alpha):
    """Yi et al.'s estimate in NumPy: per item the last step seen A and the gap average G, read
    with the bias correction of an average started at 0 (c sightings: G / (1 - (1 - a)^c))."""
    last, gap, seen, out = np.zeros(n), np.zeros(n), np.zeros(n), []
    for t, ids in enumerate(batches, start=1):
        for j in np.unique(ids):
            gap[j] = (1 - alpha) * gap[j] + alpha * (t - last[j])
            last[j] = t
            seen[j] += 1
        d = np.unique(ids)
        g = gap[d] / (1 - (1 - alpha) ** seen[d])
        p = np.where(g > 1, 1 / np.maximum(g, 1e-300), 1.0)
        out.append((d, np.log(p) - np.log(len(d))))
    return out


def test_streaming_estimate_follows_the_recurrence():
    rng = np.random.default_rng(0)
    n = 30
    batches = [rng.choice(n, rng.integers(1, 12)).astype(np.int64) for _ in range(200)]
    got = _core._testing.in_batch_streaming(n, batches, 0.05)
    for (ids, log_q), (want_ids, want) in zip(got, streaming_reference(n, batches, 0.05),
                                              strict=True):  # fmt: skip
        np.testing.assert_array_equal(ids, want_ids)
        np.testing.assert_allclose(log_q, want, rtol=1e-5, atol=1e-6)


def test_streaming_estimate_converges_to_the_batch_inclusion_probability():
    """Item j among a batch's positives independently with probability pi_j: after many steps
    the estimate exp(log_q) * |set| = 1 / gap is close to pi_j."""
    rng = np.random.default_rng(1)
    pi = np.array([0.9, 0.5, 0.2, 0.1, 0.05])
    batches = []
    for _ in range(20000):
        ids = np.flatnonzero(rng.random(len(pi)) < pi).astype(np.int64)
        batches.append(ids if len(ids) else np.array([0], np.int64))
    got = _core._testing.in_batch_streaming(len(pi), batches, 0.01)
    estimate = {}
    for ids, log_q in got[-15000:]:  # ~7 spans of the moving average's memory for item 4
        for j, lq in zip(ids, np.exp(log_q) * len(ids), strict=True):
            estimate.setdefault(int(j), []).append(lq)
    mean = np.array([np.mean(estimate[j]) for j in range(len(pi))])
    np.testing.assert_allclose(mean, pi, rtol=0.1)


@pytest.mark.parametrize("temperature", [1.0, 0.5])
def test_exact_score_per_query_follows_softmax(temperature):
    psi, items, bias, indptr, indices = score_problem(scale=0.8)
    out = draw(
        "score",
        40,
        100_000,
        share=False,
        hard_pool=0,
        temperature=temperature,
        psi=psi,
        items=items,
        bias=bias,
        indptr=indptr,
        indices=indices,
        seed=2,
        num_threads=2,
    )
    z = logits(psi, items, bias) / temperature
    q = softmax_rows(z)
    for b in range(3):
        assert chi_square_pvalue(out["ids"][b], q[b]) > 1e-4
        np.testing.assert_allclose(out["log_q"][b], np.log(q[b, out["ids"][b]]), atol=1e-4)
    np.testing.assert_allclose(out["log_norm"], np.log(np.exp(z).sum(axis=1)), rtol=1e-6)


def test_exact_score_detects_a_wrong_temperature():
    psi, items, bias, indptr, indices = score_problem(scale=0.8)
    out = draw(
        "score",
        40,
        100_000,
        share=False,
        temperature=1.0,
        psi=psi,
        items=items,
        bias=bias,
        indptr=indptr,
        indices=indices,
    )
    q_wrong = softmax_rows(logits(psi, items, bias) / 1.2)
    assert chi_square_pvalue(out["ids"][0], q_wrong[0]) < 1e-6


def test_exact_score_shared_follows_the_batch_mixture():
    psi, items, bias, indptr, indices = score_problem(scale=0.8)
    out = draw(
        "score",
        40,
        200_000,
        share=True,
        psi=psi,
        items=items,
        bias=bias,
        indptr=indptr,
        indices=indices,
        seed=9,
    )
    qbar = softmax_rows(logits(psi, items, bias)).mean(axis=0)
    assert chi_square_pvalue(out["ids"][0], qbar) > 1e-4
    np.testing.assert_allclose(out["log_q"][0], np.log(qbar[out["ids"][0]]), atol=1e-4)


def test_hard_fraction_mixes_in_uniform_draws():
    n, m = 40, 100_000
    psi, items, bias, indptr, indices = score_problem(scale=1.5)
    out = draw(
        "score",
        n,
        m,
        share=False,
        hard_fraction=0.3,
        psi=psi,
        items=items,
        bias=bias,
        indptr=indptr,
        indices=indices,
        seed=4,
    )
    m_h = out["m_hard"]
    assert m_h == 30_000
    q = softmax_rows(logits(psi, items, bias))
    assert chi_square_pvalue(out["ids"][0, :m_h], q[0]) > 1e-4
    assert chi_square_pvalue(out["ids"][0, m_h:], np.full(n, 1 / n)) > 1e-4
    mix = 0.3 * q[0] + 0.7 / n  # the proposal whose m * Q is each item's expected count
    np.testing.assert_allclose(out["log_q"][0], np.log(mix[out["ids"][0]]), atol=1e-4)


def total_variation(ids, q):
    return 0.5 * np.abs(np.bincount(ids, minlength=len(q)) / len(ids) - q).sum()


@pytest.mark.parametrize("share", [False, True])
def test_sir_approaches_the_exact_score_distribution(share):
    """SIR marginal -> Q as the pool grows; its implied log Q -> the exact log Q."""
    n = 40
    psi, items, bias, indptr, indices = score_problem(scale=1.2)
    q = softmax_rows(logits(psi, items, bias))
    target = q.mean(axis=0) if share else q[0]
    tv = {}
    for pool in (20, 2000):
        ids = np.concatenate(
            [
                draw(
                    "score",
                    n,
                    2000,
                    share=share,
                    hard_pool=pool,
                    psi=psi,
                    items=items,
                    bias=bias,
                    indptr=indptr,
                    indices=indices,
                    seed=s,
                )["ids"][0]
                for s in range(100)
            ]
        )
        tv[pool] = total_variation(ids, target)
    assert tv[2000] < 0.02  # sampling noise of 200k draws over 40 cells is ~0.01
    assert tv[20] > tv[2000]
    out = draw(
        "score",
        n,
        500,
        share=share,
        hard_pool=20_000,
        psi=psi,
        items=items,
        bias=bias,
        indptr=indptr,
        indices=indices,
        seed=1,
    )
    np.testing.assert_allclose(out["log_q"][0], np.log(target[out["ids"][0]]), atol=0.05)


def test_sir_pool_from_popularity():
    n = 40
    psi, items, bias, indptr, indices = score_problem(scale=1.0)
    w = 1.0 / np.arange(1, n + 1)
    q = softmax_rows(logits(psi, items, bias))[0]
    ids = np.concatenate(
        [
            draw(
                "score",
                n,
                2000,
                share=False,
                hard_pool=4000,
                weights=w,
                psi=psi,
                items=items,
                bias=bias,
                indptr=indptr,
                indices=indices,
                seed=s,
            )["ids"][0]
            for s in range(50)
        ]
    )
    assert total_variation(ids, q) < 0.03


def test_deterministic_for_seed_and_thread_count():
    psi, items, bias, indptr, indices = score_problem(B=40, n=300)
    kw = dict(psi=psi, items=items, bias=bias, indptr=indptr, indices=indices)
    for sampler, pool in [("uniform", 0), ("score", 0), ("score", 64)]:
        for share in (True, False):
            a = draw(
                sampler,
                300,
                50,
                share=share,
                hard_pool=pool,
                hard_fraction=0.6,
                seed=7,
                num_threads=1,
                **kw,
            )
            b = draw(
                sampler,
                300,
                50,
                share=share,
                hard_pool=pool,
                hard_fraction=0.6,
                seed=7,
                num_threads=2,
                **kw,
            )
            c = draw(
                sampler,
                300,
                50,
                share=share,
                hard_pool=pool,
                hard_fraction=0.6,
                seed=8,
                num_threads=2,
                **kw,
            )
            np.testing.assert_array_equal(a["ids"], b["ids"])
            np.testing.assert_array_equal(a["log_q"], b["log_q"])
            assert not np.array_equal(a["ids"], c["ids"])


def test_extreme_scores_give_finite_log_q():
    psi, items, bias, indptr, indices = score_problem(scale=3000.0)  # |z| ~ 1e4
    for pool in (0, 16):
        for share in (True, False):
            out = draw(
                "score",
                40,
                64,
                share=share,
                hard_pool=pool,
                hard_fraction=0.5,
                psi=psi,
                items=items,
                bias=bias,
                indptr=indptr,
                indices=indices,
            )
            assert np.isfinite(out["log_q"]).all() and (out["log_q"] <= 1e-6).all()


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(sampler="nope"), ValueError, "sampler: expected one of"),
        (dict(m=0), ValueError, "num_negatives"),
        (dict(sampler="weights"), ValueError, "sampler_weights"),
        (dict(sampler="score", temperature=0.0), ValueError, "temperature"),
        (dict(sampler="score", hard_fraction=1.5), ValueError, "hard_fraction"),
        (dict(sampler="weights", weights=-np.ones(10)), ValueError, "weights"),
    ],
)
def test_bad_options(kwargs, error, match):
    psi, items, bias, indptr, indices = score_problem(n=10)
    args = dict(sampler="uniform", m=5, temperature=1.0, hard_fraction=1.0, weights=None)
    args.update(kwargs)
    with pytest.raises(error, match=match):
        draw(
            args.pop("sampler"),
            10,
            args.pop("m"),
            psi=psi,
            items=items,
            bias=bias,
            indptr=indptr,
            indices=indices,
            **args,
        )


def test_chi_square_is_not_vacuous():
    """Sanity of the helper on these sizes: a uniform sample is rejected against a skewed Q."""
    out = draw("uniform", 40, 100_000)
    q = stats.zipf(1.5).pmf(np.arange(1, 41))
    assert chi_square_pvalue(out["ids"][0], q / q.sum()) < 1e-6
