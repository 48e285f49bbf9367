"""The CT and MRI pipelines, built from :class:`~medunet.plans.Plans` (MONAI dictionary transforms).

Three pipelines share one preprocessing chain so training, validation and inference see identical
voxels: load -> channel first -> orient to RAS -> resample to ``plans.target_spacing`` -> (crop to
the body) -> intensity normalisation (CT window to ``[0, 1]`` or MR z-score over non-zero voxels).

Training splits into a *deterministic* head (:func:`train_cache_transforms`, cached once by
``CacheDataset``) and a *random* tail (:func:`train_random_transforms`): class-balanced patch
sampling, a random affine, optional flips, intensity augmentation. Everything here is a thin
composition of MONAI transforms; the only custom one, :class:`RandFlipSwapLRd`, mirrors left/right
and swaps the left/right label pairs so the result is still anatomically labelled.

Left/right flips: in RAS the first axis is patient left/right. A plain flip along it would turn a
left kidney into a right-sided organ still labelled "left_kidney", so plain flips are only ever
applied to the A/P and S/I axes (and are off by default: after reorientation every image has the
same anatomical orientation, so a flipped image is one the network never meets at test time).
``flip_lr_swap`` enables the mirror-and-swap augmentation instead.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from monai.config import KeysCollection
from monai.transforms import (
    CastToTyped,
    ClassesToIndicesd,
    Compose,
    CropForegroundd,
    DeleteItemsd,
    EnsureChannelFirstd,
    EnsureTyped,
    LoadImaged,
    MapTransform,
    NormalizeIntensityd,
    Orientationd,
    RandAdjustContrastd,
    RandAffined,
    RandCropByLabelClassesd,
    RandFlipd,
    RandGaussianNoised,
    RandGaussianSmoothd,
    RandomizableTransform,
    RandScaleIntensityd,
    RandShiftIntensityd,
    ScaleIntensityRanged,
    Spacingd,
    SpatialPadd,
    SqueezeDimd,
    Transform,
)

from medunet.io.monai_reader import DicomSeriesReader
from medunet.plans import BODY_HU, Plans
from medunet.slices import stack_patch

IMAGE, LABEL = "image", "label"
INDICES = "label_cls_indices"

# In RAS, spatial axis 0 is left/right, 1 anterior/posterior, 2 inferior/superior (axial slices: 0, 1).
LR_AXIS = 0


@dataclass(frozen=True)
class Augmentation:
    """Training augmentation settings (not part of Plans: inference never needs them).

    Probabilities are per patch. ``flip_axes`` lists RAS axes for plain flips and may not include the
    left/right axis 0; ``flip_lr_swap`` mirrors left/right *and* swaps left/right label pairs.
    """

    num_samples: int = 2
    rotate_deg: float = 15.0
    scale: float = 0.15
    shear: float = 0.05
    translate_fraction: float = 0.1
    affine_prob: float = 0.3
    flip_axes: tuple[int, ...] = ()
    flip_prob: float = 0.5
    flip_lr_swap: bool = False
    intensity_prob: float = 0.15
    noise_std: float = 0.03
    class_ratios: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        if LR_AXIS in self.flip_axes:
            raise ValueError(
                "flip_axes may not include the left/right axis 0: it would swap left and right organs "
                "without relabelling them; use flip_lr_swap=True instead"
            )


def preprocessing(
    plans: Plans, keys: Sequence[str] = (IMAGE, LABEL), *, crop_foreground: bool = True
) -> list:
    """Deterministic chain: load, RAS, resample, crop to the body, normalise (``keys[0]`` is the image).

    The body is what the Predictor crops to: CT voxels above :data:`~medunet.plans.BODY_HU`, other
    images' non-zero voxels.
    """
    keys = tuple(keys)
    load = LoadImaged(keys, image_only=True, ensure_channel_first=False)
    load.register(DicomSeriesReader())  # a directory is a DICOM series; identity stays out of the metadata
    chain: list = [
        load,
        EnsureChannelFirstd(keys),
        Orientationd(keys, axcodes="RAS"),
        Spacingd(keys, pixdim=plans.target_spacing, mode=("bilinear", "nearest")[: len(keys)]),
    ]
    if crop_foreground:
        threshold = BODY_HU if plans.intensity.kind == "ct_window" else 0.0
        chain.append(
            CropForegroundd(
                keys,
                source_key=keys[0],
                select_fn=Above(threshold),
                margin=2,
                allow_smaller=True,
                # No coordinate keys: they are numpy arrays in a fresh item but tensors once a
                # PersistentDataset reloads it, and a batch mixing the two cannot be collated.
                start_coord_key=None,
                end_coord_key=None,
            )
        )
    chain.append(intensity_transform(plans, keys[0]))
    chain.append(CastToTyped(keys, dtype=(torch.float32, torch.uint8)[: len(keys)]))
    return chain


def intensity_transform(plans: Plans, key: str = IMAGE) -> MapTransform:
    """CT: clip to the window and scale to ``[0, 1]``; MR: z-score over the non-zero voxels, per channel."""
    if plans.intensity.kind == "ct_window":
        return ScaleIntensityRanged(
            key, a_min=plans.intensity.a_min, a_max=plans.intensity.a_max, b_min=0.0, b_max=1.0, clip=True
        )
    return NormalizeIntensityd(key, nonzero=True, channel_wise=True)


def train_cache_transforms(plans: Plans) -> Compose:
    """Deterministic training head: preprocessing, pad to the patch, class voxel indices for sampling."""
    chain = preprocessing(plans)
    chain += [
        SpatialPadd((IMAGE, LABEL), spatial_size=_crop_size(plans)),
        ClassesToIndicesd(
            LABEL,
            num_classes=plans.num_classes,
            indices_postfix="_cls_indices",
            max_samples_per_class=200_000,
        ),
    ]
    return Compose(chain)


def train_random_transforms(
    plans: Plans, aug: Augmentation | None = None, class_weights: Sequence[float] | None = None
) -> Compose:
    """Random training tail: class-balanced patches, affine, flips, intensity changes.

    Patches are centred on each class with equal probability by default (``class_ratios``), so a
    small organ such as the aorta is sampled as often as the liver. ``class_weights`` multiply those
    ratios (:func:`~medunet.training.data.annotation_balanced_weights`: an organ contoured in a third
    of a partially contoured dataset's cases gets three times the weight, so over the dataset it is
    still sampled about as often as the others); a class absent from a case is never a centre there
    (its weight is shared out among the classes the case has). For ``spatial_dims == 2`` the
    patch is one axial slice (the third axis is squeezed away) and the affine is 2D; with
    ``plans.context_slices`` the crop spans the slice's neighbours too, which become image channels
    (:class:`SliceStackd`) while the label keeps the centre slice.
    """
    aug = aug or Augmentation()
    keys = (IMAGE, LABEL)
    ratios = list(aug.class_ratios) if aug.class_ratios else [1.0] * plans.num_classes
    if len(ratios) != plans.num_classes:
        raise ValueError(f"class_ratios needs {plans.num_classes} entries, got {len(ratios)}")
    if class_weights is not None:
        if len(class_weights) != plans.num_classes:
            raise ValueError(f"class_weights needs {plans.num_classes} entries, got {len(class_weights)}")
        ratios = [r * float(w) for r, w in zip(ratios, class_weights, strict=True)]
    chain: list = [
        RandCropByLabelClassesd(
            keys,
            label_key=LABEL,
            spatial_size=_crop_size(plans),
            ratios=ratios,
            num_classes=plans.num_classes,
            num_samples=aug.num_samples,
            indices_key=INDICES,
            warn=False,
        ),
        DeleteItemsd(INDICES),
    ]
    if plans.spatial_dims == 2:
        chain.append(SliceStackd(IMAGE, LABEL) if plans.context_slices else SqueezeDimd(keys, dim=3))
    dims = plans.spatial_dims
    rot = np.deg2rad(aug.rotate_deg)
    chain.append(
        RandAffined(
            keys,
            prob=aug.affine_prob,
            rotate_range=(rot,) * (1 if dims == 2 else 3),
            scale_range=(aug.scale,) * dims,
            shear_range=(aug.shear,) * (2 if dims == 2 else 6),
            translate_range=tuple(aug.translate_fraction * p for p in plans.patch_size),
            mode=("bilinear", "nearest"),
            padding_mode="zeros",
            spatial_size=plans.patch_size,
            cache_grid=True,
        )
    )
    for axis in aug.flip_axes:
        if axis < dims:
            chain.append(RandFlipd(keys, prob=aug.flip_prob, spatial_axis=axis))
    if aug.flip_lr_swap:
        chain.append(RandFlipSwapLRd(keys, plans.labels, prob=aug.flip_prob))
    p = aug.intensity_prob
    std_scale = 1.0 if plans.intensity.kind == "ct_window" else 3.0  # z-scored data has unit spread
    chain += [
        RandScaleIntensityd(IMAGE, factors=0.1, prob=p),
        RandShiftIntensityd(IMAGE, offsets=0.1 * std_scale, prob=p),
        RandAdjustContrastd(IMAGE, gamma=(0.7, 1.5), prob=p),
        RandGaussianNoised(IMAGE, std=aug.noise_std * std_scale, prob=p),
        RandGaussianSmoothd(IMAGE, sigma_x=(0.5, 1.0), sigma_y=(0.5, 1.0), sigma_z=(0.5, 1.0), prob=p / 2),
        EnsureTyped(keys, track_meta=False),
        CastToTyped(keys, dtype=(torch.float32, torch.long)),
    ]
    return Compose(chain)


def val_transforms(plans: Plans) -> Compose:
    """Validation: the deterministic preprocessing of image and label, nothing random."""
    return Compose([*preprocessing(plans), EnsureTyped((IMAGE, LABEL), track_meta=False)])


def inference_transforms(plans: Plans, *, crop_foreground: bool = False) -> Compose:
    """Inference on the image alone. Metadata is kept so ``Invertd`` can map predictions back."""
    return Compose(preprocessing(plans, keys=(IMAGE,), crop_foreground=crop_foreground))


def lr_swap_table(labels: Mapping[int, str]) -> dict[int, int]:
    """Label value pairs whose names differ only by left/right (``left_kidney`` <-> ``right_kidney``)."""
    pattern = re.compile(r"(left|right)", re.IGNORECASE)

    def mirrored(name: str) -> str:
        return pattern.sub(lambda m: {"left": "right", "right": "left"}[m.group(1).lower()], name.lower())

    by_name = {name.lower(): value for value, name in labels.items()}
    table = {}
    for value, name in labels.items():
        other = by_name.get(mirrored(name))
        if other is not None and other != value:
            table[value] = other
    return table


class RandFlipSwapLRd(RandomizableTransform, MapTransform):
    """Mirror left/right (RAS axis 0) and swap left/right label pairs, so labels stay anatomical."""

    def __init__(
        self, keys: KeysCollection, labels: Mapping[int, str], prob: float = 0.5, label_key: str = LABEL
    ) -> None:
        MapTransform.__init__(self, keys)
        RandomizableTransform.__init__(self, prob)
        self.label_key = label_key
        lut = np.arange(max(labels) + 1)
        for a, b in lr_swap_table(labels).items():
            lut[a] = b
        self.lut = torch.as_tensor(lut)

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        self.randomize(None)
        if not self._do_transform:
            return d
        for key in self.key_iterator(d):
            flipped = torch.flip(torch.as_tensor(d[key]), dims=(1 + LR_AXIS,))
            if key == self.label_key:
                flipped = self.lut.to(flipped.device)[flipped.long()].to(flipped.dtype)
            d[key] = flipped
        return d


class SliceStackd(MapTransform):
    """A 2.5D training crop: image ``(C, X, Y, k)`` -> ``(C * k, X, Y)`` (the slices as channels, in the
    order the Predictor stacks them), label ``(1, X, Y, k)`` -> its centre slice ``(1, X, Y)``."""

    def __init__(self, image_key: str = IMAGE, label_key: str = LABEL) -> None:
        MapTransform.__init__(self, (image_key, label_key))
        self.image_key = image_key
        self.label_key = label_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        image = torch.as_tensor(d[self.image_key])
        label = torch.as_tensor(d[self.label_key])
        d[self.image_key] = stack_patch(image)
        d[self.label_key] = label[..., label.shape[-1] // 2]
        return d


class Above:
    """Picklable foreground selector for ``CropForegroundd``: voxels strictly above ``threshold``."""

    def __init__(self, threshold: float) -> None:
        self.threshold = float(threshold)

    def __call__(self, x: Any) -> Any:
        return x > self.threshold

    def __repr__(self) -> str:
        return f"Above({self.threshold})"


def _crop_size(plans: Plans) -> tuple[int, ...]:
    """3D crop size used for sampling: the patch itself, or the axial slice (with its 2.5D context) for 2D.

    The sampled voxel is the crop's centre, so for 2.5D it lies on the centre slice, the one labelled.
    """
    return tuple(plans.patch_size) if plans.spatial_dims == 3 else (*plans.patch_size, plans.slice_stack)


__all__ = [
    "Augmentation",
    "RandFlipSwapLRd",
    "SliceStackd",
    "Transform",
    "inference_transforms",
    "intensity_transform",
    "lr_swap_table",
    "preprocessing",
    "train_cache_transforms",
    "train_random_transforms",
    "val_transforms",
]
