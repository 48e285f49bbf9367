"""Dataset fingerprint: spacing, size, foreground intensity and class statistics (the nnU-Net habit).

Plans (target spacing, patch size, CT window) are derived from these numbers, so they are computed once
per dataset content and cached by :func:`~medunet.data.layouts.dataset_hash`. Geometry is reported in
RAS axis order -- the order images have after the pipeline reorients them to RAS -- so a case stored
P-L-I contributes its I-axis spacing to the S entry.

JSON keys (read by the bundle)::

    n_cases, dataset_hash, modalities {"0": "CT"}, labels {"0": "background", ...},
    spacing {median, p10, p90, min, max} (mm, R A S), size {median, p10, p90} (voxels, R A S),
    intensity {"<channel>": {mean, std, median, p00_5, p99_5, min, max}} over foreground voxels,
    class_fraction {"<organ>": fraction of all voxels}, class_presence {"<organ>": fraction of cases},
    anisotropy (max / min of the median spacing), settings {samples_per_case, seed}
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np

from medunet.data.datalist import Datalist
from medunet.data.layouts import dataset_hash
from medunet.errors import DatasetError
from medunet.io import Volume, read_image
from medunet.io.atomic import atomic_write_text
from medunet.progress import progress

logger = logging.getLogger(__name__)

_REQUIRED_KEYS = (
    "n_cases",
    "dataset_hash",
    "modalities",
    "labels",
    "spacing",
    "size",
    "intensity",
    "class_fraction",
    "class_presence",
    "anisotropy",
)


def ras_spacing_and_size(volume: Volume) -> tuple[tuple[float, float, float], tuple[int, int, int]]:
    """Per-axis spacing (mm) and size (voxels) permuted into R, A, S order by the affine's axis codes."""
    ornt = nib.orientations.io_orientation(volume.affine)
    spacing = [0.0, 0.0, 0.0]
    size = [0, 0, 0]
    for voxel_axis, (ras_axis, _flip) in enumerate(ornt):
        spacing[int(ras_axis)] = volume.spacing[voxel_axis]
        size[int(ras_axis)] = volume.shape[voxel_axis]
    return (spacing[0], spacing[1], spacing[2]), (size[0], size[1], size[2])


@dataclass(frozen=True)
class Fingerprint:
    """The statistics of one dataset; field names are the JSON keys (see the module docstring)."""

    n_cases: int
    dataset_hash: str
    modalities: dict[str, str]
    labels: dict[str, str]
    spacing: dict[str, list[float]]
    size: dict[str, list[float]]
    intensity: dict[str, dict[str, float]]
    class_fraction: dict[str, float]
    class_presence: dict[str, float]
    anisotropy: float
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def median_spacing(self) -> tuple[float, float, float]:
        """Median voxel size in mm along R, A, S."""
        return tuple(self.spacing["median"])  # type: ignore[return-value]

    @property
    def median_size(self) -> tuple[float, float, float]:
        """Median image size in voxels along R, A, S (after reorienting to RAS, before resampling)."""
        return tuple(self.size["median"])  # type: ignore[return-value]

    @property
    def median_physical_size_mm(self) -> tuple[float, float, float]:
        """Median size times median spacing: roughly the field of view in mm along R, A, S."""
        return tuple(s * n for s, n in zip(self.median_spacing, self.median_size, strict=True))  # type: ignore[return-value]

    @property
    def ct_window(self) -> tuple[float, float]:
        """``(p00_5, p99_5)`` of channel 0 foreground intensities: the clip window nnU-Net uses for CT."""
        stats = self.intensity["0"]
        return float(stats["p00_5"]), float(stats["p99_5"])

    @property
    def label_map(self) -> dict[int, str]:
        """``labels`` with integer keys, as :class:`~medunet.data.datalist.Datalist` and Plans use."""
        return {int(k): v for k, v in self.labels.items()}

    @property
    def is_ct(self) -> bool:
        return self.modalities.get("0", "").upper() == "CT"

    def to_dict(self) -> dict[str, Any]:
        return {
            "n_cases": self.n_cases,
            "dataset_hash": self.dataset_hash,
            "modalities": dict(self.modalities),
            "labels": dict(self.labels),
            "spacing": {k: list(v) for k, v in self.spacing.items()},
            "size": {k: list(v) for k, v in self.size.items()},
            "intensity": {k: dict(v) for k, v in self.intensity.items()},
            "class_fraction": dict(self.class_fraction),
            "class_presence": dict(self.class_presence),
            "anisotropy": self.anisotropy,
            "settings": dict(self.settings),
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], source: str | Path | None = None) -> Fingerprint:
        missing = [k for k in _REQUIRED_KEYS if k not in d]
        if missing:
            raise DatasetError(source, f"fingerprint is missing key(s) {', '.join(missing)}")
        try:
            return cls(
                n_cases=int(d["n_cases"]),
                dataset_hash=str(d["dataset_hash"]),
                modalities={str(k): str(v) for k, v in d["modalities"].items()},
                labels={str(k): str(v) for k, v in d["labels"].items()},
                spacing={str(k): [float(x) for x in v] for k, v in d["spacing"].items()},
                size={str(k): [float(x) for x in v] for k, v in d["size"].items()},
                intensity={
                    str(c): {str(k): float(x) for k, x in s.items()} for c, s in d["intensity"].items()
                },
                class_fraction={str(k): float(v) for k, v in d["class_fraction"].items()},
                class_presence={str(k): float(v) for k, v in d["class_presence"].items()},
                anisotropy=float(d["anisotropy"]),
                settings=dict(d.get("settings", {})),
            )
        except (AttributeError, TypeError, ValueError) as exc:
            raise DatasetError(source, f"malformed fingerprint ({exc})") from None

    def save(self, path: str | Path) -> Path:
        """Write the fingerprint as JSON, atomically."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> Fingerprint:
        path = Path(path)
        try:
            d = json.loads(path.read_text(encoding="utf-8"))
        except OSError as exc:
            raise DatasetError(path, f"cannot read fingerprint ({exc.strerror or exc})") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise DatasetError(path, f"fingerprint is not valid JSON ({exc})") from None
        if not isinstance(d, dict):
            raise DatasetError(path, "fingerprint must be a JSON object")
        return cls.from_dict(d, source=path)


def _case_rng(seed: int, case_id: str) -> np.random.Generator:
    """A generator fixed by (seed, case id), so sampling does not depend on case order."""
    return np.random.default_rng(
        int.from_bytes(hashlib.sha256(f"{seed}\0{case_id}".encode()).digest()[:8], "big")
    )


def _percentiles(values: list[list[float]] | np.ndarray) -> dict[str, list[float]]:
    arr = np.asarray(values, dtype=np.float64)
    return {
        "median": np.median(arr, axis=0).tolist(),
        "p10": np.percentile(arr, 10, axis=0).tolist(),
        "p90": np.percentile(arr, 90, axis=0).tolist(),
        "min": arr.min(axis=0).tolist(),
        "max": arr.max(axis=0).tolist(),
    }


def _intensity_stats(samples: np.ndarray, lo: float, hi: float) -> dict[str, float]:
    if samples.size == 0:
        return {k: math.nan for k in ("mean", "std", "median", "p00_5", "p99_5", "min", "max")}
    p00_5, median, p99_5 = np.percentile(samples, [0.5, 50.0, 99.5])
    return {
        "mean": float(np.mean(samples)),
        "std": float(np.std(samples)),
        "median": float(median),
        "p00_5": float(p00_5),
        "p99_5": float(p99_5),
        "min": float(lo),
        "max": float(hi),
    }


def compute_fingerprint(
    datalist: Datalist, *, samples_per_case: int = 10_000, seed: int = 0, show_progress: bool | None = None
) -> Fingerprint:
    """Compute the fingerprint over the labelled (training) cases of ``datalist``.

    Intensity statistics are over foreground (label > 0) voxels of each channel. Like nnU-Net, each
    case contributes ``samples_per_case`` voxels drawn at random (with replacement) so large cases do
    not dominate; a case with fewer foreground voxels contributes all of them, exactly. ``min``/``max``
    are exact over all foreground voxels. If no case has foreground, all voxels are used (warned).
    Unreadable files raise :class:`~medunet.errors.InvalidImageError` (run ``medunet check`` first).
    """
    cases = [c for c in datalist.training if c.label is not None]
    if not cases:
        raise DatasetError(datalist.root, "no labelled training cases to fingerprint")
    n_channels = len(datalist.modalities)
    num_classes = max(datalist.labels) + 1
    spacings: list[tuple[float, float, float]] = []
    sizes: list[tuple[int, int, int]] = []
    samples: list[list[np.ndarray]] = [[] for _ in range(n_channels)]
    fallback: list[list[np.ndarray]] = [[] for _ in range(n_channels)]
    lows = [math.inf] * n_channels
    highs = [-math.inf] * n_channels
    class_voxels = np.zeros(num_classes, dtype=np.int64)
    class_cases = np.zeros(num_classes, dtype=np.int64)
    total_voxels = 0
    disable = None if show_progress is None else not show_progress
    for case in progress(cases, desc="fingerprinting", total=len(cases), disable=disable):
        assert case.label is not None
        label_vol = read_image(case.label)
        label = np.asarray(label_vol.array)
        if np.issubdtype(label.dtype, np.floating):
            label = np.rint(np.nan_to_num(label)).astype(np.int64)
        spacing, size = ras_spacing_and_size(label_vol)
        spacings.append(spacing)
        sizes.append(size)
        counts = np.bincount(np.clip(label, 0, num_classes).ravel(), minlength=num_classes + 1)[:num_classes]
        class_voxels += counts
        class_cases += counts > 0
        total_voxels += label.size
        foreground = label > 0
        n_fg = int(np.count_nonzero(foreground))
        rng = _case_rng(seed, case.case_id)
        pick = rng.integers(0, n_fg, size=samples_per_case) if n_fg > samples_per_case else None
        for channel, image_path in enumerate(case.images[:n_channels]):
            image = np.asarray(read_image(image_path).array)
            if image.shape != label.shape:
                raise DatasetError(image_path, f"image shape {image.shape} differs from label {label.shape}")
            if n_fg:
                fg = image[foreground].astype(np.float64)
                lows[channel] = min(lows[channel], float(fg.min()))
                highs[channel] = max(highs[channel], float(fg.max()))
                samples[channel].append(fg if pick is None else fg[pick])
            else:
                flat = image.ravel().astype(np.float64)
                fallback[channel].append(
                    flat[rng.integers(0, flat.size, size=min(samples_per_case, flat.size))]
                )
    intensity: dict[str, dict[str, float]] = {}
    for channel in range(n_channels):
        if samples[channel]:
            values = np.concatenate(samples[channel])
            intensity[str(channel)] = _intensity_stats(values, lows[channel], highs[channel])
        else:
            logger.warning(
                "%s: no foreground voxels in any case; intensity statistics use all voxels", datalist.root
            )
            values = np.concatenate(fallback[channel]) if fallback[channel] else np.empty(0)
            lo, hi = (float(values.min()), float(values.max())) if values.size else (math.nan, math.nan)
            intensity[str(channel)] = _intensity_stats(values, lo, hi)
    spacing_stats = _percentiles(spacings)
    size_stats = {k: v for k, v in _percentiles(sizes).items() if k in ("median", "p10", "p90")}
    median = spacing_stats["median"]
    organs = {v: name for v, name in sorted(datalist.labels.items()) if v != 0}
    fp = Fingerprint(
        n_cases=len(cases),
        dataset_hash=dataset_hash(datalist),
        modalities={str(k): v for k, v in sorted(datalist.modalities.items())},
        labels={str(k): v for k, v in sorted(datalist.labels.items())},
        spacing=spacing_stats,
        size=size_stats,
        intensity=intensity,
        class_fraction={name: float(class_voxels[v] / total_voxels) for v, name in organs.items()},
        class_presence={name: float(class_cases[v] / len(cases)) for v, name in organs.items()},
        anisotropy=float(max(median) / min(median)),
        settings={"samples_per_case": samples_per_case, "seed": seed},
    )
    logger.info(
        "fingerprint of %d cases: median spacing %s mm (RAS), median size %s",
        fp.n_cases,
        [round(s, 3) for s in fp.median_spacing],
        [round(s, 1) for s in fp.median_size],
    )
    return fp


def load_or_compute_fingerprint(
    datalist: Datalist, cache_path: str | Path, *, samples_per_case: int = 10_000, seed: int = 0
) -> Fingerprint:
    """The fingerprint cached at ``cache_path`` when it matches the dataset's content hash and settings;
    otherwise compute it and (atomically) write the cache. A damaged cache is recomputed, not trusted."""
    cache_path = Path(cache_path)
    current = dataset_hash(datalist)
    settings = {"samples_per_case": samples_per_case, "seed": seed}
    if cache_path.is_file():
        try:
            cached = Fingerprint.load(cache_path)
        except DatasetError as exc:
            logger.warning("%s; recomputing", exc)
        else:
            if cached.dataset_hash == current and cached.settings == settings:
                logger.info("%s: using cached fingerprint (dataset hash %s)", cache_path, current)
                return cached
            logger.info("%s: dataset or settings changed; recomputing fingerprint", cache_path)
    fp = compute_fingerprint(datalist, samples_per_case=samples_per_case, seed=seed)
    fp.save(cache_path)
    return fp


__all__ = ["Fingerprint", "compute_fingerprint", "load_or_compute_fingerprint", "ras_spacing_and_size"]
