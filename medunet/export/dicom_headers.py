"""Normalise source DICOM headers before a derived object (SEG, RTSTRUCT) is built from them.

Derived objects copy the Patient and Study modules, the UIDs and the geometry of the source images, so
every problem an anonymiser or an old scanner left in a source header becomes a problem in the output
(highdicom fails with ``KeyError: ''`` on an empty SOPClassUID; an 18-character DS value makes the output
invalid). This module works on copies -- inputs are never modified -- and repairs what can be repaired
without inventing identity, or raises :class:`~medunet.errors.DicomHeaderError` naming the series and the
attribute (never its value):

=============================================  ===========================================================
problem in the source                          what the copies get
=============================================  ===========================================================
SOPClassUID / SOPInstanceUID empty or missing  the file meta's MediaStorageSOPClassUID / ...InstanceUID;
                                               error when neither has it
StudyInstanceUID, SeriesInstanceUID,           error: missing, empty, not a valid UID, or differing
FrameOfReferenceUID                            between the series' images (no way to recover)
one SOPInstanceUID at two positions            error
Type 2 Patient/Study attributes missing        present and empty (PatientName, PatientID, dates, ...)
(PatientName removed)
SpecificCharacterSet unknown, not accepted by   ``ISO_IR 192`` (text is decoded first, so nothing is lost);
highdicom, or missing while text is non-ASCII  a usable one (ISO_IR 100, ISO 2022 IR 87, ...) is kept
DS values (too long, odd formatting)           re-formatted to at most 16 characters
IS values, DA ``2020-01-02``, TM ``12:00:00``  re-formatted where the value is unambiguous
any other invalid value                        emptied (Type 2 attributes) or dropped
PatientSex ``male``                            ``M`` (``female`` -> ``F``, others -> empty)
private tags                                   dropped
ImageOrientationPatient noise between slices   the first slice's orientation (within 1e-4), else error
SliceThickness missing or not positive         the spacing between slice positions
=============================================  ===========================================================
"""

from __future__ import annotations

import copy
import logging
import math
import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from pydicom import config, dcmread
from pydicom.charset import python_encoding
from pydicom.dataset import Dataset
from pydicom.multival import MultiValue
from pydicom.uid import UID
from pydicom.valuerep import format_number_as_ds, validate_value

from medunet.errors import DicomError, DicomHeaderError

logger = logging.getLogger(__name__)

#: UIDs that identify the study, series, instance and space; Type 1 everywhere a derived object uses them.
_TYPE1_UIDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
)
#: Type 2 attributes of the Patient, General Study and Frame of Reference modules (empty when unknown).
_TYPE2 = (
    "PatientName",
    "PatientID",
    "PatientBirthDate",
    "PatientSex",
    "StudyDate",
    "StudyTime",
    "ReferringPhysicianName",
    "StudyID",
    "AccessionNumber",
    "PositionReferenceIndicator",
)
_GEOMETRY = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing")
_TEXT_VRS = {
    "AE",
    "AS",
    "CS",
    "DA",
    "DS",
    "DT",
    "IS",
    "LO",
    "LT",
    "PN",
    "SH",
    "ST",
    "TM",
    "UC",
    "UI",
    "UR",
    "UT",
}
_DATE_SEPARATORS = re.compile(r"[-./]")
_MULTI_BYTE_EXTENSIONS = {"ISO 2022 IR 87", "ISO 2022 IR 159", "ISO 2022 IR 149", "ISO 2022 IR 58"}
_SEX = {"M": "M", "F": "F", "O": "O", "MALE": "M", "FEMALE": "F", "OTHER": "O"}


def read_source_headers(files: Sequence[str | Path]) -> list[Dataset]:
    """Headers (no pixel data) of the source files; DicomError naming the file when one is unreadable."""
    headers = []
    for f in files:
        try:
            headers.append(dcmread(str(f), stop_before_pixels=True))
        except Exception as exc:  # pydicom raises several types for bad files
            raise DicomError(f, f"cannot re-read source DICOM header: {type(exc).__name__}: {exc}") from None
    return headers


@dataclass
class _Series:
    """The series being repaired: names it in errors and gathers one log line per kind of repair."""

    label: str
    folder: str | None
    repairs: Counter[tuple[int, str]] = field(default_factory=Counter)

    def fail(self, attribute: str, problem: str) -> DicomHeaderError:
        return DicomHeaderError(self.folder, self.label, attribute, problem)

    def note(self, level: int, message: str) -> None:
        self.repairs[(level, message)] += 1

    def log(self) -> None:
        for (level, message), n in sorted(self.repairs.items()):
            logger.log(level, "%s: series %s: %s (%d image(s))", self.folder, self.label, message, n)


def _series_label(datasets: Sequence[Dataset]) -> str:
    for ds in datasets:
        uid = str(ds.get("SeriesInstanceUID", "") or "").strip()
        if uid:
            return uid
    return "(no SeriesInstanceUID)"


def _folder(datasets: Sequence[Dataset]) -> str | None:
    names = [str(ds.filename) for ds in datasets if isinstance(getattr(ds, "filename", None), str | Path)]
    if not names:
        return None
    parents = {str(Path(n).parent) for n in names}
    return parents.pop() if len(parents) == 1 else str(Path(names[0]).parent)


def normalise_source_series(datasets: Sequence[Dataset]) -> list[Dataset]:
    """Repaired copies of one series' headers, one per SOP instance, in the given order (see module doc).

    Raises DicomHeaderError (series and attribute named) when no valid derived object can reference them.
    """
    if not datasets:
        raise DicomError(None, "no source DICOM images to reference")
    series = _Series(_series_label(datasets), _folder(datasets))
    copies = [_repair_one(ds, series) for ds in datasets]
    for keyword in ("StudyInstanceUID", "SeriesInstanceUID", "FrameOfReferenceUID"):
        values = {str(c.get(keyword)) for c in copies}
        if len(values) > 1:
            raise series.fail(keyword, f"differs between the series' images ({len(values)} different values)")
    copies = _unique_instances(copies, series)
    _unify_orientation(copies, series)
    _fill_slice_thickness(copies, series)
    series.log()
    return copies


def _repair_one(ds: Dataset, series: _Series) -> Dataset:
    c = copy.deepcopy(ds)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c.decode()  # every text value becomes str with the source's own character set
    if caught:
        series.note(logging.WARNING, "text decoded with fall-backs (pydicom warned)")
    c.remove_private_tags()
    meta = getattr(ds, "file_meta", None)
    for keyword, meta_keyword in (
        ("SOPClassUID", "MediaStorageSOPClassUID"),
        ("SOPInstanceUID", "MediaStorageSOPInstanceUID"),
    ):
        if not str(c.get(keyword, "") or "").strip():
            fallback = str(meta.get(meta_keyword, "") or "").strip() if meta is not None else ""
            if not fallback:
                raise series.fail(
                    keyword, f"is missing or empty in {_name(ds)} and in its file meta ({meta_keyword})"
                )
            series.note(logging.INFO, f"{keyword} missing or empty; taken from the file meta")
            setattr(c, keyword, fallback)
    for keyword in _TYPE1_UIDS:
        value = str(c.get(keyword, "") or "").strip()
        if not value:
            raise series.fail(keyword, f"is missing or empty in {_name(ds)}")
        if not UID(value).is_valid:
            raise series.fail(keyword, f"is not a valid UID in {_name(ds)}")
        setattr(c, keyword, value)
    sop_class = UID(str(c.SOPClassUID))
    if sop_class.type != "SOP Class" or not sop_class.name.endswith("Storage"):
        raise series.fail("SOPClassUID", f"is not a standard storage SOP class in {_name(ds)}")
    _repair_character_set(c, series)
    for keyword in _TYPE2:
        if keyword not in c:
            setattr(c, keyword, "")
    _repair_values(c, series)
    return c


def _name(ds: Dataset) -> str:
    filename = getattr(ds, "filename", None)
    return Path(filename).name if isinstance(filename, str | Path) else "<dataset>"


def _repair_character_set(c: Dataset, series: _Series) -> None:
    """Keep a character set pydicom and highdicom both accept, else UTF-8 (text is already decoded)."""
    charset = c.get("SpecificCharacterSet")
    values = [] if charset is None else [charset] if isinstance(charset, str) else list(charset)
    values = [str(v).strip() for v in values]
    if len(values) > 1 and not values[0]:
        values[0] = "ISO 2022 IR 6"  # an empty first value means the default repertoire (PS3.3 C.12.1.1.2)
    if values and _acceptable_character_set(values):
        c.SpecificCharacterSet = values if len(values) > 1 else values[0]
        return
    non_ascii = any(
        not str(value).isascii()
        for elem in c
        if elem.VR in {"LO", "LT", "PN", "SH", "ST", "UC", "UT"}
        for value in (elem.value if isinstance(elem.value, MultiValue) else [elem.value])
        if value is not None
    )
    if values:
        series.note(logging.WARNING, "unsupported SpecificCharacterSet; text (decoded) written as ISO_IR 192")
        c.SpecificCharacterSet = "ISO_IR 192"
    elif non_ascii:
        series.note(logging.WARNING, "non-ASCII text without SpecificCharacterSet; written as ISO_IR 192")
        c.SpecificCharacterSet = "ISO_IR 192"


def _acceptable_character_set(values: list[str]) -> bool:
    """Known to pydicom and within highdicom's rules: one plain term, or several ISO 2022 code extensions
    with a single-byte one first."""
    from highdicom.enum import SpecificCharacterSetValues

    allowed = {v.value for v in SpecificCharacterSetValues}
    if not all(v in python_encoding and v in allowed for v in values):
        return False
    if len(values) == 1:
        return not values[0].startswith("ISO 2022")
    return all(v.startswith("ISO 2022") for v in values) and values[0] not in _MULTI_BYTE_EXTENSIONS


def _repair_values(c: Dataset, series: _Series) -> None:
    """Re-format, empty or drop invalid top-level values (module doc); geometry must stay usable."""
    for elem in list(c):
        keyword = elem.keyword
        if elem.VR not in _TEXT_VRS or keyword in _TYPE1_UIDS or keyword == "SpecificCharacterSet":
            continue
        if elem.value is None or elem.value == "":
            continue
        values = list(elem.value) if isinstance(elem.value, MultiValue) else [elem.value]
        try:
            fixed = [_repair_value(elem.VR, keyword, v) for v in values]
        except ValueError:
            fixed = None
        if fixed is not None:
            elem.value = fixed if len(fixed) > 1 else fixed[0]
            continue
        if keyword in _GEOMETRY:
            raise series.fail(keyword, f"holds a value that is not a valid {elem.VR} in {_name(c)}")
        if keyword in _TYPE2:
            series.note(logging.WARNING, f"{keyword} invalid for its VR {elem.VR}; left empty")
            elem.value = ""
        else:
            series.note(logging.INFO, f"dropped {keyword} (invalid for its VR {elem.VR})")
            del c[elem.tag]


def _repair_value(vr: str, keyword: str, value: Any) -> Any:
    """The value, re-formatted where unambiguous; ValueError when it cannot be made valid."""
    if vr == "DS":
        number = float(value)
        if not math.isfinite(number):
            raise ValueError("not finite")
        return format_number_as_ds(number)
    if vr == "IS":
        number = float(value)
        if not number.is_integer() or abs(number) >= 2**31:
            raise ValueError("not an integer")
        return int(number)
    text = str(value)
    if keyword == "PatientSex":
        return _SEX.get(text.strip().upper(), "")
    if vr == "DA":
        text = _DATE_SEPARATORS.sub("", text.strip())
    elif vr == "TM":
        text = text.strip().replace(":", "")
    validate_value(vr, text, config.RAISE)
    return value if text == str(value) else text


def _unique_instances(copies: list[Dataset], series: _Series) -> list[Dataset]:
    """One dataset per SOP instance; the same instance twice at one position is a duplicate file."""
    unique: dict[str, Dataset] = {}
    for c in copies:
        uid = str(c.SOPInstanceUID)
        first = unique.get(uid)
        if first is None:
            unique[uid] = c
        elif list(first.get("ImagePositionPatient", [])) != list(c.get("ImagePositionPatient", [])):
            raise series.fail("SOPInstanceUID", f"is shared by images at different positions ({_name(c)})")
    return list(unique.values())


def _unify_orientation(copies: list[Dataset], series: _Series) -> None:
    first = copies[0].get("ImageOrientationPatient")
    if first is None:
        return
    reference = np.asarray([float(v) for v in first])
    for c in copies[1:]:
        iop = c.get("ImageOrientationPatient")
        if iop is None or np.abs(np.asarray([float(v) for v in iop]) - reference).max() > 1e-4:
            raise series.fail("ImageOrientationPatient", "differs between the series' images")
        c.ImageOrientationPatient = list(first)


def _fill_slice_thickness(copies: list[Dataset], series: _Series) -> None:
    """SliceThickness for images without a usable one: the spacing between neighbouring slice positions."""
    missing = [c for c in copies if not _positive(c.get("SliceThickness"))]
    if not missing:
        return
    positions = []
    for c in copies:
        iop = c.get("ImageOrientationPatient")
        ipp = c.get("ImagePositionPatient")
        if iop is None or ipp is None:
            continue
        normal = np.cross([float(v) for v in iop[:3]], [float(v) for v in iop[3:]])
        positions.append(float(np.dot(normal, [float(v) for v in ipp])))
    steps = np.diff(np.unique(np.round(positions, 4)))
    if steps.size == 0:
        raise series.fail("SliceThickness", "is missing and a single slice gives no spacing to use instead")
    thickness = format_number_as_ds(float(np.median(steps)))
    for c in missing:
        c.SliceThickness = thickness
        series.note(logging.INFO, f"SliceThickness missing; the slice spacing {thickness} mm used instead")


def _positive(value: Any) -> bool:
    try:
        return value is not None and value != "" and float(value) > 0
    except (TypeError, ValueError):
        return False


__all__ = ["normalise_source_series", "read_source_headers"]
