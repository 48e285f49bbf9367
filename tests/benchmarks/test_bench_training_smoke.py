"""The training benchmark runs its four pipelines for 2 iterations on a tiny synthetic dataset (never a time)."""

from __future__ import annotations

import math
from pathlib import Path


def test_bench_training_smoke(tmp_path: Path, smoke) -> None:
    out = tmp_path / "training_smoke.json"
    stdout, doc = smoke("bench_training", out)
    default, equal, equal_bf16 = doc["rows"]
    assert [r["extra"]["settings"] for r in doc["rows"]] == ["default", "equal", "equal_bf16"]
    for row in (default, equal, equal_bf16):
        extra = row["extra"]
        assert extra["val_cases"] >= 1 and extra["stock_cached"]  # stock gets the model zoo's CacheDataset
        assert extra["medunet"]["target_spacing"] == extra["stock"]["target_spacing"]
        assert not extra["stock_reached"] and not extra["medunet_reached"]  # 2 iterations: far from it
        for kind in ("stock", "medunet"):
            r = extra[kind]
            assert r["iterations"] == 2
            assert r["its_per_s"] > 0
            assert 0.0 <= r["final_dice"] <= 1.0 and math.isfinite(r["final_dice"])
            assert r["history"] and r["history"][-1][0] == 2
    # default: medunet's CPU default (auto 2D/3D, pinned by tests/training/test_planning.py) against the
    # 3D spleen recipe; equal: medunet's data path and step with stock's 3D plans, same patch
    from medunet.precision import cpu_has_bf16

    assert (
        default["extra"]["medunet"]["spatial_dims"] in (2, 3)
        and default["extra"]["stock"]["spatial_dims"] == 3
    )
    assert equal["extra"]["medunet"]["spatial_dims"] == 3
    assert equal["extra"]["medunet"]["patch_size"] == equal["extra"]["stock"]["patch_size"]
    # equal settings are stock's fp32; the bf16 rows are bf16 exactly where the CPU has it natively
    assert equal["extra"]["medunet"]["bf16"] is False and equal["extra"]["stock"]["bf16"] is False
    assert default["extra"]["medunet"]["bf16"] is cpu_has_bf16()
    assert equal_bf16["extra"]["medunet"]["bf16"] is cpu_has_bf16()
    assert equal_bf16["extra"]["medunet"]["patch_size"] == equal["extra"]["medunet"]["patch_size"]
