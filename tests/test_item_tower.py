"""fs.SoftmaxModel with an item tower (fit(item_features=...)): forward and gradients against
NumPy references, determinism, new items without retraining, files and bad input."""

import numpy as np
import pytest
import scipy.sparse as sp

import fastsoftmax as fs

N_ROWS, N_ITEMS, DIM = 40, 30, 6


def make_problem(seed=0):
    rng = np.random.default_rng(seed)
    t = sp.lil_matrix((N_ROWS, N_ITEMS), dtype=np.float32)
    for r in range(N_ROWS):
        for j in rng.choice(N_ITEMS, rng.integers(1, 5), replace=False):
            t[r, j] = rng.random() + 0.5
    targets = sp.csr_matrix(t)
    feats = fs.QueryFeatures(dense=rng.normal(size=(N_ROWS, 3)), bags={"history": targets})
    return feats, targets


def make_items(n=N_ITEMS, seed=1):
    rng = np.random.default_rng(seed)
    tags = sp.random(n, 7, density=0.3, random_state=seed, format="csr", dtype=np.float32)
    tags.data[:] = rng.random(tags.nnz).astype(np.float32) + 0.5
    return fs.QueryFeatures(
        dense=rng.normal(size=(n, 2)),
        categorical={"genre": rng.integers(0, 4, n), "id": np.arange(n) % N_ITEMS},
        bags={"tags": tags},
    )


def build(feats, targets, items, epochs=0, **kwargs):
    opts = {"dim": DIM, "embedding_dim": 3, "num_threads": 2, "epochs": epochs, "seed": 5,
            "item_id_embedding": False}  # fmt: skip
    opts.update(kwargs)
    model = fs.SoftmaxModel(N_ITEMS, **opts)
    model.fit(feats, targets, item_features=items, show_progress=False)
    return model


def tower_input(model, items):
    """The item tower's input rows [dense | genre | id | mean-pooled tags] in float64."""
    p = {k: v.astype(np.float64) for k, v in model.parameters.items()}
    indptr, indices, data = items.bags["tags"]
    tags = sp.csr_matrix((data, indices, indptr), shape=(len(indptr) - 1, 7)).astype(np.float64)
    sums = np.asarray(tags.sum(axis=1)).ravel()
    pooled = sp.diags(np.where(sums > 0, 1 / np.where(sums > 0, sums, 1), 0)) @ tags
    x = np.hstack(
        [
            items.dense.astype(np.float64),
            p["item_tower.categorical.genre"][items.categorical["genre"]],
            p["item_tower.categorical.id"][items.categorical["id"]],
            pooled @ p["item_tower.bags.tags"],
        ]
    )
    return x, pooled


def test_item_embeddings_are_the_tower_forward():
    feats, targets = make_problem()
    items = make_items()
    model = build(feats, targets, items, item_hidden=(5,))
    p = {k: v.astype(np.float64) for k, v in model.parameters.items()}
    x, _ = tower_input(model, items)
    h = np.maximum(x @ p["item_tower.mlp.0.weight"] + p["item_tower.mlp.0.bias"], 0)
    want = h @ p["item_tower.mlp.1.weight"] + p["item_tower.mlp.1.bias"]
    np.testing.assert_allclose(model.item_embeddings, want, rtol=1e-5, atol=1e-6)
    new = make_items(5, seed=9)
    x_new, _ = tower_input(model, new)
    h = np.maximum(x_new @ p["item_tower.mlp.0.weight"] + p["item_tower.mlp.0.bias"], 0)
    np.testing.assert_allclose(
        model.item_embeddings_from(new),
        h @ p["item_tower.mlp.1.weight"] + p["item_tower.mlp.1.bias"], rtol=1e-5, atol=1e-6,
    )  # fmt: skip


@pytest.mark.parametrize(
    "loss_opts",
    [
        {"loss": "full"},
        {"loss": "positives"},
        {"loss": "sampled", "num_negatives": 8},
        {"loss": "sampled", "num_negatives": 8, "share_negatives": False},
        {"loss": "sampled", "sampler": "in_batch"},
        {"loss": "sampled", "sampler": "popularity", "num_negatives": 8,
         "remove_accidental_hits": False},
        {"loss": "sampled", "sampler": "score", "num_negatives": 8, "hard_pool": 16},
        {"loss": "sampled", "num_negatives": 8, "gravity": 0.3},
    ],
)  # fmt: skip
def test_gradients_are_the_chain_rule_through_the_tower(loss_opts):
    """The tower model's gradients equal those of an item-table model whose table is the
    tower's output (same query parameters, same draws), back-propagated through the linear
    tower in float64: dW = X^T G, db = sum G, embedding rows get their rows of G W^T."""
    feats, targets = make_problem()
    items = make_items()
    tower = build(feats, targets, items, history="history", **loss_opts)
    table = fs.SoftmaxModel(N_ITEMS, dim=DIM, embedding_dim=3, num_threads=2, epochs=0, seed=5,
                            history="history", **loss_opts)  # fmt: skip
    table.fit(feats, targets, show_progress=False)
    for name, value in tower.parameters.items():
        if not name.startswith("item_tower."):
            table.parameters[name][...] = value
    table.parameters["item_embeddings"][...] = tower.item_embeddings
    got = tower.gradients(feats, targets, seed=11)
    ref = table.gradients(feats, targets, seed=11)
    for name in ref:
        if name != "item_embeddings":
            np.testing.assert_allclose(got[name], ref[name], rtol=1e-4, atol=1e-6)
    g = ref["item_embeddings"].astype(np.float64)
    assert np.abs(g).sum() > 0
    x, pooled = tower_input(tower, items)
    w = tower.parameters["item_tower.mlp.0.weight"].astype(np.float64)
    np.testing.assert_allclose(got["item_tower.mlp.0.weight"], x.T @ g, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["item_tower.mlp.0.bias"], g.sum(axis=0), rtol=1e-4, atol=1e-6)
    dx = g @ w.T
    for name, cols in (("genre", slice(2, 5)), ("id", slice(5, 8))):
        want = np.zeros_like(got[f"item_tower.categorical.{name}"], dtype=np.float64)
        np.add.at(want, items.categorical[name], dx[:, cols])
        np.testing.assert_allclose(got[f"item_tower.categorical.{name}"], want, rtol=1e-4,
                                   atol=1e-6)  # fmt: skip
    np.testing.assert_allclose(got["item_tower.bags.tags"], pooled.T @ dx[:, 8:11], rtol=1e-4,
                               atol=1e-6)  # fmt: skip


def test_item_id_embeddings_are_added_for_training_items_only():
    feats, targets = make_problem()
    items = make_items()
    model = build(feats, targets, items, item_id_embedding=True, item_id_dropout=0.3, epochs=3)
    e = model.parameters["item_id_embeddings"]
    assert e.shape == (N_ITEMS, DIM) and np.abs(e).sum() > 0  # trained from 0
    content = model.item_embeddings_from(items)
    np.testing.assert_allclose(model.item_embeddings, content + e, rtol=1e-6, atol=1e-6)
    new = make_items(3, seed=5)
    model.add_items(new)
    np.testing.assert_array_equal(model.item_embeddings[N_ITEMS:], model.item_embeddings_from(new))


@pytest.mark.parametrize("loss_opts", [{"loss": "full"}, {"loss": "sampled", "num_negatives": 8}])
def test_item_id_embedding_gradients_are_the_item_table_gradients(loss_opts):
    """Without dropout (gradients() never drops), dL/dE equals an item-table model's dL/dV at
    V = tower + E, and the tower's own gradients are unchanged by E's presence."""
    feats, targets = make_problem()
    items = make_items()
    tower = build(feats, targets, items, item_id_embedding=True, **loss_opts)
    tower.parameters["item_id_embeddings"][...] = np.random.default_rng(2).normal(
        scale=0.3, size=(N_ITEMS, DIM))  # fmt: skip
    table = fs.SoftmaxModel(N_ITEMS, dim=DIM, embedding_dim=3, num_threads=2, epochs=0, seed=5,
                            **loss_opts)  # fmt: skip
    table.fit(feats, targets, show_progress=False)
    for name, value in tower.parameters.items():
        if name in table.parameters and name != "item_embeddings":
            table.parameters[name][...] = value
    table.parameters["item_embeddings"][...] = tower.item_embeddings
    got = tower.gradients(feats, targets, seed=4)
    ref = table.gradients(feats, targets, seed=4)
    g = ref["item_embeddings"]
    np.testing.assert_allclose(got["item_id_embeddings"], g, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(got["item_tower.mlp.0.bias"], g.sum(axis=0), rtol=1e-4, atol=1e-5)


def test_item_id_dropout_drops_each_items_id_with_probability_p():
    """One full-softmax SGD step: the id rows that change are exactly the items whose id the
    step kept; their share is 1 - p within 5 sigma, and another seed drops other items."""
    n, p = 2000, 0.3
    rng = np.random.default_rng(0)
    targets = sp.csr_matrix((np.ones(64), (np.arange(64), rng.integers(0, n, 64))), shape=(64, n))
    feats = fs.QueryFeatures(dense=rng.normal(size=(64, 2)))
    items = fs.QueryFeatures(categorical={"genre": rng.integers(0, 3, n)})
    changed = []
    for seed in (1, 2):
        model = fs.SoftmaxModel(n, dim=4, embedding_dim=4, epochs=1, batch_size=64, seed=seed,
                                optimizer="sgd", item_id_dropout=p)  # fmt: skip
        model.fit(feats, targets, item_features=items, show_progress=False)
        changed.append((model.parameters["item_id_embeddings"] != 0).any(axis=1))
    for c in changed:
        assert abs(c.mean() - (1 - p)) < 5 * np.sqrt(p * (1 - p) / n)
    assert (changed[0] != changed[1]).any()


def test_gradient_with_hidden_layers_matches_finite_differences():
    feats, targets = make_problem()
    items = make_items()
    model = build(feats, targets, items, item_hidden=(5,), loss="full")
    grads = model.gradients(feats, targets)
    rng = np.random.default_rng(3)
    names = ("item_tower.mlp.0.weight", "item_tower.mlp.0.bias", "item_tower.mlp.1.weight",
             "item_tower.categorical.id", "item_tower.bags.tags")  # fmt: skip
    for name in names:
        param = model.parameters[name]
        direction = rng.normal(size=param.shape).astype(np.float32)
        base = param.copy()
        eps = 1e-3  # small enough not to cross the ReLU's kinks
        param[...] = base + eps * direction
        up = model.loss(feats, targets)
        param[...] = base - eps * direction
        down = model.loss(feats, targets)
        param[...] = base
        numeric = (up - down) / (2 * eps)
        analytic = float(np.sum(grads[name].astype(np.float64) * direction))
        assert numeric == pytest.approx(analytic, rel=2e-2, abs=1e-4), name


@pytest.mark.parametrize("loss_opts", [{"loss": "full"}, {"loss": "sampled", "num_negatives": 8}])
def test_training_is_bit_identical_for_any_thread_count(loss_opts):
    feats, targets = make_problem()
    items = make_items()
    runs = [
        build(
            feats,
            targets,
            items,
            epochs=3,
            num_threads=t,
            batch_size=16,
            item_id_embedding=True,
            **loss_opts,
        )
        for t in (1, 2)
    ]
    for name, value in runs[0].parameters.items():
        assert np.array_equal(value, runs[1].parameters[name]), name
    assert runs[0].training_log == runs[1].training_log


def test_training_lowers_the_loss_and_moves_the_tower():
    feats, targets = make_problem()
    items = make_items()
    model = build(feats, targets, items, epochs=0, loss="sampled", num_negatives=8)
    before = model.loss(feats, targets)
    start = model.parameters["item_tower.mlp.0.weight"].copy()
    model.partial_fit(feats, targets, epochs=30, show_progress=False)  # the kept item features
    assert model.loss(feats, targets) < 0.8 * before
    assert not np.array_equal(start, model.parameters["item_tower.mlp.0.weight"])


def test_cold_items_are_ranked_by_their_features():
    """Users like one genre; the tower learns genre embeddings from the warm items, so new items
    of a user's genre (never trained on) rank above the other new items."""
    rng = np.random.default_rng(0)
    n_genres, n_warm, n_users = 4, 80, 200
    genre = np.arange(n_warm) % n_genres
    user_genre = rng.integers(0, n_genres, n_users)
    t = sp.lil_matrix((n_users, n_warm), dtype=np.float32)
    for u in range(n_users):
        same = np.flatnonzero(genre == user_genre[u])
        for j in rng.choice(same, 5, replace=False):
            t[u, j] = 1
    targets = sp.csr_matrix(t)
    feats = fs.QueryFeatures(categorical={"user": np.arange(n_users)})
    items = fs.QueryFeatures(categorical={"genre": genre})
    model = fs.SoftmaxModel(
        n_warm,
        dim=8,
        embedding_dim=8,
        epochs=30,
        batch_size=32,
        loss="sampled",
        num_negatives=16,
        seed=1,
    )
    model.fit(feats, targets, item_features=items, show_progress=False)
    cold_genre = np.repeat(np.arange(n_genres), 3)
    ids = model.add_items(fs.QueryFeatures(categorical={"genre": cold_genre}))
    assert np.array_equal(ids, np.arange(n_warm, n_warm + len(cold_genre)))
    assert model.item_embeddings.shape == (n_warm + len(cold_genre), 8)
    only_cold = sp.csr_matrix(np.hstack([np.ones((n_users, n_warm)), np.zeros((n_users, 12))]))
    top, _ = model.recommend(feats, k=3, exclude=only_cold)
    hits = cold_genre[top - n_warm] == user_genre[:, None]
    assert hits.mean() > 0.9  # chance: 0.25


def test_added_items_in_recommend_similar_items_and_index():
    feats, targets = make_problem()
    items = make_items()
    model = build(feats, targets, items, epochs=2, loss="sampled", num_negatives=8)
    new = make_items(4, seed=7)
    ids = model.add_items(new)
    v = model.item_embeddings
    np.testing.assert_array_equal(v[ids], model.item_embeddings_from(new))
    # exclude with n_items columns is widened: the new items stay eligible.
    rec, _ = model.recommend(feats, k=N_ITEMS + 4, exclude=targets)
    assert set(ids) <= set(rec[0][rec[0] >= 0])
    psi = model.query_embeddings(feats)
    want, _ = fs.topk(
        psi,
        v,
        N_ITEMS + 4,
        exclude=sp.csr_matrix(
            (targets.data, targets.indices, targets.indptr), shape=(N_ROWS, N_ITEMS + 4)
        ),
    )
    np.testing.assert_array_equal(rec, want)
    sim, _ = model.similar_items(ids[0], k=3)
    direct, _ = fs.topk(v[ids[:1]] / np.linalg.norm(v[ids[0]]),
                        v / np.linalg.norm(v, axis=1, keepdims=True), 4)  # fmt: skip
    np.testing.assert_array_equal(sim[0], [j for j in direct[0] if j != ids[0]][:3])
    index = model.build_index("exact")
    np.testing.assert_array_equal(model.recommend(feats, k=5, index=index)[0],
                                  model.recommend(feats, k=5)[0])  # fmt: skip


def test_save_and_load_keep_the_tower_and_added_items(tmp_path):
    feats, targets = make_problem()
    items = make_items()
    model = build(feats, targets, items, epochs=2, item_hidden=(4,))
    model.add_items(make_items(3, seed=4))
    model.save(tmp_path / "m.npz")
    loaded = fs.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(loaded.item_embeddings, model.item_embeddings)
    np.testing.assert_array_equal(loaded.recommend(feats, 5)[0], model.recommend(feats, 5)[0])
    new = make_items(2, seed=8)
    np.testing.assert_array_equal(loaded.item_embeddings_from(new), model.item_embeddings_from(new))
    assert loaded.get_params()["item_hidden"] == (4,)


def test_bad_item_features():
    feats, targets = make_problem()
    items = make_items()
    with pytest.raises(ValueError, match=r"item_features: expected 30 rows"):
        build(feats, targets, make_items(N_ITEMS - 1))
    with pytest.raises(TypeError, match="item_features"):
        build(feats, targets, {"genre": np.zeros(N_ITEMS, int)})
    with pytest.raises(ValueError, match="item_bias"):
        build(feats, targets, items, item_bias=True)
    model = build(feats, targets, items)
    missing = fs.QueryFeatures(dense=np.zeros((2, 2)), categorical={"genre": np.zeros(2, int)})
    with pytest.raises(ValueError, match="item_features: expected categorical features"):
        model.item_embeddings_from(missing)
    with pytest.raises(ValueError, match="item_features: expected 2 dense features, got 3"):
        model.add_items(
            fs.QueryFeatures(
                dense=np.zeros((1, 3)),
                categorical={"genre": [0], "id": [0]},
                bags={"tags": sp.csr_matrix((1, 7))},
            )
        )
    bad_id = make_items(2, seed=3)
    bad_id.categorical["genre"] = np.array([0, 99])
    with pytest.raises(IndexError, match="item_features: categorical 'genre'"):
        model.item_embeddings_from(bad_id)
    table = fs.SoftmaxModel(N_ITEMS, dim=DIM, epochs=0)
    table.fit(feats, targets, show_progress=False)
    with pytest.raises(ValueError, match="fitted without item features"):
        table.item_embeddings_from(items)
    with pytest.raises(ValueError, match="fitted without item features"):
        table.partial_fit(feats, targets, epochs=1, item_features=items, show_progress=False)
    with pytest.raises(ValueError, match="item_hidden"):
        fs.SoftmaxModel(N_ITEMS, item_hidden=(0,))
    with pytest.raises(TypeError, match="item_hidden"):
        fs.SoftmaxModel(N_ITEMS, item_hidden="8")


def test_item_embeddings_follow_training_added_items_and_written_parameters():
    feats, targets = make_problem()
    items = make_items()
    model = build(feats, targets, items, epochs=1, loss="sampled", num_negatives=8)
    first = model.item_embeddings.copy()
    model.partial_fit(feats, targets, epochs=1, show_progress=False)
    second = model.item_embeddings.copy()
    assert not np.array_equal(first, second)
    model.parameters["item_tower.mlp.0.bias"][...] += 1.0
    np.testing.assert_allclose(model.item_embeddings, second + 1.0, rtol=1e-5, atol=1e-5)
    model.add_items(make_items(2, seed=6))
    assert len(model.item_embeddings) == N_ITEMS + 2


def test_mixed_in_batch_negatives_with_the_item_tower():
    """The tower runs over the in-batch set plus the uniform draws: the gradient is the item
    table's at the same V."""
    feats, targets = make_problem()
    items = make_items()
    opts = {"loss": "sampled", "sampler": "in_batch", "mixed_negatives": 8}
    tower = build(feats, targets, items, epochs=2, **opts)
    table = fs.SoftmaxModel(N_ITEMS, dim=DIM, embedding_dim=3, num_threads=2, epochs=0, seed=5,
                            **opts)  # fmt: skip
    table.fit(feats, targets, show_progress=False)
    for name, value in tower.parameters.items():
        if not name.startswith("item_tower."):
            table.parameters[name][...] = value
    table.parameters["item_embeddings"][...] = tower.item_embeddings
    got, ref = tower.gradients(feats, targets, seed=3), table.gradients(feats, targets, seed=3)
    np.testing.assert_allclose(got["item_tower.mlp.0.bias"], ref["item_embeddings"].sum(axis=0),
                               rtol=1e-4, atol=1e-5)  # fmt: skip


def test_streaming_in_batch_negatives_with_the_item_tower_are_deterministic():
    feats, targets = make_problem()
    items = make_items()
    opts = {"loss": "sampled", "sampler": "in_batch", "frequency_estimate": "streaming",
            "mixed_negatives": 4, "batch_size": 8, "item_id_embedding": True}  # fmt: skip
    runs = [build(feats, targets, items, epochs=3, num_threads=t, **opts) for t in (1, 2)]
    for name, value in runs[0].parameters.items():
        assert np.array_equal(value, runs[1].parameters[name]), name


def test_recommend_all_ranks_added_items_with_their_labels(tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    feats, targets = make_problem()
    model = build(feats, targets, make_items(), epochs=2, loss="sampled", num_negatives=8)
    model.add_items(make_items(4, seed=2))
    labels = [f"item{j}" for j in range(N_ITEMS + 4)]
    rows = model.recommend_all(feats, 5, out=tmp_path / "r.parquet", exclude=targets,
                               item_labels=labels, progress=False)  # fmt: skip
    table = pq.read_table(tmp_path / "r.parquet").to_pydict()
    assert rows == N_ROWS * 5 == len(table["item"])
    ids, _ = model.recommend(feats, 5, exclude=targets)
    assert table["item"] == [labels[j] for j in ids.ravel()]
