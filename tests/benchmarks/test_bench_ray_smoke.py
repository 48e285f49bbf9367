"""The Ray benchmark runs end to end (local, Ray 1 and 2 workers on one local runtime) and its Ray case
folders are the same bytes as the local ones (never a time)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytest.importorskip("ray")

# Starts a Ray runtime: kept with the other Ray tests on one xdist worker, so they never overlap.
pytestmark = pytest.mark.xdist_group("ray")


@pytest.mark.slow
def test_bench_ray_smoke(tmp_path: Path, smoke) -> None:
    out = tmp_path / "ray_smoke.json"
    stdout, doc = smoke("bench_ray", out)
    assert "cases/min steady" in stdout and "Ray overhead" in stdout
    rows = {r["name"].split()[0]: r for r in doc["rows"]}
    assert set(rows) == {"ray_1w", "ray_2w"}
    for row in rows.values():
        assert row["agreement"] == 1.0  # every case folder identical to the local run's
        assert row["extra"]["ray_overhead_s_per_case"] >= 0
        assert row["extra"]["ray_cases_per_min"] > 0 and row["extra"]["local_cases_per_min"] > 0
    assert doc["results"]["ray_2w"]["cases"] == doc["results"]["local"]["cases"] == 3
    assert len(doc["results"]["ray_2w"]["per_worker"]) == 2
