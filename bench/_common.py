"""Helpers shared by the benchmark scripts: timing, machine description, table and JSON output."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

RESULTS_DIR = Path(__file__).parent / "results"


def machine_info() -> dict:
    """CPU model, core count, Python and library versions, for the JSON record."""
    cpu = platform.processor() or ""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        for line in out.splitlines():
            if line.startswith("Model name:"):
                cpu = line.split(":", 1)[1].strip()
    except OSError:
        pass
    import numpy

    import fastsoftmax

    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "numpy": numpy.__version__,
        "fastsoftmax": fastsoftmax.__version__,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }


def best_time(fn: Callable[[], object], *, repeat: int = 3, min_time: float = 0.0) -> float:
    """Best wall time in seconds over ``repeat`` calls (after one untimed warm-up call when
    ``min_time`` > 0 or ``repeat`` > 1)."""
    if repeat > 1:
        fn()
    best = float("inf")
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def print_table(rows: list[dict], columns: list[str]) -> None:
    """Print rows as an aligned plain-text table."""
    cells = [[_fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(row[i]) for row in cells)) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths, strict=True)))
    print("  ".join("-" * w for w in widths))
    for row in cells:
        print("  ".join(v.rjust(w) for v, w in zip(row, widths, strict=True)))


def _fmt(v: object) -> str:
    if isinstance(v, float):
        if v == 0 or 1e-3 <= abs(v) < 1e6:
            return f"{v:.3g}" if abs(v) < 100 else f"{v:.0f}"
        return f"{v:.3e}"
    return str(v)


def write_json(name: str, payload: dict, path: str | None = None) -> Path:
    """Write ``payload`` plus the machine description to ``path`` (default bench/results/NAME.json)."""
    out = Path(path) if path else RESULTS_DIR / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "machine": machine_info(), **payload}
    out.write_text(json.dumps(payload, indent=2))
    print(f"\nwrote {out}")
    return out
