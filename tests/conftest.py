import sys
from pathlib import Path

import pytest

# Make tests/reference.py importable as `reference` however pytest is invoked.
sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(params=["avx2", "scalar"])
def kernel(request):
    """Runs a test with the AVX2 top-k / index scan kernels and again with the scalar ones."""
    from fastsoftmax import _core

    if request.param == "avx2" and not _core._testing.topk_uses_avx2():
        pytest.skip("CPU without AVX2/FMA")
    _core._testing.topk_force_scalar(request.param == "scalar")
    yield request.param
    _core._testing.topk_force_scalar(False)
