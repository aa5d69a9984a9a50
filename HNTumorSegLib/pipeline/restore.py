"""Restoration to native space: paper section 2.2, "Provenance logging and restoration".

The predicted (112, 256, 256) mask goes back into a zero lattice at the crop window (padding
dropped) and is resampled nearest-neighbour onto the original CT grid, so the result has the
CT's exact size, spacing, origin and direction and can be overlaid, edited and exported. The
sampling itself runs on the snapped CT grid (:meth:`geometry.Geometry.snapped`), so geometry noise
of ~1e-16 (Slicer's matrices) cannot decide a nearest-neighbour tie.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from HNTumorSegLib.pipeline.crop import WINDOW_ZYX, CropWindow
from HNTumorSegLib.imaging.geometry import Geometry, overlap_box, resample


def restore(mask: np.ndarray, provenance: dict) -> sitk.Image:
    """Mask (112, 256, 256) in {0, 1, 2} on the window to a uint8 label image on the original CT grid."""
    mask = np.asarray(mask)
    if mask.shape != tuple(WINDOW_ZYX):
        raise ValueError(f"mask shape {mask.shape} is not the window shape {tuple(WINDOW_ZYX)}")
    window = CropWindow(**provenance["crop"])
    lattice = Geometry.from_dict(provenance["resampled"])
    real = window.clipped(tuple(reversed(lattice.size)))
    dz, dy, dx = real.z1 - window.z1, real.y1 - window.y1, real.x1 - window.x1
    nx, ny, nz = real.size_xyz
    # Only the real part of the window carries predictions; the rest of the lattice is zero, and
    # nearest-neighbour resampling with default 0 is the same as pasting into a zero lattice.
    part = sitk.GetImageFromArray(np.ascontiguousarray(mask[dz:dz + nz, dy:dy + ny, dx:dx + nx],
                                                       dtype=np.uint8))
    lattice.subgrid(real.start_xyz, real.size_xyz).apply(part)
    # Sampled on the snapped CT grid (as preprocessing saw it, so geometry noise cannot flip a tie),
    # returned with the CT's exact geometry.
    original = Geometry.from_dict(provenance["original_ct"])
    return original.apply(resample(part, original.snapped(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8))


def restore_values(image: sitk.Image, provenance: dict, scale: float = 1.0,
                   pixel_id: int = sitk.sitkFloat32) -> sitk.Image:
    """A float image on the analysis window (probabilities, uncertainty) linearly resampled onto the CT grid.

    0 outside the window: the network never looked there. Sampled on the snapped CT grid, returned
    with the CT's exact geometry, as :func:`restore` does for the label. ``scale`` multiplies the
    values; an integer ``pixel_id`` rounds them half up (the uncertainty in percent, for display).

    Why only a box: the window is a tenth of a whole-body CT grid. Resampled, scaled and rounded over
    the whole grid, a uint8 map took 1.5 s on a 2-core CPU (SimpleITK's Clamp, Multiply, Round and Cast
    each a pass over 84 M voxels); the same values come from resampling the CT voxels that can see the
    window (its voxels and half a voxel around them, ITK's rule for linear interpolation at a border)
    and pasting them into zeros.
    """
    original = Geometry.from_dict(provenance["original_ct"])
    grid = original.snapped()
    window = Geometry.of(image)
    # The window's grid one voxel wider on every side: its voxel centres cover the half voxel beyond the
    # border that linear interpolation still reads; the CT voxels beyond that box get the default 0.
    wider = window.subgrid((-1, -1, -1), tuple(n + 2 for n in window.size))
    box = overlap_box(wider, grid, margin=1)
    dtype = sitk.GetArrayViewFromImage(sitk.Image([1, 1, 1], pixel_id)).dtype
    out = np.zeros(tuple(reversed(grid.size)), dtype)
    if box is not None:
        start, size = box
        values = sitk.GetArrayFromImage(resample(image, grid.subgrid(start, size), sitk.sitkLinear, 0.0,
                                                 sitk.sitkFloat32))
        if scale != 1.0:
            values *= np.float32(scale)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            values = np.clip(np.floor(values + 0.5), info.min, info.max)
        (x0, y0, z0), (nx, ny, nz) = start, size
        out[z0:z0 + nz, y0:y0 + ny, x0:x0 + nx] = values
    return original.apply(sitk.GetImageFromArray(out))
