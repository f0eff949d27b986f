import numpy as np
import pytest
import scipy.sparse as sp

import fastsoftmax as fs
from fastsoftmax import metrics

from reference import ranking_metrics_reference

LOG3 = np.log2(3.0)


def hand_case():
    """Four queries over ten items (see the expected values in the tests)."""
    recommended = np.array(
        [
            [1, 3, 2, -1],  # relevant {2, 4}: one hit at position 3
            [0, 0, 4, 1],  # relevant {0}: hit at position 1, the repeat is not a second hit
            [5, 6, 7, 8],  # no relevant item: skipped
            [9, 8, 7, 6],  # relevant {5}: no hit
        ]
    )
    rows = [0, 0, 0, 1, 3]
    cols = [2, 4, 3, 0, 5]
    vals = [1.0, 2.0, 0.0, 1.0, 1.0]  # (0, 3) is an explicit zero: not relevant
    relevant = sp.csr_matrix((vals, (rows, cols)), shape=(4, 10))
    return recommended, relevant


def test_hand_computed_values_at_3():
    rec, rel = hand_case()
    ndcg0 = (1 / 2) / (1 + 1 / LOG3)  # DCG = 1/log2(4); IDCG over min(3, 2) = 2 positions
    expected = {
        "precision": (1 / 3 + 1 / 3 + 0) / 3,
        "recall": (1 / 2 + 1 + 0) / 3,
        "ndcg": (ndcg0 + 1 + 0) / 3,
        "map": ((1 / 3) / 2 + 1 + 0) / 3,  # AP0 = precision@3 / min(3, 2)
        "hit_rate": 2 / 3,
    }
    got = metrics.ranking_metrics(rec, rel, 3)
    for name, value in expected.items():
        assert got[name] == pytest.approx(value, rel=1e-12), name
    assert metrics.precision_at_k(rec, rel, 3) == pytest.approx(expected["precision"])
    assert metrics.recall_at_k(rec, rel, 3) == pytest.approx(expected["recall"])
    assert metrics.ndcg_at_k(rec, rel, 3) == pytest.approx(expected["ndcg"])
    assert metrics.map_at_k(rec, rel, 3) == pytest.approx(expected["map"])
    assert metrics.hit_rate_at_k(rec, rel, 3) == pytest.approx(expected["hit_rate"])


def test_hand_computed_values_at_1_and_4():
    rec, rel = hand_case()
    # k = 1: only query 1 hits.
    assert metrics.precision_at_k(rec, rel, 1) == pytest.approx(1 / 3)
    assert metrics.ndcg_at_k(rec, rel, 1) == pytest.approx(1 / 3)
    assert metrics.map_at_k(rec, rel, 1) == pytest.approx(1 / 3)
    # k = 4: precision still divides by 4 although query 0 has only 3 real ids.
    assert metrics.precision_at_k(rec, rel, 4) == pytest.approx((1 / 4 + 1 / 4) / 3)
    per = metrics.precision_at_k(rec, rel, 4, per_query=True)
    np.testing.assert_allclose(per, [0.25, 0.25, np.nan, 0.0])


def test_perfect_and_empty_lists():
    rel = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 0, 0, 1]]))
    perfect = np.array([[1, 0, 2], [3, 0, 1]])
    got = metrics.ranking_metrics(perfect, rel, 3)
    assert got["recall"] == got["ndcg"] == got["map"] == got["hit_rate"] == 1.0
    assert got["precision"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    nothing = -np.ones((2, 3), dtype=np.int64)
    got = metrics.ranking_metrics(nothing, rel, 3)
    assert all(v == 0.0 for v in got.values())


def test_agrees_with_reference_loops_on_random_data():
    rng = np.random.default_rng(0)
    b, n = 300, 40
    rel = sp.random(b, n, density=0.08, format="csr", random_state=rng)
    rec = rng.integers(-1, n, (b, 12))  # includes padding and repeats
    for k in (1, 5, 12):
        got = metrics.ranking_metrics(rec, rel, k)
        ref = ranking_metrics_reference(rec, rel, k)
        for name in ref:
            assert got[name] == pytest.approx(ref[name], rel=1e-12), (k, name)


def test_folding_rate():
    rec = np.array([[0, 2, 3], [1, -1, -1], [-1, -1, -1], [3, 1, 0]])
    qg = np.array([0, 1, 0, 1])
    ig = np.array([0, 1, 1, 0])
    # k = 2 per query: items 0, 2 -> 1/2; item 1 -> 0; padding only -> skipped; 3, 1 -> 1/2
    assert metrics.folding_rate(rec, qg, ig, 2) == pytest.approx((0.5 + 0 + 0.5) / 3)
    per = metrics.folding_rate(rec, qg, ig, 3, per_query=True)
    np.testing.assert_allclose(per, [1 / 3, 0, np.nan, 2 / 3])
    with pytest.raises(ValueError, match="every row is padding"):
        metrics.folding_rate(rec[2:3], qg[2:3], ig, 3)
    with pytest.raises(ValueError, match="recommended: expected 3 rows"):
        metrics.folding_rate(rec, qg[:3], ig, 2)
    with pytest.raises(IndexError, match="recommended: item ids must lie in"):
        metrics.folding_rate(rec, qg, ig[:3], 2)


def test_validation_errors():
    rec, rel = hand_case()
    with pytest.raises(TypeError, match="relevant: expected a scipy.sparse matrix"):
        metrics.precision_at_k(rec, rel.toarray(), 3)
    with pytest.raises(TypeError, match="recommended: expected an integer array"):
        metrics.precision_at_k(rec.astype(float), rel, 3)
    with pytest.raises(ValueError, match="recommended: expected at least k = 5 columns"):
        metrics.recall_at_k(rec, rel, 5)
    with pytest.raises(ValueError, match="recommended: expected 4 rows"):
        metrics.recall_at_k(rec[:3], rel, 3)
    with pytest.raises(IndexError, match="recommended: item ids must lie in"):
        metrics.ndcg_at_k(rec + 5, rel, 3)
    with pytest.raises(ValueError, match="k: expected an integer >= 1"):
        metrics.map_at_k(rec, rel, 0)
    with pytest.raises(ValueError, match="relevant: no query has a relevant item"):
        metrics.hit_rate_at_k(rec, sp.csr_matrix((4, 10)), 3)


def test_exported():
    assert fs.metrics is metrics
    assert set(metrics.__all__) >= {
        "precision_at_k",
        "recall_at_k",
        "ndcg_at_k",
        "map_at_k",
        "hit_rate_at_k",
        "folding_rate",
    }
