"""Grid bookkeeping for inference: source grid -> RAS grid -> resampled grid, and back exactly.

The forward path mirrors MONAI's ``Orientationd(axcodes="RAS")`` followed by ``Spacingd(pixdim=...)``:

* reorientation picks, for each voxel axis, the closest RAS axis (``nibabel.io_orientation``, which is
  what MONAI uses) and applies it as a transpose plus flips -- no interpolation, so it inverts exactly;
* resampling keeps the (possibly oblique) direction and scales each axis separately, mapping resampled
  index ``j`` to RAS-grid index ``j * new_spacing / old_spacing`` with the first voxel fixed (MONAI's
  ``Spacing`` with ``scale_extent=False``). It is separable, so it runs as three 1D linear passes.

Going back, the argmax label map is sampled by nearest neighbour at ``i * old / new`` (what
``Invertd`` does for a ``nearest`` key) and the transpose/flips are undone, so the result sits on the
source grid bit for bit: same shape, same affine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import nibabel as nib
import numpy as np
import torch


@dataclass(frozen=True)
class GridMap:
    """How a source grid maps onto the RAS grid and the resampled (network) grid.

    ``perm[k]`` is the source axis that becomes RAS-grid axis ``k``; ``flip[k]`` says whether that axis
    is reversed after the transpose. ``scale[k]`` converts a resampled index into a RAS-grid index.
    """

    source_shape: tuple[int, int, int]
    source_affine: np.ndarray
    perm: tuple[int, int, int]
    flip: tuple[bool, bool, bool]
    ras_shape: tuple[int, int, int]
    ras_affine: np.ndarray
    resampled_shape: tuple[int, int, int]
    resampled_affine: np.ndarray
    scale: tuple[float, float, float]

    @property
    def identity_orientation(self) -> bool:
        return self.perm == (0, 1, 2) and not any(self.flip)


def plan_grid(shape: Sequence[int], affine: np.ndarray, target_spacing: Sequence[float] | None) -> GridMap:
    """Compute the RAS and resampled grids for a volume of ``shape`` on ``affine``.

    ``target_spacing=None`` keeps the RAS grid as it is (no resampling).
    """
    shape3 = tuple(int(s) for s in shape[:3])
    affine = np.asarray(affine, dtype=np.float64)
    ornt = nib.orientations.io_orientation(affine)  # per source axis: (target axis, +1/-1)
    perm = [0, 0, 0]
    flip = [False, False, False]
    for src_axis, (dst_axis, direction) in enumerate(ornt):
        perm[int(dst_axis)] = src_axis
        flip[int(dst_axis)] = bool(direction < 0)
    ras_affine = affine @ nib.orientations.inv_ornt_aff(ornt, shape3)
    ras_shape = tuple(shape3[p] for p in perm)

    ras_spacing = np.linalg.norm(ras_affine[:3, :3], axis=0)
    if target_spacing is None:
        new_spacing = ras_spacing
    else:
        new_spacing = np.asarray([float(s) for s in target_spacing], dtype=np.float64)
    scale = new_spacing / ras_spacing
    # MONAI compute_shape_offset(scale_extent=False): round(extent / new + 1), origin unchanged.
    resampled_shape = tuple(
        max(1, int(np.round((n - 1) / s + 1.0))) for n, s in zip(ras_shape, scale, strict=True)
    )
    resampled_affine = ras_affine.copy()
    resampled_affine[:3, :3] = ras_affine[:3, :3] * scale
    return GridMap(
        source_shape=shape3,  # type: ignore[arg-type]
        source_affine=affine,
        perm=tuple(perm),  # type: ignore[arg-type]
        flip=tuple(flip),  # type: ignore[arg-type]
        ras_shape=ras_shape,  # type: ignore[arg-type]
        ras_affine=ras_affine,
        resampled_shape=resampled_shape,  # type: ignore[arg-type]
        resampled_affine=resampled_affine,
        scale=tuple(float(s) for s in scale),  # type: ignore[arg-type]
    )


def to_ras(t: torch.Tensor, grid: GridMap) -> torch.Tensor:
    """Reorient ``t`` of shape ``(..., X, Y, Z)`` in source order to the RAS grid (transpose + flips)."""
    lead = t.ndim - 3
    if grid.perm != (0, 1, 2):
        t = t.permute(*range(lead), *(lead + p for p in grid.perm))
    dims = [lead + k for k in range(3) if grid.flip[k]]
    return t.flip(dims) if dims else t


def from_ras(t: torch.Tensor, grid: GridMap) -> torch.Tensor:
    """Undo :func:`to_ras`: flips first, then the inverse transpose."""
    lead = t.ndim - 3
    dims = [lead + k for k in range(3) if grid.flip[k]]
    if dims:
        t = t.flip(dims)
    if grid.perm != (0, 1, 2):
        inverse = np.argsort(grid.perm)
        t = t.permute(*range(lead), *(lead + int(p) for p in inverse))
    return t


def _positions(n_out: int, step: float, device: torch.device) -> torch.Tensor:
    return torch.arange(n_out, dtype=torch.float64, device=device) * step


def _take(t: torch.Tensor, axis: int, idx: torch.Tensor) -> torch.Tensor:
    """``index_select`` along ``axis``; on CPU through ``numpy.take``, which is far faster for inner axes."""
    if t.device.type == "cpu" and t.dtype != torch.bfloat16:
        return torch.from_numpy(np.take(t.numpy(), idx.numpy(), axis=axis))
    return t.index_select(axis, idx)


def _linear_axis(t: torch.Tensor, axis: int, n_out: int, step: float) -> torch.Tensor:
    """Linear interpolation along ``axis`` at positions ``j * step`` (border clamp, like MONAI)."""
    n_in = t.shape[axis]
    if n_out == n_in and abs(step - 1.0) < 1e-12:
        return t
    pos = _positions(n_out, step, t.device).clamp_(0, n_in - 1)
    i0 = pos.floor().long()
    i1 = (i0 + 1).clamp_(max=n_in - 1)
    w_shape = [1] * t.ndim
    w_shape[axis] = n_out
    w = (pos - i0).to(t.dtype).view(w_shape)
    return torch.lerp(_take(t, axis, i0), _take(t, axis, i1), w)


def _nearest_axis(t: torch.Tensor, axis: int, n_out: int, step: float) -> torch.Tensor:
    """Nearest-neighbour sampling along ``axis`` at ``j * step`` (round half to even, like grid_sample)."""
    n_in = t.shape[axis]
    if n_out == n_in and abs(step - 1.0) < 1e-12:
        return t
    idx = torch.round(_positions(n_out, step, t.device)).clamp_(0, n_in - 1).long()
    return _take(t, axis, idx)


def resample_to_network(t: torch.Tensor, grid: GridMap) -> torch.Tensor:
    """Linear resampling of ``(..., X, Y, Z)`` on the RAS grid to the resampled grid (separable)."""
    lead = t.ndim - 3
    for k in range(3):
        t = _linear_axis(t, lead + k, grid.resampled_shape[k], grid.scale[k])
    return t


def resample_to_ras(t: torch.Tensor, grid: GridMap, *, mode: str = "nearest") -> torch.Tensor:
    """Bring ``(..., X', Y', Z')`` from the resampled grid back to the RAS grid.

    ``mode="nearest"`` is used for label maps (and the uncertainty that goes with them);
    ``"linear"`` for probabilities.
    """
    lead = t.ndim - 3
    fn = _nearest_axis if mode == "nearest" else _linear_axis
    for k in range(3):
        t = fn(t, lead + k, grid.ras_shape[k], 1.0 / grid.scale[k])
    return t
