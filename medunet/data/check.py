"""Validate every image/label pair of a dataset and report all problems at once.

A dataset that loads (the layout is right) can still hold files that break training an hour in: a
truncated download, a label on another grid, a label value nobody declared. :func:`check_dataset`
reads each file once and collects every problem instead of stopping at the first, so a user fixes the
dataset in one pass. ``medunet check DATASET`` prints them as a table.
"""

from __future__ import annotations

import gzip
import logging
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from medunet.data.datalist import Case, Datalist
from medunet.errors import MedunetError
from medunet.io import Volume, is_nifti, read_image, read_nifti
from medunet.io.volume import max_corner_distance
from medunet.progress import progress

logger = logging.getLogger(__name__)

#: Voxel sizes outside this range (mm) are almost surely a broken header (metres, or 1e-3 pixdim).
MIN_SPACING_MM = 0.1
MAX_SPACING_MM = 20.0


@dataclass(frozen=True)
class Problem:
    """One thing wrong with one file of one case."""

    case_id: str
    file: Path | None
    problem: str

    def __str__(self) -> str:
        return (
            f"{self.case_id}: {self.file}: {self.problem}" if self.file else f"{self.case_id}: {self.problem}"
        )


def _gzip_damage(path: Path) -> str | None:
    """Why a ``.gz`` file's compressed stream is broken (truncated, bad CRC, bad data), or None if intact.

    Run only after a read failed, to tell a broken download apart from a bad NIfTI header.
    """
    if not path.name.lower().endswith(".gz"):
        return None
    try:
        with gzip.open(path, "rb") as fh:
            while fh.read(1 << 20):
                pass
    except EOFError:
        return "truncated gzip stream (file ends early: incomplete download or copy?)"
    except (OSError, zlib.error) as exc:
        return f"corrupt gzip stream ({exc})"
    return None


def _read(path: Path) -> Volume:
    """Read without the NaN check so it is reported with a count alongside the other problems."""
    return read_nifti(path, check_finite=False) if is_nifti(path) else read_image(path)


def _fmt(values: tuple[float, ...]) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"


def _volume_problems(vol: Volume) -> list[str]:
    """Problems a single image or label file can have on its own."""
    found: list[str] = []
    if len(vol.array.shape) != 3:
        found.append(f"not 3D: shape {tuple(vol.array.shape)}")
    if min(vol.array.shape, default=0) == 0:
        found.append(f"empty grid: shape {tuple(vol.array.shape)}")
    spacing = vol.spacing
    if min(spacing) <= 0:
        found.append(f"non-positive spacing {_fmt(spacing)} mm")
    elif min(spacing) < MIN_SPACING_MM or max(spacing) > MAX_SPACING_MM:
        found.append(
            f"absurd spacing {_fmt(spacing)} mm (expected {MIN_SPACING_MM}..{MAX_SPACING_MM} mm; "
            "is the header in metres or the pixdim wrong?)"
        )
    arr = vol.array
    if np.issubdtype(arr.dtype, np.floating):
        n_bad = int(arr.size - np.count_nonzero(np.isfinite(arr)))
        if n_bad:
            found.append(f"{n_bad} NaN/Inf voxel values")
    return found


def _label_values(arr: np.ndarray) -> np.ndarray:
    """Distinct values of a label array (bincount for small non-negative ints: ~10x faster than unique)."""
    if np.issubdtype(arr.dtype, np.integer) and arr.size:
        lo, hi = int(arr.min()), int(arr.max())
        if lo >= 0 and hi < 1 << 16:
            return np.flatnonzero(np.bincount(arr.ravel(), minlength=hi + 1))
    return np.unique(arr)


def _label_problems(vol: Volume, labels: dict[int, str]) -> list[str]:
    found: list[str] = []
    arr = np.asarray(vol.array)
    if np.issubdtype(arr.dtype, np.floating):
        finite = arr[np.isfinite(arr)]
        fractional = np.count_nonzero(finite != np.round(finite))
        if fractional:
            found.append(
                f"label dtype {arr.dtype} has {fractional} non-integer values (resampled with interpolation?)"
            )
            return found
        arr = finite.astype(np.int64)
    elif not np.issubdtype(arr.dtype, np.integer) and arr.dtype != np.bool_:
        found.append(f"label dtype {arr.dtype} is not numeric")
        return found
    values = _label_values(arr.astype(np.int64) if arr.dtype == np.bool_ else arr)
    undeclared = [int(v) for v in values if int(v) not in labels]
    if undeclared:
        shown = ", ".join(map(str, undeclared[:20])) + (" ..." if len(undeclared) > 20 else "")
        found.append(f"label values not declared in labels: {shown} (declared: {sorted(labels)})")
    return found


def check_case(
    case: Case, labels: dict[int, str], n_channels: int, *, tolerance_mm: float = 0.01
) -> list[Problem]:
    """All problems of one case: each file alone, then channels and label against the first image."""
    problems: list[Problem] = []

    def add(file: Path | None, text: str) -> None:
        problems.append(Problem(case.case_id, file, text))

    if n_channels and len(case.images) != n_channels:
        add(
            None, f"{len(case.images)} image channel file(s) but the dataset declares {n_channels} modalities"
        )
    volumes: list[tuple[Path, Volume]] = []
    files = [*case.images, *([case.label] if case.label is not None else [])]
    for i, path in enumerate(files):
        try:
            vol = _read(path)
        except MedunetError as exc:
            damage = _gzip_damage(path) if path.is_file() else None
            add(path, exc.problem if damage is None or damage in exc.problem else f"{damage}; {exc.problem}")
            continue
        except Exception as exc:  # a reader we consume raised something untyped: still report, never crash
            add(path, f"unreadable ({type(exc).__name__}: {exc})")
            continue
        for text in _volume_problems(vol):
            add(path, text)
        is_label = case.label is not None and i == len(files) - 1
        if is_label:
            for text in _label_problems(vol, labels):
                add(path, text)
        volumes.append((path, vol))
    if len(volumes) < 2 or volumes[0][0] != case.images[0]:
        return problems  # nothing to compare against (first image unreadable)
    ref_path, ref = volumes[0]
    for path, vol in volumes[1:]:
        what = "label" if path == case.label else "channel"
        if vol.shape != ref.shape:
            add(path, f"{what} shape {vol.shape} differs from image shape {ref.shape} ({ref_path.name})")
            continue
        dist = max_corner_distance(vol.affine, ref.affine, ref.shape)
        if dist > tolerance_mm:
            add(
                path,
                f"{what} grid differs from image ({ref_path.name}) by up to {dist:.3g} mm "
                f"(tolerance {tolerance_mm:g} mm); spacing {_fmt(vol.spacing)} vs {_fmt(ref.spacing)}",
            )
    return problems


def check_dataset(
    datalist: Datalist, *, tolerance_mm: float = 0.01, show_progress: bool | None = None
) -> list[Problem]:
    """Check every case (training and test) and return all problems found; empty means clean.

    Detects missing, unreadable, truncated or corrupt files, non-3D images, image/label shape and
    affine mismatch beyond ``tolerance_mm`` (saying by how many mm), label values not in
    ``datalist.labels``, fractional label values, NaN/Inf, and absurd or non-positive spacing. Each file
    is read once; one case is in memory at a time.
    """
    problems: list[Problem] = []
    cases = datalist.cases
    disable = None if show_progress is None else not show_progress
    for case in progress(cases, desc="checking cases", total=len(cases), disable=disable):
        found = check_case(case, datalist.labels, len(datalist.modalities), tolerance_mm=tolerance_mm)
        for p in found:
            logger.debug("%s", p)
        problems.extend(found)
    logger.info("checked %d cases: %d problem(s)", len(cases), len(problems))
    return problems


def format_problems(problems: list[Problem], root: Path | None = None) -> str:
    """A plain-text table ``case | file | problem`` (file paths relative to ``root`` when inside it)."""

    def rel(path: Path | None) -> str:
        if path is None:
            return "-"
        if root is not None:
            try:
                return path.relative_to(root).as_posix()
            except ValueError:
                pass
        return str(path)

    rows = [("case", "file", "problem")] + [(p.case_id, rel(p.file), p.problem) for p in problems]
    w0 = max(len(r[0]) for r in rows)
    w1 = max(len(r[1]) for r in rows)
    lines = [f"{a:<{w0}}  {b:<{w1}}  {c}" for a, b, c in rows]
    lines.insert(1, f"{'-' * w0}  {'-' * w1}  {'-' * 7}")
    return "\n".join(lines) + "\n"


__all__ = ["MAX_SPACING_MM", "MIN_SPACING_MM", "Problem", "check_case", "check_dataset", "format_problems"]
