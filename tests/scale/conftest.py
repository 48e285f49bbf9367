"""Fixtures for the archive / Ray tests: a tiny real checkpoint, synthetic CT cases, a Ray head node.

Ray workers are separate processes, so the model must be a real checkpoint (the monkeypatched fake of
``tests/test_predict_cli.py`` does not reach them): a tiny MONAI UNet, random weights, a few hundred KB.
"""

from __future__ import annotations

import sys
from pathlib import Path

# Ray's token authentication is set up in tests/conftest.py: it must happen before anything imports ray.

sys.path.insert(0, str(Path(__file__).parent))
