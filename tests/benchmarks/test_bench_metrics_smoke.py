"""The metrics benchmark runs from the repository root and medunet agrees with stock MONAI (never a time)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_metrics_smoke(tmp_path: Path) -> None:
    out = tmp_path / "metrics_smoke.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_metrics", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "ratio" in proc.stdout
    doc = json.loads(out.read_text())
    assert [r["name"].split()[-2] for r in doc["rows"]] == ["3", "12"]  # label counts
    for row in doc["rows"]:
        assert row["extra"]["max_abs_diff_dice"] < 1e-6
        assert row["extra"]["max_abs_diff_hd95_mm"] < 1e-3
        assert row["extra"]["nan_hd95"] == 0  # every organ present in both maps: a real comparison
        assert row["stock_s"] > 0 and row["medunet_s"] > 0
