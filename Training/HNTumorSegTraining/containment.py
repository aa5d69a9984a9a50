"""How much of each target the 256 x 256 x 112 window loses (paper Table 2).

The paper chose the window as the smallest that contains both targets fully in every case.
Whether that holds for a data set is measured on the ORIGINAL label (native CT grid), exactly
and from geometry alone: a native label voxel is kept iff its physical centre lies inside the
window box (continuous window index in [-0.5, size - 0.5) on every axis) and inside the
resampled 1 x 1 x 3 mm lattice (the part of the window past the lattice is padding). Computing
it this way, rather than counting voxels of the resampled label, does not depend on how nearest-
neighbour resampling treats thin structures or voxels of a different size.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from HNTumorSegLib import LABELS
from HNTumorSegLib.imaging.geometry import Geometry


def inside_grid(grid: Geometry, points: np.ndarray) -> np.ndarray:
    """Whether each physical point (n, 3) lies in the box covered by the grid's voxels."""
    index = np.linalg.solve(grid.matrix, (points - np.asarray(grid.origin, float)).T).T
    size = np.asarray(grid.size, float)
    return np.all((index >= -0.5) & (index < size - 0.5), axis=1)


def lost_voxels(label: sitk.Image, provenance: dict) -> dict:
    """Per target ("GTVp", "GTVn"): voxels in the native label, voxels lost outside the window, mL lost.

    ``provenance`` is the one :func:`HNTumorSegLib.pipeline.preprocess.preprocess` returned for the case
    (its "window" and "resampled" grids).
    """
    window = Geometry.from_dict(provenance["window"])
    lattice = Geometry.from_dict(provenance["resampled"])
    native = Geometry.of(label)
    voxel_ml = abs(float(np.linalg.det(native.matrix))) / 1000.0
    array = sitk.GetArrayViewFromImage(label)
    result = {}
    for value, name in LABELS.items():
        zyx = np.nonzero(array == value)
        xyz = np.stack(zyx[::-1], axis=1).astype(float)
        points = np.asarray(native.origin, float) + xyz @ native.matrix.T
        kept = int(np.count_nonzero(inside_grid(window, points) & inside_grid(lattice, points)))
        lost = len(xyz) - kept
        result[name] = {"voxels": len(xyz), "lost_voxels": lost, "lost_ml": lost * voxel_ml}
    return result


def summarise(per_case: dict[str, dict]) -> dict:
    """Table-2-like summary: cases keeping all GTVp / all GTVn / both, and the cases losing voxels."""
    names = list(LABELS.values())
    losing = []
    for case_id, c in per_case.items():
        if any(c[n]["lost_voxels"] for n in names):
            losing.append({"case_id": case_id, **{f"{n}_{k}": c[n][k] for n in names
                                                  for k in ("voxels", "lost_voxels", "lost_ml")}})
    return {
        "cases": len(per_case),
        **{f"all_{n}_inside": sum(1 for c in per_case.values() if c[n]["lost_voxels"] == 0) for n in names},
        "all_inside": len(per_case) - len(losing),
        "satisfied": not losing,
        "cases_losing_voxels": losing,
        "rule": "native label voxel kept iff its centre lies inside the window box and the resampled lattice",
    }
