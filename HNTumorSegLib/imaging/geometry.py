"""Image geometry: the analysis lattice, sub-grids of it, and LPS orientation.

Everything that places voxels in patient space goes through SimpleITK here, so that the crop
window, the network input and the restored mask all agree to the voxel with the CT the user
loaded. Index order in this module is SimpleITK's (x, y, z); numpy arrays are (z, y, x).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Sequence

import numpy as np
import SimpleITK as sitk

#: Spacing of the analysis lattice in mm (x, y, z): paper section 2.2.
LATTICE_SPACING = (1.0, 1.0, 3.0)
#: Spacing and origin are snapped to multiples of this many mm (2^-24, about 6e-8 mm) before any
#: resampling. Binary, not decimal: a dyadic spacing such as 500/512 = 0.9765625 mm lies exactly on the
#: grid (a decimal grid would put it on a rounding midpoint), and noise of 1e-13 mm snaps back to it.
POSITION_QUANTUM_MM = 2.0 ** -24
#: Direction cosines are snapped to multiples of this (2^-32, about 2e-10).
DIRECTION_QUANTUM = 2.0 ** -32


def _snap(values: Sequence[float], quantum: float) -> tuple[float, ...]:
    return tuple(float(v) for v in np.round(np.asarray(values, float) / quantum) * quantum)


def voxel_volume_ml(spacing: Sequence[float]) -> float:
    """Volume of one voxel in mL from its spacing in mm (any axis order)."""
    return float(np.prod(spacing)) / 1000.0


@dataclass(frozen=True)
class Geometry:
    """Size, spacing, origin and direction of a 3D grid (SimpleITK conventions)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]  # 9 values, row-major

    @classmethod
    def of(cls, image: sitk.Image) -> "Geometry":
        return cls(
            tuple(int(v) for v in image.GetSize()),
            tuple(float(v) for v in image.GetSpacing()),
            tuple(float(v) for v in image.GetOrigin()),
            tuple(float(v) for v in image.GetDirection()),
        )

    @classmethod
    def from_dict(cls, d: dict) -> "Geometry":
        return cls(tuple(int(v) for v in d["size"]), tuple(float(v) for v in d["spacing"]),
                   tuple(float(v) for v in d["origin"]), tuple(float(v) for v in d["direction"]))

    def to_dict(self) -> dict:
        return {"size": list(self.size), "spacing": list(self.spacing),
                "origin": list(self.origin), "direction": list(self.direction)}

    @property
    def matrix(self) -> np.ndarray:
        """Direction times spacing: maps an (x, y, z) index step to a physical step in mm."""
        return np.asarray(self.direction, float).reshape(3, 3) * np.asarray(self.spacing, float)

    def index_to_point(self, index: Sequence[float]) -> np.ndarray:
        return np.asarray(self.origin, float) + self.matrix @ np.asarray(index, float)

    def point_to_index(self, point: Sequence[float]) -> np.ndarray:
        return np.linalg.solve(self.matrix, np.asarray(point, float) - np.asarray(self.origin, float))

    def subgrid(self, start: Sequence[int], size: Sequence[int]) -> "Geometry":
        """The grid of ``size`` voxels starting at index ``start`` (may lie outside this grid)."""
        return Geometry(tuple(int(v) for v in size), self.spacing,
                        tuple(float(v) for v in self.index_to_point(start)), self.direction)

    def corners(self) -> np.ndarray:
        """Physical positions of the 8 corner voxel centres, shape (8, 3)."""
        hi = [max(n - 1, 0) for n in self.size]
        idx = np.array([[i, j, k] for i in (0, hi[0]) for j in (0, hi[1]) for k in (0, hi[2])], float)
        return np.asarray(self.origin, float) + idx @ self.matrix.T

    def reference(self, pixel_id: int = sitk.sitkUInt8) -> sitk.Image:
        """An image on this grid (for resampling onto it); allocation is lazy in size only."""
        img = sitk.Image([int(v) for v in self.size], pixel_id)
        self.apply(img)
        return img

    def snapped(self) -> "Geometry":
        """This grid with spacing, origin and direction on a fine binary grid (see POSITION_QUANTUM_MM).

        Why: the same CT reaches us with geometry read from a file or from Slicer's IJK-to-RAS matrix,
        which carries ~1e-16 relative noise (3.90625 becomes 3.9062499999999996). Where a voxel centre
        of one grid lies exactly halfway between two of another (1.5 mm CT voxels on the 1 mm lattice),
        nearest-neighbour resampling picks a side by that noise; snapped, both arrive as the same numbers
        and give the same labels. The change is below 1e-7 mm.
        """
        snapped_direction = _snap(self.direction, DIRECTION_QUANTUM)
        return Geometry(self.size, _snap(self.spacing, POSITION_QUANTUM_MM), _snap(self.origin, POSITION_QUANTUM_MM),
                        tuple(0.0 if v == 0 else v for v in snapped_direction))

    def apply(self, image: sitk.Image) -> sitk.Image:
        image.SetSpacing(self.spacing)
        image.SetOrigin(self.origin)
        image.SetDirection(self.direction)
        return image


def snap_geometry(image: sitk.Image) -> sitk.Image:
    """``image`` on its :meth:`Geometry.snapped` grid: the same object when nothing changes (the usual
    case for a file), else a copy, so the caller's image is never modified."""
    geometry = Geometry.of(image)
    snapped = geometry.snapped()
    if snapped == geometry:
        return image
    return snapped.apply(sitk.Image(image))


def orient_lps(image: sitk.Image) -> sitk.Image:
    """Permute and flip axes so the direction is (closest to) identity in LPS: z grows toward the head."""
    return sitk.DICOMOrient(image, "LPS")


def analysis_lattice(ct_oriented: Geometry, spacing: Sequence[float] = LATTICE_SPACING) -> Geometry:
    """The 1 x 1 x 3 mm lattice: the oriented CT's origin and direction, size round(n * s / s')."""
    size = tuple(int(round(n * s / t)) for n, s, t in zip(ct_oriented.size, ct_oriented.spacing, spacing))
    return Geometry(size, tuple(float(v) for v in spacing), ct_oriented.origin, ct_oriented.direction)


def overlap_box(target: Geometry, source: Geometry, margin: int = 0) -> tuple[list[int], list[int]] | None:
    """Index box of ``source`` that covers every voxel centre of ``target``, plus ``margin`` voxels.

    Returns (start, size) clipped to ``source``, or None when they do not overlap. Used to
    crop an input before resampling: SimpleITK's B-spline prefilter runs over the whole input,
    so handing it only the part that matters makes resampling an order of magnitude cheaper.
    """
    idx = np.array([source.point_to_index(p) for p in target.corners()])
    lo = np.floor(idx.min(axis=0)).astype(int) - margin
    hi = np.ceil(idx.max(axis=0)).astype(int) + margin
    lo = np.maximum(lo, 0)
    hi = np.minimum(hi, np.asarray(source.size) - 1)
    if np.any(hi < lo):
        return None
    return lo.tolist(), (hi - lo + 1).tolist()


def physical_box(g: Geometry) -> tuple[np.ndarray, np.ndarray]:
    """The lowest and highest patient (LPS, mm) coordinates of a grid's bounding box, voxel edges included."""
    half = np.abs(g.matrix).sum(axis=1) / 2.0
    c = g.corners()
    return c.min(axis=0) - half, c.max(axis=0) + half


def physical_overlap(a: Geometry, b: Geometry) -> bool:
    """Whether the physical bounding boxes (voxel edges included) of two grids intersect."""
    alo, ahi = physical_box(a)
    blo, bhi = physical_box(b)
    return bool(np.all(alo < bhi) and np.all(blo < ahi))


def axial_overlap_mm(a: Geometry, b: Geometry) -> float:
    """How far (mm) the bounding boxes of two grids overlap along the patient's head-foot axis (LPS z)."""
    alo, ahi = physical_box(a)
    blo, bhi = physical_box(b)
    return max(0.0, float(min(ahi[2], bhi[2]) - max(alo[2], blo[2])))


def slices_up_to_top(image: sitk.Image, grid: Geometry) -> int:
    """How many of ``grid``'s slices, counted from its first (index z growing toward the head), lie at or
    below the top of ``image``'s field of view: ``grid.size[2]`` when the image reaches the grid's top.

    Why: the crop reads the PET's top as the top of the patient's uptake (paper eq. 1 and 9), on the CT's
    lattice; a PET whose field of view ends below the CT's top leaves the lattice's upper slices as padding, and
    its cut top edge then passed for the top of the head. A slice lies at or below the top when its in-plane
    centre is at most half a voxel above the image's top voxel centres along the image's head-foot axis (ITK's
    rule of :func:`outside_buffer`); both grids LPS-oriented (``orient_lps``), z toward the head.
    """
    n_z = int(grid.size[2])
    centre = (np.asarray(grid.size[:2], float) - 1) / 2
    points = np.array([grid.index_to_point((centre[0], centre[1], k)) for k in range(n_z)])
    g = Geometry.of(image)
    along_z = np.linalg.solve(g.matrix, (points - np.asarray(g.origin, float)).T)[2]
    covered = np.flatnonzero(along_z <= g.size[2] - 0.5 + 1e-6)
    return int(covered[-1]) + 1 if covered.size else 0


def outside_buffer(image: sitk.Image, grid: Geometry) -> np.ndarray | None:
    """Where ``grid``'s voxels fall outside ``image``'s field of view, as a (Z, Y, X) bool array, or None
    when none does.

    "Outside" is ITK's own rule, the one :func:`resample` applies before it writes its default value:
    a point more than half a voxel beyond the image's outer voxel centres. So this marks exactly the
    voxels a resampling of ``image`` onto ``grid`` filled with padding rather than data. When the eight
    corners of ``grid`` lie inside (the field of view is a box in index space, so then all of ``grid``
    does), nothing is resampled.
    """
    size = np.asarray(image.GetSize()[:3], dtype=float)
    corners = itertools.product(*[(0, int(n) - 1) for n in grid.size])
    index = np.array([image.TransformPhysicalPointToContinuousIndex([float(v) for v in grid.index_to_point(c)])
                      for c in corners])
    if np.all(index >= -0.5) and np.all(index <= size - 0.5):
        return None
    ones = sitk.Image(image.GetSize()[:3], sitk.sitkUInt8) + 1
    ones.CopyInformation(image)
    inside = resample(ones, grid, sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayViewFromImage(inside) == 0


def resample(image: sitk.Image, grid: Geometry, interpolator: int, default: float,
             pixel_id: int | None = None) -> sitk.Image:
    """Resample ``image`` onto ``grid`` (identity transform: the images are pre-registered)."""
    f = sitk.ResampleImageFilter()
    f.SetSize([int(v) for v in grid.size])
    f.SetOutputSpacing(grid.spacing)
    f.SetOutputOrigin(grid.origin)
    f.SetOutputDirection(grid.direction)
    f.SetInterpolator(interpolator)
    f.SetDefaultPixelValue(float(default))
    f.SetOutputPixelType(image.GetPixelID() if pixel_id is None else pixel_id)
    return f.Execute(image)
