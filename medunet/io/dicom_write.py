"""Write a :class:`Volume` as a classic DICOM series (one slice per file).

Used for synthetic data, tests, DICOM SEG export fixtures and PHI tests. Geometry mapping (the one thing
that is easy to get wrong): DICOM pixel data is ``[row, col]``; the column index advances along the first
ImageOrientationPatient vector and the row index along the second. Volume storage order is ``(i, j, k)``,
so column <-> ``i``, row <-> ``j`` and file <-> ``k``: a slice's pixel array is ``array[:, :, k].T``,
IOP is ``(dir_i, dir_j)`` in LPS and PixelSpacing is ``(spacing_j, spacing_i)`` (row spacing first).
"""

from __future__ import annotations

import datetime as _dt
import logging
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import (
    PYDICOM_IMPLEMENTATION_UID,
    UID,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    generate_uid,
)
from pydicom.valuerep import format_number_as_ds

from medunet.errors import GeometryError, InvalidImageError
from medunet.io.atomic import atomic_path
from medunet.io.volume import Volume, ras_affine_to_lps

logger = logging.getLogger(__name__)

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
MR_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.4")
SOP_CLASS_BY_MODALITY = {"CT": CT_IMAGE_STORAGE, "MR": MR_IMAGE_STORAGE}
_UNCOMPRESSED = {ExplicitVRLittleEndian, ImplicitVRLittleEndian}


def _stored_values(array: np.ndarray, slope: float, intercept: float, source: str) -> tuple[np.ndarray, int]:
    """Map real values to integer stored values; return them (int16 or uint16) and PixelRepresentation."""
    if slope == 0 or not np.isfinite(slope) or not np.isfinite(intercept):
        raise ValueError(
            f"rescale slope/intercept must be finite and slope non-zero, got {slope}, {intercept}"
        )
    data = np.asarray(array, dtype=np.float64)
    if not np.isfinite(data).all():
        raise InvalidImageError(source, "volume holds NaN/Inf values; cannot store them in DICOM")
    stored = np.rint((data - intercept) / slope)
    lo, hi = (float(stored.min()), float(stored.max())) if stored.size else (0.0, 0.0)
    if lo >= -32768 and hi <= 32767:
        return stored.astype(np.int16), 1
    if lo >= 0 and hi <= 65535:
        return stored.astype(np.uint16), 0
    raise ValueError(
        f"values {data.min()}..{data.max()} do not fit 16-bit stored values with slope {slope} and "
        f"intercept {intercept}; choose a larger slope or another intercept"
    )


def write_dicom_series(
    volume: Volume,
    out_dir: str | Path,
    *,
    modality: str = "CT",
    patient_name: str = "Anonymous",
    patient_id: str = "ANON",
    patient_birth_date: str = "",
    study_date: str | None = None,
    series_description: str = "",
    study_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
    frame_of_reference_uid: str | None = None,
    series_number: int = 1,
    patient_position: str = "",
    rescale_slope: float = 1.0,
    rescale_intercept: float = 0.0,
    transfer_syntax: str = ExplicitVRLittleEndian,
    file_prefix: str = "IM",
) -> list[Path]:
    """Write ``volume`` as one DICOM file per slice along its third storage axis; return the paths.

    Values are stored as ``round((value - intercept) / slope)`` in int16 (or uint16 when only that fits).
    Geometry values are Decimal Strings of at most 16 characters (``format_number_as_ds``), and the Type 2
    attributes of the CT/MR image IODs are present (empty where unknown), so the files pass ``dciodvfy``.
    ``patient_position`` (e.g. ``HFS``) is left empty unless given: it is not known for a generated volume.
    Every file is written atomically; if any slice fails, files already written are removed. The third
    voxel axis must be parallel to the row x column normal (DICOM classic series cannot express shear).
    ``transfer_syntax`` is Explicit or Implicit VR Little Endian, or a compressed syntax pydicom can
    encode (RLE Lossless always; JPEG-LS / JPEG 2000 Lossless need pyjpegls / pylibjpeg-openjpeg).
    """
    out_dir = Path(out_dir)
    source = volume.source or "<volume>"
    modality = modality.upper()
    sop_class = SOP_CLASS_BY_MODALITY.get(modality)
    if sop_class is None:
        raise ValueError(f"modality must be one of {sorted(SOP_CLASS_BY_MODALITY)}, got {modality!r}")
    if volume.array.ndim != 3:
        raise InvalidImageError(
            source, f"write_dicom_series needs a 3D volume, got shape {volume.array.shape}"
        )
    spacing, origin, direction = ras_affine_to_lps(volume.affine)
    normal = np.cross(direction[:, 0], direction[:, 1])
    if (
        abs(abs(float(np.dot(normal, direction[:, 2]))) - 1.0) > 1e-4
        or abs(float(np.dot(direction[:, 0], direction[:, 1]))) > 1e-4
    ):
        raise GeometryError(source, "sheared grid: slice axis is not perpendicular to the image plane")
    stored, pixel_rep = _stored_values(volume.array, rescale_slope, rescale_intercept, source)

    study_uid = study_instance_uid or generate_uid()
    series_uid = series_instance_uid or generate_uid()
    for_uid = frame_of_reference_uid or generate_uid()
    date = study_date if study_date is not None else _dt.date.today().strftime("%Y%m%d")
    ni, nj, nk = stored.shape
    lps_affine = np.eye(4)
    lps_affine[:3, :3] = direction * spacing
    lps_affine[:3, 3] = origin
    iop = [float(v) for v in np.concatenate([direction[:, 0], direction[:, 1]])]

    written: list[Path] = []
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        for k in range(nk):
            ds = _slice_dataset(sop_class, UID(transfer_syntax))
            ds.Modality = modality
            ds.PatientName = patient_name
            ds.PatientID = patient_id
            ds.PatientBirthDate = patient_birth_date
            ds.PatientSex = ""
            ds.StudyDate = date
            ds.SeriesDate = date
            ds.ContentDate = date
            ds.StudyTime = "120000"
            ds.SeriesTime = "120000"
            ds.AccessionNumber = ""
            ds.ReferringPhysicianName = ""
            ds.StudyID = "1"
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.FrameOfReferenceUID = for_uid
            ds.PositionReferenceIndicator = ""
            ds.SeriesNumber = series_number
            ds.SeriesDescription = series_description
            ds.Laterality = ""  # Type 2C: unknown for a generated volume
            ds.PatientPosition = patient_position  # Type 2C for CT and MR; empty = not known
            ds.Manufacturer = "medunet"
            ds.AcquisitionNumber = ""
            ds.InstanceNumber = k + 1
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
            ds.ImagePositionPatient = _ds([float(v) for v in (lps_affine @ [0.0, 0.0, k, 1.0])[:3]])
            ds.ImageOrientationPatient = _ds(iop)
            ds.PixelSpacing = _ds([float(spacing[1]), float(spacing[0])])
            ds.SliceThickness = _ds([float(spacing[2])])[0]
            ds.SpacingBetweenSlices = _ds([float(spacing[2])])[0]
            ds.Rows = nj
            ds.Columns = ni
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.BitsAllocated = 16
            ds.BitsStored = 16
            ds.HighBit = 15
            ds.PixelRepresentation = pixel_rep
            ds.RescaleSlope = _ds([float(rescale_slope)])[0]
            ds.RescaleIntercept = _ds([float(rescale_intercept)])[0]
            if modality == "CT":
                ds.RescaleType = "HU"
                ds.KVP = ""
            else:  # MR Image module: Type 1 terms for a generated image, Type 2 left empty
                ds.ScanningSequence = "RM"  # research mode
                ds.SequenceVariant = "NONE"
                ds.ScanOptions = ""
                ds.MRAcquisitionType = ""
                ds.RepetitionTime = ""
                ds.EchoTime = ""
                ds.EchoTrainLength = ""
            pixels = np.ascontiguousarray(stored[:, :, k].T)
            _set_pixels(ds, pixels, UID(transfer_syntax))
            path = out_dir / f"{file_prefix}{k + 1:05d}.dcm"
            with atomic_path(path) as tmp:
                ds.save_as(tmp, enforce_file_format=True)
            written.append(path)
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise
    logger.debug("wrote %d DICOM slices to %s", len(written), out_dir)
    return written


def _ds(values: list[float]) -> list[str]:
    """Decimal String values of at most 16 characters (the VR's limit), as close to ``values`` as fits."""
    return [format_number_as_ds(float(v)) for v in values]


def _slice_dataset(sop_class: UID, transfer_syntax: UID) -> Dataset:
    meta = FileMetaDataset()
    sop_uid = generate_uid()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = transfer_syntax
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.SpecificCharacterSet = "ISO_IR 100"
    return ds


def _set_pixels(ds: Dataset, pixels: np.ndarray, transfer_syntax: UID) -> None:
    """Store ``pixels`` as PixelData, compressing when the transfer syntax asks for it."""
    if transfer_syntax in _UNCOMPRESSED:
        ds.PixelData = pixels.tobytes()
        ds["PixelData"].VR = "OW"
        return
    ds.PixelData = pixels.tobytes()
    ds["PixelData"].VR = "OW"
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    try:
        ds.compress(transfer_syntax, pixels, encoding_plugin="")
    except Exception as exc:
        raise ValueError(f"cannot encode pixel data as {transfer_syntax.name}: {exc}") from exc


__all__ = ["CT_IMAGE_STORAGE", "MR_IMAGE_STORAGE", "write_dicom_series"]
