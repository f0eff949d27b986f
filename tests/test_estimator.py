"""The estimator contract shared by fs.WALS and fs.SoftmaxModel (fastsoftmax.estimator)."""

import numpy as np
import pytest
import scipy.sparse as sp

import fastsoftmax as fs


def interactions(n_rows=40, n_items=30, seed=0):
    rng = np.random.default_rng(seed)
    a = sp.random(n_rows, n_items, density=0.15, format="csr", random_state=rng, dtype=np.float32)
    a = sp.lil_matrix(a)
    for r in range(n_rows):  # every row has a positive
        a[r, rng.integers(n_items)] = 1.0
    a = sp.csr_matrix(a)
    a.data[:] = 1.0
    return a


def softmax_setup(**kw):
    a = interactions()
    feats = fs.QueryFeatures(bags={"history": a})
    opts = {"history": "history", "dim": 8, "embedding_dim": 8, "epochs": 2, "batch_size": 16}
    return fs.SoftmaxModel(a.shape[1], **{**opts, **kw}), feats, a


def test_fit_starts_afresh_and_partial_fit_continues_exactly():
    a = interactions()
    twice = fs.WALS(4, iterations=2).fit(a, show_progress=False).fit(a, show_progress=False)
    once = fs.WALS(4, iterations=2).fit(a, show_progress=False)
    np.testing.assert_array_equal(twice.query_embeddings(), once.query_embeddings())
    assert len(twice.training_log) == 2
    cont = fs.WALS(4, iterations=2).fit(a, show_progress=False)
    cont.partial_fit(a, iterations=3, show_progress=False)
    five = fs.WALS(4, iterations=5).fit(a, show_progress=False)
    np.testing.assert_array_equal(cont.query_embeddings(), five.query_embeddings())
    np.testing.assert_array_equal(cont.item_embeddings, five.item_embeddings)
    assert cont.loss_history == five.loss_history

    model, feats, t = softmax_setup()
    model.fit(feats, t, show_progress=False)
    first = model.item_embeddings.copy()
    model.fit(feats, t, show_progress=False)
    np.testing.assert_array_equal(model.item_embeddings, first)
    assert len(model.training_log) == 2
    model.partial_fit(feats, t, epochs=3, show_progress=False)
    five, _, _ = softmax_setup(epochs=5)
    five.fit(feats, t, show_progress=False)
    np.testing.assert_array_equal(model.item_embeddings, five.item_embeddings)
    assert [g["loss"] for g in model.training_log] == [g["loss"] for g in five.training_log]


def test_partial_fit_needs_the_fitted_shape():
    a = interactions()
    with pytest.raises(RuntimeError, match="fit"):
        fs.WALS(4).partial_fit(a)
    mf = fs.WALS(4, iterations=1).fit(a, show_progress=False)
    with pytest.raises(ValueError, match="fitted shape"):
        mf.partial_fit(a[:-1], show_progress=False)
    with pytest.raises(ValueError, match="iterations"):
        mf.partial_fit(a, iterations=0, show_progress=False)


def test_one_callback_rule_true_stops_with_global_epoch_numbers():
    a = interactions()
    calls = []
    model, feats, t = softmax_setup(epochs=5)
    model.fit(feats, t, show_progress=False,
              callback=lambda e, m, logs: calls.append((e, logs)) or e == 1)  # fmt: skip
    model.partial_fit(feats, t, epochs=1, show_progress=False,
                      callback=lambda e, m, logs: calls.append((e, logs)))  # fmt: skip
    assert [c[0] for c in calls] == [0, 1, 2]
    assert [c[1] for c in calls] == model.training_log
    calls.clear()
    mf = fs.WALS(4, iterations=5).fit(a, show_progress=False,
                                      callback=lambda i, m, logs: calls.append(i) or i == 1)  # fmt: skip
    mf.partial_fit(a, iterations=1, show_progress=False, callback=lambda i, m, g: calls.append(i))
    assert calls == [0, 1, 2] and len(mf.training_log) == 3


def test_recommend_shapes_and_filter_seen_agree_between_models():
    a = interactions()
    mf = fs.WALS(4, iterations=2).fit(a, show_progress=False)
    model, feats, t = softmax_setup()
    model.fit(feats, t, show_progress=False)
    for ids in (mf.recommend(3, k=5)[0], mf.recommend([3], k=5)[0]):
        assert ids.shape == (1, 5)
    assert model.recommend(feats, k=5)[0].shape == (a.shape[0], 5)
    # filter_seen == exclude=the training rows; with exclude too, the union of both.
    rows = np.array([0, 7, 7, 39])
    extra = sp.csr_matrix((np.zeros(4), ([0, 1, 2, 3], [5, 6, 7, 8])), shape=(4, a.shape[1]))
    both = (
        a[rows]
        + abs(extra)
        + sp.csr_matrix((np.ones(4), ([0, 1, 2, 3], [5, 6, 7, 8])), shape=(4, a.shape[1]))
    )
    np.testing.assert_array_equal(
        mf.recommend(rows, k=6, filter_seen=True)[0], mf.recommend(rows, k=6, exclude=a[rows])[0]
    )
    got = mf.recommend(rows, k=6, filter_seen=True, exclude=extra)[0]
    np.testing.assert_array_equal(got, mf.recommend(rows, k=6, exclude=both)[0])
    for b, r in enumerate(rows):
        assert not np.isin(got[b], np.r_[a[r].indices, 5 + b]).any()
    np.testing.assert_array_equal(
        model.recommend(feats, k=6, filter_seen=True)[0], model.recommend(feats, k=6, exclude=a)[0]
    )


def test_filter_seen_needs_what_was_seen():
    a = interactions()
    mf = fs.WALS(4, iterations=1).fit(a, show_progress=False)
    with pytest.raises(TypeError, match="exclude: expected a scipy.sparse"):
        mf.recommend([0], filter_seen=True, exclude=np.zeros((1, a.shape[1])))
    with pytest.raises(ValueError, match="exclude: expected shape"):
        mf.recommend([0], filter_seen=True, exclude=a[:2])
    loaded = fs.WALS._from_arrays(mf._to_arrays())
    with pytest.raises(ValueError, match="filter_seen: the model has no training interactions"):
        loaded.recommend([0], filter_seen=True)
    model = fs.SoftmaxModel(a.shape[1], dim=4, epochs=1)
    feats = fs.QueryFeatures(dense=np.ones((a.shape[0], 2)))
    model.fit(feats, a, show_progress=False)
    with pytest.raises(ValueError, match="filter_seen: the model has no history"):
        model.recommend(feats, filter_seen=True)


def test_similar_items_in_both_models_by_cosine():
    model, feats, t = softmax_setup()
    model.fit(feats, t, show_progress=False)
    v = model.item_embeddings.astype(np.float64)
    unit = v / np.linalg.norm(v, axis=1, keepdims=True)
    ids, scores = model.similar_items([2, 9], k=4)
    for b, j in enumerate([2, 9]):
        cos = unit @ unit[j]
        cos[j] = -np.inf
        np.testing.assert_array_equal(ids[b], np.argsort(-cos, kind="stable")[:4])
        np.testing.assert_allclose(scores[b], np.sort(cos)[::-1][:4], atol=1e-5)
    with pytest.raises(IndexError, match="item_ids: id 30 out of range"):
        model.similar_items([30])


def test_get_params_set_params_and_repr():
    mf = fs.WALS(16, unobserved_weight=0.3, seed=4)
    assert mf.get_params()["unobserved_weight"] == 0.3
    assert repr(mf) == "WALS(dim=16, unobserved_weight=0.3, seed=4)"
    assert repr(fs.WALS(**mf.get_params())) == repr(mf)
    a = interactions()
    mf.fit(a, show_progress=False)
    u = mf.query_embeddings().copy()
    assert mf.set_params(iterations=2, regularization=1.0) is mf
    assert (mf.iterations, mf.regularization) == (2, 1.0)
    np.testing.assert_array_equal(mf.query_embeddings(), u)  # fitted state kept
    assert len(mf.training_log) == 15
    with pytest.raises(ValueError, match="set_params: WALS has no hyperparameter bogus"):
        mf.set_params(bogus=1)
    with pytest.raises(ValueError, match="unobserved_weight"):
        mf.set_params(unobserved_weight=-1)
    assert mf.unobserved_weight == 0.3  # a rejected value changes nothing

    model = fs.SoftmaxModel(30, loss="sampled", sampler="popularity", num_negatives=64)
    params = model.get_params()
    assert (params["loss"], params["sampler"], params["num_negatives"]) == (
        "sampled",
        "popularity",
        64,
    )
    assert repr(model) == (
        "SoftmaxModel(n_items=30, loss='sampled', num_negatives=64, sampler='popularity')"
    )
    model.set_params(sampler="uniform", learning_rate=0.1)
    assert model.get_params()["sampler"] == "uniform" and model.learning_rate == 0.1
    # Every hyperparameter is an attribute under its own name (loss: loss_kind, a method's name).
    for name, value in model.get_params().items():
        if name != "loss":
            assert getattr(model, name) == value, name
    assert (model.sampler, model.num_negatives, model.loss_kind) == ("uniform", 64, "sampled")
    assert fs.SoftmaxModel(**model.get_params()).get_params() == model.get_params()


def test_models_fitted_from_a_dataframe_recommend_in_original_ids():
    pd = pytest.importorskip("pandas")
    rng = np.random.default_rng(3)
    users = [f"user-{u}" for u in rng.integers(0, 40, 600)]
    items = [f"film {i}" for i in rng.integers(0, 30, 600)]
    ds = fs.datasets.from_dataframe(pd.DataFrame({"u": users, "i": items}), "u", "i")
    who = ["user-7", "user-12"]
    rows = ds.user_index(who)

    mf = fs.WALS(4, iterations=3).fit(ds.interactions, show_progress=False)
    got, scores = ds.recommend(mf, who, k=5)
    ids, want_scores = mf.recommend(rows, k=5, exclude=ds.interactions[rows])
    np.testing.assert_array_equal(got, ds.item_ids[ids])
    np.testing.assert_array_equal(scores, want_scores)
    for u, recs in zip(who, got, strict=True):  # nothing the user has seen
        assert not set(recs) & {i for uu, i in zip(users, items, strict=True) if uu == u}

    model = fs.SoftmaxModel(ds.n_items, history="history", dim=8, embedding_dim=8, epochs=2)
    model.fit(ds.query_features(), ds.interactions, show_progress=False)
    got, _ = ds.recommend(model, who, k=5)
    ids, _ = model.recommend(ds.query_features(rows), k=5, filter_seen=True)
    np.testing.assert_array_equal(got, ds.item_ids[ids])
    # More items than the unseen ones: padded with "".
    got, scores = ds.recommend(model, who[:1], k=ds.n_items)
    n_seen = ds.interactions[rows[0]].nnz
    assert (got[0] == "").sum() == n_seen and np.isinf(scores[0][got[0] == ""]).all()
    with pytest.raises(KeyError):
        ds.recommend(mf, ["nobody"])


def test_similar_queries_of_wals_by_cosine():
    a = interactions()
    mf = fs.WALS(6, iterations=3).fit(a, show_progress=False)
    u = mf.query_embeddings().astype(np.float64)
    unit = u / np.linalg.norm(u, axis=1, keepdims=True)
    ids, scores = mf.similar_queries([4, 11], k=5)
    for b, q in enumerate([4, 11]):
        cos = unit @ unit[q]
        cos[q] = -np.inf
        np.testing.assert_array_equal(ids[b], np.argsort(-cos, kind="stable")[:5])
        np.testing.assert_allclose(scores[b], np.sort(cos)[::-1][:5], atol=1e-5)
    with pytest.raises(IndexError, match="query_ids: id 40 out of range"):
        mf.similar_queries(40)


@pytest.mark.parametrize("method", ["ivf", "exact"])
def test_recommend_with_an_index_of_every_list_equals_exact(method, tmp_path):
    a = interactions(n_rows=60, n_items=50)
    mf = fs.WALS(4, iterations=2).fit(a, show_progress=False)
    model, feats, t = softmax_setup(item_bias=True)
    model.fit(feats, t, show_progress=False)
    params = {"n_lists": 5, "n_probe": 5} if method == "ivf" else {}
    rows = np.arange(40)
    for m, queries in ((mf, rows), (model, feats)):
        index = m.build_index(method, **params)
        assert index.dim == (4 if m is mf else 9)  # the softmax model's bias is one more column
        for kw in ({}, {"filter_seen": True}):
            exact = m.recommend(queries, k=7, **kw)
            approx = m.recommend(queries, k=7, index=index, **kw)
            np.testing.assert_array_equal(approx[0], exact[0])
            np.testing.assert_array_equal(approx[1], exact[1])
        # k beyond the catalogue: padded as in exact search
        n = m.item_embeddings.shape[0]
        ids, scores = m.recommend(queries, k=n + 3, index=index)
        assert (ids[:, n:] == -1).all() and np.isneginf(scores[:, n:]).all()
    pq = pytest.importorskip("pyarrow.parquet")
    index = mf.build_index(method, **params)
    mf.recommend_all(4, out=tmp_path / "a.parquet", index=index)
    mf.recommend_all(4, out=tmp_path / "b.parquet")
    assert pq.read_table(tmp_path / "a.parquet").equals(pq.read_table(tmp_path / "b.parquet"))


def test_an_index_of_other_items_is_refused():
    a = interactions()
    mf = fs.WALS(4, iterations=2).fit(a, show_progress=False)
    index = mf.build_index(n_lists=3)
    mf.recommend(0, k=3, index=index)
    mf.partial_fit(a, iterations=1, show_progress=False)  # retrained: other item vectors
    with pytest.raises(ValueError, match="other item embeddings"):
        mf.recommend(0, k=3, index=index)
    other = fs.WALS(4, iterations=1).fit(interactions(n_items=31), show_progress=False)
    with pytest.raises(ValueError, match="built for 30 items"):
        other.recommend(0, k=3, index=index)
    model, feats, t = softmax_setup()
    model.fit(feats, t, show_progress=False)
    with pytest.raises(ValueError, match="dim"):  # 8-d items vs a 4-d index
        model.recommend(feats, k=3, index=index)
    with pytest.raises(TypeError, match="index"):
        mf.recommend(0, k=3, index="ivf")
