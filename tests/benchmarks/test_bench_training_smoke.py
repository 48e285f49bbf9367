"""The training benchmark runs both pipelines for 2 iterations on a tiny synthetic dataset (never a time)."""

from __future__ import annotations

import math
from pathlib import Path


def test_bench_training_smoke(tmp_path: Path, smoke) -> None:
    out = tmp_path / "training_smoke.json"
    stdout, doc = smoke("bench_training", out)
    (row,) = doc["rows"]
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
