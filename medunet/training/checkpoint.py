"""Checkpoints: full training state, written atomically, verified by checksum, loaded safely.

Format: a ``torch.save`` dict with ``format == CHECKPOINT_FORMAT`` and keys ``model`` (state dict),
``plans`` (:meth:`Plans.to_dict`), and for training state ``optimizer``, ``scheduler``, ``scaler``,
``epoch``, ``iteration``, ``best_metric``, ``rng``. Next to ``X.pt`` a ``X.pt.sha256`` holds the
file's digest; a file whose digest does not match is treated as damaged. Loading always uses
``weights_only=True``, so a checkpoint cannot run code.
"""

from __future__ import annotations

import hashlib
import io
import logging
from pathlib import Path
from typing import Any

import torch

from medunet.errors import CheckpointError
from medunet.io.atomic import atomic_write_bytes, atomic_write_text
from medunet.io.digest import sidecar_path
from medunet.plans import Plans

logger = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "medunet-checkpoint/1"


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` to ``path`` atomically (temp file, fsync, rename) with a sha256 sidecar.

    The payload is written before its digest, so a crash between the two leaves a checkpoint whose
    digest is missing or stale: :func:`load_checkpoint` then refuses it and resume falls back to an
    older one.
    """
    path = Path(path)
    buffer = io.BytesIO()
    torch.save({"format": CHECKPOINT_FORMAT, **state}, buffer)
    payload = buffer.getvalue()
    digest_path = sidecar_path(path)
    digest_path.unlink(missing_ok=True)
    atomic_write_bytes(path, payload)
    atomic_write_text(digest_path, hashlib.sha256(payload).hexdigest() + "\n")
    return path


def load_checkpoint(
    path: str | Path, map_location: str | torch.device = "cpu", *, verify: bool = True
) -> dict[str, Any]:
    """Load a checkpoint with ``weights_only=True``; :class:`CheckpointError` if missing or damaged."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(path, "checkpoint file does not exist")
    payload = path.read_bytes()
    if verify:
        digest_path = sidecar_path(path)
        if not digest_path.is_file():
            raise CheckpointError(
                path, f"no checksum file {digest_path.name}: incomplete or foreign checkpoint"
            )
        expected = digest_path.read_text().strip()
        if hashlib.sha256(payload).hexdigest() != expected:
            raise CheckpointError(path, "checksum mismatch: the file is damaged or was partly written")
    try:
        state = torch.load(io.BytesIO(payload), map_location=map_location, weights_only=True)
    except Exception as exc:  # pickle/zip errors come in many types
        raise CheckpointError(path, f"not a loadable checkpoint ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(path, "not a medunet checkpoint (no 'model' state)")
    return state


def is_valid_checkpoint(path: str | Path) -> bool:
    """Whether ``path`` holds a complete checkpoint whose checksum matches."""
    try:
        load_checkpoint(path)
    except CheckpointError:
        return False
    return True


def load_model(path: str | Path, map_location: str | torch.device = "cpu") -> tuple[torch.nn.Module, Plans]:
    """Rebuild the network a checkpoint was trained with and load its weights (eval mode)."""
    from medunet.networks import build_network

    state = load_checkpoint(path, map_location)
    if "plans" not in state:
        raise CheckpointError(path, "checkpoint has no plans: cannot rebuild the network")
    plans = Plans.from_dict(state["plans"])
    net = build_network(
        plans.network,
        plans.spatial_dims,
        plans.network_in_channels,
        plans.num_classes,
        **plans.network_kwargs,
    )
    try:
        net.load_state_dict(state["model"])
    except RuntimeError as exc:
        raise CheckpointError(
            path, f"weights do not fit network {plans.network!r}: {str(exc).splitlines()[0]}"
        ) from None
    return net.eval(), plans
