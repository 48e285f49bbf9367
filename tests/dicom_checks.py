"""Independent checks of DICOM objects for tests: dciodvfy, and an even-odd RTSTRUCT rasteriser.

Nothing here uses medunet: the rasteriser places contour points with its own reading of the source
headers (ImagePositionPatient, ImageOrientationPatient, PixelSpacing), so a writer that confused LPS and
RAS, rows and columns, or slices would fail against it.
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pydicom
import pytest
from matplotlib.path import Path as PolygonPath

DCIODVFY = shutil.which("dciodvfy")
requires_dciodvfy = pytest.mark.skipif(
    DCIODVFY is None,
    reason="dciodvfy not installed (Debian package dicom3tools; .ci/run installs it where apt-get exists)",
)


def dciodvfy_output(path: str | Path) -> str:
    """Everything ``dciodvfy`` prints about ``path`` (it reports on stderr)."""
    if DCIODVFY is None:
        pytest.skip("dciodvfy not installed (Debian package dicom3tools)")
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=120, check=False)
    return proc.stdout + proc.stderr


def dciodvfy_errors(path: str | Path) -> list[str]:
    """The lines of ``dciodvfy``'s report on ``path`` that contain ``Error`` (warnings are allowed)."""
    return [line for line in dciodvfy_output(path).splitlines() if "Error" in line]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    total = int(a.sum()) + int(b.sum())
    return 1.0 if total == 0 else 2.0 * int((a & b).sum()) / total


def _plane(ds: pydicom.Dataset) -> tuple[np.ndarray, np.ndarray, np.ndarray, float, float]:
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    row_spacing, col_spacing = (float(v) for v in ds.PixelSpacing)
    return ipp, iop[:3], iop[3:], row_spacing, col_spacing


def rasterise_rtstruct(
    rtstruct: pydicom.Dataset, sources: Mapping[str, pydicom.Dataset], order: Sequence[str]
) -> dict[str, np.ndarray]:
    """Each ROI's mask on the source grid, ``(len(order), Rows, Columns)``, by the even-odd rule.

    ``sources`` maps SOPInstanceUID -> source header; ``order`` gives the slice order of the output. A
    pixel is inside when its centre lies inside an odd number of the slice's contours. Every contour must
    reference one source image and lie in that image's plane (checked: |distance| < 1e-3 mm).
    """
    first = sources[order[0]]
    rows, cols = int(first.Rows), int(first.Columns)
    r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
    centres = np.column_stack([c.ravel(), r.ravel()]).astype(np.float64)  # (x = col, y = row)
    names = {int(roi.ROINumber): str(roi.ROIName) for roi in rtstruct.StructureSetROISequence}
    out = {name: np.zeros((len(order), rows, cols), bool) for name in names.values()}
    for roi_contour in rtstruct.ROIContourSequence:
        name = names[int(roi_contour.ReferencedROINumber)]
        for contour in getattr(roi_contour, "ContourSequence", []):
            assert contour.ContourGeometricType == "CLOSED_PLANAR"
            (ref,) = contour.ContourImageSequence
            uid = str(ref.ReferencedSOPInstanceUID)
            assert uid in sources, "contour references an image that is not in the source series"
            ipp, x_dir, y_dir, row_spacing, col_spacing = _plane(sources[uid])
            points = np.array([float(v) for v in contour.ContourData]).reshape(-1, 3)
            assert len(points) == int(contour.NumberOfContourPoints)
            offset = points - ipp
            normal = np.cross(x_dir, y_dir)
            assert np.abs(offset @ normal).max() < 1e-3, "contour does not lie in its image's plane"
            polygon = np.column_stack([offset @ x_dir / col_spacing, offset @ y_dir / row_spacing])
            inside = PolygonPath(polygon, closed=False).contains_points(centres).reshape(rows, cols)
            k = list(order).index(uid)
            out[name][k] ^= inside
    return out
