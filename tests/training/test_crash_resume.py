"""Crash safety: SIGKILL a training run between epochs and inside a checkpoint write, then resume.

Each kill must leave a complete, loadable checkpoint to resume from, and the resumed run must end
with the same weights as an uninterrupted run with the same seed. CPU, no data-loader workers and
per-epoch reseeded augmentation make this exact: the tolerance is 0 (``torch.equal``). A kill inside a
write is timed by ``held_checkpoint_run.py``, which monkeypatches a pause into the checkpoint writer of
the killed process (medunet itself has no test hook).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from tiny_data import BUNDLE, bundle_cli_args, make_tiny_ct_dataset, run_bundle

from medunet.training import find_resume_checkpoint, is_valid_checkpoint, load_checkpoint

EPOCHS = 4
HELD_RUN = Path(__file__).with_name("held_checkpoint_run.py")


def _command(
    dataset: Path, out: Path, hold: tuple[str, str, Path] | None = None, **overrides: object
) -> list[str]:
    """The bundle's training command; with ``hold = (mode, file, marker)`` one checkpoint write pauses
    60 s at the ``mode`` point and ``marker`` appears when it does (see ``held_checkpoint_run.py``)."""
    bundle = [
        "run", "training",
        "--config_file", str(BUNDLE / "train.json"), "--meta_file", str(BUNDLE / "metadata.json"),
        *bundle_cli_args(dataset, out, max_epochs=EPOCHS, val_interval=2, **overrides),
    ]  # fmt: skip
    if hold is None:
        return [sys.executable, "-m", "monai.bundle", *bundle]
    mode, name, marker = hold
    return [sys.executable, str(HELD_RUN), mode, name, "60", str(marker), "--", *bundle]


def _run(dataset: Path, out: Path, **overrides: object) -> None:
    """Uninterrupted and resumed runs happen in this process (only killed runs need a subprocess)."""
    run_bundle(dataset, out, max_epochs=EPOCHS, val_interval=2, **overrides)


def _kill_when(dataset: Path, out: Path, ready, hold: tuple[str, str, Path] | None = None) -> None:
    """Start a run and SIGKILL it as soon as ``ready(out)`` is true."""
    proc = subprocess.Popen(
        _command(dataset, out, hold), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 240
        while not ready(out):
            assert proc.poll() is None, "the run ended before the kill point"
            assert time.monotonic() < deadline, "kill point never reached"
            time.sleep(0.05)
        os.kill(proc.pid, signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_killed_runs_resume_to_the_uninterrupted_result(tmp_path):
    data = make_tiny_ct_dataset(tmp_path / "ds", n_cases=4)
    reference = tmp_path / "reference"
    _run(data, reference)
    expected = _weights(reference / "last.pt")

    # 1) Killed between epochs, right after epoch 2's checkpoint is complete.
    run = tmp_path / "killed_between_epochs"
    _kill_when(data, run, lambda out: (out / "epoch_0002.pt.sha256").is_file())
    found = find_resume_checkpoint(run)
    assert found is not None and found[1]["epoch"] >= 2
    _run(data, run, resume=True)
    assert load_checkpoint(run / "last.pt")["epoch"] == EPOCHS
    assert _same(_weights(run / "last.pt"), expected)

    # 2) Killed inside the write of epoch 3's checkpoint: payload on disk, checksum not yet written.
    run = tmp_path / "killed_in_write"
    marker = tmp_path / "held_epoch_0003"
    _kill_when(data, run, lambda out: marker.is_file(), hold=("before-checksum", "epoch_0003.pt", marker))
    assert (run / "epoch_0003.pt").is_file() and not (run / "epoch_0003.pt.sha256").is_file()
    assert not is_valid_checkpoint(run / "epoch_0003.pt")  # the damaged one is refused...
    path, state = find_resume_checkpoint(run)  # ...and resume finds the newest complete one
    assert state["epoch"] == 2 and is_valid_checkpoint(path)
    _run(data, run, resume=True)
    assert [int(line.split(",")[0]) for line in (run / "metrics.csv").read_text().splitlines()[1:]] == [2, 4]
    assert _same(_weights(run / "last.pt"), expected)


@pytest.mark.slow
def test_kill_during_first_checkpoint_write_restarts_cleanly(tmp_path):
    """Nothing complete to resume from: resume warns and trains from scratch to the same result."""
    data = make_tiny_ct_dataset(tmp_path / "ds", n_cases=4)
    reference = tmp_path / "reference"
    _run(data, reference)
    run = tmp_path / "run"
    marker = tmp_path / "held_epoch_0001"
    _kill_when(data, run, lambda out: marker.is_file(), hold=("before-checksum", "epoch_0001.pt", marker))
    assert (run / "epoch_0001.pt").is_file()
    assert find_resume_checkpoint(run) is None
    _run(data, run, resume=True)
    assert _same(_weights(run / "last.pt"), _weights(reference / "last.pt"))
