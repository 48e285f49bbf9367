"""Shared fixtures and skip markers (MONAI-style: no CUDA, no real data, optional modules)."""

from __future__ import annotations

import os
import secrets
import tempfile
from pathlib import Path

# Ray reads its authentication mode when it is imported, and collecting any test module that does
# `pytest.importorskip("ray")` imports it (tests/benchmarks sorts before tests/scale): so set it here,
# in the first conftest, not in tests/scale. Token authentication with a token of this test session,
# for the local runtimes and the `ray start --head` node alike (a driver joining by an explicit address
# needs RAY_AUTH_MODE=token); nothing is written to ~/.ray.
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np
import pytest

# `medunet predict` on a CPU exports its OpenVINO engine once per checkpoint into a user cache
# (~/.cache/medunet): the suite's exports go to a folder of this session (and subprocesses follow it).
_ENGINE_CACHE = tempfile.TemporaryDirectory(prefix="medunet-test-cache-")
os.environ["MEDUNET_CACHE_DIR"] = _ENGINE_CACHE.name

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("MEDUNET_SHARED_DATA", REPO.parent / "shared" / "data"))
OPENKBP = SHARED_DATA / "openkbp_hn_ct"
DICOM_QA = SHARED_DATA / "dicom_qa"


def _has_cuda() -> bool:
    try:
        import torch

        return torch.cuda.is_available()
    except Exception:
        return False


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_gpu = pytest.mark.skip(reason="needs CUDA; no GPU on this machine")
    for item in items:
        if "gpu" in item.keywords and not _has_cuda():
            item.add_marker(skip_gpu)


@pytest.fixture(scope="session")
def openkbp_dir() -> Path:
    if not (OPENKBP / "dataset.json").is_file():
        pytest.skip(f"real data absent: {OPENKBP} (../shared/data is not next to the checkout)")
    return OPENKBP


@pytest.fixture(scope="session")
def dicom_qa_dir() -> Path:
    if not DICOM_QA.is_dir():
        pytest.skip(f"real data absent: {DICOM_QA} (../shared/data is not next to the checkout)")
    return DICOM_QA


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(0)
