"""Training state for checkpoints: RNG states in ``weights_only``-safe form, and finding a resume point."""

from __future__ import annotations

import logging
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medunet.errors import CheckpointError
from medunet.training.checkpoint import load_checkpoint

logger = logging.getLogger(__name__)


def rng_state() -> dict[str, Any]:
    """Python, NumPy and torch RNG states as tensors / lists / ints (loadable with ``weights_only``)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state: dict[str, Any] = {
        "python": [version, list(internal), gauss],
        "numpy": {
            "name": str(name),
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(x) for x in internal), gauss))
    n = state["numpy"]
    np.random.set_state(
        (n["name"], np.asarray(n["keys"], dtype=np.uint32), n["pos"], n["has_gauss"], n["cached_gaussian"])
    )
    torch.set_rng_state(torch.as_tensor(state["torch"], dtype=torch.uint8).cpu())
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([torch.as_tensor(s, dtype=torch.uint8).cpu() for s in state["cuda"]])


def find_resume_checkpoint(output_dir: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest *valid* training checkpoint in ``output_dir`` (by epoch, then iteration).

    Damaged or half-written files (checksum missing or wrong) are skipped with a warning, so a run
    killed while writing a checkpoint resumes from the previous complete one.
    """
    best: tuple[tuple[int, int], Path, dict[str, Any]] | None = None
    for path in sorted(Path(output_dir).glob("*.pt")):
        try:
            state = load_checkpoint(path)
        except CheckpointError as exc:
            logger.warning("resume: skipping %s", exc)
            continue
        if "optimizer" not in state or "epoch" not in state:
            continue  # a weights-only export, not a training state
        key = (int(state["epoch"]), int(state.get("iteration", 0)))
        if best is None or key > best[0]:
            best = (key, path, state)
    return None if best is None else (best[1], best[2])
