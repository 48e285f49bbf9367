"""The preprocessing benchmark runs and medunet's read + reorient + resample matches stock MONAI's
(never a time); the fast gzip backends produce identical bytes."""

from __future__ import annotations

from pathlib import Path


def test_bench_preprocess_smoke(tmp_path: Path, smoke) -> None:
    out = tmp_path / "preprocess_smoke.json"
    stdout, doc = smoke("bench_preprocess", out)
    rows = {r["name"]: r for r in doc["rows"]}
    pre = rows.pop("preprocess_smoke")
    assert pre["agreement"] < 1e-2  # HU, on a -1000..700 HU volume: float rounding only
    assert pre["extra"]["correlation"] > 0.999999
    assert len(rows) == 6
    for row in rows.values():  # gzip rows: identical inflated bytes / lossless round trip
        assert row["agreement"] == 1.0
