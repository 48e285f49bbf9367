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

import math
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


Box = tuple[tuple[int, int], tuple[int, int], tuple[int, int]]
"""Half-open index ranges ``((x0, x1), (y0, y1), (z0, z1))`` on the resampled (network) grid."""

_CHUNK_VOXELS = 1 << 22  # elements per slab of a resampling pass: bounds the float temporaries


def _lerp_axis_np(a: np.ndarray, axis: int, i0: np.ndarray, i1: np.ndarray, w: np.ndarray) -> np.ndarray:
    """``a[i0] + w * (a[i1] - a[i0])`` along ``axis`` in float32, slab by slab along another axis.

    ``a`` may be any dtype and any (strided, flipped) view; the gathers run on the compact source dtype
    and only the slab being interpolated exists in float32 at a time.
    """
    out_shape = list(a.shape)
    out_shape[axis] = len(i0)
    out = np.empty(out_shape, dtype=np.float32)
    chunk_axis = 1 if axis != 1 else 2
    if a.ndim <= chunk_axis:
        chunk_axis = 0
    per = max(1, math.prod(out_shape) // max(out_shape[chunk_axis], 1))
    step = max(1, _CHUNK_VOXELS // per)
    w_shape = [1] * a.ndim
    w_shape[axis] = len(w)
    wv = w.reshape(w_shape)
    exact = bool(np.all(w == 0))
    for s in range(0, a.shape[chunk_axis], step):
        sl = [slice(None)] * a.ndim
        sl[chunk_axis] = slice(s, s + step)
        src = a[tuple(sl)]
        dst = out[tuple(sl)]
        dst[...] = np.take(src, i0, axis=axis)
        if not exact:
            hi = np.take(src, i1, axis=axis).astype(np.float32)
            hi -= dst
            hi *= wv
            dst += hi
    return out


def source_to_network(array: np.ndarray, grid: GridMap, box: Box | None = None) -> np.ndarray:
    """Source array ``(X, Y, Z, C)`` (any dtype, any memory order) -> ``(C, X', Y', Z')`` float32, C-order.

    Reorientation and linear resampling in one go (what :func:`to_ras` + :func:`resample_to_network`
    compute, to float rounding): the spatial axes are visited in memory order, outermost first, so the
    gathers copy whole planes and rows and the inner-axis gather runs on already shrunk data; flips of
    resampled axes are folded into the gather indices, other flips are free strided views; only the
    resampled values are ever float32 (slab by slab); one final permuted copy gives the RAS (network) axis order.
    ``box`` restricts the output to that part of the resampled grid (and so is all that is computed).
    """
    if box is None:
        box = tuple((0, n) for n in grid.resampled_shape)  # type: ignore[assignment]
    a = np.moveaxis(array, 3, 0)  # (C, X, Y, Z) view
    order = sorted(range(3), key=lambda ax: -abs(a.strides[1 + ax]))  # source axes, outermost first
    ras_of = {grid.perm[k]: k for k in range(3)}

    def shrink(ax: int) -> float:
        k = ras_of[ax]
        return (box[k][1] - box[k][0]) / grid.ras_shape[k]  # type: ignore[index]

    # The two outer axes gather whole rows or planes either way: the one that shrinks more goes first
    # (smaller float32 intermediate); the inner axis always goes last, on shrunk data.
    if shrink(order[1]) < shrink(order[0]):
        order[0], order[1] = order[1], order[0]
    cur = a.transpose(0, *(1 + ax for ax in order))
    for pos, ax in enumerate(order):
        k = ras_of[ax]
        lo, hi = box[k]  # type: ignore[index]
        n_in = grid.ras_shape[k]
        axis = 1 + pos
        if lo == 0 and hi == n_in and abs(grid.scale[k] - 1.0) < 1e-12:
            if grid.flip[k]:
                cur = np.flip(cur, axis)
            continue
        p = np.clip(np.arange(lo, hi, dtype=np.float64) * grid.scale[k], 0, n_in - 1)
        i0 = np.floor(p).astype(np.intp)
        i1 = np.minimum(i0 + 1, n_in - 1)
        w = (p - i0).astype(np.float32)
        if grid.flip[k]:
            i0, i1 = n_in - 1 - i0, n_in - 1 - i1
        cur = _lerp_axis_np(cur, axis, i0, i1, w)
    to_ras_order = [1 + order.index(grid.perm[k]) for k in range(3)]
    view = cur.transpose(0, *to_ras_order)
    out = np.empty(view.shape, dtype=np.float32)
    np.copyto(out, view, casting="unsafe")
    return out


def foreground_box(
    array: np.ndarray,
    grid: GridMap,
    *,
    threshold: float | None,
    margin: int,
    min_fraction: float = 5e-4,
    stride: int = 2,
) -> Box | None:
    """Bounding box on the resampled grid of the voxels above ``threshold`` (``None``: non-zero voxels).

    Computed on a ``stride``-subsampled source array; slices (along each axis) holding fewer than
    ``min_fraction`` of their voxels (and at least 2) count as empty -- a cheap clean against stray noise.
    ``margin`` resampled voxels are added on every side. ``None`` when nothing is foreground.
    """
    sub = array[::stride, ::stride, ::stride]
    mask = (sub > threshold) if threshold is not None else (sub != 0)
    if mask.ndim == 4:
        mask = mask.any(axis=3)
    src_range: list[tuple[int, int]] = []
    for ax in range(3):
        others = tuple(o for o in range(3) if o != ax)
        counts = mask.sum(axis=others)
        area = math.prod(mask.shape[o] for o in others)
        keep = np.flatnonzero(counts >= max(2, min_fraction * area))
        if keep.size == 0:
            return None
        lo = int(keep[0]) * stride
        hi = min(int(keep[-1]) * stride + stride - 1, grid.source_shape[ax] - 1)  # inclusive
        src_range.append((lo, hi))
    box = []
    for k in range(3):
        ax = grid.perm[k]
        lo, hi = src_range[ax]
        n = grid.source_shape[ax]
        if grid.flip[k]:
            lo, hi = n - 1 - hi, n - 1 - lo
        s = grid.scale[k]
        j_lo = math.floor(lo / s) - margin
        j_hi = math.ceil(hi / s) + margin + 1
        box.append((max(0, j_lo), min(grid.resampled_shape[k], j_hi)))
    return tuple(box)  # type: ignore[return-value]
