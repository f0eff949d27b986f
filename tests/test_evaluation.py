import numpy as np
import pytest
import scipy.sparse as sp

import fastsoftmax as fs
from fastsoftmax import metrics


class FixedModel:
    """Recommends from a fixed score table (queries x items) and records its calls."""

    def __init__(self, scores):
        self.scores = np.asarray(scores, dtype=np.float32)
        self.calls = []

    def recommend(self, queries, *, k, exclude=None):
        self.calls.append((queries, k, exclude))
        n = self.scores.shape[1]
        return fs.topk(self.scores[queries], np.eye(n, dtype=np.float32), k, exclude=exclude)


class FeatureModel:
    """Takes an opaque feature object; returns the given ids for its rows."""

    def __init__(self, ids):
        self.ids = ids
        self.seen = None

    def recommend(self, queries, *, k, exclude=None):
        self.seen = (queries, exclude)
        return self.ids[:, :k], np.zeros(self.ids[:, :k].shape, np.float32)


def small_case():
    rng = np.random.default_rng(0)
    scores = rng.standard_normal((30, 12))
    data = fs.datasets.make_categories(30, 12, 3, seed=0, interactions_per_query=4)
    train, test = fs.datasets.train_test_split(data.interactions, test_fraction=0.5, seed=0)
    return scores, data, train, test


def test_evaluate_calls_recommend_and_matches_metrics():
    scores, _, train, test = small_case()
    model = FixedModel(scores)
    result = fs.evaluate(model, train, test, k=5)
    assert len(model.calls) == 1
    queries, k, exclude = model.calls[0]
    with_test = np.flatnonzero(np.diff(test.indptr))
    np.testing.assert_array_equal(queries, with_test)
    assert k == 5
    assert (exclude != train[with_test]).nnz == 0
    ids, _ = fs.topk(scores[with_test].astype(np.float32), np.eye(12, dtype=np.float32), 5,
                     exclude=train[with_test])  # fmt: skip
    expected = metrics.ranking_metrics(ids, test[with_test], 5)
    for name, value in expected.items():
        assert result[name] == pytest.approx(value)
    assert result["k"] == 5 and result["n_queries"] == len(with_test)


def test_exclude_seen_false_and_explicit_queries():
    scores, _, train, test = small_case()
    model = FixedModel(scores)
    result = fs.evaluate(model, train, test, k=3, exclude_seen=False, queries=[4, 1, 2])
    queries, _, exclude = model.calls[0]
    np.testing.assert_array_equal(queries, [4, 1, 2])
    assert exclude is None
    ids = np.argsort(-scores[[4, 1, 2]], axis=1, kind="stable")[:, :3]
    assert result["recall"] == pytest.approx(metrics.recall_at_k(ids, test[[4, 1, 2]], 3))


def test_folding_rate_is_reported():
    scores, data, train, test = small_case()
    result = fs.evaluate(
        FixedModel(scores), train, test, k=4,
        query_groups=data.query_groups, item_groups=data.item_groups,
    )  # fmt: skip
    with_test = np.flatnonzero(np.diff(test.indptr))
    ids, _ = fs.topk(scores[with_test].astype(np.float32), np.eye(12, dtype=np.float32), 4,
                     exclude=train[with_test])  # fmt: skip
    expected = metrics.folding_rate(ids, data.query_groups[with_test], data.item_groups, 4)
    assert result["folding_rate"] == pytest.approx(expected)


def test_feature_queries_are_passed_through():
    test = sp.csr_matrix(np.array([[1, 0, 0, 1], [0, 0, 1, 0]]))
    train = sp.csr_matrix(np.array([[0, 1, 0, 0], [1, 0, 0, 0]]))
    ids = np.array([[0, 2, 1], [2, 3, 0]])
    feats = object()
    model = FeatureModel(ids)
    result = fs.evaluate(model, train, test, k=2, queries=feats)
    assert model.seen[0] is feats and (model.seen[1] != train).nnz == 0
    assert result["precision"] == pytest.approx((1 / 2 + 1 / 2) / 2)
    assert result["recall"] == pytest.approx((1 / 2 + 1) / 2)


def test_bad_models_and_inputs():
    test = sp.csr_matrix(np.eye(3))
    with pytest.raises(ValueError, match="model.recommend returned ids of shape"):
        fs.evaluate(FeatureModel(np.zeros((2, 5), np.int64)), None, test, exclude_seen=False, k=2)
    with pytest.raises(ValueError, match="train: required when exclude_seen"):
        fs.evaluate(FeatureModel(np.zeros((3, 5), np.int64)), None, test)
    with pytest.raises(ValueError, match=r"train: expected shape \(3, 3\)"):
        fs.evaluate(FeatureModel(np.zeros((3, 5), np.int64)), sp.csr_matrix((3, 4)), test)
    with pytest.raises(IndexError, match="queries: ids must lie in"):
        fs.evaluate(FixedModel(np.eye(3)), test, test, queries=[0, 3], k=1)


def test_softmax_model_needs_its_query_features():
    x = sp.random(40, 20, density=0.2, format="csr", random_state=0, dtype=np.float32)
    x = sp.csr_matrix(x[x.getnnz(axis=1) > 0])
    feats = fs.QueryFeatures(bags={"h": x})
    model = fs.SoftmaxModel(20, epochs=1).fit(feats, x, show_progress=False)
    with pytest.raises(TypeError, match="queries: SoftmaxModel recommends from query features"):
        fs.evaluate(model, x, x)
    assert 0 <= fs.evaluate(model, x, x, queries=feats, exclude_seen=False)["recall"] <= 1
