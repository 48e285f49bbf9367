"""Per-organ segmentation metrics: Dice, HD95 in mm, normalised surface Dice; aggregation over cases.

The distance metrics follow MONAI's definitions exactly (``HausdorffDistanceMetric(percentile=95,
include_background=False)`` and ``SurfaceDiceMetric(use_subvoxels=False)`` with ``spacing`` passed):

* surface voxels are ``mask XOR binary_erosion(mask)`` with the 6-connected (3D) / 4-connected (2D)
  cross and everything outside the image counted as background;
* the surface distance of a voxel is the Euclidean distance, in mm, to the nearest surface voxel of the
  other mask;
* HD95 is ``max(q95(pred -> ref), q95(ref -> pred))`` with linear-interpolated percentiles
  (``torch.quantile``/``numpy.percentile`` default);
* NSD counts the surface voxels of both masks whose distance is ``<= tolerance`` and divides by the total
  number of surface voxels.

It is much faster than MONAI on CT-sized volumes because all per-organ work happens inside the organ's
bounding box (the bounding boxes of every label of both maps come from one ``find_objects`` pass each,
not one full-volume pass per label), and the distances come from one anisotropic EDT (``edt`` package)
per direction on that box. Cropping is exact: the nearest surface voxel of either mask lies inside the
union bounding box, and voxels outside it are background for that label. Surfaces come from shifted
ANDs rather than ``binary_erosion``. Organs are scored one after another: ``edt`` holds the GIL, so
Python threads over organs cannot overlap it (``threads`` > 1 uses edt's own C++ threads instead).

Empty organs (policy, also in the README):

* ref and pred both empty: dice 1.0, hd95 0.0, nsd 1.0 (a correct "absent" call);
* exactly one empty: dice 0.0, nsd 0.0, hd95 NaN (undefined, never a made-up number).

``MetricsTable.summary`` averages Dice and NSD over every case (empty ones included, with the values
above) and HD95 over the finite values only, and reports ``n``, ``n_empty_ref``, ``n_empty_pred`` and
``n_hd95_nan`` so nothing is dropped silently.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import edt
import numpy as np
import torch
from scipy import ndimage

from medunet.errors import GeometryError, GeometryMismatchError, LabelError
from medunet.io.atomic import atomic_write_text

logger = logging.getLogger(__name__)

#: Below these sizes (voxels) threads cost more to start than they save: EDT box, whole label map.
_PARALLEL_EDT_MIN_VOXELS = 256_000
_PARALLEL_BOXES_MIN_VOXELS = 4_000_000

__all__ = ["MetricsTable", "OrganScore", "from_onehot", "organ_metrics"]

ArrayLike = np.ndarray | torch.Tensor


@dataclass(frozen=True)
class OrganScore:
    """Scores of one organ in one case. ``hd95`` is in mm; ``nsd`` is surface Dice at the tolerance."""

    dice: float
    hd95: float
    nsd: float
    empty_ref: bool
    empty_pred: bool
    volume_ref_ml: float
    volume_pred_ml: float


def from_onehot(onehot: ArrayLike, channel_dim: int = 0) -> np.ndarray:
    """Integer label map from one-hot (or probability/logit) channels: ``argmax`` over ``channel_dim``.

    For trainers whose outputs are ``(C, H, W[, D])``; pass ``channel_dim=1`` for a batch and index it.
    """
    if isinstance(onehot, torch.Tensor):
        return onehot.detach().argmax(dim=channel_dim).cpu().numpy().astype(np.int32, copy=False)
    return np.asarray(onehot).argmax(axis=channel_dim).astype(np.int32, copy=False)


def _as_labelmap(x: ArrayLike, name: str) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu().numpy()
    x = np.asarray(x)
    if x.dtype == bool:
        x = x.view(np.uint8)
    if not np.issubdtype(x.dtype, np.integer):
        raise LabelError(
            None, f"{name} must be an integer label map (not one-hot/float), got dtype {x.dtype}"
        )
    if x.ndim not in (2, 3):
        raise LabelError(None, f"{name} must be a 2D or 3D label map, got shape {x.shape}")
    return x


def _find_boxes(labelmap: np.ndarray, max_label: int) -> list[tuple[slice, ...] | None]:
    """Bounding box of every label ``1..max_label`` in one pass (``None`` where absent; labels <= 0 ignored)."""
    boxes = ndimage.find_objects(labelmap, max_label=max_label)
    return list(boxes) + [None] * (max_label - len(boxes))


def _union_box(a: tuple[slice, ...] | None, b: tuple[slice, ...] | None) -> tuple[slice, ...] | None:
    if a is None:
        return b
    if b is None:
        return a
    return tuple(slice(min(x.start, y.start), max(x.stop, y.stop)) for x, y in zip(a, b, strict=True))


def _surface(mask: np.ndarray) -> np.ndarray:
    """Surface voxels: ``mask & ~erode(mask)`` with the face-connected cross, outside = background.

    The erosion is written as ANDs of the mask shifted by one voxel along each axis (interior voxels
    are those whose 2 * ndim face neighbours are all set); ~9x less CPU than
    ``ndimage.binary_erosion(mask, border_value=0)`` on organ boxes, and bit-identical to it.
    """
    inner = np.zeros_like(mask)
    if min(mask.shape) >= 3:
        mid = (slice(1, -1),) * mask.ndim
        core = mask[mid].copy()
        for ax in range(mask.ndim):
            for shifted in (slice(0, -2), slice(2, None)):
                core &= mask[mid[:ax] + (shifted,) + mid[ax + 1 :]]
        inner[mid] = core
    return mask & ~inner


def available_cpus(cap: int = 8) -> int:
    """CPUs this process may run on (affinity-aware, so containers and taskset are respected)."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        n = os.cpu_count() or 1
    return max(1, min(cap, n))


def _distances_to(surface: np.ndarray, spacing: Sequence[float], threads: int = 1) -> np.ndarray:
    """Distance (mm) from every voxel of the box to the nearest voxel of ``surface``.

    uint8 input: ``edt`` is ~25 % faster on it than on bool (measured, 2M-voxel box). ``edt`` holds
    the GIL (so Python threads over organs would not overlap it) but runs ``parallel`` C++ threads."""
    return edt.edt(
        np.ascontiguousarray(~surface).view(np.uint8),
        anisotropy=tuple(spacing),
        black_border=False,
        parallel=threads if surface.size >= _PARALLEL_EDT_MIN_VOXELS else 1,
    )


def _score_one(
    pred_box: np.ndarray,
    ref_box: np.ndarray,
    spacing: Sequence[float],
    voxel_ml: float,
    *,
    nsd_tolerance_mm: float,
    percentile: float,
    hausdorff: bool,
    threads: int = 1,
) -> OrganScore:
    n_pred = int(np.count_nonzero(pred_box))
    n_ref = int(np.count_nonzero(ref_box))
    empty_pred, empty_ref = n_pred == 0, n_ref == 0
    vol = {"volume_ref_ml": n_ref * voxel_ml, "volume_pred_ml": n_pred * voxel_ml}
    if empty_pred or empty_ref:  # not both: the caller handles organs absent from both maps
        return OrganScore(0.0, math.nan, 0.0, empty_ref, empty_pred, **vol)
    inter = int(np.count_nonzero(pred_box & ref_box))
    dice = 2.0 * inter / (n_pred + n_ref)
    if not hausdorff:
        return OrganScore(dice, math.nan, math.nan, False, False, **vol)
    s_pred, s_ref = _surface(pred_box), _surface(ref_box)
    d_pred_to_ref = _distances_to(s_ref, spacing, threads)[s_pred]
    d_ref_to_pred = _distances_to(s_pred, spacing, threads)[s_ref]
    q = percentile / 100.0
    hd = max(float(np.quantile(d_pred_to_ref, q)), float(np.quantile(d_ref_to_pred, q)))
    ok = np.count_nonzero(d_pred_to_ref <= nsd_tolerance_mm) + np.count_nonzero(
        d_ref_to_pred <= nsd_tolerance_mm
    )
    nsd = float(ok) / float(d_pred_to_ref.size + d_ref_to_pred.size)
    return OrganScore(dice, hd, nsd, False, False, **vol)


def organ_metrics(
    pred: ArrayLike,
    ref: ArrayLike,
    labels: Mapping[int, str],
    spacing: Sequence[float],
    *,
    nsd_tolerance_mm: float = 2.0,
    percentile: float = 95.0,
    hausdorff: bool = True,
    threads: int | None = None,
) -> dict[str, OrganScore]:
    """Dice, HD``percentile`` (mm) and surface Dice for every organ in ``labels`` (label 0 is skipped).

    ``pred`` and ``ref`` are integer label maps (numpy or torch) of the same 2D/3D shape; ``spacing`` is
    the voxel size in mm along each array axis. ``percentile=100`` gives the classic Hausdorff distance
    (MONAI's ``percentile=None``). ``hausdorff=False`` skips the surface metrics (hd95 and
    nsd are then NaN for non-empty organs) for a cheap Dice-only pass. See the module docstring for the
    exact definitions and the empty-organ policy.

    ``threads`` is the number of threads each large EDT runs on (and >1 runs the two bounding-box
    passes side by side); ``None`` uses the CPUs available to this process (at most 8). On a quiet
    2-core machine 2 threads took 0.29 s instead of 0.52 s for 5 organs at 512x512x200; on an
    oversubscribed machine pass ``threads=1``. Results do not depend on it.
    """
    p, r = _as_labelmap(pred, "pred"), _as_labelmap(ref, "ref")
    if p.shape != r.shape:
        raise GeometryMismatchError(None, f"pred shape {p.shape} != ref shape {r.shape}")
    spacing = tuple(float(s) for s in spacing)
    if len(spacing) != p.ndim or not all(math.isfinite(s) and s > 0 for s in spacing):
        raise GeometryError(None, f"spacing {spacing} must have {p.ndim} positive finite values (mm)")
    if not 0.0 <= percentile <= 100.0:
        raise ValueError(f"percentile must be in [0, 100], got {percentile}")
    if nsd_tolerance_mm < 0 or not math.isfinite(nsd_tolerance_mm):
        raise ValueError(f"nsd_tolerance_mm must be finite and >= 0, got {nsd_tolerance_mm}")
    organs = {int(k): str(v) for k, v in labels.items() if int(k) != 0}
    if any(k < 0 for k in organs):
        raise LabelError(None, f"organ labels must be positive integers, got {sorted(organs)}")
    if len(set(organs.values())) != len(organs):
        raise LabelError(None, f"organ names must be unique, got {sorted(organs.values())}")
    if not organs:
        return {}
    max_label = max(organs)
    n_threads = available_cpus() if threads is None else max(1, int(threads))
    voxel_ml = float(np.prod(spacing)) / 1000.0

    def score(lab: int) -> OrganScore:
        box = _union_box(boxes_p[lab - 1], boxes_r[lab - 1])
        if box is None:
            return OrganScore(1.0, 0.0, 1.0, True, True, 0.0, 0.0)
        return _score_one(
            p[box] == lab,
            r[box] == lab,
            spacing,
            voxel_ml,
            nsd_tolerance_mm=nsd_tolerance_mm,
            percentile=percentile,
            hausdorff=hausdorff,
            threads=n_threads,
        )

    labs = sorted(organs)
    if n_threads > 1 and p.size >= _PARALLEL_BOXES_MIN_VOXELS:  # these passes release the GIL
        with ThreadPoolExecutor(2) as pool:
            fp, fr = pool.submit(_find_boxes, p, max_label), pool.submit(_find_boxes, r, max_label)
            boxes_p, boxes_r = fp.result(), fr.result()
    else:
        boxes_p, boxes_r = _find_boxes(p, max_label), _find_boxes(r, max_label)
    scores = [score(lab) for lab in labs]
    out = {organs[lab]: s for lab, s in zip(labs, scores, strict=True)}
    logger.debug(
        "organ_metrics: %d organs, %d empty in ref, %d empty in pred",
        len(out),
        sum(s.empty_ref for s in out.values()),
        sum(s.empty_pred for s in out.values()),
    )
    return out


_STATS = ("dice", "hd95", "nsd")
_CSV_FIELDS = ("case_id", "organ", *(f.name for f in OrganScore.__dataclass_fields__.values()))


class MetricsTable:
    """Collects per-case organ scores and aggregates them; empty cases are counted, never dropped."""

    def __init__(self) -> None:
        self._rows: list[dict[str, Any]] = []
        #: organ -> number of cases where it was not contoured (left out of its statistics).
        self.unannotated: dict[str, int] = {}

    def add(self, case_id: str, scores: Mapping[str, OrganScore], unannotated: Sequence[str] = ()) -> None:
        """Record the scores of one case (one row per organ).

        ``unannotated`` names organs this case's reference does not contour: they get no row (an
        unknown reference cannot be scored, and a 0 would be a lie) but are counted per organ.
        """
        for organ in unannotated:
            self.unannotated[organ] = self.unannotated.get(organ, 0) + 1
        for organ, s in scores.items():
            if organ == "mean":
                raise LabelError(None, "an organ may not be called 'mean' (reserved in the summary)")
            self._rows.append({"case_id": str(case_id), "organ": organ, **asdict(s)})

    def rows(self) -> list[dict[str, Any]]:
        """One dict per case x organ, in insertion order (a copy)."""
        return [dict(r) for r in self._rows]

    def summary(self) -> dict[str, Any]:
        """Per organ: mean/std/median of dice, hd95, nsd, and the counts; plus ``"mean"`` over organs.

        Dice and NSD statistics use every case. HD95 statistics use the finite values only;
        ``n_hd95_nan`` says how many were left out (cases where exactly one of ref/pred is empty).
        ``"mean"`` holds ``val_dice_mean``, ``val_hd95_mean`` and ``val_nsd_mean``: unweighted means of
        the per-organ means (organs without any finite HD95 are left out of ``val_hd95_mean``).
        """
        by_organ: dict[str, list[dict[str, Any]]] = {}
        for r in self._rows:
            by_organ.setdefault(r["organ"], []).append(r)
        out: dict[str, Any] = {}
        for organ, rows in by_organ.items():
            stats: dict[str, Any] = {
                "n": len(rows),
                "n_unannotated": self.unannotated.get(organ, 0),
                "n_empty_ref": sum(r["empty_ref"] for r in rows),
                "n_empty_pred": sum(r["empty_pred"] for r in rows),
            }
            for key in _STATS:
                vals = np.array([r[key] for r in rows], dtype=np.float64)
                finite = vals[np.isfinite(vals)]
                stats[f"n_{key}_nan"] = int(vals.size - finite.size)
                stats[f"{key}_mean"] = float(finite.mean()) if finite.size else math.nan
                stats[f"{key}_std"] = float(finite.std()) if finite.size else math.nan
                stats[f"{key}_median"] = float(np.median(finite)) if finite.size else math.nan
            out[organ] = stats
        mean: dict[str, float] = {}
        for key in _STATS:
            vals = np.array([s[f"{key}_mean"] for s in out.values()], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            mean[f"val_{key}_mean"] = float(vals.mean()) if vals.size else math.nan
        out["mean"] = mean
        return out

    def write_csv(self, path: str | Path) -> Path:
        """Write all rows as CSV atomically (NaN written as ``nan``)."""
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=list(_CSV_FIELDS), lineterminator="\n")
        writer.writeheader()
        for r in self._rows:
            writer.writerow({k: (repr(v) if isinstance(v, float) else v) for k, v in r.items()})
        return atomic_write_text(path, buf.getvalue())

    def write_summary_json(self, path: str | Path) -> Path:
        """Write :meth:`summary` as JSON atomically (NaN written as ``null``)."""
        return atomic_write_text(path, json.dumps(_nan_to_none(self.summary()), indent=2) + "\n")


def _nan_to_none(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _nan_to_none(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
