"""``medunet export``: a checkpoint -> a self-describing inference-engine artefact folder."""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

logger = logging.getLogger(__name__)


def run_export(args: argparse.Namespace) -> int:
    """Handler for ``medunet export``."""
    from medunet.engines.export import export_checkpoint

    artifact = export_checkpoint(
        Path(args.checkpoint),
        args.format,
        args.output,
        int8=args.int8,
        calibration=args.calibration,
        opset=args.opset,
        max_batch=args.max_batch,
        calibration_cases=args.calibration_cases,
    )
    check = artifact.meta.get("export_check") or {}
    logger.info(
        "wrote %s: %s (%s); plans sha256 %s; check vs PyTorch: %s",
        artifact.directory,
        ", ".join(sorted(artifact.meta["files"])),
        artifact.precision,
        artifact.meta["plans_sha256"][:12],
        json.dumps(check),
    )
    return 0


def add_engine_arguments(parser: argparse.ArgumentParser) -> None:
    """``medunet predict``'s ``--engine`` and ``--engine-model`` options."""
    parser.add_argument(
        "--engine",
        choices=("auto", "torch", "torchscript", "onnxruntime", "openvino", "tensorrt"),
        default="auto",
        help="runtime of the network forward (default: %(default)s = OpenVINO fp32 on a CPU where it is "
        "installed and one checkpoint is given, else PyTorch); the rest of the pipeline is the same. "
        "Engines other than torch run an artefact of medunet export: --engine-model, else the "
        "checkpoint's default export folder, else a cached export (made once, in $MEDUNET_CACHE_DIR or "
        "~/.cache/medunet). tensorrt needs CUDA + tensorrt",
    )
    parser.add_argument(
        "--engine-model",
        metavar="DIR",
        help="engine artefact folder from medunet export (checked against --checkpoint when given)",
    )


def register(subparsers: argparse._SubParsersAction) -> None:
    from medunet.engines.artifact import FORMATS

    p = subparsers.add_parser(
        "export",
        help="export a checkpoint to TorchScript / ONNX / OpenVINO / TensorRT for medunet predict --engine",
        description="Write an engine artefact folder: the engine file plus medunet_engine.json (plans, "
        "their sha256, the checkpoint's sha256, exporter versions, precision, a check against PyTorch).",
    )
    p.add_argument("--checkpoint", required=True, metavar="FILE", help="trained checkpoint (.pt)")
    p.add_argument("--format", required=True, choices=FORMATS, help="engine format")
    p.add_argument(
        "--output",
        "-o",
        default=None,
        metavar="DIR",
        help="artefact folder (default: <checkpoint folder>/<stem>_<format>[_int8], where "
        "medunet predict --engine looks for it)",
    )
    p.add_argument(
        "--int8",
        action="store_true",
        help="static int8 quantization (onnx, openvino, tensorrt) calibrated on --calibration",
    )
    p.add_argument(
        "--calibration",
        metavar="DATASET",
        help="images to calibrate int8 ranges on: a dataset folder, a folder of images or files",
    )
    p.add_argument(
        "--calibration-cases", type=int, default=4, help="images used for calibration (default: %(default)s)"
    )
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default: %(default)s)")
    p.add_argument(
        "--max-batch",
        type=int,
        default=4,
        help="TensorRT: largest window batch of the engine's profile (default: %(default)s)",
    )
    p.set_defaults(func=run_export)
