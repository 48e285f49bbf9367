"""Tracking against a real ``mlflow server`` on 127.0.0.1 (sqlite backend, proxied artifacts)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_tracking import check_recorded_training, run_toy_training

MLFLOW = Path(sys.executable).with_name("mlflow")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real tracking server; stopped (and its log shown on failure to start) in teardown."""
    exe = str(MLFLOW) if MLFLOW.is_file() else shutil.which("mlflow")
    if exe is None:
        pytest.skip("the mlflow command is not installed")
    root = tmp_path_factory.mktemp("mlflow_server")
    port = _free_port()
    log = (root / "server.log").open("wb")
    env = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    proc = subprocess.Popen(
        [
            exe, "server",
            "--host", "127.0.0.1",
            "--port", str(port),
            "--workers", "1",
            "--backend-store-uri", f"sqlite:///{root / 'server.db'}",
            "--serve-artifacts",
            "--artifacts-destination", str(root / "artifacts"),
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        env=env,
        start_new_session=True,
    )  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"mlflow server exited ({proc.returncode}):\n{(root / 'server.log').read_text()[-3000:]}"
                )
            try:
                with urllib.request.urlopen(uri + "/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"mlflow server not healthy after 90 s:\n{(root / 'server.log').read_text()[-3000:]}"
                )
            time.sleep(0.5)
        yield uri
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
        log.close()


@pytest.mark.timeout(240)
def test_training_recorded_on_a_tracking_server(
    mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")  # the bundle override wins
    out = tmp_path / "run"
    tracker, spy, _ = run_toy_training(out, mlflow_server, epochs=2)
    assert tracker.run is not None and tracker.run.target.source == "bundle" and not tracker.run.failures
    assert not (out / "mlflow.db").exists() and not (out / "mlartifacts").exists()  # all went to the server
    client = MlflowClient(tracking_uri=mlflow_server, registry_uri=mlflow_server)
    check_recorded_training(client, tracker, spy, epochs=2)


@pytest.mark.timeout(120)
def test_server_going_away_mid_run_warns_and_training_finishes(
    mlflow_server: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """A backend failing after the start check costs warnings, not the training."""
    from ignite.engine import Engine, Events

    from medunet.tracking import MLflowTracker

    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
    engine = Engine(lambda e, b: {"loss": float(b)})
    tracker = MLflowTracker(tmp_path / "run", mlflow_server, loss_every=1, log_model=False)
    tracker.attach(engine)

    @engine.on(Events.EPOCH_COMPLETED(once=1))
    def _break_the_connection(e: Engine) -> None:  # as if the server vanished: requests go nowhere
        assert tracker.run is not None
        tracker.run.client = type(tracker.run.client)(tracking_uri="http://127.0.0.1:9")

    engine.run([1.0, 2.0], max_epochs=3)
    assert engine.state.epoch == 3
    assert tracker.run is not None and tracker.run.failures >= 1 and tracker.run.disabled
    assert any("MLflow" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
