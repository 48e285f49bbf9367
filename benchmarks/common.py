"""Small helpers shared by the benchmarks: timing, peak memory, a result row, JSON output.

Every benchmark compares a stock MONAI pipeline with the medunet one and prints one row per case::

    name                          stock_s  medunet_s    ratio  agreement
"""

from __future__ import annotations

import argparse
import contextlib
import json
import platform
import resource
import statistics
import sys
import tempfile
import time
import tracemalloc
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

from medunet.io.atomic import atomic_write_text

T = TypeVar("T")

DEFAULT_RESULTS_DIR = Path(__file__).resolve().parents[1] / "runs" / "benchmarks"  # git-ignored
#: Generated inputs (synthetic CTs, the training benchmark's dataset) of full runs are kept here.
DEFAULT_CACHE_DIR = DEFAULT_RESULTS_DIR / "cache"


def add_cache_dir_argument(ap: argparse.ArgumentParser) -> None:
    """``--cache-dir``: where generated inputs go (see :func:`bench_cache_dir`)."""
    ap.add_argument(
        "--cache-dir",
        default=None,
        help=f"folder for generated inputs (default: {DEFAULT_CACHE_DIR}; with --smoke a temporary "
        "folder removed at exit)",
    )


@contextlib.contextmanager
def bench_cache_dir(requested: str | Path | None, smoke: bool) -> Iterator[Path]:
    """The cache folder to use: ``requested``; else, for a smoke run, a temporary folder removed on exit
    (a smoke run leaves nothing behind); else :data:`DEFAULT_CACHE_DIR`, kept between full runs."""
    if requested is not None:
        path = Path(requested)
        path.mkdir(parents=True, exist_ok=True)
        yield path
    elif smoke:
        with tempfile.TemporaryDirectory(prefix="medunet_bench_cache_") as tmp:
            yield Path(tmp)
    else:
        yield DEFAULT_CACHE_DIR


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds of ``repeats`` runs; report ``min_s`` (least disturbed by other load)."""

    min_s: float
    median_s: float
    repeats: int


def dice_per_label(a: Any, b: Any, labels: list[int]) -> dict[int, float | None]:
    """Dice of each foreground label between two label maps (``None`` when both lack it: agreement on
    nothing is no evidence, never 1.0)."""
    out: dict[int, float | None] = {}
    for k in labels:
        x, y = a == k, b == k
        denom = int(x.sum()) + int(y.sum())
        out[k] = None if denom == 0 else 2.0 * int((x & y).sum()) / denom
    return out


def timeit(fn: Callable[[], T], *, repeats: int = 3, warmup: int = 0) -> tuple[Timing, T]:
    """Run ``fn`` ``warmup + repeats`` times; return the timing of the measured runs and the last result."""
    result: T
    for _ in range(warmup):
        result = fn()
    times = []
    for _ in range(max(1, repeats)):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return Timing(min(times), statistics.median(times), len(times)), result


def peak_rss_mb() -> float:
    """Peak resident set size of this process so far, in MiB (Linux reports KiB, macOS bytes)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def traced_peak_mb(fn: Callable[[], T]) -> tuple[float, T]:
    """Peak Python-allocated memory (MiB) while ``fn`` runs (numpy buffers included, torch's not)."""
    tracemalloc.start()
    try:
        result = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak / (1024 * 1024), result


@dataclass
class Row:
    """One comparison: stock vs medunet seconds, their ratio, and how far the outputs agree."""

    name: str
    stock_s: float
    medunet_s: float
    agreement: float
    agreement_label: str = "max_abs_diff"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        return self.stock_s / self.medunet_s if self.medunet_s > 0 else float("inf")

    def as_dict(self) -> dict[str, Any]:
        return {**asdict(self), "ratio": self.ratio}


HEADER = f"{'name':<34} {'stock_s':>9} {'medunet_s':>10} {'ratio':>8}  agreement"


def print_row(row: Row) -> None:
    """Print one table row (call ``print(HEADER)`` once first)."""
    print(
        f"{row.name:<34} {row.stock_s:>9.3f} {row.medunet_s:>10.3f} {row.ratio:>7.1f}x"
        f"  {row.agreement_label}={row.agreement:.3g}",
        flush=True,
    )


def write_results(bench: str, rows: list[Row], *, out: str | Path | None = None, **meta: Any) -> Path:
    """Write rows plus machine metadata as JSON (atomically) to ``out`` or ``runs/benchmarks/<bench>.json``."""
    path = Path(out) if out is not None else DEFAULT_RESULTS_DIR / f"{bench}.json"
    doc = {
        "benchmark": bench,
        "date_utc": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": {"platform": platform.platform(), "python": platform.python_version(), "cpus": _cpus()},
        "peak_rss_mb": peak_rss_mb(),
        **meta,
        "rows": [r.as_dict() for r in rows],
    }
    return atomic_write_text(path, json.dumps(doc, indent=2, default=str) + "\n")


def _cpus() -> int:
    import os

    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1
