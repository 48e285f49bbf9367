"""Reading DICOM series into a :class:`Volume`: list series, check geometry, refuse what would be misread.

A series is sorted by slice position along the row x column normal (never InstanceNumber), the slice
spacing comes from the positions (never SliceThickness), and LPS -> RAS happens once, in
:func:`medunet.io.volume.lps_to_ras_affine`. Series that a naive stacker would silently misread -- gantry
tilt, gaps, duplicate slices, mixed sizes or orientations, 4D acquisitions -- raise
:class:`UnsupportedSeriesError` with the reason. Siemens mosaics are unpacked (nibabel's CSA reader
gives the tile count and slice order). Enhanced multi-frame objects are read frame by frame from their
functional groups.

PHI: only non-identifying fields reach :attr:`Volume.meta` (UIDs, modality, description, file paths).
"""

from __future__ import annotations

import logging
import math
import warnings
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from medunet.errors import DicomError, MissingDecoderError, UnsupportedSeriesError
from medunet.io.volume import Volume, lps_to_ras_affine

logger = logging.getLogger(__name__)

#: Relative tolerance on slice spacing (a step that differs from the median by more is a gap).
SPACING_RTOL = 0.05
#: Largest allowed angle (degrees) between the slice stacking direction and the image-plane normal.
TILT_TOL_DEG = 0.5
#: Orientation cosines equal within this are "the same orientation".
IOP_ATOL = 1e-4

_PLUGIN_HINT = {
    "1.2.840.10008.1.2.4.50": "pylibjpeg-libjpeg (pip install pylibjpeg pylibjpeg-libjpeg) or python-gdcm",
    "1.2.840.10008.1.2.4.51": "pylibjpeg-libjpeg (pip install pylibjpeg pylibjpeg-libjpeg) or python-gdcm",
    "1.2.840.10008.1.2.4.57": "pylibjpeg-libjpeg (pip install pylibjpeg pylibjpeg-libjpeg) or python-gdcm",
    "1.2.840.10008.1.2.4.70": "pylibjpeg-libjpeg (pip install pylibjpeg pylibjpeg-libjpeg) or python-gdcm",
    "1.2.840.10008.1.2.4.80": "pyjpegls (pip install pyjpegls) or pylibjpeg-libjpeg or python-gdcm",
    "1.2.840.10008.1.2.4.81": "pyjpegls (pip install pyjpegls) or pylibjpeg-libjpeg or python-gdcm",
    "1.2.840.10008.1.2.4.90": "pylibjpeg-openjpeg (pip install pylibjpeg pylibjpeg-openjpeg) or python-gdcm",
    "1.2.840.10008.1.2.4.91": "pylibjpeg-openjpeg (pip install pylibjpeg pylibjpeg-openjpeg) or python-gdcm",
    "1.2.840.10008.1.2.5": "pylibjpeg-rle (pip install pylibjpeg pylibjpeg-rle) or numpy (built in)",
}


@dataclass
class SeriesInfo:
    """What :func:`list_series` learns about one series from its headers (no pixel data read)."""

    uid: str
    description: str
    modality: str
    n_files: int
    n_slices: int
    rows: int
    cols: int
    directory: Path
    files: list[Path] = field(repr=False, default_factory=list)
    #: Set when a SeriesInstanceUID is shared by several geometries; selects one of them.
    key: str = ""

    def __post_init__(self) -> None:
        if not self.key:
            self.key = self.uid


@dataclass
class _Slice:
    """One 2D image: a single-frame file or one frame of a multi-frame file."""

    path: Path
    frame: int | None  # index into a multi-frame file's frames, None for single-frame
    position: np.ndarray  # IPP, LPS mm
    orientation: np.ndarray  # IOP, 6 cosines
    pixel_spacing: tuple[float, float]  # (between rows, between columns)
    rows: int
    cols: int
    slope: float = 1.0
    intercept: float = 0.0
    time_key: tuple[Any, ...] = ()
    sop_uid: str = ""
    instance: int = 0


def _is_candidate(path: Path) -> bool:
    return path.is_file() and not path.name.startswith(".")


def _read_header(path: Path) -> Dataset | None:
    """Read a file's header, or None when it is not DICOM (README files next to the series)."""
    try:
        return pydicom.dcmread(path, stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError):
        return None
    except Exception as exc:  # pydicom raises assorted errors on damaged headers
        logger.warning("%s: skipping unreadable DICOM header (%s)", path, exc)
        return None


def _scan(root: Path) -> list[tuple[Path, Dataset]]:
    root = Path(root)
    if root.is_file():
        files = [root]
    elif root.is_dir():
        files = sorted(p for p in root.rglob("*") if _is_candidate(p))
    else:
        raise DicomError(root, "no such file or directory")
    found = [(p, h) for p in files if (h := _read_header(p)) is not None]
    if not found:
        raise DicomError(root, f"no DICOM files found ({len(files)} files looked at)")
    return found


def _iop_key(header: Dataset) -> tuple[float, ...]:
    iop = _floats(header, "ImageOrientationPatient", 6, None, required=False)
    return tuple(round(v, 3) for v in iop) if iop is not None else ()


def _group(found: Sequence[tuple[Path, Dataset]]) -> dict[str, list[tuple[Path, Dataset]]]:
    """Group by SeriesInstanceUID; a UID reused for several series numbers, sizes or orientations is split.

    Some scanners and anonymisers reuse one UID for several series (dcm_qa_12bit does); each part gets the
    key ``UID#n``.
    """
    by_uid: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    for path, header in found:
        by_uid[str(header.get("SeriesInstanceUID", "") or "")].append((path, header))
    groups: dict[str, list[tuple[Path, Dataset]]] = {}
    for uid, items in by_uid.items():
        sub: dict[tuple[Any, ...], list[tuple[Path, Dataset]]] = defaultdict(list)
        for path, header in items:
            geometry = (str(header.get("SeriesNumber", "")), header.get("Rows"), header.get("Columns"))
            sub[(*geometry, _iop_key(header))].append((path, header))
        if len(sub) == 1:
            groups[uid] = items
        else:
            for n, key in enumerate(sorted(sub, key=str), start=1):
                groups[f"{uid}#{n}"] = sub[key]
    return groups


def _info(key: str, items: list[tuple[Path, Dataset]]) -> SeriesInfo:
    first = items[0][1]
    files = [p for p, _ in items]
    n_slices = sum(int(h.get("NumberOfFrames", 1) or 1) for _, h in items)
    parents = {p.parent for p in files}
    return SeriesInfo(
        uid=key.split("#")[0],
        key=key,
        description=str(first.get("SeriesDescription", "") or ""),
        modality=str(first.get("Modality", "") or ""),
        n_files=len(files),
        n_slices=n_slices,
        rows=int(first.get("Rows", 0) or 0),
        cols=int(first.get("Columns", 0) or 0),
        directory=parents.pop() if len(parents) == 1 else Path(*_common_parts(files)),
        files=files,
    )


def _common_parts(files: Sequence[Path]) -> list[str]:
    parts = list(files[0].parent.parts)
    for f in files[1:]:
        other = f.parent.parts
        n = 0
        while n < min(len(parts), len(other)) and parts[n] == other[n]:
            n += 1
        parts = parts[:n]
    return parts or ["/"]


def list_series(root: str | Path) -> list[SeriesInfo]:
    """Walk ``root`` (a directory tree or one file), read headers only, and describe each series found."""
    groups = _group(_scan(Path(root)))
    return sorted((_info(k, v) for k, v in groups.items()), key=lambda s: (str(s.directory), s.key))


def read_dicom_series(
    path: str | Path, series_uid: str | None = None, *, volume_index: int | None = None
) -> Volume:
    """Read one DICOM series under ``path`` into a :class:`Volume` (array ``(col, row, slice)``, RAS).

    Args:
        path: a series directory (searched recursively) or a single DICOM file.
        series_uid: which series to read when ``path`` holds several (a SeriesInstanceUID or a key from
            :func:`list_series`); without it, several series is a :class:`DicomError` listing them.
        volume_index: for a 4D acquisition (repeated positions over time/echo), which volume to take
            (0-based). Without it a 4D series is refused.
    """
    path = Path(path)
    groups = _group(_scan(path))
    if series_uid is None and len(groups) > 1 and _one_series_split_by_geometry(groups):
        # One UID and series number whose slices disagree on size/orientation: read them together so the
        # geometry checks name the precise problem (missing IOP, mixed sizes...) instead of "2 series".
        merged = sorted((item for items in groups.values() for item in items), key=lambda it: str(it[0]))
        return _SeriesReader(path, merged, volume_index).read()
    if series_uid is None:
        if len(groups) > 1:
            listing = "; ".join(
                f"{k} ({_info(k, v).description or 'no description'}, {len(v)} files)"
                for k, v in groups.items()
            )
            raise DicomError(path, f"holds {len(groups)} series; choose one with --series: {listing}")
        key = next(iter(groups))
    else:
        matches = [k for k in groups if k == series_uid or k.split("#")[0] == series_uid]
        if not matches:
            raise DicomError(path, f"series {series_uid} not found; present: {', '.join(groups)}")
        if len(matches) > 1:
            raise UnsupportedSeriesError(
                path,
                f"series {series_uid} mixes image sizes or orientations ({len(matches)} geometries: "
                f"{', '.join(matches)}); choose one key",
            )
        key = matches[0]
    items = sorted(groups[key], key=lambda item: str(item[0]))
    source = path if len(groups) == 1 or path.is_file() else _info(key, items).directory
    return _SeriesReader(source, items, volume_index).read()


def _one_series_split_by_geometry(groups: dict[str, list[tuple[Path, Dataset]]]) -> bool:
    keys = {(k.split("#")[0], str(v[0][1].get("SeriesNumber", ""))) for k, v in groups.items()}
    return len(keys) == 1


# --------------------------------------------------------------------------------------------------
# header helpers


def _floats(
    ds: Dataset, keyword: str, n: int, source: Path | None, *, required: bool = True
) -> np.ndarray | None:
    """Read a numeric multi-valued tag as ``n`` finite floats, or raise a DicomError naming the tag."""
    elem = ds.get(keyword)
    if elem is None or elem == "" or (isinstance(elem, Sequence) and len(elem) == 0):
        if required:
            raise DicomError(source, f"missing {keyword}")
        return None
    try:
        values = np.array([float(v) for v in (elem if isinstance(elem, Iterable) else [elem])], dtype=float)
    except (TypeError, ValueError):
        if required:
            raise DicomError(source, f"garbage value in {keyword}: {elem!r}") from None
        return None
    if values.size != n or not np.isfinite(values).all():
        if required:
            raise DicomError(source, f"garbage value in {keyword}: expected {n} finite numbers, got {elem!r}")
        return None
    return values


def _float_or(ds: Dataset, keyword: str, default: float, source: Path) -> float:
    elem = ds.get(keyword)
    if elem is None or elem == "":
        return default
    try:
        value = float(elem)
    except (TypeError, ValueError):
        raise DicomError(source, f"garbage value in {keyword}: {elem!r}") from None
    if not math.isfinite(value):
        raise DicomError(source, f"garbage value in {keyword}: {elem!r}")
    return value


def _int_or(ds: Dataset, keyword: str, default: int) -> int:
    try:
        return int(ds.get(keyword, default) or default)
    except (TypeError, ValueError):
        return default


def _time_key(ds: Dataset) -> tuple[Any, ...]:
    """Fields that tell repeated acquisitions at one position apart (time, echo, temporal index)."""
    return tuple(
        str(ds.get(k, ""))
        for k in (
            "TemporalPositionIdentifier",
            "AcquisitionNumber",
            "EchoNumbers",
            "AcquisitionTime",
            "TriggerTime",
        )
    )


def _is_mosaic(ds: Dataset) -> bool:
    return any(str(v).upper() == "MOSAIC" for v in (ds.get("ImageType") or []))


# --------------------------------------------------------------------------------------------------
# the reader


class _SeriesReader:
    """Builds a Volume from the files of one series; every refusal names ``source`` and the reason."""

    def __init__(self, source: Path, items: list[tuple[Path, Dataset]], volume_index: int | None) -> None:
        self.source = source
        self.items = items
        self.volume_index = volume_index

    def read(self) -> Volume:
        first = self.items[0][1]
        if _is_mosaic(first):
            return self._read_mosaic()
        slices = self._slices()
        slices = self._select_volume(slices)
        spacing_k, normal = self._check_geometry(slices)
        array = self._pixels(slices)
        ps = slices[0].pixel_spacing
        iop = slices[0].orientation
        direction = np.column_stack([iop[:3], iop[3:], normal])
        affine = lps_to_ras_affine(np.array([ps[1], ps[0], spacing_k]), slices[0].position, direction)
        return Volume(array=array, affine=affine, source=str(self.source), meta=self._meta(slices))

    # -- slices --------------------------------------------------------------------------------
    def _slices(self) -> list[_Slice]:
        slices: list[_Slice] = []
        for path, ds in self.items:
            n_frames = int(ds.get("NumberOfFrames", 1) or 1)
            if n_frames > 1 or "PerFrameFunctionalGroupsSequence" in ds:
                slices.extend(self._frames(path, ds, n_frames))
                continue
            slices.append(self._single(path, ds))
        return slices

    def _single(self, path: Path, ds: Dataset) -> _Slice:
        ps = _floats(ds, "PixelSpacing", 2, path)
        assert ps is not None
        if (ps <= 0).any():
            raise DicomError(path, f"garbage value in PixelSpacing: {list(ps)} (must be positive)")
        rows, cols = int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)
        if rows <= 0 or cols <= 0:
            raise DicomError(path, f"missing or zero Rows/Columns ({rows}x{cols})")
        return _Slice(
            path=path,
            frame=None,
            position=_floats(ds, "ImagePositionPatient", 3, path),  # type: ignore[arg-type]
            orientation=self._orientation(_floats(ds, "ImageOrientationPatient", 6, path), path),  # type: ignore[arg-type]
            pixel_spacing=(float(ps[0]), float(ps[1])),
            rows=rows,
            cols=cols,
            slope=_float_or(ds, "RescaleSlope", 1.0, path),
            intercept=_float_or(ds, "RescaleIntercept", 0.0, path),
            time_key=_time_key(ds),
            sop_uid=str(ds.get("SOPInstanceUID", "")),
            instance=_int_or(ds, "InstanceNumber", 0),
        )

    def _frames(self, path: Path, ds: Dataset, n_frames: int) -> list[_Slice]:
        """Slices of an enhanced multi-frame object from its shared and per-frame functional groups."""
        per_frame = ds.get("PerFrameFunctionalGroupsSequence")
        shared = (ds.get("SharedFunctionalGroupsSequence") or [Dataset()])[0]
        if per_frame is None or len(per_frame) != n_frames:
            raise UnsupportedSeriesError(
                path, f"multi-frame object without per-frame functional groups for its {n_frames} frames"
            )

        def group(frame: Dataset, name: str) -> Dataset | None:
            for src in (frame, shared):
                seq = src.get(name)
                if seq:
                    return seq[0]
            return None

        rows, cols = int(ds.Rows), int(ds.Columns)
        out = []
        for n, frame in enumerate(per_frame):
            pos, ori, meas = (
                group(frame, "PlanePositionSequence"),
                group(frame, "PlaneOrientationSequence"),
                group(frame, "PixelMeasuresSequence"),
            )
            if pos is None or ori is None or meas is None:
                raise DicomError(path, f"frame {n + 1}: missing plane position/orientation or pixel measures")
            ps = _floats(meas, "PixelSpacing", 2, path)
            assert ps is not None
            trans = group(frame, "PixelValueTransformationSequence")
            content = group(frame, "FrameContentSequence")
            time_key: tuple[Any, ...] = ()
            if content is not None:
                time_key = tuple(
                    str(content.get(k, ""))
                    for k in ("TemporalPositionIndex", "FrameAcquisitionDateTime", "StackID")
                )
            out.append(
                _Slice(
                    path=path,
                    frame=n,
                    position=_floats(pos, "ImagePositionPatient", 3, path),  # type: ignore[arg-type]
                    orientation=self._orientation(_floats(ori, "ImageOrientationPatient", 6, path), path),  # type: ignore[arg-type]
                    pixel_spacing=(float(ps[0]), float(ps[1])),
                    rows=rows,
                    cols=cols,
                    slope=_float_or(trans, "RescaleSlope", 1.0, path)
                    if trans
                    else _float_or(ds, "RescaleSlope", 1.0, path),
                    intercept=(
                        _float_or(trans, "RescaleIntercept", 0.0, path)
                        if trans
                        else _float_or(ds, "RescaleIntercept", 0.0, path)
                    ),
                    time_key=time_key,
                    sop_uid=str(ds.get("SOPInstanceUID", "")),
                    instance=n,
                )
            )
        return out

    @staticmethod
    def _orientation(iop: np.ndarray, path: Path) -> np.ndarray:
        row, col = iop[:3], iop[3:]
        if (
            abs(np.linalg.norm(row) - 1) > 1e-3
            or abs(np.linalg.norm(col) - 1) > 1e-3
            or abs(row @ col) > 1e-3
        ):
            raise DicomError(path, f"garbage value in ImageOrientationPatient: {list(iop)} (not orthonormal)")
        return iop

    # -- 4D --------------------------------------------------------------------------------------
    def _select_volume(self, slices: list[_Slice]) -> list[_Slice]:
        """Detect repeated positions; refuse 4D unless ``volume_index`` picks a volume."""
        normal = np.cross(slices[0].orientation[:3], slices[0].orientation[3:])
        by_pos: dict[float, list[_Slice]] = defaultdict(list)
        for s in slices:
            by_pos[round(float(s.position @ normal), 3)].append(s)
        counts = {len(v) for v in by_pos.values()}
        if counts == {1}:
            if self.volume_index not in (None, 0):
                raise DicomError(self.source, f"volume_index {self.volume_index} given but the series is 3D")
            return slices
        repeats = max(counts)
        n_dup = sum(len(v) - 1 for v in by_pos.values())
        if len(counts) > 1:
            raise UnsupportedSeriesError(
                self.source,
                f"duplicate slice positions: {n_dup} slices repeat a position (positions hold {sorted(counts)} "
                "slices each, so this is not a complete 4D acquisition)",
            )
        distinct = all(
            len({s.time_key for s in v}) == len(v)
            or len({(s.instance, s.sop_uid) for s in v}) == len(v) == len({s.instance for s in v})
            for v in by_pos.values()
        )
        if not distinct:
            raise UnsupportedSeriesError(
                self.source,
                f"duplicate slice positions: {n_dup} slices repeat a position with identical time/echo fields",
            )
        if self.volume_index is None:
            raise UnsupportedSeriesError(
                self.source,
                f"4D acquisition: {repeats} volumes (time points/echoes) of {len(by_pos)} slices; "
                "choose one with volume_index / --volume",
            )
        if not 0 <= self.volume_index < repeats:
            raise DicomError(self.source, f"volume_index {self.volume_index} out of range 0..{repeats - 1}")
        return [
            sorted(v, key=lambda s: _natural_time(s.time_key))[self.volume_index] for v in by_pos.values()
        ]

    # -- geometry -----------------------------------------------------------------------------
    def _check_geometry(self, slices: list[_Slice]) -> tuple[float, np.ndarray]:
        """Sort ``slices`` in place along the normal; return (slice spacing, unit normal in LPS)."""
        first = slices[0]
        sizes = {(s.rows, s.cols) for s in slices}
        if len(sizes) > 1:
            raise UnsupportedSeriesError(self.source, f"mixed image sizes in one series: {sorted(sizes)}")
        for s in slices[1:]:
            if np.abs(s.orientation - first.orientation).max() > IOP_ATOL:
                raise UnsupportedSeriesError(
                    self.source,
                    f"mixed orientations in one series ({s.path.name} differs from {first.path.name})",
                )
            if np.abs(np.subtract(s.pixel_spacing, first.pixel_spacing)).max() > 1e-4:
                raise UnsupportedSeriesError(self.source, "mixed pixel spacings in one series")
        normal = np.cross(first.orientation[:3], first.orientation[3:])
        normal /= np.linalg.norm(normal)
        slices.sort(key=lambda s: float(s.position @ normal))
        if len(slices) == 1:
            return self._single_slice_spacing(first), normal
        dist = np.array([float(s.position @ normal) for s in slices])
        steps = np.diff(dist)
        if (steps < 1e-3).any():
            raise UnsupportedSeriesError(self.source, "duplicate slice positions")
        span = slices[-1].position - slices[0].position
        cos = float(abs(span @ normal) / np.linalg.norm(span))
        angle = math.degrees(math.acos(min(1.0, cos)))
        if angle > TILT_TOL_DEG:
            raise UnsupportedSeriesError(
                self.source,
                f"gantry tilt / sheared geometry: slices stack {angle:.2f} deg off the image-plane normal",
            )
        step = float(np.median(steps))
        bad = np.abs(steps - step) > SPACING_RTOL * step
        if bad.any():
            ratio = steps[bad] / step
            if np.all(np.abs(ratio - np.rint(ratio)) < SPACING_RTOL) and (ratio > 1.5).all():
                raise UnsupportedSeriesError(
                    self.source,
                    f"missing slices: {int(np.sum(np.rint(ratio) - 1))} gap(s) in a series spaced {step:.3f} mm",
                )
            raise UnsupportedSeriesError(
                self.source,
                f"non-uniform slice spacing: steps range {steps.min():.3f}..{steps.max():.3f} mm",
            )
        # Mean step over the whole stack is more accurate than the median of rounded positions.
        return float((dist[-1] - dist[0]) / (len(slices) - 1)), normal

    def _single_slice_spacing(self, s: _Slice) -> float:
        ds = self.items[0][1]
        for keyword in ("SpacingBetweenSlices", "SliceThickness"):
            value = _float_or(ds, keyword, 0.0, s.path)
            if value > 0:
                logger.warning(
                    "%s: single slice; slice spacing %.3f mm taken from %s", self.source, value, keyword
                )
                return value
        raise DicomError(self.source, "single slice without SliceThickness or SpacingBetweenSlices")

    # -- pixels -------------------------------------------------------------------------------
    def _pixels(self, slices: list[_Slice]) -> np.ndarray:
        cache: dict[Path, np.ndarray] = {}
        planes = []
        for s in slices:
            if s.path not in cache:
                cache[s.path] = _decode(s.path)
            data = cache[s.path]
            plane = data[s.frame] if s.frame is not None else data
            if plane.shape != (s.rows, s.cols):
                raise DicomError(
                    s.path, f"bad pixel data: shape {plane.shape}, header says {(s.rows, s.cols)}"
                )
            planes.append(plane)
        stored = np.stack(planes, axis=-1)  # (row, col, slice)
        slopes = np.array([s.slope for s in slices])
        inters = np.array([s.intercept for s in slices])
        return np.ascontiguousarray(_rescale(stored, slopes, inters).transpose(1, 0, 2))

    def _meta(self, slices: list[_Slice]) -> dict[str, object]:
        ds = self.items[0][1]
        return {
            "modality": str(ds.get("Modality", "") or ""),
            "series_description": str(ds.get("SeriesDescription", "") or ""),
            "series_instance_uid": str(ds.get("SeriesInstanceUID", "") or ""),
            "study_instance_uid": str(ds.get("StudyInstanceUID", "") or ""),
            "frame_of_reference_uid": str(ds.get("FrameOfReferenceUID", "") or ""),
            "sop_class_uid": str(ds.get("SOPClassUID", "") or ""),
            "sop_instance_uids": [s.sop_uid for s in slices],
            "source_files": [str(s.path) for s in slices],
        }

    # -- mosaics --------------------------------------------------------------------------------
    def _read_mosaic(self) -> Volume:
        """Unpack Siemens mosaics (one file = one volume); several files are time points (4D)."""
        items = self.items
        if len(items) > 1:
            if self.volume_index is None:
                raise UnsupportedSeriesError(
                    self.source,
                    f"4D acquisition: {len(items)} Siemens mosaic volumes; choose one with volume_index / --volume",
                )
            order = sorted(
                items,
                key=lambda it: (
                    int(it[1].get("AcquisitionNumber", 0) or 0),
                    int(it[1].get("InstanceNumber", 0) or 0),
                ),
            )
            if not 0 <= self.volume_index < len(order):
                raise DicomError(
                    self.source, f"volume_index {self.volume_index} out of range 0..{len(order) - 1}"
                )
            path = order[self.volume_index][0]
        else:
            path = items[0][0]
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # nibabel warns its DICOM readers are experimental
            from nibabel.nicom import dicomwrappers

        ds = _dcmread_full(path)
        _check_decoder(path, ds)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                wrapper = dicomwrappers.wrapper_from_data(ds)
                if not isinstance(wrapper, dicomwrappers.MosaicWrapper):
                    raise UnsupportedSeriesError(
                        path, "Siemens mosaic without a usable CSA header (cannot unpack)"
                    )
                stored = np.asarray(
                    wrapper.get_unscaled_data()
                )  # (row, col, slice), slices ordered along normal
                lps = np.asarray(wrapper.affine, dtype=float)
            except UnsupportedSeriesError:
                raise
            except Exception as exc:
                raise UnsupportedSeriesError(path, f"Siemens mosaic cannot be unpacked ({exc})") from None
        slope = _float_or(ds, "RescaleSlope", 1.0, path)
        inter = _float_or(ds, "RescaleIntercept", 0.0, path)
        n = stored.shape[2]
        array = _rescale(stored, np.full(n, slope), np.full(n, inter)).transpose(1, 0, 2)
        # nibabel's affine maps (row, col, slice) to LPS; Volume axes are (col, row, slice).
        lps = lps[:, [1, 0, 2, 3]]
        spacing = np.linalg.norm(lps[:3, :3], axis=0)
        affine = lps_to_ras_affine(spacing, lps[:3, 3], lps[:3, :3] / spacing)
        meta = {
            "modality": str(ds.get("Modality", "") or ""),
            "series_description": str(ds.get("SeriesDescription", "") or ""),
            "series_instance_uid": str(ds.get("SeriesInstanceUID", "") or ""),
            "study_instance_uid": str(ds.get("StudyInstanceUID", "") or ""),
            "frame_of_reference_uid": str(ds.get("FrameOfReferenceUID", "") or ""),
            "sop_class_uid": str(ds.get("SOPClassUID", "") or ""),
            "sop_instance_uids": [str(ds.get("SOPInstanceUID", ""))] * n,
            "source_files": [str(path)] * n,
            "mosaic": True,
        }
        return Volume(array=np.ascontiguousarray(array), affine=affine, source=str(self.source), meta=meta)


def _natural_time(key: tuple[Any, ...]) -> tuple[Any, ...]:
    out: list[Any] = []
    for v in key:
        try:
            out.append((0, float(v)))
        except ValueError:
            out.append((1, v))
    return tuple(out)


def _dcmread_full(path: Path) -> Dataset:
    try:
        return pydicom.dcmread(path)
    except Exception as exc:
        raise DicomError(path, f"unreadable DICOM file ({type(exc).__name__}: {exc})") from None


def _check_decoder(path: Path, ds: Dataset) -> None:
    """Raise MissingDecoderError naming the plugin when the transfer syntax cannot be decoded here."""
    ts = ds.file_meta.get("TransferSyntaxUID") if hasattr(ds, "file_meta") else None
    if ts is None or not ts.is_compressed:
        return
    try:
        from pydicom.pixels import get_decoder

        decoder = get_decoder(ts)
    except NotImplementedError:
        raise MissingDecoderError(
            path, f"no decoder exists in pydicom for transfer syntax {ts.name} ({ts})"
        ) from None
    if not decoder.is_available:
        hint = _PLUGIN_HINT.get(str(ts), "a pydicom pixel-data plugin for it")
        raise MissingDecoderError(path, f"no decoder installed for {ts.name} ({ts}); install {hint}")


def _decode(path: Path) -> np.ndarray:
    """Stored pixel values of one file (frames first for multi-frame), high bits masked, sign applied."""
    ds = _dcmread_full(path)
    if "PixelData" not in ds:
        raise DicomError(path, "missing PixelData")
    _check_decoder(path, ds)
    if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
        raise UnsupportedSeriesError(
            path, f"colour images are not supported (SamplesPerPixel={ds.SamplesPerPixel})"
        )
    try:
        return np.asarray(ds.pixel_array)
    except Exception as exc:
        raise DicomError(path, f"bad pixel data: cannot decode ({type(exc).__name__}: {exc})") from None


def _rescale(stored: np.ndarray, slopes: np.ndarray, intercepts: np.ndarray) -> np.ndarray:
    """Apply per-slice slope/intercept; keep an integer type when the result is exactly integral."""
    if np.all(slopes == 1.0) and np.all(intercepts == np.rint(intercepts)):
        lo = float(stored.min()) + float(intercepts.min())
        hi = float(stored.max()) + float(intercepts.max())
        for dtype in (np.int16, np.uint16, np.int32):
            info = np.iinfo(dtype)
            if info.min <= lo and hi <= info.max:
                if np.all(intercepts == 0) and stored.dtype == dtype:
                    return stored
                return (stored.astype(np.int64) + intercepts.astype(np.int64)).astype(dtype)
    return (stored.astype(np.float64) * slopes + intercepts).astype(np.float32)


__all__ = ["SeriesInfo", "list_series", "read_dicom_series"]
