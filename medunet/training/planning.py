"""Derive :class:`~medunet.plans.Plans` from a dataset fingerprint plus the user's overrides.

Defaults are fingerprint-derived (nnU-Net style) so they carry over to other datasets:

* target spacing: the median spacing (R, A, S). On CPU every axis is floored at
  :data:`CPU_MIN_SPACING_MM` so a 3D run fits a CPU budget (documented in the bundle README).
* CT window: the 0.5 / 99.5 percentiles of foreground intensities; MR: z-score over non-zero voxels.
* patch size: the median field of view at the target spacing, shrunk (largest axis first) until it
  fits a voxel budget (CPU budgets are small) and rounded to what the network accepts.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path

import torch

from medunet.config import as_bool
from medunet.data.datalist import Datalist
from medunet.data.fingerprint import Fingerprint, load_or_compute_fingerprint
from medunet.errors import ConfigError
from medunet.networks import SPACING_PLANNED, patch_divisor, resolve_network_kwargs, valid_patch_size
from medunet.plans import Intensity, Plans
from medunet.precision import cpu_has_bf16
from medunet.training.environment import TrainingEnv

logger = logging.getLogger(__name__)

#: On CPU, never resample finer than this (mm), by spatial_dims: training then fits minutes, not hours.
CPU_MIN_SPACING_MM = {3: 2.0, 2: 1.5}
#: ``context_slices="auto"`` for 2D networks: single slices. 2.5D (two neighbours per side) was measured
#: on real head-and-neck CT at equal iterations and scored lower on the run's own validation cases
#: (bundles/ct_organs/README.md#results); it stays available as ``context_slices=N``.
AUTO_CONTEXT_SLICES = 0
#: Patch voxel budgets (3D, 2D) per device type.
PATCH_BUDGET = {"cpu": (64**3, 192**2), "cuda": (128 * 128 * 96, 512**2)}


def auto_spatial_dims(device: torch.device, median_spacing: Sequence[float]) -> tuple[int, str]:
    """``(2 or 3, why)`` for ``spatial_dims="auto"``: 3D where the hardware trains it fast enough and it
    keeps the data's resolution.

    Measured (bundles/ct_organs/README.md#results): on real head-and-neck CT (3.9 x 3.9 x 2.5 mm, no
    floor applies) at the same 25 minutes on a 2-core CPU with native bf16, 3D scored 0.725 mean Dice /
    10.3 mm against 0.691 / 14.6 mm for 2D; on a 2-core AVX2-only CPU (fp32, a third of the 3D
    iterations) 2D scored higher (0.683 vs 0.511). On the synthetic card set (1.5 mm), where 3D on a CPU
    is floored to 2 mm and 2D keeps 1.5 mm, 3D validated at 0.888 against 2D's 0.918 in 10 minutes.
    So on a CPU, 3D only with native bf16 and only where no axis is floored (median spacing at least
    :data:`CPU_MIN_SPACING_MM` ``[3]``). On CUDA 3D is the better recipe.
    """
    if device.type == "cuda":
        return 3, "auto: 3D on CUDA"
    floor = CPU_MIN_SPACING_MM[3]
    if not cpu_has_bf16():
        return 2, (
            "auto: 2D axial slices on a CPU without native bf16, where 3D trains too few iterations in "
            "minutes (bundles/ct_organs/README.md#results)"
        )
    if min(median_spacing) < floor:
        return 2, (
            f"auto: 2D axial slices: the data's {min(median_spacing):g} mm would be floored to {floor:g} mm "
            "in 3D on a CPU (2D keeps 1.5 mm), and at a coarser grid 3D scored lower "
            "(bundles/ct_organs/README.md#results)"
        )
    return 3, (
        f"auto: 3D on a CPU with native bf16 (bf16 autocast) at the data's own spacing (>= {floor:g} mm), "
        "which at equal wall time scored higher than 2D on real head-and-neck CT "
        "(bundles/ct_organs/README.md#results)"
    )


def fingerprint_for(datalist: Datalist, output_dir: str | Path) -> Fingerprint:
    """The dataset fingerprint, cached in ``<output_dir>/fingerprint.json`` (datasets may be read-only)."""
    return load_or_compute_fingerprint(datalist, Path(output_dir) / "fingerprint.json")


def make_plans(
    datalist: Datalist,
    fingerprint: Fingerprint,
    env: TrainingEnv,
    *,
    spatial_dims: int | str = "auto",
    network: str = "unet",
    network_size: str = "small",
    modality: str | None = None,
    target_spacing: Sequence[float] | None = None,
    patch_size: Sequence[int] | None = None,
    a_min: float | None = None,
    a_max: float | None = None,
    mirror: bool | str = "auto",
    context_slices: int | str = "auto",
) -> Plans:
    """Plans for this dataset: fingerprint-derived values unless the argument overrides them.

    ``spatial_dims="auto"`` trains 3D on CUDA and on a CPU with native bf16 where the data's spacing
    needs no CPU floor (:func:`auto_spatial_dims`), else 2D axial slices. ``context_slices=N`` gives a 2D network N neighbouring slices on
    each side as input channels (2.5D); ``"auto"`` is :data:`AUTO_CONTEXT_SLICES`.
    """
    rationale: dict[str, str] = {}
    if spatial_dims == "auto":
        spatial_dims, rationale["spatial_dims"] = auto_spatial_dims(
            env.device, target_spacing if target_spacing is not None else fingerprint.median_spacing
        )
    else:
        rationale["spatial_dims"] = "set by the user"
    spatial_dims = int(spatial_dims)
    context, rationale["context_slices"] = _context_slices(spatial_dims, context_slices)
    mirror_axes, rationale["mirror_axes"] = _mirror_axes(datalist.labels, mirror)
    modality = (modality or datalist.modalities.get(0, "CT")).upper()
    intensity = _intensity(modality, fingerprint, a_min, a_max)
    if target_spacing is None:
        spacing = fingerprint.median_spacing
        if env.device.type == "cpu":
            floor = CPU_MIN_SPACING_MM[spatial_dims]
            spacing = tuple(max(s, floor) for s in spacing)
    else:
        spacing = _floats(target_spacing, 3, "target_spacing")
    size_kw = {"size": network_size}
    if network in SPACING_PLANNED:
        size_kw["spacing"] = spacing if spatial_dims == 3 else spacing[:2]
    if patch_size is None:
        patch = auto_patch_size(fingerprint, spacing, spatial_dims, network, env.device.type, size_kw)
    else:
        patch = tuple(int(p) for p in patch_size)
        if len(patch) != spatial_dims:
            raise ConfigError(None, f"patch_size {patch} needs {spatial_dims} entries for {spatial_dims}D")
        patch = valid_patch_size(network, patch, **size_kw)
    if network in SPACING_PLANNED:
        size_kw["patch_size"] = patch
    kwargs = resolve_network_kwargs(network, spatial_dims, **size_kw)
    plans = Plans(
        labels=dict(datalist.labels),
        target_spacing=tuple(round(float(s), 4) for s in spacing),  # type: ignore[arg-type]
        patch_size=patch,
        spatial_dims=spatial_dims,
        modality=modality,
        in_channels=len(datalist.modalities) or 1,
        intensity=intensity,
        network=network,
        network_kwargs=_jsonable(kwargs),
        mirror_axes=mirror_axes,
        context_slices=context,
        rationale=rationale,
    )
    logger.info(
        "plans: %dD%s %s (%s), spacing %s mm, patch %s, intensity %s",
        spatial_dims,
        f" (+{context} slices each side)" if context else "",
        network,
        network_size,
        plans.target_spacing,
        plans.patch_size,
        plans.intensity,
    )
    return plans


def _context_slices(spatial_dims: int, context_slices: int | str | None) -> tuple[int, str]:
    """Neighbouring slices per side for a 2D network (0 for 3D), and why."""
    if context_slices == "auto" or context_slices is None:
        if spatial_dims == 3:
            return 0, "auto: a 3D network sees its context itself"
        return AUTO_CONTEXT_SLICES, (
            "auto: single axial slices; 2.5D (2 neighbours per side) scored lower on validation at equal "
            "iterations on real head-and-neck CT (bundles/ct_organs/README.md#results)"
        )
    try:  # the range (>= 0, 2D only) is checked where every Plans is: Plans.__post_init__
        return int(context_slices), "set by the user"
    except (TypeError, ValueError):
        raise ConfigError(
            None, f"context_slices must be 'auto' or an integer >= 0, got {context_slices!r}"
        ) from None


def _mirror_axes(labels: dict[int, str], mirror: bool | str) -> tuple[tuple[int, ...], str]:
    """Train with left/right mirroring (labels swapped) when the labels come in left/right pairs.

    Mirror-and-swap doubles the anatomy a network sees and makes left/right test-time augmentation
    sound. Without pairs there is no evidence that mirrored anatomy is plausible (a mirrored liver is
    situs inversus), so ``auto`` leaves it off.
    """
    from medunet.transforms import LR_AXIS, lr_swap_table

    if mirror == "auto" or mirror is None:
        pairs = lr_swap_table(labels)
        if pairs:
            names = sorted({labels[min(a, b)] + "/" + labels[max(a, b)] for a, b in pairs.items()})
            return (
                LR_AXIS,
            ), f"auto: labels have left/right pairs ({', '.join(names)}): mirror L/R and swap them"
        return (), "auto: no left/right label pairs, so no evidence that mirrored anatomy is plausible"
    if as_bool(mirror, "mirror"):
        return (LR_AXIS,), "set by the user (left/right mirror with label swap)"
    return (), "set by the user (no mirroring)"


def plans_for_run(
    plans: Plans,
    output_dir: str | Path,
    env: TrainingEnv,
    resume: bool = False,
    init_from: str | Path | None = None,
) -> Plans:
    """Save ``plans.json``. Resuming: the run's saved plans win over freshly derived ones.
    Fine-tuning (``init_from``): the source checkpoint's plans are used, so its weights fit."""
    path = Path(output_dir) / "plans.json"
    if as_bool(resume, "resume") and path.is_file():
        saved = Plans.load(path)
        if saved != plans:
            logger.warning("resume: using the run's saved %s (differs from freshly derived plans)", path)
        return saved
    if init_from:
        from medunet.training.checkpoint import load_checkpoint

        source = Plans.from_dict(load_checkpoint(init_from)["plans"])
        if source.labels != plans.labels:
            raise ConfigError(
                init_from,
                f"labels {source.labels} differ from the dataset's {plans.labels}: cannot fine-tune",
            )
        logger.info("fine-tuning: using the plans of %s", init_from)
        plans = source
    if env.is_main:
        plans.save(path)
    return plans


def auto_patch_size(
    fingerprint: Fingerprint,
    spacing: Sequence[float],
    spatial_dims: int,
    network: str,
    device_type: str,
    network_kwargs: dict,
) -> tuple[int, ...]:
    """Median field of view at ``spacing``, shrunk to the device's voxel budget, network-legal."""
    fov = [mm / s for mm, s in zip(fingerprint.median_physical_size_mm, spacing, strict=True)]
    fov = fov[:spatial_dims]  # 2D: the axial plane (R, A)
    budget = PATCH_BUDGET.get(device_type, PATCH_BUDGET["cuda"])[0 if spatial_dims == 3 else 1]
    divisor = patch_divisor(
        network, spatial_dims, **{k: v for k, v in network_kwargs.items() if k != "spacing"}
    )
    # At least two voxels at the bottleneck: instance norm needs more than one spatial element.
    patch = [max(2 * d, math.ceil(f / d) * d) for f, d in zip(fov, divisor, strict=True)]
    while math.prod(patch) > budget:
        # Shrink the axis that is largest in voxels, keeping it a multiple of its divisor.
        i = max(range(spatial_dims), key=lambda k: (patch[k], -k))
        if patch[i] <= 2 * divisor[i]:
            break
        patch[i] -= divisor[i]
    return valid_patch_size(network, patch, rounding="down", **network_kwargs)


def _intensity(modality: str, fp: Fingerprint, a_min: float | None, a_max: float | None) -> Intensity:
    if modality.startswith("CT"):
        lo, hi = fp.ct_window
        return Intensity(
            "ct_window", float(lo if a_min is None else a_min), float(hi if a_max is None else a_max)
        )
    if a_min is not None or a_max is not None:
        logger.warning("a_min/a_max are ignored for %s (z-score normalisation)", modality)
    return Intensity("zscore_nonzero")


def _floats(values: Sequence[float] | str, n: int, name: str) -> tuple[float, ...]:
    if isinstance(values, str):
        values = json.loads(values)
    if isinstance(values, int | float):
        values = [values] * n
    out = tuple(float(v) for v in values)
    if len(out) != n or min(out) <= 0:
        raise ConfigError(None, f"{name} needs {n} positive numbers, got {values}")
    return out


def _jsonable(obj: object) -> object:
    """Tuples -> lists so Plans round-trip through JSON and ``weights_only`` checkpoints unchanged."""
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    return obj
