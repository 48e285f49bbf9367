"""``Predictor``: a trained network plus its ``Plans`` -> integer label maps on the source grid.

The fast path keeps everything on the compute device as tensor ops: reorientation is a transpose and
flips, resampling is a separable linear interpolation that reproduces MONAI's ``Spacing`` exactly, the
intensity step is the one from ``Plans.intensity``; then MONAI's sliding-window inferer with gaussian
blending runs under ``torch.inference_mode`` (AMP on CUDA), the argmax is taken on the network grid,
and only the label map travels back to the source grid (nearest neighbour + inverse transpose/flips).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import logging
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from medunet.errors import InvalidImageError
from medunet.inference.geometry import (
    Box,
    GridMap,
    foreground_box,
    plan_grid,
    resample_to_network,
    resample_to_ras,
    source_to_network,
    to_ras,
)
from medunet.inference.geometry import from_ras as _from_ras
from medunet.inference.postprocess import fill_holes, keep_largest_component
from medunet.io.volume import Volume
from medunet.plans import Intensity, Plans

logger = logging.getLogger(__name__)

#: Sliding-window overlap. 0.25 with Gaussian blending needs a third of the windows of 0.5 and agreed
#: with stock MONAI at 0.5 on >= 99.5% of voxels (benchmarks/bench_inference.py).
DEFAULT_OVERLAP = 0.25

BlendMode = Literal["gaussian", "constant"]


@dataclass
class Prediction:
    """A prediction on the source grid of the input volume.

    ``labels`` has the volume's shape and lies on ``affine`` (the volume's affine); ``uncertainty`` is
    the voxel-wise softmax entropy divided by ``log(num_classes)`` (0 = certain, 1 = uniform);
    ``probabilities`` is ``(num_classes, X, Y, Z)`` float32 when requested. ``network_box`` is the
    part of the network grid the network ran on (``None``: all of it; outside it, background).
    """

    labels: np.ndarray
    affine: np.ndarray
    label_names: dict[int, str]
    uncertainty: np.ndarray | None = None
    probabilities: np.ndarray | None = None
    timings: dict[str, float] = field(default_factory=dict)
    network_box: tuple[tuple[int, int], ...] | None = None


def normalize_intensity(t: torch.Tensor, intensity: Intensity) -> torch.Tensor:
    """Apply the plans' intensity step to a float tensor ``(C, X, Y, Z)``, per channel.

    ``ct_window`` matches ``ScaleIntensityRanged(a_min, a_max, 0, 1, clip=True)``; ``zscore_nonzero``
    matches ``NormalizeIntensityd(nonzero=True, channel_wise=True)`` (population std, zeros kept).
    The CT window is applied in place (``t`` is overwritten); the z-score returns a new tensor.
    """
    if intensity.kind == "ct_window":
        return t.sub_(intensity.a_min).div_(intensity.a_max - intensity.a_min).clamp_(0.0, 1.0)
    out = t.clone()
    for c in range(t.shape[0]):
        mask = t[c] != 0
        if not bool(mask.any()):
            continue
        values = t[c][mask]
        mean = values.mean()
        std = values.std(unbiased=False)
        std = torch.where(std == 0, torch.ones_like(std), std)
        out[c][mask] = (values - mean) / std
    return out


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def _file_sha256(path: Path) -> str:
    sidecar = path.with_name(path.name + ".sha256")
    if sidecar.is_file():
        return sidecar.read_text().strip().split()[0]
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class Predictor:
    """Runs a segmentation network on volumes the way training preprocessed them.

    Args:
        net: the network (eval mode is set here); outputs ``plans.num_classes`` logit channels.
        plans: the model's plans (labels, target spacing, patch size, intensity, 2D/3D).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        sw_batch_size: windows per forward pass.
        overlap: sliding-window overlap fraction. 0.25 (MONAI's default) with gaussian blending runs
            a third of the windows of 0.5 on a CT; its masks agree with stock 0.5 on >= 99.5% of voxels.
        mode: window blending, ``"gaussian"`` or ``"constant"``.
        tta_mirror: average the logits over all mirrorings of the spatial axes (8 in 3D, 4 in 2D).
        amp: mixed precision (bf16 where supported, else fp16); ``None`` = on for CUDA, off on CPU.
        largest_component: keep only the largest connected component of each organ.
        fill_holes: fill enclosed cavities of each organ.
        slice_batch_size: axial slices per call for 2D networks.
        crop_foreground: run the network only on the bounding box of the body (CT: voxels above
            ``foreground_hu``; other intensities: non-zero voxels) plus ``crop_margin`` network voxels,
            and predict background outside it. ``None`` = on for CT-window plans, off otherwise (a
            z-score over the crop would see other statistics).
        crop_margin: margin around the foreground box, in network-grid voxels.
        foreground_hu: CT threshold of the foreground box.
    """

    def __init__(
        self,
        net: torch.nn.Module,
        plans: Plans,
        *,
        device: str | torch.device = "auto",
        sw_batch_size: int = 4,
        overlap: float = DEFAULT_OVERLAP,
        mode: BlendMode = "gaussian",
        tta_mirror: bool = False,
        amp: bool | None = None,
        largest_component: bool = False,
        fill_holes: bool = False,
        slice_batch_size: int = 32,
        crop_foreground: bool | None = None,
        crop_margin: int = 8,
        foreground_hu: float = -500.0,
    ) -> None:
        self.device = _resolve_device(device)
        self.net = net.to(self.device).eval()
        self.plans = plans
        self.sw_batch_size = int(sw_batch_size)
        self.overlap = float(overlap)
        self.mode = mode
        self.tta_mirror = bool(tta_mirror)
        self.amp = (self.device.type == "cuda") if amp is None else bool(amp)
        self.largest_component = bool(largest_component)
        self.fill_holes = bool(fill_holes)
        self.slice_batch_size = int(slice_batch_size)
        if crop_foreground is None:
            crop_foreground = plans.intensity.kind == "ct_window"
        self.crop_foreground = bool(crop_foreground)
        self.crop_margin = int(crop_margin)
        self.foreground_hu = float(foreground_hu)
        self.checkpoint: Path | None = None
        self.checkpoint_sha256: str | None = None

    @classmethod
    def from_checkpoint(cls, path: str | Path, **kwargs: object) -> Predictor:
        """Rebuild the network and plans stored in a checkpoint (see ``training.checkpoint``)."""
        from medunet.training.checkpoint import load_model

        path = Path(path)
        net, plans = load_model(path)
        predictor = cls(net, plans, **kwargs)  # type: ignore[arg-type]
        predictor.checkpoint = path
        predictor.checkpoint_sha256 = _file_sha256(path)
        return predictor

    # ------------------------------------------------------------------ preprocessing
    def preprocess(self, volume: Volume) -> tuple[torch.Tensor, GridMap]:
        """Volume -> ``(1, C, X', Y', Z')`` float32 on the device in the network's grid, plus the map."""
        array, grid = self._check(volume)
        return self._to_network(array, grid, None), grid

    def _check(self, volume: Volume) -> tuple[np.ndarray, GridMap]:
        array = np.asarray(volume.array)
        if array.ndim == 3:
            array = array[..., None]
        if array.ndim != 4:
            raise InvalidImageError(volume.source, f"expected a 3D image, got array shape {array.shape}")
        if array.shape[3] != self.plans.in_channels:
            raise InvalidImageError(
                volume.source,
                f"model expects {self.plans.in_channels} channel(s), image has {array.shape[3]}",
            )
        if min(array.shape[:3]) < 1:
            raise InvalidImageError(volume.source, f"empty image of shape {array.shape[:3]}")
        if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
            raise InvalidImageError(volume.source, "image contains NaN/Inf values")
        return array, plan_grid(array.shape[:3], volume.affine, self.plans.target_spacing)

    def _to_network(self, array: np.ndarray, grid: GridMap, box: Box | None) -> torch.Tensor:
        """Reorient + resample (on the compact source dtype, only inside ``box``) + intensity, on the device.

        On CPU the separable resampling runs in numpy (see ``source_to_network``): no full-size
        C-order copy or float32 copy of the source array is ever made.
        """
        if self.device.type == "cpu":
            t = torch.from_numpy(source_to_network(array, grid, box))
        else:  # ship the compact source dtype, reorient and resample on the accelerator
            if array.dtype == np.uint16 or array.dtype.kind not in "iuf" or array.dtype.itemsize > 4:
                array = array.astype(np.float32)
            t = torch.from_numpy(np.ascontiguousarray(np.moveaxis(array, 3, 0))).to(self.device)
            t = resample_to_network(to_ras(t.float(), grid), grid)
            if box is not None:
                t = t[(slice(None), *(slice(lo, hi) for lo, hi in box))].contiguous()
        t = normalize_intensity(t, self.plans.intensity)
        return t.unsqueeze(0)

    def _crop_box(self, array: np.ndarray, grid: GridMap) -> Box | None:
        """The network-grid box to run on, or ``None`` for the whole grid."""
        if not self.crop_foreground:
            return None
        threshold = self.foreground_hu if self.plans.intensity.kind == "ct_window" else None
        box = foreground_box(array, grid, threshold=threshold, margin=self.crop_margin)
        if box is None or all(b == (0, n) for b, n in zip(box, grid.resampled_shape, strict=True)):
            return None
        return box

    # ------------------------------------------------------------------ network
    def _autocast(self) -> contextlib.AbstractContextManager[None]:
        if not self.amp:
            return contextlib.nullcontext()
        if self.device.type == "cuda":
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
            return torch.autocast("cuda", dtype=dtype)
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Network forward on a window batch, with optional mirroring TTA; float32 logits."""

        def run(inp: torch.Tensor) -> torch.Tensor:
            out = self.net(inp)
            if isinstance(out, list | tuple):  # deep supervision heads: first is full resolution
                out = out[0]
            return out.float()

        with self._autocast():
            logits = run(x)
            if self.tta_mirror:
                spatial = list(range(2, x.ndim))
                flips = [
                    list(c) for r in range(1, len(spatial) + 1) for c in itertools.combinations(spatial, r)
                ]
                for dims in flips:
                    logits = logits + run(x.flip(dims)).flip(dims)
                logits = logits / (len(flips) + 1)
        return logits

    def _sliding(self, x: torch.Tensor) -> torch.Tensor:
        out = sliding_window_inference(
            x,
            roi_size=list(self.plans.patch_size),
            sw_batch_size=self.sw_batch_size,
            predictor=self._forward,
            overlap=self.overlap,
            mode=self.mode,
            padding_mode="constant",
            cval=0.0,
        )
        assert isinstance(out, torch.Tensor)
        if out.shape[1] != self.plans.num_classes:
            raise RuntimeError(
                f"network returned {out.shape[1]} channels, plans declare {self.plans.num_classes} classes"
            )
        return out

    def _logit_chunks(self, x: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
        """Yield ``(z-slice, logits (K, X', Y', z))`` chunks covering the network grid."""
        if self.plans.spatial_dims == 3:
            yield slice(None), self._sliding(x)[0]
            return
        depth = x.shape[-1]
        slices = x[0].permute(3, 0, 1, 2)  # (Z', C, X', Y'): axial slices as a batch
        for start in range(0, depth, self.slice_batch_size):
            stop = min(depth, start + self.slice_batch_size)
            logits = self._sliding(slices[start:stop].contiguous())  # (n, K, X', Y')
            yield slice(start, stop), logits.permute(1, 2, 3, 0)

    # ------------------------------------------------------------------ public
    @torch.inference_mode()
    def predict(
        self, volume: Volume, *, return_probabilities: bool = False, uncertainty: bool = False
    ) -> Prediction:
        """Segment ``volume``; the label map (and optional maps) lie on its exact grid."""
        t0 = time.perf_counter()
        array, grid = self._check(volume)
        box = self._crop_box(array, grid)
        x = self._to_network(array, grid, box)
        del array
        t1 = time.perf_counter()
        num_classes = self.plans.num_classes
        label_dtype = torch.uint8 if num_classes <= 256 else torch.int32
        # Outside the foreground box: background, with certainty.
        labels = torch.zeros(grid.resampled_shape, dtype=label_dtype, device=self.device)
        entropy = torch.zeros(grid.resampled_shape, device=self.device) if uncertainty else None
        probs = None
        if return_probabilities:
            probs = torch.zeros((num_classes, *grid.resampled_shape), device=self.device)
            probs[0] = 1.0
        inner = (slice(None),) * 3 if box is None else tuple(slice(lo, hi) for lo, hi in box)
        for zs, logits in self._logit_chunks(x):
            labels[inner][..., zs] = logits.argmax(0).to(label_dtype)
            if entropy is not None or probs is not None:
                p = torch.softmax(logits, 0)
                if entropy is not None:
                    ent = -(p * torch.log(p.clamp_min(1e-12))).sum(0)
                    entropy[inner][..., zs] = ent / math.log(max(num_classes, 2))
                if probs is not None:
                    probs[(slice(None), *inner)][..., zs] = p
            del logits
        del x
        t2 = time.perf_counter()
        to_src: Callable[[torch.Tensor, str], np.ndarray] = lambda t, m: (  # noqa: E731
            _from_ras(resample_to_ras(t, grid, mode=m), grid).contiguous().cpu().numpy()
        )
        out_labels = to_src(labels, "nearest")
        out_labels = out_labels.astype(np.uint8 if num_classes <= 256 else np.uint16, copy=False)
        if self.largest_component:
            out_labels = keep_largest_component(out_labels)
        if self.fill_holes:
            out_labels = fill_holes(out_labels)
        prediction = Prediction(
            labels=out_labels,
            affine=volume.affine.copy(),
            label_names=dict(self.plans.labels),
            uncertainty=None if entropy is None else to_src(entropy, "nearest").astype(np.float32),
            probabilities=None if probs is None else to_src(probs, "linear").astype(np.float32),
            network_box=box,
        )
        t3 = time.perf_counter()
        prediction.timings = {"preprocess_s": t1 - t0, "inference_s": t2 - t1, "postprocess_s": t3 - t2}
        logger.debug(
            "%s: %s -> network grid %s (box %s), %.2fs pre, %.2fs net, %.2fs post",
            volume.source,
            grid.source_shape,
            grid.resampled_shape,
            box,
            t1 - t0,
            t2 - t1,
            t3 - t2,
        )
        return prediction
