"""Between a Slicer scene (RAS, IJK-to-RAS matrices, parent transforms) and SimpleITK (LPS).

Why: Slicer stores a volume as a voxel array plus a 4 x 4 IJK-to-RAS matrix and may place it
under a parent transform; the pipeline reads SimpleITK images in LPS. Doing the conversion here,
in plain numpy, lets the volume go to the worker in *world* coordinates (what the user sees,
transforms included) and lets pytest check the arithmetic. A transform that shears the voxel
grid cannot be expressed as an image geometry: that is a clear error, never a silent resize.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import SimpleITK as sitk

from HNTumorSegLib.errors import InputError
from HNTumorSegLib.imaging.geometry import Geometry

#: RAS <-> LPS: flip the first two axes (its own inverse).
RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0])
#: Largest |cos| between two voxel axes still taken as orthogonal.
ORTHOGONALITY_TOL = 1e-4


def world_ijk_to_ras(ijk_to_ras: np.ndarray, parent_to_world: Optional[np.ndarray] = None) -> np.ndarray:
    """IJK to world RAS: the volume's matrix, then its (linear) parent transform to world."""
    m = np.asarray(ijk_to_ras, float).reshape(4, 4)
    if parent_to_world is not None:
        m = np.asarray(parent_to_world, float).reshape(4, 4) @ m
    return m


def geometry_from_ijk_to_ras(ijk_to_ras: np.ndarray, size_xyz: Sequence[int], name: str = "volume") -> Geometry:
    """The LPS image geometry (spacing, origin, direction) of a voxel grid given in RAS."""
    m = np.asarray(ijk_to_ras, float).reshape(4, 4)
    if not np.allclose(m[3], [0, 0, 0, 1]):
        raise InputError(f"{name}: its IJK-to-RAS matrix is projective, not an image geometry")
    linear = RAS_TO_LPS @ m[:3, :3]
    spacing = np.linalg.norm(linear, axis=0)
    if np.any(spacing <= 0) or abs(np.linalg.det(linear)) < 1e-12:
        raise InputError(f"{name}: its voxel axes are degenerate (a transform collapses the volume)")
    direction = linear / spacing
    gram = direction.T @ direction
    if np.max(np.abs(gram - np.eye(3))) > ORTHOGONALITY_TOL:
        raise InputError(f"{name}: its parent transform shears the voxel grid; harden it with resampling "
                         "(Resample Scalar/Vector/DWI Volume) or remove it before segmenting")
    origin = RAS_TO_LPS @ m[:3, 3]
    return Geometry(tuple(int(v) for v in size_xyz), tuple(float(v) for v in spacing),
                    tuple(float(v) for v in origin), tuple(float(v) for v in direction.reshape(-1)))


def ijk_to_ras_from_geometry(geometry: Geometry) -> np.ndarray:
    """The 4 x 4 IJK-to-RAS matrix of an LPS image geometry (inverse of the above)."""
    m = np.eye(4)
    m[:3, :3] = RAS_TO_LPS @ geometry.matrix
    m[:3, 3] = RAS_TO_LPS @ np.asarray(geometry.origin, float)
    return m


def image_from_volume_array(array_kji: np.ndarray, ijk_to_ras: np.ndarray,
                            parent_to_world: Optional[np.ndarray] = None, name: str = "volume") -> sitk.Image:
    """A SimpleITK image of a Slicer voxel array (axes k, j, i) placed in world coordinates."""
    array = np.asarray(array_kji)
    if array.ndim != 3:
        raise InputError(f"{name}: a 3D scalar volume is needed, got an array of shape {list(array.shape)}")
    geometry = geometry_from_ijk_to_ras(world_ijk_to_ras(ijk_to_ras, parent_to_world),
                                        array.shape[::-1], name)
    image = sitk.GetImageFromArray(np.ascontiguousarray(array))
    return geometry.apply(image)


@dataclass(frozen=True)
class Box:
    """An oriented box in RAS: centre (mm), edge lengths (mm) and the unit axes as columns."""

    center_ras: tuple[float, float, float]
    size_mm: tuple[float, float, float]
    axes_ras: tuple[tuple[float, float, float], ...]  # 3 x 3, columns are the box's axes

    def object_to_world(self) -> np.ndarray:
        """4 x 4 matrix: the box's own frame (axes, centre) to RAS, as markups ROIs take it."""
        m = np.eye(4)
        m[:3, :3] = np.asarray(self.axes_ras, float)
        m[:3, 3] = self.center_ras
        return m


def grid_box(geometry: Geometry) -> Box:
    """The box covering a grid's voxels edge to edge (not centre to centre), in RAS."""
    size = np.asarray(geometry.size, float)
    centre_index = (size - 1.0) / 2.0
    centre = RAS_TO_LPS @ geometry.index_to_point(centre_index)
    axes = RAS_TO_LPS @ np.asarray(geometry.direction, float).reshape(3, 3)
    extent = size * np.asarray(geometry.spacing, float)
    return Box(tuple(float(v) for v in centre), tuple(float(v) for v in extent),
               tuple(tuple(float(v) for v in row) for row in axes))


def analysis_window_box(provenance: dict) -> Box:
    """The 256 x 256 x 112 voxel window the network saw, from a run's provenance, in RAS."""
    return grid_box(Geometry.from_dict(provenance["window"]))
