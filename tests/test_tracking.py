"""MLflow tracking: URI resolution, flattening, and a tiny real training recorded in the local store.

The toy training uses medunet's own training handlers (ValidationHandler, Checkpointer, TrainLogger)
on a MONAI SupervisedTrainer, so the tracker reads validation results exactly as the bundle produces
them. What the tests compare against is what ValidationHandler computed (kept by a spy handler).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from medunet.errors import ConfigError
from medunet.plans import Plans
from medunet.tracking import (
    MLflowTracker,
    flatten_config,
    log_evaluation,
    organ_keys,
    resolve_tracking_uri,
    sanitize_metric_name,
    scrub,
    summary_metrics,
)

LABELS = {0: "background", 1: "Liver", 2: "Spinal Cord"}
ORGAN_KEYS = {"Liver": "liver", "Spinal Cord": "spinal_cord"}
PHI = "PHI^Planted^Name"


# ----------------------------------------------------------------------------------------------------
# Plain functions
# ----------------------------------------------------------------------------------------------------


def test_uri_precedence_bundle_over_env_over_default(tmp_path: Path) -> None:
    env = {"MLFLOW_TRACKING_URI": "http://127.0.0.1:5999"}
    t = resolve_tracking_uri("http://mlflow:5000", tmp_path, env=env)
    assert (t.uri, t.source, t.artifact_location) == ("http://mlflow:5000", "bundle", None)
    t = resolve_tracking_uri(None, tmp_path, env=env)
    assert (t.uri, t.source) == ("http://127.0.0.1:5999", "env")
    t = resolve_tracking_uri("  ", tmp_path, env={"MLFLOW_TRACKING_URI": ""})
    assert t.source == "default"
    assert t.uri == f"sqlite:///{(tmp_path / 'mlflow.db').resolve()}"
    assert t.artifact_location == (tmp_path / "mlartifacts").resolve().as_uri()
    assert not t.is_remote


def test_uri_credentials_are_redacted() -> None:
    t = resolve_tracking_uri("http://alice:s3cret@127.0.0.1:5000", "/tmp", env={})
    assert "s3cret" not in t.display_uri and "alice" not in t.display_uri
    assert t.display_uri == "http://***@127.0.0.1:5000"


def test_unreachable_explicit_server_fails_early_with_config_error(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    from medunet.tracking import TrackingRun

    with pytest.raises(ConfigError, match="not reachable"):
        TrackingRun.start(resolve_tracking_uri(f"http://127.0.0.1:{port}", tmp_path, env={}))


def test_flatten_config_nesting_lists_objects_and_paths() -> None:
    opt = torch.optim.AdamW(torch.nn.Linear(2, 2).parameters(), lr=3e-3, weight_decay=1e-5)
    config = {
        "network": {"name": "unet", "kwargs": {"channels": [16, 32], "dropout": 0.1}},
        "patch_size": (96, 96, 64),
        "dataset_dir": "/data/raw/Task09_Spleen/",
        "cache_dir": "relative/cache",
        "optimizer": opt,
        "device": torch.device("cpu"),
        "datalist": [{"image": "/data/p1/ct.nii.gz", "label": "/data/p1/seg.nii.gz"}] * 5,
        "transforms": [{"_target_": "RandFlipd", "prob": 0.5}, {"_target_": "RandAffined", "prob": 0.2}],
        "expression": "$@network_def.parameters()",
        "db_password": "hunter2",
        "tracking": "http://bob:pw@host:5000",
        "amp": True,
        "nothing": None,
    }
    flat = flatten_config(config)
    assert flat["network.name"] == "unet"
    assert flat["network.kwargs.channels"] == "[16, 32]"
    assert flat["network.kwargs.dropout"] == "0.1"
    assert flat["patch_size"] == "[96, 96, 64]"
    assert flat["dataset_dir"] == "Task09_Spleen"
    assert flat["cache_dir"] == "cache"
    assert flat["optimizer.name"] == "AdamW"
    assert float(flat["optimizer.lr"]) == 3e-3
    assert flat["device"] == "cpu"
    assert flat["datalist.num_items"] == "5"
    assert not any(k.startswith("datalist.0") for k in flat)
    assert flat["transforms.1._target_"] == "RandAffined"
    assert "expression" not in flat
    assert not any("password" in k for k in flat)
    assert flat["tracking"] == "http://***@host:5000"
    assert flat["amp"] == "True" and flat["nothing"] == "None"
    assert all(isinstance(v, str) for v in flat.values())
    assert "/data" not in json.dumps(flat)


def test_flatten_config_long_values_fit_mlflow_limits() -> None:
    flat = flatten_config({"note": "x" * 10_000, "many": list(range(100))})
    assert len(flat["note"]) <= 6000
    assert flat["many.num_items"] == "100" and json.loads(flat["many"]) == list(range(32))


def test_scrub_removes_paths_inside_expressions() -> None:
    out = scrub({"a": "$load('/home/alice/PHI^Planted^Name/ct.nii.gz')", "b": ["/x/y/z.json"]})
    assert out == {"a": "$load('ct.nii.gz')", "b": ["z.json"]}


@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("Liver", "liver"),
        ("Spinal Cord", "spinal_cord"),
        ("Lung (L)", "lung_l"),
        ("Ösophagus", "sophagus"),
        ("---", "unnamed"),
    ],
)
def test_sanitize_metric_name(name: str, key: str) -> None:
    assert sanitize_metric_name(name) == key


def test_organ_keys_are_unique() -> None:
    assert organ_keys(["Lung L", "lung-l", "lung_l"]) == {
        "Lung L": "lung_l",
        "lung-l": "lung_l_2",
        "lung_l": "lung_l_3",
    }


def test_summary_metrics_from_metrics_table() -> None:
    from medunet.metrics import MetricsTable, OrganScore

    table = MetricsTable()
    table.add(
        "a",
        {
            "Liver": OrganScore(0.8, 3.0, 0.9, False, False, 1.0, 1.0),
            "Spinal Cord": OrganScore(0.0, math.nan, 0.0, True, False, 0.0, 1.0),
        },
    )
    table.add(
        "b",
        {
            "Liver": OrganScore(0.6, 5.0, 0.7, False, False, 1.0, 1.0),
            "Spinal Cord": OrganScore(1.0, 0.0, 1.0, True, True, 0.0, 0.0),
        },
    )
    m = summary_metrics(table.summary())
    assert m["val_dice_liver"] == pytest.approx(0.7)
    assert m["val_hd95_liver"] == pytest.approx(4.0)
    assert m["val_dice_spinal_cord"] == pytest.approx(0.5)
    assert m["val_hd95_spinal_cord"] == 0.0  # the undefined case is left out of the mean ...
    assert m["val_hd95_undefined_spinal_cord"] == 1.0  # ... and counted
    assert m["val_dice_mean"] == pytest.approx(0.6)
    assert set(m) >= {"val_nsd_liver", "val_nsd_mean", "val_hd95_mean"}


# ----------------------------------------------------------------------------------------------------
# A tiny real training (shared with test_tracking_server.py)
# ----------------------------------------------------------------------------------------------------


def toy_plans() -> Plans:
    return Plans(
        labels=LABELS,
        target_spacing=(2.0, 2.0, 2.0),
        patch_size=(16, 16, 16),
        network="unet",
        network_kwargs={"channels": [4, 8], "strides": [2], "num_res_units": 0},
    )


def toy_case(rng: np.random.Generator, size: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A sphere (Liver) and a rod (Spinal Cord) in noise."""
    g = np.indices((size,) * 3)
    label = np.zeros((size,) * 3, np.int64)
    c = rng.integers(5, size - 5, 3)
    label[((g - c[:, None, None, None]) ** 2).sum(0) <= 9] = 1
    label[2:4, 2:4, :] = 2
    image = label * 0.5 + rng.normal(0, 0.1, label.shape)
    return image.astype(np.float32)[None], label[None]


class Spy:
    """Keeps what ValidationHandler computed (attached right after it)."""

    def __init__(self) -> None:
        self.validations: list[dict[str, float]] = []

    def attach(self, engine: Any) -> None:
        from ignite.engine import Events

        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Any) -> None:
        if engine.state.metrics.get("val_epoch") == engine.state.epoch:
            self.validations.append({k: v for k, v in engine.state.metrics.items() if k.startswith("val_")})


def run_toy_training(
    output_dir: Path,
    tracking_uri: str | None,
    *,
    epochs: int = 3,
    val_images: list[tuple[np.ndarray, np.ndarray]] | None = None,
    **tracker_kwargs: Any,
) -> tuple[MLflowTracker, Spy, torch.nn.Module]:
    """Train a 2-level UNet for ``epochs`` on 16^3 toy volumes, validating every epoch, with tracking."""
    from monai.engines import SupervisedTrainer
    from monai.networks.nets import UNet
    from torch.utils.data import DataLoader

    from medunet.training import Checkpointer, TrainingEnv, TrainLogger, ValidationHandler, Validator

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    plans = toy_plans()
    env = TrainingEnv(device=torch.device("cpu"), seed=0)
    net = UNet(3, 1, plans.num_classes, channels=(4, 8), strides=(2,), num_res_units=0)
    train = [
        dict(zip(("image", "label"), map(torch.from_numpy, toy_case(rng)), strict=True)) for _ in range(4)
    ]
    val_pairs = val_images or [toy_case(rng) for _ in range(2)]
    val = [
        {"image": torch.from_numpy(i), "label": torch.from_numpy(lab), "case_id": f"v{n}"}
        for n, (i, lab) in enumerate(val_pairs)
    ]
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    loss = torch.nn.CrossEntropyLoss()
    validator = Validator(val, plans, "cpu", sw_batch_size=1)
    spy = Spy()
    tracker = MLflowTracker(
        output_dir,
        tracking_uri,
        experiment_name="toy_organs",
        plans=plans,
        dataset_name=str(output_dir.parent / "ToyDataset"),
        dataset_hash="0123456789abcdef",
        params={"loss": "ce", "learning_rate": 1e-2, "max_epochs": epochs, "augmentation": {"flip": False}},
        validator=validator,
        loss_every=2,
        previews=2,
        registered_model_name="medunet-toy",
        **tracker_kwargs,
    )
    handlers = [
        TrainLogger(opt, env),
        ValidationHandler(validator, net, output_dir, env, interval=1),
        spy,
        Checkpointer(output_dir, plans, net, opt, env),
        tracker,
    ]
    trainer = SupervisedTrainer(
        device=torch.device("cpu"),
        max_epochs=epochs,
        train_data_loader=DataLoader(train, batch_size=2),
        network=net,
        optimizer=opt,
        loss_function=lambda p, t: loss(p, t[:, 0].long()),
        train_handlers=handlers,
        decollate=False,
    )
    trainer.run()
    return tracker, spy, net


def _checkout_commit() -> str | None:
    """HEAD of the git checkout holding the medunet package, or None outside one."""
    import subprocess

    import medunet

    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=Path(medunet.__file__).resolve().parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    assert len(out) == 40 and all(c in "0123456789abcdef" for c in out), out
    return out


def check_recorded_training(client: Any, tracker: MLflowTracker, spy: Spy, epochs: int) -> None:
    """Everything the issue asks for is in the run, and the numbers are the ones computed."""
    run = client.get_run(tracker.run.run_id)
    assert run.info.status == "FINISHED"
    p, tags = run.data.params, run.data.tags
    assert p["plans.patch_size"] == "[16, 16, 16]"
    assert p["plans.target_spacing"] == "[2.0, 2.0, 2.0]"
    assert p["plans.network"] == "unet" and p["plans.spatial_dims"] == "3"
    assert p["train.optimizer.name"] == "Adam" and float(p["train.optimizer.lr"]) == 1e-2
    assert p["train.max_epochs"] == str(epochs) and p["train.batch_size"] == "2"
    assert p["config.loss"] == "ce" and p["config.augmentation.flip"] == "False"
    assert p["dataset"] == "ToyDataset"
    assert tags["medunet.dataset.name"] == "ToyDataset" and tags["medunet.dataset.hash"] == "0123456789abcdef"
    assert tags["medunet.torch_version"] == torch.__version__ and tags["medunet.device"] == "cpu"
    assert tags["medunet.run_kind"] == "training"
    commit = _checkout_commit()  # asked of git here, not of medunet.tracking
    if commit is None:  # not run from a git checkout: no made-up commit tag
        assert "mlflow.source.git.commit" not in tags and "medunet.git_commit" not in tags
    else:
        assert tags["mlflow.source.git.commit"] == tags["medunet.git_commit"] == commit
        assert tags["medunet.git_dirty"] in ("true", "false")
    # Per-organ validation metrics at every validation, equal to what ValidationHandler computed.
    assert len(spy.validations) == epochs
    for organ, key in ORGAN_KEYS.items():
        for stat in ("dice", "hd95"):
            hist = client.get_metric_history(run.info.run_id, f"val_{stat}_{key}")
            assert [m.step for m in hist] == list(range(1, epochs + 1))
            expected = [v[f"val_{stat}_{organ}"] for v in spy.validations]
            np.testing.assert_allclose([m.value for m in hist], expected, rtol=1e-12, equal_nan=True)
        assert len(client.get_metric_history(run.info.run_id, f"val_nsd_{key}")) == epochs
    for key in ("val_dice_mean", "val_hd95_mean"):
        hist = client.get_metric_history(run.info.run_id, key)
        np.testing.assert_allclose([m.value for m in hist], [v[key] for v in spy.validations], rtol=1e-12)
    loss_hist = client.get_metric_history(run.info.run_id, "train_loss")
    assert [m.step for m in loss_hist] == list(range(1, epochs + 1))
    assert loss_hist[-1].value == pytest.approx(tracker.loss_history[epochs])
    assert len(client.get_metric_history(run.info.run_id, "lr")) == epochs
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train_loss_iter")] == list(
        range(2, 2 * epochs + 1, 2)
    )
    # Artifacts.
    names = _artifact_paths(client, run.info.run_id)
    for expected in (
        "plans.json",
        "configs/resolved_params.json",
        "validation/metrics.csv",
        "validation/val_cases.csv",
        "plots/training_curve.png",
        "previews/val_case_00.png",
        "previews/val_case_01.png",
        "checkpoints/best.pt",
        "checkpoints/best.pt.sha256",
    ):
        assert expected in names, f"{expected} missing from {sorted(names)}"
    # The model loads and predicts; the registry has a version from this run.
    import mlflow.pytorch

    assert tracker.model_info is not None and tracker.model_info.run_id == run.info.run_id
    logged = client.search_logged_models([run.info.experiment_id])
    assert [m.source_run_id for m in logged] == [run.info.run_id]
    model = mlflow.pytorch.load_model(f"runs:/{run.info.run_id}/model")
    out = model(torch.zeros(2, 1, 32, 16, 16))
    assert tuple(out.shape) == (2, 3, 32, 16, 16)
    versions = client.search_model_versions("name='medunet-toy'")
    assert [v.run_id for v in versions] == [run.info.run_id]
    registered = mlflow.pytorch.load_model(f"models:/medunet-toy/{versions[0].version}")
    assert torch.equal(registered(torch.ones(1, 1, 16, 16, 16)), model(torch.ones(1, 1, 16, 16, 16)))


def _artifact_paths(client: Any, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for f in client.list_artifacts(run_id, path):
        out |= _artifact_paths(client, run_id, f.path) if f.is_dir else {f.path}
    return out


@pytest.mark.timeout(180)
def test_training_recorded_in_embedded_sqlite_store(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    out = tmp_path / "run"
    tracker, spy, _ = run_toy_training(out, None, epochs=3)
    assert tracker.run is not None and tracker.run.target.source == "default"
    assert (out / "mlflow.db").is_file() and (out / "mlartifacts").is_dir()
    assert json.loads((out / "mlflow_run.json").read_text())["run_id"] == tracker.run.run_id
    client = MlflowClient(tracking_uri=tracker.run.target.uri, registry_uri=tracker.run.target.uri)
    check_recorded_training(client, tracker, spy, epochs=3)
    # Evaluation: its own run, linked to the training run through the run file in the training folder.
    from medunet.metrics import MetricsTable, OrganScore

    table = MetricsTable()
    table.add(
        "t0",
        {
            "Liver": OrganScore(0.9, 2.0, 0.95, False, False, 1.0, 1.0),
            "Spinal Cord": OrganScore(0.5, 4.0, 0.6, False, False, 1.0, 1.0),
        },
    )
    csv_path, json_path = (
        table.write_csv(tmp_path / "cases.csv"),
        table.write_summary_json(tmp_path / "summary.json"),
    )
    from medunet.tracking import read_run_file

    ev = log_evaluation(
        tracking_uri=None,
        output_dir=out,
        summary=table.summary(),
        experiment_name="toy_organs",
        per_case_csv=csv_path,
        summary_json=json_path,
        training_run_id=read_run_file(out),
    )
    ev_run = client.get_run(ev.run_id)
    assert ev_run.data.tags["medunet.parent_training_run"] == tracker.run.run_id
    assert ev_run.data.tags["medunet.run_kind"] == "evaluation"
    assert (
        ev_run.data.metrics["test_dice_liver"] == 0.9 and ev_run.data.metrics["test_hd95_spinal_cord"] == 4.0
    )
    assert _artifact_paths(client, ev.run_id) == {"evaluation/cases.csv", "evaluation/summary.json"}


_DDP_SCRIPT = """
import sys
import torch, torch.distributed as dist
from ignite.engine import Engine
from medunet.tracking import MLflowTracker
rank, store, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
dist.init_process_group("gloo", init_method="file://" + store, rank=rank, world_size=2)
engine = Engine(lambda e, b: {"loss": torch.tensor(float(b))})
MLflowTracker(out, None, loss_every=1, log_model=False).attach(engine)
engine.run([1, 2, 3], max_epochs=2)
dist.barrier()
dist.destroy_process_group()
"""


def test_rank_other_than_zero_logs_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Fast check of the rank gate (the real two-process run is the slow test below)."""
    import torch.distributed as dist
    from ignite.engine import Engine

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_rank", lambda group=None: 1)
    engine = Engine(lambda e, b: {"loss": torch.tensor(float(b))})
    tracker = MLflowTracker(tmp_path / "run", None, loss_every=1, log_model=False)
    tracker.attach(engine)
    engine.run([1, 2], max_epochs=2)
    assert tracker.run is None and not tracker.enabled
    assert not (tmp_path / "run").exists()


@pytest.mark.slow
@pytest.mark.timeout(180)
def test_only_rank_zero_logs(tmp_path: Path) -> None:
    """Two real gloo processes train together: rank 0 records a run, rank 1 writes nothing at all."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _DDP_SCRIPT, str(r), str(tmp_path / "store"), str(tmp_path / f"rank{r}")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
        )
        for r in (0, 1)
    ]
    outputs = [p.communicate(timeout=100)[0].decode(errors="replace") for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outputs
    from mlflow.tracking import MlflowClient

    db = tmp_path / "rank0" / "mlflow.db"
    client = MlflowClient(tracking_uri=f"sqlite:///{db}")
    (run,) = client.search_runs([client.get_experiment_by_name("ct_organs").experiment_id])
    assert [m.value for m in client.get_metric_history(run.info.run_id, "train_loss")] == [2.0, 2.0]
    assert not (tmp_path / "rank1").exists()


@pytest.mark.timeout(180)
@pytest.mark.parametrize("word", ["false", "False", "0", "no"])
def test_tracker_enabled_false_from_the_bundle_cli_string_turns_it_off(tmp_path, word) -> None:
    """``--mlflow_tracker#enabled false`` arrives as a string; 'false' must not count as true."""
    from medunet.tracking.handler import MLflowEvaluationTracker, MLflowTracker

    assert MLflowTracker(tmp_path, enabled=word).enabled is False
    assert MLflowEvaluationTracker(tmp_path, enabled=word).enabled is False
    assert MLflowTracker(tmp_path, enabled="true").enabled is True
