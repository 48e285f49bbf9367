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


#: Logit given to a class that a case does not annotate, once its probability has been merged into
#: background: exp(-1e4) underflows to exactly 0 in float32, so the wrapped loss never sees it.
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


def marginal_logits(logits: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """Logits whose softmax merges every unannotated organ's probability into background.

    ``annotated`` is ``(B, K)`` bool. Per sample, the background logit becomes
    ``logsumexp(background, unannotated organs)`` and each unannotated organ's logit ``-1e4``, so
    ``softmax(out)[0] == p_background + sum(p_unannotated)`` and every annotated organ keeps exactly its
    probability. A label map that reads 0 where an organ was not drawn then means "background *or*
    that organ" (the marginal loss of Shi et al., MedIA 2021), instead of "background" (which teaches
    the shared background channel that the organ's tissue is background).
    """
    excluded = ~annotated.to(device=logits.device, dtype=torch.bool)
    excluded[:, 0] = False  # background is always a target
    view = excluded.view(*excluded.shape, *([1] * (logits.ndim - 2)))
    pooled = view.clone()
    pooled[:, 0] = True  # background joins the organs it absorbs
    background = torch.logsumexp(logits.masked_fill(~pooled, float("-inf")), dim=1, keepdim=True)
    organs = logits[:, 1:].masked_fill(view[:, 1:], _EXCLUDED_LOGIT)
    return torch.cat([background.to(logits.dtype), organs], dim=1)


def marginal_target(target: torch.Tensor, annotated: torch.Tensor) -> torch.Tensor:
    """The target in the classes of :func:`marginal_logits`: unannotated organs read background.

    A label map of a partially contoured case never holds an organ it does not annotate, but a mixed
    patch can (CutMix pastes a box from a case that draws the organ; the flags are then intersected):
    there the organ's voxels become background-or-organ as well, instead of a target whose class has
    probability 0. Label maps ``(B, 1, ...)`` and soft targets ``(B, C, ...)`` are both handled.
    """
    excluded = ~annotated.to(device=target.device, dtype=torch.bool)
    excluded[:, 0] = False
    if target.shape[1] == 1:
        labels = target.long().clamp(0, excluded.shape[1] - 1)
        drop = torch.gather(excluded, 1, labels.flatten(1)).view_as(labels)
        return target.masked_fill(drop, 0)
    view = excluded.view(*excluded.shape, *([1] * (target.ndim - 2)))
    moved = target.masked_fill(~view, 0).sum(dim=1, keepdim=True)
    kept = target.masked_fill(view, 0)
    return torch.cat([kept[:, :1] + moved, kept[:, 1:]], dim=1)


class PartialLabelLoss(nn.Module):
    """Any registered loss, made safe for partially contoured label maps (marginal loss).

    In a case where organ ``k`` was not contoured, its voxels read background but are unknown: they
    are background *or* organ ``k``. Before the wrapped loss runs, :func:`marginal_logits` merges
    channel ``k``'s probability into background for that sample, so the cross-entropy and Dice terms
    score ``p_background + p_k`` against the background target. Moving probability between
    background and ``k`` there leaves the loss unchanged, and raising ``k`` where the label says
    background never raises it (predicting the organ is never punished); where the label names
    another organ, ``k`` is still pushed down (a voxel drawn as the larynx is not the esophagus).
    Samples that annotate ``k`` train it as usual. With no flags (fully annotated data) this is the
    wrapped loss unchanged.
    """

    def __init__(self, loss: nn.Module, annotated: AnnotatedClasses | None = None) -> None:
        super().__init__()
        self.loss = loss
        self.annotated = annotated or AnnotatedClasses()

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        flags = self.annotated.flags
        if flags is None or bool(flags.all()):
            return self.loss(logits, target)
        if tuple(flags.shape) != tuple(logits.shape[:2]):
            raise ValueError(
                f"annotated flags {tuple(flags.shape)} do not match logits {tuple(logits.shape[:2])}"
            )
        return self.loss(marginal_logits(logits, flags), marginal_target(target, flags))


class DeepSupervisionLoss(nn.Module):
    """The wrapped loss over every output head of a deeply supervised network, weighted as nnU-Net.

    A network trained with deep supervision (``resunet``) returns ``(B, 1 + H, C, *spatial)`` in
    training mode: the full-resolution logits and ``H`` deeper heads, already upsampled to the patch.
    Head ``i`` gets weight ``2**-i``, normalised to sum to 1 (nnU-Net), so a network that predicts
    the same logits at every head scores exactly the wrapped loss. Ordinary ``(B, C, *spatial)``
    logits pass straight through.
    """

    def __init__(self, loss: nn.Module) -> None:
        super().__init__()
        self.loss = loss

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        if logits.ndim != target.ndim + 1:
            return self.loss(logits, target)
        heads = logits.shape[1]
        weights = [2.0**-i for i in range(heads)]
        total = sum(weights)
        return sum((w / total) * self.loss(logits[:, i], target) for i, w in enumerate(weights))  # type: ignore[return-value]


def loss_names() -> list[str]:
    """Registered loss names, the default first."""
    return list(LOSSES)


def build_loss(
    name: str = DEFAULT_LOSS,
    annotated: AnnotatedClasses | None = None,
    deep_supervision: bool = False,
    **kwargs: Any,
) -> nn.Module:
    """Build loss ``name``; ``kwargs`` override the defaults (e.g. ``include_background=False``).

    With ``deep_supervision`` (the plans' network returns stacked heads while training, ``resunet``)
    the loss weighs every head (:class:`DeepSupervisionLoss`).

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
    return DeepSupervisionLoss(loss) if deep_supervision else loss


def loss_table() -> list[dict[str, Any]]:
    """One row per loss (name, default flag, description) for the CLI, bundle and docs."""
    return [
        {"name": s.name, "default": s.name == DEFAULT_LOSS, "description": s.description}
        for s in LOSSES.values()
    ]


__all__ = [
    "AnnotatedClasses",
    "DeepSupervisionLoss",
    "PartialLabelLoss",
    "DEFAULT_LOSS",
    "LOSSES",
    "LabelOrSoftTargetLoss",
    "LossName",
    "LossSpec",
    "build_loss",
    "loss_names",
    "loss_table",
    "marginal_logits",
    "marginal_target",
]
