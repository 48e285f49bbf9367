"""The preprocessing benchmark runs and medunet's read + reorient + resample matches stock MONAI's
(never a time); the fast gzip backends produce identical bytes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_bench_preprocess_smoke(tmp_path: Path) -> None:
    out = tmp_path / "preprocess_smoke.json"
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.bench_preprocess", "--smoke", "--out", str(out)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ratio" in proc.stdout
    rows = {r["name"]: r for r in json.loads(out.read_text())["rows"]}
    pre = rows.pop("preprocess_smoke")
    assert pre["agreement"] < 1e-2  # HU, on a -1000..700 HU volume: float rounding only
    assert pre["extra"]["correlation"] > 0.999999
    assert len(rows) == 6
    for row in rows.values():  # gzip rows: identical inflated bytes / lossless round trip
        assert row["agreement"] == 1.0
