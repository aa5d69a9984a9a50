"""Synthetic head-and-neck PET/CT phantoms with GTVp/GTVn labels.

Why: real HECKTOR data cannot ship with the project, yet the tests, the demo and the training
smoke runs need cases that exercise the whole pipeline the way real scans do: a CT in HU on a
fine grid and a PET in SUV on a coarser grid with a different size and origin, a hot brain at
the top that the PET-guided crop anchors on, a bladder and a heart that must *not* win that
search, a primary tumour near the oropharynx and 0-4 neck nodes, three HECKTOR-like fields of
view, scans that cut the brain, small reconstruction fields of view and RAS-style flipped
storage.

How: the anatomy is described once, analytically, in millimetres (ellipsoids, elliptic tubes
with a piecewise-linear profile, capsules, boxes; see :class:`Shape`), and every image is
rasterised from that one description on its own grid: the CT with hard masks in HU, the PET with
anti-aliased masks in SUV on its own coarse grid (then blurred and made noisy), and the label
with the hard masks of the lesions on the CT grid. PET and CT are therefore consistent to the
voxel without any resampling between them, and the label is the geometric lesion (not a
thresholded PET).

Coordinate convention: physical axes are LPS (x toward the patient's Left, y toward Posterior,
z toward Superior), in mm. Unflipped images have the identity direction and their origin at the
corner voxel of the most inferior slice, so array index z grows toward the head. The patient
frame used to write the anatomy has x = 0 on the head's midline, y = 0 near the head's centre
and z = 0 at the vertex (top of the scalp); it is translated (never rotated) into the scanner
frame, with the head several cm off the centre of the field of view.

Reproducibility: everything is drawn from ``numpy.random.SeedSequence(seed)`` children, one per
concern (anatomy, scan geometry, CT noise, PET noise). The same seed gives identical arrays,
and the same seed with another field of view, ``brain_cut``, ``small_fov``, ``flip_xy`` or
``ct_matrix`` gives the *same patient*, only scanned differently.
"""

from __future__ import annotations

import math
import os
import pathlib
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

FIELDS_OF_VIEW = ("head", "head_upper", "whole_body")

#: In-plane CT reconstruction field of view (mm) for the default ``ct_matrix`` grids.
CT_FOV_MM = 500.0
#: CT slice spacing (mm).
CT_SLICE_MM = 3.0
#: ``small_fov=True`` reconstructs a CT field of view of this size range (mm), under 256 mm.
SMALL_FOV_MM = (200.0, 240.0)
#: Candidate PET voxel sizes (in-plane, slice) in mm, as on common scanners.
PET_SPACINGS_XY = (4.0728, 3.6458, 4.0)
PET_SPACINGS_Z = (3.27, 3.0, 4.0)
#: Values written where a CT voxel lies outside the circular reconstruction field of view.
CT_OUTSIDE_FOV_HU = -1024
CT_HU_RANGE = (-1024, 3071)
#: Slices per chunk when adding CT noise (bounds the float32 temporary to ~32 MB).
_NOISE_CHUNK = 32


@dataclass
class PhantomCase:
    """One synthetic case: CT (int16 HU), PET (float32 SUV, own grid), label on the CT grid."""

    case_id: str
    ct: sitk.Image      # int16, HU, CT grid
    pet: sitk.Image     # float32, SUV, its own coarser grid
    label: sitk.Image   # uint8 {0,1,2} on the CT grid (1 GTVp, 2 GTVn)
    info: dict = field(default_factory=dict)  # JSON-serialisable description of the case


# ----------------------------------------------------------------------------------------------
# Grids
# ----------------------------------------------------------------------------------------------

def _f32(v: float) -> float:
    """Round to the nearest float32 so that a NIfTI round trip (float32 header) is lossless."""
    return float(np.float32(v))


@dataclass(frozen=True)
class Grid:
    """An identity-direction grid: voxel (i, j, k) sits at origin + (i, j, k) * spacing (mm)."""

    origin: tuple[float, float, float]
    spacing: tuple[float, float, float]
    size: tuple[int, int, int]  # (nx, ny, nz), SimpleITK order

    @property
    def shape_zyx(self) -> tuple[int, int, int]:
        return (self.size[2], self.size[1], self.size[0])

    def region(self, lo: np.ndarray, hi: np.ndarray):
        """Voxels whose centres lie in the box [lo, hi]: numpy slices (z, y, x) and broadcastable
        coordinates x (1,1,nx), y (1,ny,1), z (nz,1,1); None when the box misses the grid."""
        slices, coords = [], []
        for a in range(3):
            o, s, n = self.origin[a], self.spacing[a], self.size[a]
            i0 = max(0, math.ceil((lo[a] - o) / s - 1e-9))
            i1 = min(n, math.floor((hi[a] - o) / s + 1e-9) + 1)
            if i1 <= i0:
                return None
            slices.append(slice(i0, i1))
            coords.append(o + s * np.arange(i0, i1, dtype=np.float64))
        x = coords[0].reshape(1, 1, -1)
        y = coords[1].reshape(1, -1, 1)
        z = coords[2].reshape(-1, 1, 1)
        return (slices[2], slices[1], slices[0]), x, y, z

    def to_image(self, array: np.ndarray, flip_xy: bool) -> sitk.Image:
        """Wrap a (z, y, x) array; with ``flip_xy`` store it RAS-style, direction diag(-1,-1,1)."""
        origin = list(self.origin)
        if flip_xy:
            array = np.ascontiguousarray(array[:, ::-1, ::-1])
            origin[0] = _f32(origin[0] + (self.size[0] - 1) * self.spacing[0])
            origin[1] = _f32(origin[1] + (self.size[1] - 1) * self.spacing[1])
        img = sitk.GetImageFromArray(array)
        img.SetSpacing(self.spacing)
        img.SetOrigin(origin)
        if flip_xy:
            img.SetDirection((-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0))
        return img


# ----------------------------------------------------------------------------------------------
# Shapes: analytic solids in physical mm
# ----------------------------------------------------------------------------------------------

_INF = float("inf")


class Shape:
    """An analytic solid in scanner mm.

    ``inside`` gives hard masks (CT, label) with as few full-size operations as possible;
    ``sdf`` gives an approximate signed distance in mm (negative inside) for the anti-aliased
    PET. Both take broadcastable coordinates x (1,1,nx), y (1,ny,1), z (nz,1,1) and are valid
    everywhere, so a shape can also be evaluated on another shape's region (see
    :class:`Difference`). An optional axis-aligned clip box cuts the solid.
    """

    def __init__(self, clip_lo: Sequence[float] | None = None, clip_hi: Sequence[float] | None = None):
        self.clip_lo = np.array(clip_lo if clip_lo is not None else (-_INF,) * 3, float)
        self.clip_hi = np.array(clip_hi if clip_hi is not None else (_INF,) * 3, float)

    def _raw_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _inside(self, x, y, z) -> np.ndarray:
        raise NotImplementedError

    def _sdf(self, x, y, z) -> np.ndarray:
        raise NotImplementedError

    def bounds(self) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = self._raw_bounds()
        return np.maximum(lo, self.clip_lo), np.minimum(hi, self.clip_hi)

    def _clip_terms(self, x, y, z):
        for a, c in enumerate((x, y, z)):
            if np.isfinite(self.clip_lo[a]) or np.isfinite(self.clip_hi[a]):
                yield c, self.clip_lo[a], self.clip_hi[a]

    def inside(self, x, y, z) -> np.ndarray:
        m = self._inside(x, y, z)
        for c, lo, hi in self._clip_terms(x, y, z):
            m = m & ((c >= lo) & (c <= hi))
        return m

    def sdf(self, x, y, z) -> np.ndarray:
        d = self._sdf(x, y, z)
        for c, lo, hi in self._clip_terms(x, y, z):
            d = np.maximum(d, np.maximum(lo - c, c - hi))
        return d


def _grad_sdf(f: np.ndarray, grad_sq: np.ndarray) -> np.ndarray:
    """First-order distance f / |grad f| of an implicit quadric; exact in sign, good near the surface."""
    return f / np.maximum(np.sqrt(grad_sq), 1e-9)


class Ellipsoid(Shape):
    """Ellipsoid with semi-axes ``semi`` (mm), optionally rotated by the 3x3 matrix ``rot``
    (columns are the ellipsoid's axes in scanner coordinates)."""

    def __init__(self, center, semi, rot=None, **clip):
        super().__init__(**clip)
        self.c = np.asarray(center, float)
        self.r = np.asarray(semi, float)
        self.rot = None if rot is None else np.asarray(rot, float)

    def _raw_bounds(self):
        if self.rot is None:
            half = self.r
        else:  # exact half-extent of a rotated ellipsoid along each axis
            half = np.sqrt(((self.rot * self.r[None, :]) ** 2).sum(axis=1))
        return self.c - half, self.c + half

    def _local(self, x, y, z):
        dx, dy, dz = x - self.c[0], y - self.c[1], z - self.c[2]
        if self.rot is None:
            return dx, dy, dz
        R = self.rot
        return (R[0, 0] * dx + R[1, 0] * dy + R[2, 0] * dz,
                R[0, 1] * dx + R[1, 1] * dy + R[2, 1] * dz,
                R[0, 2] * dx + R[1, 2] * dy + R[2, 2] * dz)

    def _inside(self, x, y, z):
        if self.rot is None:  # one full-size operation: X(1,1,nx) <= R(nz,ny,1)
            X = ((x - self.c[0]) / self.r[0]) ** 2
            R = 1.0 - ((y - self.c[1]) / self.r[1]) ** 2 - ((z - self.c[2]) / self.r[2]) ** 2
            return X <= R
        u, v, w = self._local(x, y, z)
        return (u / self.r[0]) ** 2 + (v / self.r[1]) ** 2 + (w / self.r[2]) ** 2 <= 1.0

    def _sdf(self, x, y, z):
        u, v, w = self._local(x, y, z)
        a, b, c = self.r
        f = (u / a) ** 2 + (v / b) ** 2 + (w / c) ** 2 - 1.0
        g = 4.0 * ((u / a**2) ** 2 + (v / b**2) ** 2 + (w / c**2) ** 2)
        return _grad_sdf(f, g)


class Tube(Shape):
    """A solid along z with an elliptic cross-section whose centre (cx, cy) and semi-axes (a, b)
    vary piecewise-linearly between the knots ``z`` (ascending): body, neck, spine, airway.
    ``period=(P, duty, phase)`` keeps only slabs where (z - phase) mod P < duty (vertebrae);
    ``slope`` tilts the slabs, z - slope * y instead of z, so that they rise posteriorly (ribs)."""

    def __init__(self, z, cx, cy, a, b, period: tuple[float, float, float] | None = None,
                 slope: float = 0.0, **clip):
        super().__init__(**clip)
        n = len(z)
        self.z = np.asarray(z, float)
        self.cx, self.cy, self.a, self.b = (np.broadcast_to(np.asarray(v, float), (n,)).copy()
                                            for v in (cx, cy, a, b))
        if np.any(np.diff(self.z) <= 0):
            raise ValueError("Tube knots must be strictly ascending in z")
        self.period = period
        self.slope = float(slope)

    def _raw_bounds(self):
        lo = np.array([np.min(self.cx - self.a), np.min(self.cy - self.b), self.z[0]])
        hi = np.array([np.max(self.cx + self.a), np.max(self.cy + self.b), self.z[-1]])
        return lo, hi

    def _profile(self, z):
        zf = z.ravel()
        return [np.interp(zf, self.z, v).reshape(z.shape) for v in (self.cx, self.cy, self.a, self.b)]

    def _z_ok(self, y, z):
        """Slices (nz,1,1), or with a tilted period rows (nz,ny,1), where the tube exists."""
        ok = (z >= self.z[0]) & (z <= self.z[-1])
        if self.period is not None:
            p, duty, phase = self.period
            ok = ok & (np.mod(z - self.slope * y - phase, p) < duty)
        return ok

    def _inside(self, x, y, z):
        cx, cy, a, b = self._profile(z)
        X = ((x - cx) / a) ** 2                     # (nz, 1, nx)
        R = 1.0 - ((y - cy) / b) ** 2               # (nz, ny, 1)
        R = np.where(self._z_ok(y, z), R, -1.0)     # excluded slices/rows: nothing inside
        return X <= R

    def _sdf(self, x, y, z):
        cx, cy, a, b = self._profile(z)
        u, v = x - cx, y - cy
        f = (u / a) ** 2 + (v / b) ** 2 - 1.0
        d = _grad_sdf(f, 4.0 * ((u / a**2) ** 2 + (v / b**2) ** 2))
        d = np.maximum(d, np.maximum(self.z[0] - z, z - self.z[-1]))
        if self.period is not None:  # slabs are thin: hard in z at voxel centres
            d = np.where(self._z_ok(y, z), d, _INF)
        return d


class Capsule(Shape):
    """All points within ``radius`` of the segment p0-p1 (clavicles, femoral necks, pubic rami)."""

    def __init__(self, p0, p1, radius: float, **clip):
        super().__init__(**clip)
        self.p0, self.p1, self.radius = np.asarray(p0, float), np.asarray(p1, float), float(radius)

    def _raw_bounds(self):
        return np.minimum(self.p0, self.p1) - self.radius, np.maximum(self.p0, self.p1) + self.radius

    def _sdf(self, x, y, z):
        v = self.p1 - self.p0
        dx, dy, dz = x - self.p0[0], y - self.p0[1], z - self.p0[2]
        t = np.clip((dx * v[0] + dy * v[1] + dz * v[2]) / float(v @ v), 0.0, 1.0)
        return np.sqrt((dx - t * v[0]) ** 2 + (dy - t * v[1]) ** 2 + (dz - t * v[2]) ** 2) - self.radius

    def _inside(self, x, y, z):
        return self._sdf(x, y, z) <= 0.0


class Box(Shape):
    """Axis-aligned box (the CT table)."""

    def __init__(self, lo, hi, **clip):
        super().__init__(**clip)
        self.lo, self.hi = np.asarray(lo, float), np.asarray(hi, float)

    def _raw_bounds(self):
        return self.lo.copy(), self.hi.copy()

    def _inside(self, x, y, z):
        return ((x >= self.lo[0]) & (x <= self.hi[0])) & ((y >= self.lo[1]) & (y <= self.hi[1])) \
            & ((z >= self.lo[2]) & (z <= self.hi[2]))

    def _sdf(self, x, y, z):
        d = np.maximum(self.lo[0] - x, x - self.hi[0])
        d = np.maximum(d, np.maximum(self.lo[1] - y, y - self.hi[1]))
        return np.maximum(d, np.maximum(self.lo[2] - z, z - self.hi[2]))


class Difference(Shape):
    """``outer`` minus ``inner``: shells and rings (mandible, ribs, vertebral arches, heart wall)."""

    def __init__(self, outer: Shape, inner: Shape):
        super().__init__()
        self.outer, self.inner = outer, inner

    def _raw_bounds(self):
        return self.outer.bounds()

    def _inside(self, x, y, z):
        return self.outer.inside(x, y, z) & ~self.inner.inside(x, y, z)

    def _sdf(self, x, y, z):
        return np.maximum(self.outer.sdf(x, y, z), -self.inner.sdf(x, y, z))


# ----------------------------------------------------------------------------------------------
# Layers and rasterisation
# ----------------------------------------------------------------------------------------------

@dataclass
class Layer:
    """One painted structure: later layers overwrite earlier ones (painter's order).
    ``hu``/``suv`` None leave the CT/PET untouched; ``label`` marks a lesion on the CT grid."""

    name: str
    shape: Shape
    hu: float | None
    suv: float | None
    label: int | None = None


def _paint_hard(layers: Sequence[Layer], grid: Grid, values: Sequence[int | None], fill: int,
                dtype: type) -> np.ndarray:
    """Paint one value per layer (None: skip) with hard masks; only each shape's bounding box is visited."""
    out = np.full(grid.shape_zyx, fill, dtype)
    for layer, value in zip(layers, values):
        if value is None:
            continue
        reg = grid.region(*layer.shape.bounds())
        if reg is None:
            continue
        (sz, sy, sx), x, y, z = reg
        np.copyto(out[sz, sy, sx], dtype(value), where=layer.shape.inside(x, y, z))
    return out


def rasterise_ct(layers: Sequence[Layer], grid: Grid, background: int = -1000) -> np.ndarray:
    """Paint the layers' HU with hard masks."""
    return _paint_hard(layers, grid, [None if l.hu is None else round(l.hu) for l in layers], background, np.int16)


def rasterise_pet(layers: Sequence[Layer], grid: Grid) -> np.ndarray:
    """Paint the layers' SUV with anti-aliased coverage (partial volume), before any blur."""
    pet = np.zeros(grid.shape_zyx, np.float32)
    h = float(np.cbrt(np.prod(grid.spacing)))
    for layer in layers:
        if layer.suv is None:
            continue
        lo, hi = layer.shape.bounds()
        reg = grid.region(lo - h, hi + h)
        if reg is None:
            continue
        (sz, sy, sx), x, y, z = reg
        cover = np.clip(0.5 - layer.shape.sdf(x, y, z) / h, 0.0, 1.0)
        view = pet[sz, sy, sx]
        view += (cover * (layer.suv - view)).astype(np.float32)
    return pet


def rasterise_label(layers: Sequence[Layer], grid: Grid) -> np.ndarray:
    """The lesion layers' label values with hard masks on ``grid`` (the CT grid)."""
    return _paint_hard(layers, grid, [l.label for l in layers], 0, np.uint8)


# ----------------------------------------------------------------------------------------------
# Anatomy
# ----------------------------------------------------------------------------------------------

@dataclass
class Patient:
    """Random per-patient parameters; lengths in the patient frame are multiplied by ``s``."""

    s: float            # overall size
    w: float            # trunk width factor (build)
    fat: float          # subcutaneous fat thickness of the trunk, mm
    offset: np.ndarray  # scanner position of the patient-frame origin (vertex on the head axis)
    hu: dict
    suv: dict

    def p(self, x: float, y: float, z: float) -> np.ndarray:
        """Patient-frame point (unscaled mm) to scanner mm."""
        return self.offset + self.s * np.array([x, y, z], float)

    def tube(self, z, cx, cy, a, b, **kw) -> Tube:
        """Patient-frame tube (unscaled mm) to a scanner-frame :class:`Tube`."""
        s, o = self.s, self.offset
        return Tube(np.asarray(z, float) * s + o[2], np.asarray(cx, float) * s + o[0],
                    np.asarray(cy, float) * s + o[1], np.asarray(a, float) * s,
                    np.asarray(b, float) * s, **kw)

    def ell(self, c, r, **kw) -> Ellipsoid:
        """Patient-frame axis-aligned ellipsoid (unscaled mm)."""
        return Ellipsoid(self.p(*c), self.s * np.asarray(r, float), **kw)

    def zclip(self, zmin: float | None = None, zmax: float | None = None) -> dict:
        """Clip keywords for a patient-frame z range."""
        lo = [-_INF, -_INF, -_INF if zmin is None else self.offset[2] + self.s * zmin]
        hi = [_INF, _INF, _INF if zmax is None else self.offset[2] + self.s * zmax]
        return {"clip_lo": lo, "clip_hi": hi}


#: Trunk outline (patient frame, unscaled): z knots, half-width a, half-depth b; centre y = 15.
_TRUNK_Z = np.array([-950.0, -820, -700, -560, -420, -322, -300, -285])
_TRUNK_A = np.array([165.0, 160, 142, 150, 158, 160, 105, 58])
_TRUNK_B = np.array([100.0, 105, 108, 108, 105, 95, 72, 55])
_TRUNK_CY = 15.0
#: Knots from here down get the build factor ``w`` (shoulders and below).
_TRUNK_W_FROM = -322.0
#: Vertebral bodies: z knots, centre y, half-width, half-depth (patient frame, unscaled).
_SPINE_Z = np.array([-900.0, -850, -830, -700, -560, -480, -330, -300, -140])
_SPINE_CY = np.array([70.0, 66, 45, 52, 60, 62, 50, 36, 27])
_SPINE_A = np.array([30.0, 28, 23, 21, 18, 16, 13, 11, 10])
_SPINE_B = np.array([14.0, 14, 18, 17, 16, 14, 12, 10, 9])
#: Lower face/jaw outline: z knots, centre y, half-width, half-depth.
_FACE_Z = np.array([-236.0, -228, -205, -170, -120, -80])
_FACE_CY = np.array([-28.0, -30, -25, -20, -15, -10])
_FACE_A = np.array([22.0, 36, 52, 60, 66, 66])
_FACE_B = np.array([30.0, 50, 70, 80, 85, 85])
#: Brain (patient frame): centre and semi-axes; the PET peak and the tumour depth refer to it.
BRAIN_CENTRE = (0.0, 10.0, -75.0)
BRAIN_SEMI = (64.0, 80.0, 62.0)
BRAIN_ZMIN = -120.0


def _trunk_ab(pt: Patient, inset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Trunk half-axes (unscaled units) with the build factor, minus ``inset`` mm of real size."""
    wf = np.where(_TRUNK_Z <= _TRUNK_W_FROM, pt.w, 1.0)
    a = _TRUNK_A * wf - inset / pt.s
    b = _TRUNK_B * np.where(_TRUNK_Z <= _TRUNK_W_FROM, 0.5 + 0.5 * pt.w, 1.0) - inset / pt.s
    return np.maximum(a, 5.0), np.maximum(b, 5.0)


def _trunk_at(pt: Patient, z: float, inset: float = 0.0) -> tuple[float, float]:
    """Inner trunk half-axes (unscaled) at patient-frame z: organs are placed relative to these."""
    a, b = _trunk_ab(pt, inset)
    return float(np.interp(z, _TRUNK_Z, a)), float(np.interp(z, _TRUNK_Z, b))


def _spine_cy(z: float) -> float:
    return float(np.interp(z, _SPINE_Z, _SPINE_CY))


def _draw_patient(rng: np.random.Generator) -> Patient:
    """Size, build, head position in the scanner and tissue values of one patient."""
    s = rng.uniform(0.92, 1.06)
    w = rng.uniform(0.9, 1.15)
    fat = rng.uniform(6.0, 26.0) * w
    head_xy = rng.uniform(-40.0, 40.0, size=2)
    z_vertex = rng.uniform(-200.0, 200.0)
    u = rng.uniform
    hu = {
        "fat": u(-115, -85), "tissue": u(35, 50), "brain": u(34, 40), "white": u(25, 31),
        "bone": u(750, 1150), "spine": u(700, 900), "lung": u(-850, -780), "liver": u(50, 65),
        "blood": u(35, 50), "teeth": 1200.0, "csf": u(5, 15), "gland": u(-15, 15),
    }
    brain = u(7.0, 10.0)
    suv = {
        "fat": u(0.15, 0.3), "tissue": u(0.45, 0.75), "bone": u(0.3, 0.45), "marrow": u(1.0, 1.6),
        "lung": u(0.3, 0.5), "brain": brain, "white": 0.7 * brain, "deep_grey": 0.95 * brain,
        "cerebellum": 0.85 * brain, "csf": u(0.3, 0.6), "eye": u(0.2, 0.4),
        "parotid": u(2.0, 3.5), "tonsil": u(2.5, 4.0), "submandibular": u(1.5, 2.5),
        "thyroid": u(1.0, 2.0), "heart": u(3.0, 6.0), "blood": u(1.4, 2.0), "liver": u(1.8, 2.5),
        "kidney": u(2.0, 4.0), "bowel": u(1.0, 2.5), "bladder": u(20.0, 35.0),
    }
    suv["spleen"] = 0.85 * suv["liver"]
    offset = np.array([head_xy[0], head_xy[1], z_vertex])
    return Patient(s=s, w=w, fat=fat, offset=offset, hu=hu, suv=suv)


def _body_layers(pt: Patient) -> list[Layer]:
    """Skin outline: head, face, neck, trunk and thighs, each as fat shell + soft-tissue core."""
    H, S = pt.hu, pt.suv
    a, b = _trunk_ab(pt)
    ai, bi = _trunk_ab(pt, pt.fat)
    neck_fat = 0.4 * pt.fat / pt.s
    leg_x = 0.5 * float(np.interp(-950, _TRUNK_Z, a))
    leg_z = [-1400.0, -935.0]
    layers = [
        Layer("trunk_fat", pt.tube(_TRUNK_Z, 0, _TRUNK_CY, a, b), H["fat"], S["fat"]),
        Layer("trunk", pt.tube(_TRUNK_Z, 0, _TRUNK_CY, ai, bi), H["tissue"], S["tissue"]),
        Layer("neck_fat", pt.tube([-300, -150], 0, 22, 58, 58), H["fat"], S["fat"]),
        Layer("neck", pt.tube([-300, -150], 0, 22, 58 - neck_fat, 58 - neck_fat), H["tissue"], S["tissue"]),
        Layer("face", pt.tube(_FACE_Z, 0, _FACE_CY, _FACE_A, _FACE_B), H["tissue"], S["tissue"]),
        Layer("head", pt.ell((0, 5, -75), (77, 93, 75)), H["tissue"], S["tissue"]),
    ]
    for side in (-1, 1):
        r_out = [0.8 * leg_x, leg_x]
        r_in = [max(0.8 * leg_x - pt.fat / pt.s, 10), max(leg_x - pt.fat / pt.s, 10)]
        layers.append(Layer(f"thigh_fat_{side}", pt.tube(leg_z, side * leg_x, _TRUNK_CY, r_out, r_out),
                            H["fat"], S["fat"]))
        layers.append(Layer(f"thigh_{side}", pt.tube(leg_z, side * leg_x, _TRUNK_CY, r_in, r_in),
                            H["tissue"], S["tissue"]))
    return layers


def _head_layers(pt: Patient) -> list[Layer]:
    """Skull, brain (cortex, white matter, deep grey nuclei, ventricles, cerebellum), sinuses,
    eyes, mandible, teeth and the physiologically avid glands near the tumour."""
    H, S = pt.hu, pt.suv
    bc, bs = BRAIN_CENTRE, BRAIN_SEMI
    layers = [
        Layer("nasal_cavity", pt.ell((0, -55, -130), (12, 22, 20)), -1000, 0.0),
        Layer("sinus_l", pt.ell((28, -45, -125), (13, 15, 15)), -1000, 0.0),
        Layer("sinus_r", pt.ell((-28, -45, -125), (13, 15, 15)), -1000, 0.0),
        Layer("eye_l", pt.ell((32, -58, -110), (12, 12, 12)), 15, S["eye"]),
        Layer("eye_r", pt.ell((-32, -58, -110), (12, 12, 12)), 15, S["eye"]),
        Layer("skull", pt.ell(bc, np.add(bs, 7), **pt.zclip(BRAIN_ZMIN - 8)), H["bone"], S["bone"]),
        Layer("posterior_fossa", pt.ell((0, 50, -118), (52, 35, 27), **pt.zclip(zmax=-118)),
              H["bone"], S["bone"]),
        Layer("brain", pt.ell(bc, bs, **pt.zclip(BRAIN_ZMIN)), H["brain"], S["brain"]),
        Layer("white_matter", pt.ell(bc, np.subtract(bs, 10), **pt.zclip(BRAIN_ZMIN)),
              H["white"], S["white"]),
        Layer("cerebellum", pt.ell((0, 50, -118), (45, 28, 20), **pt.zclip(-138)),
              H["brain"], S["cerebellum"]),
        Layer("thalamus_l", pt.ell((17, 8, -72), (9, 16, 13)), H["brain"], S["deep_grey"]),
        Layer("thalamus_r", pt.ell((-17, 8, -72), (9, 16, 13)), H["brain"], S["deep_grey"]),
        Layer("ventricle_l", pt.ell((7, 5, -62), (5, 22, 10)), H["csf"], S["csf"]),
        Layer("ventricle_r", pt.ell((-7, 5, -62), (5, 22, 10)), H["csf"], S["csf"]),
    ]
    # Mandible: the anterior half of an elliptic ring under the lower face, plus two rami.
    zm = -216.0
    fa, fb, fcy = (float(np.interp(zm, _FACE_Z, v)) for v in (_FACE_A, _FACE_B, _FACE_CY))
    y_cut = pt.offset[1] + pt.s * (fcy + 5)
    ring_clip = {"clip_hi": [_INF, y_cut, _INF]}
    layers.append(Layer("mandible", Difference(
        pt.tube([zm - 10, zm + 10], 0, fcy, fa - 4, fb - 4, **ring_clip),
        pt.tube([zm - 10, zm + 10], 0, fcy, fa - 11, fb - 11)), H["bone"], S["bone"]))
    zt = -193.0
    ta, tb, tcy = (float(np.interp(zt, _FACE_Z, v)) for v in (_FACE_A, _FACE_B, _FACE_CY))
    layers.append(Layer("teeth", Difference(
        pt.tube([zt - 7, zt + 7], 0, tcy, ta - 12, tb - 12, clip_hi=[_INF, y_cut - 3 * pt.s, _INF]),
        pt.tube([zt - 7, zt + 7], 0, tcy, ta - 19, tb - 19)), H["teeth"], S["bone"]))
    for side in (-1, 1):
        layers.append(Layer(f"ramus_{side}", Capsule(pt.p(side * (fa - 8), fcy + 8, zm),
                                                    pt.p(side * 54, 8, -140), 5 * pt.s),
                            H["bone"], S["bone"]))
    # Glands with physiological uptake (after the bones so they are not cut by them).
    for side in (-1, 1):
        layers += [
            Layer(f"parotid_{side}", pt.ell((side * 46, 12, -150), (11, 18, 22)), H["gland"], S["parotid"]),
            Layer(f"submandibular_{side}", pt.ell((side * 33, -25, -212), (11, 13, 11)),
                  H["tissue"] + 5, S["submandibular"]),
            Layer(f"thyroid_{side}", pt.ell((side * 17, -16, -275), (8, 9, 20)), H["tissue"] + 50,
                  S["thyroid"]),
        ]
    return layers


def _thorax_abdomen_layers(pt: Patient, rng: np.random.Generator) -> list[Layer]:
    """Lungs, mediastinum, heart, aorta, liver, spleen, kidneys, bowel and bladder."""
    H, S, s = pt.hu, pt.suv, pt.s
    A, B = _trunk_at(pt, -450, pt.fat)
    layers = []
    for side in (-1, 1):
        layers.append(Layer(f"lung_{side}", pt.ell((side * 0.45 * A, _TRUNK_CY, -440),
                                                   (0.40 * A, 0.78 * B, 118)), H["lung"], S["lung"]))
    layers.append(Layer("mediastinum", pt.tube([-560, -330], 0, _TRUNK_CY - 10, 0.18 * A, 0.45 * B),
                        H["tissue"], S["tissue"]))
    hc, hr = (0.12 * A, _TRUNK_CY - 0.25 * B, -495), np.array([0.36 * A, 0.45 * B, 55.0])
    layers.append(Layer("heart", pt.ell(hc, hr), H["blood"], S["heart"]))
    layers.append(Layer("heart_cavity", pt.ell(hc, hr - 10.0 / s), H["blood"], S["blood"]))
    az = np.array([-830.0, -700, -560, -340])
    layers.append(Layer("aorta", pt.tube(az, 0.12 * A, [_spine_cy(z) - 26 for z in az], 12, 12),
                        H["blood"], S["blood"]))
    A, B = _trunk_at(pt, -590, pt.fat)
    layers.append(Layer("liver", pt.ell((-0.38 * A, _TRUNK_CY, -590), (0.55 * A, 0.72 * B, 72)),
                        H["liver"], S["liver"]))
    layers.append(Layer("spleen", pt.ell((0.55 * A, _TRUNK_CY + 0.35 * B, -575), (0.17 * A, 0.3 * B, 45)),
                        H["liver"] - 8, S["spleen"]))
    A, B = _trunk_at(pt, -665, pt.fat)
    for side in (-1, 1):
        layers.append(Layer(f"kidney_{side}", pt.ell((side * 0.42 * A, 50, -665), (0.16 * A, 0.26 * B, 50)),
                            H["tissue"] - 5, S["kidney"]))
    A, B = _trunk_at(pt, -740, pt.fat)
    for i in range(int(rng.integers(2, 5))):  # bowel with mild uptake, then gas pockets
        c = (rng.uniform(-0.5, 0.5) * A, _TRUNK_CY + rng.uniform(-0.6, 0.1) * B, rng.uniform(-800, -650))
        layers.append(Layer(f"bowel_{i}", pt.ell(c, rng.uniform(10, 25, 3)), H["tissue"] - 10, S["bowel"]))
    for i in range(int(rng.integers(3, 8))):
        c = (rng.uniform(-0.5, 0.5) * A, _TRUNK_CY + rng.uniform(-0.6, 0.1) * B, rng.uniform(-800, -640))
        layers.append(Layer(f"gas_{i}", pt.ell(c, rng.uniform(6, 18, 3)), -950, 0.0))
    A, B = _trunk_at(pt, -862, pt.fat)
    v = rng.uniform(0.85, 1.1)
    layers.append(Layer("bladder", pt.ell((0, _TRUNK_CY - 0.35 * B, -862), (20 * v, 17 * v, 16 * v)),
                        8, S["bladder"]))
    return layers


def _skeleton_layers(pt: Patient) -> list[Layer]:
    """Spine (vertebrae with disc gaps, canal, arches), ribs, sternum, clavicles, pelvis, femurs."""
    H, S, s = pt.hu, pt.suv, pt.s
    vert = (18.0 * s, 14.0 * s, pt.offset[2])  # period, bone length, phase (mm)
    layers = [Layer("vertebrae", pt.tube(_SPINE_Z, 0, _SPINE_CY, _SPINE_A, _SPINE_B, period=vert),
                    H["spine"], S["marrow"])]
    canal_cy = _SPINE_CY + _SPINE_B + 8
    layers.append(Layer("vertebral_arch", Difference(
        pt.tube(_SPINE_Z[1:], 0, canal_cy[1:], 14, 12, period=vert),
        pt.tube(_SPINE_Z[1:], 0, canal_cy[1:], 8, 7)), H["spine"], S["marrow"]))
    layers.append(Layer("spinal_canal", pt.tube(_SPINE_Z[1:], 0, canal_cy[1:], 8, 7), H["csf"], S["tissue"]))
    # Ribs: slabs of the inner trunk wall.
    ai, bi = _trunk_ab(pt, pt.fat + 2.0)
    ak, bk = _trunk_ab(pt, pt.fat + 11.0)
    keep = (_TRUNK_Z >= -620) & (_TRUNK_Z <= -322)
    zr = np.concatenate([[-620.0], _TRUNK_Z[keep]])
    ir = lambda v: np.interp(zr, _TRUNK_Z, v)  # noqa: E731
    rib_period = (24.0 * s, 9.0 * s, pt.offset[2])  # oblique: the ribs rise toward the spine
    layers.append(Layer("ribs", Difference(
        pt.tube(zr, 0, _TRUNK_CY, ir(ai), ir(bi), period=rib_period, slope=0.5),
        pt.tube(zr, 0, _TRUNK_CY, ir(ak), ir(bk))), H["bone"], S["bone"]))
    A, B = _trunk_at(pt, -420, pt.fat)
    layers.append(Layer("sternum", pt.tube([-520, -335], 0, _TRUNK_CY - B + 8, 16, 6), H["bone"], S["bone"]))
    for side in (-1, 1):
        layers.append(Layer(f"clavicle_{side}", Capsule(pt.p(side * 22, _TRUNK_CY - 0.8 * B, -318),
                                                       pt.p(side * 0.85 * A, _TRUNK_CY - 0.2 * B, -306),
                                                       8 * s), H["bone"], S["bone"]))
    A, B = _trunk_at(pt, -800, pt.fat)
    An, _ = _trunk_at(pt, -900, pt.fat)
    leg_x = 0.5 * float(np.interp(-950, _TRUNK_Z, _trunk_ab(pt)[0]))
    for side in (-1, 1):
        layers += [
            Layer(f"ilium_{side}", pt.ell((side * 0.62 * A, _TRUNK_CY + 0.15 * B, -800), (14, 0.45 * B, 55),
                                          **pt.zclip(-845)), H["bone"], S["marrow"]),
            Layer(f"femoral_head_{side}", pt.ell((side * 0.55 * An, _TRUNK_CY, -900), (24, 24, 24)),
                  H["bone"], S["marrow"]),
            Layer(f"femoral_neck_{side}", Capsule(pt.p(side * 0.55 * An, _TRUNK_CY, -900),
                                                  pt.p(side * (leg_x + 6), _TRUNK_CY, -940), 13 * s),
                  H["bone"], S["marrow"]),
            Layer(f"femur_{side}", pt.tube([-1400, -935], side * (leg_x + 6), _TRUNK_CY, 14, 14),
                  H["bone"], S["marrow"]),
            Layer(f"pubis_{side}", Capsule(pt.p(side * 12, _TRUNK_CY - 0.6 * B, -885),
                                           pt.p(side * 0.45 * An, _TRUNK_CY - 0.2 * B, -880), 9 * s),
                  H["bone"], S["marrow"]),
        ]
    return layers


def _airway_layers(pt: Patient) -> list[Layer]:
    """Pharynx, larynx and trachea (air), then the palatine tonsils that bulge into it."""
    S, H = pt.suv, pt.hu
    layers = [Layer("airway", pt.tube([-400, -300, -230, -140], 0, [0, -8, 6, 10], [9, 9, 10, 12],
                                      [8, 8, 9, 9]), -1000, 0.0)]
    for side in (-1, 1):
        layers.append(Layer(f"tonsil_{side}", pt.ell((side * 15, 2, -168), (7, 9, 12)),
                            H["tissue"] + 5, S["tonsil"]))
    return layers


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3D rotation (from a random unit quaternion)."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


@dataclass
class Lesions:
    """Primary tumour lobes and nodes (scanner mm) plus their layers, and a summary for ``info``."""

    layers: list[Layer]
    summary: dict


def _draw_lesions(pt: Patient, rng: np.random.Generator, n_nodes: int | None) -> Lesions:
    """GTVp: a lumpy union of 2-5 rotated ellipsoids near the oropharynx, 8-11 cm below the brain
    centre and just anterior to the spine. GTVn: 0-4 separate ellipsoids (8-25 mm) in the lateral
    neck (levels II-III), on either side, kept >= 5 mm from each other and from the tumour."""
    s = pt.s
    depth = rng.uniform(80.0, 110.0)
    side_t = 1 if rng.uniform() < 0.5 else -1
    centre = pt.p(side_t * rng.uniform(4, 18), rng.uniform(-26, -2), BRAIN_CENTRE[2] - depth)
    main = rng.uniform(8.0, 17.0, 3) * s
    base_suv = rng.uniform(6.0, 20.0)
    tumour_hu = rng.uniform(55.0, 75.0)
    rot0 = _random_rotation(rng)
    lobes = [(centre, main, rot0)]
    for _ in range(int(rng.integers(1, 5))):
        # Each lobe is centred inside the main ellipsoid, so the union stays one connected mass.
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        lobes.append((centre + rot0 @ (d * main * rng.uniform(0.5, 0.9)), main * rng.uniform(0.45, 0.8, 3),
                      _random_rotation(rng)))
    layers = []
    for i, (c, r, rot) in enumerate(lobes):
        lobe_suv = float(np.clip(base_suv * rng.uniform(0.85, 1.15), 6.0, 20.0))
        layers.append(Layer(f"gtvp_{i}", Ellipsoid(c, r, rot), tumour_hu, lobe_suv, label=1))
    necrotic = bool(main.mean() > 13.0 * s and rng.uniform() < 0.3)
    if necrotic:
        layers.append(Layer("gtvp_necrosis", Ellipsoid(centre, 0.45 * main, rot0), 25, 0.3 * base_suv))
    t_radius = max(float(np.linalg.norm(c - centre) + r.max()) for c, r, _ in lobes)

    n_random = int(rng.integers(0, 5))
    n = n_random if n_nodes is None else int(n_nodes)
    if not 0 <= n <= 4:
        raise ValueError(f"n_nodes must be in 0..4, got {n_nodes}")
    nodes: list[dict] = []
    placed: list[tuple[np.ndarray, float]] = [(centre, t_radius)]
    for k in range(n):
        size = rng.uniform(4.0, 12.5)
        for attempt in range(2000):
            semi = np.minimum(size * np.array([rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0),
                                               rng.uniform(1.0, 1.4)]), 12.5) * s
            side = 1 if rng.uniform() < 0.5 else -1
            ax = rng.uniform(24.0, 46.0 - semi.max() / s)
            c = pt.p(side * ax, rng.uniform(-15, 18), rng.uniform(-235, -160))
            rmax = float(semi.max())
            if all(np.linalg.norm(c - pc) >= rmax + pr + 5.0 for pc, pr in placed):
                break
            if attempt % 200 == 199:
                size = max(4.0, 0.9 * size)
        else:  # pragma: no cover - the neck has room for four nodes
            raise RuntimeError("could not place the lymph nodes")
        placed.append((c, rmax))
        node_suv = rng.uniform(3.0, 12.0)
        node_hu = rng.uniform(45.0, 65.0)
        rot = _random_rotation(rng) if rng.uniform() < 0.5 else None
        layers.append(Layer(f"gtvn_{k}", Ellipsoid(c, semi, rot), node_hu, node_suv, label=2))
        nec = bool(semi.max() > 9.0 and rng.uniform() < 0.35)
        if nec:
            layers.append(Layer(f"gtvn_{k}_necrosis", Ellipsoid(c, 0.5 * semi, rot), 20,
                                max(1.0, 0.3 * node_suv)))
        nodes.append({"centre_mm": [float(v) for v in c], "semi_axes_mm": [float(v) for v in semi],
                      "suv": float(node_suv), "hu": float(node_hu), "side": "L" if side > 0 else "R",
                      "necrotic": nec})
    summary = {
        "tumour_centre_mm": [float(v) for v in centre],
        "tumour_depth_below_brain_centre_mm": float(depth * s),
        "tumour_lobes": [{"centre_mm": [float(v) for v in c], "semi_axes_mm": [float(v) for v in r]}
                         for c, r, _ in lobes],
        "tumour_radius_mm": t_radius,
        "tumour_suv": float(base_suv),
        "tumour_hu": float(tumour_hu),
        "tumour_necrotic": necrotic,
        "nodes": nodes,
    }
    return Lesions(layers, summary)


def _table_layer(pt: Patient, fov_centre_xy: np.ndarray) -> Layer:
    """The CT couch under the patient (invisible on the attenuation-corrected PET)."""
    _, b = _trunk_ab(pt)
    back = pt.offset[1] + pt.s * max(_TRUNK_CY + float(b.max()), 98.0) + 3.0
    return Layer("table", Box([fov_centre_xy[0] - 230, back, -1e5], [fov_centre_xy[0] + 230, back + 8, 1e5]),
                 250, None)


# ----------------------------------------------------------------------------------------------
# Scan geometry
# ----------------------------------------------------------------------------------------------

def _scan_z_range(pt: Patient, fov: str, brain_cut: bool, rng: np.random.Generator) -> tuple[float, float]:
    """Top and bottom slice positions (scanner z, mm) for a field of view."""
    s, zv = pt.s, pt.offset[2]
    air = rng.uniform(15.0, 35.0)
    cut = rng.uniform(20.0, 45.0)
    brain_top = zv + s * (BRAIN_CENTRE[2] + BRAIN_SEMI[2])
    top = brain_top - cut * s if brain_cut else zv + air
    if fov == "head":
        bottom = zv - rng.uniform(265.0, 300.0) * s
    elif fov == "head_upper":
        bottom = top - rng.uniform(550.0, 650.0)
    elif fov == "whole_body":
        bottom = zv - rng.uniform(900.0, 960.0) * s
    else:
        raise ValueError(f"fov must be one of {FIELDS_OF_VIEW}, got {fov!r}")
    return top, bottom


def _ct_grid(pt: Patient, top: float, bottom: float, ct_matrix: int, small_fov: bool,
             rng: np.random.Generator) -> tuple[Grid, np.ndarray, float]:
    """CT grid, its in-plane centre and reconstruction diameter. The spacing is always
    CT_FOV_MM / ct_matrix; ``small_fov`` keeps that spacing and uses fewer voxels, centred
    near the head (a dedicated head-and-neck reconstruction)."""
    sp = _f32(CT_FOV_MM / ct_matrix)
    jitter = rng.uniform(-10.0, 10.0, 2)
    fov_mm = rng.uniform(*SMALL_FOV_MM)
    if small_fov:
        n_xy = int(round(fov_mm / sp))
        centre = pt.offset[:2] + np.array([0.0, 5.0 * pt.s]) + jitter
    else:
        n_xy = int(ct_matrix)
        centre = np.zeros(2)
    n_z = int(math.floor((top - bottom) / CT_SLICE_MM)) + 1
    origin = (_f32(centre[0] - (n_xy - 1) / 2 * sp), _f32(centre[1] - (n_xy - 1) / 2 * sp),
              _f32(top - (n_z - 1) * CT_SLICE_MM))
    grid = Grid(origin, (sp, sp, CT_SLICE_MM), (n_xy, n_xy, n_z))
    return grid, centre, n_xy * sp


def _pet_grid(ct: Grid, rng: np.random.Generator) -> Grid:
    """A coarser PET grid covering the CT's voxel extent with a margin of 1-2 voxels, its
    centre a few mm off the CT's and its slices out of phase with the CT's."""
    sxy = _f32(PET_SPACINGS_XY[int(rng.integers(len(PET_SPACINGS_XY)))])
    sz = _f32(PET_SPACINGS_Z[int(rng.integers(len(PET_SPACINGS_Z)))])
    margin = int(rng.integers(1, 3))
    extent = ct.size[0] * ct.spacing[0]
    n_xy = int(math.ceil(extent / sxy)) + 2 * margin
    centre = np.array([ct.origin[a] + (ct.size[a] - 1) / 2 * ct.spacing[a] for a in (0, 1)])
    centre = centre + rng.uniform(-1, 1, 2) * min(4.0, 0.45 * margin * sxy)
    ct_bottom = ct.origin[2]
    ct_top = ct.origin[2] + (ct.size[2] - 1) * ct.spacing[2]
    z0 = ct_bottom - rng.uniform(0.0, sz)
    n_z = int(math.ceil((ct_top - z0) / sz)) + 1
    origin = (_f32(centre[0] - (n_xy - 1) / 2 * sxy), _f32(centre[1] - (n_xy - 1) / 2 * sxy), _f32(z0))
    return Grid(origin, (sxy, sxy, sz), (n_xy, n_xy, n_z))


# ----------------------------------------------------------------------------------------------
# Image formation
# ----------------------------------------------------------------------------------------------

def _ct_noise_and_fov(ct: np.ndarray, grid: Grid, centre: np.ndarray, diameter: float, sigma: float,
                      rng: np.random.Generator) -> None:
    """Gaussian noise (in chunks of slices, to bound memory), HU clipping, and -1024 outside the
    circular reconstruction field of view, in place."""
    for z0 in range(0, ct.shape[0], _NOISE_CHUNK):
        chunk = ct[z0:z0 + _NOISE_CHUNK]
        noise = rng.standard_normal(chunk.shape, dtype=np.float32)
        noise *= np.float32(sigma)
        noise += chunk
        np.rint(noise, out=noise)
        np.clip(noise, *CT_HU_RANGE, out=noise)
        chunk[...] = noise
    x = grid.origin[0] + grid.spacing[0] * np.arange(grid.size[0]) - centre[0]
    y = grid.origin[1] + grid.spacing[1] * np.arange(grid.size[1]) - centre[1]
    outside = (x[None, :] ** 2 + y[:, None] ** 2) > (diameter / 2) ** 2
    if outside.any():
        ct[:, outside] = CT_OUTSIDE_FOV_HU


def _pet_formation(pet: np.ndarray, grid: Grid, fwhm_mm: float, rel_noise: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Scanner resolution (Gaussian blur of ``fwhm_mm``) then count-like noise whose variance
    grows with the signal (std = rel_noise * sqrt(SUV)), spatially correlated as after a
    reconstruction post-filter; clipped at 0."""
    sigma_vox = [fwhm_mm / 2.3548 / sp for sp in (grid.spacing[2], grid.spacing[1], grid.spacing[0])]
    pet = ndimage.gaussian_filter(pet, sigma_vox, mode="nearest", truncate=3.0)
    noise = ndimage.gaussian_filter(rng.standard_normal(pet.shape, dtype=np.float32), 0.7, truncate=3.0)
    noise /= max(float(noise.std()), 1e-6)
    pet += np.float32(rel_noise) * np.sqrt(np.maximum(pet, 0.0)) * noise
    np.maximum(pet, 0.0, out=pet)
    return pet.astype(np.float32, copy=False)


def make_phantom(seed: int, fov: str = "head_upper", *, case_id: str | None = None,
                 brain_cut: bool = False, small_fov: bool = False, flip_xy: bool = False,
                 n_nodes: int | None = None, ct_matrix: int = 512) -> PhantomCase:
    """One reproducible synthetic PET/CT case.

    ``fov``: "head" (vertex to about the clavicles), "head_upper" (to mid-abdomen) or
    "whole_body" (vertex to the proximal thighs, bladder included). ``brain_cut``: the scan's top
    slice lies inside the brain. ``small_fov``: a CT reconstruction of 200-240 mm at the usual
    spacing (fewer voxels), so a 256 mm window must be padded. ``flip_xy``: CT, PET and label
    stored with direction diag(-1,-1,1), the same physical content. ``n_nodes``: 0-4 lymph nodes
    (random when None). ``ct_matrix``: in-plane CT voxels for the 500 mm field of view.
    """
    if fov not in FIELDS_OF_VIEW:
        raise ValueError(f"fov must be one of {FIELDS_OF_VIEW}, got {fov!r}")
    if int(ct_matrix) < 64:
        raise ValueError(f"ct_matrix must be at least 64, got {ct_matrix}")
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    seq = np.random.SeedSequence(int(seed))
    rng_anat, rng_lesion, rng_scan, rng_ct, rng_pet = (np.random.default_rng(c) for c in seq.spawn(5))

    pt = _draw_patient(rng_anat)
    lesions = _draw_lesions(pt, rng_lesion, n_nodes)
    anatomy = (_body_layers(pt) + _thorax_abdomen_layers(pt, rng_anat) + _skeleton_layers(pt)
               + _airway_layers(pt) + _head_layers(pt))

    top, bottom = _scan_z_range(pt, fov, brain_cut, rng_scan)
    ct_grid, fov_centre, fov_diameter = _ct_grid(pt, top, bottom, ct_matrix, small_fov, rng_scan)
    pet_grid = _pet_grid(ct_grid, rng_scan)
    fwhm = rng_scan.uniform(6.0, 7.0)
    rel_noise = rng_scan.uniform(0.08, 0.2)
    ct_sigma = rng_scan.uniform(6.0, 18.0)
    layers = anatomy + [_table_layer(pt, fov_centre)] + lesions.layers
    timings["setup"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ct = rasterise_ct(layers, ct_grid)
    _ct_noise_and_fov(ct, ct_grid, fov_centre, fov_diameter, ct_sigma, rng_ct)
    timings["ct"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    label = rasterise_label(layers, ct_grid)
    timings["label"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pet = _pet_formation(rasterise_pet(layers, pet_grid), pet_grid, fwhm, rel_noise, rng_pet)
    timings["pet"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    case_id = case_id or f"PHANTOM-{int(seed):03d}"
    ct_img = ct_grid.to_image(ct, flip_xy)
    pet_img = pet_grid.to_image(pet, flip_xy)
    label_img = ct_grid.to_image(label, flip_xy)
    timings["images"] = time.perf_counter() - t0

    s, zv = pt.s, pt.offset[2]
    brain_centre = pt.p(*BRAIN_CENTRE)
    info = {
        "case_id": case_id, "seed": int(seed), "fov": fov,
        "flags": {"brain_cut": bool(brain_cut), "small_fov": bool(small_fov), "flip_xy": bool(flip_xy)},
        "n_nodes": len(lesions.summary["nodes"]), "ct_matrix": int(ct_matrix),
        "patient": {"scale": float(s), "build": float(pt.w), "fat_mm": float(pt.fat),
                    "head_offset_mm": [float(v) for v in pt.offset[:2]]},
        "vertex_z_mm": float(zv),
        "brain_centre_mm": [float(v) for v in brain_centre],
        "brain_z_range_mm": [float(zv + s * BRAIN_ZMIN), float(zv + s * (BRAIN_CENTRE[2] + BRAIN_SEMI[2]))],
        "scan_z_range_mm": [float(ct_grid.origin[2]), float(top)],
        "ct": {"size": list(ct_grid.size), "spacing": list(ct_grid.spacing), "origin": list(ct_grid.origin),
               "fov_diameter_mm": float(fov_diameter), "noise_hu": float(ct_sigma)},
        "pet": {"size": list(pet_grid.size), "spacing": list(pet_grid.spacing), "origin": list(pet_grid.origin),
                "fwhm_mm": float(fwhm), "relative_noise": float(rel_noise)},
        "suv": {k: float(v) for k, v in pt.suv.items()},
        **lesions.summary,
        "timings_s": {k: round(v, 4) for k, v in timings.items()},
    }
    return PhantomCase(case_id, ct_img, pet_img, label_img, info)


def write_case(case: PhantomCase, root: str | os.PathLike) -> dict[str, pathlib.Path]:
    """Write a case with HECKTOR 2025 names: ROOT/CASE/CASE__CT.nii.gz, CASE__PT.nii.gz, CASE.nii.gz."""
    folder = pathlib.Path(root) / case.case_id
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"ct": folder / f"{case.case_id}__CT.nii.gz",
             "pet": folder / f"{case.case_id}__PT.nii.gz",
             "label": folder / f"{case.case_id}.nii.gz"}
    for key, img in (("ct", case.ct), ("pet", case.pet), ("label", case.label)):
        sitk.WriteImage(img, str(paths[key]), useCompression=True)
    return paths


if __name__ == "__main__":  # generation timings per field of view
    for _fov, _kw in (("head", {}), ("head_upper", {}), ("whole_body", {}), ("head", {"brain_cut": True}),
                      ("head_upper", {"small_fov": True}), ("whole_body", {"flip_xy": True})):
        _t = time.perf_counter()
        _c = make_phantom(7, _fov, **_kw)
        _dt = time.perf_counter() - _t
        print(f"{_fov:11s} {str(_kw):22s} CT {_c.ct.GetSize()} PET {_c.pet.GetSize()} "
              f"nodes {_c.info['n_nodes']}  {_dt:5.2f} s  {_c.info['timings_s']}")
