"""The training benchmark runs both pipelines for 2 iterations on a tiny synthetic dataset (never a time)."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_training_smoke(tmp_path: Path) -> None:
    out = tmp_path / "training_smoke.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_training", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ratio" in proc.stdout
    (row,) = json.loads(out.read_text())["rows"]
    extra = row["extra"]
    assert extra["val_cases"] >= 1
    # medunet runs its CPU default (2D slices), stock the 3D spleen recipe, on the same grid and window
    assert extra["medunet"]["spatial_dims"] == 2 and extra["stock"]["spatial_dims"] == 3
    assert extra["medunet"]["target_spacing"] == extra["stock"]["target_spacing"]
    assert not extra["stock_reached"] and not extra["medunet_reached"]  # 2 iterations: far from the target
    for kind in ("stock", "medunet"):
        r = row["extra"][kind]
        assert r["iterations"] == 2
        assert r["its_per_s"] > 0
        assert 0.0 <= r["final_dice"] <= 1.0 and math.isfinite(r["final_dice"])
        assert r["history"] and r["history"][-1][0] == 2
