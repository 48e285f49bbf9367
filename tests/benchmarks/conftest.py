"""Run a benchmark's ``--smoke`` mode the way a user would: ``python -m benchmarks.X`` from the repo root.

A smoke run must leave nothing behind: its temporary folders are removed (``TMPDIR`` points at an
empty folder that must be empty again afterwards) and nothing in the checkout's ``runs/benchmarks``
is created or changed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
CHECKOUT_RESULTS = REPO / "runs" / "benchmarks"


def _tree(root: Path) -> dict[str, tuple[int, int]]:
    """``{relative path: (size, mtime_ns)}`` of every file under ``root`` (empty when absent)."""
    if not root.is_dir():
        return {}
    return {
        str(p.relative_to(root)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in root.rglob("*")
        if p.is_file()
    }


def run_smoke(module: str, out: Path) -> tuple[str, dict[str, Any]]:
    """Run ``benchmarks.<module> --smoke``; return its stdout and the results JSON it wrote."""
    scratch = out.parent / f"{module}_TMPDIR"
    scratch.mkdir()
    before = _tree(CHECKOUT_RESULTS)
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        # torch keeps a per-user compile cache in TMPDIR by design: not the benchmark's leftovers.
        env={**os.environ, "TMPDIR": str(scratch), "TORCHINDUCTOR_CACHE_DIR": str(out.parent / "inductor")},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ratio" in proc.stdout
    assert sorted(p.name for p in scratch.iterdir()) == [], "temporary files left behind"
    assert _tree(CHECKOUT_RESULTS) == before, "the smoke run wrote into the checkout's runs/benchmarks"
    return proc.stdout, json.loads(out.read_text())


@pytest.fixture
def smoke():
    """The :func:`run_smoke` runner, as a fixture (test modules cannot import a conftest by name)."""
    return run_smoke
