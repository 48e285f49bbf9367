"""Tracking against a real ``mlflow server`` on 127.0.0.1 (sqlite backend, proxied artifacts)."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
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


#: Every test of this module shares one server: ``--dist loadgroup`` keeps them on one xdist worker,
#: so the module-scoped fixture starts the server once, not once per worker.
pytestmark = pytest.mark.xdist_group("mlflow_server")


@contextlib.contextmanager
def running_mlflow_server(root: Path) -> Iterator[tuple[str, subprocess.Popen]]:
    """A real tracking server under ``root``: ``(uri, process)``; stopped (process group) on exit."""
    exe = str(MLFLOW) if MLFLOW.is_file() else shutil.which("mlflow")
    if exe is None:
        pytest.skip("the mlflow command is not installed")
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
        yield uri, proc
    finally:
        stop_server(proc)
        log.close()


def stop_server(proc: subprocess.Popen) -> None:
    """Stop the server and its workers (they share the process group ``start_new_session`` made)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)
    with contextlib.suppress(ProcessLookupError):  # workers left behind by a server that exited first
        os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """One real tracking server for the module's tests."""
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow_server")) as (uri, _):
        yield uri


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


@pytest.mark.timeout(180)
def test_server_going_away_mid_run_warns_and_training_finishes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The server is stopped after epoch 1: warnings, not a failed training; epoch 1 reached it.

    Its own server (stopping the module's shared one would break the other tests).
    """
    from ignite.engine import Engine, Events
    from mlflow.tracking import MlflowClient

    from medunet.tracking import MLflowTracker

    root = tmp_path / "server"
    root.mkdir()
    with running_mlflow_server(root) as (uri, proc):
        engine = Engine(lambda e, b: {"loss": float(b)})
        tracker = MLflowTracker(tmp_path / "run", uri, loss_every=1, log_model=False)
        tracker.attach(engine)

        @engine.on(Events.EPOCH_COMPLETED(once=1))
        def _stop_the_server(e: Engine) -> None:  # after the tracker's epoch-1 handler
            # Fail fast from now on (a freshly started server on a busy machine may answer its first
            # requests slowly, so the short timeout starts only here).
            monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
            monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "2")
            stop_server(proc)
            assert proc.poll() is not None

        engine.run([1.0, 2.0], max_epochs=3)
    assert engine.state.epoch == 3
    assert tracker.run is not None and tracker.run.failures >= 1 and tracker.run.disabled
    assert any("MLflow" in r.getMessage() and r.levelname == "WARNING" for r in caplog.records)
    # What reached the server before it went away is in its store: epoch 1's loss, nothing later.
    store = MlflowClient(tracking_uri=f"sqlite:///{root / 'server.db'}")
    history = store.get_metric_history(tracker.run.run_id, "train_loss")
    assert [(m.step, m.value) for m in history] == [(1, 1.5)]
