"""Model files: atomic save, a version field, no pickle, and clear errors for bad files."""

from __future__ import annotations

import json
import os
import stat
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp

import fastsoftmax as fs
import fastsoftmax.io as fsio


def _a(seed=0):
    rng = np.random.default_rng(seed)
    a = sp.random(30, 20, density=0.2, format="csr", random_state=rng, dtype=np.float32)
    a.data[:] = 1
    return a


@pytest.fixture(scope="module")
def wals():
    return fs.WALS(4, iterations=2, num_threads=1).fit(_a(), show_progress=False)


@pytest.fixture(scope="module")
def softmax():
    rng = np.random.default_rng(0)
    feats = fs.QueryFeatures(dense=rng.standard_normal((30, 3)))
    targets = _a() + sp.eye(30, 20, format="csr", dtype=np.float32)
    return fs.SoftmaxModel(20, hidden=(8,), dim=4, epochs=1, num_threads=1).fit(
        feats, targets, show_progress=False
    )


@pytest.fixture(params=["wals", "softmax"])
def model(request):
    return request.getfixturevalue(request.param)


def _rewrite(src, dst, **changes):
    """Copy the npz ``src`` to ``dst`` with some arrays replaced (None: removed)."""
    with np.load(src, allow_pickle=False) as z:
        arrays = {k: z[k] for k in z.files}
    for k, v in changes.items():
        if v is None:
            arrays.pop(k)
        else:
            arrays[k] = v
    with open(dst, "wb") as f:
        np.savez(f, **arrays)


def test_round_trip_has_version_and_no_pickle(model, tmp_path):
    path = tmp_path / "m.npz"
    model.save(path)
    with np.load(path, allow_pickle=False) as z:  # readable without pickle
        assert int(z["format_version"]) == fsio.FORMAT_VERSION
        assert str(z["model_type"]) == type(model).__name__
        assert all(z[k].dtype != object for k in z.files)
    loaded = fs.load(path)
    assert type(loaded) is type(model)
    np.testing.assert_array_equal(loaded.item_embeddings, model.item_embeddings)


def test_crash_mid_write_keeps_the_old_file(model, tmp_path, monkeypatch):
    path = tmp_path / "m.npz"
    model.save(path)
    before = path.read_bytes()
    real_savez = np.savez

    def savez_then_crash(file, *args, **kwds):
        real_savez(file, *args, **kwds)
        file.write(b"partial")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(np, "savez", savez_then_crash)
    with pytest.raises(OSError, match="disk full"):
        model.save(path)
    assert path.read_bytes() == before  # the old file is intact
    assert os.listdir(tmp_path) == ["m.npz"]  # and no temporary file is left behind
    monkeypatch.undo()
    fs.load(path)


def test_crash_on_first_write_leaves_nothing(model, tmp_path, monkeypatch):
    def crash(file, *args, **kwds):
        file.write(b"PK\x03\x04 half a zip")
        raise KeyboardInterrupt

    monkeypatch.setattr(np, "savez", crash)
    with pytest.raises(KeyboardInterrupt):
        model.save(tmp_path / "new.npz")
    assert os.listdir(tmp_path) == []


def test_truncated_file(model, tmp_path):
    path = tmp_path / "m.npz"
    model.save(path)
    data = path.read_bytes()
    for size in (0, 10, len(data) // 2, len(data) - 30):
        bad = tmp_path / f"cut{size}.npz"
        bad.write_bytes(data[:size])
        with pytest.raises(ValueError, match=f"cut{size}.npz"):
            fs.load(bad)


def test_corrupted_file(model, tmp_path):
    path = tmp_path / "m.npz"
    model.save(path)
    data = bytearray(path.read_bytes())
    # flip bytes inside the stored array payload (not the zip directory): CRC mismatch
    with zipfile.ZipFile(path) as z:
        info = max(z.infolist(), key=lambda i: i.file_size)
    offset = info.header_offset + 30 + len(info.filename) + 200
    for i in range(offset, offset + 16):
        data[i] ^= 0xFF
    bad = tmp_path / "flipped.npz"
    bad.write_bytes(bytes(data))
    with pytest.raises(ValueError, match="flipped.npz"):
        fs.load(bad)
    garbage = tmp_path / "garbage.npz"
    garbage.write_bytes(os.urandom(1000))
    with pytest.raises(ValueError, match="garbage.npz"):
        fs.load(garbage)


def test_wrong_version(model, tmp_path):
    path = tmp_path / "m.npz"
    model.save(path)
    for version, match in ((fsio.FORMAT_VERSION + 1, "newer"), (0, "invalid format_version")):
        bad = tmp_path / f"v{version}.npz"
        _rewrite(path, bad, format_version=np.array(version))
        with pytest.raises(ValueError, match=match):
            fs.load(bad)
    bad = tmp_path / "vstr.npz"
    _rewrite(path, bad, format_version=np.array("one"))
    with pytest.raises(ValueError, match="vstr.npz.*format_version"):
        fs.load(bad)


def test_wrong_type_and_missing_fields(model, tmp_path):
    path = tmp_path / "m.npz"
    model.save(path)
    cases = {
        "unknown_type": ({"model_type": np.array("LinearRegression")}, "unknown model_type"),
        "int_type": ({"model_type": np.array([1, 2])}, "model_type"),
        "no_version": ({"format_version": None}, "not a fastsoftmax model"),
    }
    if isinstance(model, fs.WALS):
        cases["no_items"] = ({"item_embeddings": None}, "item_embeddings")
        cases["bad_dim"] = ({"item_embeddings": np.zeros((3, 2), np.float32)}, "inconsistent")
        cases["bad_solver"] = ({"solver": np.array("qr")}, "solver")
    else:
        cases["no_meta"] = ({"meta_json": None}, "meta_json")
        cases["bad_json"] = ({"meta_json": np.array("{not json")}, "SoftmaxModel")
        cases["no_param"] = ({"param/item_embeddings": None}, "item_embeddings")
        cases["bad_shape"] = ({"param/item_embeddings": np.zeros((2, 2), np.float32)}, "shape")
        with np.load(path, allow_pickle=False) as z:
            meta = json.loads(str(z["meta_json"]))
        meta["config"]["loss"] = "hinge"
        cases["bad_config"] = ({"meta_json": np.array(json.dumps(meta))}, "loss")
    for label, (changes, match) in cases.items():
        bad = tmp_path / f"{label}.npz"
        _rewrite(path, bad, **changes)
        with pytest.raises(ValueError, match=match) as info:
            fs.load(bad)
        assert f"{label}.npz" in str(info.value), label


def test_pickled_payload_is_refused(tmp_path):
    bad = tmp_path / "pickle.npz"
    with open(bad, "wb") as f:
        np.savez(
            f,
            model_type=np.array("WALS"),
            format_version=np.array(1),
            payload=np.array([{"evil": 1}], dtype=object),
        )
    with pytest.raises(ValueError, match="pickle.npz"):
        fs.load(bad)


def test_not_a_model_file(tmp_path):
    npy = tmp_path / "x.npy"
    np.save(npy, np.zeros(3))
    with pytest.raises(ValueError, match="x.npy"):
        fs.load(npy)
    plain = tmp_path / "plain.npz"
    np.savez(plain, a=np.zeros(3))
    with pytest.raises(ValueError, match="not a fastsoftmax model"):
        fs.load(plain)
    with pytest.raises(ValueError, match="folder"):
        fs.load(tmp_path)
    with pytest.raises(FileNotFoundError):
        fs.load(tmp_path / "missing.npz")


def test_a_text_file_is_plainly_not_a_model(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("user,item\n1,2\n")
    with pytest.raises(ValueError) as e:
        fs.load(text)
    assert (
        str(e.value) == f"path: {str(text)!r} is not a fastsoftmax model file (not a .npz archive)"
    )
    assert "pickle" not in str(e.value)


@pytest.mark.parametrize("mask", [0o022, 0o077, 0o002])
def test_saved_files_follow_the_umask(model, tmp_path, mask):
    old = os.umask(mask)
    try:
        model.save(tmp_path / "m.npz")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "m.npz").stat().st_mode) == 0o666 & ~mask


def test_cli_reports_a_truncated_model_file_in_one_line(wals, tmp_path, capsys):
    from fastsoftmax.cli import main

    path = tmp_path / "m.npz"
    wals.save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    assert main(["recommend", "--model", str(path), "--user", "1"]) == 2
    err = capsys.readouterr().err
    assert "m.npz" in err and len(err.strip().splitlines()) == 1
