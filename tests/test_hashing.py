"""Hashed features (#23, item 1): the documented mixer against a pure-Python reference, its
statistics, and SoftmaxModel(hash_buckets=...) with ids never seen in training."""

import numpy as np
import pytest
import scipy.sparse as sp
from test_sampler import chi_square_pvalue

import fastsoftmax as fs
from fastsoftmax.hashing import hash_ids, id_bits

MASK = (1 << 64) - 1


def mix64(z):
    z ^= z >> 30
    z = (z * 0xBF58476D1CE4E5B9) & MASK
    z ^= z >> 27
    z = (z * 0x94D049BB133111EB) & MASK
    return z ^ (z >> 31)


def reference(value, buckets, seed, h):
    """The module docstring's definition, in plain Python integers."""
    if isinstance(value, str):
        x = 0xCBF29CE484222325
        for byte in value.encode("utf-8"):
            x = ((x ^ byte) * 0x100000001B3) & MASK
    else:
        x = value & MASK
    return mix64(x ^ mix64((seed * 0x9E3779B97F4A7C15 + h + 1) & MASK)) % buckets


def test_hash_ids_follow_the_documented_mixer():
    ints = [0, 1, -1, -(2**63), 2**63 - 1, 123456789]
    strings = ["", "a", "user-42", "ünïcödé", "a much longer identifier string"]
    for seed in (0, 7):
        got = hash_ids(np.array(ints, dtype=np.int64), 1000, seed=seed, num_hashes=3)
        want = [[reference(v, 1000, seed, h) for h in range(3)] for v in ints]
        np.testing.assert_array_equal(got, want)
        got = hash_ids(strings, 997, seed=seed, num_hashes=2)
        want = [[reference(v, 997, seed, h) for h in range(2)] for v in strings]
        np.testing.assert_array_equal(got, want)
    big = np.array([2**64 - 1, 2**63], dtype=np.uint64)  # the same bits as -1 and -2**63
    np.testing.assert_array_equal(id_bits(big), id_bits(np.array([-1, -(2**63)])))
    np.testing.assert_array_equal(hash_ids([b"a"], 10), hash_ids(["a"], 10))


def test_hash_ids_spread_uniformly_and_seeds_differ():
    rows = hash_ids(np.arange(200_000), 50, seed=3)[:, 0]
    assert chi_square_pvalue(rows, np.full(50, 1 / 50)) > 1e-4
    a = hash_ids(np.arange(1000), 1 << 20, seed=1, num_hashes=2)
    b = hash_ids(np.arange(1000), 1 << 20, seed=2, num_hashes=2)
    assert (a[:, 0] != b[:, 0]).mean() > 0.99 and (a[:, 0] != a[:, 1]).mean() > 0.99


def test_hash_ids_bad_input():
    with pytest.raises(TypeError, match="integer or string ids"):
        hash_ids(np.array([0.5]), 10)
    with pytest.raises(ValueError, match="1-D"):
        hash_ids(np.zeros((2, 2), int), 10)
    with pytest.raises(ValueError, match="buckets"):
        hash_ids([1], 0)


def problem(n_users=60, n_items=40, seed=0):
    rng = np.random.default_rng(seed)
    t = sp.lil_matrix((n_users, n_items), dtype=np.float32)
    for u in range(n_users):
        t[u, rng.choice(n_items, 3, replace=False)] = 1
    users = np.array([f"user-{u * 7919}" for u in range(n_users)])
    return sp.csr_matrix(t), users


@pytest.mark.parametrize("num_hashes", [1, 2])
def test_hashed_user_ids_serve_unseen_users(num_hashes):
    targets, users = problem()
    feats = fs.QueryFeatures(categorical={"user": users}, bags={"history": targets})
    model = fs.SoftmaxModel(40, dim=8, embedding_dim=4, epochs=3, seed=2,
                            hash_buckets={"user": 64, "history": 16},
                            num_hashes={"user": num_hashes})  # fmt: skip
    model.fit(feats, targets, show_progress=False)
    name = "categorical.user" if num_hashes == 1 else "bags.user"
    assert model.parameters[name].shape == (64, 4)
    assert model.parameters["bags.history"].shape == (16, 4)
    # New users: string ids and negative / huge integers never seen in training, and a history
    # bag wider than the training one: no IndexError, and the same rows as hash_ids says.
    new = fs.QueryFeatures(categorical={"user": np.array(["someone-new", "user-0"])},
                           bags={"history": sp.csr_matrix(([1.0], ([0], [500])), shape=(2, 501))})  # fmt: skip
    psi = model.query_embeddings(new)
    rows = hash_ids(["someone-new", "user-0"], 64, seed=2, num_hashes=num_hashes)
    table = model.parameters[name].astype(np.float64)
    user_part = table[rows].mean(axis=1)  # mean pooling of the k rows (k = 1: the row itself)
    hist_row = hash_ids([500], 16, seed=2)[0, 0]
    x = np.hstack([user_part, [model.parameters["bags.history"][hist_row], np.zeros(4)]])
    want = x @ model.parameters["mlp.0.weight"] + model.parameters["mlp.0.bias"]
    np.testing.assert_allclose(psi, want, rtol=1e-5, atol=1e-6)
    ints = fs.QueryFeatures(categorical={"user": np.array([-5, 2**62])},
                            bags={"history": sp.csr_matrix((2, 40))})  # fmt: skip
    assert model.recommend(ints, k=3)[0].shape == (2, 3)


def test_hashed_model_files_reproduce_predictions(tmp_path):
    targets, users = problem()
    feats = fs.QueryFeatures(categorical={"user": users}, bags={"history": targets})
    model = fs.SoftmaxModel(40, dim=8, embedding_dim=4, epochs=2, seed=9,
                            hash_buckets={"user": 32}, num_hashes={"user": 3})  # fmt: skip
    model.fit(feats, targets, show_progress=False)
    model.save(tmp_path / "m.npz")
    loaded = fs.load(tmp_path / "m.npz")
    assert loaded.get_params()["hash_buckets"] == {"user": 32}
    np.testing.assert_array_equal(loaded.query_embeddings(feats), model.query_embeddings(feats))


def test_hashed_item_features():
    targets, _ = problem()
    feats = fs.QueryFeatures(bags={"history": targets})
    items = fs.QueryFeatures(categorical={"brand": np.array([f"b{j % 7}" for j in range(40)])})
    model = fs.SoftmaxModel(40, dim=8, embedding_dim=4, epochs=1, hash_buckets={"brand": 8})
    model.fit(feats, targets, item_features=items, show_progress=False)
    assert model.parameters["item_tower.categorical.brand"].shape == (8, 4)
    new = fs.QueryFeatures(categorical={"brand": np.array(["a-brand-never-seen"])})
    assert model.item_embeddings_from(new).shape == (1, 8)


def test_hashing_bad_input():
    targets, users = problem()
    feats = fs.QueryFeatures(categorical={"user": users}, bags={"history": targets})
    with pytest.raises(ValueError, match=r"hash_buckets\['user'\]"):
        fs.SoftmaxModel(40, hash_buckets={"user": 0})
    with pytest.raises(TypeError, match="hash_buckets"):
        fs.SoftmaxModel(40, hash_buckets=[("user", 8)])
    with pytest.raises(ValueError, match="num_hashes"):
        fs.SoftmaxModel(40, hash_buckets={"user": 8}, num_hashes=0)
    with pytest.raises(ValueError, match="num_hashes: 'other'"):
        fs.SoftmaxModel(40, hash_buckets={"user": 8}, num_hashes={"other": 2})
    with pytest.raises(ValueError, match="vocab_sizes: 'user' is hashed"):
        fs.SoftmaxModel(40, hash_buckets={"user": 8}, vocab_sizes={"user": 8})
    model = fs.SoftmaxModel(40, epochs=0, hash_buckets={"usr": 8})
    with pytest.raises(ValueError, match="hash_buckets: 'usr' is not a categorical or bag"):
        model.fit(feats, targets, show_progress=False)
    with pytest.raises(TypeError, match="strings need hash_buckets"):
        fs.SoftmaxModel(40, epochs=0).fit(feats, targets, show_progress=False)


def test_hashing_in_chunks_equals_one_pass(monkeypatch):
    import fastsoftmax.hashing as hashing

    ids = np.arange(-500, 1500, 7, dtype=np.int64) * 1_000_003
    strings = np.array([f"user-{i}" for i in range(300)])
    whole = hashing.hash_ids(ids, 977, seed=3, num_hashes=2)
    whole_strings = hashing.hash_ids(strings, 50)
    monkeypatch.setattr(hashing, "_CHUNK", 64)  # several chunks, the last one partial
    np.testing.assert_array_equal(hashing.hash_ids(ids, 977, seed=3, num_hashes=2), whole)
    np.testing.assert_array_equal(hashing.hash_ids(strings, 50), whole_strings)
    with pytest.raises(TypeError, match="ids"):
        hashing.hash_ids(np.zeros(0, np.float64), 5)


def test_hashed_history_keeps_the_callers_arrays_and_rejects_dropped_targets():
    x = sp.csr_matrix(np.array([[1, 0, 2, 0], [0, 3, 0, 1]], np.float32))
    before = (x.data.copy(), x.indices.copy(), x.indptr.copy())
    feats = fs.QueryFeatures(bags={"history": x})
    model = fs.SoftmaxModel(4, history="history", hash_buckets={"history": 2}, epochs=1, dim=4,
                            embedding_dim=4)  # fmt: skip
    model.fit(feats, x, show_progress=False)
    for a, b in zip(before, (x.data, x.indices, x.indptr), strict=True):
        np.testing.assert_array_equal(a, b)
    bad = fs.SoftmaxModel(4, history="history", history_target="dropped",
                          hash_buckets={"history": 2})  # fmt: skip
    with pytest.raises(ValueError, match="history_target"):
        bad.fit(feats, x, show_progress=False)
