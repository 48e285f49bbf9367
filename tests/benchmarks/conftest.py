"""Run a benchmark's ``--smoke`` mode the way a user would: ``python -m benchmarks.X`` from the repo root."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]


def run_smoke(module: str, out: Path) -> tuple[str, dict[str, Any]]:
    """Run ``benchmarks.<module> --smoke``; return its stdout and the results JSON it wrote."""
    proc = subprocess.run(
        [sys.executable, "-m", f"benchmarks.{module}", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ratio" in proc.stdout
    return proc.stdout, json.loads(out.read_text())


@pytest.fixture
def smoke():
    """The :func:`run_smoke` runner, as a fixture (test modules cannot import a conftest by name)."""
    return run_smoke
