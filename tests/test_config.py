"""Which build of the C++ core is loaded (per-CPU builds chosen at import) and show_config()."""

import os
import subprocess
import sys

import numpy as np
import pytest

import fastsoftmax as fs
from fastsoftmax import _cpu

LEVEL_CODE = (
    "import numpy as np, fastsoftmax as fs\n"
    "rng = np.random.default_rng(0)\n"
    "q = rng.normal(size=(7, 24)).astype(np.float32)\n"
    "v = rng.normal(size=(300, 24)).astype(np.float32)\n"
    "ids, _ = fs.topk(q, v, 5)\n"
    "print(fs._core.kernel_level, ' '.join(map(str, ids.ravel())))\n"
)


def run_with_level(level):
    env = {**os.environ, "FASTSOFTMAX_CPU": level}
    return subprocess.run([sys.executable, "-c", LEVEL_CODE], capture_output=True, text=True,
                          env=env, check=False)  # fmt: skip


def built(level):
    import importlib.util

    return importlib.util.find_spec(f"fastsoftmax._core_{level}") is not None


def test_show_config_names_the_build_in_use(capsys):
    config = fs.show_config()
    assert config["kernel_level"] == fs._core.kernel_level
    assert config["kernel_level"] in ("generic", "avx2", "avx512", "native")
    assert config["version"] == fs.__version__ and config["cores"] >= 1
    assert "generic" in config["cpu_levels"]  # every x86-64-v2 CPU (and any other)
    out = capsys.readouterr().out
    assert f"kernel_level: {config['kernel_level']}" in out
    assert fs.show_config(print_out=False) == config and capsys.readouterr().out == ""


@pytest.mark.skipif(built("native"), reason="a -DFASTSOFTMAX_NATIVE=ON build has one level")
def test_the_best_level_the_cpu_runs_is_loaded():
    best = next(lvl for lvl in ("avx512", "avx2", "generic") if built(lvl) and _cpu.supports(lvl))
    assert fs._core.kernel_level == best


@pytest.mark.skipif(not built("generic"), reason="no generic build (native build)")
def test_forced_generic_level_gives_the_same_results():
    forced = run_with_level("generic")
    assert forced.returncode == 0, forced.stderr
    level, ids = forced.stdout.split(" ", 1)
    assert level == "generic"
    rng = np.random.default_rng(0)
    q = rng.normal(size=(7, 24)).astype(np.float32)
    v = rng.normal(size=(300, 24)).astype(np.float32)
    assert ids.split() == [str(i) for i in fs.topk(q, v, 5)[0].ravel()]


def test_forcing_an_unknown_or_unavailable_level_is_a_clear_import_error():
    bad = run_with_level("sse9")
    assert bad.returncode != 0
    assert "FASTSOFTMAX_CPU: expected one of avx512, avx2, generic, got 'sse9'" in bad.stderr
    missing = next((lvl for lvl in ("avx512", "avx2", "generic") if not built(lvl)), None)
    if missing is None:
        pytest.skip("every level is built")
    res = run_with_level(missing)
    assert res.returncode != 0 and "ImportError" in res.stderr
    assert f"FASTSOFTMAX_CPU={missing}: this" in res.stderr  # CPU lacks it, or not built


def test_cpu_supports_rejects_unknown_levels():
    assert _cpu.supports("generic")
    assert not _cpu.supports("sse9")
    if _cpu.supports("avx512"):
        assert _cpu.supports("avx2")  # levels are nested


def test_version_flag_names_the_kernels(capsys):
    from fastsoftmax.cli import main

    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"{fs.__version__} (kernels: {fs._core.kernel_level})"


@pytest.mark.skipif(not built("generic") or fs._core.kernel_level == "generic",
                    reason="no generic build, or it is the level in use already")  # fmt: skip
def test_a_subset_of_the_suite_passes_on_the_generic_level():
    """The generic (x86-64-v2) build is always exercised, not only on old CPUs."""
    tests = os.path.dirname(os.path.abspath(__file__))
    subset = [os.path.join(tests, f) for f in ("test_topk.py", "test_softmax.py",
                                               "test_sampled_softmax.py", "test_wals.py")]  # fmt: skip
    env = {**os.environ, "FASTSOFTMAX_CPU": "generic"}
    res = subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider",
                          *subset], capture_output=True, text=True, env=env, check=False,
                         cwd=os.path.dirname(tests))  # fmt: skip
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-2000:]
    assert " passed" in res.stdout.splitlines()[-1]
