"""A small CT series written with pydicom alone, and >= 30 header variants that real archives produce.

Independent of medunet's own writer (``medunet/io/dicom_write.py``) so that its conventions are not baked
into the tests. Geometry, in the DICOM convention: pixel ``(r, c)`` of slice ``k`` lies at
``IPP_k + c * col_spacing * X + r * row_spacing * Y`` (LPS mm) with ``X, Y = IOP[:3], IOP[3:]``,
``PixelSpacing = (row_spacing, col_spacing)`` and ``IPP_k = origin + k * slice_spacing * (X x Y)``.

Pixel values encode a known label mask, ``HU = hu_per_label * label``, so a reader -> SEG/RTSTRUCT round
trip can be compared with the mask in source pixel space, slice by slice.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    RLELossless,
    generate_uid,
)

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
LABELS = {0: "background", 1: "liver", 2: "left_kidney"}
PATIENT_NAME = "Test^Patient"


def reference_masks(rows: int = 40, cols: int = 32, slices: int = 5) -> np.ndarray:
    """Labels per slice in source pixel space ``(slices, rows, cols)``: asymmetric along every axis.

    Organ 1 is a block near the first columns with a hole on the middle slice; organ 2 is an L shape near
    the last columns plus a separate island (two islands on slices 2 and 3).
    """
    m = np.zeros((slices, rows, cols), np.uint8)
    m[1:4, 4:22, 2:13] = 1
    m[2, 9:14, 5:9] = 0  # hole
    m[2:5, 24:36, 20:24] = 2
    m[2:5, 32:36, 24:30] = 2
    m[2:4, 5:9, 24:28] = 2  # island
    return m


@dataclass
class Geometry:
    iop: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)
    origin: tuple[float, float, float] = (-20.0, -30.0, 40.0)
    row_spacing: float = 0.8
    col_spacing: float = 0.7
    slice_spacing: float = 2.5

    def ipp(self, k: int) -> np.ndarray:
        x, y = np.array(self.iop[:3]), np.array(self.iop[3:])
        return np.array(self.origin) + k * self.slice_spacing * np.cross(x, y)


def rotated_iop(theta: float) -> tuple[float, ...]:
    """Rows and columns rotated by ``theta`` about the patient's S axis (an oblique axial plane)."""
    x = (np.cos(theta), np.sin(theta), 0.0)
    y = (-np.sin(theta), np.cos(theta), 0.0)
    return (*x, *y)


def ct_series(
    masks: np.ndarray,
    geometry: Geometry | None = None,
    *,
    hu_per_label: int = 100,
    image: np.ndarray | None = None,
    series_description: str = "variants",
) -> list[Dataset]:
    """One CT Image Storage dataset per slice (file meta included), in slice order; nothing written yet.

    ``image`` (HU, same shape as ``masks``) replaces the label-encoded pixel values when given.
    """
    g = geometry or Geometry()
    slices, rows, cols = masks.shape
    study, series, frame_of_reference = generate_uid(), generate_uid(), generate_uid()
    pixels = masks.astype(np.int32) * hu_per_label if image is None else np.asarray(image)
    datasets = []
    for k in range(slices):
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID = CT_IMAGE_STORAGE
        meta.MediaStorageSOPInstanceUID = generate_uid()
        meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.preamble = b"\0" * 128
        ds.SpecificCharacterSet = "ISO_IR 100"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.SOPClassUID = CT_IMAGE_STORAGE
        ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
        ds.StudyDate = ds.SeriesDate = ds.ContentDate = "20240102"
        ds.StudyTime = ds.SeriesTime = ds.ContentTime = "101500"
        ds.AccessionNumber = "ACC0001"
        ds.Modality = "CT"
        ds.Manufacturer = "pydicom-test"
        ds.ReferringPhysicianName = "Referring^Doctor"
        ds.StudyDescription = "test study"
        ds.SeriesDescription = series_description
        ds.PatientName = PATIENT_NAME
        ds.PatientID = "PID0001"
        ds.PatientBirthDate = "19700101"
        ds.PatientSex = "F"
        ds.KVP = "120"
        ds.PatientPosition = "HFS"
        ds.StudyInstanceUID = study
        ds.SeriesInstanceUID = series
        ds.StudyID = "1"
        ds.SeriesNumber = 3
        ds.AcquisitionNumber = 1
        ds.InstanceNumber = k + 1
        ds.ImagePositionPatient = [f"{v:.4f}" for v in g.ipp(k)]
        ds.ImageOrientationPatient = [f"{v:.10f}" for v in g.iop]
        ds.FrameOfReferenceUID = frame_of_reference
        ds.PositionReferenceIndicator = ""
        ds.SliceThickness = f"{g.slice_spacing:g}"
        ds.SamplesPerPixel = 1
        ds.PhotometricInterpretation = "MONOCHROME2"
        ds.Rows, ds.Columns = rows, cols
        ds.PixelSpacing = [f"{g.row_spacing:g}", f"{g.col_spacing:g}"]
        ds.BitsAllocated = 16
        ds.BitsStored = 16
        ds.HighBit = 15
        ds.PixelRepresentation = 1
        ds.RescaleIntercept = "-1024"
        ds.RescaleSlope = "1"
        ds.RescaleType = "HU"
        ds.PixelData = (pixels[k] + 1024).astype(np.int16).tobytes()
        datasets.append(ds)
    return datasets


def save_series(
    datasets: Sequence[Dataset],
    folder: Path,
    *,
    transfer_syntax: str | None = None,
    names: Sequence[str] | None = None,
    enforce_file_format: bool = True,
) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for k, ds in enumerate(datasets):
        if transfer_syntax in (JPEG2000Lossless, RLELossless):
            array = np.frombuffer(ds.PixelData, np.int16).reshape(int(ds.Rows), int(ds.Columns))
            ds.compress(transfer_syntax, array, encoding_plugin="")
        elif transfer_syntax is not None:
            ds.file_meta.TransferSyntaxUID = transfer_syntax
        path = folder / (names[k] if names else f"slice{k:03d}.dcm")
        ds.save_as(path, enforce_file_format=enforce_file_format)
        paths.append(path)
    return paths


Mutate = Callable[[list[Dataset]], None]


@dataclass(frozen=True)
class Variant:
    """A header variant: ``mutate`` edits the datasets in slice order before they are written.

    ``error``: the attribute a DicomHeaderError must name; None means valid outputs are expected, and
    ``expect`` lists values (as ``str``) the outputs' headers must carry.
    """

    name: str
    mutate: Mutate
    error: str | None = None
    transfer_syntax: str | None = None
    shuffled_names: bool = False
    enforce_file_format: bool = True
    expect: dict[str, str] = field(default_factory=dict)


def _each(fn: Callable[[Dataset], None]) -> Mutate:
    def mutate(datasets: list[Dataset]) -> None:
        for ds in datasets:
            fn(ds)

    return mutate


def _set(**values: object) -> Mutate:
    def apply(ds: Dataset) -> None:
        for keyword, value in values.items():
            setattr(ds, keyword, value)

    return _each(apply)


def _delete(*keywords: str) -> Mutate:
    def apply(ds: Dataset) -> None:
        for keyword in keywords:
            if keyword in ds:
                delattr(ds, keyword)

    return _each(apply)


def _chain(*steps: Mutate) -> Mutate:
    def mutate(datasets: list[Dataset]) -> None:
        for step in steps:
            step(datasets)

    return mutate


def _per_slice(keyword: str, values: Callable[[int], object]) -> Mutate:
    def mutate(datasets: list[Dataset]) -> None:
        for k, ds in enumerate(datasets):
            setattr(ds, keyword, values(k))

    return mutate


def _private_tags(ds: Dataset) -> None:
    block = ds.private_block(0x0009, "ACME 1.0", create=True)
    block.add_new(0x10, "LO", "vendor text")
    block.add_new(0x11, "UN", b"\x01\x02\x03\x04")
    item = Dataset()
    item.add_new(0x00091001, "LO", "nested")  # arbitrary: no creator inside the item
    block.add_new(0x12, "SQ", [item])
    csa = ds.private_block(0x0029, "SIEMENS CSA HEADER", create=True)
    csa.add_new(0x10, "OB", b"SV10\x04\x03\x02\x01" + b"\0" * 56)


def _long_ds(ds: Dataset) -> None:
    """Values of 17+ characters, as some writers (and medunet's old one) produce; invalid DS."""
    from pydicom import config
    from pydicom.dataelem import DataElement

    with config.disable_value_validation():
        ipp = [f"{float(v) + 1e-9:.15f}" for v in ds.ImagePositionPatient]  # e.g. -19.999999999000000
        ds["ImagePositionPatient"] = DataElement(0x00200032, "DS", ipp)
        ds["PixelSpacing"] = DataElement(0x00280030, "DS", ["0.80000000000000004", "0.69999999999999996"])
        ds["SliceThickness"] = DataElement(0x00180050, "DS", "2.50000000000000000")


def _iop_noise(datasets: list[Dataset]) -> None:
    for k, ds in enumerate(datasets):
        iop = [float(v) for v in ds.ImageOrientationPatient]
        iop[1] += (k % 2) * 2e-7
        iop[3] -= (k % 2) * 2e-7
        ds.ImageOrientationPatient = [f"{v:.9f}" for v in iop]


def _raw_latin1_name(ds: Dataset) -> None:
    del ds.SpecificCharacterSet
    ds.add_new(0x00100010, "PN", "Gérard^Hélène".encode("latin-1"))


def _misspelled_charset(ds: Dataset) -> None:
    from pydicom import config

    with config.disable_value_validation():
        ds.add_new(0x00080005, "CS", "ISO-IR 100")
    ds.add_new(0x00100010, "PN", "Gérard^Hélène".encode("latin-1"))


def _duplicate_sop_instance(datasets: list[Dataset]) -> None:
    uid = generate_uid()
    for ds in datasets:
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = uid


def _inconsistent(keyword: str) -> Mutate:
    def mutate(datasets: list[Dataset]) -> None:
        setattr(datasets[-1], keyword, generate_uid())

    return mutate


def _empty_sop_class_everywhere(ds: Dataset) -> None:
    ds.SOPClassUID = ""
    ds.file_meta.MediaStorageSOPClassUID = ""
    ds.file_meta.FileMetaInformationVersion = b"\x00\x01"


_NAME_UTF8 = "Müller^Zoë=王^小明"
_NAME_IR87 = "Yamada^Tarou=山田^太郎=やまだ^たろう"

VARIANTS: list[Variant] = [
    Variant("baseline", lambda ds: None, expect={"PatientName": PATIENT_NAME, "PatientID": "PID0001"}),
    # SOP Class / Instance UIDs left out of the dataset by anonymisers: the file meta still has them
    Variant("sop_class_uid_empty", _set(SOPClassUID="")),
    Variant("sop_class_uid_missing", _delete("SOPClassUID")),
    Variant("sop_class_uid_empty_jpeg2000", _set(SOPClassUID=""), transfer_syntax=JPEG2000Lossless),
    Variant("sop_instance_uid_empty", _set(SOPInstanceUID="")),
    Variant("sop_instance_uid_missing", _delete("SOPInstanceUID")),
    # Type 2 attributes emptied or removed; PatientName removed
    Variant(
        "type2_patient_study_empty",
        _set(
            PatientID="",
            PatientBirthDate="",
            PatientSex="",
            StudyDate="",
            StudyTime="",
            ReferringPhysicianName="",
            StudyID="",
            AccessionNumber="",
        ),
        expect={"PatientID": "", "AccessionNumber": ""},
    ),
    Variant(
        "type2_patient_study_missing",
        _delete(
            "PatientID",
            "PatientBirthDate",
            "PatientSex",
            "StudyDate",
            "StudyTime",
            "ReferringPhysicianName",
            "StudyID",
            "AccessionNumber",
            "PositionReferenceIndicator",
        ),
        expect={"PatientID": "", "StudyDate": ""},
    ),
    Variant("patient_name_missing", _delete("PatientName"), expect={"PatientName": ""}),
    Variant("patient_name_empty", _set(PatientName=""), expect={"PatientName": ""}),
    # character sets
    Variant(
        "name_utf8_iso_ir_192",
        _set(
            SpecificCharacterSet="ISO_IR 192", PatientName=_NAME_UTF8, StudyDescription="Thorax – Übersicht"
        ),
        expect={"PatientName": _NAME_UTF8, "SpecificCharacterSet": "ISO_IR 192"},
    ),
    Variant(
        "name_latin1_iso_ir_100",
        _set(PatientName="Gérard^Hélène", InstitutionName="Hôpital Général"),
        expect={"PatientName": "Gérard^Hélène", "SpecificCharacterSet": "ISO_IR 100"},
    ),
    Variant(
        "name_iso_2022_ir_87",
        _set(SpecificCharacterSet=["", "ISO 2022 IR 87"], PatientName=_NAME_IR87),
        expect={"PatientName": _NAME_IR87},
    ),
    Variant(
        "name_non_ascii_without_charset",
        _each(_raw_latin1_name),
        expect={"PatientName": "Gérard^Hélène", "SpecificCharacterSet": "ISO_IR 192"},
    ),
    Variant(
        "charset_misspelled",
        _each(_misspelled_charset),
        expect={"PatientName": "Gérard^Hélène", "SpecificCharacterSet": "ISO_IR 192"},
    ),
    Variant("private_tags", _each(_private_tags)),
    # DS / IS formatting
    Variant(
        "ds_odd_formatting",
        _chain(
            _per_slice("ImagePositionPatient", lambda k: [" -20.000", "-3.0E+01", f"+{40 + 2.5 * k:.3f}"]),
            _set(PixelSpacing=["0.80000", "7.0e-01 "], SliceThickness=" 2.50"),
        ),
    ),
    Variant("ds_longer_than_16_characters", _each(_long_ds)),
    Variant("iop_float_noise_between_slices", _iop_noise),
    Variant("slice_thickness_missing", _delete("SliceThickness")),
    Variant("slice_thickness_empty", _set(SliceThickness="")),
    Variant("is_odd_formatting", _per_slice("InstanceNumber", lambda k: f"{'+' if k % 2 else ' '}00{k + 1}")),
    Variant("instance_numbers_all_equal", _set(InstanceNumber=1)),
    Variant("instance_numbers_reversed", _per_slice("InstanceNumber", lambda k: 100 - 7 * k)),
    Variant("instance_number_missing", _delete("InstanceNumber", "AcquisitionNumber")),
    Variant("files_shuffled", lambda ds: None, shuffled_names=True),
    Variant("patient_sex_word", _set(PatientSex="male"), expect={"PatientSex": "M"}),
    Variant(
        "dates_times_with_separators",
        _set(StudyDate="2024-01-02", PatientBirthDate="1970.01.01", StudyTime="10:15:00"),
        expect={"StudyDate": "20240102", "PatientBirthDate": "19700101", "StudyTime": "101500"},
    ),
    Variant(
        "invalid_optional_values",
        _set(PatientWeight="70.000000000000001", PatientAge="45", StudyDescription="x" * 80),
    ),
    Variant("patient_id_too_long", _set(PatientID="P" * 70), expect={"PatientID": ""}),
    Variant("modality_missing", _delete("Modality")),
    Variant("implicit_vr_little_endian", lambda ds: None, transfer_syntax=ImplicitVRLittleEndian),
    Variant("rle_lossless", lambda ds: None, transfer_syntax=RLELossless),
    # cannot be made valid: a typed error naming the series and the attribute
    Variant(
        "sop_class_uid_empty_in_file_meta_too",
        _each(_empty_sop_class_everywhere),
        error="SOPClassUID",
        enforce_file_format=False,
    ),
    Variant("sop_class_uid_not_a_storage_class", _set(SOPClassUID="1.2.3.4.5"), error="SOPClassUID"),
    Variant("sop_instance_uid_shared_by_all_slices", _duplicate_sop_instance, error="SOPInstanceUID"),
    Variant("study_instance_uid_missing", _delete("StudyInstanceUID"), error="StudyInstanceUID"),
    Variant("study_instance_uid_empty", _set(StudyInstanceUID=""), error="StudyInstanceUID"),
    Variant("study_instance_uid_not_a_uid", _set(StudyInstanceUID="1.2.840.abc"), error="StudyInstanceUID"),
    Variant("study_instance_uid_differs", _inconsistent("StudyInstanceUID"), error="StudyInstanceUID"),
    Variant("series_instance_uid_missing", _delete("SeriesInstanceUID"), error="SeriesInstanceUID"),
    Variant("frame_of_reference_uid_missing", _delete("FrameOfReferenceUID"), error="FrameOfReferenceUID"),
    Variant("frame_of_reference_uid_empty", _set(FrameOfReferenceUID=""), error="FrameOfReferenceUID"),
    Variant(
        "frame_of_reference_uid_differs", _inconsistent("FrameOfReferenceUID"), error="FrameOfReferenceUID"
    ),
]


def write_variant(
    variant: Variant, folder: Path, masks: np.ndarray | None = None
) -> tuple[list[Path], list[str]]:
    """Write the variant's series to ``folder``; returns the files and the SOP Instance UIDs (file meta)."""
    masks = reference_masks() if masks is None else masks
    datasets = ct_series(masks)
    variant.mutate(datasets)
    names = None
    if variant.shuffled_names:
        names = [f"{n:08x}" for n in random.Random(7).sample(range(1 << 30), len(datasets))]
    files = save_series(
        datasets,
        folder,
        transfer_syntax=variant.transfer_syntax,
        names=names,
        enforce_file_format=variant.enforce_file_format,
    )
    return files, [str(ds.file_meta.MediaStorageSOPInstanceUID) for ds in datasets]
