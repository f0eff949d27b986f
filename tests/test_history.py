"""History features (denoising corruption in the training loop) and early stopping."""

import numpy as np
import pytest
import scipy.sparse as sp

import fastsoftmax as fs


def make_history(n_rows=40, n_items=30, *, seed=0, density=0.3, weighted=True):
    """A history bag over the item space (every row non-empty), used as features and targets."""
    rng = np.random.default_rng(seed)
    x = sp.random(n_rows, n_items, density=density, format="csr", random_state=seed + 1)
    x = sp.lil_matrix(x)
    for r in range(n_rows):
        x[r, rng.integers(n_items)] = rng.random() + 0.5
    x = sp.csr_matrix(x, dtype=np.float32)
    if not weighted:
        x.data[:] = 1.0
    dense = rng.normal(size=(n_rows, 2))
    feats = fs.QueryFeatures(dense=dense, bags={"history": x})
    return feats, x, dense


def build(n_items, feats, targets, **kwargs):
    opts = {"hidden": (8,), "dim": 5, "embedding_dim": 4, "epochs": 0, "history": "history"}
    opts.update(kwargs)
    model = fs.SoftmaxModel(n_items, **opts)
    model.fit(feats, targets, show_progress=False)
    return model


def corrupted(x, keep, scale=1.0):
    """The history with only the kept entries (weights times scale)."""
    coo = x.tocoo()  # canonical CSR -> entries in CSR order
    m = sp.csr_matrix(
        (coo.data[keep] * scale, (coo.row[keep], coo.col[keep])), shape=x.shape, dtype=np.float32
    )
    m.sort_indices()
    return m


def test_draws_are_deterministic_fresh_each_epoch_and_drop_with_probability_p():
    feats, x, _ = make_history(n_rows=400, n_items=200, density=0.25)
    p = 0.3
    a = build(200, feats, x, history_dropout=p, seed=3)
    b = build(200, feats, x, history_dropout=p, seed=3, num_threads=1)
    k0 = a.history_kept(feats, 0)
    assert k0.dtype == bool and k0.shape == (x.nnz,)
    np.testing.assert_array_equal(k0, b.history_kept(feats, 0))
    k1 = a.history_kept(feats, 1)
    assert (k0 != k1).mean() > 0.3  # independent draws: 2 p (1 - p) = 0.42 differ
    # Binomial(nnz, 1 - p): the kept share within 5 standard deviations.
    n = x.nnz
    for kept in (k0, k1):
        assert abs(kept.sum() - n * (1 - p)) < 5 * np.sqrt(n * p * (1 - p))
    other = build(200, feats, x, history_dropout=p, seed=4)
    assert (other.history_kept(feats, 0) != k0).any()
    none = build(200, feats, x, history_dropout=0.0)
    assert none.history_kept(feats, 0).all()


@pytest.mark.parametrize("target", ["all", "dropped"])
@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_training_is_bit_identical_for_any_thread_count(target, loss):
    feats, x, _ = make_history(n_rows=300, n_items=500, density=0.04, seed=2)
    runs = []
    for threads in (1, 2, 2):
        model = fs.SoftmaxModel(
            500,
            hidden=(16,),
            dim=8,
            embedding_dim=8,
            history="history",
            history_target=target,
            loss=loss,
            num_negatives=32,
            epochs=3,
            batch_size=64,
            num_threads=threads,
            optimizer="adam",
            seed=5,
        )
        model.fit(feats, x, show_progress=False)
        runs.append(model.parameters)
    for name in runs[0]:
        np.testing.assert_array_equal(runs[0][name], runs[1][name], err_msg=name)
        np.testing.assert_array_equal(runs[1][name], runs[2][name], err_msg=name)


def expected_step(model, feats_c, targets_c, lr, sample_weight=None):
    grads = model.gradients(feats_c, targets_c, sample_weight=sample_weight)
    return {k: v - lr * grads[k] for k, v in model.parameters.items()}


@pytest.mark.parametrize(
    ("target", "pooling"), [("all", "mean"), ("all", "sum"), ("dropped", "mean"), ("all", "sqrtn")]
)
def test_sgd_step_is_the_gradient_at_the_corrupted_input(target, pooling):
    """fit's one-batch step == -lr * the gradient of the loss with the kept entries as input
    (mean/sqrtn pool over them, sum rescales by 1 / (1 - p)) and, for "dropped", the positives
    not kept as targets (rows without one removed). gradients() itself is checked against finite
    differences in test_softmax.py."""
    feats, x, dense = make_history(n_rows=40, n_items=30, density=0.2, seed=7)
    p, lr = 0.5, 0.2
    model = build(
        30,
        feats,
        x,
        history_dropout=p,
        history_target=target,
        pooling=pooling,
        optimizer="sgd",
        learning_rate=lr,
        batch_size=1000,
    )
    keep = model.history_kept(feats, 0)  # fit's next epoch is epoch 0
    scale = 1 / (1 - p) if pooling == "sum" else 1.0
    hist = corrupted(x, keep, scale)
    rows = np.arange(x.shape[0])
    targets = x
    weight = None
    if target == "dropped":
        targets = x - x.multiply(corrupted(x, keep) != 0)  # positives minus kept items
        targets.eliminate_zeros()
        rows = np.flatnonzero(targets.getnnz(axis=1) > 0)
        assert 0 < len(rows) < x.shape[0]  # some rows kept everything and sit out
        targets = targets[rows]
        assert targets.multiply(hist[rows]).nnz == 0  # never a kept item
        # A row keeps the weight of its whole target row (row_weighting="targets"); gradients()
        # would weigh the dropped targets' totals instead.
        full, part = (np.asarray(m.sum(axis=1)).ravel() for m in (x, targets))
        weight = (full[rows] / full.mean()) / (part / part.mean())
    feats_c = fs.QueryFeatures(dense=dense[rows], bags={"history": hist[rows]})
    want = expected_step(model, feats_c, targets, lr, weight)
    model.epochs = 1
    model.fit(feats, x, show_progress=False)
    for name, value in model.parameters.items():
        np.testing.assert_allclose(value, want[name], rtol=1e-4, atol=2e-6, err_msg=name)
    # Not the step at the uncorrupted input.
    assert not np.allclose(
        model.parameters["bags.history"],
        expected_step(
            build(30, feats, x, optimizer="sgd", learning_rate=lr, batch_size=1000), feats, x, lr
        )["bags.history"],
        atol=1e-5,
    )


def test_dropped_targets_with_nothing_dropped_skip_every_row():
    feats, x, _ = make_history()
    model = build(30, feats, x, history_dropout=0.0, history_target="dropped", epochs=0)
    before = {k: v.copy() for k, v in model.parameters.items()}
    model.epochs = 2
    model.fit(feats, x, show_progress=False)
    assert [log["loss"] for log in model.training_log] == [0.0, 0.0]
    for name, value in model.parameters.items():
        np.testing.assert_array_equal(value, before[name], err_msg=name)


def test_prediction_uses_the_whole_history():
    feats, x, _ = make_history()
    a = fs.SoftmaxModel(30, hidden=(8,), dim=5, history="history", epochs=2, seed=1)
    a.fit(feats, x, show_progress=False)
    emb = a.query_embeddings(feats)
    b = fs.SoftmaxModel(30, hidden=(8,), dim=5, epochs=0, seed=1)
    b.fit(feats, x, show_progress=False)
    for name, value in a.parameters.items():
        b.parameters[name][...] = value
    np.testing.assert_array_equal(emb, b.query_embeddings(feats))
    assert a.loss(feats, x) == b.loss(feats, x)


def test_history_settings_survive_save_and_load(tmp_path):
    feats, x, _ = make_history()
    m = build(30, feats, x, history_dropout=0.25, history_target="dropped", epochs=1)
    m.save(tmp_path / "m.npz")
    loaded = fs.load(tmp_path / "m.npz")
    assert (loaded.history, loaded.history_dropout, loaded.history_target) == (
        "history",
        0.25,
        "dropped",
    )
    np.testing.assert_array_equal(loaded.history_kept(feats, 3), m.history_kept(feats, 3))


def split_rows(x, seed=0):
    """Per-row split of x into (input, held-out) for validation."""
    return fs.datasets.train_test_split(x, test_fraction=0.3, seed=seed)


def test_validation_metric_equals_fs_evaluate_with_history_excluded():
    feats, x, dense = make_history(n_rows=120, n_items=60, density=0.2, seed=3)
    inp, held = split_rows(x)
    val_feats = fs.QueryFeatures(dense=dense, bags={"history": inp})
    model = fs.SoftmaxModel(60, hidden=(8,), dim=6, history="history", epochs=2, seed=2)
    model.fit(feats, x, validation=(val_feats, held), metric="ndcg@5", show_progress=False)
    want = fs.evaluate(model, inp, held, k=5, queries=val_feats)
    rows = held.getnnz(axis=1) > 0
    assert np.all(rows)  # evaluate's default queries are all rows with held-out items
    assert model.training_log[-1]["ndcg@5"] == pytest.approx(want["ndcg"], rel=1e-12)
    # Explicit exclude=None (third element) keeps history items in the lists: a different score.
    model2 = fs.SoftmaxModel(60, hidden=(8,), dim=6, history="history", epochs=2, seed=2)
    empty = sp.csr_matrix(held.shape, dtype=np.float32)
    model2.fit(feats, x, validation=(val_feats, held, empty), metric="ndcg@5",
               show_progress=False)  # fmt: skip
    no_excl = fs.evaluate(model2, None, held, k=5, queries=val_feats, exclude_seen=False)
    assert model2.training_log[-1]["ndcg@5"] == pytest.approx(no_excl["ndcg"], rel=1e-12)
    assert no_excl["ndcg"] != want["ndcg"]


def test_early_stopping_restores_the_best_epoch_exactly():
    feats, x, dense = make_history(n_rows=150, n_items=80, density=0.15, seed=4)
    inp, held = split_rows(x, seed=1)
    val = (fs.QueryFeatures(dense=dense, bags={"history": inp}), held)
    kw = dict(hidden=(16,), dim=8, history="history", learning_rate=0.5, seed=9, batch_size=32)
    model = fs.SoftmaxModel(80, epochs=40, **kw)
    model.fit(feats, x, validation=val, early_stopping=3, show_progress=False)
    scores = [log["recall@10"] for log in model.training_log]
    best = model.best_epoch
    assert best == int(np.argmax(scores))  # the first epoch with the highest score
    assert len(scores) == best + 4 < 40  # stopped after 3 epochs without improvement
    ref = fs.SoftmaxModel(80, epochs=best + 1, **kw)
    ref.fit(feats, x, show_progress=False)
    for name, value in model.parameters.items():
        np.testing.assert_array_equal(value, ref.parameters[name], err_msg=name)


def test_bad_history_and_validation_arguments():
    feats, x, _ = make_history()
    for bad in (1.0, -0.1, 1.5):
        with pytest.raises(ValueError, match="history_dropout"):
            fs.SoftmaxModel(30, history="history", history_dropout=bad)
    with pytest.raises(TypeError, match="history_dropout"):
        fs.SoftmaxModel(30, history="history", history_dropout="half")
    with pytest.raises(ValueError, match="history_target"):
        fs.SoftmaxModel(30, history="history", history_target="kept")
    with pytest.raises(TypeError, match="history"):
        fs.SoftmaxModel(30, history=3)
    cat_feats = fs.QueryFeatures(categorical={"user": np.arange(40)}, bags={"history": x})
    with pytest.raises(ValueError, match="history: expected the name of a bag feature.*'user'"):
        fs.SoftmaxModel(30, history="user").fit(cat_feats, x, show_progress=False)
    with pytest.raises(ValueError, match="history: the model has no history feature"):
        build(30, feats, x, history=None).history_kept(feats, 0)
    model = fs.SoftmaxModel(30, history="history", epochs=1)
    with pytest.raises(ValueError, match="early_stopping: requires validation"):
        model.fit(feats, x, early_stopping=2, show_progress=False)
    with pytest.raises(ValueError, match="metric"):
        model.fit(feats, x, validation=(feats, x), metric="recall", show_progress=False)
    with pytest.raises(ValueError, match="early_stopping"):
        model.fit(feats, x, validation=(feats, x), early_stopping=0, show_progress=False)
    with pytest.raises(ValueError, match=r"validation relevant: expected shape \(40, 30\)"):
        model.fit(feats, x, validation=(feats, x[:10]), show_progress=False)
    with pytest.raises(ValueError, match=r"validation exclude: expected shape \(40, 30\)"):
        model.fit(feats, x, validation=(feats, x, x[:, :5]), show_progress=False)
    with pytest.raises(TypeError, match="validation: expected a tuple"):
        model.fit(feats, x, validation=[feats, x], show_progress=False)
    with pytest.raises(ValueError, match="validation features"):
        model.fit(feats, x, validation=(fs.QueryFeatures(bags={"history": x}), x),
                  show_progress=False)  # fmt: skip
