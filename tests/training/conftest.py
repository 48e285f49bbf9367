"""Fixtures for training tests: a tiny labelled CT dataset (see ``tiny_data``)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from tiny_data import make_tiny_ct_dataset  # noqa: E402


@pytest.fixture
def tiny_dataset(tmp_path: Path) -> Path:
    return make_tiny_ct_dataset(tmp_path / "tiny_ct")
