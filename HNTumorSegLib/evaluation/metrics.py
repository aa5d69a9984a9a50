"""Per-structure figures a clinician reads off a contour, and overlap scores against a reference.

Statistics are taken on the native CT grid (where the contour lives and is edited), with the
PET resampled linearly onto that grid inside the contour's bounding box only. The second half
holds the HECKTOR-style evaluation: HD95, aggregated Dice (DSCagg) and node-detection F1 (F1agg).
"""

from __future__ import annotations

from typing import Iterable, Sequence, TypedDict

import numpy as np
import SimpleITK as sitk

from HNTumorSegLib import LABELS
from HNTumorSegLib.imaging.geometry import Geometry, voxel_volume_ml
from HNTumorSegLib.imaging.label_checks import label_value_text
from HNTumorSegLib.pipeline.preprocess import resample_in_window


def dice(prediction: np.ndarray, reference: np.ndarray, label: int) -> float:
    """Dice of one label. Rule for empty masks: both empty scores 1.0, one empty scores 0.0."""
    p, r = prediction == label, reference == label
    total = int(p.sum()) + int(r.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(p, r).sum()) / total


def label_box(label: sitk.Image) -> tuple[list[int], list[int], Geometry] | None:
    """The bounding box of a label image's labelled voxels: (z, y, x) start, end, and its grid; None if empty."""
    present = np.nonzero(sitk.GetArrayViewFromImage(label))
    if not present[0].size:
        return None
    lo = [int(a.min()) for a in present]  # (z, y, x)
    hi = [int(a.max()) + 1 for a in present]
    start_xyz, size_xyz = lo[::-1], [h - l for l, h in zip(lo, hi)][::-1]
    return lo, hi, Geometry.of(label).subgrid(start_xyz, size_xyz)


def values_in_box(image: sitk.Image, box: Geometry) -> np.ndarray:
    """``image`` (any grid covering the box, e.g. PET in SUV) linearly resampled onto ``box``; 0 outside it."""
    floats = image if image.GetPixelID() == sitk.sitkFloat32 else sitk.Cast(image, sitk.sitkFloat32)
    return sitk.GetArrayFromImage(resample_in_window(floats, box, sitk.sitkLinear, 0.0, sitk.sitkFloat32, margin=2))


def labels_in_box(label: sitk.Image, box: tuple[list[int], list[int], Geometry]) -> np.ndarray:
    """The label values inside a :func:`label_box`, (z, y, x)."""
    lo, hi, _ = box
    return np.asarray(sitk.GetArrayViewFromImage(label)[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]])


def box_statistics(labels: np.ndarray | None, suv: np.ndarray | None, voxel_ml: float) -> dict[str, dict]:
    """:func:`structure_statistics` from the labels and the SUV inside the label box (None, None: no labels)."""
    stats: dict[str, dict] = {}
    for value, name in LABELS.items():
        n = 0 if labels is None else int((sel := labels == value).sum())
        if n == 0:
            stats[name] = {"label": value, "voxels": 0, "volume_ml": 0.0, "suv_max": None,
                           "suv_mean": None, "tlg": None}
            continue
        values = suv[sel]
        volume = n * voxel_ml
        mean = float(values.mean(dtype=np.float64))
        stats[name] = {"label": value, "voxels": n, "volume_ml": volume, "suv_max": float(values.max()),
                       "suv_mean": mean, "tlg": mean * volume}
    return stats


def structure_statistics(label: sitk.Image, pet: sitk.Image) -> dict[str, dict]:
    """Volume (mL), SUVmax, SUVmean and TLG (SUVmean x volume) of each labelled structure.

    ``label`` is on the CT grid; ``pet`` in SUV on any grid that covers it. Empty structures
    report volume 0 and null SUV figures.
    """
    voxel_ml = voxel_volume_ml(label.GetSpacing())
    box = label_box(label)
    if box is None:
        return box_statistics(None, None, voxel_ml)
    return box_statistics(labels_in_box(label, box), values_in_box(pet, box[2]), voxel_ml)


# ---------------------------------------------------------------------------------------------
# HECKTOR-style evaluation: HD95, aggregated Dice (DSCagg) and node-detection F1 (F1agg).
#
# Conventions for everything below: masks and label maps are numpy arrays in (z, y, x) order,
# as returned by ``sitk.GetArrayFromImage``; ``spacing`` is in mm in SimpleITK (x, y, z) order,
# as returned by ``image.GetSpacing()``. The functions reverse it internally. scipy is imported
# lazily so that the rest of this module keeps working without it.
# ---------------------------------------------------------------------------------------------

#: IoU a predicted node must strictly exceed to count as detecting a reference node (HECKTOR 2025).
LESION_IOU_THRESHOLD = 0.3


class StructureScores(TypedDict):
    """Per-case figures of one structure; volumes in mL so that cases on different grids add up."""

    dice: float
    hd95: float
    pred_volume_ml: float
    ref_volume_ml: float
    tp_volume_ml: float


class NodeScores(StructureScores):
    """GTVn figures plus the lesion-detection counts that F1agg sums over a set."""

    lesion_tp: int
    lesion_fp: int
    lesion_fn: int


class CaseScores(TypedDict):
    """What :func:`score_case` returns: a plain dict of Python floats and ints at run time.

    HD95 may be NaN (see :func:`hd95`); ``json.dumps`` writes it as ``NaN``, which strict JSON
    readers reject, so map it to null before writing for other tools.
    """

    GTVp: StructureScores
    GTVn: NodeScores
    mean_dice: float


def _array_spacing(spacing: Sequence[float], ndim: int) -> tuple[float, ...]:
    """SimpleITK (x, y, z) spacing -> numpy axis order (z, y, x), checked for length and sign."""
    sp = tuple(float(s) for s in spacing)
    if len(sp) != ndim or not all(s > 0 for s in sp):
        raise ValueError(f"spacing must be {ndim} positive values in (x, y, z) order, got {spacing!r}")
    return sp[::-1]


def _check_pair(prediction: np.ndarray, reference: np.ndarray) -> None:
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction and reference differ in shape: {prediction.shape} vs {reference.shape}")


def _check_label_values(prediction: np.ndarray, reference: np.ndarray) -> None:
    """Label maps hold 0, 1 and 2 only: a 3 (or a 255 from another tool) must not score as background."""
    for what, array in (("prediction", prediction), ("reference", reference)):
        bad = ~np.isin(array, (0, *LABELS))
        if bad.any():
            shown = ", ".join(label_value_text(v) for v in np.unique(array[bad])[:5])
            raise ValueError(f"{what} holds label values {shown} outside {{0, 1, 2}} ({int(bad.sum())} voxels); "
                             "map them to 0 (background), 1 (GTVp) or 2 (GTVn) first")


def surface_distances(prediction_mask: np.ndarray, reference_mask: np.ndarray,
                      spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Directed surface distances (mm): (each prediction surface voxel -> reference surface,
    each reference surface voxel -> prediction surface), the ingredients of :func:`hd95`.

    Surface voxels are foreground voxels with at least one 6-connected background neighbour,
    voxels outside the array counting as background (``mask ^ binary_erosion(mask)``, as in
    MONAI's ``get_mask_edges``). Why a distance transform on a bounding box: the box of both
    masks holds every surface voxel, so Euclidean distance transforms (with ``sampling`` in mm)
    of the box alone are exact and cost the size of the lesions, not of the scan.

    Arrays are (z, y, x); ``spacing`` is SimpleITK (x, y, z) order, e.g. ``image.GetSpacing()``.
    Both masks must be non-empty (ValueError otherwise): :func:`hd95` applies the empty rules.
    """
    from scipy.ndimage import binary_erosion, distance_transform_edt

    p, r = np.asarray(prediction_mask, dtype=bool), np.asarray(reference_mask, dtype=bool)
    _check_pair(p, r)
    sampling = _array_spacing(spacing, p.ndim)
    if not p.any() or not r.any():
        raise ValueError("surface distances need two non-empty masks")
    nz = np.nonzero(p | r)
    box = tuple(slice(int(a.min()), int(a.max()) + 1) for a in nz)
    # binary_erosion's border_value=0 makes everything outside the box background, which it is
    # (the box holds all foreground), and makes foreground on the array faces surface.
    p_box, r_box = p[box], r[box]
    p_surf = p_box & ~binary_erosion(p_box, border_value=0)
    r_surf = r_box & ~binary_erosion(r_box, border_value=0)
    to_r = distance_transform_edt(~r_surf, sampling=sampling)[p_surf]
    to_p = distance_transform_edt(~p_surf, sampling=sampling)[r_surf]
    return to_r, to_p


def hd95(prediction_mask: np.ndarray, reference_mask: np.ndarray, spacing: Sequence[float]) -> float:
    """95th-percentile symmetric Hausdorff distance (mm) between the surfaces of two boolean masks.

    Why this definition: it is MONAI's ``compute_hausdorff_distance(..., percentile=95)``, so
    our numbers can be compared with published MONAI-based results: with the directed
    distances of :func:`surface_distances`, HD95 = max(percentile95(P->R), percentile95(R->P))
    with linear interpolation (the larger of the two directed HD95s, not the percentile of the
    pooled distances). Computed in float64; MONAI rounds the distances and the quantile's
    interpolation position to float32, so it agrees to about 6 significant digits.

    Arrays are (z, y, x); ``spacing`` is SimpleITK (x, y, z) order, e.g. ``image.GetSpacing()``.

    Empty masks: both empty -> 0.0 (perfect agreement, mirroring Dice = 1.0; MONAI returns NaN
    here). Exactly one empty -> NaN (no surface to measure to), which is what MONAI returns for
    the 95th percentile (its undirected maximum would be inf). Callers averaging HD95 must say
    how many NaN cases they left out: ``np.nanmean`` silently drops missed tumours and false
    alarms.
    """
    p, r = np.asarray(prediction_mask, dtype=bool), np.asarray(reference_mask, dtype=bool)
    _check_pair(p, r)
    _array_spacing(spacing, p.ndim)
    p_any, r_any = bool(p.any()), bool(r.any())
    if not p_any and not r_any:
        return 0.0
    if not p_any or not r_any:
        return float("nan")
    to_r, to_p = surface_distances(p, r, spacing)
    return float(max(np.percentile(to_r, 95), np.percentile(to_p, 95)))


def match_lesions(prediction_mask: np.ndarray, reference_mask: np.ndarray,
                  iou_threshold: float = LESION_IOU_THRESHOLD) -> tuple[int, int, int]:
    """Detection counts (TP, FP, FN) of lesions (26-connected components) in two boolean masks.

    Why: HECKTOR 2025 scores GTVn as *detection* of individual nodes, so one large node found
    cannot hide three small ones missed. A predicted and a reference component can be paired
    only if their IoU is strictly greater than ``iou_threshold``. With a threshold below 0.5 one
    component can qualify for several partners (a blob covering two equal nodes has IoU 0.5 with
    each), so pairs are chosen by optimal one-to-one assignment (``linear_sum_assignment``):
    the largest number of pairs, ties broken by the largest total IoU. The result therefore
    does not depend on the order of the components. TP = pairs, FP = unpaired predicted
    components, FN = unpaired reference components.

    Components touching at a face, edge or corner are one lesion (26-connectivity).
    Empty masks: nothing to pair, so both empty -> (0, 0, 0); prediction empty -> (0, 0, n_ref);
    reference empty -> (0, n_pred, 0).
    """
    from scipy.ndimage import label as cc_label
    from scipy.optimize import linear_sum_assignment

    p, r = np.asarray(prediction_mask, dtype=bool), np.asarray(reference_mask, dtype=bool)
    _check_pair(p, r)
    structure = np.ones((3,) * p.ndim, dtype=bool)
    p_lab, n_p = cc_label(p, structure=structure)
    r_lab, n_r = cc_label(r, structure=structure)
    if n_p == 0 or n_r == 0:
        return 0, n_p, n_r
    p_size = np.bincount(p_lab.ravel(), minlength=n_p + 1)[1:]
    r_size = np.bincount(r_lab.ravel(), minlength=n_r + 1)[1:]
    both = p & r
    pair = (p_lab[both].astype(np.int64) - 1) * n_r + (r_lab[both].astype(np.int64) - 1)
    inter = np.bincount(pair, minlength=n_p * n_r).reshape(n_p, n_r)
    iou = inter / (p_size[:, None] + r_size[None, :] - inter)
    eligible = iou > iou_threshold
    if not eligible.any():
        return 0, n_p, n_r
    # Weight (n + IoU) > any sum of fewer pairs: maximises the number of pairs first, IoU second.
    weight = np.where(eligible, min(n_p, n_r) + 1 + iou, 0.0)
    rows, cols = linear_sum_assignment(weight, maximize=True)
    tp = int(eligible[rows, cols].sum())
    return tp, n_p - tp, n_r - tp


def score_case(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> CaseScores:
    """Per-case scores of a label map (0 background, 1 GTVp, 2 GTVn) against a reference.

    Why the extra fields: HECKTOR ranks on set-level aggregates, which cannot be rebuilt from
    per-case Dice; keeping the TP/predicted/reference volumes (mL) and the node counts per case
    lets :func:`aggregated_dice` and :func:`aggregated_f1` be computed over any subset later.

    Arrays are (z, y, x); ``spacing`` is SimpleITK (x, y, z) order. Dice follows :func:`dice`
    (both empty 1.0, one empty 0.0), HD95 follows :func:`hd95` (both empty 0.0, one empty NaN),
    lesion counts follow :func:`match_lesions`. ``mean_dice`` is the mean of the GTVp and GTVn
    Dice (the paper's "mean").
    """
    prediction, reference = np.asarray(prediction), np.asarray(reference)
    _check_pair(prediction, reference)
    _check_label_values(prediction, reference)
    sampling = _array_spacing(spacing, prediction.ndim)
    voxel_ml = voxel_volume_ml(sampling)
    scores: dict = {}
    for value, name in LABELS.items():
        p, r = prediction == value, reference == value
        entry = {"dice": dice(prediction, reference, value),
                 "hd95": hd95(p, r, spacing),
                 "pred_volume_ml": int(p.sum()) * voxel_ml,
                 "ref_volume_ml": int(r.sum()) * voxel_ml,
                 "tp_volume_ml": int(np.logical_and(p, r).sum()) * voxel_ml}
        if name == "GTVn":
            tp, fp, fn = match_lesions(p, r)
            entry.update(lesion_tp=tp, lesion_fp=fp, lesion_fn=fn)
        scores[name] = entry
    scores["mean_dice"] = (scores["GTVp"]["dice"] + scores["GTVn"]["dice"]) / 2.0
    return scores  # type: ignore[return-value]


def score_images(prediction: sitk.Image, reference: sitk.Image, name: str = "prediction") -> CaseScores:
    """:func:`score_case` of two label images, refused unless they lie on the same grid.

    Why: equal array shapes do not mean the same voxels (a flipped, shifted or resampled label map
    has the same shape); HECKTOR's 2022 evaluator refused such pairs, and so do we.
    """
    from HNTumorSegLib.imaging.label_checks import label_grid_problem

    problem = label_grid_problem(prediction, reference, name, other="reference")
    if problem:
        raise ValueError(problem)
    return score_case(sitk.GetArrayViewFromImage(prediction), sitk.GetArrayViewFromImage(reference),
                      reference.GetSpacing())


def aggregated_dice(cases: Iterable[CaseScores], structure: str) -> float:
    """HECKTOR aggregated Dice of one structure ("GTVp" or "GTVn") over a set of cases.

    DSCagg = 2 * sum_i TP_i / sum_i (|pred_i| + |ref_i|), with physical volumes in mL. Why:
    per-case Dice is unstable for small or absent structures (a missed 0.5 mL node scores 0,
    an empty-empty case scores 1); pooling volumes weights each case by its size and needs no
    empty-mask rule except one: if the denominator is 0 over the whole set (the structure is
    absent from every prediction and reference) the score is undefined and NaN is returned.
    """
    if structure not in LABELS.values():
        raise ValueError(f"structure must be one of {sorted(LABELS.values())}, got {structure!r}")
    tp = total = 0.0
    for case in cases:
        s = case[structure]
        tp += s["tp_volume_ml"]
        total += s["pred_volume_ml"] + s["ref_volume_ml"]
    if total == 0.0:
        return float("nan")
    return 2.0 * tp / total


def aggregated_f1(cases: Iterable[CaseScores]) -> float:
    """HECKTOR 2025 aggregated F1 of GTVn (node) detection over a set of cases.

    F1agg = 2 * sum TP / (2 * sum TP + sum FP + sum FN), counts from :func:`match_lesions`.
    Why pooled counts: many cases have no nodes, where a per-case F1 is 0/0.

    Empty rule: if there is no node at all in any prediction or reference of the set (all three
    sums 0) the score is undefined and NaN is returned, as :func:`aggregated_dice` does for an
    empty denominator. Returning 1.0 would rate a set on which detection was never tested as
    perfect; NaN makes the caller notice. A set with false positives only scores 0.0.
    """
    tp = fp = fn = 0
    for case in cases:
        s = case["GTVn"]
        tp += s["lesion_tp"]
        fp += s["lesion_fp"]
        fn += s["lesion_fn"]
    denominator = 2 * tp + fp + fn
    if denominator == 0:
        return float("nan")
    return 2.0 * tp / denominator
