"""Synthetic abdominal CT/MR phantoms: the dataset medunet trains on when given no data.

Each case is a random patient (organ shapes, sizes, positions, pose) on a random scanner grid
(in-plane spacing 0.6-1.0 mm, slices 1-5 mm, orientations RAS/LPS/LAS/... including permuted axes,
non-zero origins), rendered with partial-volume edges, slight blur and noise. Labels
(:data:`SYNTHETIC_LABELS`) lie on exactly the image grid. Liver and spleen have overlapping intensities
and the two kidneys identical ones, so a model must use shape and side: orientation handling matters.

Generation is deterministic per seed: rerunning writes bitwise identical NIfTI files (nibabel writes
gzip headers with mtime 0 and no file name). The anatomy of a seed does not depend on the modality, so
``generate_case(s, "CT")`` and ``generate_case(s, "MR")`` show the same patient.
"""

from __future__ import annotations

import json
import logging
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from scipy import ndimage

from medunet.data.phantom import (
    SYNTHETIC_LABELS,
    Modality,
    ScanGeometry,
    render,
    sample_anatomy,
    sample_geometry,
)
from medunet.errors import ConfigError, DatasetError
from medunet.io.atomic import atomic_write_text, replace_dir
from medunet.io.nifti import write_nifti
from medunet.io.volume import Volume
from medunet.progress import progress

logger = logging.getLogger(__name__)

__all__ = [
    "GENERATOR_VERSION",
    "SYNTHETIC_LABELS",
    "case_ids",
    "ensure_synthetic_dataset",
    "generate_case",
    "generate_dataset",
]

#: Bump when a change alters generated data, so :func:`ensure_synthetic_dataset` regenerates.
GENERATOR_VERSION = "1"
_SEED_SALT = 0x6D6564756E6574  # "medunet"
_PREFIX = {"CT": "synct", "MR": "synmr"}
MIN_SIZE = 32


def _check(modality: str, size: int) -> Modality:
    mod = str(modality).upper()
    if mod in ("MRI", "MR"):
        mod = "MR"
    if mod not in ("CT", "MR"):
        raise ConfigError(None, f"synthetic modality must be 'CT' or 'MR', got {modality!r}")
    if int(size) < MIN_SIZE:
        raise ConfigError(None, f"synthetic size must be at least {MIN_SIZE} voxels in-plane, got {size}")
    return mod  # type: ignore[return-value]


def _canonical_affine(geom: ScanGeometry) -> np.ndarray:
    affine = np.diag([geom.spacing_xy, geom.spacing_xy, geom.spacing_z, 1.0])
    affine[:3, 3] = geom.grid_origin
    return affine


def _reorient(array: np.ndarray, affine: np.ndarray, code: str) -> tuple[np.ndarray, np.ndarray]:
    """Re-store a RAS-ordered array in orientation ``code``; the affine keeps every voxel in place."""
    start = nib.orientations.axcodes2ornt("RAS")
    transform = nib.orientations.ornt_transform(start, nib.orientations.axcodes2ornt(tuple(code)))
    out = np.ascontiguousarray(nib.orientations.apply_orientation(array, transform))
    new_affine = affine @ nib.orientations.inv_ornt_aff(transform, array.shape)
    return out, new_affine


def _finish_ct(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Scanner blur and correlated quantum noise, then int16 HU."""
    blur = rng.uniform(0.5, 0.8)
    img = ndimage.gaussian_filter(values, (blur, blur, 0.0))
    noise = ndimage.gaussian_filter(rng.standard_normal(values.shape, dtype=np.float32), (0.6, 0.6, 0.0))
    noise *= np.float32(rng.uniform(8.0, 18.0) / (noise.std() + 1e-6))
    img += noise
    return np.clip(np.rint(img), -1024, 3071).astype(np.int16)


def _finish_mr(values: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Blur, a smooth multiplicative bias field, a random gain and Rician noise; float32 output."""
    blur = rng.uniform(0.5, 0.8)
    img = ndimage.gaussian_filter(values, (blur, blur, 0.0))
    u, v, w = (np.linspace(-1, 1, n, dtype=np.float32) for n in img.shape)
    u, v, w = u[:, None, None], v[None, :, None], w[None, None, :]
    c = rng.normal(0, 1, 9).astype(np.float32)
    log_bias = 0.18 * (c[0] * u + c[1] * v + c[2] * w) + 0.10 * (
        c[3] * u * u + c[4] * v * v + c[5] * w * w + c[6] * u * v + c[7] * v * w + c[8] * u * w
    )
    img *= np.exp(log_bias).astype(np.float32) * np.float32(rng.uniform(0.7, 1.4))
    sigma = np.float32(rng.uniform(0.015, 0.035) * float(np.percentile(img, 99)))
    real = img + sigma * rng.standard_normal(img.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(img.shape, dtype=np.float32)
    return np.sqrt(real * real + imag * imag).astype(np.float32)


def generate_case(seed: int, modality: Modality = "CT", size: int = 160) -> tuple[Volume, Volume]:
    """Generate one phantom: ``(image, label)`` volumes on the same grid.

    CT images are int16 HU, MR images float32 arbitrary units; labels are uint8 with values from
    :data:`SYNTHETIC_LABELS`. ``size`` is the in-plane matrix; the slice count follows from the drawn
    slice spacing. Deterministic for ``(seed, modality, size)``.
    """
    mod = _check(modality, size)
    geom_ss, anat_ss, look_ss, noise_ss = np.random.SeedSequence([_SEED_SALT, int(seed)]).spawn(4)
    anatomy = sample_anatomy(np.random.default_rng(anat_ss))
    geom = sample_geometry(np.random.default_rng(geom_ss), anatomy, int(size))
    values, label = render(anatomy, geom, mod, np.random.default_rng(look_ss))
    noise_rng = np.random.default_rng(noise_ss)
    image = _finish_ct(values, noise_rng) if mod == "CT" else _finish_mr(values, noise_rng)
    affine = _canonical_affine(geom)
    image, new_affine = _reorient(image, affine, geom.orientation)
    label, _ = _reorient(label, affine, geom.orientation)
    meta: dict[str, object] = {"modality": mod, "synthetic_seed": int(seed)}
    source = f"synthetic:{mod}:{seed}"
    return (
        Volume(array=image, affine=new_affine, source=source, meta=meta),
        Volume(array=label, affine=new_affine.copy(), source=source, meta=dict(meta)),
    )


def _case_seed(seed: int, index: int) -> int:
    """Per-case seed derived from the dataset seed (independent streams for every case)."""
    return int(np.random.SeedSequence([_SEED_SALT, int(seed), int(index)]).generate_state(1, np.uint32)[0])


def case_ids(modality: Modality, cases: int, test_cases: int) -> tuple[list[str], list[str]]:
    """Training and test case ids (``synct_000``...); test ids continue the numbering."""
    prefix = _PREFIX[_check(modality, MIN_SIZE)]
    ids = [f"{prefix}_{i:03d}" for i in range(cases + test_cases)]
    return ids[:cases], ids[cases:]


def _params(
    modality: Modality, cases: int, test_cases: int, seed: int, size: int, dicom: bool
) -> dict[str, Any]:
    params: dict[str, Any] = {
        "seed": int(seed),
        "cases": int(cases),
        "test_cases": int(test_cases),
        "size": int(size),
        "modality": modality,
        "generator_version": GENERATOR_VERSION,
    }
    if dicom:
        params["dicom"] = True
    return params


def _is_synthetic(out_dir: Path) -> dict[str, Any] | None:
    """The recorded generator parameters of an existing synthetic dataset, or None."""
    try:
        meta = json.loads((out_dir / "dataset.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    params = meta.get("medunet_synthetic") if isinstance(meta, dict) else None
    return params if isinstance(params, dict) else None


def _write_dicom(image: Volume, out_dir: Path, case_id: str, modality: Modality, seed: int) -> None:
    from pydicom.uid import generate_uid

    from medunet.io.dicom_write import write_dicom_series

    def uid(kind: str) -> str:
        return str(generate_uid(entropy_srcs=["medunet-synthetic", str(seed), case_id, kind]))

    slope = 1.0
    if modality == "MR":  # float values: keep ~0.1% precision in 16-bit stored values
        slope = max(float(np.max(image.array)) / 30000.0, 1e-3)
    write_dicom_series(
        image,
        out_dir,
        modality=modality,
        patient_name="SYNTHETIC^PHANTOM",
        patient_id=case_id,
        study_date="20000101",
        series_description=f"medunet synthetic {modality} phantom",
        study_instance_uid=uid("study"),
        series_instance_uid=uid("series"),
        frame_of_reference_uid=uid("frame"),
        rescale_slope=slope,
    )


def generate_dataset(
    out_dir: str | Path,
    modality: Modality = "CT",
    cases: int = 24,
    test_cases: int = 4,
    seed: int = 0,
    size: int = 160,
    *,
    dicom: bool = False,
    _after_case: Callable[[int], None] | None = None,
) -> Path:
    """Write a Decathlon-layout synthetic dataset to ``out_dir`` and return its ``dataset.json`` path.

    Everything is written into a hidden sibling directory that is renamed to ``out_dir`` at the end, so an
    interrupted run leaves no half-written dataset. An existing ``out_dir`` is replaced only when it is
    itself a synthetic dataset (never a user's folder). With ``dicom=True`` each case is also written as a
    DICOM series under ``dicom/<case_id>/`` (needs the ``dicom`` extra).
    """
    mod = _check(modality, size)
    if cases < 1 or test_cases < 0:
        raise ConfigError(None, f"need cases >= 1 and test_cases >= 0, got {cases} and {test_cases}")
    out_dir = Path(out_dir).absolute()
    if out_dir.exists() and (
        not out_dir.is_dir() or (any(out_dir.iterdir()) and _is_synthetic(out_dir) is None)
    ):
        raise DatasetError(out_dir, "exists and is not a medunet synthetic dataset; refusing to overwrite it")
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_dir.parent / f".{out_dir.name}.partial-{uuid.uuid4().hex[:8]}"
    train_ids, test_ids = case_ids(mod, cases, test_cases)
    logger.info(
        "generating synthetic %s dataset: %d training + %d test cases, size %d, seed %d -> %s",
        mod, cases, test_cases, size, seed, out_dir,
    )  # fmt: skip
    try:
        training, test = [], []
        all_ids = train_ids + test_ids
        for index, case_id in enumerate(progress(all_ids, desc=f"synthetic {mod}", total=len(all_ids))):
            image, label = generate_case(_case_seed(seed, index), mod, size)
            is_train = index < cases
            img_rel = f"{'imagesTr' if is_train else 'imagesTs'}/{case_id}.nii.gz"
            lbl_rel = f"{'labelsTr' if is_train else 'labelsTs'}/{case_id}.nii.gz"
            write_nifti(tmp / img_rel, image.array, image.affine)
            write_nifti(tmp / lbl_rel, label.array, label.affine)
            if is_train:
                training.append({"image": f"./{img_rel}", "label": f"./{lbl_rel}"})
            else:
                test.append(f"./{img_rel}")
            if dicom:
                _write_dicom(image, tmp / "dicom" / case_id, case_id, mod, seed)
            if _after_case is not None:
                _after_case(index)
        meta = {
            "name": f"Synthetic{'CT' if mod == 'CT' else 'MR'}Abdomen",
            "description": (
                f"medunet synthetic abdominal {mod} phantoms: liver, spleen, kidneys and aorta with body "
                "wall, spine, ribs, lung bases and bowel; varied spacing and orientation. Test labels are "
                "in labelsTs/."
            ),
            "reference": "generated by medunet.data.synthetic",
            "licence": "CC0-1.0",
            "release": GENERATOR_VERSION,
            "tensorImageSize": "3D",
            "modality": {"0": mod},
            "labels": {str(k): v for k, v in SYNTHETIC_LABELS.items()},
            "numTraining": len(training),
            "numTest": len(test),
            "training": training,
            "test": test,
            "medunet_synthetic": _params(mod, cases, test_cases, seed, size, dicom),
        }
        atomic_write_text(tmp / "dataset.json", json.dumps(meta, indent=2) + "\n")
        replace_dir(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    logger.info("wrote %s", out_dir / "dataset.json")
    return out_dir / "dataset.json"


def ensure_synthetic_dataset(
    out_dir: str | Path = "data/synthetic_ct",
    *,
    modality: Modality = "CT",
    cases: int = 24,
    test_cases: int = 4,
    seed: int = 0,
    size: int = 160,
    dicom: bool = False,
) -> Path:
    """Return ``out_dir/dataset.json``, generating the dataset unless an identical one is already there.

    Idempotent: a dataset whose recorded generator parameters match and whose files are all present is
    reused; a different or damaged synthetic dataset is regenerated; a non-synthetic folder is refused.
    """
    mod = _check(modality, size)
    out_dir = Path(out_dir)
    wanted = _params(mod, cases, test_cases, seed, size, dicom)
    found = _is_synthetic(out_dir)
    if found is not None:
        if found == wanted and not (missing := _missing_files(out_dir)):
            logger.info("reusing synthetic dataset %s (%s)", out_dir, _describe(found))
            return out_dir / "dataset.json"
        reason = (
            f"parameters changed ({_describe(found)} -> {_describe(wanted)})"
            if found != wanted
            else f"{len(missing)} file(s) missing, e.g. {missing[0]}"
        )
        logger.info("regenerating synthetic dataset %s: %s", out_dir, reason)
    return generate_dataset(out_dir, mod, cases, test_cases, seed, size, dicom=dicom)


def _describe(params: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v}" for k, v in params.items())


def _missing_files(out_dir: Path) -> list[str]:
    meta = json.loads((out_dir / "dataset.json").read_text(encoding="utf-8"))
    rels = [p for item in meta.get("training", []) for p in (item.get("image"), item.get("label"))]
    rels += list(meta.get("test", []))
    return [str(r) for r in rels if not r or not (out_dir / str(r)).is_file()]
