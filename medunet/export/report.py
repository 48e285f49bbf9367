"""Per-case report files: organ volumes table, three-plane overlay preview, review queue."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from scipy import ndimage

from medunet.export.itksnap import Color, label_colors
from medunet.io.atomic import atomic_write_bytes, atomic_write_text


@dataclass(frozen=True)
class OrganStats:
    """One organ of one case: voxel count, volume and mean image intensity inside it."""

    label: int
    organ: str
    voxels: int
    volume_ml: float
    mean_intensity: float | None
    mean_uncertainty: float | None = None


def organ_stats(
    labels: np.ndarray,
    affine: np.ndarray,
    label_names: Mapping[int, str],
    image: np.ndarray | None = None,
    uncertainty: np.ndarray | None = None,
) -> list[OrganStats]:
    """Statistics for every declared organ (absent organs get 0 voxels and empty means)."""
    voxel_ml = abs(float(np.linalg.det(np.asarray(affine)[:3, :3]))) / 1000.0
    flat = labels.ravel()
    n_bins = max(int(flat.max(initial=0)), max(label_names)) + 1
    counts = np.bincount(flat, minlength=n_bins)

    def means(values: np.ndarray | None) -> np.ndarray | None:
        if values is None:
            return None
        vals = np.asarray(values, dtype=np.float64)
        if vals.ndim == 4:  # multi-channel image: first channel
            vals = vals[..., 0]
        sums = np.bincount(flat, weights=vals.ravel(), minlength=n_bins)
        with np.errstate(invalid="ignore", divide="ignore"):
            return sums / counts

    mean_img, mean_unc = means(image), means(uncertainty)
    rows = []
    for value in sorted(label_names):
        if value == 0:
            continue
        n = int(counts[value])
        rows.append(
            OrganStats(
                label=value,
                organ=label_names[value],
                voxels=n,
                volume_ml=round(n * voxel_ml, 4),
                mean_intensity=None if mean_img is None or n == 0 else round(float(mean_img[value]), 3),
                mean_uncertainty=None if mean_unc is None or n == 0 else round(float(mean_unc[value]), 5),
            )
        )
    return rows


def _csv_text(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow(["" if v is None else v for v in row])
    return buf.getvalue()


def write_volumes_csv(path: str | Path, stats: Sequence[OrganStats]) -> Path:
    """``volumes.csv``: label, organ, voxel count, volume in mL, mean intensity (image units)."""
    header = ["label", "organ", "voxels", "volume_ml", "mean_intensity"]
    return atomic_write_text(
        path,
        _csv_text(header, ([s.label, s.organ, s.voxels, s.volume_ml, s.mean_intensity] for s in stats)),
    )


def review_queue_rows(cases: Mapping[str, Sequence[OrganStats]]) -> list[dict[str, object]]:
    """Cases x organs ranked least certain first; an organ the model did not find at all comes first."""
    rows = []
    for case, stats in cases.items():
        for s in stats:
            rows.append({**asdict(s), "case": case, "found": s.voxels > 0})

    def key(r: dict[str, object]) -> tuple[int, float]:
        unc = r["mean_uncertainty"]
        return (0 if not r["found"] else 1, -(float(unc) if unc is not None else math.inf))

    rows.sort(key=key)
    return rows


def write_review_queue(path: str | Path, cases: Mapping[str, Sequence[OrganStats]]) -> Path:
    """``review_queue.csv``: rank, case, label, organ, voxels, mean_uncertainty (least certain first)."""
    rows = review_queue_rows(cases)
    header = ["rank", "case", "label", "organ", "voxels", "mean_uncertainty", "found"]
    body = (
        [i + 1, r["case"], r["label"], r["organ"], r["voxels"], r["mean_uncertainty"], int(bool(r["found"]))]
        for i, r in enumerate(rows)
    )
    return atomic_write_text(path, _csv_text(header, body))


def _to_ras(array: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Reorient to the closest RAS axes (for display) and return (array, voxel spacing)."""
    ornt = nib.orientations.io_orientation(affine)
    out = nib.orientations.apply_orientation(array, ornt)
    ras_affine = affine @ nib.orientations.inv_ornt_aff(ornt, array.shape[:3])
    return out, np.linalg.norm(ras_affine[:3, :3], axis=0)


def _display_window(image: np.ndarray, window: tuple[float, float] | None) -> tuple[float, float]:
    if window is not None:
        return window
    lo, hi = np.percentile(image, [1, 99]) if image.size else (0.0, 1.0)
    return float(lo), float(hi if hi > lo else lo + 1)


def preview_png(
    image: np.ndarray,
    labels: np.ndarray,
    affine: np.ndarray,
    label_names: Mapping[int, str],
    *,
    colors: Mapping[int, Color] | None = None,
    window: tuple[float, float] | None = None,
    alpha: float = 0.5,
    title: str = "",
) -> bytes:
    """PNG bytes: axial, coronal and sagittal slices through the organs' centre with a label overlay.

    Views are in radiological convention after reorientation to RAS (patient left on image right for
    axial/coronal, anterior to the left for sagittal), with the physical aspect ratio.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Patch

    img = np.asarray(image, dtype=np.float32)
    if img.ndim == 4:
        img = img[..., 0]
    img, spacing = _to_ras(img, affine)
    lab, _ = _to_ras(np.asarray(labels), affine)
    colors = dict(colors or label_colors(label_names))
    lo, hi = _display_window(img, window)
    centre = (
        [int(round(c)) for c in ndimage.center_of_mass(lab > 0)] if lab.any() else [s // 2 for s in lab.shape]
    )
    lut = np.zeros((max(int(lab.max(initial=0)), max(label_names)) + 1, 3), np.float32)
    for value, rgb in colors.items():
        if value < len(lut):
            lut[value] = np.asarray(rgb, np.float32) / 255.0

    def render(img2d: np.ndarray, lab2d: np.ndarray) -> np.ndarray:
        grey = np.clip((img2d - lo) / (hi - lo), 0, 1)[..., None].repeat(3, axis=-1)
        over = lut[np.clip(lab2d, 0, len(lut) - 1)]
        mask = (lab2d > 0)[..., None]
        return np.where(mask, (1 - alpha) * grey + alpha * over, grey)

    x, y, z = centre
    sx, sy, sz = spacing
    # (rows, cols) for imshow: rows top->bottom. Axial: rows = A (flipped, anterior up), cols = R->L.
    views = [
        ("axial", img[:, :, z].T[::-1, ::-1], lab[:, :, z].T[::-1, ::-1], sy / sx),
        ("coronal", img[:, y, :].T[::-1, ::-1], lab[:, y, :].T[::-1, ::-1], sz / sx),
        ("sagittal", img[x, :, :].T[::-1, ::-1], lab[x, :, :].T[::-1, ::-1], sz / sy),
    ]
    fig = Figure(figsize=(12, 4.6), dpi=100)
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, (name, im2d, lab2d, aspect) in zip(axes, views, strict=True):
        ax.imshow(render(im2d, lab2d), aspect=aspect, interpolation="nearest")
        ax.set_title(name)
        ax.set_axis_off()
    present = [v for v in sorted(label_names) if v != 0 and (lab == v).any()]
    if present:
        handles = [Patch(color=np.asarray(colors[v]) / 255.0, label=label_names[v]) for v in present]
        fig.legend(handles=handles, loc="lower center", ncol=min(len(handles), 6), frameon=False)
    if title:
        fig.suptitle(title)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor="white")
    return buf.getvalue()


def write_preview(path: str | Path, *args: object, **kwargs: object) -> Path:
    """Write :func:`preview_png` to ``path`` atomically."""
    return atomic_write_bytes(path, preview_png(*args, **kwargs))  # type: ignore[arg-type]
