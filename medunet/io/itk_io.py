"""Reading other ITK formats (NRRD, MHA) through SimpleITK, converting LPS to RAS once."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from medunet.errors import InvalidImageError
from medunet.io.volume import Volume, lps_to_ras_affine, ras_affine_to_lps


def read_itk(path: str | Path) -> Volume:
    path = Path(path)
    try:
        img = sitk.ReadImage(str(path))
    except RuntimeError as exc:
        raise InvalidImageError(path, f"not readable by ITK ({str(exc).strip().splitlines()[-1]})") from None
    if img.GetDimension() != 3:
        raise InvalidImageError(path, f"expected a 3D image, got {img.GetDimension()}D")
    # SimpleITK arrays are (k, j, i); Volume arrays are (i, j, k).
    array = np.transpose(
        sitk.GetArrayFromImage(img), (2, 1, 0) if img.GetNumberOfComponentsPerPixel() == 1 else (2, 1, 0, 3)
    )
    affine = lps_to_ras_affine(
        np.array(img.GetSpacing()), np.array(img.GetOrigin()), np.array(img.GetDirection())
    )
    return Volume(array=array, affine=affine, source=str(path))


def to_sitk(volume: Volume) -> sitk.Image:
    """Convert a :class:`Volume` to a SimpleITK image with the same physical geometry."""
    img = sitk.GetImageFromArray(np.ascontiguousarray(np.transpose(volume.array, (2, 1, 0))))
    spacing, origin, direction = ras_affine_to_lps(volume.affine)
    img.SetSpacing(tuple(float(s) for s in spacing))
    img.SetOrigin(tuple(float(o) for o in origin))
    img.SetDirection(tuple(float(d) for d in direction.ravel()))
    return img
