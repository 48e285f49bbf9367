"""One case folder with everything a reviewer needs, written atomically as a whole.

Layout of ``<output>/<case>/``::

    segmentation.nii.gz   integer labels on the exact source grid (uint8; uint16 past 255 labels)
    image.nii.gz          the converted image (DICOM input, or when asked to copy)
    segmentation.dcm      DICOM SEG referencing the source series (DICOM input)
    rtstruct.dcm          DICOM RT Structure Set referencing the source series (DICOM input, ``rtstruct``)
    uncertainty.nii.gz    normalised softmax entropy (optional)
    labels.txt            ITK-SNAP label description file
    review.itksnap        ITK-SNAP workspace: image + segmentation + label table
    volumes.csv           per-organ voxel count, volume (mL), mean intensity
    preview.png           axial / coronal / sagittal overlay
    case.json             provenance and where the image is (read back by ``medunet review import``)

Files are written into a hidden sibling folder that is renamed to ``<case>`` only when complete, so a
crash never leaves a half-written case; a previous folder of the same name is replaced.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medunet import __version__
from medunet.export.itksnap import label_colors, write_label_file, write_workspace
from medunet.export.report import OrganStats, organ_stats, write_preview, write_volumes_csv
from medunet.inference.predictor import Prediction
from medunet.io.atomic import atomic_write_text, replace_dir
from medunet.io.nifti import write_nifti
from medunet.io.volume import Volume

logger = logging.getLogger(__name__)

CASE_FORMAT = "medunet-case/1"
CASE_FILE = "case.json"
SEGMENTATION = "segmentation.nii.gz"
IMAGE = "image.nii.gz"
RTSTRUCT = "rtstruct.dcm"


@dataclass
class CaseResult:
    """What was written for one case."""

    name: str
    directory: Path
    stats: list[OrganStats]
    files: list[str]


def labels_digest(labels: np.ndarray) -> str:
    """sha256 of a label map's values and shape (independent of file compression)."""
    h = hashlib.sha256(str(tuple(labels.shape)).encode())
    h.update(np.ascontiguousarray(labels.astype(np.int64, copy=False)).tobytes())
    return h.hexdigest()


def label_dtype(label_names: dict[int, str]) -> type:
    return np.uint8 if max(label_names) <= 255 else np.uint16


def derived_uid(seed: str, *parts: str) -> str:
    """A UID that depends only on ``seed`` and ``parts`` (pydicom's root + a SHA-512 of the text)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(entropy_srcs=["|".join(("medunet", seed, *parts))]))


def _object_uids(seed: str | None, kind: str) -> dict[str, str]:
    if seed is None:
        return {}
    return {
        "sop_instance_uid": derived_uid(seed, kind, "SOPInstanceUID"),
        "series_instance_uid": derived_uid(seed, kind, "SeriesInstanceUID"),
    }


def write_derived_dicom(
    seg_path: Path,
    rtstruct_path: Path | None,
    labels: np.ndarray,
    volume: Volume,
    names: dict[int, str],
    *,
    description: str,
    uid_seed: str | None = None,
) -> list[Path]:
    """Write the DICOM SEG (and, with ``rtstruct_path``, the RT Structure Set) of a label map predicted
    for the DICOM series ``volume`` was read from; both reference its instances and frame of reference.
    Returns the paths written."""
    from medunet.export.dicom_seg import write_dicom_seg
    from medunet.export.rtstruct import write_rtstruct

    colors = label_colors(names)
    source_files = list(volume.meta.get("source_files", []))  # type: ignore[call-overload]
    if not source_files:
        raise ValueError(f"{volume.source}: not read from a DICOM series; no SEG/RTSTRUCT can reference it")
    written = []
    for writer, path, kind in (
        (write_dicom_seg, seg_path, "SEG"),
        (write_rtstruct, rtstruct_path, "RTSTRUCT"),
    ):
        if path is None:
            continue
        writer(
            path,
            labels,
            volume.affine,
            source_files,
            names,
            colors=colors,
            series_description=description[:64],
            **_object_uids(uid_seed, kind),
        )
        written.append(path)
    return written


def write_case(
    output_dir: str | Path,
    name: str,
    volume: Volume,
    prediction: Prediction,
    *,
    source: str | Path,
    is_dicom: bool,
    copy_image: bool = False,
    checkpoint: str | Path | None = None,
    checkpoint_sha256: str | None = None,
    window: tuple[float, float] | None = None,
    options: dict[str, Any] | None = None,
    rtstruct: bool = False,
    uid_seed: str | None = None,
    source_uri: str | None = None,
) -> CaseResult:
    """Write the case folder ``output_dir/name`` atomically (see module docstring).

    ``rtstruct``: also write an RT Structure Set (DICOM input only; for other inputs it is skipped with a
    warning, since it must reference source DICOM images). ``uid_seed``: derive the SEG's and RTSTRUCT's
    SOP Instance and Series Instance UIDs from this text (:func:`derived_uid`) instead of random ones, so
    the same seed gives the same objects (idempotent PACS pushes). ``source_uri``: what ``case.json``
    records as the source instead of the local path (e.g. the DICOMweb series the files were pulled from).
    """
    output_dir = Path(output_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    final = output_dir / name
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.partial-", dir=output_dir))
    try:
        files = _write_files(
            tmp,
            final,
            volume,
            prediction,
            source=Path(source),
            is_dicom=is_dicom,
            copy_image=copy_image,
            checkpoint=checkpoint,
            checkpoint_sha256=checkpoint_sha256,
            window=window,
            options=options or {},
            name=name,
            rtstruct=rtstruct,
            uid_seed=uid_seed,
            source_uri=source_uri,
        )
        stats = files.pop("__stats__")  # type: ignore[misc]
        replace_dir(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return CaseResult(name=name, directory=final, stats=stats, files=sorted(files))  # type: ignore[arg-type]


def _write_files(
    tmp: Path,
    final: Path,
    volume: Volume,
    prediction: Prediction,
    *,
    source: Path,
    is_dicom: bool,
    copy_image: bool,
    checkpoint: str | Path | None,
    checkpoint_sha256: str | None,
    window: tuple[float, float] | None,
    options: dict[str, Any],
    name: str,
    rtstruct: bool = False,
    uid_seed: str | None = None,
    source_uri: str | None = None,
) -> dict[str, object]:
    names = prediction.label_names
    colors = label_colors(names)
    labels = prediction.labels.astype(label_dtype(names), copy=False)
    files: dict[str, object] = {}
    write_nifti(tmp / SEGMENTATION, labels, volume.affine)
    files[SEGMENTATION] = True
    if is_dicom or copy_image:
        image_array = volume.array
        if np.issubdtype(image_array.dtype, np.floating) and np.all(np.mod(image_array, 1) == 0):
            lo, hi = float(image_array.min(initial=0)), float(image_array.max(initial=0))
            if lo >= -32768 and hi <= 32767:
                image_array = image_array.astype(np.int16)
        write_nifti(tmp / IMAGE, image_array, volume.affine)
        files[IMAGE] = True
        image_ref: str = IMAGE
    else:
        image_ref = str(source.resolve())
    if prediction.uncertainty is not None:
        write_nifti(tmp / "uncertainty.nii.gz", prediction.uncertainty.astype(np.float32), volume.affine)
        files["uncertainty.nii.gz"] = True
    if is_dicom:
        written = write_derived_dicom(
            tmp / "segmentation.dcm",
            tmp / RTSTRUCT if rtstruct else None,
            labels,
            volume,
            names,
            description=f"medunet {name}",
            uid_seed=uid_seed,
        )
        files.update(dict.fromkeys((p.name for p in written), True))
    elif rtstruct:
        logger.warning("%s: no RTSTRUCT written: it needs a DICOM source series to reference", name)
    write_label_file(tmp / "labels.txt", names, colors)
    files["labels.txt"] = True
    write_workspace(
        tmp / "review.itksnap",
        save_location=final.resolve(),
        main_image=image_ref,
        segmentation=SEGMENTATION,
        labels=names,
        dimensions=volume.shape,
        colors=colors,
        main_nickname=name,
    )
    files["review.itksnap"] = True
    stats = organ_stats(labels, volume.affine, names, image=volume.array, uncertainty=prediction.uncertainty)
    write_volumes_csv(tmp / "volumes.csv", stats)
    files["volumes.csv"] = True
    write_preview(
        tmp / "preview.png",
        volume.array,
        labels,
        volume.affine,
        names,
        colors=colors,
        window=window,
        title=name,
    )
    files["preview.png"] = True
    record = {
        "format": CASE_FORMAT,
        "case": name,
        "image": image_ref,
        "source": source_uri or str(source.resolve()),
        "source_kind": "dicom" if is_dicom else "image",
        "series_instance_uid": volume.meta.get("series_instance_uid") if is_dicom else None,
        "segmentation": SEGMENTATION,
        "segmentation_sha256": labels_digest(labels),
        "shape": list(volume.shape),
        "affine": np.asarray(volume.affine).round(6).tolist(),
        "labels": {str(k): v for k, v in sorted(names.items())},
        "checkpoint": None if checkpoint is None else str(Path(checkpoint).resolve()),
        "checkpoint_sha256": checkpoint_sha256,
        "medunet_version": __version__,
        "options": options,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
    }
    atomic_write_text(tmp / CASE_FILE, json.dumps(record, indent=2) + "\n")
    files[CASE_FILE] = True
    files["__stats__"] = stats
    return files


def read_case_record(case_dir: str | Path) -> dict[str, Any]:
    """Load ``case.json`` from a case folder (``{}`` when absent)."""
    path = Path(case_dir) / CASE_FILE
    if not path.is_file():
        return {}
    return json.loads(path.read_text())
