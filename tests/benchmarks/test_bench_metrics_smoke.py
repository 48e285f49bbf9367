"""The metrics benchmark runs from the repository root and medunet agrees with stock MONAI (never a time)."""

from __future__ import annotations

from pathlib import Path


def test_bench_metrics_smoke(tmp_path: Path, smoke) -> None:
    out = tmp_path / "metrics_smoke.json"
    stdout, doc = smoke("bench_metrics", out)
    doc = doc
    assert [r["name"].split()[-2] for r in doc["rows"]] == ["3", "12"]  # label counts
    for row in doc["rows"]:
        assert row["extra"]["max_abs_diff_dice"] < 1e-6
        assert row["extra"]["max_abs_diff_hd95_mm"] < 1e-3
        assert row["extra"]["nan_hd95"] == 0  # every organ present in both maps: a real comparison
        assert row["stock_s"] > 0 and row["medunet_s"] > 0
