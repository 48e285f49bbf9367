"""Import human-corrected segmentations back into a training dataset (Decathlon layout).

A reviewer opens ``review.itksnap`` of a case folder written by ``medunet predict``, corrects the mask
in ITK-SNAP and saves it over ``segmentation.nii.gz``. :func:`import_reviewed` then checks every case
(the mask lies on its image's grid, holds integer labels the dataset declares) and adds image and mask
to the dataset: ``imagesTr/<id>.nii.gz``, ``labelsTr/<id>.nii.gz``, a new ``training`` entry in
``dataset.json`` and a record under its ``"provenance"`` key (model checkpoint hash, ``"corrected_by":
"human review"``, timestamps), all in one atomic rewrite of ``dataset.json``. Nothing patient-identifying is copied into the dataset's JSON: the original
image path stays in the case folder's own ``case.json``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import re
import shutil
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from medunet.errors import DatasetError, GeometryMismatchError, LabelError, MedunetError
from medunet.export.case import CASE_FILE, IMAGE, SEGMENTATION, labels_digest
from medunet.io import read_image
from medunet.io.atomic import atomic_path, atomic_write_text
from medunet.io.nifti import read_nifti, write_nifti
from medunet.io.volume import max_corner_distance
from medunet.progress import progress

logger = logging.getLogger(__name__)

PROVENANCE_KEY = "provenance"
DEFAULT_TOLERANCE_MM = 0.01


@dataclass
class ImportReport:
    """Outcome of an import: ``imported`` maps review case name -> new dataset case id."""

    imported: dict[str, str] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)


@dataclass
class ReviewedCase:
    """A checked, ready-to-import reviewed case."""

    name: str
    directory: Path
    image_path: Path
    labels: np.ndarray
    affine: np.ndarray
    record: dict[str, Any]
    reviewed_sha256: str


def find_case_dirs(reviewed: str | Path) -> list[Path]:
    """Case folders under ``reviewed``: the folder itself if it has ``case.json``, else its children."""
    reviewed = Path(reviewed)
    if not reviewed.is_dir():
        raise DatasetError(reviewed, "reviewed folder does not exist")
    if (reviewed / CASE_FILE).is_file():
        return [reviewed]
    found = sorted(p.parent for p in reviewed.glob(f"*/{CASE_FILE}") if not p.parent.name.startswith("."))
    if not found:
        raise DatasetError(
            reviewed, f"no case folders ({CASE_FILE}) found; point at 'medunet predict' output"
        )
    return found


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DatasetError(path, f"cannot read JSON: {exc}") from None
    if not isinstance(data, dict):
        raise DatasetError(path, "expected a JSON object")
    return data


def _parse_labels(raw: Mapping[str, Any], source: Path) -> dict[int, str]:
    """Decathlon ``{"0": "background"}`` or nnU-Net v2 ``{"background": 0}`` label tables."""
    out: dict[int, str] = {}
    for k, v in raw.items():
        if isinstance(v, int) and not str(k).lstrip("-").isdigit():
            out[int(v)] = str(k)
        else:
            try:
                out[int(k)] = str(v)
            except ValueError:
                raise DatasetError(source, f"label key {k!r} is not an integer") from None
    return out


def check_reviewed_case(
    case_dir: Path, known_labels: Mapping[int, str], *, tolerance_mm: float = DEFAULT_TOLERANCE_MM
) -> ReviewedCase:
    """Validate one reviewed case folder; raise a typed error naming the offending file."""
    record = _read_json(case_dir / CASE_FILE)
    seg_path = case_dir / str(record.get("segmentation") or SEGMENTATION)
    image_ref = str(record.get("image") or IMAGE)
    image_path = Path(image_ref) if Path(image_ref).is_absolute() else case_dir / image_ref
    if not image_path.exists():
        raise DatasetError(case_dir / CASE_FILE, f"image {image_ref} recorded for this case does not exist")
    seg = read_nifti(seg_path)
    image = _image_header(image_path)
    shape, affine = image
    if seg.array.ndim != 3:
        raise GeometryMismatchError(seg_path, f"expected a 3D label map, got shape {seg.array.shape}")
    if seg.shape != shape:
        raise GeometryMismatchError(
            seg_path, f"shape {seg.shape} differs from its image's {shape} ({image_path.name})"
        )
    dist = max_corner_distance(seg.affine, affine, shape)
    if dist > tolerance_mm:
        raise GeometryMismatchError(
            seg_path,
            f"not on its image's grid ({image_path.name}): corners differ by up to {dist:.3g} mm "
            f"(tolerance {tolerance_mm} mm); it was saved for another image or resampled",
        )
    data = np.asarray(seg.array)
    if np.issubdtype(data.dtype, np.floating) and not (
        np.isfinite(data).all() and (np.mod(data, 1) == 0).all()
    ):
        raise LabelError(seg_path, "label map holds non-integer values")
    values = {int(v) for v in np.unique(data)}
    unknown = sorted(v for v in values if v not in known_labels)
    if unknown:
        declared = ", ".join(f"{k}={v}" for k, v in sorted(known_labels.items()))
        raise LabelError(seg_path, f"unknown label value(s) {unknown}; the dataset declares {declared}")
    labels = data.astype(np.uint8 if max(known_labels) <= 255 else np.uint16)
    return ReviewedCase(
        name=str(record.get("case") or case_dir.name),
        directory=case_dir,
        image_path=image_path,
        labels=labels,
        affine=affine,
        record=record,
        reviewed_sha256=labels_digest(labels),
    )


def _image_header(path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and affine of an image without loading voxels where possible."""
    if path.name.endswith((".nii", ".nii.gz")):
        import nibabel as nib

        try:
            img = nib.load(str(path))
        except Exception as exc:  # nibabel raises several types
            raise DatasetError(path, f"cannot read image header: {exc}") from None
        return tuple(int(s) for s in img.shape[:3]), np.asarray(img.affine, dtype=np.float64)  # type: ignore[return-value]
    vol = read_image(path)
    return vol.shape, vol.affine  # type: ignore[return-value]


def _next_ids(training: list[dict[str, Any]], root: Path, n: int) -> list[str]:
    """New case ids following the dataset's naming (``prefix_NNN``), unused in ``imagesTr``/``labelsTr``."""
    prefix, numbers, width = "reviewed", [0], 3
    for entry in training:
        image = entry.get("image")
        name = Path(str(image[0] if isinstance(image, list) else image)).name
        m = re.fullmatch(r"(.*?)_?(\d+)(?:_0000)?\.nii(?:\.gz)?", name)
        if m:
            prefix = m.group(1) or prefix
            numbers.append(int(m.group(2)))
            width = max(width, len(m.group(2)))
    ids: list[str] = []
    k = max(numbers) + 1
    while len(ids) < n:
        cid = f"{prefix}_{k:0{width}d}"
        if (
            not (root / "imagesTr" / f"{cid}.nii.gz").exists()
            and not (root / "labelsTr" / f"{cid}.nii.gz").exists()
        ):
            ids.append(cid)
        k += 1
    return ids


def _copy_image(src: Path, dst: Path) -> None:
    if src.name.endswith(".nii.gz"):
        with atomic_path(dst) as tmp:
            shutil.copyfile(src, tmp)
    else:
        vol = read_image(src)
        write_nifti(dst, vol.array, vol.affine)


def _open_dataset(dataset: Path, labels_hint: Mapping[int, str] | None) -> dict[str, Any]:
    djson = dataset / "dataset.json"
    if djson.is_file():
        d = _read_json(djson)
        if not isinstance(d.get("training"), list) or not isinstance(d.get("labels"), dict):
            raise DatasetError(
                djson, "not a Decathlon dataset.json ('labels' object and 'training' list needed)"
            )
        return d
    if dataset.exists() and any(dataset.iterdir()):
        raise DatasetError(dataset, "folder has no dataset.json; refusing to add files to an unknown layout")
    if not labels_hint:
        raise DatasetError(dataset, "new dataset needs label names; none found in the reviewed cases")
    logger.info("creating a new Decathlon dataset in %s", dataset)
    return {
        "name": dataset.name,
        "description": "Human-reviewed medunet predictions",
        "tensorImageSize": "3D",
        "modality": {"0": "CT"},
        "labels": {str(k): v for k, v in sorted(labels_hint.items())},
        "numTraining": 0,
        "numTest": 0,
        "training": [],
        "test": [],
    }


def import_reviewed(
    reviewed: str | Path, dataset: str | Path, *, tolerance_mm: float = DEFAULT_TOLERANCE_MM
) -> ImportReport:
    """Check every reviewed case and add the good ones to ``dataset``; failures are reported, not raised."""
    reviewed, dataset = Path(reviewed), Path(dataset)
    case_dirs = find_case_dirs(reviewed)
    first = _read_json(case_dirs[0] / CASE_FILE) if (case_dirs[0] / CASE_FILE).is_file() else {}
    hint = {int(k): str(v) for k, v in (first.get("labels") or {}).items()}
    d = _open_dataset(dataset, hint)
    djson = dataset / "dataset.json"
    known = _parse_labels(d["labels"], djson)
    provenance = d.get(PROVENANCE_KEY)
    provenance = dict(provenance) if isinstance(provenance, dict) else {}
    already = {v.get("reviewed_sha256"): k for k, v in provenance.items() if isinstance(v, dict)}

    report = ImportReport()
    accepted: list[ReviewedCase] = []
    for case_dir in progress(case_dirs, desc="check", total=len(case_dirs)):
        try:
            case = check_reviewed_case(case_dir, known, tolerance_mm=tolerance_mm)
            model_labels = {int(k): str(v) for k, v in (case.record.get("labels") or {}).items()}
            clash = {
                v: (model_labels[v], known[v])
                for v in model_labels
                if v in known and v != 0 and model_labels[v].lower() != known[v].lower()
            }
            if clash:
                raise LabelError(case_dir / CASE_FILE, f"model and dataset name labels differently: {clash}")
        except MedunetError as exc:
            report.failures.append(str(exc))
            logger.error("%s", exc)
            continue
        if case.reviewed_sha256 in already:
            report.skipped[case.name] = f"already imported as {already[case.reviewed_sha256]}"
            logger.warning(
                "%s: identical mask already imported as %s; skipped", case.name, already[case.reviewed_sha256]
            )
            continue
        accepted.append(case)

    if not accepted:
        return report
    ids = _next_ids(d["training"], dataset, len(accepted))
    now = _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")
    new_entries = []
    for case, cid in zip(accepted, ids, strict=True):
        try:
            _copy_image(case.image_path, dataset / "imagesTr" / f"{cid}.nii.gz")
            write_nifti(dataset / "labelsTr" / f"{cid}.nii.gz", case.labels, case.affine)
        except (OSError, MedunetError) as exc:
            report.failures.append(f"{case.directory}: cannot copy into the dataset: {exc}")
            logger.error("%s: cannot copy into the dataset: %s", case.directory, exc)
            continue
        new_entries.append({"image": f"./imagesTr/{cid}.nii.gz", "label": f"./labelsTr/{cid}.nii.gz"})
        changed = case.reviewed_sha256 != case.record.get("segmentation_sha256")
        provenance[cid] = {
            "review_case": case.name,
            "corrected_by": "human review",
            "modified_in_review": changed,
            "model_checkpoint_sha256": case.record.get("checkpoint_sha256"),
            "medunet_version": case.record.get("medunet_version"),
            "predicted": case.record.get("created"),
            "imported": now,
            "reviewed_sha256": case.reviewed_sha256,
            "label_sha256": hashlib.sha256((dataset / "labelsTr" / f"{cid}.nii.gz").read_bytes()).hexdigest(),
        }
        report.imported[case.name] = cid
        if not changed:
            logger.warning("%s: mask is unchanged from the prediction (accepted as is?)", case.name)
    if new_entries:
        d["training"] = list(d["training"]) + new_entries
        d["numTraining"] = len(d["training"])
        d[PROVENANCE_KEY] = provenance
        # One atomic write of dataset.json (entries and provenance together): the dataset is either
        # before or after this import, never in between. Image/label files were written first.
        atomic_write_text(djson, json.dumps(d, indent=2) + "\n")
    return report
