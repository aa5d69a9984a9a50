"""Grids, analytic solids in scanner millimetres, painted layers and their rasterisation.

Every image of a phantom is rasterised from one list of :class:`Layer` objects on its own
:class:`Grid`: the CT with hard masks in HU, the PET with anti-aliased masks in SUV, the label with
the hard masks of the lesions. Shapes take broadcastable coordinates x (1,1,nx), y (1,ny,1),
z (nz,1,1) and are valid everywhere, so a shape can also be evaluated on another's region.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk

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
# Shapes added for the centre styles: irregular solids, warped (posed) solids, volumes
# ----------------------------------------------------------------------------------------------

class Blob(Ellipsoid):
    """An ellipsoid whose radius varies with direction: inside where rho <= 1 + amp * n(d), rho
    the ellipsoid's normalised radius and n(d) a sum of random plane waves on the unit sphere with
    |n| <= 1. The outline is irregular (infiltrative) yet star-shaped about the centre, so the
    solid is always one connected piece."""

    def __init__(self, center, semi, rot, amp: float, directions, frequencies, phases, weights, **clip):
        super().__init__(center, semi, rot, **clip)
        self.amp = float(amp)
        self.dirs = np.asarray(directions, float).reshape(-1, 3)
        self.freqs = np.asarray(frequencies, float).ravel()
        self.phases = np.asarray(phases, float).ravel()
        w = np.abs(np.asarray(weights, float).ravel())
        self.weights = w / max(float(w.sum()), 1e-12)

    def _raw_bounds(self):
        half_r = self.r * (1.0 + self.amp)
        if self.rot is None:
            half = half_r
        else:
            half = np.sqrt(((self.rot * half_r[None, :]) ** 2).sum(axis=1))
        return self.c - half, self.c + half

    def _rho_and_radius(self, x, y, z):
        u, v, w = self._local(x, y, z)
        u, v, w = u / self.r[0], v / self.r[1], w / self.r[2]
        rho = np.sqrt(u * u + v * v + w * w)
        inv = 1.0 / np.maximum(rho, 1e-9)
        n = 0.0
        for d, f, p, a in zip(self.dirs, self.freqs, self.phases, self.weights):
            n = n + a * np.cos(f * (d[0] * u + d[1] * v + d[2] * w) * inv + p)
        return rho, 1.0 + self.amp * n

    def _inside(self, x, y, z):
        rho, radius = self._rho_and_radius(x, y, z)
        return rho <= radius

    def _sdf(self, x, y, z):
        rho, radius = self._rho_and_radius(x, y, z)
        return (rho - radius) * float(self.r.min())


class Warped(Shape):
    """``inner`` moved by a smooth warp of the (y, z) plane (a neck posture, see
    :class:`~HNTumorSegLib.phantom.anatomy.Posture`): evaluated by pulling the output coordinates
    back through ``warp.inverse``; x is untouched, so the coordinates stay broadcastable."""

    def __init__(self, inner: Shape, warp):
        super().__init__()
        self.inner, self.warp = inner, warp

    def _raw_bounds(self):
        lo, hi = self.inner.bounds()
        t = np.linspace(0.0, 1.0, 6)
        gy, gz = np.meshgrid(lo[1] + t * (hi[1] - lo[1]), lo[2] + t * (hi[2] - lo[2]), indexing="ij")
        pts = np.stack([np.zeros(gy.size), gy.ravel(), gz.ravel()], axis=1)
        out = self.warp.forward(pts)
        pad = 0.02 * float(np.max(hi[1:] - lo[1:])) + 1.0  # the warp bends box edges slightly
        return (np.array([lo[0], out[:, 1].min() - pad, out[:, 2].min() - pad]),
                np.array([hi[0], out[:, 1].max() + pad, out[:, 2].max() + pad]))

    def _inside(self, x, y, z):
        y0, z0 = self.warp.inverse(y, z)
        return self.inner.inside(x, y0, z0)

    def _sdf(self, x, y, z):
        y0, z0 = self.warp.inverse(y, z)
        return self.inner.sdf(x, y0, z0)


def union_volume_ml(shapes: Sequence[Shape], step_mm: float | None = None) -> float:
    """Volume (mL) of the union of ``shapes``, counted on a local fine grid (about 300k voxels)."""
    bounds = [s.bounds() for s in shapes]
    lo = np.min([b[0] for b in bounds], axis=0)
    hi = np.max([b[1] for b in bounds], axis=0)
    if step_mm is None:
        step_mm = max(0.25, float(np.prod(hi - lo) / 3e5) ** (1.0 / 3.0))
    size = tuple(int(math.ceil((hi[a] - lo[a]) / step_mm)) + 1 for a in range(3))
    grid = Grid(tuple(float(v) for v in lo), (step_mm,) * 3, size)
    mask = np.zeros(grid.shape_zyx, bool)
    for shape in shapes:
        reg = grid.region(*shape.bounds())
        if reg is None:
            continue
        (sz, sy, sx), x, y, z = reg
        mask[sz, sy, sx] |= shape.inside(x, y, z)
    return float(mask.sum()) * step_mm ** 3 / 1000.0
