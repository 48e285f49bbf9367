"""DICOM series directories as training and evaluation inputs of MONAI's ``LoadImage``.

MONAI's own DICOM paths (ITK, pydicom readers) copy every header tag into the image's metadata, so
patient name, ID, birth date and the like would travel with each tensor through a training run. This
reader goes through medunet's validated series reader instead (the one ``medunet predict`` uses) and
hands MONAI the voxels and the RAS affine only: identity never enters the pipeline.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import ImageReader
from monai.utils import MetaKeys, SpaceKeys, ensure_tuple

from medunet.io.volume import Volume


class DicomSeriesReader(ImageReader):
    """Reads a directory holding one DICOM series; ``verify_suffix`` accepts directories only."""

    def verify_suffix(self, filename: Sequence[str | Path] | str | Path) -> bool:
        names = ensure_tuple(filename)
        return len(names) == 1 and Path(names[0]).is_dir()

    def read(self, data: Sequence[str | Path] | str | Path, **kwargs: Any) -> Volume:
        from medunet.io.dicom import read_dicom_series  # optional dependency: pydicom

        names = ensure_tuple(data)
        if len(names) != 1:
            raise ValueError(f"one DICOM series directory per image, got {len(names)} paths")
        return read_dicom_series(Path(names[0]))

    def get_data(self, img: Volume) -> tuple[np.ndarray, dict]:
        """Voxels ``(i, j, k)`` and geometry only; no header value of the series is passed on."""
        array = np.asarray(img.array)
        if array.ndim != 3:
            raise ValueError(f"{img.source}: expected a 3D series, got shape {array.shape}")
        meta = {
            MetaKeys.AFFINE: img.affine.copy(),
            MetaKeys.ORIGINAL_AFFINE: img.affine.copy(),
            MetaKeys.SPATIAL_SHAPE: np.asarray(array.shape),
            MetaKeys.SPACE: SpaceKeys.RAS,
            MetaKeys.ORIGINAL_CHANNEL_DIM: float("nan"),
        }
        return array, meta


def header_grid(path: Path) -> tuple[tuple[int, int, int], np.ndarray]:
    """Shape and RAS affine of the DICOM series in directory ``path`` (reads the series)."""
    from medunet.io.dicom import read_dicom_series

    volume = read_dicom_series(path)
    return volume.shape[:3], volume.affine  # type: ignore[return-value]
