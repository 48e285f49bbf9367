"""Resume after the messier crashes: a torn temporary checkpoint, a half-written metrics.csv row, and
``--resume true`` given as the command-line string MONAI's CLI passes on (the bug fixed in 5580ef6).

CPU, no data-loader workers and per-epoch reseeded augmentation make a resumed run end with exactly
the weights of an uninterrupted one (``torch.equal``), as in ``test_crash_resume.py``.
"""

from __future__ import annotations

import csv
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_data import BUNDLE, bundle_cli_args, make_tiny_ct_dataset, run_bundle

from medunet.training import find_resume_checkpoint, load_checkpoint

EPOCHS = 4
HELD_RUN = Path(__file__).with_name("held_checkpoint_run.py")


def _bundle_args(dataset: Path, out: Path, **overrides: object) -> list[str]:
    return [
        "run", "training",
        "--config_file", str(BUNDLE / "train.json"), "--meta_file", str(BUNDLE / "metadata.json"),
        *bundle_cli_args(dataset, out, max_epochs=EPOCHS, val_interval=2, **overrides),
    ]  # fmt: skip


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = load_checkpoint(a)["model"], load_checkpoint(b)["model"]
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _epochs(path: Path) -> list[int]:
    return [int(r["epoch"]) for r in csv.DictReader(io.StringIO(path.read_text()))]


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_tiny_ct_dataset(tmp_path_factory.mktemp("resume_edge") / "ds", n_cases=4)


@pytest.fixture(scope="module")
def reference(dataset: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(dataset, output of an uninterrupted 4-epoch run)."""
    out = tmp_path_factory.mktemp("resume_edge_reference")
    run_bundle(dataset, out, max_epochs=EPOCHS, val_interval=2)
    return dataset, out


def test_torn_temporary_checkpoint_is_skipped_and_cli_resume_true_continues(
    reference: tuple[Path, Path], tmp_path: Path
) -> None:
    """SIGKILL while half of epoch 3's payload is in its temporary file; then ``--resume true`` on the
    command line (the string, as a user types it) resumes from epoch 2 to the uninterrupted weights,
    and ``resume="false"`` (the string) starts a fresh run."""
    data, ref = reference
    run, marker = tmp_path / "run", tmp_path / "held"
    proc = subprocess.Popen(
        [sys.executable, str(HELD_RUN), "torn-payload", "epoch_0003.pt", "60", str(marker), "--"]
        + _bundle_args(data, run),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 240
        while not marker.is_file():
            assert proc.poll() is None, "the run ended before the kill point"
            assert time.monotonic() < deadline, "kill point never reached"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    # What the kill left: a torn temporary file (it ends in .pt too) and no epoch_0003.pt.
    (torn,) = run.glob(".epoch_0003.pt.*")
    full = (ref / "epoch_0003.pt").stat().st_size
    assert torn.name.endswith(".pt") and 0 < torn.stat().st_size < full
    assert not (run / "epoch_0003.pt").exists()
    path, state = find_resume_checkpoint(run)  # the torn file is skipped
    assert path != torn and state["epoch"] == 2  # epoch_0002.pt (or best.pt, the same state)

    resumed = subprocess.run(
        [sys.executable, "-m", "monai.bundle", *_bundle_args(data, run), "--resume", "true"]
        + ["--logging_file", str(BUNDLE / "logging.conf")],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    resumed_from = [line for line in resumed.stdout.splitlines() if "resumed from" in line]
    assert len(resumed_from) == 1 and "epoch 2, iteration 4" in resumed_from[0], resumed.stdout[-3000:]
    assert not list(run.glob(".*.tmp*"))  # the debris is cleared
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] == EPOCHS and state["iteration"] == EPOCHS * 2  # the count continued
    assert _epochs(run / "metrics.csv") == [2, 4]
    assert _same_weights(run / "last.pt", ref / "last.pt")
    # ...and "false", the string MONAI's CLI passes for --resume false, starts afresh (it used to
    # count as true and "resume" the finished 4-epoch run).
    run_bundle(data, run, max_epochs=1, resume="false")
    assert load_checkpoint(run / "last.pt")["epoch"] == 1
    assert sorted(p.name for p in run.glob("epoch_*.pt")) == ["epoch_0001.pt"]


def test_half_written_metrics_row_is_dropped_on_resume(dataset: Path, tmp_path: Path) -> None:
    """A metrics.csv whose last row lost its end (here ``1``: what is left of a row for epoch 12 cut
    after its first digit) is repaired on resume: the torn row is dropped, every row is complete, and
    the rows appended later are not glued to it (before the repair they read as epoch 14)."""
    run = tmp_path / "run"
    run_bundle(dataset, run, max_epochs=2, val_interval=2)
    metrics = run / "metrics.csv"
    complete = metrics.read_text()
    assert _epochs(metrics) == [2]
    metrics.write_text(complete + "1")  # torn: no newline
    (run / "val_cases.csv").write_text((run / "val_cases.csv").read_text() + "2,case_0")
    run_bundle(dataset, run, max_epochs=EPOCHS, val_interval=2, resume=True)
    text = metrics.read_text()
    assert text.startswith(complete) and text.endswith("\n")
    rows = list(csv.DictReader(io.StringIO(text)))
    assert [int(r["epoch"]) for r in rows] == [2, 4]
    assert all(None not in r and all(v not in (None, "") for v in r.values()) for r in rows)
    # val_cases.csv: its torn row (epoch 2, cut after the case id) is dropped too; epoch 2's complete
    # rows stay, epoch 4's follow.
    val_rows = list(csv.DictReader(io.StringIO((run / "val_cases.csv").read_text())))
    assert {int(r["epoch"]) for r in val_rows} == {2, 4}
    assert all(None not in r and None not in r.values() for r in val_rows)
    assert load_checkpoint(run / "last.pt")["epoch"] == EPOCHS
