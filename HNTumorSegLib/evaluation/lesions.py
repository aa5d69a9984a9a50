"""Every lesion on its own: the report's lesion table (one row per 26-connected component).

Why: HECKTOR scores nodes one by one (F1agg), and an oncologist correcting a result works node by
node: "the 0.4 mL left level II node at 55 % confidence" is what to look at, not a GTVn total.
Each row holds what identifies a lesion and what is measured on it:

- ``id`` (``GTVn_1`` is the largest node), ``structure``, ``index``;
- ``volume_ml``, ``suv_max``, ``suv_mean``, ``tlg`` (the PET in SUV, linearly resampled onto the
  label's grid, as :func:`~HNTumorSegLib.evaluation.metrics.structure_statistics` does);
- ``centroid_mm``: the centre of its voxels in patient coordinates (LPS, mm: DICOM's and
  SimpleITK's; ``hntumorseg edit`` takes points in the same coordinates);
- ``side``: the patient's ``left`` or ``right`` of the body's midline at the lesion's levels (the
  centre of the CT's body over those slices), ``midline`` within :data:`MIDLINE_MM`;
- ``confidence_mean`` / ``confidence_max``: the network's probability of the lesion's structure
  over its voxels, and ``review``: true when the mean is below :data:`REVIEW_BELOW`.
"""

from __future__ import annotations

from typing import Mapping

import numpy as np
import SimpleITK as sitk

from HNTumorSegLib import LABELS
from HNTumorSegLib.evaluation.metrics import box_statistics, label_box, labels_in_box, values_in_box
from HNTumorSegLib.imaging.components import lesion_ids
from HNTumorSegLib.imaging.geometry import voxel_volume_ml

#: A lesion whose mean probability is below this is flagged for review.
REVIEW_BELOW = 0.7
#: A centroid this close (mm) to the body's midline is "midline" rather than left or right.
MIDLINE_MM = 5.0
#: CT above this (HU) is the body, for the midline.
BODY_HU = -500.0


def _per_lesion(ids: np.ndarray, n: int, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sum and maximum of ``values`` over each lesion 1..n."""
    inside = ids > 0
    sums = np.bincount(ids[inside], weights=values[inside].astype(np.float64), minlength=n + 1)[1:]
    peaks = np.full(n + 1, -np.inf)
    np.maximum.at(peaks, ids[inside], values[inside].astype(np.float64))
    return sums, peaks[1:]


def midline_x_mm(ct: sitk.Image, z_first: int, z_last: int) -> float | None:
    """Patient x (LPS, mm) of the body's centre over array slices ``z_first..z_last`` of the CT; None without body.

    The body is the largest 26-connected region above :data:`BODY_HU` in those slices, so that the
    couch (wide, centred on the scanner, not on the patient) does not pull the midline towards it.
    """
    ids, n = lesion_ids(np.asarray(sitk.GetArrayViewFromImage(ct)[z_first:z_last + 1]) > BODY_HU)
    if n == 0:
        return None
    body = ids == 1
    z, y, x = (float(a.mean()) for a in np.nonzero(body))
    return float(ct.TransformContinuousIndexToPhysicalPoint((x, y, z + z_first))[0])


def side_of(x_mm: float, midline_mm: float | None) -> str | None:
    """"left" / "right" of the patient (LPS: +x is the patient's left), "midline" within MIDLINE_MM."""
    if midline_mm is None:
        return None
    offset = x_mm - midline_mm
    if abs(offset) <= MIDLINE_MM:
        return "midline"
    return "left" if offset > 0 else "right"


def lesion_table(label: sitk.Image, pet: sitk.Image, ct: sitk.Image | None = None,
                 probabilities: Mapping[str, sitk.Image] | None = None) -> list[dict]:
    """One row per lesion, GTVp lesions first, each structure's largest first.

    ``label`` on the CT grid; ``pet`` in SUV and ``probabilities`` (structure name -> image, e.g.
    :meth:`~HNTumorSegLib.pipeline.inference.Segmentation.probability_images`) on any grid, 0
    outside it; ``ct`` on the label's grid, for the side (None: no side).
    """
    box = label_box(label)
    if box is None:
        return []
    return _lesion_rows(label, box, values_in_box(pet, box[2]), ct, probabilities)


def _lesion_rows(label: sitk.Image, box: tuple, suv: np.ndarray, ct: sitk.Image | None,
                 probabilities: Mapping[str, sitk.Image] | None) -> list[dict]:
    """:func:`lesion_table` in the label box, ``suv`` resampled onto it."""
    lo, _, box_geometry = box
    lab = labels_in_box(label, box)
    voxel_ml = voxel_volume_ml(label.GetSpacing())
    rows = []
    # The midline of each lesion's slices, computed once per distinct slice range: a network early in
    # training can return 100,000 specks, and one body search each took 7 minutes.
    midlines: dict[tuple[int, int], float | None] = {}
    for value, name in LABELS.items():
        ids, n = lesion_ids(lab == value)
        if n == 0:
            continue
        inside = ids > 0
        voxels = np.bincount(ids[inside], minlength=n + 1)[1:]
        suv_sum, suv_max = _per_lesion(ids, n, suv)
        z, y, x = np.nonzero(inside)
        centre = [np.bincount(ids[inside], weights=c.astype(np.float64), minlength=n + 1)[1:] / voxels
                  for c in (x + lo[2], y + lo[1], z + lo[0])]
        z_first = np.full(n + 1, np.iinfo(np.int64).max)
        z_last = np.full(n + 1, -1)
        np.minimum.at(z_first, ids[inside], z + lo[0])
        np.maximum.at(z_last, ids[inside], z + lo[0])
        probability = probabilities.get(name) if probabilities else None
        if probability is not None:
            p_sum, p_max = _per_lesion(ids, n, values_in_box(probability, box_geometry))
        for k in range(n):
            volume = float(voxels[k] * voxel_ml)
            mean = float(suv_sum[k] / voxels[k])
            centroid = label.TransformContinuousIndexToPhysicalPoint(tuple(float(c[k]) for c in centre))
            slices = (int(z_first[k + 1]), int(z_last[k + 1]))
            if ct is not None and slices not in midlines:
                midlines[slices] = midline_x_mm(ct, *slices)
            midline = midlines.get(slices)
            confidence = None if probability is None else float(p_sum[k] / voxels[k])
            rows.append({
                "id": f"{name}_{k + 1}", "structure": name, "label": value, "index": k + 1,
                "voxels": int(voxels[k]), "volume_ml": volume, "suv_max": float(suv_max[k]), "suv_mean": mean,
                "tlg": mean * volume, "centroid_mm": [float(v) for v in centroid],
                "side": side_of(centroid[0], midline),
                "confidence_mean": confidence,
                "confidence_max": None if probability is None else float(p_max[k]),
                "review": None if confidence is None else confidence < REVIEW_BELOW,
            })
    return rows


def describe_lesion(row: Mapping) -> str:
    """One line for a terminal: "GTVn_1: 2.3 mL, SUVmax 7.1, left, confidence 0.82 (review)"."""
    parts = [f"{row['volume_ml']:.2f} mL", f"SUVmax {row['suv_max']:.1f}"]
    if row.get("side"):
        parts.append(row["side"])
    if row.get("confidence_mean") is not None:
        parts.append(f"confidence {row['confidence_mean']:.2f}" + (" (review)" if row.get("review") else ""))
    return f"{row['id']}: " + ", ".join(parts)


def measurements(label: sitk.Image, pet: sitk.Image, ct: sitk.Image | None = None,
                 probabilities: Mapping[str, sitk.Image] | None = None) -> dict:
    """What every report holds (``segment``, ``batch``, the Slicer worker): per-structure totals and the lesion table.

    The PET is resampled onto the labelled voxels' box once, for both.
    """
    voxel_ml = voxel_volume_ml(label.GetSpacing())
    box = label_box(label)
    if box is None:
        return {"structures": box_statistics(None, None, voxel_ml), "lesions": []}
    suv = values_in_box(pet, box[2])
    return {"structures": box_statistics(labels_in_box(label, box), suv, voxel_ml),
            "lesions": _lesion_rows(label, box, suv, ct, probabilities)}
