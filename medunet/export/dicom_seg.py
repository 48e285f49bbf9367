"""DICOM SEG export with highdicom: one segment per organ, frames aligned with the source slices.

The label map lives on the source series' grid; each SEG frame is sampled from it at the exact pixel
positions of the corresponding source image (computed from that image's ImagePositionPatient,
ImageOrientationPatient and PixelSpacing), so the mapping does not rely on how the reader ordered
slices or axes. A position that does not fall on a voxel centre is a :class:`GeometryMismatchError`.
Source headers are repaired on copies first (:mod:`medunet.export.dicom_headers`); a series that cannot
give a valid SEG is a :class:`~medunet.errors.DicomHeaderError` naming the series and the attribute.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from medunet import __version__
from medunet.errors import DicomError
from medunet.export.dicom_geometry import slice_labels
from medunet.export.dicom_headers import normalise_source_series, read_source_headers
from medunet.io.atomic import atomic_path

logger = logging.getLogger(__name__)

# SNOMED CT codes (value, meaning) for organs medunet is commonly trained on. Names are matched after
# lower-casing and removing separators and any left/right token.
_SCT = {
    "liver": ("10200004", "Liver"),
    "spleen": ("78961009", "Spleen"),
    "kidney": ("64033007", "Kidney"),
    "aorta": ("15825003", "Aorta"),
    "pancreas": ("15776009", "Pancreas"),
    "stomach": ("69695003", "Stomach"),
    "gallbladder": ("28231008", "Gallbladder"),
    "esophagus": ("32849002", "Esophagus"),
    "oesophagus": ("32849002", "Esophagus"),
    "duodenum": ("38848004", "Duodenum"),
    "adrenal": ("23451007", "Adrenal gland"),
    "adrenalgland": ("23451007", "Adrenal gland"),
    "inferiorvenacava": ("64131007", "Inferior vena cava"),
    "ivc": ("64131007", "Inferior vena cava"),
    "portalvein": ("32764006", "Portal vein"),
    "heart": ("80891009", "Heart"),
    "lung": ("39607008", "Lung"),
    "bladder": ("89837001", "Bladder"),
    "urinarybladder": ("89837001", "Bladder"),
    "prostate": ("41216001", "Prostate"),
    "rectum": ("34402009", "Rectum"),
    "colon": ("71854001", "Colon"),
    "smallintestine": ("30315005", "Small intestine"),
    "smallbowel": ("30315005", "Small intestine"),
    "brain": ("12738006", "Brain"),
    "brainstem": ("15926001", "Brainstem"),
    "spinalcord": ("2748008", "Spinal cord"),
    "parotid": ("45289007", "Parotid gland"),
    "parotidgland": ("45289007", "Parotid gland"),
    "submandibular": ("54019009", "Submandibular gland"),
    "submandibulargland": ("54019009", "Submandibular gland"),
    "mandible": ("91609006", "Mandible"),
    "larynx": ("4596009", "Larynx"),
    "trachea": ("44567001", "Trachea"),
    "eye": ("81745001", "Eye"),
    "lens": ("78076003", "Lens"),
    "opticnerve": ("18234004", "Optic nerve"),
    "opticchiasm": ("244453006", "Optic chiasm"),
    "femur": ("71341001", "Femur"),
}
_LATERALITY = {"left": ("7771000", "Left"), "right": ("24028007", "Right")}
_ANATOMICAL_STRUCTURE = ("91723000", "Anatomical Structure")
_TISSUE = ("85756007", "Tissue")


def anatomy_code(name: str) -> tuple[tuple[str, str] | None, tuple[str, str] | None]:
    """SNOMED ``(organ, laterality)`` codes for an organ name such as ``left_kidney`` or ``Parotid_R``."""
    spaced = re.sub(r"(?<=[a-z])(?=[A-Z])", " ", name)
    tokens = [t for t in re.split(r"[^a-z0-9]+", spaced.lower()) if t]
    side = None
    rest = []
    for t in tokens:
        if t in ("left", "l", "lt"):
            side = _LATERALITY["left"]
        elif t in ("right", "r", "rt"):
            side = _LATERALITY["right"]
        else:
            rest.append(t)
    key = "".join(rest)
    if key.endswith("s") and key[:-1] in _SCT:  # kidneys, lungs
        key = key[:-1]
    return _SCT.get(key), side


def build_dicom_seg(
    labels: np.ndarray,
    affine: np.ndarray,
    source_files: Sequence[str | Path],
    label_names: Mapping[int, str],
    *,
    series_description: str = "medunet segmentation",
    series_number: int = 901,
    algorithm_name: str = "medunet",
    algorithm_version: str = __version__,
    colors: Mapping[int, tuple[int, int, int]] | None = None,
    sop_instance_uid: str | None = None,
    series_instance_uid: str | None = None,
) -> object:
    """A highdicom ``Segmentation`` (BINARY, one segment per declared organ) for the source series.

    ``sop_instance_uid`` / ``series_instance_uid``: fixed UIDs (e.g. derived from the source series and the
    model, so that a PACS push is idempotent); new random UIDs when omitted.
    """
    import highdicom as hd
    from pydicom.sr.codedict import codes

    if not source_files:
        raise DicomError(None, "no source DICOM files recorded for this volume; cannot reference them")
    sources = normalise_source_series(read_source_headers(source_files))
    if any(int(getattr(ds, "NumberOfFrames", 1) or 1) > 1 for ds in sources):
        raise DicomError(source_files[0], "SEG export from multi-frame source images is not supported")

    organs = [v for v in sorted(label_names) if v != 0]
    segment_of = np.zeros(max(int(labels.max(initial=0)), max(label_names)) + 1, dtype=np.uint16)
    for number, value in enumerate(organs, start=1):
        segment_of[value] = number
    frames = np.zeros((len(sources), int(sources[0].Rows), int(sources[0].Columns)), dtype=np.uint16)
    for f, ds in enumerate(sources):
        frames[f] = segment_of[slice_labels(labels, affine, ds)]
    frames = frames.astype(np.uint8) if len(organs) < 256 else frames

    algorithm = hd.AlgorithmIdentificationSequence(
        name=algorithm_name, version=algorithm_version, family=codes.cid7162.ArtificialIntelligence
    )
    descriptions = []
    for number, value in enumerate(organs, start=1):
        organ, side = anatomy_code(label_names[value])
        category = _ANATOMICAL_STRUCTURE if organ else _TISSUE
        prop = organ or _TISSUE
        kwargs = {}
        if colors and value in colors:
            kwargs["display_color"] = hd.color.CIELabColor.from_rgb(*colors[value])
        desc = hd.seg.SegmentDescription(
            segment_number=number,
            segment_label=str(label_names[value])[:64],
            segmented_property_category=hd.sr.CodedConcept(category[0], "SCT", category[1]),
            segmented_property_type=hd.sr.CodedConcept(prop[0], "SCT", prop[1]),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            tracking_uid=hd.UID(),
            tracking_id=f"{label_names[value]}",
            **kwargs,
        )
        if side is not None:
            desc.SegmentedPropertyTypeCodeSequence[0].SegmentedPropertyTypeModifierCodeSequence = [
                hd.sr.CodedConcept(side[0], "SCT", side[1])
            ]
        descriptions.append(desc)

    seg = hd.seg.Segmentation(
        source_images=sources,
        pixel_array=frames,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=descriptions,
        series_instance_uid=series_instance_uid or hd.UID(),
        series_number=series_number,
        sop_instance_uid=sop_instance_uid or hd.UID(),
        instance_number=1,
        manufacturer="medunet",
        manufacturer_model_name=algorithm_name,
        software_versions=algorithm_version,
        device_serial_number="0",
        series_description=series_description,
        omit_empty_frames=bool(frames.any()),
        content_label=f"{str(sources[0].get('Modality', '') or '').strip()}_SEG".lstrip("_")[:16],
    )
    return seg


def write_dicom_seg(path: str | Path, *args: object, **kwargs: object) -> Path:
    """Build with :func:`build_dicom_seg` and save to ``path`` atomically."""
    seg = build_dicom_seg(*args, **kwargs)  # type: ignore[arg-type]
    with atomic_path(path) as tmp:
        seg.save_as(str(tmp))  # type: ignore[attr-defined]
    return Path(path)
