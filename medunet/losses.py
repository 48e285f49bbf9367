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
_LABELS_AND_LOGITS: dict[str, Any] = {"to_onehot_y": True, "softmax": True}


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


def loss_names() -> list[str]:
    """Registered loss names, the default first."""
    return list(LOSSES)


def build_loss(name: str = DEFAULT_LOSS, **kwargs: Any) -> nn.Module:
    """Build loss ``name``; ``kwargs`` override the defaults (e.g. ``include_background=False``).

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
    return loss


def loss_table() -> list[dict[str, Any]]:
    """One row per loss (name, default flag, description) for the CLI, bundle and docs."""
    return [
        {"name": s.name, "default": s.name == DEFAULT_LOSS, "description": s.description}
        for s in LOSSES.values()
    ]


__all__ = [
    "DEFAULT_LOSS",
    "LOSSES",
    "LabelOrSoftTargetLoss",
    "LossName",
    "LossSpec",
    "build_loss",
    "loss_names",
    "loss_table",
]
