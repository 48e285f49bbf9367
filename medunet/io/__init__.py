"""Reading and writing images: NIfTI, DICOM series, DICOM SEG; geometry checks; atomic writes."""

from __future__ import annotations

from pathlib import Path

from medunet.errors import InvalidImageError
from medunet.io.atomic import atomic_path, atomic_write_bytes, atomic_write_text
from medunet.io.nifti import is_nifti, read_nifti, write_nifti
from medunet.io.volume import Volume


def read_image(path: str | Path) -> Volume:
    """Read a NIfTI file, another ITK-readable file (``.nrrd``, ``.mha``) or a DICOM series directory."""
    path = Path(path)
    if path.is_dir():
        from medunet.io.dicom import read_dicom_series  # optional dependency: pydicom

        return read_dicom_series(path)
    if is_nifti(path):
        return read_nifti(path)
    if not path.exists():
        raise InvalidImageError(path, "file does not exist")
    from medunet.io.itk_io import read_itk

    return read_itk(path)


__all__ = [
    "Volume",
    "atomic_path",
    "atomic_write_bytes",
    "atomic_write_text",
    "is_nifti",
    "read_image",
    "read_nifti",
    "write_nifti",
]
