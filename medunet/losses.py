"""One registry of segmentation losses: ``name -> LossSpec``.

Every loss takes ``(B, C, *spatial)`` logits and either ``(B, 1, *spatial)`` integer label maps (one-hot
encoding happens inside) or ``(B, C, *spatial)`` soft targets (MixUp), and returns a scalar. The CLI, bundle and docs read :data:`LOSSES`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from medunet.errors import ConfigError

logger = logging.getLogger(__name__)

LossName = Literal["dicece", "dice", "dicefocal", "tversky"]
DEFAULT_LOSS: LossName = "dicece"

# Integer label maps in, logits in: every loss one-hot encodes the labels and softmaxes the logits.
#: Batch Dice (one Dice over the whole batch, as nnU-Net and MONAI's tutorials train): with a Dice
#: per patch, a small organ absent from most patches is pushed towards never being predicted (a
#: 3D CPU run on real H&N CT never predicted the esophagus or larynx that way).
_LABELS_AND_LOGITS: dict[str, Any] = {"to_onehot_y": True, "softmax": True, "batch": True}


@dataclass(frozen=True)
class LossSpec:
    """A registered loss: a MONAI constructor and the defaults medunet passes to it."""

    name: str
    description: str
    builder: Callable[..., nn.Module]
    default_kwargs: Mapping[str, Any]


def _monai(cls_name: str) -> Callable[..., nn.Module]:
    """Import the MONAI loss lazily, so importing the registry stays cheap."""

    def build(**kwargs: Any) -> nn.Module:
        import monai.losses

        return getattr(monai.losses, cls_name)(**kwargs)

    build.__name__ = f"build_{cls_name}"
    return build


LOSSES: dict[str, LossSpec] = {
    spec.name: spec
    for spec in (
        LossSpec(
            "dicece",
            "Dice + cross-entropy (MONAI DiceCELoss), the nnU-Net default; the default",
            _monai("DiceCELoss"),
            dict(_LABELS_AND_LOGITS),
        ),
        LossSpec("dice", "soft Dice (MONAI DiceLoss)", _monai("DiceLoss"), dict(_LABELS_AND_LOGITS)),
        LossSpec(
            "dicefocal",
            "Dice + focal (MONAI DiceFocalLoss, gamma 2): for small organs and heavy class imbalance",
            _monai("DiceFocalLoss"),
            dict(_LABELS_AND_LOGITS),
        ),
        LossSpec(
            "tversky",
            "Tversky (MONAI TverskyLoss, alpha 0.3 / beta 0.7): weighs misses above false alarms",
            _monai("TverskyLoss"),
            {**_LABELS_AND_LOGITS, "alpha": 0.3, "beta": 0.7},
        ),
    )
}


class LabelOrSoftTargetLoss(nn.Module):
    """Route integer label maps to the one-hot form of a loss and soft targets to the plain form.

    MixUp blends one-hot labels into ``(B, C, ...)`` probabilities; the same registered loss must then
    skip its own one-hot encoding. The two instances share no state (MONAI losses have no parameters).
    """

    def __init__(self, from_labels: nn.Module, from_soft: nn.Module) -> None:
        super().__init__()
        self.from_labels = from_labels
        self.from_soft = from_soft

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if target.shape[1] == 1:
            return self.from_labels(logits, target)
        if target.shape[1] != logits.shape[1]:
            raise ValueError(
                f"target has {target.shape[1]} channels; expected 1 (label map) or {logits.shape[1]} (soft)"
            )
        return self.from_soft(logits, target)


#: Logit given to a class that a case does not annotate: its softmax probability is exactly 0 in
#: float32 (exp(-1e4) underflows) and, set by ``masked_fill``, it receives exactly zero gradient.
_EXCLUDED_LOGIT = -1.0e4


class AnnotatedClasses:
    """Per-batch record of which classes each sample's label map annotates (shared state).

    :class:`~medunet.training.components.PrepareBatch` writes ``flags`` (``(B, K)`` bool, or ``None``
    for fully annotated data) before every forward pass; :class:`PartialLabelLoss` reads it. The
    trainer calls ``loss(pred, target)`` with no room for a third argument, so this small object is
    how the two meet; both live in one training process and run one after the other.
    """

    def __init__(self) -> None:
        self.flags: torch.Tensor | None = None


class PartialLabelLoss(nn.Module):
    """Any registered loss, made safe for partially contoured label maps.

    In a case where organ ``k`` was not contoured, its voxels read background but are unknown. Here
    channel ``k``'s logits are replaced by a constant ``-1e4`` for that sample before the wrapped
    loss runs: its probability becomes 0, the remaining classes are softmaxed among themselves, the
    cross-entropy and Dice terms see only the annotated classes, and channel ``k`` gets exactly zero
    gradient from that sample (predicting the organ there is never punished). Samples that annotate
    ``k`` still train it. With no flags (fully annotated data) this is the wrapped loss unchanged.
    """

    def __init__(self, loss: nn.Module, annotated: AnnotatedClasses | None = None) -> None:
        super().__init__()
        self.loss = loss
        self.annotated = annotated or AnnotatedClasses()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        flags = self.annotated.flags
        if flags is None or bool(flags.all()):
            return self.loss(logits, target)
        flags = flags.to(device=logits.device, dtype=torch.bool)
        if flags.shape != logits.shape[:2]:
            raise ValueError(
                f"annotated flags {tuple(flags.shape)} do not match logits {tuple(logits.shape[:2])}"
            )
        excluded = ~flags.view(*flags.shape, *([1] * (logits.ndim - 2)))
        return self.loss(logits.masked_fill(excluded, _EXCLUDED_LOGIT), target)


def loss_names() -> list[str]:
    """Registered loss names, the default first."""
    return list(LOSSES)


def build_loss(
    name: str = DEFAULT_LOSS, annotated: AnnotatedClasses | None = None, **kwargs: Any
) -> nn.Module:
    """Build loss ``name``; ``kwargs`` override the defaults (e.g. ``include_background=False``).

    With ``annotated`` (shared with the batch preparation), the loss is wrapped in
    :class:`PartialLabelLoss` so unannotated organs of partially contoured cases are not punished.
    Unknown names and arguments raise :class:`ConfigError` instead of a MONAI traceback.
    """
    try:
        spec = LOSSES[name]
    except (KeyError, TypeError):
        raise ConfigError(None, f"unknown loss {name!r}; valid: {', '.join(LOSSES)}") from None
    merged = {**spec.default_kwargs, **kwargs}
    try:
        loss = spec.builder(**merged)
        if merged.get("to_onehot_y"):
            loss = LabelOrSoftTargetLoss(loss, spec.builder(**{**merged, "to_onehot_y": False}))
    except (TypeError, ValueError) as exc:
        raise ConfigError(None, f"cannot build loss {name!r}: {exc}") from None
    logger.debug("built loss %s with %s", name, merged)
    if annotated is not None:
        loss = PartialLabelLoss(loss, annotated)
    return loss


def loss_table() -> list[dict[str, Any]]:
    """One row per loss (name, default flag, description) for the CLI, bundle and docs."""
    return [
        {"name": s.name, "default": s.name == DEFAULT_LOSS, "description": s.description}
        for s in LOSSES.values()
    ]


__all__ = [
    "AnnotatedClasses",
    "PartialLabelLoss",
    "DEFAULT_LOSS",
    "LOSSES",
    "LabelOrSoftTargetLoss",
    "LossName",
    "LossSpec",
    "build_loss",
    "loss_names",
    "loss_table",
]
