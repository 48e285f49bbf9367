"""Validation: sliding-window inference (Gaussian blending) and per-organ Dice / HD95 in mm."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from typing import Any

import numpy as np
import torch
from monai.inferers import Inferer, SlidingWindowInferer

from medunet.metrics import MetricsTable, organ_metrics
from medunet.plans import Plans
from medunet.precision import autocast, autocast_pays
from medunet.slices import SliceStackInferer

logger = logging.getLogger(__name__)


def build_inferer(plans: Plans, sw_batch_size: int = 4, overlap: float = 0.5) -> Inferer:
    """3D: sliding windows of ``plans.patch_size``; 2D: the same over every axial slice of a volume.

    Both take a ``(B, C, X, Y, Z)`` volume and return ``(B, K, X, Y, Z)`` logits, so validation and
    evaluation never special-case 2D networks.
    """
    common: dict[str, Any] = {
        "roi_size": tuple(plans.patch_size),
        # 2D windows are single slices: batch many per forward pass (8x fewer calls on CPU).
        "sw_batch_size": sw_batch_size * (8 if plans.spatial_dims == 2 else 1),
        "overlap": overlap,
        "mode": "gaussian",
    }
    if plans.spatial_dims == 2:  # the 2.5D stack is built as the Predictor builds it
        return SliceStackInferer(context=plans.context_slices, **common)
    return SlidingWindowInferer(**common)


def annotated_labels(labels: dict[int, str], flags: Any = None) -> tuple[dict[int, str], list[str]]:
    """Split ``labels`` into the organs a case annotates and the names of those it does not.

    ``flags`` is one 0/1 value per class value (``Case.annotated_mask``) or ``None`` (all annotated).
    An unannotated organ's reference is unknown: it is left out of the case's scores and counted.
    """
    if flags is None:
        return dict(labels), []
    f = [bool(v) for v in torch.as_tensor(flags).reshape(-1).tolist()]
    keep = {k: v for k, v in labels.items() if k == 0 or (k < len(f) and f[k])}
    return keep, [v for k, v in sorted(labels.items()) if k not in keep]


class Validator:
    """Runs a network over preprocessed validation cases and scores every organ.

    ``data`` yields dictionaries with ``image`` (C, X, Y, Z) and ``label`` (1, X, Y, Z) on the plans'
    grid (``val_transforms``), so HD95 uses ``plans.target_spacing`` as the voxel size.
    """

    def __init__(
        self,
        data: Iterable[dict[str, Any]],
        plans: Plans,
        device: torch.device | str = "cpu",
        *,
        amp: bool = False,
        sw_batch_size: int = 4,
        overlap: float = 0.5,
    ) -> None:
        self.data = data
        self.plans = plans
        self.device = torch.device(device)
        #: mixed precision where it pays (CUDA; a CPU with native bf16), as the Predictor does
        self.amp = amp and autocast_pays(self.device)
        self.inferer = build_inferer(plans, sw_batch_size, overlap)

    @torch.no_grad()
    def predictions(self, network: torch.nn.Module) -> Iterator[tuple[str, np.ndarray, np.ndarray, Any]]:
        """``(case_id, predicted labels, reference labels, annotated flags)`` per validation case.

        Label maps are on the plans' grid. Train mode is restored when the iteration ends.
        """
        was_training = network.training
        network.eval()
        try:
            for i, item in enumerate(self.data):
                image = torch.as_tensor(item["image"])[None].to(self.device)
                with autocast(self.device, self.amp):
                    logits = self.inferer(image, network)
                if isinstance(logits, list | tuple):
                    logits = logits[0]
                pred = torch.as_tensor(logits).argmax(1)[0].to(torch.uint8).cpu().numpy()
                ref = torch.as_tensor(item["label"])[0].to(torch.uint8).cpu().numpy()
                yield str(item.get("case_id", i)), pred, ref, item.get("annotated")
        finally:
            network.train(was_training)

    def run(self, network: torch.nn.Module) -> MetricsTable:
        """Score ``network`` on every case; organs a case does not annotate are counted, not scored."""
        table = MetricsTable()
        t0 = time.perf_counter()
        for case_id, pred, ref, flags in self.predictions(network):
            labels, unannotated = annotated_labels(self.plans.labels, flags)
            scores = organ_metrics(pred, ref, labels, self.plans.target_spacing)
            table.add(case_id, scores, unannotated=unannotated)
        logger.debug("validation took %.1fs", time.perf_counter() - t0)
        return table
