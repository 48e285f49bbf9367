"""A CT-sized synthetic volume for benchmarks: 512x512x300 int16 HU, stored as ``.nii.gz`` in a cache dir.

Not medical data: a smooth elliptic "body" (soft tissue ~40 HU) in air (-1000 HU) with two "lungs"
(-850 HU), a "spine" and "ribs"-like ring (~700 HU), a few organ-like blobs (30-80 HU) and mild
integer noise (so gzip sees realistic entropy). Generated slice by slice in a few seconds and cached by
its parameters; pass ``orientation`` to store the voxel axes e.g. as ``"LPS"`` or ``"PLI"`` so that a
reader must reorient. Images live under ``runs/`` (git-ignored) and are never committed.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from medunet.io.atomic import atomic_path
from medunet.io.fast_gzip import compress

logger = logging.getLogger(__name__)

DEFAULT_CACHE = Path(__file__).resolve().parents[1] / "runs" / "benchmarks" / "cache"
CT_SHAPE = (512, 512, 300)
CT_SPACING = (0.9, 0.9, 1.5)


def phantom_ct(shape: Sequence[int] = CT_SHAPE, seed: int = 0) -> np.ndarray:
    """int16 HU array whose voxel axes point along R, A and S (a RAS-ordered volume)."""
    nx, ny, nz = (int(s) for s in shape)
    rng = np.random.default_rng(seed)
    x = np.linspace(-1.0, 1.0, nx, dtype=np.float32)[:, None]
    y = np.linspace(-1.0, 1.0, ny, dtype=np.float32)[None, :]
    out = np.empty((nx, ny, nz), dtype=np.int16)
    blobs = [  # (cx, cy, cz, rx, ry, rz, HU)
        (0.25, 0.05, 0.45, 0.22, 0.18, 0.20, 60.0),  # "liver"
        (-0.35, 0.15, 0.40, 0.10, 0.12, 0.12, 45.0),  # "spleen"
        (0.20, 0.30, 0.30, 0.07, 0.07, 0.10, 30.0),  # "kidney" R
        (-0.20, 0.30, 0.30, 0.07, 0.07, 0.10, 30.0),  # "kidney" L
    ]
    for k in range(nz):
        z = -1.0 + 2.0 * k / max(nz - 1, 1)
        body_r = 0.85 + 0.05 * np.cos(3 * z)
        body = (x / body_r) ** 2 + (y / (0.65 * body_r)) ** 2 < 1.0
        sl = np.where(body, np.float32(40.0), np.float32(-1000.0))
        if z > 0.2:  # thorax: lungs
            for cx in (-0.4, 0.4):
                lung = ((x - cx) / 0.28) ** 2 + ((y + 0.05) / 0.38) ** 2 < 1.0
                sl = np.where(lung, np.float32(-850.0), sl)
        spine = (x / 0.07) ** 2 + ((y - 0.45) / 0.07) ** 2 < 1.0
        ring = np.abs(np.hypot(x / body_r, y / (0.65 * body_r)) - 0.9) < 0.03
        sl = np.where(spine | (ring & body), np.float32(700.0), sl)
        for cx, cy, cz, rx, ry, rz, hu in blobs:
            dz = (z - cz) / rz
            if abs(dz) < 1.0:
                m = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1.0 - dz * dz
                sl = np.where(m, np.float32(hu), sl)
        noise = rng.integers(-12, 13, size=(nx, ny), dtype=np.int16)
        out[..., k] = sl.astype(np.int16) + np.where(body, noise, 0).astype(np.int16)
    return out


#: Labels of :func:`phantom_labels` (the blobs of :func:`phantom_ct`; both kidneys are one label).
PHANTOM_LABELS = {0: "background", 1: "liver", 2: "spleen", 3: "kidneys"}


def phantom_labels(shape: Sequence[int] = CT_SHAPE) -> np.ndarray:
    """uint8 label map of :func:`phantom_ct`'s organ blobs on a grid of ``shape`` (same RAS geometry)."""
    nx, ny, nz = (int(s) for s in shape)
    x = np.linspace(-1.0, 1.0, nx, dtype=np.float32)[:, None]
    y = np.linspace(-1.0, 1.0, ny, dtype=np.float32)[None, :]
    out = np.zeros((nx, ny, nz), dtype=np.uint8)
    blobs = [(0.25, 0.05, 0.45, 0.22, 0.18, 0.20, 1), (-0.35, 0.15, 0.40, 0.10, 0.12, 0.12, 2)]
    blobs += [(0.20, 0.30, 0.30, 0.07, 0.07, 0.10, 3), (-0.20, 0.30, 0.30, 0.07, 0.07, 0.10, 3)]
    for k in range(nz):
        z = -1.0 + 2.0 * k / max(nz - 1, 1)
        for cx, cy, cz, rx, ry, rz, lab in blobs:
            dz = (z - cz) / rz
            if abs(dz) < 1.0:
                m = ((x - cx) / rx) ** 2 + ((y - cy) / ry) ** 2 < 1.0 - dz * dz
                out[..., k][m] = lab
    return out


def orient_affine(
    shape: Sequence[int], spacing: Sequence[float], orientation: str
) -> tuple[np.ndarray, tuple[int, int, int], tuple[bool, bool, bool]]:
    """Affine for storing a RAS array with voxel axes pointing along ``orientation`` (e.g. ``"LPS"``).

    Returns ``(affine, perm, flip)``: the stored array is ``ras.transpose(perm)`` then flipped where
    ``flip`` is True.
    """
    codes = {
        "R": (0, False),
        "L": (0, True),
        "A": (1, False),
        "P": (1, True),
        "S": (2, False),
        "I": (2, True),
    }
    perm, flip = zip(*(codes[c] for c in orientation.upper()), strict=True)
    if sorted(perm) != [0, 1, 2]:
        raise ValueError(f"bad orientation {orientation!r}")
    stored_shape = [int(shape[p]) for p in perm]
    affine = np.zeros((4, 4))
    affine[3, 3] = 1.0
    for i, (p, f) in enumerate(zip(perm, flip, strict=True)):
        affine[p, i] = -spacing[p] if f else spacing[p]
        # voxel 0 along a flipped axis sits at the far end, so the volume covers the same box
        affine[p, 3] += spacing[p] * (stored_shape[i] - 1) if f else 0.0
    affine[:3, 3] -= 0.5 * np.asarray(spacing) * (np.asarray(shape) - 1)  # centre the box on 0
    return affine, tuple(perm), tuple(flip)  # type: ignore[return-value]


def synthetic_ct_path(
    shape: Sequence[int] = CT_SHAPE,
    spacing: Sequence[float] = CT_SPACING,
    orientation: str = "LPS",
    *,
    cache_dir: str | Path = DEFAULT_CACHE,
    seed: int = 0,
) -> Path:
    """Path of the cached synthetic CT, generating it first when absent (a few seconds for 512^2x300)."""
    shape_t = tuple(int(s) for s in shape)
    name = "ct_{}_{}_{}_{}_s{}.nii.gz".format(
        "x".join(map(str, shape_t)), "x".join(f"{s:g}" for s in spacing), orientation.upper(), seed, 1
    )
    path = Path(cache_dir) / name
    if path.is_file():
        return path
    logger.info("generating synthetic CT %s", path)
    ras = phantom_ct(shape_t, seed)
    affine, perm, flip = orient_affine(shape_t, spacing, orientation)
    stored = ras.transpose(perm)
    stored = np.flip(stored, [i for i, f in enumerate(flip) if f]) if any(flip) else stored
    img = nib.Nifti1Image(np.ascontiguousarray(stored), affine)
    img.set_qform(affine, code=1)
    img.set_sform(affine, code=1)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        Path(tmp).write_bytes(compress(img.to_bytes(), level=1))
    return path
