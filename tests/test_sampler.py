import numpy as np
import pytest
from scipy import stats

import fastsoftmax as fs

from reference import alias_distribution, alias_table


def chi_square_pvalue(draws: np.ndarray, probabilities: np.ndarray) -> float:
    """Chi-square goodness of fit; cells with expected count < 5 are pooled into one."""
    n_draws = len(draws)
    observed = np.bincount(draws, minlength=len(probabilities)).astype(np.float64)
    expected = probabilities * n_draws
    big = expected >= 5
    obs = np.append(observed[big], observed[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] < 5:  # pooled cell too small: fold it into the largest cell
        obs[np.argmax(exp[:-1])] += obs[-1]
        exp[np.argmax(exp[:-1])] += exp[-1]
        obs, exp = obs[:-1], exp[:-1]
    if len(obs) < 2:  # a single cell: every draw must land in it
        return 1.0 if obs[0] == n_draws else 0.0
    exp *= obs.sum() / exp.sum()
    return float(stats.chisquare(obs, exp).pvalue)


WEIGHT_CASES = {
    "uniform": np.ones(100),
    "with_zeros": np.array([0.0, 3.0, 0.0, 1.0, 0.5, 0.0, 7.0, 0.0, 2.0, 0.0]),
    "power_law": 1.0 / np.arange(1, 5001) ** 1.5,
    "one_dominant": np.r_[1e6, np.ones(50)],
    "integers": np.array([1, 2, 3, 4, 5, 0, 10], dtype=np.int32),
    "tiny_and_huge": np.array([1e-300, 1e300, 1.0]),
}


@pytest.mark.parametrize("name", sorted(WEIGHT_CASES))
@pytest.mark.parametrize("seed", [0, 12345])
def test_draws_follow_the_distribution(name, seed):
    w = WEIGHT_CASES[name]
    s = fs.AliasSampler(w)
    p = np.asarray(w, dtype=np.float64) / np.sum(np.asarray(w, dtype=np.float64))
    np.testing.assert_allclose(s.probabilities, p, rtol=1e-12)
    draws = s.sample(400_000, seed=seed)
    assert draws.dtype == np.int64 and draws.shape == (400_000,)
    assert draws.min() >= 0 and draws.max() < len(w)
    # Fixed seeds make this deterministic; a correct sampler passes with probability 1 - 1e-4.
    assert chi_square_pvalue(draws, p) > 1e-4


def test_a_wrong_distribution_is_detected():
    """The chi-square check has power: draws from a slightly different distribution fail it."""
    w = 1.0 / np.arange(1, 201)
    draws = fs.AliasSampler(w * np.r_[1.1, np.ones(199)]).sample(400_000, seed=3)
    assert chi_square_pvalue(draws, w / w.sum()) < 1e-6


def test_zero_weight_items_are_never_drawn():
    rng = np.random.default_rng(0)
    w = rng.random(1000) * (rng.random(1000) < 0.3)
    w[17] = 1e-9  # tiny but positive
    s = fs.AliasSampler(w)
    draws = s.sample(2_000_000, seed=1, num_threads=2)
    assert not np.isin(draws, np.flatnonzero(w == 0)).any()
    keep, alias = s.table()
    assert (keep[w == 0] == 0).all()
    assert not np.isin(alias, np.flatnonzero(w == 0)).any()


@pytest.mark.parametrize("name", sorted(WEIGHT_CASES))
def test_table_matches_numpy_reference(name):
    w = np.asarray(WEIGHT_CASES[name], dtype=np.float64)
    keep, alias = fs.AliasSampler(w).table()
    assert keep.dtype == np.float32 and alias.dtype == np.int32
    ref_keep, ref_alias = alias_table(w)
    np.testing.assert_array_equal(alias, ref_alias)
    np.testing.assert_allclose(keep, ref_keep, atol=1e-6)
    # The table samples exactly the normalised weights (up to float32 storage of keep).
    np.testing.assert_allclose(alias_distribution(keep, alias), w / w.sum(), atol=1e-6)


@pytest.mark.parametrize("size", [0, 1, 65535, 65536, 65537, 300_001])
def test_same_seed_same_draws_for_every_thread_count(size):
    s = fs.AliasSampler(np.arange(1, 1001))
    ref = s.sample(size, seed=42, num_threads=1)
    for t in (0, 2, 3, 8):
        np.testing.assert_array_equal(s.sample(size, seed=42, num_threads=t), ref)
    if size > 100:
        assert not np.array_equal(s.sample(size, seed=43), ref)


def test_large_seed_and_len():
    s = fs.AliasSampler(np.ones(7))
    assert len(s) == 7 and "n=7" in repr(s)
    assert s.sample(10, seed=2**64 - 1).shape == (10,)


def test_single_item():
    assert (fs.AliasSampler([2.5]).sample(1000) == 0).all()


@pytest.mark.parametrize(
    ("weights", "exc", "match"),
    [
        ([], ValueError, "weights.*empty"),
        ([[1.0, 2.0]], ValueError, "weights.*1-D"),
        ([1.0, np.nan], ValueError, "weights.*finite"),
        ([1.0, np.inf], ValueError, "weights.*finite"),
        ([1.0, -0.5], ValueError, "weights.*non-negative"),
        ([0.0, 0.0], ValueError, "weights.*positive"),
        (["a", "b"], TypeError, "weights.*real"),
        ([1 + 1j], TypeError, "weights.*real"),
        ([1e308, 1e308], ValueError, "weights.*finite"),
        (3.0, ValueError, "weights.*1-D"),
    ],
)
def test_bad_weights(weights, exc, match):
    with pytest.raises(exc, match=match):
        fs.AliasSampler(weights)


@pytest.mark.parametrize(
    ("kwargs", "exc", "match"),
    [
        ({"size": -1}, ValueError, "size"),
        ({"size": 2.5}, TypeError, "size"),
        ({"size": "3"}, TypeError, "size"),
        ({"size": 3, "num_threads": -1}, ValueError, "num_threads"),
        ({"size": 3, "num_threads": 1.5}, TypeError, "num_threads"),
        ({"size": 3, "seed": -1}, ValueError, "seed"),
        ({"size": 3, "seed": 2**64}, ValueError, "seed"),
        ({"size": 3, "seed": None}, TypeError, "seed"),
    ],
)
def test_bad_sample_arguments(kwargs, exc, match):
    s = fs.AliasSampler([1.0, 2.0])
    with pytest.raises(exc, match=match):
        s.sample(**kwargs)


def test_core_rejects_unconverted_arrays():
    """The binding layer checks dtype and layout itself instead of copying silently."""
    with pytest.raises(TypeError, match="weights.*float64"):
        fs._core.AliasSampler(np.ones(3, dtype=np.float32))
    with pytest.raises(ValueError, match="weights.*contiguous"):
        fs._core.AliasSampler(np.ones(6)[::2])
    with pytest.raises(TypeError, match="weights.*ndarray"):
        fs._core.AliasSampler([1.0, 2.0])
