"""The inference benchmark runs end to end (file in -> mask file out) and medunet's mask agrees with stock
MONAI's on the source grid (never a time)."""

from __future__ import annotations

from pathlib import Path


def test_bench_inference_smoke(tmp_path: Path, smoke) -> None:
    out = tmp_path / "inference_smoke.json"
    stdout, doc = smoke("bench_inference", out)
    assert "sliding_window" in stdout and "net ratio" in stdout
    rows = {row["extra"]["settings"]: row for row in doc["rows"]}
    assert set(rows) == {"default", "equal"}  # medunet's defaults and stock's settings, side by side
    equal = rows["equal"]["extra"]
    assert equal["medunet"]["overlap"] == equal["stock"]["overlap"] == 0.5
    assert equal["medunet"]["mode"] == "constant" and equal["medunet"]["crop_foreground"] is False
    for row in rows.values():
        extra = row["extra"]
        assert row["agreement_label"] == "min_fg_dice"  # per-label foreground Dice, never voxel equality
        # Both masks lie on the source grid: same shape (checked when read back) and the same affine.
        for case in extra["agreement_per_case"]:
            assert case["affine_max_diff"] < 1e-4
            assert "equal_fraction" not in case
            assert len(case["label_fractions"]) >= 3  # a real multi-organ map, not all background
            assert min(case["voxels_stock"].values()) > 0  # every organ present in stock's mask
        # Coarse smoke voxels (2x2x3 mm vs a 1.5x1.5x2 mm network grid) make boundaries a large share
        # of each organ; the full-size benchmark reports the real agreement.
        per_label = extra["dice_per_label_min_over_cases"]
        assert None not in per_label.values()  # every organ present, so none reported "absent"
        assert row["agreement"] == min(per_label.values()) >= 0.85
        for kind in ("stock", "medunet"):
            assert set(extra[kind]["stages_s"]) == {
                "load",
                "preprocess",
                "sliding_window",
                "postprocess",
                "save",
            }
            assert extra[kind]["total_s"] > 0
        assert extra["windows"] >= 1 and extra["gflop_per_window"] > 0
        assert extra["peak_rss_x_input"]["medunet"] > 0
    # At equal settings the network stage sees the same windows as stock.
    assert rows["equal"]["extra"]["windows"] == rows["equal"]["extra"]["windows_stock"]
