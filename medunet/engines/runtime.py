"""Engine runners: an exported artefact behind the ``torch.nn.Module`` interface the Predictor calls.

Each runner's ``forward`` takes a float32 window batch ``(B, C, *patch)`` and returns the logits
``(B, K, *patch)`` as a float32 tensor on the input's device, so the Predictor's preprocessing,
sliding window, blending, TTA, resampling of class scores and post-processing are the same code for
every engine; only the network forward differs. Runtimes are imported lazily; a missing one raises
:class:`~medunet.errors.EngineUnavailableError`.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
from typing import Any

import numpy as np
import torch

from medunet.engines.artifact import EngineArtifact
from medunet.errors import EngineError, EngineUnavailableError

logger = logging.getLogger(__name__)


def require(module: str, what: str) -> Any:
    """Import ``module`` or raise :class:`EngineUnavailableError` saying which package ``what`` needs."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise EngineUnavailableError(
            None,
            f"{what} needs the {module!r} package ({exc}); install it with "
            f"pip install 'medunet[engines]' (or pip install {module})",
        ) from None


def runtime_available(engine: str) -> bool:
    """Whether ``engine`` can run here (its package imports; TensorRT also needs CUDA)."""
    if engine in ("torch", "torchscript"):
        return True
    if engine == "tensorrt":
        return torch.cuda.is_available() and importlib.util.find_spec("tensorrt") is not None
    return importlib.util.find_spec(engine) is not None


class EngineModule(torch.nn.Module):
    """Base runner: numpy in, numpy out; the Predictor sees a parameter-free module."""

    engine = "?"

    def __init__(self, artifact: EngineArtifact) -> None:
        super().__init__()
        self.artifact = artifact

    def run(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - overridden
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        out = self.run(arr)
        return torch.from_numpy(np.asarray(out, dtype=np.float32)).to(x.device)

    def extra_repr(self) -> str:
        return f"engine={self.engine}, artefact={self.artifact.directory}"


def _threads() -> int:
    return max(1, torch.get_num_threads())


class OnnxRuntimeModule(EngineModule):
    """ONNX Runtime on CPU; intra-op threads = ``torch.get_num_threads()``, one inter-op thread."""

    engine = "onnxruntime"

    def __init__(self, artifact: EngineArtifact) -> None:
        super().__init__(artifact)
        ort = require("onnxruntime", "the onnxruntime engine")
        options = ort.SessionOptions()
        options.intra_op_num_threads = _threads()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        try:
            self.session = ort.InferenceSession(
                str(artifact.model_path), options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own exception types
            raise EngineError(artifact.model_path, f"onnxruntime cannot load the model: {exc}") from None
        self.input_name = self.session.get_inputs()[0].name

    def run(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self.input_name: x})[0]


class OpenVinoModule(EngineModule):
    """OpenVINO on ``"CPU"`` with fp32 inference precision (no implicit bf16 on CPUs that have it)."""

    engine = "openvino"

    def __init__(self, artifact: EngineArtifact) -> None:
        super().__init__(artifact)
        ov = require("openvino", "the openvino engine")
        core = ov.Core()
        config = {
            "INFERENCE_PRECISION_HINT": "f32",
            "INFERENCE_NUM_THREADS": _threads(),
            "PERFORMANCE_HINT": "LATENCY",
        }
        try:
            self.compiled = core.compile_model(str(artifact.model_path), "CPU", config)
        except Exception as exc:
            raise EngineError(artifact.model_path, f"openvino cannot compile the model: {exc}") from None
        self.request = self.compiled.create_infer_request()
        self.output = self.compiled.output(0)

    def run(self, x: np.ndarray) -> np.ndarray:
        result = self.request.infer({0: x})
        return np.array(result[self.output], copy=True)


class TorchScriptModule(EngineModule):
    """A traced TorchScript module (``torch.jit.load``), on the Predictor's device."""

    engine = "torchscript"

    def __init__(self, artifact: EngineArtifact, device: torch.device | None = None) -> None:
        super().__init__(artifact)
        try:
            self.module = torch.jit.load(str(artifact.model_path), map_location=device or "cpu").eval()
        except Exception as exc:
            raise EngineError(artifact.model_path, f"torch.jit cannot load the model: {exc}") from None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # The profiling executor re-specialises the graph for every new window-batch shape (the last
        # batch, 2D slice batches): seconds of warm-up per shape for no steady-state gain on CPU here.
        with torch.jit.optimized_execution(False):
            return self.module(x.float().contiguous()).float()


def load_runner(artifact: EngineArtifact, engine: str, device: torch.device | str = "cpu") -> torch.nn.Module:
    """The runner of ``engine`` for ``artifact`` (checks that the engine runs the artefact's format)."""
    artifact.check_runs_on(engine)
    device = torch.device(device)
    if engine in ("onnxruntime", "openvino") and device.type != "cpu":
        raise EngineError(None, f"engine {engine!r} runs on the CPU here; pass --device cpu")
    if engine == "onnxruntime":
        return OnnxRuntimeModule(artifact)
    if engine == "openvino":
        return OpenVinoModule(artifact)
    if engine == "torchscript":
        return TorchScriptModule(artifact, device)
    if engine == "tensorrt":
        from medunet.engines.tensorrt import TensorRTModule

        return TensorRTModule(artifact, device)
    raise EngineError(None, f"unknown engine {engine!r}")
