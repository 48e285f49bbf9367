"""Choose label-map post-processing per organ on validation, as nnU-Net does, and record it in plans.

After training, the best checkpoint predicts the run's validation cases once. For every organ each
candidate step (largest connected component, then hole filling) is tried on that organ alone and
kept only when it helps that organ: mean Dice does not drop by more than :data:`DICE_TOLERANCE` and
either Dice or HD95 improves. The choice (and the numbers behind it) goes into ``plans.json``,
``postprocessing.json`` and the plans inside ``best.pt`` and ``last.pt``, so ``medunet predict``,
``inference.json`` and evaluation apply it by default. Nothing is chosen on test data.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from ignite.engine import Engine, Events

from medunet.inference.postprocess import fill_holes, keep_largest_component
from medunet.io.atomic import atomic_write_text
from medunet.metrics import _nan_to_none, organ_metrics
from medunet.plans import Plans
from medunet.training.checkpoint import load_checkpoint, save_checkpoint
from medunet.training.environment import TrainingEnv
from medunet.training.validation import Validator, annotated_labels

logger = logging.getLogger(__name__)

#: A step may cost at most this much mean Dice of its organ (it must then improve HD95).
DICE_TOLERANCE = 0.002
#: An HD95 change smaller than this (mm) is noise, not an improvement.
HD95_TOLERANCE_MM = 0.1

_STEPS = {
    "largest_component": lambda labels, organ: keep_largest_component(labels, organs=[organ]),
    "fill_holes": lambda labels, organ: fill_holes(labels, organs=[organ]),
}

Cases = Sequence[tuple[str, np.ndarray, np.ndarray, Any]]


def _organ_scores(
    cases: Cases, labels: Mapping[int, str], organ: int, spacing: Sequence[float], steps: Sequence[str]
) -> tuple[float, float, int]:
    """Mean Dice and mean finite HD95 of one organ over the cases that annotate it, after ``steps``."""
    dice, hd = [], []
    for _case, pred, ref, flags in cases:
        scored, _ = annotated_labels(dict(labels), flags)
        if organ not in scored:
            continue
        out = pred
        for step in steps:
            out = _STEPS[step](out, organ)
        s = organ_metrics(out, ref, {organ: labels[organ]}, spacing)[labels[organ]]
        dice.append(s.dice)
        if math.isfinite(s.hd95):
            hd.append(s.hd95)
    return (float(np.mean(dice)) if dice else math.nan, float(np.mean(hd)) if hd else math.nan, len(dice))


def choose_postprocessing(
    cases: Cases,
    labels: Mapping[int, str],
    spacing: Sequence[float],
    candidates: Iterable[str] = tuple(_STEPS),
) -> tuple[dict[str, tuple[str, ...]], dict[str, Any]]:
    """Per organ, the candidate steps that help it on ``cases``; plus the evidence, per organ."""
    chosen: dict[str, tuple[str, ...]] = {}
    evidence: dict[str, Any] = {}
    for organ in sorted(k for k in labels if k != 0):
        name = labels[organ]
        keep: list[str] = []
        base_dice, base_hd, n = _organ_scores(cases, labels, organ, spacing, keep)
        record: dict[str, Any] = {"n_cases": n, "none": {"dice": base_dice, "hd95": base_hd}}
        if n == 0:
            evidence[name] = record
            continue
        for step in candidates:
            dice, hd, _ = _organ_scores(cases, labels, organ, spacing, [*keep, step])
            record[step] = {"dice": dice, "hd95": hd}
            better_hd = math.isfinite(hd) and (not math.isfinite(base_hd) or hd < base_hd - HD95_TOLERANCE_MM)
            if dice >= base_dice - DICE_TOLERANCE and (dice > base_dice + 1e-9 or better_hd):
                keep.append(step)
                base_dice, base_hd = dice, hd
        record["chosen"] = list(keep)
        evidence[name] = record
        if keep:
            chosen[name] = tuple(keep)
    return chosen, evidence


def record_postprocessing(
    output_dir: str | Path, plans: Plans, chosen: Mapping[str, Sequence[str]], evidence: Mapping[str, Any]
) -> Plans:
    """Write the choice into plans.json, postprocessing.json and the plans of best.pt / last.pt."""
    out = Path(output_dir)
    summary = ", ".join(f"{o}: {'+'.join(s)}" for o, s in chosen.items()) or "none helped"
    new = dataclasses.replace(
        plans,
        postprocessing={k: tuple(v) for k, v in chosen.items()},
        rationale={
            **plans.rationale,
            "postprocessing": f"chosen per organ on the validation cases ({summary})",
        },
    )
    for name in ("best.pt", "last.pt"):
        path = out / name
        if path.is_file():
            state = load_checkpoint(path)
            state["plans"] = new.to_dict()
            save_checkpoint(path, state)
    new.save(out / "plans.json")
    atomic_write_text(
        out / "postprocessing.json",
        json.dumps(
            _nan_to_none({"chosen": {k: list(v) for k, v in chosen.items()}, "evidence": evidence}), indent=2
        )
        + "\n",
    )
    return new


class PostprocessingSelector:
    """At the end of training: predict validation with the best weights, choose, record."""

    def __init__(
        self,
        validator: Validator,
        network: torch.nn.Module,
        plans: Plans,
        output_dir: str | Path,
        env: TrainingEnv,
        enabled: bool = True,
    ) -> None:
        from medunet.training.handlers import unwrap

        self.validator = validator
        self.network = unwrap(network)
        self.plans = plans
        self.output_dir = Path(output_dir)
        self.env = env
        self.enabled = bool(enabled)

    def attach(self, engine: Engine) -> None:
        if self.enabled:
            engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if not self.env.is_main:
            return
        best = self.output_dir / "best.pt"
        network = self.network
        if best.is_file():  # a copy: the trained network itself is left as training ended
            network = copy.deepcopy(self.network)
            network.load_state_dict(load_checkpoint(best)["model"])
        cases = list(self.validator.predictions(network))
        if not cases:
            logger.info("post-processing: no validation cases, nothing chosen")
            return
        chosen, evidence = choose_postprocessing(cases, self.plans.labels, self.plans.target_spacing)
        self.plans = record_postprocessing(self.output_dir, self.plans, chosen, evidence)
        for organ, rec in evidence.items():
            logger.info(
                "post-processing %s: %s (Dice %.4f -> %.4f over %d cases)",
                organ,
                "+".join(rec.get("chosen", [])) or "none",
                rec["none"]["dice"],
                rec[rec["chosen"][-1]]["dice"] if rec.get("chosen") else rec["none"]["dice"],
                rec["n_cases"],
            )
