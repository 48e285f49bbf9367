"""NIfTI reading with validation, and atomic NIfTI writing."""

from __future__ import annotations

import gzip
import logging
import zlib
from pathlib import Path

import nibabel as nib
import numpy as np

from medunet.errors import InvalidImageError
from medunet.io.atomic import atomic_path
from medunet.io.volume import Volume

logger = logging.getLogger(__name__)

NIFTI_SUFFIXES = (".nii", ".nii.gz")


def is_nifti(path: str | Path) -> bool:
    name = str(path).lower()
    return name.endswith(".nii") or name.endswith(".nii.gz")


def read_nifti(path: str | Path, *, check_finite: bool = True) -> Volume:
    """Read a 3D NIfTI file into a :class:`Volume`, failing with :class:`InvalidImageError` on bad input.

    A 4D file whose 4th dimension is 1 is squeezed to 3D; any other 4D or a 2D file is refused. The
    affine follows nibabel's choice (sform when its code is set, else qform), which is what ITK does.
    """
    path = Path(path)
    if not path.is_file():
        raise InvalidImageError(path, "file does not exist")
    if path.stat().st_size == 0:
        raise InvalidImageError(path, "file is empty (0 bytes)")
    try:
        img = nib.load(str(path))
    except Exception as exc:  # nibabel raises many types for a bad header
        raise InvalidImageError(path, f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    if not isinstance(img, nib.Nifti1Image | nib.Nifti2Image):
        raise InvalidImageError(path, f"not a NIfTI image (nibabel read it as {type(img).__name__})")
    shape = img.shape
    if len(shape) == 4 and shape[3] == 1:
        shape = shape[:3]
    if len(shape) != 3:
        raise InvalidImageError(path, f"expected a 3D image, got {len(img.shape)}D with shape {img.shape}")
    try:
        data = np.asanyarray(img.dataobj).reshape(shape)
    except (OSError, EOFError, ValueError, zlib.error, gzip.BadGzipFile) as exc:
        raise InvalidImageError(
            path, f"truncated or corrupt voxel data ({type(exc).__name__}: {exc})"
        ) from None
    if check_finite and np.issubdtype(data.dtype, np.floating) and not np.isfinite(data).all():
        n_bad = int(np.size(data) - np.count_nonzero(np.isfinite(data)))
        raise InvalidImageError(path, f"contains {n_bad} NaN/Inf voxel values")
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.isfinite(affine).all() or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise InvalidImageError(path, "header affine is singular or non-finite")
    return Volume(array=data, affine=affine, source=str(path))


def write_nifti(
    path: str | Path, array: np.ndarray, affine: np.ndarray, *, dtype: np.dtype | type | None = None
) -> Path:
    """Write ``array`` on grid ``affine`` to ``path`` atomically, with matching qform and sform (code 1).

    Setting both to the same affine with the same code means nibabel, ITK and ITK-SNAP all read the
    same geometry. The header carries no free text (``descrip`` and ``aux_file`` stay empty).
    """
    data = np.asarray(array) if dtype is None else np.asarray(array).astype(dtype, copy=False)
    img = nib.Nifti1Image(data, np.asarray(affine, dtype=np.float64))
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    img.header["descrip"] = b""
    img.header["aux_file"] = b""
    if np.issubdtype(data.dtype, np.integer):
        img.header.set_slope_inter(1.0, 0.0)
    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)
