"""Inference engines: export a trained network (TorchScript, ONNX, OpenVINO, TensorRT) and run it.

``medunet export`` writes a self-describing artefact folder (:mod:`medunet.engines.artifact`);
``medunet predict --engine`` swaps only the network forward of the Predictor for the engine's
(:mod:`medunet.engines.runtime`): preprocessing, sliding window, blending, resampling of class scores
and post-processing are the same code for every engine.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
import uuid
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
from medunet.io.digest import recorded_sha256

logger = logging.getLogger(__name__)

__all__ = [
    "ENGINES",
    "ENGINE_FORMATS",
    "FORMATS",
    "METADATA_NAME",
    "EngineArtifact",
    "default_output",
    "engine_cache_dir",
    "engine_for_format",
    "open_engine",
    "resolve_engine",
    "plans_sha256",
    "runtime_available",
]


#: ``engine="auto"`` (``medunet predict`` and ``inference.json``'s default) picks the runtime below.
AUTO = "auto"
#: Where exports made for ``--engine`` without an artefact are kept, one folder per checkpoint digest.
CACHE_ENV = "MEDUNET_CACHE_DIR"


def engine_cache_dir() -> Path:
    """``$MEDUNET_CACHE_DIR/engines``, else ``$XDG_CACHE_HOME/medunet/engines`` (``~/.cache``)."""
    root = os.environ.get(CACHE_ENV)
    if not root:
        root = str(Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "medunet")
    return Path(root) / "engines"


def resolve_engine(
    engine: str,
    *,
    device: str | torch.device = "auto",
    models: int = 1,
    bf16_native: bool | None = None,
) -> tuple[str, str]:
    """``(engine, why)``: ``engine`` itself unless it is ``"auto"``, which runs OpenVINO fp32 on a CPU.

    OpenVINO ran the network stage 1.45-1.58x faster than PyTorch fp32 on a 2-core AVX2 EPYC (2D and
    3D UNets) with the same labels to per-label Dice >= 0.9996 (README, "Inference engines"), so it is
    the CPU default where it can run: the ``openvino`` package is installed, one model (an ensemble
    averages several networks' scores and runs in PyTorch), and the CPU has no native bf16 (there
    PyTorch's bf16 autocast is the Predictor's CPU default). On a GPU, PyTorch (bf16 autocast).
    """
    if engine != AUTO:
        if engine not in ENGINES:
            raise ConfigError(None, f"unknown engine {engine!r}; choose one of auto, {', '.join(ENGINES)}")
        return engine, "requested"
    if str(device) == "auto":  # the Predictor's rule: CUDA when present
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    if dev.type != "cpu":
        return "torch", f"auto: PyTorch on {dev.type}"
    if models > 1:
        return "torch", "auto: an ensemble of checkpoints runs in PyTorch"
    if bf16_native is None:
        from medunet.inference.predictor import cpu_has_bf16

        bf16_native = cpu_has_bf16()
    if bf16_native:
        return "torch", "auto: this CPU computes bf16 natively, PyTorch bf16 autocast"
    if not runtime_available("openvino"):
        return (
            "torch",
            "auto: OpenVINO is not installed (pip install 'medunet[engines]' for a faster CPU path)",
        )
    return "openvino", "auto: OpenVINO fp32 on CPU (faster network stage than PyTorch, same labels)"


def engine_for_format(fmt: str) -> str:
    """The runtime that runs an artefact of format ``fmt`` (``onnx`` -> ``onnxruntime``)."""
    return next(e for e, formats in ENGINE_FORMATS.items() if formats[0] == fmt)


def _cached_export(checkpoint: Path, fmt: str) -> Path:
    """The cache folder of ``checkpoint``'s ``fmt`` export, made now if missing (safe under concurrency:
    each process exports into its own folder and renames it into place; the first rename wins)."""
    from medunet.engines.export import export_checkpoint

    root = engine_cache_dir()
    final = root / f"{recorded_sha256(checkpoint)[:24]}_{fmt}"
    if (final / METADATA_NAME).is_file():
        return final
    root.mkdir(parents=True, exist_ok=True)
    mine = root / f".{final.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}"
    try:
        logger.info("engine: exporting %s to %s once, into %s", checkpoint, fmt, root)
        export_checkpoint(checkpoint, fmt, mine)
        try:
            mine.rename(final)
        except OSError:  # another process put its export there first
            if not (final / METADATA_NAME).is_file():
                raise
    finally:
        shutil.rmtree(mine, ignore_errors=True)
    return final


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
    ``medunet export``'s default folder next to ``checkpoint`` when it exists, else the fp32 export of
    ``checkpoint`` in :func:`engine_cache_dir` (made now the first time: the next run starts at once),
    else, where the cache cannot be written, one in a temporary folder.
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
        else:
            try:
                engine_model = _cached_export(Path(checkpoint), fmt)
            except OSError as exc:
                logger.warning(
                    "engine cache %s not writable (%s): exporting to a temporary folder",
                    engine_cache_dir(),
                    exc,
                )
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
