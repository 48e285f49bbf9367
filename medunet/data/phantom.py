"""Anatomy model and renderer behind the synthetic abdominal CT/MR phantoms.

The anatomy lives in a *reference frame* in real-size millimetres (x towards the patient's Right,
y Anterior, z Superior, origin near L1/L2 at the spine's midline). A case is a random draw of that
anatomy (organ sizes, positions, rotations and smooth shape deformations), a random patient pose
(rotation, table position) and a random scanner grid (spacing, slice count, orientation). The anatomy is
scaled so that the body fills 80-90% of the in-plane field of view, which lets a 160-voxel grid hold a
whole abdominal cross-section; the cranio-caudal axis is scaled ~1.25x less than in-plane so that thick
slices still cut each organ several times.

Rendering is a painter's algorithm on soft occupancies: each structure is a signed distance function
(SDF, negative inside, roughly in mm), its occupancy is a one-voxel linear ramp across the surface
(in-plane partial volume) and thick slices are the mean of ~1 mm sub-slices (through-plane partial
volume). Labels come from the same painted fractions (the structure covering most of a voxel wins), so
they lie on exactly the image grid.

This module knows nothing about files; :mod:`medunet.data.synthetic` turns its output into volumes and
datasets.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
from scipy import ndimage

Modality = Literal["CT", "MR"]

SYNTHETIC_LABELS: dict[int, str] = {
    0: "background",
    1: "liver",
    2: "spleen",
    3: "left_kidney",
    4: "right_kidney",
    5: "aorta",
}
LIVER, SPLEEN, LEFT_KIDNEY, RIGHT_KIDNEY, AORTA = 1, 2, 3, 4, 5

#: Storage orientations a case is drawn from (nibabel axis codes: where each voxel axis points).
ORIENTATIONS: tuple[str, ...] = ("RAS", "LPS", "LAS", "RPI", "LPI", "PLS", "SLP", "ILA")
#: Slice spacings (mm) and how often each is drawn.
SLICE_SPACINGS: tuple[float, ...] = (1.0, 1.25, 1.5, 2.0, 2.5, 3.0, 5.0)
SLICE_SPACING_WEIGHTS: tuple[float, ...] = (0.10, 0.15, 0.20, 0.20, 0.15, 0.10, 0.10)

# Tissue appearance: (low, high) of a per-case uniform draw. CT in HU; MR in arbitrary units of a
# T1-weighted, contrast-enhanced look (fat bright, fluid and cortical bone dark).
TISSUES: dict[str, dict[str, tuple[float, float]]] = {
    "air": {"CT": (-1000, -1000), "MR": (0, 0)},
    "lung": {"CT": (-930, -905), "MR": (15, 30)},
    "gas": {"CT": (-950, -850), "MR": (0, 10)},
    "subcut_fat": {"CT": (-115, -90), "MR": (820, 920)},
    "visceral_fat": {"CT": (-105, -80), "MR": (760, 880)},
    "muscle": {"CT": (40, 50), "MR": (260, 320)},
    "soft_tissue": {"CT": (35, 50), "MR": (280, 340)},
    "liver": {"CT": (54, 66), "MR": (430, 500)},
    "spleen": {"CT": (44, 52), "MR": (340, 410)},
    "kidney_cortex": {"CT": (185, 230), "MR": (560, 640)},
    "kidney_medulla": {"CT": (165, 190), "MR": (440, 500)},
    "aorta": {"CT": (170, 240), "MR": (650, 760)},
    "ivc": {"CT": (95, 140), "MR": (480, 560)},
    "bone_cancellous": {"CT": (320, 400), "MR": (560, 650)},
    "bone_cortical": {"CT": (900, 1200), "MR": (30, 60)},
    "disc": {"CT": (70, 95), "MR": (220, 280)},
    "csf": {"CT": (5, 15), "MR": (80, 120)},
    "bowel_wall": {"CT": (30, 45), "MR": (330, 380)},
    "bowel_content": {"CT": (0, 30), "MR": (120, 200)},
    "fluid": {"CT": (0, 15), "MR": (80, 130)},
    "heart": {"CT": (40, 55), "MR": (290, 340)},
}


# --------------------------------------------------------------------------------------------------
# Shapes
# --------------------------------------------------------------------------------------------------


def rotation(rz: float = 0.0, ry: float = 0.0, rx: float = 0.0) -> np.ndarray:
    """Rotation matrix (degrees) ``Rz @ Ry @ Rx``; its columns are the rotated frame's axes."""
    a, b, c = (math.radians(v) for v in (rz, ry, rx))
    rot_z = np.array([[math.cos(a), -math.sin(a), 0], [math.sin(a), math.cos(a), 0], [0, 0, 1]])
    rot_y = np.array([[math.cos(b), 0, math.sin(b)], [0, 1, 0], [-math.sin(b), 0, math.cos(b)]])
    rot_x = np.array([[1, 0, 0], [0, math.cos(c), -math.sin(c)], [0, math.sin(c), math.cos(c)]])
    return rot_z @ rot_y @ rot_x


def smooth_union(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum of two SDFs: a union whose crease is rounded over ``k`` mm."""
    h = np.clip(0.5 + 0.5 * (b - a) / k, 0.0, 1.0)
    return b + (a - b) * h - k * h * (1.0 - h)


def smooth_subtract(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """``a`` with ``b`` carved out, the cut edge rounded over ``k`` mm."""
    return -smooth_union(-a, b, k)


@dataclass(frozen=True)
class Ellipsoid:
    """An ellipsoid in the reference frame, deformed by a few smooth sinusoidal displacement modes.

    ``rotation`` columns are the ellipsoid's own axes; ``modes`` rows are ``(ax, ay, az, wx, wy, wz,
    phase)``: a displacement ``a * sin(w . q + phase)`` in radius-normalised coordinates ``q``, which is
    what makes organs blob-like rather than ellipsoidal.
    """

    center: np.ndarray
    radii: np.ndarray
    rot: np.ndarray = field(default_factory=lambda: np.eye(3))
    modes: np.ndarray = field(default_factory=lambda: np.zeros((0, 7)))

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Approximate signed distance (mm, negative inside) at reference-frame points."""
        d = (x - np.float32(self.center[0]), y - np.float32(self.center[1]), z - np.float32(self.center[2]))
        q = [
            (
                d[0] * np.float32(self.rot[0, a])
                + d[1] * np.float32(self.rot[1, a])
                + d[2] * np.float32(self.rot[2, a])
            )
            / np.float32(self.radii[a])
            for a in range(3)
        ]
        if len(self.modes):
            shifts = [np.zeros_like(q[0]) for _ in range(3)]
            for ax, ay, az, wx, wy, wz, phase in self.modes:
                s = np.sin(
                    q[0] * np.float32(wx) + q[1] * np.float32(wy) + q[2] * np.float32(wz) + np.float32(phase)
                )
                shifts[0] += np.float32(ax) * s
                shifts[1] += np.float32(ay) * s
                shifts[2] += np.float32(az) * s
            q = [q[a] + shifts[a] for a in range(3)]
        k0 = np.sqrt(q[0] * q[0] + q[1] * q[1] + q[2] * q[2])
        k1 = np.sqrt(sum((q[a] / np.float32(self.radii[a])) ** 2 for a in range(3)))
        return k0 * (k0 - 1.0) / np.maximum(k1, np.float32(1e-6))

    def bounds(self, margin: float = 1.35) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned box (reference frame) that holds the deformed ellipsoid."""
        half = np.sqrt(((self.rot * self.radii[None, :]) ** 2).sum(axis=1)) * margin
        return self.center - half, self.center + half


@dataclass(frozen=True)
class Organ:
    """Smooth union of ellipsoid ``parts`` minus ``cuts``: non-ellipsoidal, lobed organ shapes."""

    parts: tuple[Ellipsoid, ...]
    cuts: tuple[Ellipsoid, ...] = ()
    blend: float = 12.0

    def sdf(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        f = self.parts[0].sdf(x, y, z)
        for part in self.parts[1:]:
            f = smooth_union(f, part.sdf(x, y, z), self.blend)
        for cut in self.cuts:
            f = smooth_subtract(f, cut.sdf(x, y, z), self.blend * 0.5)
        return f

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        boxes = [p.bounds() for p in self.parts]
        return np.min([b[0] for b in boxes], axis=0), np.max([b[1] for b in boxes], axis=0)


# --------------------------------------------------------------------------------------------------
# Random case description
# --------------------------------------------------------------------------------------------------


@dataclass
class Anatomy:
    """One random patient in the reference frame (real-size mm)."""

    cavity_x: float  # abdominal cavity half-width
    cavity_y_ant: float  # cavity half-depth, anterior / posterior
    cavity_y_post: float
    wall_table: np.ndarray  # (angles, 3): cavity radius, muscle thickness, fat thickness per angle
    waist: tuple[float, float, float]  # z-profile of the body radius: amplitude, wavelength, phase
    dome: tuple[float, float, float, float]  # right/left diaphragm dome peak z, curvature, peak y
    organs: dict[str, Organ]
    aorta: tuple[float, ...]  # x0, y0, radius, wiggle amplitude, wiggle wavelength, phase
    ivc: tuple[float, ...]
    spine_phase: float
    rib_phase: float
    z_range: tuple[float, float]  # cranio-caudal extent the scan covers
    half_width: float  # body half-width (drives the scale to the field of view)


def _modes(rng: np.random.Generator, n: int, amplitude: float) -> np.ndarray:
    """``n`` random low-frequency displacement modes (see :class:`Ellipsoid`)."""
    direction = rng.normal(size=(n, 3))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    freq = rng.uniform(1.4, 2.6, size=(n, 1))
    amp = rng.normal(size=(n, 3)) * amplitude / math.sqrt(3)
    phase = rng.uniform(0, 2 * math.pi, size=(n, 1))
    return np.hstack([amp, direction * freq, phase])


def _blob(
    rng: np.random.Generator,
    center: tuple[float, float, float],
    radii: tuple[float, float, float],
    *,
    scale: np.ndarray,
    jitter: float = 6.0,
    size_sd: float = 0.08,
    rot: tuple[float, float, float] = (0.0, 0.0, 0.0),
    rot_sd: float = 8.0,
    deform: float = 0.14,
) -> Ellipsoid:
    c = np.asarray(center, dtype=float) * scale + rng.normal(scale=jitter, size=3)
    r = (
        np.asarray(radii, dtype=float)
        * rng.uniform(1 - 2 * size_sd, 1 + 2 * size_sd)
        * rng.normal(1, size_sd / 2, 3)
    )
    angles = np.asarray(rot, dtype=float) + rng.normal(scale=rot_sd, size=3)
    return Ellipsoid(c, r, rotation(*angles), _modes(rng, 3, deform))


def sample_anatomy(rng: np.random.Generator) -> Anatomy:
    """Draw one patient: body habitus, organ shapes/positions, vessels, spine and diaphragm."""
    cx, cy_ant = rng.uniform(112, 130), rng.uniform(80, 94)
    cy_post = cy_ant * rng.uniform(0.88, 0.96)
    # Positions below are for a reference cavity of half-size 122 x 86 mm and follow the patient's size.
    scale = np.array([cx / 122.0, (cy_ant + cy_post) / (2 * 86.0), 1.0])

    angles = np.linspace(-math.pi, math.pi, 721)
    cos, sin = np.cos(angles), np.sin(angles)
    p = rng.uniform(2.1, 2.6)
    b = np.where(sin >= 0, cy_ant, cy_post)
    r_cav = (np.abs(cos / cx) ** p + np.abs(sin / b) ** p) ** (-1 / p)
    for n in (2, 3, 4, 5):
        r_cav *= 1 + rng.normal(0, 0.012) * np.cos(n * angles + rng.uniform(0, 2 * math.pi))
    anterior = (1 + sin) / 2
    t_mus = rng.uniform(8, 13) * (1 + 0.35 * np.abs(cos))
    fat0 = rng.uniform(10, 32)
    t_fat = fat0 * (0.6 + 0.5 * anterior + 0.35 * cos**2)
    wall = np.stack([r_cav, t_mus, t_fat], axis=1)
    half_width = float((r_cav + t_mus + t_fat)[[0, 360, 720]].max())

    dome = (rng.uniform(126, 142), rng.uniform(114, 130), rng.uniform(95, 130), rng.uniform(-12, 4))

    def blob(*args: object, **kwargs: object) -> Ellipsoid:
        return _blob(rng, *args, scale=scale, **kwargs)  # type: ignore[arg-type]

    liver = Organ(
        parts=(
            blob((62, -5, 78), (62, 72, 66), rot=(0, 0, 0)),
            blob((-18, 38, 80), (58, 34, 30), rot=(-10, 0, 0), deform=0.18),
            blob((78, 12, 28), (36, 48, 40), rot=(0, -12, 0), deform=0.18),
        ),
        cuts=(blob((40, 52, 30), (12, 14, 24), jitter=3, deform=0.05),),  # gallbladder fossa
        blend=rng.uniform(14, 22),
    )
    gallbladder = Organ(parts=(blob((40, 50, 30), (11, 12, 22), jitter=3, rot=(0, 15, 0), deform=0.08),))
    spleen_rot = (-35, 0, 10)
    spleen = Organ(
        parts=(blob((-84, -38, 76), (25, 56, 48), rot=spleen_rot, deform=0.12),),
        cuts=(
            Ellipsoid(
                np.array([-84 * scale[0] + 40, -38 * scale[1] + 8, 76.0]),
                np.array([22.0, 32.0, 32.0]),
                rotation(*spleen_rot),
            ),
        ),
        blend=10,
    )
    kidneys = {}
    right_z, left_z = rng.uniform(-25, -5), rng.uniform(-8, 12)
    for name, side, z in (("right_kidney", 1.0, right_z), ("left_kidney", -1.0, left_z)):
        main = blob((side * 70, -45, z), (24, 19, 50), rot=(side * -30, side * 12, 0), deform=0.09, jitter=4)
        hilum = Ellipsoid(
            main.center + main.rot @ np.array([-side * main.radii[0] * 1.05, 0, 0]),
            np.array([main.radii[0] * 0.5, main.radii[1] * 0.45, main.radii[2] * 0.35]),
            main.rot,
        )
        kidneys[name] = Organ(parts=(main,), cuts=(hilum,), blend=6)
    stomach = Organ(
        parts=(
            blob((-55, 30, 85), (44, 34, 50), rot=(25, 0, 20), deform=0.15),
            blob((-20, 45, 35), (30, 18, 22), rot=(-30, 0, 0), deform=0.1),
        ),
        blend=15,
    )
    heart = Organ(parts=(blob((-15, 30, 178), (66, 50, 56), rot=(-20, 0, 0), deform=0.06),))
    aorta = (
        -14 * scale[0] + rng.normal(0, 2),
        -9 + rng.normal(0, 2),
        rng.uniform(11.5, 14.0),
        rng.uniform(1, 5),
        rng.uniform(150, 300),
        rng.uniform(0, 2 * math.pi),
    )
    ivc = (
        24 * scale[0] + rng.normal(0, 2),
        -8 + rng.normal(0, 2),
        rng.uniform(11, 15),
        rng.uniform(1, 4),
        rng.uniform(150, 300),
        rng.uniform(0, 2 * math.pi),
    )
    return Anatomy(
        cavity_x=cx,
        cavity_y_ant=cy_ant,
        cavity_y_post=cy_post,
        wall_table=wall,
        waist=(rng.uniform(0.0, 0.06), rng.uniform(250, 450), rng.uniform(0, 2 * math.pi)),
        dome=dome,
        organs={
            "liver": liver,
            "gallbladder": gallbladder,
            "spleen": spleen,
            "stomach": stomach,
            "heart": heart,
            **kidneys,
        },
        aorta=aorta,
        ivc=ivc,
        spine_phase=rng.uniform(0, 32),
        rib_phase=rng.uniform(0, 36),
        z_range=(rng.uniform(-115, -90), rng.uniform(168, 192)),
        half_width=half_width,
    )


@dataclass
class ScanGeometry:
    """Where a case's grid lies: voxel size, slice count, orientation and pose of the patient in it."""

    size: int
    spacing_xy: float
    spacing_z: float
    n_slices: int
    orientation: str
    fill: float  # body width / field-of-view width
    scale_xy: float  # scanner mm per reference mm, in-plane
    scale_z: float  # scanner mm per reference mm, cranio-caudal
    patient_rotation: np.ndarray  # reference frame -> scanner RAS
    patient_origin: np.ndarray  # scanner RAS position of the reference-frame origin
    grid_origin: np.ndarray  # scanner RAS of voxel (0, 0, 0) of the canonical (RAS-ordered) grid


def sample_geometry(rng: np.random.Generator, anatomy: Anatomy, size: int) -> ScanGeometry:
    """Draw scanner spacing/orientation and patient pose, and scale the anatomy to the field of view."""
    spacing_xy = round(float(rng.uniform(0.6, 1.0)), 4)
    spacing_z = float(rng.choice(SLICE_SPACINGS, p=SLICE_SPACING_WEIGHTS))
    orientation = str(rng.choice(ORIENTATIONS))
    fill = float(rng.uniform(0.80, 0.90))
    fov = size * spacing_xy
    scale_xy = fill * fov / 2 / anatomy.half_width
    scale_z = scale_xy * float(rng.uniform(1.15, 1.35))
    z_lo, z_hi = anatomy.z_range
    n_slices = max(8, int(round((z_hi - z_lo) * scale_z / spacing_z)))
    rot = rotation(rng.uniform(-10, 10), rng.uniform(-3, 3), rng.uniform(-4, 4))
    slack = (1 - fill) * fov / 2
    patient_origin = np.array(
        [rng.uniform(-30, 30), rng.uniform(-60, 20), rng.uniform(-700, -150)], dtype=float
    )
    grid_center = patient_origin + np.array(
        [rng.uniform(-0.5, 0.5) * slack, rng.uniform(-0.5, 0.5) * slack, (z_lo + z_hi) / 2 * scale_z]
    )
    extent = np.array([(size - 1) * spacing_xy, (size - 1) * spacing_xy, (n_slices - 1) * spacing_z])
    return ScanGeometry(
        size=size,
        spacing_xy=spacing_xy,
        spacing_z=spacing_z,
        n_slices=n_slices,
        orientation=orientation,
        fill=fill,
        scale_xy=scale_xy,
        scale_z=scale_z,
        patient_rotation=rot,
        patient_origin=patient_origin,
        grid_origin=np.round(grid_center - extent / 2, 3),
    )


# --------------------------------------------------------------------------------------------------
# Rendering
# --------------------------------------------------------------------------------------------------


class _Canvas:
    """Values and per-label fractions on the super-sampled canonical grid, painted back to front."""

    def __init__(self, geom: ScanGeometry, sub: int, background: float) -> None:
        self.shape = (geom.size, geom.size, geom.n_slices * sub)
        step = np.array([geom.spacing_xy, geom.spacing_xy, geom.spacing_z / sub])
        origin = geom.grid_origin.copy()
        origin[2] -= (sub - 1) / 2 * step[2]
        inv_scale = np.diag([1 / geom.scale_xy, 1 / geom.scale_xy, 1 / geom.scale_z])
        # reference = inv_scale @ R^T @ (scanner - patient_origin); scanner = origin + step * index
        self.m = inv_scale @ geom.patient_rotation.T @ np.diag(step)
        self.b = inv_scale @ geom.patient_rotation.T @ (origin - geom.patient_origin)
        self.m_inv = np.linalg.inv(self.m)
        self.edge = np.float32(geom.scale_xy / geom.spacing_xy)  # voxels per reference mm
        self.value = np.full(self.shape, background, dtype=np.float32)
        self.frac = np.zeros((len(SYNTHETIC_LABELS) - 1, *self.shape), dtype=np.float32)
        self._labelled = False
        idx = [np.arange(n, dtype=np.float32) for n in self.shape]
        m = self.m.astype(np.float32)
        b = self.b.astype(np.float32)
        self.x, self.y, self.z = (
            (m[c, 0] * idx[0])[:, None, None]
            + (m[c, 1] * idx[1])[None, :, None]
            + (m[c, 2] * idx[2] + b[c])[None, None, :]
            for c in range(3)
        )
        self.everything = (slice(None), slice(None), slice(None))

    def box(self, lo: np.ndarray, hi: np.ndarray) -> tuple[slice, slice, slice] | None:
        """Index slices covering a reference-frame box, or None when it misses the grid."""
        corners = np.array(
            [[x, y, z] for x in (lo[0], hi[0]) for y in (lo[1], hi[1]) for z in (lo[2], hi[2])]
        )
        idx = (self.m_inv @ (corners - self.b).T).T
        start = np.maximum(np.floor(idx.min(axis=0)).astype(int) - 1, 0)
        stop = np.minimum(np.ceil(idx.max(axis=0)).astype(int) + 2, self.shape)
        if np.any(stop <= start):
            return None
        return tuple(slice(int(a), int(o)) for a, o in zip(start, stop, strict=True))  # type: ignore[return-value]

    def coords(self, sl: tuple[slice, slice, slice]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        return self.x[sl], self.y[sl], self.z[sl]

    def occupancy(self, f: np.ndarray) -> np.ndarray:
        """Soft inside-fraction of each voxel from an SDF in reference mm (one-voxel ramp)."""
        return np.clip(np.float32(0.5) - f * self.edge, 0.0, 1.0)

    def paint(
        self, sl: tuple[slice, slice, slice], f: np.ndarray, value: float | np.ndarray, label: int = 0
    ) -> None:
        """Cover the region ``f < 0`` (soft edged) of box ``sl`` with ``value``; track label fractions."""
        occ = self.occupancy(f)
        v = self.value[sl]
        v += occ * (value - v)
        if self._labelled:
            fr = self.frac[(slice(None), *sl)]
            fr *= 1.0 - occ
        if label:
            self.frac[(label - 1, *sl)] += occ
            self._labelled = True


class _AngleTable:
    """Linear interpolation of tables sampled over ``[-pi, pi]`` at fixed angles (index computed once)."""

    def __init__(self, theta: np.ndarray, n: int) -> None:
        t = (theta + np.float32(math.pi)) * np.float32((n - 1) / (2 * math.pi))
        self.i0 = np.clip(t.astype(np.int32), 0, n - 2)
        self.w = t - self.i0

    def __call__(self, table: np.ndarray) -> np.ndarray:
        table = np.asarray(table, dtype=np.float32)
        return table[self.i0] + (table[1:] - table[:-1])[self.i0] * self.w


def _interp_matrix(n_out: int, n_in: int) -> np.ndarray:
    """(n_out, n_in) matrix that linearly resamples ``n_in`` points spanning the same extent."""
    pos = np.linspace(0, n_in - 1, n_out)
    i0 = np.clip(np.floor(pos).astype(int), 0, max(n_in - 2, 0))
    w = pos - i0
    mat = np.zeros((n_out, n_in), dtype=np.float32)
    mat[np.arange(n_out), i0] += 1 - w
    if n_in > 1:
        mat[np.arange(n_out), np.minimum(i0 + 1, n_in - 1)] += w
    return mat


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], step: tuple[int, int, int]) -> np.ndarray:
    """Unit-variance smooth random field on ``shape`` with correlation length about ``step`` voxels.

    White noise on a coarse grid, Gaussian-smoothed, then linearly upsampled one axis at a time with
    small interpolation matrices (BLAS), which is several times faster than ``ndimage.zoom``.
    """
    coarse = tuple(max(2, math.ceil(n / s) + 1) for n, s in zip(shape, step, strict=True))
    small = ndimage.gaussian_filter(rng.standard_normal(coarse).astype(np.float32), 1.0, mode="wrap")
    small /= small.std() + 1e-6
    mx, my, mz = (_interp_matrix(n, c) for n, c in zip(shape, coarse, strict=True))
    out = small @ mz.T  # (cx, cy, Z)
    out = np.einsum("yj,ijk->iyk", my, out, optimize=True)  # (cx, Y, Z)
    out = (mx @ out.reshape(coarse[0], -1)).reshape(shape)
    return np.ascontiguousarray(out, dtype=np.float32)


def render(
    anatomy: Anatomy, geom: ScanGeometry, modality: Modality, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Paint one case on its canonical RAS-ordered grid; return noiseless values and the label map.

    ``rng`` draws appearance (tissue values, texture), so the same anatomy and geometry can be shown as
    CT or MR.
    """
    look = {name: float(rng.uniform(*ranges[modality])) for name, ranges in TISSUES.items()}
    sub = max(1, min(5, round(geom.spacing_z / (1.5 * geom.spacing_xy))))
    cv = _Canvas(geom, sub, look["air"])
    every = cv.everything
    x, y, z = cv.x, cv.y, cv.z
    rho = np.hypot(x, y)
    theta = np.arctan2(y, x)
    angle = _AngleTable(theta, len(anatomy.wall_table))
    texture_step_z = max(1, round(8 * geom.scale_z * sub / geom.spacing_z))
    texture_step_xy = max(2, round(8 * cv.edge))
    tex = _smooth_noise(rng, cv.shape, (texture_step_xy, texture_step_xy, texture_step_z))
    loops = _smooth_noise(
        rng, cv.shape, (round(1.6 * texture_step_xy), round(1.6 * texture_step_xy), texture_step_z * 2)
    )
    tex_amp = 3.0 if modality == "CT" else 12.0

    # Body wall: radii per angle, modulated along z (waist).
    amp, wavelength, phase = anatomy.waist
    waist = (1 + amp * np.sin(z / np.float32(wavelength) + np.float32(phase))).astype(np.float32)
    r_cav = angle(anatomy.wall_table[:, 0]) * waist
    wall_mus = angle(anatomy.wall_table[:, 1])
    cv.paint(every, rho - r_cav - wall_mus - angle(anatomy.wall_table[:, 2]) * waist, look["subcut_fat"])
    cv.paint(every, rho - r_cav - wall_mus, look["muscle"])
    f_cav = rho - r_cav
    cv.paint(every, f_cav, look["visceral_fat"])

    # Bowel loops in the lower abdomen: walls along a band of a smooth noise field, lumen inside.
    z_bowel = np.float32(rng.uniform(25, 50))
    lower = np.maximum(f_cav + 4, z - z_bowel)
    cv.paint(every, np.maximum(lower, (-0.35 - loops) * 7), look["bowel_wall"])
    lumen = np.maximum(lower + 2, (0.25 - loops) * 7)
    gas = rng.uniform(0.6, 1.4)
    cv.paint(every, lumen, look["bowel_content"] + tex * tex_amp * 2)
    cv.paint(every, np.maximum(lumen, (gas - tex) * 6), look["gas"])
    del lower, lumen

    # Diaphragm domes; above them the lung bases and the heart.
    z_right, z_left, curv, y_peak = anatomy.dome
    sx = anatomy.cavity_x / 122.0
    dome = np.maximum(
        z_right - ((x - 62 * sx) ** 2 + (y - y_peak) ** 2) / np.float32(curv),
        z_left - ((x + 62 * sx) ** 2 + (y - y_peak) ** 2) / np.float32(curv),
    )
    above = z - dome  # > 0 in the thorax
    cv.paint(every, np.maximum(f_cav, -above), look["soft_tissue"])
    mediastinum = np.minimum(np.abs(x + 8) - 28, y + 20)  # central strip, anterior of the spine
    lung = np.maximum(np.maximum(f_cav + 3, 4 - above), -np.maximum(mediastinum, -(y + 55)))
    cv.paint(every, lung, look["lung"] + tex * tex_amp * 2)
    del lung, mediastinum

    def bone_value(f: np.ndarray) -> np.ndarray:
        return look["bone_cancellous"] + (look["bone_cortical"] - look["bone_cancellous"]) * np.clip(
            1 + f / 2.5, 0, 1
        )

    # Ribs: tubes in the muscle wall, sloping down anteriorly, absent at the midlines and low down.
    ant = (1 + np.sin(theta)) / 2
    r_rib = r_cav + wall_mus * 0.5
    period = np.float32(36.0)
    dz = np.mod(z - anatomy.rib_phase + 70 * ant, period) - period / 2
    rib = np.hypot((rho - r_rib) / 4.5, dz / 5.5) * 4.5 - 4.5
    midline = 0.34 - np.abs(np.cos(theta))  # > 0 near the sternum and the spine
    rib = np.maximum(rib, np.maximum(midline * 40, (-5 + 95 * ant) - z))
    cv.paint(every, rib, bone_value(rib))

    def organ_paint(
        name: str, value: float, label: int = 0, *, clip: bool = True, textured: bool = False
    ) -> None:
        organ = anatomy.organs[name]
        sl = cv.box(*organ.bounds())
        if sl is None:
            return
        f = organ.sdf(*cv.coords(sl))
        if clip:  # stay inside the abdominal cavity and below the diaphragm
            f = np.maximum(f, np.maximum(f_cav[sl] + 1.5, above[sl] + 3))
        cv.paint(sl, f, value + tex[sl] * tex_amp if textured else value, label)

    heart = anatomy.organs["heart"]
    sl = cv.box(*heart.bounds())
    if sl is not None:
        cv.paint(sl, np.maximum(heart.sdf(*cv.coords(sl)), -above[sl]), look["heart"] + tex[sl] * tex_amp)

    # Back muscles (paraspinal, psoas), both sides.
    for side in (1.0, -1.0):
        para = Ellipsoid(np.array([side * 32, -84, 0.0]), np.array([26.0, 20.0, 1e4]))
        sl = cv.box(np.array([side * 32 - 40, -120, -1e3]), np.array([side * 32 + 40, -50, 1e3]))
        if sl is not None:
            xx, yy, zz = cv.coords(sl)
            cv.paint(sl, np.maximum(para.sdf(xx, yy, zz), rho[sl] - r_cav[sl] + wall_mus[sl]), look["muscle"])
        sl = cv.box(np.array([side * 33 - 35, -70, -1e3]), np.array([side * 33 + 35, -5, 70]))
        if sl is not None:
            xx, yy, zz = cv.coords(sl)
            r = np.clip(8 + 0.11 * (60 - zz), 6, 21)
            psoas = np.hypot((xx - side * (30 + 0.04 * (60 - zz))) / r, (yy + 38) / (0.9 * r)) * r - r
            cv.paint(sl, np.maximum(psoas, zz - 60), look["muscle"])

    # Stomach: wall, fluid, an anterior gas cap (air rises in a supine patient).
    stomach = anatomy.organs["stomach"]
    sl = cv.box(*stomach.bounds())
    if sl is not None:
        xx, yy, zz = cv.coords(sl)
        f = np.maximum(stomach.sdf(xx, yy, zz), np.maximum(f_cav[sl] + 1.5, above[sl] + 3))
        cv.paint(sl, f, look["soft_tissue"])
        cv.paint(sl, f + 3, look["fluid"] + 10 if modality == "CT" else look["fluid"])
        level = np.float32(stomach.parts[0].center[1] + rng.uniform(5, 20))
        cv.paint(sl, np.maximum(f + 3, level - yy), look["gas"])

    organ_paint("liver", look["liver"], LIVER, textured=True)
    organ_paint("gallbladder", look["fluid"])
    organ_paint("spleen", look["spleen"], SPLEEN, textured=True)

    # Great vessels: tubes along z with a gentle wiggle.
    def tube(params: tuple[float, ...], value: float, label: int = 0) -> None:
        x0, y0, radius, wig, wl, ph = params
        sl = cv.box(np.array([x0 - 40, y0 - 40, -1e3]), np.array([x0 + 40, y0 + 40, 1e3]))
        if sl is None:
            return
        xx, yy, zz = cv.coords(sl)
        cx = x0 + wig * np.sin(zz / np.float32(wl) + np.float32(ph))
        cy = y0 + wig * np.cos(zz / np.float32(wl) * 1.3 + np.float32(ph))
        r = radius * (1 + 0.0008 * zz)  # tapers caudally
        cv.paint(sl, np.hypot(xx - cx, yy - cy) - r, value, label)

    tube(anatomy.ivc, look["ivc"])

    for name, label in (("right_kidney", RIGHT_KIDNEY), ("left_kidney", LEFT_KIDNEY)):
        kidney = anatomy.organs[name]
        sl = cv.box(*kidney.bounds())
        if sl is None:
            continue
        f = np.maximum(kidney.sdf(*cv.coords(sl)), f_cav[sl] + 1.5)
        cortex = np.clip(1 + f / 5.0, 0, 1)  # outer ~5 mm is cortex
        value = look["kidney_medulla"] + (look["kidney_cortex"] - look["kidney_medulla"]) * cortex
        cv.paint(sl, f, value + tex[sl] * tex_amp, label)

    tube(anatomy.aorta, look["aorta"], AORTA)

    # Spine: vertebral bodies and discs, posterior arch with processes, canal; then ribs.
    sl = cv.box(np.array([-60, -115, -1e3]), np.array([60, -15, 1e3]))
    if sl is not None:
        xx, yy, zz = cv.coords(sl)
        period = np.float32(32.0)
        dz = np.abs(np.mod(zz - anatomy.spine_phase, period) - period / 2)  # 0 mid-vertebra
        body = np.hypot(xx / 20, (yy + 41) / 17) * 17 - 17
        cv.paint(sl, body, look["disc"])
        level = dz - 12.5
        vertebra = np.maximum(body, level)
        canal = np.hypot(xx, yy + 66) - 9
        arch = np.maximum(np.hypot(xx, (yy + 66) * 1.1) - 16, -canal)
        spinous = np.hypot(xx / 5, (yy + 88) / 15) * 5 - 5
        transverse = np.hypot((np.abs(xx) - 27) / 15, (yy + 60) / 5) * 5 - 5
        posterior = np.maximum(smooth_union(smooth_union(arch, spinous, 3), transverse, 3), level + 2)
        bone = smooth_union(vertebra, posterior, 2)
        cv.paint(sl, bone, bone_value(bone))
        cv.paint(sl, canal, look["csf"])

    # Thick slices are the mean of their sub-slices (through-plane partial volume).
    values = _slab_mean(cv.value, sub)
    best = _slab_mean(cv.frac[0], sub).copy()
    label = np.ones(best.shape, dtype=np.uint8)
    total = best.copy()
    for k in range(1, len(cv.frac)):
        frac = _slab_mean(cv.frac[k], sub)
        total += frac
        better = frac > best
        label[better] = k + 1
        np.maximum(best, frac, out=best)
    label[best < 1.0 - total] = 0  # background covers more of the voxel than any organ
    return values, label


def _slab_mean(array: np.ndarray, sub: int) -> np.ndarray:
    """Mean of each run of ``sub`` consecutive slices along the last axis."""
    if sub == 1:
        return array
    out = array[..., 0::sub].copy()
    for t in range(1, sub):
        out += array[..., t::sub]
    out *= np.float32(1.0 / sub)
    return out
