import numpy as np
import pytest
import scipy.sparse as sp

import fastsoftmax as fs

from reference import row_weights, softmax_dnn


def make_problem(n_rows=24, n_items=40, *, seed=0, weighted_bags=True, multi_positive=True):
    """Small features (dense + categorical + a weighted bag with an empty row) and targets."""
    rng = np.random.default_rng(seed)
    dense = rng.normal(size=(n_rows, 3))
    cat = rng.integers(0, 7, n_rows)
    bag = sp.random(n_rows, 30, density=0.15, format="csr", random_state=seed + 1)
    bag = sp.csr_matrix(bag)
    if not weighted_bags:
        bag.data[:] = 1.0
    bag = sp.csr_matrix(bag.toarray() * (np.arange(n_rows) != 3)[:, None])  # row 3: empty bag
    feats = fs.QueryFeatures(dense=dense, categorical={"c": cat}, bags={"h": bag})
    t = sp.random(n_rows, n_items, density=0.08 if multi_positive else 0.0, random_state=seed + 2)
    t = sp.lil_matrix(t)
    for r in range(n_rows):  # every row has at least one positive
        t[r, rng.integers(n_items)] = rng.random() + 0.5
    return feats, sp.csr_matrix(t)


def build(feats, targets, **kwargs):
    """A model whose parameters exist (a fit with zero epochs builds it without training)."""
    opts = {"hidden": (8, 6), "dim": 5, "embedding_dim": 4, "num_threads": 2, "epochs": 0}
    opts.update(kwargs)
    model = fs.SoftmaxModel(targets.shape[1], **opts)
    model.fit(feats, targets, show_progress=False)
    return model


def finite_differences(params, feats, targets, name, index, *, eps=1e-6, **kw):
    p = {k: np.array(v, dtype=np.float64) for k, v in params.items()}
    p[name][index] += eps
    up, _ = softmax_dnn(p, feats, targets, **kw)
    p[name][index] -= 2 * eps
    down, _ = softmax_dnn(p, feats, targets, **kw)
    return (up - down) / (2 * eps)


@pytest.mark.parametrize("pooling", ["mean", "sum", "sqrtn"])
@pytest.mark.parametrize("loss", ["full", "positives"])
def test_reference_gradients_match_finite_differences(pooling, loss):
    """The float64 reference's backward pass agrees with finite differences of its forward pass,
    for every parameter group (so the reference can be trusted below)."""
    feats, targets = make_problem(seed=1)
    model = build(feats, targets, pooling=pooling, loss=loss, item_bias=True)
    params = {k: v.astype(np.float64) for k, v in model.parameters.items()}
    _, grads = softmax_dnn(params, feats, targets, pooling=pooling, loss=loss)
    rng = np.random.default_rng(0)
    for name, g in grads.items():
        assert g.shape == params[name].shape
        # Check the entries with the largest gradient plus random ones.
        flat = [np.unravel_index(np.argmax(np.abs(g)), g.shape)]
        flat += [tuple(rng.integers(0, s) for s in g.shape) for _ in range(3)]
        for idx in flat:
            fd = finite_differences(params, feats, targets, name, idx, pooling=pooling, loss=loss)
            assert fd == pytest.approx(g[idx], rel=1e-5, abs=1e-9), (name, idx)
    assert np.abs(grads["bags.h"]).max() > 0 and np.abs(grads["categorical.c"]).max() > 0


@pytest.mark.parametrize("pooling", ["mean", "sum", "sqrtn"])
@pytest.mark.parametrize("loss", ["full", "positives"])
@pytest.mark.parametrize("item_bias", [False, True])
def test_loss_and_gradients_match_reference(pooling, loss, item_bias):
    feats, targets = make_problem(seed=2)
    model = build(feats, targets, pooling=pooling, loss=loss, item_bias=item_bias)
    params = model.parameters
    ref_loss, ref_grads = softmax_dnn(params, feats, targets, pooling=pooling, loss=loss)
    assert model.loss(feats, targets) == pytest.approx(ref_loss, rel=1e-5)
    grads = model.gradients(feats, targets)
    assert set(grads) == set(params) == set(ref_grads)
    for name, g in grads.items():
        assert g.dtype == np.float32 and g.shape == params[name].shape
        scale = np.abs(ref_grads[name]).max()
        np.testing.assert_allclose(g, ref_grads[name], atol=2e-5 * scale + 1e-9, err_msg=name)


@pytest.mark.parametrize("loss", ["full", "positives"])
@pytest.mark.parametrize("row_weighting", ["targets", "uniform"])
def test_row_weights_match_reference(loss, row_weighting):
    """Row b's loss and gradient count w_b times: the row's target total over the mean row's
    ("targets", Mult-DAE's multinomial likelihood) or 1 ("uniform"), times sample_weight."""
    feats, targets = make_problem(seed=21)
    totals = np.asarray(targets.sum(axis=1)).ravel()
    assert totals.max() > 2.5 * totals.min()  # the rows' totals differ
    model = build(feats, targets, loss=loss, row_weighting=row_weighting)
    sw = np.random.default_rng(0).uniform(0.0, 3.0, len(totals))
    sw[5] = 0.0
    for sample_weight in (None, sw):
        w = row_weights(targets, row_weighting, sample_weight)
        ref_loss, ref_grads = softmax_dnn(model.parameters, feats, targets, loss=loss, weights=w)
        assert model.loss(feats, targets, sample_weight=sample_weight) == pytest.approx(
            ref_loss, rel=1e-5
        )
        grads = model.gradients(feats, targets, sample_weight=sample_weight)
        for name, g in grads.items():
            scale = np.abs(ref_grads[name]).max()
            np.testing.assert_allclose(g, ref_grads[name], atol=2e-5 * scale, err_msg=name)
    # The two weightings differ on these targets; a weight of 0 is the row left out.
    uniform = build(feats, targets, loss=loss, row_weighting="uniform")
    uniform.parameters["item_embeddings"][...] = model.item_embeddings
    if row_weighting == "targets":
        assert model.loss(feats, targets) != pytest.approx(uniform.loss(feats, targets), rel=1e-3)
    keep = np.arange(len(totals)) != 5
    one = np.ones(len(totals))
    one[5] = 0.0
    n = len(totals)
    assert uniform.loss(feats, targets, sample_weight=one) * n == pytest.approx(
        uniform.loss(_rows(feats, keep), targets[keep]) * (n - 1), rel=1e-5
    )


def _rows(feats, keep):
    """The rows ``keep`` (bool mask) of make_problem's features."""
    indptr, indices, data = feats.bags["h"]
    bag = sp.csr_matrix((data, indices, indptr), shape=(feats.n_rows, 30))[keep]
    return fs.QueryFeatures(
        dense=feats.dense[keep], categorical={"c": feats.categorical["c"][keep]}, bags={"h": bag}
    )


def test_sample_weight_bad_input():
    feats, targets = make_problem(seed=22)
    model = build(feats, targets)
    n = targets.shape[0]
    with pytest.raises(ValueError, match="sample_weight: expected shape"):
        model.loss(feats, targets, sample_weight=np.ones(n - 1))
    with pytest.raises(ValueError, match="sample_weight: expected finite weights >= 0"):
        model.fit(feats, targets, sample_weight=-np.ones(n), show_progress=False)
    with pytest.raises(ValueError, match="sample_weight: expected finite weights >= 0"):
        model.gradients(feats, targets, sample_weight=np.full(n, np.nan))
    with pytest.raises(TypeError, match="sample_weight: expected real numbers"):
        model.fit(feats, targets, sample_weight=np.array(["a"] * n), show_progress=False)
    with pytest.raises(ValueError, match="row_weighting: expected one of"):
        fs.SoftmaxModel(5, row_weighting="rows")


@pytest.mark.parametrize("loss", ["full", "positives"])
def test_wide_layers_match_reference(loss):
    """Layer widths that are multiples of 16 take the AVX2 kernels (where the CPU has them) with
    panel-packed operands; the tower input (3 dense + 16 + 8 columns) leaves a remainder of 8
    input-gradient columns on the portable path; 150 rows make several row tasks per layer."""
    feats, targets = make_problem(n_rows=150, seed=6)
    model = build(
        feats,
        targets,
        hidden=(32, 16),
        dim=16,
        embedding_dim={"c": 16, "h": 8},
        loss=loss,
        batch_size=150,
    )
    params = model.parameters
    ref_loss, ref_grads = softmax_dnn(params, feats, targets, loss=loss)
    assert model.loss(feats, targets) == pytest.approx(ref_loss, rel=1e-5)
    grads = model.gradients(feats, targets)
    for name, g in grads.items():
        scale = np.abs(ref_grads[name]).max()
        np.testing.assert_allclose(g, ref_grads[name], atol=2e-5 * scale + 1e-9, err_msg=name)


@pytest.mark.parametrize("width", [8, 16, 32, 64, 128])
@pytest.mark.parametrize("pooling", ["mean", "sqrtn"])
def test_bag_widths_match_reference(width, pooling):
    """Bag tables 16, 32 and 64 wide pool their rows in registers, other widths through a
    generic loop: both agree with the reference's pooled lookup (weighted bags, an empty bag)
    and its gradient; 150 rows make several lookup tasks."""
    feats, targets = make_problem(n_rows=150, seed=7)
    model = build(
        feats, targets, embedding_dim={"c": 4, "h": width}, pooling=pooling, batch_size=150
    )
    params = model.parameters
    ref_loss, ref_grads = softmax_dnn(params, feats, targets, pooling=pooling)
    assert model.loss(feats, targets) == pytest.approx(ref_loss, rel=1e-5)
    grads = model.gradients(feats, targets)
    for name in ("bags.h", "mlp.0.weight"):
        scale = np.abs(ref_grads[name]).max()
        assert scale > 0
        np.testing.assert_allclose(grads[name], ref_grads[name], atol=2e-5 * scale, err_msg=name)


@pytest.mark.parametrize("portable", [False, True])
@pytest.mark.parametrize("buffer_bytes", [None, 0])
@pytest.mark.parametrize(("n_rows", "dim"), [(10, 6), (37, 16)])
def test_full_softmax_over_many_item_blocks(buffer_bytes, portable, n_rows, dim):
    """n large enough for several item tasks and blocks; with a zero buffer budget the logits are
    recomputed in the second pass instead of stored: same result. Both kernels (the AVX2 one,
    where the CPU has it, and Eigen's), batch sizes and dims that are and are not multiples of
    the kernels' 16-wide panels."""
    feats, targets = make_problem(n_rows=n_rows, n_items=3000, seed=3)
    model = fs.SoftmaxModel(3000, hidden=(8,), dim=dim, embedding_dim=3, epochs=0, item_bias=True)
    options = {"portable_kernel": portable}
    if buffer_bytes is not None:
        options["max_buffer_bytes"] = buffer_bytes
    model._loss_options = lambda: options
    model.fit(feats, targets, show_progress=False)
    ref_loss, ref_grads = softmax_dnn(model.parameters, feats, targets)
    assert model.loss(feats, targets) == pytest.approx(ref_loss, rel=1e-5)
    grads = model.gradients(feats, targets)
    for name, g in grads.items():
        scale = np.abs(ref_grads[name]).max()
        np.testing.assert_allclose(g, ref_grads[name], atol=2e-5 * scale, err_msg=name)


def test_gradients_do_not_depend_on_batch_size():
    feats, targets = make_problem(seed=4)
    a = build(feats, targets, batch_size=5, seed=3)
    b = build(feats, targets, batch_size=1000, seed=3)
    ga, gb = a.gradients(feats, targets), b.gradients(feats, targets)
    for name in ga:
        np.testing.assert_allclose(ga[name], gb[name], atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("loss", ["full", "positives"])
def test_one_sgd_step_is_params_minus_lr_times_gradients(loss):
    feats, targets = make_problem(seed=5)
    lr = 0.3
    model = build(feats, targets, loss=loss, optimizer="sgd", learning_rate=lr, batch_size=1000)
    before = {k: v.copy() for k, v in model.parameters.items()}
    grads = model.gradients(feats, targets)
    model.epochs = 1
    model.fit(feats, targets, show_progress=False)  # one batch = all rows = one step
    after = model.parameters
    changed = 0
    for name in before:
        expected = before[name] - lr * grads[name]
        np.testing.assert_allclose(after[name], expected, atol=1e-6, rtol=1e-5, err_msg=name)
        changed += int(not np.array_equal(after[name], before[name]))
    assert changed == len(before)  # every group moved


@pytest.mark.parametrize("loss", ["full", "sampled"])
def test_sgd_step_on_rows_seen_once_and_several_times(loss):
    """A bag vocabulary large enough that most touched rows get a single contribution in the
    batch (applied without an intermediate gradient row) while some get several (summed first),
    same for the categorical and item rows: each parameter moves by exactly -lr * gradient,
    checked against the step's own size (a 0.1% error in either path fails)."""
    rng = np.random.default_rng(11)
    n_rows, vocab = 64, 400
    hist = sp.random(n_rows, vocab, density=0.02, format="csr", random_state=12)
    hist.data[:] = rng.random(hist.nnz) + 0.5
    common = sp.csr_matrix(  # id 7 in every bag: a row with 64 contributions
        (np.ones(n_rows), (np.arange(n_rows), np.full(n_rows, 7))), shape=(n_rows, vocab)
    )
    hist = sp.csr_matrix(hist + common)
    feats = fs.QueryFeatures(
        dense=rng.normal(size=(n_rows, 3)),
        categorical={"c": rng.integers(0, 200, n_rows)},
        bags={"h": hist},
    )
    targets = sp.csr_matrix(
        (np.ones(n_rows), (np.arange(n_rows), rng.integers(0, 300, n_rows))), shape=(n_rows, 300)
    )
    counts = np.bincount(hist.indices, minlength=vocab)
    assert (counts == 1).sum() > 100 and (counts > 1).sum() > 10  # both paths are exercised
    lr = 0.5
    opts = {"num_negatives": 40} if loss == "sampled" else {}
    model = build(
        feats,
        targets,
        loss=loss,
        optimizer="sgd",
        learning_rate=lr,
        batch_size=n_rows,
        seed=3,
        **opts,
    )
    before = {k: v.copy() for k, v in model.parameters.items()}
    grads = model.gradients(feats, targets, seed=3)  # the draws of fit's first step
    model.epochs = 1
    model.fit(feats, targets, show_progress=False)
    for name in ("bags.h", "categorical.c", "item_embeddings"):
        step = model.parameters[name].astype(np.float64) - before[name]
        expected = -lr * grads[name].astype(np.float64)
        assert np.abs(expected).max() > 0, name
        np.testing.assert_allclose(step, expected, atol=1e-4 * np.abs(expected).max(), err_msg=name)


@pytest.mark.parametrize("optimizer", ["sgd", "adagrad", "adam"])
def test_batches_within_an_epoch_equal_one_batch_epochs(optimizer):
    """Each optimiser step also packs the new MLP weights for the next batch's kernels (the first
    batch of a fit packs them itself). Two batches in one epoch must give exactly the parameters
    of two one-batch epochs: the rows are identical copies, so the shuffle does not matter. The
    widths make the packing cut panels across tasks and leave rows for its scalar path (input
    3 dense + 6 + 40 = 49 columns, hidden 256 and 48)."""
    rng = np.random.default_rng(21)
    n = 16
    one = sp.csr_matrix(
        (rng.random(7) + 0.5, (np.zeros(7, int), rng.choice(90, 7, replace=False))), shape=(1, 90)
    )
    target = sp.csr_matrix(([1.0, 2.0], ([0, 0], [5, 17])), shape=(1, 60))

    def data(copies):
        feats = fs.QueryFeatures(
            dense=np.tile(rng_dense, (copies, 1)),
            categorical={"c": np.full(copies, 4)},
            bags={"h": sp.vstack([one] * copies, format="csr")},
        )
        return feats, sp.vstack([target] * copies, format="csr")

    rng_dense = rng.normal(size=(1, 3))
    opts = dict(
        hidden=(256, 48),
        dim=16,
        embedding_dim={"c": 6, "h": 40},
        optimizer=optimizer,
        learning_rate=0.05,
        num_threads=2,
        seed=5,
        batch_size=n,
        loss="full",
    )
    a = fs.SoftmaxModel(60, epochs=1, **opts).fit(*data(2 * n), show_progress=False)
    b = fs.SoftmaxModel(60, epochs=2, **opts).fit(*data(n), show_progress=False)
    moved = fs.SoftmaxModel(60, epochs=1, **opts).fit(*data(n), show_progress=False)
    for name, value in a.parameters.items():
        np.testing.assert_array_equal(value, b.parameters[name], err_msg=name)
        if name.startswith("mlp"):  # the second step moved every layer
            assert not np.array_equal(value, moved.parameters[name]), name


@pytest.mark.parametrize("optimizer", ["adagrad", "adam"])
def test_adaptive_optimisers_match_pytorch_formulas_for_one_step(optimizer):
    """First step of Adagrad (G = g^2) is -lr * g / (|g| + 1e-10); of Adam (bias-corrected) it is
    -lr * g / (|g| + 1e-8): both move every touched entry by ~lr * sign(g)."""
    feats, targets = make_problem(seed=6)
    lr = 0.01
    model = build(feats, targets, optimizer=optimizer, learning_rate=lr, batch_size=1000)
    before = {k: v.copy() for k, v in model.parameters.items()}
    grads = model.gradients(feats, targets)
    model.epochs = 1
    model.fit(feats, targets, show_progress=False)
    eps = 1e-10 if optimizer == "adagrad" else 1e-8
    for name, g in grads.items():
        g = g.astype(np.float64)
        expected = before[name] - lr * g / (np.abs(g) + eps)
        # Entries with a tiny gradient are sensitive to float32 rounding of g: compare the rest.
        big = np.abs(g) > 1e-4
        np.testing.assert_allclose(model.parameters[name][big], expected[big], atol=1e-5)


def test_l2_decays_touched_rows_only():
    feats, targets = make_problem(seed=7)
    model = build(
        feats,
        targets,
        loss="positives",
        optimizer="sgd",
        learning_rate=0.1,
        l2=0.5,
        batch_size=1000,
    )
    before = model.parameters["item_embeddings"].copy()
    grads = model.gradients(feats, targets)
    model.epochs = 1
    model.fit(feats, targets, show_progress=False)
    touched = np.unique(targets.indices)
    untouched = np.setdiff1d(np.arange(targets.shape[1]), touched)
    after = model.parameters["item_embeddings"]
    np.testing.assert_array_equal(after[untouched], before[untouched])
    expected = before[touched] - 0.1 * (grads["item_embeddings"][touched] + 0.5 * before[touched])
    np.testing.assert_allclose(after[touched], expected, atol=1e-6)


def test_extreme_logits_are_finite_and_exact():
    feats, targets = make_problem(seed=8)
    for loss in ("full", "positives"):
        model = build(feats, targets, loss=loss, item_bias=True)
        params = model.parameters
        params["item_embeddings"][...] *= 3000.0  # logits of magnitude ~1e4
        psi = model.query_embeddings(feats)
        z = psi @ params["item_embeddings"].T
        assert np.abs(z).max() > 5e3
        value = model.loss(feats, targets)
        grads = model.gradients(feats, targets)
        ref_loss, ref_grads = softmax_dnn(model.parameters, feats, targets, loss=loss)
        assert np.isfinite(value) and value == pytest.approx(ref_loss, rel=1e-3)
        for name, g in grads.items():
            assert np.isfinite(g).all(), name
        np.testing.assert_allclose(
            grads["item_embeddings"],
            ref_grads["item_embeddings"],
            atol=1e-3 * np.abs(ref_grads["item_embeddings"]).max(),
        )


def test_parameters_are_writable_views_of_the_model():
    feats, targets = make_problem(seed=9)
    model = build(feats, targets)
    params = model.parameters
    assert all(v.dtype == np.float32 and v.flags.writeable for v in params.values())
    params["item_embeddings"][...] = 0.0
    params["mlp.2.weight"][...] = 0.0
    params["mlp.2.bias"][...] = np.arange(5)
    psi = model.query_embeddings(feats)
    assert psi.shape == (feats.n_rows, 5) and psi.dtype == np.float32
    np.testing.assert_array_equal(psi, np.tile(np.arange(5, dtype=np.float32), (feats.n_rows, 1)))
    np.testing.assert_array_equal(model.item_embeddings, 0.0)
    assert not model.item_embeddings.flags.writeable
    # A zero item table makes every logit 0: loss = log(n) for a one-positive row.
    one = sp.csr_matrix(([1.0], ([0], [3])), shape=(1, targets.shape[1]))
    sub = fs.QueryFeatures(
        dense=feats.dense[:1],
        categorical={"c": feats.categorical["c"][:1]},
        bags={"h": _bag_rows(feats, 1)},
    )
    assert model.loss(sub, one) == pytest.approx(np.log(targets.shape[1]), rel=1e-6)


def _bag_rows(feats, k):
    indptr, indices, data = feats.bags["h"]
    return sp.csr_matrix((data[: indptr[k]], indices[: indptr[k]], indptr[: k + 1]), shape=(k, 30))


@pytest.mark.parametrize("loss", ["full", "positives"])
def test_training_is_deterministic_for_a_seed_and_any_thread_count(loss):
    feats, targets = make_problem(n_rows=300, n_items=1500, seed=10)
    runs = []
    for threads in (1, 2, 2):
        model = fs.SoftmaxModel(
            1500,
            hidden=(16,),
            dim=8,
            embedding_dim=4,
            loss=loss,
            epochs=2,
            batch_size=64,
            num_threads=threads,
            seed=11,
            optimizer="adam",
        )
        model.fit(feats, targets, show_progress=False)
        runs.append(model.parameters)
    for name in runs[0]:
        np.testing.assert_array_equal(runs[1][name], runs[2][name], err_msg=name)
        # Fixed task chunks and reduction order: even the thread count does not matter.
        np.testing.assert_array_equal(runs[0][name], runs[1][name], err_msg=name)
    other = fs.SoftmaxModel(
        1500,
        hidden=(16,),
        dim=8,
        embedding_dim=4,
        loss=loss,
        epochs=2,
        batch_size=64,
        seed=12,
        optimizer="adam",
    )
    other.fit(feats, targets, show_progress=False)
    assert not np.array_equal(other.parameters["item_embeddings"], runs[0]["item_embeddings"])


def test_training_lowers_the_loss_and_callback_can_stop():
    feats, targets = make_problem(n_rows=200, n_items=50, seed=12)
    model = fs.SoftmaxModel(50, hidden=(32,), dim=16, embedding_dim=8, epochs=30, batch_size=32)
    start = build(feats, targets, hidden=(32,), dim=16, embedding_dim=8).loss(feats, targets)
    seen = []

    def callback(epoch, m, logs):
        assert m is model
        seen.append(logs["loss"])
        return epoch == 19

    model.fit(feats, targets, show_progress=False, callback=callback)
    assert len(seen) == 20 and model.training_log[-1]["loss"] == seen[-1]
    assert model.loss(feats, targets) < start - 0.5  # (the floor is the targets' entropy)


def test_embedding_dim_per_feature_and_vocab_sizes():
    feats, targets = make_problem(seed=13)
    model = build(feats, targets, embedding_dim={"c": 3, "h": 5}, vocab_sizes={"c": 50})
    p = model.parameters
    assert p["categorical.c"].shape == (50, 3) and p["bags.h"].shape == (30, 5)
    assert p["mlp.0.weight"].shape == (3 + 3 + 5, 8)
    with pytest.raises(ValueError, match="embedding_dim: no dimension given for feature 'h'"):
        build(feats, targets, embedding_dim={"c": 3})


def test_bad_inputs():
    feats, targets = make_problem(seed=14)
    n = targets.shape[1]
    with pytest.raises(ValueError, match="loss: expected one of"):
        fs.SoftmaxModel(n, loss="sampledx")
    with pytest.raises(ValueError, match="optimizer: expected one of"):
        fs.SoftmaxModel(n, optimizer="rmsprop")
    with pytest.raises(ValueError, match="pooling: expected one of"):
        fs.SoftmaxModel(n, pooling="max")
    with pytest.raises(ValueError, match="n_items"):
        fs.SoftmaxModel(0)
    with pytest.raises(TypeError, match="batch_size"):
        fs.SoftmaxModel(n, batch_size=2.5)
    with pytest.raises(ValueError, match="learning_rate"):
        fs.SoftmaxModel(n, learning_rate=-1.0)
    with pytest.raises(TypeError, match="categorical 'c': expected integer ids"):
        fs.QueryFeatures(categorical={"c": np.array([0.5, 1.0])})
    negative = fs.QueryFeatures(categorical={"c": np.array([0, -1])})  # fine for a hashed feature
    with pytest.raises(IndexError, match="categorical 'c': expected ids >= 0"):
        fs.SoftmaxModel(n, epochs=0).fit(negative, sp.eye(2, n, format="csr"), show_progress=False)
    strings = fs.QueryFeatures(categorical={"c": np.array(["a", "b"])})
    with pytest.raises(TypeError, match=r"strings need hash_buckets\['c'\]"):
        fs.SoftmaxModel(n, epochs=0).fit(strings, sp.eye(2, n, format="csr"), show_progress=False)
    with pytest.raises(ValueError, match="disagree on the number of rows"):
        fs.QueryFeatures(dense=np.zeros((3, 2)), categorical={"c": np.array([0, 1])})
    with pytest.raises(ValueError, match="dense: expected finite"):
        fs.QueryFeatures(dense=np.array([[np.nan]]))
    with pytest.raises(TypeError, match="bags 'b': expected a scipy.sparse"):
        fs.QueryFeatures(bags={"b": np.zeros((2, 2))})
    with pytest.raises(ValueError, match="expected at least one of"):
        fs.QueryFeatures()

    model = fs.SoftmaxModel(n, hidden=(4,), dim=3, embedding_dim=2, epochs=1)
    with pytest.raises(RuntimeError, match="not fitted"):
        model.query_embeddings(feats)
    with pytest.raises(TypeError, match="feats: expected fs.QueryFeatures"):
        model.fit(np.zeros((3, 3)), targets)
    with pytest.raises(TypeError, match="targets: expected a scipy.sparse"):
        model.fit(feats, targets.toarray())
    with pytest.raises(ValueError, match="targets: expected 24 rows"):
        model.fit(feats, targets[:10])
    with pytest.raises(ValueError, match="targets: expected 40 columns"):
        model.fit(feats, targets[:, :30])
    bad = targets.copy()
    bad.data[0] = -1.0
    with pytest.raises(ValueError, match="targets: expected finite weights >= 0"):
        model.fit(feats, bad, show_progress=False)
    bad.data[0] = np.nan
    with pytest.raises(ValueError, match="targets: expected finite weights >= 0"):
        model.fit(feats, bad, show_progress=False)
    empty = sp.lil_matrix(targets)
    empty[5, :] = 0
    with pytest.raises(ValueError, match="targets: row 5 has no positive weight"):
        model.fit(feats, sp.csr_matrix(empty), show_progress=False)

    model.fit(feats, targets, show_progress=False)
    wrong_dense = fs.QueryFeatures(
        dense=np.zeros((24, 2)), categorical=feats.categorical, bags={"h": _bag_rows(feats, 24)}
    )
    with pytest.raises(ValueError, match="feats: expected 3 dense features, got 2"):
        model.query_embeddings(wrong_dense)
    missing = fs.QueryFeatures(dense=feats.dense, bags={"h": _bag_rows(feats, 24)})
    with pytest.raises(ValueError, match="expected categorical features"):
        model.query_embeddings(missing)
    big_id = fs.QueryFeatures(
        dense=feats.dense[:2],
        categorical={"c": np.array([0, 999])},
        bags={"h": _bag_rows(feats, 2)},
    )
    with pytest.raises(IndexError, match=r"categorical 'c': expected ids in \[0, 7\), got 999"):
        model.query_embeddings(big_id)
    wide_bag = fs.QueryFeatures(
        dense=feats.dense[:1],
        categorical={"c": np.array([0])},
        bags={"h": sp.csr_matrix(([1.0], ([0], [40])), shape=(1, 41))},
    )
    with pytest.raises(IndexError, match="bags 'h': 41 columns"):
        model.query_embeddings(wide_bag)
    with pytest.raises(TypeError, match="seed"):
        model.gradients(feats, targets, seed=1.5)


def test_save_load_round_trip(tmp_path):
    feats, targets = make_problem(seed=15)
    model = build(feats, targets, item_bias=True, embedding_dim={"c": 3, "h": 2}, pooling="sqrtn")
    model.epochs = 2
    model.fit(feats, targets, show_progress=False)
    path = tmp_path / "model.npz"
    model.save(path)
    loaded = fs.load(path)
    assert isinstance(loaded, fs.SoftmaxModel)
    for name, value in model.parameters.items():
        np.testing.assert_array_equal(loaded.parameters[name], value, err_msg=name)
    np.testing.assert_array_equal(loaded.query_embeddings(feats), model.query_embeddings(feats))
    assert loaded.loss(feats, targets) == model.loss(feats, targets)
    assert (loaded.pooling, loaded.item_bias, loaded.embedding_dim, loaded.row_weighting) == (
        "sqrtn",
        True,
        {"c": 3, "h": 2},
        "targets",
    )
    with np.load(path, allow_pickle=False) as npz:
        assert str(npz["model_type"]) == "SoftmaxModel"
    # The loaded model keeps training.
    loaded.partial_fit(feats, targets, show_progress=False)
    assert not np.array_equal(loaded.item_embeddings, model.item_embeddings)


@pytest.fixture(scope="module")
def categories():
    data = fs.datasets.make_categories(3000, 400, 8, seed=0)
    train, test = fs.datasets.train_test_split(data.interactions, seed=0)
    return data, train, test


def test_full_softmax_beats_popularity_and_does_not_fold(categories):
    data, train, test = categories
    pop = np.asarray(train.sum(axis=0), dtype=np.float32)

    class Popular:
        def recommend(self, queries, *, k, exclude=None):
            return fs.topk(np.ones((len(queries), 1), np.float32), pop.T, k, exclude=exclude)

    baseline = fs.evaluate(Popular(), train, test, k=10)["recall"]
    feats = fs.QueryFeatures.from_features(data.features)
    groups = {"query_groups": data.query_groups, "item_groups": data.item_groups}
    results = {}
    for loss in ("full", "positives"):
        model = fs.SoftmaxModel(
            400, hidden=(64,), dim=32, embedding_dim=16, loss=loss, epochs=5, batch_size=128
        )
        model.fit(data.features, train, show_progress=False)  # fs.datasets.Features accepted
        results[loss] = fs.evaluate(model, train, test, k=10, queries=feats, **groups)
    assert results["full"]["recall"] > 3 * baseline  # ~0.58 vs ~0.13
    # Positives-only training folds: other categories' items fill the top 10 (~0.9 vs ~0.0).
    assert results["positives"]["folding_rate"] > 0.5
    assert results["full"]["folding_rate"] < 0.05
    assert results["full"]["recall"] > 2 * results["positives"]["recall"]


def test_validation_reports_recall_at_10(categories):
    data, train, _ = categories
    rows = np.arange(2500)
    model = fs.SoftmaxModel(400, hidden=(32,), dim=16, embedding_dim=8, epochs=3, batch_size=256)
    held_out = fs.QueryFeatures.from_features(data.features.take(np.arange(2500, 3000)))
    model.fit(
        data.features.take(rows),
        train[rows],
        validation=(held_out, data.interactions[2500:]),
        show_progress=False,
    )
    recalls = [logs["recall@10"] for logs in model.training_log]
    assert len(recalls) == 3 and recalls[-1] > 0.3  # cold-start queries, features only
    ids, scores = model.recommend(held_out, k=10, exclude=data.interactions[2500:])
    assert ids.shape == (500, 10) and scores.dtype == np.float32
    assert not np.isin(ids[0], data.interactions[2500].indices).any()
    np.testing.assert_allclose(
        scores,
        np.take_along_axis(model.query_embeddings(held_out) @ model.item_embeddings.T, ids, 1),
        rtol=1e-5,
        atol=1e-5,
    )


def test_diverging_training_raises_instead_of_returning_nan_parameters():
    """A learning rate far too large: the loss overflows and fit says so (no silent NaN model)."""
    feats, targets = make_problem(n_rows=64, n_items=40, seed=21)
    model = fs.SoftmaxModel(
        40, hidden=(16,), dim=8, embedding_dim=4, optimizer="sgd", learning_rate=1e8, epochs=20
    )
    with pytest.raises(FloatingPointError, match="diverged"):
        model.fit(feats, targets, show_progress=False)
    # A sane learning rate on the same data trains to a finite loss.
    ok = fs.SoftmaxModel(40, hidden=(16,), dim=8, embedding_dim=4, optimizer="sgd", epochs=3)
    ok.fit(feats, targets, show_progress=False)
    assert all(np.isfinite(h["loss"]) for h in ok.training_log)
