"""Compressed item tables (item_embedding="qr" / "hybrid"): V from its factors, gradients
through them (against the plain table's dL/dV and finite differences), sparse updates,
determinism, blocked top-k, files and bad input."""

import numpy as np
import pytest
import scipy.sparse as sp

import fastsoftmax as fs
import fastsoftmax.softmax as softmax_module
from fastsoftmax.retrieval import topk

N_ITEMS = 203  # not a multiple of the buckets: the last quotient row is partial


def _data(seed=0, n_rows=120, n_items=N_ITEMS):
    rng = np.random.default_rng(seed)
    # Skewed item frequencies, so the hybrid's most frequent items are well defined.
    p = 1.0 / np.arange(1, n_items + 1) ** 0.8
    rows, cols = [], []
    for r in range(n_rows):
        items = rng.choice(n_items, size=rng.integers(2, 9), replace=False, p=p / p.sum())
        rows += [r] * len(items)
        cols += list(items)
    x = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n_rows, n_items))
    x.sum_duplicates()
    x.data[:] = 1.0
    return fs.QueryFeatures(bags={"history": x}), x


def _model(kind, **kw):
    kw.setdefault("dim", 8)
    kw.setdefault("embedding_dim", 8)
    kw.setdefault("epochs", 0)
    return fs.SoftmaxModel(N_ITEMS, item_embedding=kind, history="history", **kw)


def _expected_v(model):
    p = model.parameters
    b = len(p["item_qr.remainder"])
    j = np.arange(N_ITEMS)
    v = p["item_qr.quotient"][j // b] * p["item_qr.remainder"][j % b]
    if "item_qr.dedicated" in p:
        v[model._dedicated] = p["item_qr.dedicated"]
    return v


@pytest.mark.parametrize("kind", ["qr", "hybrid"])
def test_item_embeddings_are_the_products_of_the_factors(kind):
    feats, x = _data()
    model = _model(kind, item_buckets=16, epochs=2).fit(feats, x, show_progress=False)
    p = model.parameters
    assert p["item_qr.quotient"].shape == (13, 8)  # ceil(203 / 16)
    assert p["item_qr.remainder"].shape == (16, 8)
    np.testing.assert_array_equal(model.item_embeddings, _expected_v(model))
    # Every item distinct (no two share both factors).
    assert len(np.unique(model.item_embeddings, axis=0)) == N_ITEMS


def test_default_buckets_and_dedicated_items_are_the_most_frequent():
    feats, x = _data()
    model = _model("hybrid").fit(feats, x, show_progress=False)
    b = int(np.ceil(np.sqrt(N_ITEMS)))
    assert model.parameters["item_qr.remainder"].shape == (b, 8)
    counts = np.bincount(x.indices, minlength=N_ITEMS)
    k = N_ITEMS // 10
    assert len(model._dedicated) == k == model.parameters["item_qr.dedicated"].shape[0]
    chosen = np.zeros(N_ITEMS, bool)
    chosen[model._dedicated] = True
    assert counts[chosen].min() >= counts[~chosen].max()


def _qr_gradients_from_table(g_v, model):
    """dL/dQ, dL/dR, dL/dD from dL/dV by the chain rule (NumPy)."""
    p = model.parameters
    q, r = p["item_qr.quotient"], p["item_qr.remainder"]
    b = len(r)
    j = np.arange(N_ITEMS)
    qr_items = np.ones(N_ITEMS, bool)
    out = {}
    if "item_qr.dedicated" in p:
        qr_items[model._dedicated] = False
        out["item_qr.dedicated"] = g_v[model._dedicated]
    gq = np.zeros_like(q, dtype=np.float64)
    gr = np.zeros_like(r, dtype=np.float64)
    jj = j[qr_items]
    np.add.at(gq, jj // b, g_v[jj] * r[jj % b])
    np.add.at(gr, jj % b, g_v[jj] * q[jj // b])
    out["item_qr.quotient"], out["item_qr.remainder"] = gq, gr
    return out


LOSSES = [
    {"loss": "full"},
    {"loss": "full", "gravity": 0.1, "item_bias": True},
    {"loss": "positives"},
    {"loss": "sampled", "num_negatives": 40},
    {"loss": "sampled", "num_negatives": 40, "share_negatives": False, "item_bias": True},
    {"loss": "sampled", "num_negatives": 30, "sampler": "popularity", "gravity": 0.05},
    {"loss": "sampled", "num_negatives": 30, "sampler": "in_batch", "mixed_negatives": 10},
    {"loss": "sampled", "num_negatives": 30, "sampler": "score", "hard_pool": 64},
]


@pytest.mark.parametrize("kind", ["qr", "hybrid"])
@pytest.mark.parametrize("options", LOSSES, ids=lambda o: "-".join(map(str, o.values())))
def test_gradients_match_the_table_gradient_through_the_chain_rule(kind, options):
    feats, x = _data()
    qr = _model(kind, item_buckets=12, **options).fit(feats, x, show_progress=False)
    # A plain-table model with the same query tower (same seed: the query tower is drawn
    # first) and V set to the compressed table's V: its dL/dV is the reference.
    table = _model("table", **options).fit(feats, x, show_progress=False)
    table.parameters["item_embeddings"][...] = qr.item_embeddings
    if options.get("item_bias"):
        qr.parameters["item_bias"][...] = np.linspace(-1, 1, N_ITEMS)
        table.parameters["item_bias"][...] = qr.parameters["item_bias"]
    g_table = table.gradients(feats, x, seed=3)
    g_qr = qr.gradients(feats, x, seed=3)
    assert qr.loss(feats, x) == pytest.approx(table.loss(feats, x), rel=1e-5)
    expected = _qr_gradients_from_table(g_table["item_embeddings"].astype(np.float64), qr)
    for name, g in expected.items():
        np.testing.assert_allclose(g_qr[name], g, rtol=2e-4, atol=2e-6, err_msg=name)
    for name in g_table:
        if name != "item_embeddings":
            np.testing.assert_allclose(g_qr[name], g_table[name], rtol=2e-4, atol=2e-6)


def test_gradient_matches_finite_differences():
    feats, x = _data(n_rows=40)
    model = _model("hybrid", item_buckets=10, item_dedicated=15, dim=4, embedding_dim=4)
    model.fit(feats, x, show_progress=False)
    grads = model.gradients(feats, x)
    p = model.parameters
    rng = np.random.default_rng(1)
    for name in ("item_qr.quotient", "item_qr.remainder", "item_qr.dedicated"):
        for _ in range(3):
            idx = tuple(rng.integers(0, s) for s in p[name].shape)
            old = float(p[name][idx])
            h = 1e-2
            p[name][idx] = old + h
            up = model.loss(feats, x)
            p[name][idx] = old - h
            down = model.loss(feats, x)
            p[name][idx] = old
            assert grads[name][idx] == pytest.approx((up - down) / (2 * h), rel=0.03, abs=2e-5)


def test_a_step_updates_only_the_touched_rows():
    feats, x = _data(n_rows=20)
    model = _model("qr", item_buckets=12, loss="positives", batch_size=20, optimizer="sgd")
    model.fit(feats, x, show_progress=False)
    before = {k: v.copy() for k, v in model.parameters.items()}
    model.partial_fit(feats, x, epochs=1, show_progress=False)
    touched = np.unique(x.indices)
    for name, rows in (("item_qr.quotient", touched // 12), ("item_qr.remainder", touched % 12)):
        changed = np.flatnonzero((model.parameters[name] != before[name]).any(axis=1))
        assert set(changed) <= set(rows), name
        assert len(changed) > 0


@pytest.mark.parametrize("kind", ["qr", "hybrid"])
@pytest.mark.parametrize("options", [{"loss": "full"}, {"loss": "sampled", "num_negatives": 32}])
def test_training_is_bit_identical_for_any_thread_count(kind, options):
    feats, x = _data()
    fits = [
        _model(kind, epochs=3, batch_size=32, num_threads=t, **options)
        .fit(feats, x, show_progress=False).parameters
        for t in (1, 2)
    ]  # fmt: skip
    for name in fits[0]:
        np.testing.assert_array_equal(fits[0][name], fits[1][name], err_msg=name)


@pytest.mark.parametrize("item_bias", [False, True])
def test_blocked_topk_equals_topk_on_the_materialised_table(monkeypatch, item_bias):
    feats, x = _data()
    model = _model("hybrid", epochs=2, item_bias=item_bias).fit(feats, x, show_progress=False)
    monkeypatch.setattr(softmax_module, "_SCORE_BLOCK", 50)  # 5 blocks, the last partial
    for k in (7, 60, 250):
        model._item_cache = None  # not materialised: the blocked path
        ids, scores = model.recommend(feats, k, exclude=x)
        assert model._item_cache is None
        psi = model.query_embeddings(feats)
        v = _expected_v(model)
        if item_bias:
            psi = np.hstack([psi, np.ones((len(psi), 1), np.float32)])
            v = np.hstack([v, model.parameters["item_bias"][:, None]])
        ref_ids, ref_scores = topk(psi, v, k, exclude=x)
        np.testing.assert_array_equal(ids, ref_ids)
        np.testing.assert_allclose(scores, ref_scores, rtol=1e-6)


@pytest.mark.parametrize("kind", ["qr", "hybrid"])
def test_saved_models_reproduce_predictions(tmp_path, kind):
    feats, x = _data()
    model = _model(kind, epochs=2, item_buckets=9).fit(feats, x, show_progress=False)
    model.save(tmp_path / "m.npz")
    loaded = fs.load(tmp_path / "m.npz")
    assert loaded.item_embedding == kind and loaded.item_buckets == 9
    np.testing.assert_array_equal(loaded._dedicated, model._dedicated)
    np.testing.assert_array_equal(loaded.item_embeddings, model.item_embeddings)
    for a, b in zip(loaded.recommend(feats, 10), model.recommend(feats, 10), strict=True):
        np.testing.assert_array_equal(a, b)


def test_compressed_tables_learn():
    """On data with structure (two item groups), recall of the compressed tables is far above
    chance."""
    feats, x = _data(n_rows=300)
    for kind in ("qr", "hybrid"):
        model = _model(kind, epochs=30, history_dropout=0.5).fit(feats, x, show_progress=False)
        hits = model.recommend(feats, 10)[0]
        frequent = np.argsort(-np.bincount(x.indices, minlength=N_ITEMS))[:10]
        # The learnt ranking puts the frequent items first (popularity is the signal here).
        assert len(np.intersect1d(hits[0], frequent)) >= 5, kind


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"item_embedding": "hashed"}, "item_embedding"),
        ({"item_embedding": "qr", "item_buckets": 0}, "item_buckets"),
        ({"item_embedding": "qr", "item_buckets": N_ITEMS + 1}, "item_buckets"),
        ({"item_embedding": "table", "item_buckets": 4}, "item_buckets"),
        ({"item_embedding": "qr", "item_dedicated": 4}, "item_dedicated"),
        ({"item_embedding": "hybrid", "item_dedicated": -1}, "item_dedicated"),
        ({"item_embedding": "hybrid", "item_dedicated": N_ITEMS + 1}, "item_dedicated"),
    ],
)
def test_bad_options_name_the_argument(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fs.SoftmaxModel(N_ITEMS, **kwargs)


def test_bucket_type_is_checked():
    with pytest.raises(TypeError, match="item_buckets"):
        fs.SoftmaxModel(N_ITEMS, item_embedding="qr", item_buckets=2.5)


def test_not_with_item_features():
    feats, x = _data()
    items = fs.QueryFeatures(categorical={"genre": np.arange(N_ITEMS) % 5})
    model = _model("qr")
    with pytest.raises(ValueError, match="item_embedding"):
        model.fit(feats, x, item_features=items, show_progress=False)
