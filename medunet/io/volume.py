"""``Volume``: a voxel array plus the affine that places it in patient space.

Geometry is derived from the affine, never stored twice (the TorchIO habit): spacing, origin,
direction and orientation codes are properties. The affine maps voxel indices to RAS+ millimetres
(the NIfTI/nibabel convention); ITK/SimpleITK and DICOM use LPS+, and the conversion happens in
exactly one place, :func:`ras_affine_to_lps` / :func:`lps_to_ras_affine`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import nibabel as nib
import numpy as np

# Flips x and y: RAS+ <-> LPS+ (its own inverse).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


@dataclass
class Volume:
    """A 3D image (optionally with a trailing channel axis) on a grid given by ``affine``.

    ``array`` is in storage (voxel index) order ``(i, j, k)``; ``affine`` maps ``(i, j, k, 1)`` to RAS
    millimetres. ``source`` names where it came from (a file or series directory) for messages.
    ``meta`` carries non-identifying facts only (modality, series description) -- never PHI.
    """

    array: np.ndarray
    affine: np.ndarray
    source: str | None = None
    meta: dict[str, object] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.affine = np.asarray(self.affine, dtype=np.float64)
        if self.affine.shape != (4, 4):
            raise ValueError(f"affine must be 4x4, got {self.affine.shape}")

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.array.shape[:3])

    @property
    def spacing(self) -> tuple[float, float, float]:
        """Voxel size in mm along each storage axis."""
        return tuple(float(s) for s in np.linalg.norm(self.affine[:3, :3], axis=0))  # type: ignore[return-value]

    @property
    def origin_ras(self) -> np.ndarray:
        return self.affine[:3, 3].copy()

    @property
    def direction_ras(self) -> np.ndarray:
        """Unit column vectors of the voxel axes in RAS."""
        return self.affine[:3, :3] / np.asarray(self.spacing)

    @property
    def orientation(self) -> str:
        """Axis codes such as ``"RAS"``, ``"LPS"`` or ``"PLI"`` (where each voxel axis points)."""
        return "".join(nib.orientations.aff2axcodes(self.affine))

    def same_grid(self, other: Volume, atol_mm: float = 1e-3) -> bool:
        """True when shapes match and affines agree within ``atol_mm`` (corners move less than that)."""
        return self.shape == other.shape and grids_match(self.affine, other.affine, self.shape, atol_mm)


def grids_match(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...], atol_mm: float = 1e-3) -> bool:
    """Whether two affines place every corner of a grid of ``shape`` within ``atol_mm`` of each other."""
    return max_corner_distance(a, b, shape) <= atol_mm


def max_corner_distance(a: np.ndarray, b: np.ndarray, shape: tuple[int, ...]) -> float:
    """Largest distance (mm) between where two affines put the 8 corners of a grid of ``shape``."""
    corners = np.array(
        [[i, j, k, 1.0] for i in (0, shape[0] - 1) for j in (0, shape[1] - 1) for k in (0, shape[2] - 1)]
    ).T
    return float(np.max(np.linalg.norm((np.asarray(a) @ corners - np.asarray(b) @ corners)[:3], axis=0)))


def ras_affine_to_lps(affine: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split a RAS affine into ITK's ``(spacing, origin, direction)`` in LPS.

    ``direction`` is the 3x3 matrix whose columns are the voxel axes in LPS (ITK's convention).
    """
    lps = RAS_TO_LPS @ np.asarray(affine, dtype=np.float64)
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    return spacing, lps[:3, 3].copy(), lps[:3, :3] / spacing


def lps_to_ras_affine(spacing: np.ndarray, origin: np.ndarray, direction: np.ndarray) -> np.ndarray:
    """Build a RAS affine from ITK's LPS ``spacing``, ``origin`` and 3x3 ``direction`` (columns = axes)."""
    lps = np.eye(4)
    lps[:3, :3] = np.asarray(direction, dtype=np.float64).reshape(3, 3) * np.asarray(
        spacing, dtype=np.float64
    )
    lps[:3, 3] = np.asarray(origin, dtype=np.float64)
    return RAS_TO_LPS @ lps
