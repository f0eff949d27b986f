"""fs.SoftmaxModel(loss="sampled") and gravity: bias of the sampled gradient, folding, options."""

import numpy as np
import pytest
import scipy.sparse as sp

import fastsoftmax as fs
from fastsoftmax.metrics import folding_rate


def make_problem(n_rows=24, n_items=60, seed=0):
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(n_rows, 3))
    cat = rng.integers(0, 5, n_rows)
    feats = fs.QueryFeatures(dense=dense, categorical={"c": cat})
    t = sp.lil_matrix((n_rows, n_items))
    for r in range(n_rows):
        for j in rng.choice(n_items, rng.integers(1, 4), replace=False):
            t[r, j] = rng.random() + 0.5
    return feats, sp.csr_matrix(t)


def build(feats, targets, **kwargs):
    opts = {"hidden": (8,), "dim": 5, "embedding_dim": 4, "num_threads": 2, "epochs": 0}
    opts.update(kwargs)
    model = fs.SoftmaxModel(targets.shape[1], **opts)
    model.fit(feats, targets, show_progress=False)
    return model


def copy_parameters(src, dst):
    for name, value in src.parameters.items():
        dst.parameters[name][...] = value


def flat(grads):
    return np.concatenate([grads[k].ravel() for k in sorted(grads)])


def relative_bias(model, full_grad, feats, targets, n_seeds):
    mean = np.mean([flat(model.gradients(feats, targets, seed=s)) for s in range(n_seeds)], axis=0)
    return np.linalg.norm(mean - full_grad) / np.linalg.norm(full_grad)


@pytest.fixture(scope="module")
def bias_setup():
    feats, targets = make_problem()
    full = build(feats, targets, loss="full", item_bias=True)
    # Spread the item table so that the softmax is far from uniform.
    full.parameters["item_embeddings"][...] *= 8.0
    return feats, targets, full, flat(full.gradients(feats, targets))


def sampled_like(full, feats, targets, **kwargs):
    model = build(feats, targets, loss="sampled", item_bias=True, **kwargs)
    copy_parameters(full, model)
    return model


def test_sampled_gradients_approach_full_softmax_as_m_grows(bias_setup):
    feats, targets, full, g_full = bias_setup
    errs = [
        relative_bias(
            sampled_like(full, feats, targets, num_negatives=m), g_full, feats, targets, 200
        )
        for m in (4, 32, 512)
    ]
    assert errs[0] > errs[1] > errs[2]
    assert errs[2] < 0.05


def test_logq_correction_reduces_bias_under_a_skewed_proposal(bias_setup):
    feats, targets, full, g_full = bias_setup
    w = 1.0 / np.arange(1, 61)
    kw = dict(sampler="weights", sampler_weights=w, num_negatives=512)
    with_q = relative_bias(sampled_like(full, feats, targets, **kw), g_full, feats, targets, 200)
    without = relative_bias(
        sampled_like(full, feats, targets, logq_correction=False, **kw),
        g_full,
        feats,
        targets,
        200,
    )
    assert with_q < 0.05  # measured 0.011
    assert without > 5 * with_q  # measured 0.21


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(sampler="score", hard_pool=None, hard_fraction=0.5),
        dict(sampler="score", hard_pool=None),
        dict(sampler="score", hard_pool=None, share_negatives=False, remove_accidental_hits=False),
        dict(sampler="uniform", share_negatives=False, gravity=0.3),
    ],
)
def test_other_proposals_are_asymptotically_unbiased(bias_setup, kwargs):
    # (Not "popularity" / "in_batch" here: with 24 rows most items are never a positive, so
    # they are outside those proposals' support and never a negative.)
    feats, targets, full, g_full = bias_setup
    if kwargs.get("gravity"):
        ref = build(feats, targets, loss="full", item_bias=True, gravity=kwargs["gravity"])
        copy_parameters(full, ref)
        g_full = flat(ref.gradients(feats, targets))
    model = sampled_like(full, feats, targets, num_negatives=512, **kwargs)
    assert relative_bias(model, g_full, feats, targets, 100) < 0.1


def test_sir_bias_shrinks_with_the_pool(bias_setup):
    """SIR's implied-Q correction is an O(1/M) approximation: measured against full softmax."""
    feats, targets, full, g_full = bias_setup
    errs = [
        relative_bias(
            sampled_like(full, feats, targets, num_negatives=256, sampler="score", hard_pool=M),
            g_full,
            feats,
            targets,
            100,
        )
        for M in (8, 59, 60)  # a pool of n_items = 60 or more samples exactly
    ]
    assert errs[2] < errs[1] < errs[0] and errs[1] < 0.15 and errs[2] < 0.02  # ~0.49, 0.10, 0.006


@pytest.mark.parametrize(
    "extra",
    [
        dict(),
        dict(item_bias=True, gravity=0.5),
        dict(item_bias=True, remove_accidental_hits=False, sampler="popularity"),
        dict(share_negatives=False, item_bias=True),
        dict(share_negatives=False, sampler="score", hard_pool=32),
        dict(share_negatives=False, sampler="score", hard_pool=None, hard_fraction=0.5),
    ],
)
def test_gradients_is_one_sampled_estimate_used_by_fit(extra):
    """One SGD step over one batch == params - lr * gradients(seed=model seed). Per-query draws
    come from one stream per data row, so fit's shuffle of the batch does not change a row's
    negatives (uniform, SIR and exact hard negatives); fit hands the item rows' contributions
    (draws, positives, gravity) to the optimiser unsummed, gradients() sums them."""
    feats, targets = make_problem()
    kw = dict(
        loss="sampled",
        num_negatives=16,
        optimizer="sgd",
        learning_rate=0.1,
        batch_size=64,
        seed=3,
        **extra,
    )
    model = build(feats, targets, **kw)
    before = {k: v.copy() for k, v in model.parameters.items()}
    g = model.gradients(feats, targets, seed=3)
    assert not np.array_equal(flat(g), flat(model.gradients(feats, targets, seed=4)))
    model.epochs = 1
    model.fit(feats, targets, show_progress=False)
    for name, value in model.parameters.items():
        # The step itself, against its own size (the values are ~100x larger than the step).
        step = value.astype(np.float64) - before[name]
        expected = -0.1 * g[name].astype(np.float64)
        np.testing.assert_allclose(step, expected, atol=1e-4 * np.abs(expected).max(), err_msg=name)


@pytest.fixture(scope="module")
def categories():
    data = fs.datasets.make_categories(3000, 400, 8, seed=0, in_category=1.0, feature_noise=0.0)
    f = data.features
    feats = fs.QueryFeatures(dense=f.dense, categorical=f.categorical, bags=f.bags)
    return feats, data


def folding(feats, data, **kwargs):
    opts = dict(
        hidden=(32,), dim=16, embedding_dim=8, epochs=5, num_threads=2, seed=1, batch_size=128
    )
    opts.update(kwargs)
    model = fs.SoftmaxModel(data.interactions.shape[1], **opts)
    model.fit(feats, data.interactions, show_progress=False)
    ids, _ = model.recommend(feats, k=10)
    return folding_rate(ids, data.query_groups, data.item_groups, 10)


def test_folding_positives_vs_negative_sampling(categories):
    feats, data = categories
    positives = folding(feats, data, loss="positives")
    uniform = folding(feats, data, loss="sampled", num_negatives=32)
    hard = folding(feats, data, loss="sampled", num_negatives=32, sampler="score", hard_pool=256)
    assert positives > 0.5  # measured 0.83
    assert uniform < 0.5 * positives
    assert hard <= uniform + 0.02


def test_gravity_lowers_folding_of_positives_only(categories):
    feats, data = categories
    assert folding(feats, data, loss="positives", gravity=1.0) < (
        folding(feats, data, loss="positives") - 0.1
    )


def test_extreme_logits_are_finite():
    feats, targets = make_problem()
    for kwargs in (
        dict(),
        dict(sampler="score", hard_pool=32, hard_fraction=0.5),
        dict(remove_accidental_hits=False, share_negatives=False, gravity=1e-3),
    ):
        model = build(feats, targets, loss="sampled", num_negatives=64, **kwargs)
        model.parameters["item_embeddings"][...] *= 3e3
        model.parameters["mlp.1.weight"][...] *= 3e3
        z = model.query_embeddings(feats) @ model.item_embeddings.T
        assert np.abs(z).max() > 1e3
        assert np.isfinite(model.loss(feats, targets))
        for g in model.gradients(feats, targets, seed=1).values():
            assert np.isfinite(g).all()


@pytest.mark.parametrize(
    "kwargs",
    [
        dict(),
        dict(sampler="in_batch"),
        dict(sampler="popularity"),
        dict(sampler="score", hard_pool=64, share_negatives=False),
    ],
)
def test_training_is_deterministic(kwargs):
    feats, targets = make_problem(n_rows=200)
    runs = []
    for threads in (2, 2, 1):
        model = build(
            feats,
            targets,
            loss="sampled",
            num_negatives=32,
            epochs=2,
            num_threads=threads,
            batch_size=32,
            **kwargs,
        )
        runs.append(flat(model.parameters))
    np.testing.assert_array_equal(runs[0], runs[1])
    np.testing.assert_array_equal(runs[0], runs[2])  # chunks fixed: also any thread count


def test_save_load_keeps_the_options(tmp_path):
    feats, targets = make_problem()
    w = np.arange(1.0, 61.0)
    model = build(
        feats,
        targets,
        loss="sampled",
        sampler="weights",
        sampler_weights=w,
        num_negatives=7,
        gravity=0.2,
        hard_pool=None,
        epochs=1,
    )
    model.save(tmp_path / "m.npz")
    loaded = fs.load(tmp_path / "m.npz")
    np.testing.assert_array_equal(
        flat(model.gradients(feats, targets, seed=2)),
        flat(loaded.gradients(feats, targets, seed=2)),
    )


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        (dict(sampler="hard"), ValueError, "sampler: expected one of"),
        (dict(num_negatives=0), ValueError, "num_negatives: expected an integer >= 1"),
        (dict(num_negatives=2.5), TypeError, "num_negatives: expected an integer"),
        (dict(sampler="weights"), ValueError, "sampler_weights: sampler='weights' needs"),
        (dict(sampler="weights", sampler_weights=np.ones(5)), ValueError, "expected 60 weights"),
        (dict(sampler="weights", sampler_weights=-np.ones(60)), ValueError, "non-negative"),
        (dict(sampler_weights=np.ones(60)), ValueError, "only used with sampler='weights'"),
        (dict(temperature=0.0), ValueError, "temperature: expected a finite number > 0"),
        (dict(hard_fraction=1.5), ValueError, "hard_fraction: expected a finite number"),
        (dict(hard_pool=0), ValueError, "hard_pool"),
        (dict(gravity=-1.0), ValueError, "gravity: expected a finite number >= 0"),
        (dict(gravity=float("nan")), ValueError, "gravity"),
        (dict(sampler_alpha=-1.0), ValueError, "sampler_alpha"),
        (dict(share_negatives="yes"), TypeError, "share_negatives: expected a bool"),
        (dict(logq_correction=1), TypeError, "logq_correction: expected a bool"),
        (dict(loss="sampledd"), ValueError, "loss: expected one of"),
    ],
)
def test_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        fs.SoftmaxModel(60, **{"loss": "sampled", **kwargs})


def test_positives_gravity_estimate_is_unbiased(bias_setup):
    """loss="positives" + gravity: the item Gramian on uniform rows, unbiased for the exact term
    (which "full" + gravity adds exactly)."""
    feats, targets, full, g_full = bias_setup
    models = {}
    for name, kw in {
        "pos": dict(loss="positives"),
        "pos_grav": dict(loss="positives", gravity=0.5, num_negatives=64),
        "full_grav": dict(loss="full", gravity=0.5),
    }.items():
        models[name] = build(feats, targets, item_bias=True, **kw)
        copy_parameters(full, models[name])
    exact_gravity = flat(models["full_grav"].gradients(feats, targets)) - g_full
    expected = flat(models["pos"].gradients(feats, targets)) + exact_gravity
    a = models["pos_grav"].gradients(feats, targets, seed=0)
    b = models["pos_grav"].gradients(feats, targets, seed=1)
    assert not np.array_equal(flat(a), flat(b))
    mean = np.mean(
        [flat(models["pos_grav"].gradients(feats, targets, seed=s)) for s in range(300)], axis=0
    )
    assert np.linalg.norm(mean - expected) < 0.05 * np.linalg.norm(exact_gravity)


def test_bag_tables_and_wide_layers_are_deterministic_across_thread_counts():
    # Several MLP row chunks, layer widths on the vectorised GEMM path, and more distinct bag
    # rows per batch than one task of the sparse update takes.
    rng = np.random.default_rng(5)
    n_rows, n_items, vocab = 600, 3000, 5000
    hist = sp.csr_matrix(
        (np.ones(n_rows * 12), rng.integers(0, vocab, n_rows * 12), np.arange(n_rows + 1) * 12),
        shape=(n_rows, vocab),
    )
    feats = fs.QueryFeatures(
        dense=rng.normal(size=(n_rows, 4)),
        categorical={"c": rng.integers(0, 7, n_rows)},
        bags={"h": hist},
    )
    targets = sp.csr_matrix(
        (np.ones(n_rows), (np.arange(n_rows), rng.integers(0, n_items, n_rows))),
        shape=(n_rows, n_items),
    )
    runs = []
    for threads in (1, 2):
        model = fs.SoftmaxModel(
            n_items,
            hidden=(48, 32),
            dim=16,
            embedding_dim={"c": 16, "h": 16},
            loss="sampled",
            num_negatives=64,
            batch_size=300,
            epochs=2,
            num_threads=threads,
            seed=3,
        )
        model.fit(feats, targets, show_progress=False)
        runs.append(model.parameters)
    assert set(runs[0]) == set(runs[1])
    for name in runs[0]:
        np.testing.assert_array_equal(runs[0][name], runs[1][name], err_msg=name)


@pytest.mark.parametrize("remove_hits", [True, False])
def test_in_batch_loss_and_gradient_are_those_of_the_distinct_candidate_set(remove_hits):
    """Issue 27: each distinct batch item once, corrected by its inclusion probability
    1 - (1 - Q(j))^E (E positive entries drawn from the training frequency Q)."""
    from reference import sampled_softmax

    feats, targets = make_problem(n_rows=30, n_items=25, seed=3)
    n = targets.shape[1]
    model = build(feats, targets, loss="sampled", sampler="in_batch", item_bias=True,
                  batch_size=1000, remove_accidental_hits=remove_hits)  # fmt: skip
    model.parameters["item_embeddings"][...] *= 4.0
    t = sp.csr_matrix(targets)
    ids = np.unique(t.indices)
    assert len(ids) < t.nnz  # the batch repeats items
    counts = np.bincount(t.indices, minlength=n).astype(float)
    q = counts / counts.sum()
    inclusion = 1 - (1 - q) ** t.nnz
    log_q = np.log(inclusion[ids] / len(ids))
    # Each row's distribution times its weight (the default row_weighting="targets").
    totals = np.asarray(t.sum(axis=1)).ravel()
    p = t.multiply((1 / totals * totals / totals.mean())[:, None]).tocsr()
    psi = model.query_embeddings(feats)
    V, b = model.item_embeddings, model.parameters["item_bias"]
    loss, _, dV, db = sampled_softmax(psi, V, b, p.indptr, p.indices, p.data, ids[None],
                                      log_q[None], pos_log_q=np.log(inclusion[p.indices]) -
                                      np.log(len(ids)), remove_accidental_hits=remove_hits,
                                      grad_scale=1 / len(psi))  # fmt: skip
    assert model.loss(feats, targets) == pytest.approx(loss / len(psi), rel=1e-5)
    g = model.gradients(feats, targets)
    np.testing.assert_allclose(g["item_embeddings"], dV, rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(g["item_bias"], db, rtol=1e-4, atol=1e-6)


def test_in_batch_cap_bounds_the_candidates():
    feats, targets = make_problem(n_rows=30, n_items=25, seed=3)
    capped = build(feats, targets, loss="sampled", sampler="in_batch", num_negatives=4,
                   batch_size=1000)  # fmt: skip
    grads = capped.gradients(feats, targets)
    touched = np.flatnonzero(np.abs(grads["item_embeddings"]).sum(axis=1))
    positives = np.unique(sp.csr_matrix(targets).indices)
    # Only positives and the 4 kept batch items (themselves positives of some row) move.
    assert np.isin(touched, positives).all()
    assert capped._config()["num_negatives"] == 4
    assert fs.SoftmaxModel(5, sampler="in_batch")._config()["num_negatives"] is None
    assert fs.SoftmaxModel(5)._config()["num_negatives"] == 256


def test_hard_pool_of_the_whole_catalogue_or_more_samples_exactly():
    feats, targets = make_problem(n_rows=20, n_items=30, seed=1)
    model = build(feats, targets, loss="sampled", sampler="score", hard_pool=5000, num_negatives=8)
    assert model._config()["hard_pool"] is None
    assert build(feats, targets, loss="sampled", sampler="score",
                 hard_pool=29)._config()["hard_pool"] == 29  # fmt: skip
    same = build(feats, targets, loss="sampled", sampler="score", hard_pool=None, num_negatives=8)
    g1, g2 = model.gradients(feats, targets, seed=3), same.gradients(feats, targets, seed=3)
    for name in g1:
        np.testing.assert_array_equal(g1[name], g2[name])
    with pytest.raises(ValueError, match="hard_pool"):
        fs.SoftmaxModel(30, loss="sampled", sampler="score", hard_pool=0)


@pytest.mark.parametrize(
    "opts",
    [
        {"frequency_estimate": "streaming"},
        {"mixed_negatives": 16},
        {"frequency_estimate": "streaming", "mixed_negatives": 16},
    ],
)
def test_streaming_and_mixed_in_batch_negatives_train_deterministically(opts):
    """Thread-count independent; fit n + partial_fit m == fit n + m (the streaming estimate
    continues across the calls); loss() and gradients() do not advance it."""
    feats, targets = make_problem(n_rows=96, n_items=60)
    runs = []
    for threads in (1, 2):
        m = build(feats, targets, loss="sampled", sampler="in_batch", epochs=4, batch_size=16,
                  num_threads=threads, **opts)  # fmt: skip
        runs.append(m)
    for name, value in runs[0].parameters.items():
        assert np.array_equal(value, runs[1].parameters[name]), name
    split = build(feats, targets, loss="sampled", sampler="in_batch", epochs=2, batch_size=16,
                  **opts)  # fmt: skip
    before = flat(split.gradients(feats, targets))
    assert np.array_equal(before, flat(split.gradients(feats, targets)))
    split.partial_fit(feats, targets, epochs=2, show_progress=False)
    for name, value in runs[0].parameters.items():
        assert np.array_equal(value, split.parameters[name]), name
    assert runs[0].training_log[-1]["loss"] < runs[0].training_log[0]["loss"]


def test_streaming_estimate_changes_the_correction():
    feats, targets = make_problem(n_rows=96, n_items=60)
    a = build(feats, targets, loss="sampled", sampler="in_batch", epochs=3, batch_size=16)
    b = build(feats, targets, loss="sampled", sampler="in_batch", epochs=3, batch_size=16,
              frequency_estimate="streaming")  # fmt: skip
    assert not np.array_equal(a.parameters["item_embeddings"], b.parameters["item_embeddings"])


def test_mixed_and_streaming_options_are_checked():
    with pytest.raises(ValueError, match="mixed_negatives: only for sampler='in_batch'"):
        fs.SoftmaxModel(10, loss="sampled", sampler="uniform", mixed_negatives=4)
    with pytest.raises(ValueError, match="frequency_estimate: only for sampler='in_batch'"):
        fs.SoftmaxModel(10, loss="sampled", frequency_estimate="streaming")
    with pytest.raises(ValueError, match="frequency_estimate"):
        fs.SoftmaxModel(10, loss="sampled", sampler="in_batch", frequency_estimate="online")
    with pytest.raises(ValueError, match="mixed_negatives"):
        fs.SoftmaxModel(10, loss="sampled", sampler="in_batch", mixed_negatives=-1)
