"""Loads the build of the C++ core that suits this CPU, under the name ``fastsoftmax._core``.

The extension is built once per instruction-set level (``_core_generic``: x86-64-v2, any x86-64
CPU of the last 15 years; ``_core_avx2``: x86-64-v3, AVX2 + FMA; ``_core_avx512``: x86-64-v4;
or a single ``_core_native``
with ``-DFASTSOFTMAX_NATIVE=ON``). The best level the CPU runs is chosen at import; the
environment variable ``FASTSOFTMAX_CPU=generic|avx2|avx512`` forces one (tests, bug reports), and
asking for a level this CPU lacks, or one that was not built, is an ImportError saying so. The
chosen module's ``kernel_level`` says which (``fastsoftmax.show_config()``). Importing two levels
into one process is not possible (their types would clash): a level is chosen once.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys

LEVELS = ("avx512", "avx2", "generic")  # best first


def _built(level: str) -> bool:
    return importlib.util.find_spec(f"{__package__}._core_{level}") is not None


def choose_level() -> str:
    """The level to load: FASTSOFTMAX_CPU if set (checked), else the best one built and run."""
    from . import _cpu

    if _built("native"):
        return "native"
    forced = os.environ.get("FASTSOFTMAX_CPU", "").strip().lower()
    if forced:
        if forced not in LEVELS:
            raise ImportError(
                f"FASTSOFTMAX_CPU: expected one of {', '.join(LEVELS)}, got {forced!r}"
            )
        if not _cpu.supports(forced):
            raise ImportError(f"FASTSOFTMAX_CPU={forced}: this CPU does not support {forced}")
        if not _built(forced):
            built = [lvl for lvl in LEVELS if _built(lvl)]
            raise ImportError(
                f"FASTSOFTMAX_CPU={forced}: this installation has no {forced} build "
                f"(built: {', '.join(built)})"
            )
        return forced
    for level in LEVELS:
        if _built(level) and _cpu.supports(level):
            return level
    raise ImportError("fastsoftmax: no build of the C++ core runs on this CPU (needs x86-64-v2)")


sys.modules[__name__] = importlib.import_module(f"{__package__}._core_{choose_level()}")
