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
from HNTumorSegLib.imaging.geometry import Geometry, resample


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


def restore_values(image: sitk.Image, provenance: dict) -> sitk.Image:
    """A float image on the analysis window (probabilities, uncertainty) linearly resampled onto the CT grid.

    0 outside the window: the network never looked there. Sampled on the snapped CT grid, returned
    with the CT's exact geometry, as :func:`restore` does for the label.
    """
    original = Geometry.from_dict(provenance["original_ct"])
    return original.apply(resample(image, original.snapped(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))
