"""int8 post-training quantization: calibration patches from real images, ONNX Runtime ``quantize_static``.

Calibration runs the Predictor's own preprocessing (reorient, resample to the plans' spacing,
intensity step) on each calibration image, cuts patch-size windows on a regular grid of the network
grid (the windows the sliding window feeds the network), keeps those that hold some body (at least 5%
of voxels above the intensity floor), and feeds an evenly spaced selection of them to
``onnxruntime.quantization.quantize_static`` (QDQ format, MinMax ranges, int8 per-channel weights and
uint8 activations, convolutions only: normalisation and activations stay fp32). The QDQ model runs in
ONNX Runtime and, converted, in OpenVINO and TensorRT (explicit quantization).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from medunet.engines.artifact import INPUT_NAME
from medunet.engines.runtime import require
from medunet.errors import DatasetError, EngineError, MedunetError
from medunet.plans import Plans
from medunet.slices import axial_stacks

logger = logging.getLogger(__name__)

#: Op types quantized to int8 (the compute); everything else stays fp32.
QUANTIZED_OPS = ("Conv", "ConvTranspose")


@dataclass
class CalibrationSet:
    """Preprocessed calibration windows ``(1, C, *patch)`` and where they came from."""

    patches: list[np.ndarray]
    source: str
    cases: list[str] = field(default_factory=list)

    def describe(self) -> dict[str, Any]:
        return {"dataset": self.source, "cases": self.cases, "patches": len(self.patches)}


def calibration_images(dataset: str | Path) -> list[Path | Any]:
    """Image paths (or dataset cases) to calibrate on: a dataset folder, a folder of images, or files."""
    from medunet.evaluation import expand_inputs

    path = Path(dataset)
    if path.is_dir() and any((path / n).exists() for n in ("dataset.json", "imagesTr", "images")):
        from medunet.data.layouts import load_dataset

        datalist = load_dataset(path)
        cases = list(datalist.training) + list(datalist.test)
        if not cases:
            raise DatasetError(path, "calibration dataset has no cases")
        return cases
    return expand_inputs(path)


def _windows(shape: tuple[int, ...], patch: tuple[int, ...]) -> Iterator[tuple[slice, ...]]:
    starts = [range(0, max(n - p, 0) + 1, p) if n > p else [0] for n, p in zip(shape, patch, strict=True)]
    for corner in itertools.product(*starts):
        yield tuple(slice(c, c + p) for c, p in zip(corner, patch, strict=True))


def _pad_to(t: torch.Tensor, patch: tuple[int, ...]) -> torch.Tensor:
    """Zero-pad the trailing spatial dims of ``(C, *spatial)`` up to ``patch`` (as the sliding window)."""
    pads: list[int] = []
    for n, p in zip(reversed(t.shape[1:]), reversed(patch), strict=True):
        pads += [0, max(p - n, 0)]
    return torch.nn.functional.pad(t, pads) if any(pads) else t


def _case_patches(x: torch.Tensor, plans: Plans, per_case: int) -> list[np.ndarray]:
    """Body-holding windows of one preprocessed volume ``(1, C, X, Y, Z)``, evenly spaced."""
    patch = tuple(int(p) for p in plans.patch_size)
    floor = float(x.min())
    if plans.spatial_dims == 3:
        vol = _pad_to(x[0], patch)
        candidates = [vol[(slice(None), *w)] for w in _windows(tuple(vol.shape[1:]), patch)]
    else:
        depth = x.shape[-1]
        zs = np.linspace(0, depth - 1, num=min(depth, max(per_case * 2, 1))).round().astype(int)
        candidates = []
        for z in sorted(set(zs.tolist())):
            sl = _pad_to(axial_stacks(x[0], z, z + 1, plans.context_slices)[0], patch)  # with 2.5D context
            candidates += [sl[(slice(None), *w)] for w in _windows(tuple(sl.shape[1:]), patch)]
    body = [c for c in candidates if float((c > floor).float().mean()) >= 0.05] or candidates
    picks = np.linspace(0, len(body) - 1, num=min(per_case, len(body))).round().astype(int)
    return [body[i].unsqueeze(0).numpy().astype(np.float32) for i in sorted(set(picks.tolist()))]


def build_calibration_set(
    dataset: str | Path, plans: Plans, *, max_cases: int = 4, patches_per_case: int = 4
) -> CalibrationSet:
    """Preprocess up to ``max_cases`` images of ``dataset`` and cut calibration windows from them."""
    from medunet.evaluation import _read_case_image, case_name
    from medunet.inference import Predictor
    from medunet.io import read_image

    items = calibration_images(dataset)[: max(1, max_cases)]
    predictor = Predictor(torch.nn.Identity(), plans, device="cpu", amp=False)
    out = CalibrationSet([], str(dataset))
    for item in items:
        try:
            if isinstance(item, Path):
                volume, name = read_image(item), case_name(item)
            else:
                volume, name = _read_case_image(item), item.images[0].name
            x, _ = predictor.preprocess(volume)
        except MedunetError as exc:
            logger.warning("calibration: skipping %s", exc)
            continue
        out.patches += _case_patches(x, plans, patches_per_case)
        out.cases.append(name)
    if not out.patches:
        raise DatasetError(dataset, "no usable calibration image")
    logger.info("calibration: %d windows from %d image(s) of %s", len(out.patches), len(out.cases), dataset)
    return out


def quantize_onnx(src: Path, dst: Path, calibration: CalibrationSet) -> dict[str, Any]:
    """Static int8 quantization of ``src`` into ``dst`` (QDQ); returns the settings for the metadata."""
    require("onnx", "int8 export")
    ort = require("onnxruntime", "int8 export")
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class _Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it = iter(calibration.patches)

        def get_next(self) -> dict[str, np.ndarray] | None:
            patch = next(self._it, None)
            return None if patch is None else {INPUT_NAME: patch}

    prepared = dst.with_name(dst.stem + ".pre.onnx")
    root = logging.getLogger()
    level = root.level
    root.setLevel(logging.ERROR)  # onnxruntime.quantization logs per-tensor notes on the root logger
    try:
        quant_pre_process(str(src), str(prepared), skip_symbolic_shape=True)
        quantize_static(
            str(prepared),
            str(dst),
            _Reader(),
            quant_format=QuantFormat.QDQ,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=list(QUANTIZED_OPS),
        )
    except Exception as exc:
        raise EngineError(src, f"int8 quantization failed: {type(exc).__name__}: {exc}") from None
    finally:
        root.setLevel(level)
        prepared.unlink(missing_ok=True)
    return {
        "method": "onnxruntime.quantization.quantize_static",
        "onnxruntime": ort.__version__,
        "format": "QDQ",
        "calibrate_method": "MinMax",
        "activations": "uint8",
        "weights": "int8 per-channel",
        "quantized_ops": list(QUANTIZED_OPS),
        "calibration": calibration.describe(),
    }
