"""Small factories the bundle calls: model, optimiser schedule, batch preparation (CutMix/MixUp)."""

from __future__ import annotations

import logging
import math
from typing import Any, Literal

import torch
from torch.optim.lr_scheduler import LambdaLR

from medunet.errors import ConfigError
from medunet.losses import AnnotatedClasses
from medunet.networks import build_network
from medunet.plans import Plans
from medunet.precision import CpuAutocast
from medunet.training.environment import TrainingEnv
from medunet.transforms import Augmentation

logger = logging.getLogger(__name__)


def build_model(plans: Plans, env: TrainingEnv) -> torch.nn.Module:
    """The network the plans describe, on the training device."""
    net = build_network(
        plans.network,
        plans.spatial_dims,
        plans.network_in_channels,
        plans.num_classes,
        **plans.network_kwargs,
    )
    n = sum(p.numel() for p in net.parameters())
    logger.info("network %s %dD: %.2fM parameters", plans.network, plans.spatial_dims, n / 1e6)
    return net.to(env.device)


def training_network(network: torch.nn.Module, env: TrainingEnv, amp: object = True) -> torch.nn.Module:
    """The network the trainer steps: ``network`` itself, or on a CPU with native bf16 (and ``amp``)
    the same network under bf16 autocast (:class:`medunet.precision.CpuAutocast`; same parameters,
    float32 outputs). CUDA autocast is the trainer's own (``amp``/``amp_kwargs``)."""
    if env.cpu_autocast(amp):
        logger.info(
            "training in bf16 autocast on this CPU (native avx512_bf16/amx_bf16); --amp false for fp32"
        )
        return CpuAutocast(network)
    return network


def wrap_ddp(network: torch.nn.Module, env: TrainingEnv) -> torch.nn.Module:
    """``DistributedDataParallel`` around ``network`` when running under torchrun, else unchanged."""
    if not env.distributed:
        return network
    return torch.nn.parallel.DistributedDataParallel(network, device_ids=env.ddp_device_ids())


def make_augmentation(plans: Plans, num_samples: int | None = None, **kwargs: Any) -> Augmentation:
    """Augmentation settings; ``num_samples`` (patches per case and step) defaults to 2 in 3D, 8 in 2D.

    Left/right mirroring (with label swap) follows ``plans.mirror_axes``, so test-time augmentation
    mirrors exactly what training did.
    """
    if num_samples is None:
        num_samples = 2 if plans.spatial_dims == 3 else 8
    kwargs.setdefault("flip_lr_swap", 0 in plans.mirror_axes)
    return Augmentation(num_samples=int(num_samples), **kwargs)


class WarmupSchedule:
    """LR factor per optimiser step: linear warm-up, then cosine or polynomial (0.9) decay to ~0.

    A picklable callable so ``LambdaLR.state_dict()`` round-trips through a checkpoint.
    """

    def __init__(
        self, warmup_steps: int, total_steps: int, kind: Literal["cosine", "poly"] = "cosine"
    ) -> None:
        if kind not in ("cosine", "poly"):
            raise ConfigError(None, f"lr schedule must be 'cosine' or 'poly', got {kind!r}")
        self.warmup_steps = max(0, int(warmup_steps))
        self.total_steps = max(self.warmup_steps + 1, int(total_steps))
        self.kind = kind
        #: Set by :meth:`retarget`: from ``anchor_step`` on, the decay goes on from ``anchor_t``.
        self.anchor_step: int | None = None
        self.anchor_t = 0.0

    def progress(self, step: int) -> float:
        """Where ``step`` is on the decay, 0 (peak) to 1 (end)."""
        if self.anchor_step is not None and step >= self.anchor_step:
            left = max(1, self.total_steps - self.anchor_step)
            return min(1.0, self.anchor_t + (1.0 - self.anchor_t) * (step - self.anchor_step) / left)
        return min(1.0, max(0, step - self.warmup_steps) / (self.total_steps - self.warmup_steps))

    def retarget(self, step: int, total_steps: int) -> None:
        """End the decay at ``total_steps`` instead, continuing from where ``step`` is now (no jump in
        the learning rate: a re-planned run neither restarts nor cuts its cosine)."""
        anchor = max(int(step), self.warmup_steps)
        self.anchor_t = self.progress(anchor)
        self.anchor_step = anchor
        self.total_steps = max(anchor + 1, int(total_steps))

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / (self.warmup_steps + 1)
        t = self.progress(step)
        if self.kind == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * t)) * 0.99 + 0.01
        return (1.0 - t) ** 0.9 * 0.99 + 0.01


#: Largest share of the run's iterations spent warming the learning rate up.
MAX_WARMUP_FRACTION = 0.1


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    max_epochs: int,
    steps_per_epoch: int,
    warmup_epochs: float = 1.0,
    kind: Literal["cosine", "poly"] = "cosine",
) -> LambdaLR:
    """Per-iteration LR schedule over the whole run (stepped by ``LrScheduleHandler(epoch_level=False)``).

    The warm-up is at most :data:`MAX_WARMUP_FRACTION` of the run: a time budget that plans 5 long
    epochs must not spend 2 of them (40 % of the run) below the peak learning rate.
    """
    total = max(1, int(max_epochs) * max(1, int(steps_per_epoch)))
    warmup = int(round(float(warmup_epochs) * steps_per_epoch))
    warmup = min(warmup, int(MAX_WARMUP_FRACTION * total))
    return LambdaLR(optimizer, WarmupSchedule(warmup, total, kind))


class PrepareBatch:
    """Move a batch to the device; optionally mix pairs of patches (CutMix or MixUp) with probability ``prob``.

    CutMix pastes a random box of one patch (image *and* label) into another, so labels stay integer
    and anatomical inside each region. MixUp blends images and soft (one-hot) labels; it needs a loss
    that accepts soft targets and is off by default.
    """

    def __init__(
        self,
        mix: Literal["none", "cutmix", "mixup"] = "none",
        prob: float = 0.5,
        num_classes: int | None = None,
        annotated: AnnotatedClasses | None = None,
    ) -> None:
        if mix not in ("none", "cutmix", "mixup"):
            raise ConfigError(None, f"mix must be 'none', 'cutmix' or 'mixup', got {mix!r}")
        if mix == "mixup" and not num_classes:
            raise ConfigError(None, "mixup needs num_classes for soft labels")
        self.mix = mix
        self.prob = float(prob)
        self.num_classes = num_classes
        #: Where the batch's per-sample annotated-class flags go for the partial-label loss.
        self.annotated = annotated

    def __call__(
        self, batchdata: dict[str, Any], device: Any = None, non_blocking: bool = False, **kwargs: Any
    ) -> tuple[torch.Tensor, torch.Tensor]:
        image = torch.as_tensor(batchdata["image"]).to(device=device, non_blocking=non_blocking)
        label = torch.as_tensor(batchdata["label"]).to(device=device, non_blocking=non_blocking)
        flags = batchdata.get("annotated") if self.annotated is not None else None
        if flags is not None:
            flags = torch.as_tensor(flags).to(device=device).bool()
        if self.mix == "none" or image.shape[0] < 2 or float(torch.rand(())) >= self.prob:
            self._publish(flags)
            return image, label
        perm = torch.roll(torch.arange(image.shape[0]), 1)
        # A mixed patch holds voxels of two cases: an organ is known only where both annotate it.
        self._publish(None if flags is None else flags & flags[perm])
        if self.mix == "cutmix":
            return cutmix(image, label, perm)
        lam = float(torch.distributions.Beta(0.4, 0.4).sample())
        onehot = torch.nn.functional.one_hot(label[:, 0].long(), self.num_classes).movedim(-1, 1).float()
        return lam * image + (1 - lam) * image[perm], lam * onehot + (1 - lam) * onehot[perm]

    def _publish(self, flags: torch.Tensor | None) -> None:
        if self.annotated is not None:
            self.annotated.flags = flags


def cutmix(image: torch.Tensor, label: torch.Tensor, perm: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste one random box (each side a uniform 25-75% of the patch) from ``batch[perm]`` into ``batch``."""
    image, label = image.clone(), label.clone()
    spatial = image.shape[2:]
    box = []
    for size in spatial:
        length = max(1, int(size * (0.25 + 0.5 * float(torch.rand(())))))
        start = int(torch.randint(0, size - length + 1, ()))
        box.append(slice(start, start + length))
    index = (slice(None), slice(None), *box)
    image[index] = image[perm][index]
    label[index] = label[perm][index]
    return image, label
