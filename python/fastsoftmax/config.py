"""Which build of the C++ core is in use, and what this machine offers."""

from __future__ import annotations

import os
import platform

from . import _core, _cpu

__all__ = ["show_config"]


def show_config(*, print_out: bool = True) -> dict[str, object]:
    """The configuration of this fastsoftmax installation, for bug reports.

    Parameters
    ----------
    print_out : bool, default True
        Also print it, one ``key: value`` per line.

    Returns
    -------
    dict
        ``version``; ``kernel_level``: the build of the C++ core in use (``generic``: x86-64-v2,
        ``avx2``: x86-64-v3, ``avx512``: x86-64-v4, ``native``: a ``-DFASTSOFTMAX_NATIVE=ON`` source build);
        ``cpu_levels``: the levels this CPU runs; ``forced``: the value of ``FASTSOFTMAX_CPU``
        (None when unset); ``machine``, ``cores`` (what ``num_threads=0`` uses), ``python``.
    """
    config: dict[str, object] = {
        "version": _core.__version__,
        "kernel_level": _core.kernel_level,
        "cpu_levels": [level for level in ("generic", "avx2", "avx512") if _cpu.supports(level)],
        "forced": os.environ.get("FASTSOFTMAX_CPU") or None,
        "machine": platform.machine(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
    }
    if print_out:
        for key, value in config.items():
            print(f"{key}: {value}")
    return config
