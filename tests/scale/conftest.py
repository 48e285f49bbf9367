"""Fixtures for the archive / Ray tests: a tiny real checkpoint, synthetic CT cases, a Ray head node.

Ray workers are separate processes, so the model must be a real checkpoint (the monkeypatched fake of
``tests/test_predict_cli.py`` does not reach them): a tiny MONAI UNet, random weights, a few hundred KB.
"""

from __future__ import annotations

import os
import secrets
import sys
from pathlib import Path

# Before anything imports ray: token authentication with a token of this test session, for the
# local runtimes and the `ray start --head` node alike (Ray enables it only where a token exists,
# and a driver joining by an explicit address needs RAY_AUTH_MODE=token set, so make both explicit;
# nothing is written to ~/.ray).
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

sys.path.insert(0, str(Path(__file__).parent))
