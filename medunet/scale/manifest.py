"""Case lists for ``--input``: a text file with one path per line, or a CSV manifest.

A **list file** (``.txt``, ``.lst``, ``.list``) holds one image file, image folder or DICOM series folder
per line; blank lines and lines starting with ``#`` are ignored. A **CSV manifest** (``.csv``) has a
header row with an ``input`` column (``path`` and ``image`` are accepted too) and optionally ``case``
(the case folder name) and ``series`` (which series of a DICOM folder: a SeriesInstanceUID or ``all``).
Relative paths are taken from the list file's folder, so a list can travel with its archive.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from medunet.errors import DatasetError

LIST_SUFFIXES = (".txt", ".lst", ".list")
CSV_SUFFIXES = (".csv",)
INPUT_COLUMNS = ("input", "path", "image")


@dataclass(frozen=True)
class ManifestEntry:
    """One line of a list file or manifest: an input path, with an optional case name and series."""

    input: Path
    case: str | None = None
    series: str | None = None


def is_manifest(path: Path) -> bool:
    """Whether ``path`` is a list file or CSV manifest (by its suffix) rather than an image."""
    return path.is_file() and path.name.lower().endswith(LIST_SUFFIXES + CSV_SUFFIXES)


def _resolve(base: Path, text: str) -> Path:
    p = Path(text).expanduser()
    return p if p.is_absolute() else base / p


def _cell(row: dict[str, str | None], column: str | None) -> str | None:
    value = (row.get(column) or "").strip() if column else ""
    return value or None


def read_manifest(path: str | Path) -> list[ManifestEntry]:
    """The entries of a list file or CSV manifest, in file order (see the module docstring)."""
    path = Path(path)
    base = path.resolve().parent
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise DatasetError(path, f"cannot read the case list: {exc}") from exc
    if not path.name.lower().endswith(CSV_SUFFIXES):
        return [
            ManifestEntry(_resolve(base, line.strip()))
            for line in text.splitlines()
            if line.strip() and not line.lstrip().startswith("#")
        ]
    rows = list(csv.DictReader(text.splitlines()))
    header = {(k or "").strip().lower(): k for k in (rows[0].keys() if rows else [])}
    column = next((header[c] for c in INPUT_COLUMNS if c in header), None)
    if column is None:
        if not rows:
            return []
        raise DatasetError(path, f"CSV manifest needs an 'input' column; header has {sorted(header)}")
    case_col, series_col = header.get("case"), header.get("series")
    entries: list[ManifestEntry] = []
    for n, row in enumerate(rows, start=2):
        value = (row.get(column) or "").strip()
        if not value:
            raise DatasetError(path, f"line {n}: empty '{column}'")
        entries.append(
            ManifestEntry(
                _resolve(base, value),
                case=_cell(row, case_col),
                series=_cell(row, series_col),
            )
        )
    return entries
