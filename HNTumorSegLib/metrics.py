"""Per-structure figures a clinician reads off a contour, and overlap scores against a reference.

Statistics are taken on the native CT grid (where the contour lives and is edited), with the
PET resampled linearly onto that grid inside the contour's bounding box only.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from . import LABELS
from .geometry import Geometry
from .preprocess import resample_in_window


def dice(prediction: np.ndarray, reference: np.ndarray, label: int) -> float:
    """Dice of one label. Rule for empty masks: both empty scores 1.0, one empty scores 0.0."""
    p, r = prediction == label, reference == label
    total = int(p.sum()) + int(r.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, r).sum()) / total


def structure_statistics(label: sitk.Image, pet: sitk.Image) -> dict[str, dict]:
    """Volume (mL), SUVmax, SUVmean and TLG (SUVmean x volume) of each labelled structure.

    ``label`` is on the CT grid; ``pet`` in SUV on any grid that covers it. Empty structures
    report volume 0 and null SUV figures.
    """
    lab = sitk.GetArrayViewFromImage(label)
    geom = Geometry.of(label)
    voxel_ml = float(np.prod(geom.spacing)) / 1000.0
    stats: dict[str, dict] = {}
    present = np.nonzero(lab)
    pet_box = None
    if present[0].size:
        lo = [int(a.min()) for a in present]  # (z, y, x)
        hi = [int(a.max()) + 1 for a in present]
        start_xyz, size_xyz = lo[::-1], [h - l for l, h in zip(lo, hi)][::-1]
        box_geom = geom.subgrid(start_xyz, size_xyz)
        pet_f = pet if pet.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(pet, sitk.sitkFloat32)
        pet_box = sitk.GetArrayFromImage(resample_in_window(pet_f, box_geom, sitk.sitkLinear, 0.0,
                                                            sitk.sitkFloat32, margin=2))
        lab_box = lab[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    for value, name in LABELS.items():
        if pet_box is None:
            n = 0
        else:
            sel = lab_box == value
            n = int(sel.sum())
        if n == 0:
            stats[name] = {"label": value, "voxels": 0, "volume_ml": 0.0, "suv_max": None,
                           "suv_mean": None, "tlg": None}
            continue
        suv = pet_box[sel]
        volume = n * voxel_ml
        mean = float(suv.mean(dtype=np.float64))
        stats[name] = {"label": value, "voxels": n, "volume_ml": volume, "suv_max": float(suv.max()),
                       "suv_mean": mean, "tlg": mean * volume}
    return stats
