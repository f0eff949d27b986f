import numpy as np
import pytest
import scipy.sparse as sp

import fastsoftmax as fs

from reference import topk_reference


def blobs(rng, n, d, n_centers, spread=0.3):
    centers = rng.normal(size=(n_centers, d)).astype(np.float32)
    labels = rng.integers(0, n_centers, n)
    x = centers[labels] + spread * rng.normal(size=(n, d)).astype(np.float32)
    return x.astype(np.float32), centers, labels


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    x, _, _ = blobs(rng, 6000, 24, 60)
    q, _, _ = blobs(rng, 300, 24, 60)
    return x, q


def recall(ids, ref):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(ids, ref, strict=True)])


def test_probing_every_list_is_exact_search(kernel, data):
    x, q = data
    index = fs.build_index(x, n_lists=50, seed=3)
    ids, scores = index.search(q, 10, n_probe=index.n_lists)
    ref_ids, ref_scores = fs.topk(q, x, 10)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores)


def test_ties_broken_by_lower_id_as_in_topk():
    rng = np.random.default_rng(1)
    x = rng.integers(-2, 3, (500, 4)).astype(np.float32)  # many equal scores
    q = rng.integers(-2, 3, (40, 4)).astype(np.float32)
    index = fs.build_index(x, n_lists=7)
    ids, scores = index.search(q, 25, n_probe=7)
    ref_ids, ref_scores = topk_reference(q, x, 25)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_array_equal(scores, ref_scores)


def test_default_probes_find_most_true_neighbours(data):
    x, q = data
    index = fs.build_index(x)
    ids, scores = index.search(q, 10)
    ref_ids, _ = fs.topk(q, x, 10)
    assert recall(ids, ref_ids) >= 0.9
    # every returned score is the exact inner product of its item
    np.testing.assert_allclose(scores, np.einsum("bd,bkd->bk", q, x[ids]), rtol=1e-5, atol=1e-5)
    # more probes never lose recall on this data, and one probe is worse
    r1 = recall(index.search(q, 10, n_probe=1)[0], ref_ids)
    r4 = recall(index.search(q, 10, n_probe=4 * index.n_probe)[0], ref_ids)
    assert r1 < recall(ids, ref_ids) <= r4


def test_l2_lists_partition_the_items_by_nearest_centroid():
    rng = np.random.default_rng(0)
    x, _, _ = blobs(rng, 500, 8, 8, spread=1.0)  # <= 64 per list: every iteration on all items
    index = fs.build_index(x, n_lists=8, iterations=50, max_train=500, clustering="l2", seed=5)
    core = index._core
    list_ids, offsets, centroids = core.list_ids(), core.list_offsets(), core.centroids()
    np.testing.assert_array_equal(np.sort(list_ids), np.arange(500))
    dist = ((x[:, None, :].astype(np.float64) - centroids[None]) ** 2).sum(-1)
    for lst in range(8):
        members = list_ids[offsets[lst] : offsets[lst + 1]]
        assert np.all(np.diff(members) > 0)  # ascending ids within a list
        assert (dist[members].argmin(1) == lst).all()  # every item is in its nearest list
        # Lloyd has converged on all the points: each centroid is the mean of its list
        np.testing.assert_allclose(centroids[lst], x[members].mean(0), atol=1e-5)
    np.testing.assert_array_equal(core.vectors(), x[list_ids])
    np.testing.assert_array_equal(core.gather(np.array([5, 0, 499])), x[[5, 0, 499]])


def test_spherical_lists_partition_the_items_by_largest_inner_product():
    rng = np.random.default_rng(1)
    x, _, _ = blobs(rng, 380, 8, 6, spread=1.0)
    index = fs.build_index(x, n_lists=6, iterations=50, max_train=380, seed=2)
    core = index._core
    list_ids, offsets, centroids = core.list_ids(), core.list_offsets(), core.centroids()
    scale = np.linalg.norm(centroids, axis=1)
    unit = centroids / scale[:, None]
    ip = x.astype(np.float64) @ unit.T.astype(np.float64)
    for lst in range(6):
        members = list_ids[offsets[lst] : offsets[lst + 1]]
        assert (ip[members].argmax(1) == lst).all()
        # converged: each direction is that of its list's mean ...
        mean = x[members].mean(0)
        np.testing.assert_allclose(unit[lst], mean / np.linalg.norm(mean), atol=1e-5)
        # ... and the probe vector's length is the list's largest item norm
        np.testing.assert_allclose(scale[lst], np.linalg.norm(x[members], axis=1).max(), rtol=1e-5)


@pytest.mark.parametrize("clustering", ["spherical", "l2"])
def test_zero_iterations_uses_sampled_items_as_centroids(clustering):
    rng = np.random.default_rng(2)
    x = rng.normal(size=(300, 6)).astype(np.float32)
    centroids = fs.build_index(x, n_lists=12, iterations=0, clustering=clustering).centroids
    if clustering == "spherical":  # directions of sampled items (then scaled)
        x = x / np.linalg.norm(x, axis=1, keepdims=True)
        unit = centroids / np.linalg.norm(centroids, axis=1, keepdims=True)
        assert all(np.isclose(x, c, atol=1e-6).all(1).any() for c in unit)
    else:
        assert all((x == c).all(1).any() for c in centroids)
    assert len(np.unique(centroids, axis=0)) == 12


def test_results_do_not_depend_on_threads_or_batching(kernel, data):
    x, q = data
    index = fs.build_index(x, n_lists=60, n_probe=3)
    one = index.search(q, 10, num_threads=1)
    two = index.search(q, 10, num_threads=2)
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
    part = index.search(q[117:121], 10)
    np.testing.assert_array_equal(part[0], one[0][117:121])
    # a lone query takes the one-query kernels: the same ids and scores, with exclusions too
    exclude = sp.random(len(q), len(x), density=0.05, format="csr", random_state=0)
    batch = index.search(q, 10, exclude=exclude)
    for b in range(0, len(q), 29):
        alone = index.search(q[b : b + 1], 10, exclude=exclude[b : b + 1])
        np.testing.assert_array_equal(alone[0], batch[0][b : b + 1])
        np.testing.assert_array_equal(alone[1], batch[1][b : b + 1])


def test_build_is_deterministic_for_a_seed(data):
    x, _ = data
    a = fs.build_index(x, n_lists=30, max_train=1000, seed=1, num_threads=1)  # a sample
    b = fs.build_index(x, n_lists=30, max_train=1000, seed=1, num_threads=2)
    c = fs.build_index(x, n_lists=30, max_train=1000, seed=2)
    np.testing.assert_array_equal(a.centroids, b.centroids)
    np.testing.assert_array_equal(a._core.list_ids(), b._core.list_ids())
    assert not np.array_equal(a.centroids, c.centroids)


@pytest.mark.parametrize("index_dtype", [np.int32, np.int64])
def test_exclude_still_returns_k_items(kernel, data, index_dtype):
    x, q = data
    index = fs.build_index(x, n_lists=40, n_probe=1)
    first, _ = index.search(q, 10)
    # exclude the whole best list of every query (its own probe) and a few random items
    offsets, list_ids = index._core.list_offsets(), index._core.list_ids()
    rows, cols = [], []
    for b, row in enumerate(first):
        pos = np.searchsorted(offsets, np.flatnonzero(list_ids == row[0])[0], side="right") - 1
        members = list_ids[offsets[pos] : offsets[pos + 1]]
        rows += [b] * len(members)
        cols += members.tolist()
    exclude = sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(q), len(x)))
    exclude.indices = exclude.indices.astype(index_dtype)
    ids, scores = index.search(q, 10, exclude=exclude)
    assert (ids >= 0).all() and np.isfinite(scores).all()
    for b in range(len(q)):
        assert not set(ids[b]) & set(exclude[[b]].indices)
    # probing everything with exclusions is exact search with exclusions
    all_ids, _ = index.search(q, 10, exclude=exclude, n_probe=40)
    np.testing.assert_array_equal(all_ids, fs.topk(q, x, 10, exclude=exclude)[0])


def test_small_lists_are_topped_up_and_pads_only_when_nothing_is_left():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 5)).astype(np.float32)
    q = rng.normal(size=(4, 5)).astype(np.float32)
    index = fs.build_index(x, n_lists=30, n_probe=1)  # one item per list
    ids, _ = index.search(q, 5)
    assert (ids >= 0).all() and all(len(set(r)) == 5 for r in ids)
    # only 3 eligible items: every list is scanned, the rest is padding, equal to exact search
    keep = np.zeros((4, 30), bool)
    keep[:, [2, 11, 29]] = True
    exclude = sp.csr_matrix(~keep)
    ids, scores = index.search(q, 5, exclude=exclude)
    ref_ids, _ = fs.topk(q, x, 5, exclude=exclude)
    np.testing.assert_array_equal(ids, ref_ids)
    assert (ids[:, 3:] == -1).all() and np.isneginf(scores[:, 3:]).all()


@pytest.mark.parametrize("method", ["ivf", "exact"])
def test_save_load_round_trip(tmp_path, data, method):
    x, q = data
    index = fs.build_index(x, method, **({"n_lists": 25, "n_probe": 2} if method == "ivf" else {}))
    index.save(tmp_path / "index.npz")
    loaded = fs.load(tmp_path / "index.npz")
    assert type(loaded) is type(index) and repr(loaded) == repr(index)
    for a, b in zip(index.search(q, 7), loaded.search(q, 7), strict=True):
        np.testing.assert_array_equal(a, b)


def test_loading_inconsistent_parts_is_an_error(tmp_path, data):
    x, _ = data
    index = fs.build_index(x[:500], n_lists=5)
    index.save(tmp_path / "index.npz")
    arrays = dict(np.load(tmp_path / "index.npz"))
    arrays["list_ids"] = arrays["list_ids"].copy()
    arrays["list_ids"][:2] = arrays["list_ids"][0]  # not a permutation
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(ValueError, match="list_ids"):
        fs.load(tmp_path / "bad.npz")
    good = dict(np.load(tmp_path / "index.npz"))
    for name, change, match in [
        ("list_offsets", lambda o: np.r_[0, 600, o[2:]], "list_offsets"),  # beyond n_items
        ("list_offsets", lambda o: o[:-1], "list_offsets|centroids"),
        ("centroids", lambda c: np.where(c == c[0, 0], np.inf, c), "centroids"),
        ("vectors", lambda v: v[:-1], "vectors"),
    ]:
        bad = {**good, name: change(good[name])}
        np.savez(tmp_path / "bad.npz", **bad)
        with pytest.raises(ValueError, match=match):
            fs.load(tmp_path / "bad.npz")


def test_check_items_detects_other_items(data):
    x, _ = data
    index = fs.build_index(x, n_lists=10)
    index.check_items(x)
    other = x.copy()
    other[0, 0] += 1  # row 0 is one of the compared rows
    with pytest.raises(ValueError, match="other item embeddings"):
        index.check_items(other)
    with pytest.raises(ValueError, match="built for 6000 items"):
        index.check_items(x[:100])


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"method": "hnsw"}, ValueError, "method"),
        ({"clustering": "cosine"}, ValueError, "clustering"),
        ({"n_lists": 0}, ValueError, "n_lists"),
        ({"n_lists": 10**6}, ValueError, "n_lists"),
        ({"n_lists": 2.5}, TypeError, "n_lists"),
        ({"n_lists": 10, "max_train": 5}, ValueError, "max_train"),
        ({"n_lists": 10, "n_probe": 11}, ValueError, "n_probe"),
        ({"iterations": -1}, ValueError, "iterations"),
        ({"method": "exact", "n_lists": 4}, ValueError, "n_lists"),
        ({"num_threads": -1}, ValueError, "num_threads"),
    ],
)
def test_bad_build_arguments(data, kwargs, error, match):
    x, _ = data
    with pytest.raises(error, match=match):
        fs.build_index(x[:1000], **kwargs)


def test_bad_items():
    with pytest.raises(ValueError, match="item_embeddings"):
        fs.build_index(np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match="item_embeddings"):
        fs.build_index(np.zeros((0, 4)))
    with pytest.raises(TypeError, match="item_embeddings"):
        fs.build_index([["a", "b"]])


@pytest.mark.parametrize("method", ["ivf", "exact"])
def test_bad_search_arguments(data, method):
    x, q = data
    index = fs.build_index(x[:1000], method)
    with pytest.raises(ValueError, match=r"queries: expected shape \(B, 24\)"):
        index.search(q[:, :5], 3)
    with pytest.raises(ValueError, match="k: expected at most n_items = 1000"):
        index.search(q, 1001)
    with pytest.raises(ValueError, match="k"):
        index.search(q, 0)
    with pytest.raises(ValueError, match="queries"):
        index.search(np.full((1, 24), np.inf), 3)
    with pytest.raises(ValueError, match="exclude"):
        index.search(q, 3, exclude=sp.csr_matrix((len(q), 999)))
    if method == "ivf":
        with pytest.raises(ValueError, match="n_probe"):
            index.search(q, 3, n_probe=index.n_lists + 1)
        with pytest.raises(ValueError, match="n_probe"):
            index.n_probe = 0


def test_long_vectors_stay_findable_when_norms_are_skewed():
    # Embeddings as a factorisation learns them: a few long vectors (popular items) win most
    # inner-product searches. Probing by direction alone misses them; the norm-scaled probes
    # find them (known answer: exact search).
    rng = np.random.default_rng(4)
    directions = rng.normal(size=(8000, 16)).astype(np.float32)
    norms = np.exp(rng.normal(0.0, 1.5, size=(8000, 1))).astype(np.float32)
    x = directions / np.linalg.norm(directions, axis=1, keepdims=True) * norms
    q = rng.normal(size=(300, 16)).astype(np.float32)
    exact, _ = fs.topk(q, x, 10)
    index = fs.build_index(x, n_lists=100, n_probe=20)
    assert recall(index.search(q, 10)[0], exact) >= 0.9
    # the unscaled directions of the same lists (what a plain spherical index probes) do worse
    unit = index.centroids / np.linalg.norm(index.centroids, axis=1, keepdims=True)
    probes = np.argsort(-(q @ unit.T), axis=1)[:, :20]
    lists = np.empty(len(x), np.int64)
    offsets, list_ids = index._core.list_offsets(), index._core.list_ids()
    for lst in range(index.n_lists):
        lists[list_ids[offsets[lst] : offsets[lst + 1]]] = lst
    found = np.mean([np.isin(lists[exact[b]], probes[b]).mean() for b in range(len(q))])
    assert found < recall(index.search(q, 10)[0], exact) - 0.1
