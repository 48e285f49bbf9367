"""DICOM RT Structure Set export: one ROI per organ, closed planar contours on every source slice.

Radiotherapy planning systems read organ contours as RT Structure Sets. For each source image (headers
repaired on copies by :mod:`medunet.export.dicom_headers`), the label map is sampled at that image's exact
pixel positions (:func:`medunet.export.dicom_geometry.slice_labels`, the same mapping the SEG writer uses);
each organ's 2D mask is traced with marching squares at level 0.5 (scikit-image ``find_contours``), so the
contour runs half-way between inside and outside pixel centres. Every boundary -- outer outline, each hole,
each island -- is its own ``CLOSED_PLANAR`` contour; a point belongs to the organ when it lies inside an
odd number of the slice's contours (even-odd rule, the common reading of nested contours). Vertices are
converted to patient LPS millimetres from that slice's ImagePositionPatient, ImageOrientationPatient and
PixelSpacing, and each contour references its slice (ContourImageSequence).

The Patient and Study modules are copied from the source (a PACS files the object with the study); the
Structure Set references the frame of reference, study, series and every source SOP instance.
"""

from __future__ import annotations

import datetime as _dt
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medunet import __version__
from medunet.errors import DicomError
from medunet.export.dicom_geometry import pixel_to_patient, slice_labels
from medunet.export.dicom_headers import normalise_source_series, read_source_headers
from medunet.io.atomic import atomic_path

logger = logging.getLogger(__name__)

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
#: Referenced SOP Class UID that RT Referenced Study Sequence items carry by convention (Detached Study
#: Management, retired but what planning systems expect there).
_STUDY_REFERENCE_CLASS = "1.2.840.10008.3.1.2.3.1"


def mask_contours(mask: np.ndarray) -> list[np.ndarray]:
    """Closed contours ``(n, 2)`` in (row, column) pixel coordinates around the ``True`` pixels of ``mask``.

    Outer outlines, holes and separate islands each give one contour (no repeated closing vertex;
    collinear vertices dropped). Rasterised with the even-odd rule at pixel centres they give back ``mask``.
    """
    from skimage.measure import approximate_polygon, find_contours

    padded = np.pad(np.asarray(mask, dtype=np.float32), 1)  # closes contours at the image border
    contours = []
    for c in find_contours(padded, 0.5):
        c = approximate_polygon(c - 1.0, tolerance=1e-6)
        if len(c) > 1 and np.allclose(c[0], c[-1]):
            c = c[:-1]
        if len(c) >= 3:
            contours.append(c)
    return contours


def _ds_values(points: np.ndarray) -> list[str]:
    """Coordinates as Decimal Strings (0.1 µm resolution, well under DS's 16 characters)."""
    return [f"{v:.4f}" for v in np.asarray(points, dtype=np.float64).ravel()]


def build_rtstruct(
    labels: np.ndarray,
    affine: np.ndarray,
    source_files: Sequence[str | Path],
    label_names: Mapping[int, str],
    *,
    colors: Mapping[int, tuple[int, int, int]] | None = None,
    series_description: str = "medunet structures",
    series_number: int = 902,
    structure_set_label: str = "medunet",
    algorithm_name: str = "medunet",
    algorithm_version: str = __version__,
    sop_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
) -> object:
    """A highdicom ``SOPClass`` holding an RT Structure Set for ``labels`` on the source series' grid.

    ``sop_instance_uid`` / ``series_instance_uid``: fixed UIDs (see :func:`build_dicom_seg`); new random
    UIDs when omitted.
    """
    import highdicom as hd
    from pydicom.dataset import Dataset
    from pydicom.uid import ExplicitVRLittleEndian

    if not source_files:
        raise DicomError(None, "no source DICOM files recorded for this volume; cannot reference them")
    sources = normalise_source_series(read_source_headers(source_files))
    if any(int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 for ds in sources):
        raise DicomError(source_files[0], "RTSTRUCT export from multi-frame source images is not supported")
    if colors is None:
        from medunet.export.itksnap import label_colors

        colors = label_colors(dict(label_names))
    src = sources[0]
    now = _dt.datetime.now()
    rt = hd.SOPClass(
        study_instance_uid=src.StudyInstanceUID,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        sop_class_uid=RT_STRUCTURE_SET_STORAGE,
        instance_number=1,
        modality="RTSTRUCT",
        manufacturer="medunet",
        transfer_syntax_uid=ExplicitVRLittleEndian,
        patient_id=src.PatientID,
        patient_name=src.PatientName,
        patient_birth_date=src.PatientBirthDate,
        patient_sex=src.PatientSex,
        accession_number=src.AccessionNumber,
        study_id=src.StudyID,
        study_date=src.StudyDate,
        study_time=src.StudyTime,
        referring_physician_name=src.ReferringPhysicianName,
        manufacturer_model_name=algorithm_name[:64],
        software_versions=algorithm_version[:64],
        series_description=series_description[:64],
        specific_character_set=src.get("SpecificCharacterSet"),
    )
    rt.copy_patient_and_study_information(src)
    rt.OperatorsName = ""  # RT Series, Type 2
    rt.FrameOfReferenceUID = src.FrameOfReferenceUID  # Frame of Reference module
    rt.PositionReferenceIndicator = src.get("PositionReferenceIndicator", "") or ""
    rt.StructureSetLabel = structure_set_label[:16]
    rt.StructureSetName = series_description[:64]
    rt.StructureSetDate = now.strftime("%Y%m%d")
    rt.StructureSetTime = now.strftime("%H%M%S")
    rt.ApprovalStatus = "UNAPPROVED"  # automatic contours: a clinician approves them in the TPS

    def image_ref(ds: Dataset) -> Dataset:
        item = Dataset()
        item.ReferencedSOPClassUID = ds.SOPClassUID
        item.ReferencedSOPInstanceUID = ds.SOPInstanceUID
        return item

    series_ref = Dataset()
    series_ref.SeriesInstanceUID = src.SeriesInstanceUID
    series_ref.ContourImageSequence = [image_ref(ds) for ds in sources]
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = _STUDY_REFERENCE_CLASS
    study_ref.ReferencedSOPInstanceUID = src.StudyInstanceUID
    study_ref.RTReferencedSeriesSequence = [series_ref]
    for_ref = Dataset()
    for_ref.FrameOfReferenceUID = src.FrameOfReferenceUID
    for_ref.RTReferencedStudySequence = [study_ref]
    rt.ReferencedFrameOfReferenceSequence = [for_ref]

    organs = [v for v in sorted(label_names) if v != 0]
    contours: dict[int, list[Dataset]] = {v: [] for v in organs}
    for ds in sources:
        plane = slice_labels(labels, affine, ds)
        for value in organs:
            mask = plane == value
            if not mask.any():
                continue
            for rc in mask_contours(mask):
                lps = pixel_to_patient(ds, rc[:, 0], rc[:, 1]).T
                contour = Dataset()
                contour.ContourImageSequence = [image_ref(ds)]
                contour.ContourGeometricType = "CLOSED_PLANAR"
                contour.NumberOfContourPoints = len(lps)
                contour.ContourNumber = len(contours[value]) + 1
                contour.ContourData = _ds_values(lps)
                contours[value].append(contour)

    rois, roi_contours, observations = [], [], []
    for number, value in enumerate(organs, start=1):
        roi = Dataset()
        roi.ROINumber = number
        roi.ReferencedFrameOfReferenceUID = src.FrameOfReferenceUID
        roi.ROIName = str(label_names[value])[:64]
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = f"{algorithm_name} {algorithm_version}"[:64]
        rois.append(roi)
        roi_contour = Dataset()
        roi_contour.ReferencedROINumber = number
        roi_contour.ROIDisplayColor = [int(c) for c in colors.get(value, (255, 0, 0))]
        if contours[value]:
            roi_contour.ContourSequence = contours[value]
        roi_contours.append(roi_contour)
        observation = Dataset()
        observation.ObservationNumber = number
        observation.ReferencedROINumber = number
        observation.RTROIInterpretedType = "ORGAN"
        observation.ROIInterpreter = ""
        observations.append(observation)
    rt.StructureSetROISequence = rois
    rt.ROIContourSequence = roi_contours
    rt.RTROIObservationsSequence = observations
    logger.debug(
        "RTSTRUCT: %d ROI(s), %d contour(s) on %d slice(s)",
        len(rois),
        sum(len(c) for c in contours.values()),
        len(sources),
    )
    return rt


def write_rtstruct(path: str | Path, *args: object, **kwargs: object) -> Path:
    """Build with :func:`build_rtstruct` and save to ``path`` atomically."""
    rt = build_rtstruct(*args, **kwargs)  # type: ignore[arg-type]
    with atomic_path(path) as tmp:
        rt.save_as(str(tmp), enforce_file_format=True)  # type: ignore[attr-defined]
    return Path(path)


__all__ = ["RT_STRUCTURE_SET_STORAGE", "build_rtstruct", "mask_contours", "write_rtstruct"]
