"""One registry of segmentation networks, for 2D and 3D: ``name -> NetworkSpec``.

The CLI (``medunet networks``), the bundle configs and the docs all read :data:`NETWORKS`, so the list
of choices cannot drift. Every network built here maps ``(B, in_channels, *spatial)`` to
``(B, out_channels, *spatial)`` logits in both train and eval mode (no deep-supervision lists), so the
training loop, sliding-window inference and losses never special-case an architecture.

Keyword arguments are resolved in three layers, later winning: the spec's ``default_kwargs``, the
``size`` preset (``"tiny"`` for tests/CI, ``"small"`` for CPU training in minutes, ``"base"`` for GPU
work), then the caller's explicit kwargs (passed straight to the MONAI constructor).
:func:`resolve_network_kwargs` returns the fully explicit constructor kwargs; storing those in
``Plans.network_kwargs`` makes a checkpoint independent of future changes to the defaults.

Patch sizes must be multiples of a per-axis divisor (the product of the downsampling strides);
:func:`valid_patch_size` rounds a wanted patch to the nearest legal one.
"""

from __future__ import annotations

import importlib.util
import logging
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from medunet.errors import ConfigError

logger = logging.getLogger(__name__)

NetworkName = Literal["unet", "dynunet", "resunet", "attention_unet", "unetpp", "swinunetr", "flexible_unet"]
Size = Literal["tiny", "small", "base"]
Rounding = Literal["nearest", "up", "down"]
SIZES: tuple[Size, ...] = ("tiny", "small", "base")
DEFAULT_NETWORK: NetworkName = "unet"

# nnU-Net-like DynUNet planning: stop downsampling an axis below this many voxels, and never plan more
# than this many downsamplings (5 keeps the bottleneck at 1/32 like nnU-Net's 3D full-resolution nets).
DYNUNET_MIN_FEATURE_SIZE = 4
DYNUNET_MAX_DOWNSAMPLINGS = 5
# nnU-Net treats an axis as "coarse" (kernel 1, no pooling yet) while its spacing exceeds 2x the finest.
_ANISOTROPY_RATIO = 2.0
#: Networks whose kernels and strides are planned from the patch and the spacing (nnU-Net style).
SPACING_PLANNED: frozenset[str] = frozenset({"dynunet", "resunet"})
#: Deep-supervision heads below the full-resolution output (nnU-Net supervises every decoder level but
#: the lowest two; two extra heads at 1/2 and 1/4 resolution are MONAI DynUNet's usual setting).
DEEP_SUPERVISION_HEADS = 2

Builder = Callable[..., nn.Module]  # (spatial_dims, in_channels, out_channels, **resolved kwargs)
Resolver = Callable[[int, dict[str, Any]], dict[str, Any]]  # (spatial_dims, merged kwargs) -> resolved
AxisDivisor = Callable[[int, Mapping[str, Any]], tuple[int, ...]]  # (spatial_dims, resolved) -> divisor


@dataclass(frozen=True)
class NetworkSpec:
    """A registered network: how to build it and which inputs it accepts.

    ``divisor`` and ``min_patch_size`` describe the default configuration; use :func:`patch_divisor`
    for the per-axis divisor of a particular configuration (e.g. a DynUNet planned for anisotropic data).
    ``min_patch_size`` is the smallest edge the network accepts (0: one divisor is enough).
    """

    name: str
    description: str
    spatial_dims: tuple[int, ...]
    builder: Builder
    default_kwargs: Mapping[str, Any]
    size_presets: Mapping[str, Mapping[str, Any]]
    divisor: int
    axis_divisor: AxisDivisor
    min_patch_size: int = 0
    resolver: Resolver | None = None
    notes: str = ""
    default_size: Size = "small"

    def supports(self, spatial_dims: int) -> bool:
        return spatial_dims in self.spatial_dims


# --------------------------------------------------------------------------------------------- helpers


def _stride_product(strides: Sequence[int | Sequence[int]], spatial_dims: int) -> tuple[int, ...]:
    """Per-axis product of a list of strides, each an int (isotropic) or one int per axis."""
    out = [1] * spatial_dims
    for s in strides:
        per_axis = [int(v) for v in s] if isinstance(s, Sequence) else [int(s)] * spatial_dims
        if len(per_axis) != spatial_dims:
            raise ConfigError(None, f"stride {s!r} does not have {spatial_dims} entries")
        out = [a * b for a, b in zip(out, per_axis, strict=True)]
    return tuple(out)


def _strides_divisor(spatial_dims: int, kwargs: Mapping[str, Any]) -> tuple[int, ...]:
    return _stride_product(kwargs["strides"], spatial_dims)


def _constant_divisor(value: int) -> AxisDivisor:
    def divisor(spatial_dims: int, kwargs: Mapping[str, Any]) -> tuple[int, ...]:
        return (value,) * spatial_dims

    return divisor


def dynunet_kernels_strides(
    patch_size: Sequence[int],
    spacing: Sequence[float],
    *,
    max_downsamplings: int = DYNUNET_MAX_DOWNSAMPLINGS,
    min_feature_size: int = DYNUNET_MIN_FEATURE_SIZE,
) -> tuple[list[list[int]], list[list[int]]]:
    """nnU-Net-style kernel sizes and strides for a patch on a grid of ``spacing`` (mm, same axes).

    At each level an axis is downsampled by 2 when its current spacing is at most twice the finest
    current spacing and it still has ``2 * min_feature_size`` voxels; coarse axes get kernel 1 until
    pooling the fine axes has made the grid nearly isotropic. So a thick-slice CT (0.8, 0.8, 4 mm) is
    first pooled in-plane only, like nnU-Net's ``get_pool_and_conv_props``.

    Returns ``(kernel_size, strides)``, one entry per level; ``strides[0]`` is all ones (the input
    level) and ``len(kernel_size) == len(strides)``, as :class:`monai.networks.nets.DynUNet` expects.
    """
    if len(patch_size) != len(spacing):
        raise ConfigError(
            None, f"patch_size {tuple(patch_size)} and spacing {tuple(spacing)} differ in length"
        )
    if len(patch_size) not in (2, 3):
        raise ConfigError(None, f"patch_size must have 2 or 3 entries, got {tuple(patch_size)}")
    if min(patch_size) <= 0 or min(spacing) <= 0:
        raise ConfigError(None, f"patch_size and spacing must be positive, got {patch_size}, {spacing}")
    sizes = [int(p) for p in patch_size]
    spacings = [float(s) for s in spacing]
    kernels: list[list[int]] = []
    strides: list[list[int]] = [[1] * len(sizes)]
    for _ in range(max_downsamplings):
        finest = min(spacings)
        fine = [sp / finest <= _ANISOTROPY_RATIO for sp in spacings]
        stride = [2 if f and size >= 2 * min_feature_size else 1 for f, size in zip(fine, sizes, strict=True)]
        if all(s == 1 for s in stride):
            break
        kernels.append([3 if f else 1 for f in fine])
        strides.append(stride)
        sizes = [size // s for size, s in zip(sizes, stride, strict=True)]
        spacings = [sp * s for sp, s in zip(spacings, stride, strict=True)]
    kernels.append([3] * len(sizes))  # bottleneck: the grid is (close to) isotropic here
    return kernels, strides


# ------------------------------------------------------------------------------------------ builders


def _build_unet(spatial_dims: int, in_channels: int, out_channels: int, **kwargs: Any) -> nn.Module:
    from monai.networks.nets import UNet

    return UNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs)


def _build_attention_unet(spatial_dims: int, in_channels: int, out_channels: int, **kwargs: Any) -> nn.Module:
    from monai.networks.nets import AttentionUnet

    return AttentionUnet(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs
    )


def _resolve_dynunet(spatial_dims: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    """Turn ``patch_size``/``spacing``/``size`` into explicit DynUNet kernels, strides and filters."""
    kw = dict(kwargs)
    supervised = bool(kw.pop("deep_supervision", False))
    patch_size = kw.pop("patch_size", None)
    spacing = kw.pop("spacing", None)
    filters_base = int(kw.pop("filters_base"))
    filters_max = int(kw.pop("filters_max"))
    if ("kernel_size" in kw) != ("strides" in kw):
        raise ConfigError(None, "dynunet: give both kernel_size and strides, or neither")
    if "strides" not in kw:
        if patch_size is not None:
            spacing = (1.0,) * spatial_dims if spacing is None else tuple(spacing)
            if spatial_dims == 2 and len(spacing) == 3:
                spacing = spacing[:2]  # 2D patches are axial slices: the R and A axes of RAS spacing
            if len(patch_size) != spatial_dims:
                raise ConfigError(None, f"dynunet: patch_size {tuple(patch_size)} is not {spatial_dims}D")
            kernels, strides = dynunet_kernels_strides(patch_size, spacing)
        else:
            levels = DYNUNET_MAX_DOWNSAMPLINGS
            kernels = [[3] * spatial_dims for _ in range(levels)]
            strides = [[1] * spatial_dims] + [[2] * spatial_dims for _ in range(levels - 1)]
        kw["kernel_size"], kw["strides"] = kernels, strides
    elif patch_size is not None or spacing is not None:
        logger.debug("dynunet: explicit kernel_size/strides given; patch_size/spacing ignored")
    kw.setdefault("upsample_kernel_size", list(kw["strides"])[1:])
    if kw.get("filters") is None:
        kw["filters"] = [min(filters_base * 2**i, filters_max) for i in range(len(kw["strides"]))]
    # at most one head per decoder level but the last (DynUNet: deep_supr_num < number of upsamplings)
    heads = min(int(kw.pop("deep_supr_num", DEEP_SUPERVISION_HEADS)), len(kw["strides"]) - 2)
    kw["deep_supervision"] = supervised and heads >= 1
    if kw["deep_supervision"]:
        kw["deep_supr_num"] = heads
    return kw


def _build_dynunet(spatial_dims: int, in_channels: int, out_channels: int, **kwargs: Any) -> nn.Module:
    from monai.networks.nets import DynUNet

    return DynUNet(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs)


class UNetPlusPlus(nn.Module):
    """MONAI ``BasicUNetPlusPlus`` returning only the final tensor (it returns a list of outputs).

    The MONAI net is held as ``net``, so state-dict keys are ``net.<monai key>``.
    """

    def __init__(self, spatial_dims: int, in_channels: int, out_channels: int, **kwargs: Any) -> None:
        from monai.networks.nets import BasicUNetPlusPlus

        super().__init__()
        if kwargs.get("deep_supervision"):
            raise ConfigError(
                None, "unetpp: deep_supervision is not supported (forward must return one tensor)"
            )
        kwargs["deep_supervision"] = False
        self.net = BasicUNetPlusPlus(
            spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[-1]


def _build_swinunetr(spatial_dims: int, in_channels: int, out_channels: int, **kwargs: Any) -> nn.Module:
    if "img_size" in kwargs:
        raise ConfigError(
            None,
            "swinunetr: img_size was removed from MONAI's SwinUNETR (>= 1.5); drop it - any input whose "
            "edges are multiples of 32 is accepted",
        )
    if importlib.util.find_spec("einops") is None:
        raise ConfigError(None, "swinunetr needs the 'einops' package: pip install einops")
    from monai.networks.nets import SwinUNETR

    return SwinUNETR(spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs)


def _swin_divisor(spatial_dims: int, kwargs: Mapping[str, Any]) -> tuple[int, ...]:
    return (int(kwargs.get("patch_size", 2)) ** 5,) * spatial_dims


def flexible_unet_backbones() -> list[str]:
    """Encoder names FlexibleUNet accepts (ResNet 10-200, EfficientNet b0-b8/l2), all in 2D and 3D."""
    from monai.networks.nets.flexible_unet import FLEXUNET_BACKBONE

    return sorted(FLEXUNET_BACKBONE.register_dict)


def _resolve_flexible_unet(spatial_dims: int, kwargs: dict[str, Any]) -> dict[str, Any]:
    if kwargs.get("pretrained"):
        raise ConfigError(
            None,
            "flexible_unet: pretrained=True would download weights; medunet never does - initialise "
            "from a medunet checkpoint instead",
        )
    backbones = flexible_unet_backbones()
    if kwargs["backbone"] not in backbones:
        raise ConfigError(None, f"flexible_unet: unknown backbone {kwargs['backbone']!r}; valid: {backbones}")
    return {**kwargs, "pretrained": False}


def _build_flexible_unet(spatial_dims: int, in_channels: int, out_channels: int, **kwargs: Any) -> nn.Module:
    from monai.networks.nets import FlexibleUNet

    return FlexibleUNet(
        spatial_dims=spatial_dims, in_channels=in_channels, out_channels=out_channels, **kwargs
    )


# ------------------------------------------------------------------------------------------ registry

_UNET_PRESETS: dict[str, dict[str, Any]] = {
    "tiny": {"channels": (4, 8, 16, 32, 64), "num_res_units": 1},
    "small": {"channels": (16, 32, 64, 128, 256), "num_res_units": 2},
    "base": {"channels": (32, 64, 128, 256, 512), "num_res_units": 2},
}

NETWORKS: dict[str, NetworkSpec] = {
    spec.name: spec
    for spec in (
        NetworkSpec(
            name="unet",
            description="MONAI UNet with residual units and instance norm (the default)",
            spatial_dims=(2, 3),
            builder=_build_unet,
            default_kwargs={"strides": (2, 2, 2, 2), "norm": "instance", "act": "prelu", "dropout": 0.0},
            size_presets=_UNET_PRESETS,
            divisor=16,
            axis_divisor=_strides_divisor,
        ),
        NetworkSpec(
            name="dynunet",
            description="nnU-Net-like MONAI DynUNet; kernels/strides planned from patch size and spacing",
            spatial_dims=(2, 3),
            builder=_build_dynunet,
            default_kwargs={
                "norm_name": ("instance", {"affine": True}),
                "act_name": ("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
                "res_block": False,
            },
            size_presets={
                "tiny": {"filters_base": 4, "filters_max": 64},
                "small": {"filters_base": 16, "filters_max": 256},
                "base": {"filters_base": 32, "filters_max": 320},  # nnU-Net 3D full-resolution widths
            },
            divisor=16,
            axis_divisor=_strides_divisor,
            resolver=_resolve_dynunet,
            notes="pass patch_size= and spacing= (mm) to plan anisotropic kernels/strides like nnU-Net",
        ),
        NetworkSpec(
            name="resunet",
            description=(
                "nnU-Net-like residual U-Net with deep supervision (MONAI DynUNet, residual blocks, "
                "kernels/strides planned from patch size and spacing)"
            ),
            spatial_dims=(2, 3),
            builder=_build_dynunet,
            default_kwargs={
                "norm_name": ("instance", {"affine": True}),
                "act_name": ("leakyrelu", {"inplace": True, "negative_slope": 0.01}),
                "res_block": True,
                "deep_supervision": True,
            },
            size_presets={
                "tiny": {"filters_base": 4, "filters_max": 64},
                "small": {"filters_base": 16, "filters_max": 256},
                "base": {"filters_base": 32, "filters_max": 320},
            },
            divisor=16,
            axis_divisor=_strides_divisor,
            resolver=_resolve_dynunet,
            notes=(
                "training-mode forward returns (B, 1 + heads, C, *spatial): the full-resolution output "
                "and upsampled deeper heads, which every medunet loss weighs 1, 1/2, 1/4 (normalised); "
                "eval-mode forward returns the full-resolution logits only"
            ),
        ),
        NetworkSpec(
            name="attention_unet",
            description="MONAI AttentionUnet: U-Net with attention gates on the skip connections",
            spatial_dims=(2, 3),
            builder=_build_attention_unet,
            default_kwargs={"strides": (2, 2, 2, 2), "dropout": 0.0},
            size_presets={k: {"channels": v["channels"]} for k, v in _UNET_PRESETS.items()},
            divisor=16,
            axis_divisor=_strides_divisor,
        ),
        NetworkSpec(
            name="unetpp",
            description="MONAI BasicUNetPlusPlus (nested dense skips); returns the final output only",
            spatial_dims=(2, 3),
            builder=UNetPlusPlus,
            default_kwargs={"norm": ("instance", {"affine": True}), "upsample": "deconv", "dropout": 0.0},
            size_presets={
                "tiny": {"features": (4, 4, 8, 16, 32, 4)},
                "small": {"features": (16, 16, 32, 64, 128, 16)},
                "base": {"features": (32, 32, 64, 128, 256, 32)},
            },
            divisor=16,
            axis_divisor=_constant_divisor(16),
        ),
        NetworkSpec(
            name="swinunetr",
            description="MONAI SwinUNETR: Swin-transformer encoder with a CNN decoder (needs einops)",
            spatial_dims=(2, 3),
            builder=_build_swinunetr,
            default_kwargs={"norm_name": "instance", "use_checkpoint": False, "use_v2": False},
            size_presets={
                "tiny": {"feature_size": 12, "depths": (1, 1, 1, 1), "num_heads": (3, 6, 12, 24)},
                "small": {"feature_size": 24, "depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24)},
                "base": {"feature_size": 48, "depths": (2, 2, 2, 2), "num_heads": (3, 6, 12, 24)},
            },
            divisor=32,
            axis_divisor=_swin_divisor,
            min_patch_size=64,  # a 32-voxel patch leaves a 1-voxel bottleneck that instance norm rejects
            notes="patch edges must be multiples of 32 (patch_size**5), >= 64 to train; no img_size in MONAI 1.6",
        ),
        NetworkSpec(
            name="flexible_unet",
            description="MONAI FlexibleUNet: ResNet/EfficientNet encoder (random init) + U-Net decoder",
            spatial_dims=(2, 3),
            builder=_build_flexible_unet,
            default_kwargs={
                "pretrained": False,
                "norm": ("instance", {"affine": True}),
                "upsample": "deconv",
            },
            size_presets={
                "tiny": {"backbone": "resnet10", "decoder_channels": (32, 16, 16, 8, 8)},
                "small": {"backbone": "resnet18", "decoder_channels": (128, 64, 32, 16, 16)},
                "base": {"backbone": "resnet34", "decoder_channels": (256, 128, 64, 32, 16)},
            },
            divisor=32,
            axis_divisor=_constant_divisor(32),
            min_patch_size=32,
            resolver=_resolve_flexible_unet,
            notes="encoder uses batch norm: train with batch size >= 2; pretrained weights are refused",
        ),
    )
}


# ------------------------------------------------------------------------------------------ public API


def network_names() -> list[str]:
    """Registered network names, in registry order (the default first)."""
    return list(NETWORKS)


def get_network_spec(name: str) -> NetworkSpec:
    """The spec for ``name``; :class:`ConfigError` listing the valid names if unknown."""
    try:
        return NETWORKS[name]
    except (KeyError, TypeError):
        raise ConfigError(None, f"unknown network {name!r}; valid: {', '.join(NETWORKS)}") from None


def _check_dims(spec: NetworkSpec, spatial_dims: int) -> None:
    if not spec.supports(spatial_dims):
        dims = " or ".join(f"{d}D" for d in spec.spatial_dims)
        raise ConfigError(None, f"network {spec.name!r} supports {dims}, not spatial_dims={spatial_dims}")


def resolve_network_kwargs(name: str, spatial_dims: int, **kwargs: Any) -> dict[str, Any]:
    """Explicit constructor kwargs for ``name``: defaults < ``size`` preset < ``kwargs``.

    The result no longer holds ``size`` (or DynUNet's ``patch_size``/``spacing``) and builds the same
    network when passed back to :func:`build_network`, so it is what to store in ``Plans``.
    """
    spec = get_network_spec(name)
    _check_dims(spec, spatial_dims)
    size = kwargs.pop("size", spec.default_size)
    if size not in spec.size_presets:
        raise ConfigError(
            None, f"network {name!r}: unknown size {size!r}; valid: {', '.join(spec.size_presets)}"
        )
    merged = {**spec.default_kwargs, **spec.size_presets[size], **kwargs}
    if spec.resolver is not None:
        try:
            merged = spec.resolver(spatial_dims, merged)
        except ConfigError as exc:
            raise ConfigError(None, exc.problem) from None
    return merged


def build_network(
    name: str, spatial_dims: int, in_channels: int, out_channels: int, **kwargs: Any
) -> nn.Module:
    """Build registered network ``name`` mapping ``(B, in, *spatial)`` to ``(B, out, *spatial)`` logits.

    ``kwargs`` may hold ``size`` (``"tiny"``/``"small"``/``"base"``) and any constructor argument of
    the underlying MONAI network. Unknown names, unsupported dims and bad arguments raise
    :class:`ConfigError` rather than a MONAI/torch traceback.
    """
    if in_channels < 1 or out_channels < 1:
        raise ConfigError(
            None, f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}"
        )
    spec = get_network_spec(name)
    resolved = resolve_network_kwargs(name, spatial_dims, **kwargs)
    try:
        net = spec.builder(spatial_dims, in_channels, out_channels, **resolved)
    except ConfigError:
        raise
    except (TypeError, ValueError, AssertionError, KeyError) as exc:
        raise ConfigError(None, f"cannot build network {name!r} ({spatial_dims}D): {exc}") from None
    n_params = sum(p.numel() for p in net.parameters())
    logger.debug(
        "built %s %dD: %d -> %d channels, %d parameters",
        name,
        spatial_dims,
        in_channels,
        out_channels,
        n_params,
    )
    return net


def patch_divisor(name: str, spatial_dims: int, **kwargs: Any) -> tuple[int, ...]:
    """Per-axis number that every patch edge must be a multiple of, for this configuration."""
    spec = get_network_spec(name)
    resolved = resolve_network_kwargs(name, spatial_dims, **kwargs)
    return spec.axis_divisor(spatial_dims, resolved)


def _round_to(value: int, divisor: int, minimum: int, rounding: Rounding) -> int:
    if rounding == "up":
        n = math.ceil(value / divisor)
    elif rounding == "down":
        n = value // divisor
    else:
        n = math.floor(value / divisor + 0.5)  # halves round up: never shrink context by accident
    return max(n * divisor, math.ceil(max(minimum, 1) / divisor) * divisor)


def valid_patch_size(
    name: str, patch_size: Sequence[int], *, rounding: Rounding = "nearest", **kwargs: Any
) -> tuple[int, ...]:
    """``patch_size`` rounded per axis to a multiple of the network's divisor (at least one divisor).

    For ``dynunet`` without explicit ``strides``, the strides are planned from the patch itself (pass
    ``spacing=`` too), so rounding is repeated until patch and plan agree; build the network with the
    returned patch size.
    """
    spec = get_network_spec(name)
    spatial_dims = len(patch_size)
    if rounding not in ("nearest", "up", "down"):
        raise ConfigError(None, f"rounding must be 'nearest', 'up' or 'down', got {rounding!r}")
    if min(patch_size, default=0) <= 0:
        raise ConfigError(None, f"patch_size must be positive, got {tuple(patch_size)}")
    _check_dims(spec, spatial_dims)
    plans_from_patch = name in SPACING_PLANNED and "strides" not in kwargs
    if plans_from_patch:
        kwargs.pop("patch_size", None)
    patch = tuple(int(p) for p in patch_size)
    modes: list[Rounding] = [rounding] * 8 + ["up"] * 8  # "up" always reaches a fixed point
    for mode in modes:
        extra = {"patch_size": patch} if plans_from_patch else {}
        divisor = patch_divisor(name, spatial_dims, **kwargs, **extra)
        rounded = tuple(
            _round_to(p, d, spec.min_patch_size, mode) for p, d in zip(patch, divisor, strict=True)
        )
        if rounded == patch:
            break
        patch = rounded
    if patch != tuple(patch_size):
        logger.info("%s: patch size %s rounded to %s", name, tuple(patch_size), patch)
    return patch


def network_table() -> list[dict[str, Any]]:
    """One row per network (name, dims, divisor, min patch, description, notes) for CLI, bundle, docs."""
    return [
        {
            "name": spec.name,
            "spatial_dims": list(spec.spatial_dims),
            "divisor": spec.divisor,
            "min_patch_size": max(spec.min_patch_size, spec.divisor),
            "sizes": list(spec.size_presets),
            "default": spec.name == DEFAULT_NETWORK,
            "description": spec.description,
            "notes": spec.notes,
        }
        for spec in NETWORKS.values()
    ]


__all__ = [
    "DEFAULT_NETWORK",
    "NETWORKS",
    "NetworkName",
    "SIZES",
    "NetworkSpec",
    "Rounding",
    "Size",
    "UNetPlusPlus",
    "build_network",
    "dynunet_kernels_strides",
    "flexible_unet_backbones",
    "get_network_spec",
    "network_names",
    "network_table",
    "patch_divisor",
    "resolve_network_kwargs",
    "valid_patch_size",
]
