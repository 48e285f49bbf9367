"""Inference engines: export a trained network (TorchScript, ONNX, OpenVINO, TensorRT) and run it.

``medunet export`` writes a self-describing artefact folder (:mod:`medunet.engines.artifact`);
``medunet predict --engine`` swaps only the network forward of the Predictor for the engine's
(:mod:`medunet.engines.runtime`): preprocessing, sliding window, blending, resampling of class scores
and post-processing are the same code for every engine.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import torch

from medunet.engines.artifact import (
    ENGINE_FORMATS,
    ENGINES,
    FORMATS,
    METADATA_NAME,
    EngineArtifact,
    default_output,
    plans_sha256,
)
from medunet.engines.runtime import load_runner, runtime_available
from medunet.errors import CheckpointError, ConfigError

logger = logging.getLogger(__name__)

__all__ = [
    "ENGINES",
    "ENGINE_FORMATS",
    "FORMATS",
    "METADATA_NAME",
    "EngineArtifact",
    "default_output",
    "open_engine",
    "plans_sha256",
    "runtime_available",
]


def open_engine(
    engine: str,
    *,
    checkpoint: str | Path | None = None,
    engine_model: str | Path | None = None,
    device: str | torch.device = "cpu",
) -> tuple[torch.nn.Module, EngineArtifact]:
    """The runner of ``engine`` and its verified artefact.

    The artefact is ``engine_model`` when given (checked against ``checkpoint`` when that is given
    too: another checkpoint or other plans raise :class:`~medunet.errors.EngineMismatchError`), else
    ``medunet export``'s default folder next to ``checkpoint`` when it exists, else an fp32 export of
    ``checkpoint`` into a temporary folder made now (the runner holds the loaded model; the folder is
    removed).
    """
    if engine not in ENGINES or engine == "torch":
        raise ConfigError(None, f"unknown engine {engine!r}; choose one of {', '.join(ENGINES[1:])}")
    if engine_model is None and checkpoint is None:
        raise ConfigError(None, f"engine {engine!r} needs an exported model (--engine-model) or a checkpoint")
    if checkpoint is not None and not Path(checkpoint).is_file():
        raise CheckpointError(checkpoint, "checkpoint file does not exist")
    fmt = ENGINE_FORMATS[engine][0]
    if engine_model is None:
        assert checkpoint is not None
        candidate = default_output(checkpoint, fmt)
        if (candidate / METADATA_NAME).is_file():
            engine_model = candidate
    if engine_model is not None:
        artifact = EngineArtifact.load(engine_model)
        if checkpoint is not None:
            artifact.check_against(checkpoint=checkpoint)
        runner = load_runner(artifact, engine, device)
        logger.info("engine %s: %s (%s, %s)", engine, artifact.directory, artifact.format, artifact.precision)
        return runner, artifact
    from medunet.engines.export import export_checkpoint

    with tempfile.TemporaryDirectory(prefix="medunet-engine-") as tmp:
        logger.info("engine %s: exporting %s to %s first (medunet export keeps it)", engine, checkpoint, fmt)
        artifact = export_checkpoint(checkpoint, fmt, Path(tmp) / "engine")  # type: ignore[arg-type]
        runner = load_runner(artifact, engine, device)
    return runner, artifact
