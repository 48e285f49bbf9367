"""``medunet predict --ray`` on a real local Ray runtime (2 CPUs) that the command starts and stops.

Six synthetic CTs, one of them a corrupt file, and one worker process SIGKILLed in the middle of a
case: every good case is still written, the five good case folders are the same bytes as the local
path's (case.json differs only in its creation time), the corrupt case alone is in failures.csv, the
exit code is 1, run.json counts it all (one worker death, one retry), and no Ray process outlives the
command.
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from ray_helpers import (  # noqa: E402
    CaseHolder,
    case_record,
    file_hashes,
    make_cases,
    make_checkpoint,
    ray_processes,
    wait_no_new_ray_processes,
)

from medunet.cli import main  # noqa: E402

pytestmark = pytest.mark.xdist_group("ray")


@pytest.fixture
def ray_tmpdir(monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """The runtime's session logs go to a folder of this test (short: Ray's socket paths must fit)."""
    folder = Path(tempfile.mkdtemp(prefix="mdl", dir="/tmp"))
    monkeypatch.setenv("RAY_TMPDIR", str(folder))
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def test_ray_run_matches_local_run_isolates_the_corrupt_case_and_survives_a_killed_worker(
    tmp_path: Path, ray_tmpdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = make_checkpoint(tmp_path / "model")
    inputs = tmp_path / "in"
    make_cases(inputs, 6, corrupt=(3,))
    out = tmp_path / "out"
    base = ["predict", "--checkpoint", str(ckpt), "--input", str(inputs), "--output", str(out)]
    # Same bytes needs the same sums: PyTorch's CPU kernels give the same logits on 1 or 2 threads,
    # OpenVINO's (the CPU default) differ by up to ~2e-3 (README, "Segmenting an archive").
    base += ["--engine", "torch"]

    assert main([*base, "--device", "cpu"]) == 1  # the local path: same corrupt case, same exit code
    local = tmp_path / "out_local"
    os.replace(out, local)  # same output path for both runs: review.itksnap records the case folder

    before = set(ray_processes())
    assert not ray.is_initialized()
    killer = CaseHolder(tmp_path / "hold")  # SIGKILLs the worker process that is on ct_1
    for key, value in killer.env().items():  # the runtime the command starts passes these to its workers
        monkeypatch.setenv(key, value)
    killer.plan("ct_1", times=1)
    killer.start()
    try:
        assert main([*base, "--ray", "--workers", "2"]) == 1
    finally:
        killer.stop()
    assert len(killer.killed) == 1
    assert not ray.is_initialized()  # the runtime the command started is stopped...
    assert wait_no_new_ray_processes(before) == {}  # ...with every process of it
    assert any(ray_tmpdir.glob("ray/session_*"))  # (and it kept its logs where it was told)

    cases = ["ct_0", "ct_1", "ct_2", "ct_4", "ct_5"]
    assert sorted(p.name for p in out.iterdir()) == [*cases, "failures.csv", "run.json"]  # nothing hidden
    assert sorted(p.name for p in local.iterdir()) == cases
    for case in cases:
        ours, theirs = file_hashes(out / case), file_hashes(local / case)
        assert ours.keys() == theirs.keys() and "segmentation.nii.gz" in ours
        assert {f: h for f, h in ours.items() if f != "case.json"} == {
            f: h for f, h in theirs.items() if f != "case.json"
        }, case
        assert case_record(out / case) == case_record(local / case)

    (row,) = list(csv.DictReader((out / "failures.csv").open()))
    assert row["case"] == "ct_3" and row["input"] == str((inputs / "ct_3.nii.gz").resolve())
    assert "not a readable NIfTI" in row["error"]

    run = json.loads((out / "run.json").read_text())
    assert run["format"] == "medunet-run/1"
    assert run["cases"] == {
        "total": 6,
        "done": 5,
        "skipped": 0,
        "failed": 1,
        "retried": 1,
        "worker_deaths": 1,
    }
    assert run["ray"]["workers"] == 2 and run["ray"]["resources"]["CPU"] == 2.0
    workers = run["throughput"]["per_worker"]
    assert len(workers) == 2 and sum(w["cases"] for w in workers) == 6  # the killed attempt not counted
    assert sorted(w["restarts"] for w in workers) == [0, 1]
    assert killer.killed[0] in [pid for w in workers for pid in w["pids"]]
    assert {"read", "predict", "write", "first_worker_ready_s", "predict_wall_s"} <= run["stages_s"].keys()
    assert run["throughput"]["cases_per_minute"] > 0
    assert (
        run["model"]["checkpoint_sha256"]
        == json.loads((out / "ct_0" / "case.json").read_text())["checkpoint_sha256"]
    )
