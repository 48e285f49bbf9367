"""``Predictor``: a trained network plus its ``Plans`` -> integer label maps on the source grid.

The fast path keeps everything on the compute device as tensor ops: reorientation is a transpose and
flips, resampling is a separable linear interpolation that reproduces MONAI's ``Spacing`` exactly, the
intensity step is the one from ``Plans.intensity``; then MONAI's sliding-window inferer with gaussian
blending runs under ``torch.inference_mode`` (AMP on CUDA) on class probabilities (averaged over
the models of an ensemble and the anatomy-respecting mirrors of TTA), the probabilities are
interpolated linearly onto the source grid inside the organs' box and the argmax is taken there
(``medunet.inference.scores``), and the plans' per-organ post-processing is applied.
``resample_scores=False`` keeps the older, cheaper path: argmax on the network grid, label map back
by nearest neighbour.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import torch
from monai.inferers import sliding_window_inference

from medunet.errors import ConfigError, EngineError, InvalidImageError
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
from medunet.inference.postprocess import apply_postprocessing, fill_holes, keep_largest_component
from medunet.inference.scores import (
    channel_argmax,
    labels_from_probabilities,
    mirror_channel_order,
    mirror_dims,
    softmax_channels_,
)
from medunet.io.digest import recorded_sha256
from medunet.io.volume import Volume
from medunet.plans import BODY_HU, Intensity, Plans
from medunet.precision import autocast, cpu_has_bf16
from medunet.slices import axial_stacks
from medunet.transforms import LR_AXIS

if TYPE_CHECKING:
    from medunet.engines import EngineArtifact

logger = logging.getLogger(__name__)

#: Sliding-window overlap. 0.25 with Gaussian blending needs a third of the windows of 0.5 and agreed
#: with stock MONAI at 0.5 on >= 99.5% of voxels (benchmarks/bench_inference.py).
DEFAULT_OVERLAP = 0.25

BlendMode = Literal["gaussian", "constant"]

#: Mirror TTA in the user-facing surfaces (``medunet predict``, ``inference.json``, evaluation). Only
#: axes the model was trained mirrored are used, so a model without them is unaffected. Measured on
#: real head-and-neck CT: bundles/ct_organs/README.md#results.
DEFAULT_TTA = True


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


def _preprocessing_key(plans: Plans) -> tuple:
    """What ensemble members must share: everything that shapes the input and the output channels."""
    return (
        plans.labels,
        plans.target_spacing,
        plans.spatial_dims,
        plans.intensity,
        plans.in_channels,
        plans.context_slices,
    )


def _resolve_device(device: str | torch.device) -> torch.device:
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def default_sw_batch_size(device: torch.device, spatial_dims: int, engine: str = "torch") -> int:
    """Windows per forward pass: for a 3D network on CPU 2 in PyTorch and 1 in OpenVINO, else 4
    (MONAI's model-zoo value).

    On CPU a 3D UNet's per-window time grows with the batch once its activations leave the caches: the
    registry ``small`` UNet on 96^3 windows took 0.31 / 0.23 / 0.27 / 0.30 / 0.34 s per window at batch
    1 / 2 / 3 / 4 / 8 on a 2-core AMD EPYC (32 MiB L3), so batch 2 runs the same windows ~1.25x faster.
    In OpenVINO the same windows took 0.171 / 0.179 / 0.195 s at batch 1 / 2 / 4 (PyTorch 0.382 / 0.255
    / 0.286 in the same run, 2026-11-29), so it runs them one at a time.
    """
    if device.type == "cpu" and spatial_dims == 3:
        return 1 if engine == "openvino" else 2
    return 4


class Predictor:
    """Runs a segmentation network on volumes the way training preprocessed them.

    Args:
        net: the network (eval mode is set here); outputs ``plans.num_classes`` logit channels.
        plans: the model's plans (labels, target spacing, patch size, intensity, 2D/3D).
        device: ``"auto"`` (CUDA when present), ``"cpu"``, ``"cuda"``, ``"cuda:1"``...
        sw_batch_size: windows per forward pass; ``None`` = :func:`default_sw_batch_size` (2 for 3D
            on CPU in PyTorch, 1 in OpenVINO, 4 otherwise).
        overlap: sliding-window overlap fraction. 0.25 (MONAI's default) with gaussian blending runs
            a third of the windows of 0.5 on a CT; its masks agree with stock 0.5 on >= 99.5% of voxels.
        mode: window blending, ``"gaussian"`` or ``"constant"``.
        tta_mirror: also predict the mirrored input along each axis the network was trained to see
            mirrored (``plans.mirror_axes``; left/right channels swapped back) and average.
        amp: mixed precision (bf16 where supported, else fp16); ``None`` = on for CUDA; on CPU bf16
            autocast with channels-last runs only where the CPU has native bf16 (:func:`cpu_has_bf16`):
            ``None`` turns it on there, and ``True`` on a CPU without it logs a warning and stays fp32.
        largest_component: keep only the largest connected component of *every* organ (overrides
            the plans' per-organ choice).
        fill_holes: fill enclosed cavities of *every* organ (overrides the plans' choice).
        postprocess: apply ``plans.postprocessing`` (the per-organ steps validation selected).
        resample_scores: bring class probabilities to the source grid before the argmax (smooth
            edges); ``False``: argmax on the network grid, labels back by nearest neighbour.
        slice_batch_size: axial slices per call for 2D networks.
        crop_foreground: run the network only on the bounding box of the body (CT: voxels above
            ``foreground_hu``; other intensities: non-zero voxels) plus ``crop_margin`` network voxels,
            and predict background outside it. ``None`` = on for CT-window plans, off otherwise (a
            z-score over the crop would see other statistics).
        crop_margin: margin around the foreground box, in network-grid voxels.
        foreground_hu: CT threshold of the foreground box (training crops at the same value).
    """

    def __init__(
        self,
        net: torch.nn.Module | Sequence[torch.nn.Module],
        plans: Plans,
        *,
        device: str | torch.device = "auto",
        sw_batch_size: int | None = None,
        overlap: float = DEFAULT_OVERLAP,
        mode: BlendMode = "gaussian",
        tta_mirror: bool = False,
        amp: bool | None = None,
        largest_component: bool = False,
        fill_holes: bool = False,
        postprocess: bool = True,
        resample_scores: bool = True,
        slice_batch_size: int = 32,
        crop_foreground: bool | None = None,
        crop_margin: int = 8,
        foreground_hu: float = BODY_HU,
    ) -> None:
        self.device = _resolve_device(device)
        nets = list(net) if isinstance(net, Sequence) else [net]
        if not nets:
            raise ValueError("Predictor needs at least one network")
        self.nets = [n.to(self.device).eval() for n in nets]
        self.net = self.nets[0]
        self.plans = plans
        self.sw_batch_size = int(sw_batch_size or default_sw_batch_size(self.device, plans.spatial_dims))
        self.overlap = float(overlap)
        self.mode = mode
        self.tta_mirror = bool(tta_mirror)
        self.amp = (self.device.type == "cuda") if amp is None else bool(amp)
        if self.device.type == "cpu":
            native = cpu_has_bf16()
            if amp and not native:
                logger.warning("amp: this CPU has no avx512_bf16/amx_bf16; bf16 would be emulated, so fp32")
            self.amp = native if amp is None else bool(amp) and native
        #: CPU bf16 runs channels-last (oneDNN's blocked bf16 kernels want NDHWC)
        self.channels_last = self.amp and self.device.type == "cpu" and plans.spatial_dims == 3
        if self.channels_last:
            self.nets = [n.to(memory_format=torch.channels_last_3d) for n in self.nets]
            self.net = self.nets[0]
        self.largest_component = bool(largest_component)
        self.fill_holes = bool(fill_holes)
        self.postprocess = bool(postprocess)
        self.resample_scores = bool(resample_scores)
        self._mirror_dims = mirror_dims(plans.mirror_axes, plans.spatial_dims)
        self._mirror_order = torch.as_tensor(mirror_channel_order(plans.labels, plans.num_classes))
        if self.tta_mirror and not self._mirror_dims:
            logger.warning(
                "tta: the model was not trained with mirroring (plans.mirror_axes is empty): TTA is a no-op"
            )
        self.slice_batch_size = int(slice_batch_size)
        if crop_foreground is None:
            crop_foreground = plans.intensity.kind == "ct_window"
        self.crop_foreground = bool(crop_foreground)
        self.crop_margin = int(crop_margin)
        self.foreground_hu = float(foreground_hu)
        self.checkpoint: Path | None = None
        self.checkpoint_sha256: str | None = None
        self.checkpoints: list[Path] = []
        #: the runtime of the network forward (``medunet.engines``); ``"torch"``: the eager network
        self.engine = "torch"
        #: why this engine runs (``from_checkpoint(engine="auto")`` records its choice)
        self.engine_reason = "requested"
        self.engine_artifact: EngineArtifact | None = None

    @classmethod
    def from_checkpoint(
        cls,
        path: str | Path | Sequence[str | Path],
        *,
        engine: str = "torch",
        engine_model: str | Path | None = None,
        **kwargs: object,
    ) -> Predictor:
        """Rebuild the network(s) and plans stored in one checkpoint or several (an ensemble).

        An ensemble's members must preprocess identically (same labels, spacing, patch, intensity,
        dimensionality, 2.5D slice context); their class probabilities are averaged. The first
        member's plans (its post-processing choice and mirror axes) are used.

        ``engine`` other than ``"torch"`` runs the network forward in an exported engine
        (:func:`medunet.engines.open_engine`: ``engine_model``, else the checkpoint's default export,
        else the cached one, made now the first time); the artefact must come from this checkpoint.
        ``"auto"`` is :func:`medunet.engines.resolve_engine`'s choice (OpenVINO on a CPU where it is
        installed, else PyTorch); ``engine_reason`` says why.
        """
        from medunet.engines import AUTO, resolve_engine
        from medunet.training.checkpoint import load_model

        paths = [Path(p) for p in ([path] if isinstance(path, str | Path) else path)]
        if not paths:
            raise ValueError("no checkpoint given")
        reason = "requested"
        if engine == AUTO and kwargs.get("amp") is True:
            engine, reason = "torch", "auto: amp asked for, PyTorch autocast"
        elif engine == AUTO:
            engine, reason = resolve_engine(AUTO, device=str(kwargs.get("device", "auto")), models=len(paths))
        if engine != "torch" or reason != "requested":
            logger.info("engine %s (%s)", engine, reason)
        if engine != "torch":
            if len(paths) > 1:
                raise ConfigError(
                    paths[1], f"engine {engine!r} runs one model; ensembles run with engine torch"
                )
            try:
                predictor = cls.from_engine(engine_model, engine=engine, checkpoint=paths[0], **kwargs)
            except (EngineError, RuntimeError, ValueError, OSError, ImportError) as exc:
                if not reason.startswith("auto"):
                    raise
                # auto chose the engine: a model it cannot export or compile runs in PyTorch instead
                logger.warning("engine %s failed for %s (%s): running PyTorch", engine, paths[0], exc)
                engine, reason = "torch", f"auto: {engine} failed ({type(exc).__name__}), PyTorch"
            else:
                predictor.checkpoint_sha256 = recorded_sha256(paths[0])
                predictor.engine_reason = reason
                return predictor
        loaded = [load_model(p) for p in paths]
        plans = loaded[0][1]
        for p, (_, other) in zip(paths[1:], loaded[1:], strict=True):
            if _preprocessing_key(other) != _preprocessing_key(plans):
                raise ConfigError(
                    p, f"ensemble member preprocesses differently from {paths[0]}: {other} vs {plans}"
                )
        predictor = cls([n for n, _ in loaded], plans, **kwargs)  # type: ignore[arg-type]
        predictor.engine_reason = reason
        predictor.checkpoint = paths[0]
        predictor.checkpoints = paths
        digests = [recorded_sha256(p) for p in paths]
        predictor.checkpoint_sha256 = (
            digests[0] if len(digests) == 1 else hashlib.sha256("".join(digests).encode()).hexdigest()
        )
        return predictor

    @classmethod
    def from_engine(
        cls,
        engine_model: str | Path | None,
        *,
        engine: str,
        checkpoint: str | Path | None = None,
        **kwargs: object,
    ) -> Predictor:
        """A Predictor whose network forward runs in ``engine`` (``onnxruntime``, ``openvino``,
        ``torchscript``, ``tensorrt``) from the artefact ``engine_model`` (``medunet export``), with the
        plans recorded in it. Everything around the forward is this class's code, unchanged.
        """
        from medunet.engines import open_engine

        device = kwargs.pop("device", "auto")
        if str(device) == "auto":
            device = "cuda" if engine == "tensorrt" else "cpu"
        if kwargs.get("amp"):
            raise ValueError(
                f"engine {engine!r} computes in its exported precision; bf16 autocast is PyTorch's"
            )
        kwargs["amp"] = False  # engines compute in their own precision (fp32 or int8)
        runner, artifact = open_engine(
            engine, checkpoint=checkpoint, engine_model=engine_model, device=device
        )
        if kwargs.get("sw_batch_size") is None:
            kwargs["sw_batch_size"] = default_sw_batch_size(
                torch.device(device), artifact.plans.spatial_dims, engine
            )
        predictor = cls(runner, artifact.plans, device=device, **kwargs)  # type: ignore[arg-type]
        predictor.engine = engine
        predictor.engine_artifact = artifact
        if checkpoint is not None:
            predictor.checkpoint = Path(checkpoint)
            predictor.checkpoints = [Path(checkpoint)]
        else:
            predictor.checkpoint = artifact.model_path
        predictor.checkpoint_sha256 = artifact.checkpoint_sha256 or artifact.identity
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
        return autocast(self.device, self.amp)

    @property
    def _averages_logits(self) -> bool:
        """One network, no TTA: windows blend logits and the softmax runs once on the blended volume
        (as stock MONAI and nnU-Net); a softmax per window costs ~6x the voxels at overlap 0.5."""
        return len(self.nets) == 1 and not (self.tta_mirror and self._mirror_dims)

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        """Float32 scores of a window batch: logits of the one network (see ``_averages_logits``), else
        class probabilities averaged over ensemble members and TTA mirrors.

        A mirrored pass is flipped back and, when it mirrored left/right, its left/right channels
        are swapped back, so every pass votes for the same anatomy.
        """
        logits = self._averages_logits
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last_3d)

        def run(net: torch.nn.Module, inp: torch.Tensor) -> torch.Tensor:
            out = net(inp)
            if isinstance(out, list | tuple):  # deep supervision heads: first is full resolution
                out = out[0]
            elif out.ndim == inp.ndim + 1:  # MONAI DynUNet stacks deep supervision heads on dim 1
                out = out[:, 0]
            return out.float() if logits else torch.softmax(out.float(), 1)

        passes = [[]] + (self._mirror_dims if self.tta_mirror else [])
        total: torch.Tensor | None = None
        with self._autocast():
            for net in self.nets:
                for dims in passes:
                    if not dims:
                        p = run(net, x)
                    else:
                        p = run(net, x.flip(dims)).flip(dims)
                        if 2 + LR_AXIS in dims:
                            p = p[:, self._mirror_order.to(p.device)]
                    total = p if total is None else total + p
        assert total is not None
        return total / (len(self.nets) * len(passes))

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
        """Yield ``(z-slice, class probabilities (K, X', Y', z))`` chunks covering the network grid."""
        chunks = self._score_chunks(x)
        del x  # only the chunk generator holds the input now (it frees it once the 3D pass is done)
        for zs, scores in chunks:
            yield zs, (softmax_channels_(scores) if self._averages_logits else scores)

    def _score_chunks(self, x: torch.Tensor) -> Iterator[tuple[slice, torch.Tensor]]:
        """Yield ``(z-slice, blended window scores (K, X', Y', z))`` chunks (see ``_forward``)."""
        if self.plans.spatial_dims == 3:
            scores = self._sliding(x)[0]
            del x  # the caller has let go of it too: it is freed before the scores are used
            yield slice(None), scores
            return
        depth = x.shape[-1]
        for start in range(0, depth, self.slice_batch_size):
            stop = min(depth, start + self.slice_batch_size)
            # (n, C * slice_stack, X', Y'): axial slices (with their 2.5D context) as a batch
            stacks = axial_stacks(x[0], start, stop, self.plans.context_slices)
            logits = self._sliding(stacks.contiguous())  # (n, K, X', Y')
            yield slice(start, stop), logits.permute(1, 2, 3, 0)

    def _postprocess(self, labels: np.ndarray) -> np.ndarray:
        """User-forced steps for every organ, else the per-organ steps the plans selected."""
        if self.largest_component:
            labels = keep_largest_component(labels)
        if self.fill_holes:
            labels = fill_holes(labels)
        if self.postprocess and self.plans.postprocessing:
            labels = apply_postprocessing(labels, self.plans.labels, self.plans.postprocessing)
        return labels

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
        # Outside the foreground box: background, with certainty. Network-grid labels are only needed
        # when the probabilities are not resampled; an uncropped 3D output is used as is (no copy).
        labels = None
        if not self.resample_scores:
            labels = torch.zeros(grid.resampled_shape, dtype=label_dtype, device=self.device)
        entropy = torch.zeros(grid.resampled_shape, device=self.device) if uncertainty else None
        want_probs = return_probabilities or self.resample_scores
        whole = box is None and self.plans.spatial_dims == 3
        probs = None
        inner = (slice(None),) * 3 if box is None else tuple(slice(lo, hi) for lo, hi in box)
        chunks = self._logit_chunks(x)  # class probabilities per chunk; holds the input while needed
        del x
        for zs, p in chunks:
            if want_probs and not whole and probs is None:
                # Allocated after the first chunk, not before: for 3D that is after the sliding
                # window, so its accumulators and activations are gone (the peak-RSS stage).
                probs = torch.zeros((num_classes, *grid.resampled_shape), device=self.device)
                probs[0] = 1.0
            if labels is not None:
                labels[inner][..., zs] = channel_argmax(p, label_dtype)
            if entropy is not None:
                ent = -(p * torch.log(p.clamp_min(1e-12))).sum(0)
                entropy[inner][..., zs] = ent / math.log(max(num_classes, 2))
            if want_probs and whole:
                probs = p
            elif probs is not None:
                probs[(slice(None), *inner)][..., zs] = p
            del p
        del chunks
        t2 = time.perf_counter()
        to_src: Callable[[torch.Tensor, str], np.ndarray] = lambda t, m: (  # noqa: E731
            _from_ras(resample_to_ras(t, grid, mode=m), grid).contiguous().cpu().numpy()
        )
        if self.resample_scores:
            assert probs is not None
            ras_labels = labels_from_probabilities(probs, grid, label_dtype)
            out_labels = _from_ras(ras_labels, grid).contiguous().cpu().numpy()
        else:
            assert labels is not None
            out_labels = to_src(labels, "nearest")
        out_labels = out_labels.astype(np.uint8 if num_classes <= 256 else np.uint16, copy=False)
        out_labels = self._postprocess(out_labels)
        prediction = Prediction(
            labels=out_labels,
            affine=volume.affine.copy(),
            label_names=dict(self.plans.labels),
            uncertainty=None if entropy is None else to_src(entropy, "nearest").astype(np.float32),
            probabilities=None
            if not return_probabilities or probs is None
            else to_src(probs, "linear").astype(np.float32),
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
