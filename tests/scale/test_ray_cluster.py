"""``medunet predict --ray HOST:PORT`` against a `ray start --head` node on 127.0.0.1 (2 CPUs).

Faults: a driver SIGKILLed mid-run loses only the cases in flight and a re-run skips every completed
case; (slow) the only worker SIGKILLed mid-case is replaced by a new process that reloads the model and
finishes the job; a case that kills its worker every time is reported after ``--max-retries``. The head
node and every process it started are stopped by the fixture (by process id).
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

pytest.importorskip("ray")

from ray_helpers import (  # noqa: E402
    CaseHolder,
    complete_cases,
    file_hashes,
    make_cases,
    make_checkpoint,
    ray_head_node,
    ray_processes,
)

from medunet.cli import main  # noqa: E402

pytestmark = pytest.mark.xdist_group("ray")
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def holder(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CaseHolder]:
    holder = CaseHolder(tmp_path_factory.mktemp("hold"))
    holder.start()
    yield holder
    holder.stop()


@pytest.fixture(scope="module")
def head(holder: CaseHolder) -> Iterator[str]:
    with ray_head_node(num_cpus=2, env=holder.env()) as address:
        yield address


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_checkpoint(tmp_path_factory.mktemp("model"))


def _run(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


# Slow only for time (32 s): test_ray_predict.py kills a worker mid-case in the default suite already.
@pytest.mark.slow
def test_worker_killed_mid_case_is_replaced_and_the_case_retried(
    head: str, holder: CaseHolder, checkpoint: Path, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    make_cases(inputs, 4)
    out = tmp_path / "out"
    holder.plan("ct_2", times=1)  # the worker is SIGKILLed while it is on ct_2
    rc = main(
        ["predict", "--checkpoint", str(checkpoint), "-i", str(inputs), "-o", str(out)]
        + ["--ray", head, "--workers", "1", "--max-retries", "2"]  # one: only its replacement can finish
    )
    assert len(holder.killed) == 1
    assert rc == 0
    assert complete_cases(out) == [f"ct_{i}" for i in range(4)]  # every case, the killed one too
    assert sorted(p.name for p in out.iterdir() if p.name.startswith(".")) == []  # its partial removed
    assert list(csv.DictReader((out / "failures.csv").open())) == []
    run = _run(out)
    assert run["cases"]["done"] == 4 and run["cases"]["failed"] == 0
    assert run["cases"]["worker_deaths"] == 1 and run["cases"]["retried"] == 1
    (worker,) = run["throughput"]["per_worker"]
    assert worker["restarts"] == 1 and len(worker["model_load_s"]) == 2  # the model loaded again...
    assert (
        worker["pids"][0] == holder.killed[0] and worker["pids"][1] != holder.killed[0]
    )  # ...in a new process
    assert worker["cases"] == 4


def test_case_that_keeps_killing_its_worker_is_reported_not_retried_forever(
    head: str, holder: CaseHolder, checkpoint: Path, tmp_path: Path
) -> None:
    inputs = tmp_path / "in"
    make_cases(inputs, 1)
    out = tmp_path / "out"
    holder.plan("ct_0", times=10)  # every attempt at ct_0 kills its worker
    rc = main(
        ["predict", "--checkpoint", str(checkpoint), "-i", str(inputs), "-o", str(out)]
        + ["--ray", head, "--workers", "1", "--max-retries", "1"]
    )
    assert rc == 1
    assert len(holder.killed) == 2  # first attempt + one retry, then given up
    (row,) = list(csv.DictReader((out / "failures.csv").open()))
    assert row["case"] == "ct_0" and "died 2 time(s)" in row["error"]
    assert _run(out)["cases"]["worker_deaths"] == 2 and complete_cases(out) == []


def test_driver_killed_mid_run_then_rerun_skips_completed_cases(
    head: str, holder: CaseHolder, checkpoint: Path, tmp_path: Path
) -> None:
    n = 6
    inputs = tmp_path / "in"
    make_cases(inputs, n)
    out = tmp_path / "out"
    args = ["predict", "--checkpoint", str(checkpoint), "-i", str(inputs), "-o", str(out), "--ray", head]
    holder.plan("ct_3", kill=False)  # one worker takes the cases in order: ct_0..ct_2 done, ct_3 in flight
    log = (tmp_path / "driver.log").open("w")
    driver = subprocess.Popen(
        [sys.executable, "-m", "medunet", *args, "--workers", "1"], cwd=REPO, stdout=log, stderr=log
    )
    try:
        deadline = time.monotonic() + 240
        while not holder.held and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        assert driver.poll() is None and holder.held, (tmp_path / "driver.log").read_text()[-3000:]
        driver.send_signal(signal.SIGKILL)
    finally:
        driver.kill()
        driver.wait()
        log.close()
    # Ray stops the actors of a dead driver; wait for that so nothing writes behind our back.
    deadline = time.monotonic() + 60
    while any(c.startswith("ray::CaseWorker") for c in ray_processes().values()):
        assert time.monotonic() < deadline, "actors of the killed driver still alive"
        time.sleep(0.2)
    done_before = complete_cases(out)
    assert done_before == ["ct_0", "ct_1", "ct_2"]
    visible = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    assert visible == done_before  # only complete case folders are visible; no run.json yet
    hashes = {c: file_hashes(out / c) for c in done_before}

    assert main([*args, "--workers", "2"]) == 0
    assert complete_cases(out) == [f"ct_{i}" for i in range(n)]
    assert {c: file_hashes(out / c) for c in done_before} == hashes  # skipped, not rewritten
    assert [p.name for p in out.iterdir() if p.name.startswith(".")] == []  # stale partials cleared
    run = _run(out)
    assert run["cases"]["skipped"] == len(done_before)
    assert run["cases"]["done"] == n - len(done_before) and run["cases"]["failed"] == 0
    assert os.environ.get("RAY_AUTH_MODE") == "token"  # joined by explicit address with the token


@pytest.mark.slow
def test_evaluation_on_ray_writes_the_same_scores_as_locally(
    head: str, checkpoint: Path, tmp_path: Path
) -> None:
    from medunet.data.datalist import Case
    from medunet.data.synthetic import SYNTHETIC_LABELS, generate_case
    from medunet.evaluation import evaluate
    from medunet.io import write_nifti

    cases = []
    for i in range(4):
        image, label = generate_case(i, "CT", size=48)
        img = write_nifti(tmp_path / "data" / f"c{i}.nii.gz", image.array, image.affine)
        lab = write_nifti(tmp_path / "data" / f"c{i}_label.nii.gz", label.array, label.affine)
        cases.append(Case(f"c{i}", (img,), lab))
    (tmp_path / "data" / "c2_label.nii.gz").write_bytes(b"broken")  # one bad case, reported alike
    labels = dict(SYNTHETIC_LABELS)
    results = {}
    for mode, ray_address in (("local", None), ("ray", head)):
        out = tmp_path / mode
        with pytest.raises(Exception, match="1 input"):
            evaluate(checkpoint, cases, labels, out, device="cpu", ray=ray_address, workers=2)
        results[mode] = {f: (out / f).read_bytes() for f in ("per_case.csv", "summary.json")}
    assert results["ray"] == results["local"]
    assert b"c2" not in results["ray"]["per_case.csv"] and b"c3" in results["ray"]["per_case.csv"]
