"""TensorRT: build a serialized engine (``model.plan``) from the exported ONNX file and run it on CUDA.

TensorRT needs an NVIDIA GPU with CUDA and the ``tensorrt`` package; without either,
:func:`require_tensorrt` raises :class:`~medunet.errors.EngineUnavailableError` -- nothing is emulated.
The engine has one optimisation profile: batch 1..``max_batch`` windows of exactly the plans' patch
size (the sliding window always feeds full patches). An int8 export hands TensorRT the quantize /
dequantize (QDQ) ONNX file calibrated by :mod:`medunet.engines.calibration` (explicit quantization).
The engine is tied to the GPU model and TensorRT version it was built with; the metadata records both.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from medunet.engines.artifact import INPUT_NAME, EngineArtifact
from medunet.errors import EngineError, EngineUnavailableError

logger = logging.getLogger(__name__)


def require_tensorrt() -> Any:
    """The ``tensorrt`` module, or :class:`EngineUnavailableError` when CUDA or TensorRT is missing."""
    if not torch.cuda.is_available():
        raise EngineUnavailableError(
            None,
            "TensorRT needs an NVIDIA GPU with CUDA and the tensorrt package; this machine has no CUDA "
            "device (torch.cuda.is_available() is False). Use --format onnx / openvino / torchscript "
            "and --engine onnxruntime / openvino / torchscript on CPU",
        )
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise EngineUnavailableError(
            None, f"TensorRT needs CUDA and the tensorrt package ({exc}); pip install tensorrt"
        ) from None
    return trt


def build_engine(
    onnx_path: Path,
    plan_path: Path,
    patch_size: tuple[int, ...],
    in_channels: int,
    *,
    max_batch: int = 4,
    int8: bool = False,
    fp16: bool = False,
    workspace_gib: float = 4.0,
) -> dict[str, Any]:
    """Parse ``onnx_path`` and serialize a TensorRT engine to ``plan_path``; returns build facts."""
    trt = require_tensorrt()
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    flags = 0
    if hasattr(trt.NetworkDefinitionCreationFlag, "EXPLICIT_BATCH"):  # implicit in TensorRT >= 10
        flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse(onnx_path.read_bytes()):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineError(onnx_path, f"TensorRT cannot parse the ONNX model: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(workspace_gib * (1 << 30)))
    if int8:
        config.set_flag(trt.BuilderFlag.INT8)  # explicit quantization: scales come from the QDQ nodes
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    shape = tuple(int(p) for p in patch_size)
    profile.set_shape(
        INPUT_NAME,
        (1, in_channels, *shape),
        (max(1, max_batch // 2), in_channels, *shape),
        (max_batch, in_channels, *shape),
    )
    config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineError(onnx_path, "TensorRT failed to build an engine (see the TensorRT log above)")
    plan_path.write_bytes(bytes(serialized))
    return {
        "tensorrt": trt.__version__,
        "gpu": torch.cuda.get_device_name(0),
        "max_batch": max_batch,
        "fp16": fp16,
    }


class TensorRTModule(torch.nn.Module):
    """A deserialized TensorRT engine; window batches larger than its profile run in chunks."""

    engine = "tensorrt"

    def __init__(self, artifact: EngineArtifact, device: torch.device | str = "cuda") -> None:
        super().__init__()
        trt = require_tensorrt()
        self.artifact = artifact
        self.device_ = torch.device(device if torch.device(device).type == "cuda" else "cuda")
        runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.trt_engine = runtime.deserialize_cuda_engine(artifact.model_path.read_bytes())
        if self.trt_engine is None:
            raise EngineError(
                artifact.model_path,
                "TensorRT cannot deserialize the engine (built for another GPU or TensorRT version?)",
            )
        self.context = self.trt_engine.create_execution_context()
        self.output_name = next(
            self.trt_engine.get_tensor_name(i)
            for i in range(self.trt_engine.num_io_tensors)
            if self.trt_engine.get_tensor_mode(self.trt_engine.get_tensor_name(i)) == trt.TensorIOMode.OUTPUT
        )
        self.max_batch = int((artifact.meta.get("tensorrt") or {}).get("max_batch", 1))

    def _run(self, x: torch.Tensor) -> torch.Tensor:
        self.context.set_input_shape(INPUT_NAME, tuple(x.shape))
        out = torch.empty(tuple(self.context.get_tensor_shape(self.output_name)), device=x.device)
        self.context.set_tensor_address(INPUT_NAME, x.data_ptr())
        self.context.set_tensor_address(self.output_name, out.data_ptr())
        stream = torch.cuda.current_stream(x.device)
        if not self.context.execute_async_v3(stream.cuda_stream):
            raise EngineError(self.artifact.model_path, "TensorRT execution failed")
        stream.synchronize()
        return out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        inp = x.to(self.device_, torch.float32).contiguous()
        parts = [self._run(inp[i : i + self.max_batch]) for i in range(0, inp.shape[0], self.max_batch)]
        return torch.cat(parts).to(x.device)
