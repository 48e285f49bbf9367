"""The card's default command as a new user types it, on a fresh folder with no dataset.

``python -m monai.bundle run training --config_file bundles/ct_organs/train.json`` from a folder that
holds only the bundle: the synthetic CT dataset is generated on first use (smaller here, through the
``synthetic`` key), 2D/3D is chosen automatically, the schedule is planned from the time budget, MLflow
records into the default local store, and the outputs land in the default ``runs/ct_organs``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYNTHETIC = {"cases": 6, "test_cases": 1, "size": 64, "seed": 0}


@pytest.mark.slow  # about 2 minutes on 2 cores: dataset generation, a 1-minute budget, validation, MLflow model
def test_default_command_on_a_fresh_folder_generates_data_plans_trains_and_tracks(tmp_path: Path) -> None:
    (tmp_path / "bundles").symlink_to(REPO / "bundles")  # a checkout's layout, nothing else in it
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    cmd = [
        sys.executable,
        "-m",
        "monai.bundle",
        "run",
        "training",
        "--config_file",
        "bundles/ct_organs/train.json",
    ]
    cmd += ["--synthetic", json.dumps(SYNTHETIC), "--time_budget_min", "1", "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    log = proc.stdout + proc.stderr
    assert proc.returncode == 0, log[-4000:]

    # Generated on first use, with the parameters asked for.
    meta = json.loads((tmp_path / "data" / "synthetic_ct" / "dataset.json").read_text())
    assert len(meta["training"]) == SYNTHETIC["cases"] and len(meta["test"]) == SYNTHETIC["test_cases"]
    assert "generating" in log.lower() or "synthetic" in log.lower()

    out = tmp_path / "runs" / "ct_organs"
    plans = json.loads((out / "plans.json").read_text())
    assert plans["spatial_dims"] in (2, 3)
    assert plans["rationale"]["spatial_dims"]  # the automatic choice says why
    schedule = json.loads((out / "schedule.json").read_text())
    assert schedule["time_budget_min"] == 1 and schedule["max_epochs"] >= 1
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) >= 2 and "val_dice_mean" in rows[0]
    assert {"best.pt", "last.pt", "split.json", "mlflow_run.json", "mlflow.db"} <= {
        p.name for p in out.iterdir()
    }

    from mlflow.tracking import MlflowClient

    store = f"sqlite:///{out / 'mlflow.db'}"
    run = MlflowClient(tracking_uri=store).get_run(
        json.loads((out / "mlflow_run.json").read_text())["run_id"]
    )
    assert run.info.status == "FINISHED"
    assert run.data.params["config.time_budget_min"] == "1"
    assert any(key.startswith("val_dice_") for key in run.data.metrics)
