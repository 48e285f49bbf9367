"""The engine benchmark runs (export, predict per engine, Dice vs PyTorch) and leaves nothing behind."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest


def test_bench_engines_smoke(tmp_path: Path, smoke) -> None:
    if importlib.util.find_spec("onnxruntime") is None:
        pytest.skip("onnxruntime is not installed (pip install 'medunet[engines]')")
    stdout, doc = smoke("bench_engines", tmp_path / "engines_smoke.json")
    rows = {row["extra"]["engine"]: row for row in doc["rows"]}
    assert "torch" in rows and "onnxruntime" in rows and "onnxruntime_int8" in rows
    if importlib.util.find_spec("openvino") is not None:
        assert {"openvino", "openvino_int8"} <= set(rows)
    for name, row in rows.items():
        assert row["agreement_label"] == "min_dice_vs_torch"
        extra = row["extra"]
        assert set(extra["dice_vs_torch"]) == {"liver", "spleen", "kidneys"}
        assert row["medunet_s"] > 0 and extra["e2e_s"] > 0
        if name == "torch":
            assert row["agreement"] == 1.0 and extra["export_s"] == 0.0
        elif not name.endswith("int8"):  # fp32 engines: the same labels up to float rounding ties
            assert row["agreement"] >= 0.99, (name, extra["dice_vs_torch"])
        else:
            assert extra["export_s"] > 0
    assert "loadavg" in doc
