"""Where each pixel of a source DICOM image lies: patient (LPS) coordinates and label-map voxels.

DICOM places pixel ``(r, c)`` of an image at ``IPP + c * Δc * X + r * Δr * Y`` (LPS, mm), where ``X`` is
ImageOrientationPatient[:3] (the direction in which the column index grows), ``Y`` is
ImageOrientationPatient[3:] and PixelSpacing is ``(Δr, Δc)`` -- row spacing first. Label maps carry a RAS
affine (``medunet.io.volume``), so the LPS position is flipped to RAS before the inverse affine gives voxel
indices. The SEG and RTSTRUCT writers both sample label maps through :func:`slice_labels`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from medunet.errors import DicomError, GeometryMismatchError
from medunet.io.volume import RAS_TO_LPS


def plane_geometry(ds: Any, path: str | Path | None = None) -> tuple[np.ndarray, np.ndarray, float, float]:
    """``(ipp, iop, row_spacing, col_spacing)`` of one single-frame image; DicomError when unusable."""
    try:
        ipp = np.asarray([float(v) for v in ds.ImagePositionPatient], dtype=np.float64)
        iop = np.asarray([float(v) for v in ds.ImageOrientationPatient], dtype=np.float64)
        row_sp, col_sp = (float(v) for v in ds.PixelSpacing)
    except (AttributeError, TypeError, ValueError) as exc:
        raise DicomError(path, f"cannot place the image in space: {exc}") from None
    if ipp.shape != (3,) or iop.shape != (6,) or not (np.isfinite(ipp).all() and np.isfinite(iop).all()):
        raise DicomError(
            path, "ImagePositionPatient / ImageOrientationPatient have the wrong number of values"
        )
    return ipp, iop, row_sp, col_sp


def pixel_to_patient(ds: Any, rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    """LPS positions (mm), shape ``(3, *rows.shape)``, of (fractional) pixel coordinates ``(rows, cols)``."""
    ipp, iop, row_sp, col_sp = plane_geometry(ds, getattr(ds, "filename", None))
    rows = np.asarray(rows, dtype=np.float64)
    cols = np.asarray(cols, dtype=np.float64)
    extra = (None,) * rows.ndim
    return (
        ipp[(slice(None), *extra)]
        + iop[(slice(0, 3), *extra)] * (cols * col_sp)
        + iop[(slice(3, 6), *extra)] * (rows * row_sp)
    )


def slice_voxel_indices(
    ds: Any, inv_affine: np.ndarray, shape: tuple[int, ...], path: str | Path | None = None
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Voxel indices ``(i, j, k)``, each ``(rows, cols)``, of every pixel of one source image.

    A pixel that does not fall on a voxel centre, or lies outside the grid, is a GeometryMismatchError.
    """
    try:
        rows, cols = int(ds.Rows), int(ds.Columns)
    except (AttributeError, TypeError, ValueError) as exc:
        raise DicomError(path, f"cannot place the image in space: {exc}") from None
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    lps = pixel_to_patient(ds, r, c)
    ras = RAS_TO_LPS[:3, :3] @ lps.reshape(3, -1)
    ijk = inv_affine[:3, :3] @ ras + inv_affine[:3, 3:4]
    rounded = np.rint(ijk)
    if np.abs(ijk - rounded).max(initial=0.0) > 1e-2:
        raise GeometryMismatchError(path, "source image pixels do not fall on the segmentation's voxel grid")
    idx = rounded.astype(np.int64)
    for axis in range(3):
        if idx[axis].min() < 0 or idx[axis].max() >= shape[axis]:
            raise GeometryMismatchError(path, "source image lies outside the segmentation's grid")
    return tuple(a.reshape(rows, cols) for a in idx)  # type: ignore[return-value]


def slice_labels(labels: np.ndarray, affine: np.ndarray, ds: Any) -> np.ndarray:
    """The label map sampled at every pixel of source image ``ds``: an array ``(Rows, Columns)``."""
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    i, j, k = slice_voxel_indices(ds, inv, labels.shape[:3], getattr(ds, "filename", None))
    return labels[i, j, k]


__all__ = ["pixel_to_patient", "plane_geometry", "slice_labels", "slice_voxel_indices"]
