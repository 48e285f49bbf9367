"""Export a trained network to an engine artefact: TorchScript, ONNX, OpenVINO IR or a TensorRT engine.

:func:`export_checkpoint` loads a checkpoint (network + plans) and calls :func:`export_module`, which
traces the network on a batch of patch-size windows, writes the engine file into a ``.partial``
folder, checks the engine against PyTorch on the same windows where its runtime is installed, writes
``medunet_engine.json`` last and moves the folder into place. ONNX uses the TorchScript-based
exporter (``dynamo=False``) with dynamic batch and spatial axes; OpenVINO converts that ONNX file
(``openvino.convert_model`` / ``save_model``, fp32 weights); TensorRT builds from it on CUDA.
``int8`` quantizes the ONNX graph with calibration windows of a dataset first
(:mod:`medunet.engines.calibration`); TorchScript has no int8 path here.
"""

from __future__ import annotations

import logging
import shutil
import warnings
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch

from medunet import __version__
from medunet.engines.artifact import (
    ARTIFACT_FORMAT,
    FORMATS,
    INPUT_NAME,
    METADATA_NAME,
    MODEL_FILES,
    OUTPUT_NAME,
    EngineArtifact,
    default_output,
    plans_sha256,
    write_metadata,
)
from medunet.engines.runtime import load_runner, require, runtime_available
from medunet.errors import ConfigError, EngineError
from medunet.io.digest import file_sha256, recorded_sha256
from medunet.plans import Plans

logger = logging.getLogger(__name__)

DEFAULT_OPSET = 17
#: The runtime that checks each format at export time.
CHECK_ENGINE = {
    "torchscript": "torchscript",
    "onnx": "onnxruntime",
    "openvino": "openvino",
    "tensorrt": "tensorrt",
}


class _ExportWrapper(torch.nn.Module):
    """Full-resolution float32 logits whatever the network returns (deep supervision heads dropped)."""

    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.net(x)
        if isinstance(out, list | tuple):
            out = out[0]
        elif out.ndim == x.ndim + 1:
            out = out[:, 0]
        return out.float()


def example_input(plans: Plans, batch: int = 2, seed: int = 0) -> torch.Tensor:
    """A seeded batch of patch-size windows in ``[0, 1]`` (the CT window's range)."""
    g = torch.Generator().manual_seed(seed)
    return torch.rand((batch, plans.network_in_channels, *plans.patch_size), generator=g)


def _export_onnx(module: torch.nn.Module, x: torch.Tensor, path: Path, opset: int) -> None:
    require("onnx", "ONNX export")
    import onnx

    spatial = {i + 2: f"s{i}" for i in range(x.ndim - 2)}
    axes = {INPUT_NAME: {0: "batch", **spatial}, OUTPUT_NAME: {0: "batch", **spatial}}
    with warnings.catch_warnings():
        warnings.simplefilter(
            "ignore"
        )  # TracerWarning (shape checks in MONAI blocks), legacy-exporter notice
        try:
            torch.onnx.export(
                module,
                (x,),
                str(path),
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                do_constant_folding=True,
            )
        except Exception as exc:
            raise EngineError(path, f"torch.onnx.export failed: {type(exc).__name__}: {exc}") from None
    onnx.checker.check_model(str(path))


def _export_torchscript(module: torch.nn.Module, x: torch.Tensor, path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torch.jit deprecation notice, TracerWarning
        try:
            traced = torch.jit.trace(module, x, check_trace=False)
        except Exception as exc:
            raise EngineError(path, f"torch.jit.trace failed: {type(exc).__name__}: {exc}") from None
    traced.save(str(path))


def _export_openvino(onnx_path: Path, xml_path: Path) -> str:
    ov = require("openvino", "OpenVINO export")
    try:
        model = ov.convert_model(str(onnx_path))
        ov.save_model(model, str(xml_path), compress_to_fp16=False)
    except Exception as exc:
        raise EngineError(onnx_path, f"OpenVINO conversion failed: {type(exc).__name__}: {exc}") from None
    return str(ov.__version__)


def _check_engine(artifact: EngineArtifact, reference: torch.Tensor, x: torch.Tensor) -> dict[str, Any]:
    """Run the engine on the export windows; compare with PyTorch's logits."""
    engine = CHECK_ENGINE[artifact.format]
    if not runtime_available(engine):
        return {"engine": engine, "skipped": f"{engine} not available here"}
    device = "cuda" if engine == "tensorrt" else "cpu"
    runner = load_runner(artifact, engine, device)
    with torch.inference_mode():
        out = runner(x.to(device)).float().cpu()
    if out.shape != reference.shape:
        raise EngineError(
            artifact.model_path, f"engine output {tuple(out.shape)} != PyTorch {tuple(reference.shape)}"
        )
    diff = float((out - reference).abs().max())
    agree = float((out.argmax(1) == reference.argmax(1)).float().mean())
    return {
        "engine": engine,
        "windows": int(x.shape[0]),
        "max_abs_logit_diff": diff,
        "max_abs_logit": float(reference.abs().max()),
        "argmax_agreement": agree,
    }


def export_module(
    net: torch.nn.Module,
    plans: Plans,
    fmt: str,
    output: str | Path,
    *,
    checkpoint: str | Path | None = None,
    checkpoint_sha256: str | None = None,
    int8: bool = False,
    calibration: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    max_batch: int = 4,
    calibration_cases: int = 4,
    calibration_patches: int = 4,
) -> EngineArtifact:
    """Export ``net`` (with its ``plans``) as a ``fmt`` artefact folder at ``output``; returns it loaded."""
    if fmt not in FORMATS:
        raise ConfigError(None, f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if int8 and fmt == "torchscript":
        raise EngineError(None, "int8 export is available for onnx, openvino and tensorrt, not torchscript")
    if int8 and calibration is None:
        raise ConfigError(None, "--int8 needs --calibration DATASET (images to calibrate activation ranges)")
    if fmt == "tensorrt":
        from medunet.engines.tensorrt import require_tensorrt

        require_tensorrt()  # fail before any work on a machine without CUDA / TensorRT
    output = Path(output)
    if output.exists() and not (output / METADATA_NAME).is_file() and any(output.iterdir()):
        raise ConfigError(output, "output folder exists and is not an engine artefact; choose another")
    partial = output.with_name(output.name + ".partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    module = _ExportWrapper(net.to("cpu").float().eval()).eval()
    x = example_input(plans)
    with torch.inference_mode():
        reference = module(x).float()
    versions: dict[str, Any] = {"torch": torch.__version__}
    int8_info: dict[str, Any] | None = None
    model_file = MODEL_FILES[fmt]
    extra: dict[str, Any] = {}
    try:
        if fmt == "torchscript":
            _export_torchscript(module, x, partial / model_file)
        else:
            onnx_path = partial / ("model.onnx" if fmt == "onnx" else "model.fp32.onnx")
            _export_onnx(module, x, onnx_path, opset)
            versions["opset"] = opset
            import onnx

            versions["onnx"] = onnx.__version__
            if int8:
                from medunet.engines.calibration import build_calibration_set, quantize_onnx

                calib = build_calibration_set(
                    calibration,  # type: ignore[arg-type]
                    plans,
                    max_cases=calibration_cases,
                    patches_per_case=calibration_patches,
                )
                fp32 = onnx_path.with_name("model.fp32_q.onnx")
                onnx_path.rename(fp32)
                int8_info = quantize_onnx(fp32, onnx_path, calib)
                fp32.unlink()
            if fmt == "openvino":
                versions["openvino"] = _export_openvino(onnx_path, partial / model_file)
                onnx_path.unlink()
            elif fmt == "tensorrt":
                from medunet.engines.tensorrt import build_engine

                extra["tensorrt"] = build_engine(
                    onnx_path, partial / model_file, plans.patch_size, plans.network_in_channels,
                    max_batch=max_batch, int8=int8,
                )  # fmt: skip
                onnx_path.unlink()
        files = {p.name: file_sha256(p) for p in sorted(partial.iterdir()) if p.is_file()}
        ckpt_sha = checkpoint_sha256
        if ckpt_sha is None and checkpoint is not None:
            ckpt_sha = recorded_sha256(checkpoint)
        meta: dict[str, Any] = {
            "format": ARTIFACT_FORMAT,
            "engine_format": fmt,
            "model_file": model_file,
            "files": files,
            "created_utc": datetime.now(UTC).isoformat(timespec="seconds"),
            "medunet": __version__,
            "exporter": versions,
            "input": {
                "name": INPUT_NAME,
                "dtype": "float32",
                "layout": "NC" + "XYZ"[: plans.spatial_dims],
                "channels": plans.network_in_channels,
                "shape": [None, plans.network_in_channels, *plans.patch_size],
                "dynamic_axes": "batch and spatial" if fmt != "tensorrt" else "batch",
            },
            "output": {
                "name": OUTPUT_NAME,
                "dtype": "float32",
                "channels": plans.num_classes,
                "kind": "logits",
            },
            "precision": "int8" if int8 else "fp32",
            "int8": int8_info,
            "checkpoint": None
            if checkpoint is None and ckpt_sha is None
            else {"name": None if checkpoint is None else Path(checkpoint).name, "sha256": ckpt_sha},
            "plans_sha256": plans_sha256(plans),
            "plans": plans.to_dict(),
            **extra,
        }
        write_metadata(partial, meta)
        artifact = EngineArtifact.load(partial)
        meta["export_check"] = _check_engine(artifact, reference, x)
        write_metadata(partial, meta)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    if output.exists():
        shutil.rmtree(output)
    partial.rename(output)
    logger.info(
        "exported %s%s to %s (check: %s)",
        fmt,
        " int8" if int8 else "",
        output,
        {k: v for k, v in meta["export_check"].items() if k != "engine"},
    )
    return EngineArtifact.load(output)


def export_checkpoint(
    checkpoint: str | Path,
    fmt: str,
    output: str | Path | None = None,
    **kwargs: Any,
) -> EngineArtifact:
    """Load ``checkpoint`` (network + plans) and export it (see :func:`export_module`).

    ``output`` defaults to ``<checkpoint folder>/<stem>_<format>[_int8]``.
    """
    from medunet.training.checkpoint import load_model

    if fmt == "tensorrt":
        from medunet.engines.tensorrt import require_tensorrt

        require_tensorrt()
    net, plans = load_model(checkpoint)
    out = Path(output) if output is not None else default_output(checkpoint, fmt, bool(kwargs.get("int8")))
    return export_module(net, plans, fmt, out, checkpoint=checkpoint, **kwargs)
