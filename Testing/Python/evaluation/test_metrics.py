"""HECKTOR-style evaluation metrics: MONAI cross-checks on random blobs, and small cases by hand.

Arrays are (z, y, x); spacings are SimpleITK (x, y, z), so MONAI (which takes spacing in array
axis order) is always given ``spacing[::-1]``.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest
from scipy.ndimage import gaussian_filter

from HNTumorSegLib.evaluation.metrics import (aggregated_dice, aggregated_f1, dice, hd95, match_lesions,
                                              score_case, surface_distances)

import monai.metrics as monai_metrics
import torch


# --- helpers ---------------------------------------------------------------------------------

def blob(rng: np.random.Generator, shape, sigma, level) -> np.ndarray:
    """Irregular blobs: thresholded smoothed noise (several components, some touching the border)."""
    return gaussian_filter(rng.standard_normal(shape), sigma) > level


def blob_pair(seed: int, shape=(14, 36, 32)):
    """A reference and a prediction that overlaps it imperfectly, as a model's would."""
    rng = np.random.default_rng(seed)
    base = gaussian_filter(rng.standard_normal(shape), (1.0, 3.0, 3.0))
    noise = gaussian_filter(rng.standard_normal(shape), (1.0, 2.0, 2.0))
    ref = base > 0.12
    pred = base + 0.6 * noise > 0.14
    return pred, ref


def monai_hd95(pred: np.ndarray, ref: np.ndarray, spacing_xyz) -> float:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # MONAI warns on empty masks
        out = monai_metrics.compute_hausdorff_distance(
            torch.from_numpy(pred[None, None]), torch.from_numpy(ref[None, None]), include_background=True,
            percentile=95, spacing=[float(s) for s in spacing_xyz[::-1]])
    return float(out[0, 0])


def monai_dice(pred: np.ndarray, ref: np.ndarray) -> float:
    out = monai_metrics.compute_dice(torch.from_numpy(pred[None, None]), torch.from_numpy(ref[None, None]),
                                     include_background=True)
    return float(out[0, 0])


def labels(shape, gtvp=(), gtvn=()) -> np.ndarray:
    """Label map with GTVp (1) and GTVn (2) set on the given index expressions."""
    lab = np.zeros(shape, np.uint8)
    for idx in gtvp:
        lab[idx] = 1
    for idx in gtvn:
        lab[idx] = 2
    return lab


# --- Dice and HD95 against MONAI --------------------------------------------------------------

SPACINGS = [(1.0, 1.0, 3.0), (0.8, 1.3, 2.5)]


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_dice_and_hd95_match_monai_on_random_blobs(seed, spacing):
    pred, ref = blob_pair(seed)
    assert pred.any() and ref.any() and not np.array_equal(pred, ref)
    lab_pred = labels(pred.shape, gtvp=[pred])
    lab_ref = labels(ref.shape, gtvp=[ref])
    scores = score_case(lab_pred, lab_ref, spacing)
    assert scores["GTVp"]["dice"] == pytest.approx(monai_dice(pred, ref), rel=1e-6, abs=1e-7)
    expected = monai_hd95(pred, ref, spacing)
    assert expected > 0
    # End to end, MONAI's torch.quantile runs in float32, interpolation position included: up
    # to 5e-7 relative on these cases. The exact definition is checked in the next test.
    assert hd95(pred, ref, spacing) == pytest.approx(expected, rel=1e-6)
    assert scores["GTVp"]["hd95"] == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize("spacing", SPACINGS)
@pytest.mark.parametrize("seed", [0, 3])
def test_surface_distances_are_monais(seed, spacing):
    """Same surface voxels and same directed distances as MONAI, to its float32 rounding
    (2**-24 relative); HD95 from MONAI's distances in float64 is then ours to 1e-7."""
    from monai.metrics.utils import get_edge_surface_distance

    pred, ref = blob_pair(seed)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # MONAI's own internal deprecation notice
        _, (m_to_r, m_to_p), _ = get_edge_surface_distance(torch.from_numpy(pred), torch.from_numpy(ref),
                                                            spacing=list(spacing[::-1]), symmetric=True)
    to_r, to_p = surface_distances(pred, ref, spacing)
    for ours, theirs in ((to_r, m_to_r), (to_p, m_to_p)):
        theirs = theirs.numpy().astype(np.float64)
        assert ours.shape == theirs.shape
        np.testing.assert_allclose(np.sort(ours), np.sort(theirs), rtol=1e-7, atol=0)
    from_monai = max(np.percentile(m_to_r.numpy().astype(np.float64), 95),
                     np.percentile(m_to_p.numpy().astype(np.float64), 95))
    assert hd95(pred, ref, spacing) == pytest.approx(from_monai, rel=1e-7)


@pytest.mark.parametrize("seed", [10, 11, 12])
def test_hd95_matches_monai_on_scattered_blobs_touching_the_border(seed):
    """Many small components, large surface/volume ratio, and foreground on the array faces."""
    rng = np.random.default_rng(seed)
    shape = (10, 30, 28)
    pred = blob(rng, shape, (0.7, 1.5, 1.5), 0.25)
    ref = blob(rng, shape, (0.7, 1.5, 1.5), 0.25)
    for m in (pred, ref):
        m[0, 5:20, 3:9] = True  # a block on the first slice: surface includes the array face
    spacing = (0.9, 1.1, 3.0)
    assert hd95(pred, ref, spacing) == pytest.approx(monai_hd95(pred, ref, spacing), rel=1e-6)


def test_hd95_uses_simpleitk_spacing_order():
    """Two single voxels two slices apart: 2 x 3 mm with (x, y, z) = (1, 1, 3) spacing, not 2 mm."""
    a = np.zeros((6, 5, 5), bool)
    b = a.copy()
    a[1, 2, 2] = True
    b[3, 2, 2] = True
    assert hd95(a, b, (1.0, 1.0, 3.0)) == pytest.approx(6.0)
    assert hd95(a, b, (3.0, 1.0, 1.0)) == pytest.approx(2.0)


def test_hd95_is_exact_and_independent_of_array_size():
    """A 5-voxel cube against the same cube shifted by 1 in x: every surface voxel of a solid
    cube is within 1 voxel of the other's surface, HD95 is 1 x-spacing, however much padding."""
    a = np.zeros((9, 9, 9), bool)
    a[2:7, 2:7, 2:7] = True
    b = np.roll(a, 1, axis=2)
    spacing = (0.7, 1.0, 2.0)
    value = hd95(a, b, spacing)
    assert value == pytest.approx(0.7)
    big_a, big_b = (np.pad(m, ((3, 20), (0, 15), (7, 2))) for m in (a, b))
    assert hd95(big_a, big_b, spacing) == value
    assert hd95(a, a, spacing) == 0.0


def test_hd95_empty_mask_rules():
    empty = np.zeros((5, 6, 7), bool)
    cube = empty.copy()
    cube[1:4, 2:5, 2:5] = True
    assert hd95(empty, empty, (1, 1, 3)) == 0.0
    assert math.isnan(hd95(cube, empty, (1, 1, 3)))
    assert math.isnan(hd95(empty, cube, (1, 1, 3)))
    # The documented relation to MONAI: it also gives NaN for one empty mask, and NaN (where we
    # give 0.0 on purpose) for both empty.
    assert math.isnan(monai_hd95(cube, empty, (1, 1, 3)))
    assert math.isnan(monai_hd95(empty, empty, (1, 1, 3)))


def test_bad_inputs_are_refused():
    a = np.zeros((4, 5, 6), bool)
    with pytest.raises(ValueError, match="shape"):
        hd95(a, np.zeros((4, 6, 5), bool), (1, 1, 1))
    with pytest.raises(ValueError, match="spacing"):
        hd95(a, a, (1.0, 1.0))
    with pytest.raises(ValueError, match="spacing"):
        hd95(a, a, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="non-empty"):
        surface_distances(a, a, (1, 1, 1))
    with pytest.raises(ValueError, match="shape"):
        score_case(a.astype(np.uint8), np.zeros((4, 5, 5), np.uint8), (1, 1, 1))
    with pytest.raises(ValueError, match="structure"):
        aggregated_dice([], "GTV")


# --- per-case scores ---------------------------------------------------------------------------

def test_score_case_fields_volumes_and_empty_rules():
    spacing = (2.0, 2.0, 5.0)  # 20 mm^3 = 0.02 mL per voxel
    shape = (3, 4, 12)
    pred = labels(shape, gtvp=[np.s_[0, 0, 0:10]])          # GTVp 10 voxels, no GTVn
    ref = labels(shape, gtvp=[np.s_[0, 0, 6:12]])           # GTVp 6 voxels, overlap 4
    s = score_case(pred, ref, spacing)
    assert set(s) == {"GTVp", "GTVn", "mean_dice"}
    p, n = s["GTVp"], s["GTVn"]
    assert set(p) == {"dice", "hd95", "pred_volume_ml", "ref_volume_ml", "tp_volume_ml"}
    assert set(n) == set(p) | {"lesion_tp", "lesion_fp", "lesion_fn"}
    assert p["dice"] == pytest.approx(2 * 4 / 16)
    assert p["pred_volume_ml"] == pytest.approx(0.20)
    assert p["ref_volume_ml"] == pytest.approx(0.12)
    assert p["tp_volume_ml"] == pytest.approx(0.08)
    # Both masks are 1-voxel-thick rows, so every voxel is surface: pred voxels x = 0, 1 are
    # 12 and 10 mm from the nearest ref voxel (x = 6), ref voxels are all within the prediction.
    to_ref = sorted(2.0 * max(0, 6 - x) for x in range(10))
    assert p["hd95"] == pytest.approx(np.percentile(to_ref, 95))
    # GTVn absent from both: Dice 1.0, HD95 0.0, no lesions.
    assert n == {"dice": 1.0, "hd95": 0.0, "pred_volume_ml": 0.0, "ref_volume_ml": 0.0, "tp_volume_ml": 0.0,
                 "lesion_tp": 0, "lesion_fp": 0, "lesion_fn": 0}
    assert s["mean_dice"] == pytest.approx((0.5 + 1.0) / 2)
    # GTVp predicted as GTVn: Dice 0 for both, HD95 NaN for both (one mask empty in each).
    swapped = score_case(np.where(pred == 1, 2, 0).astype(np.uint8), pred, spacing)
    assert swapped["GTVp"]["dice"] == 0.0 and swapped["GTVn"]["dice"] == 0.0 and swapped["mean_dice"] == 0.0
    assert math.isnan(swapped["GTVp"]["hd95"]) and math.isnan(swapped["GTVn"]["hd95"])
    assert (swapped["GTVn"]["lesion_tp"], swapped["GTVn"]["lesion_fp"], swapped["GTVn"]["lesion_fn"]) == (0, 1, 0)
    assert swapped["GTVp"]["dice"] == dice(np.where(pred == 1, 2, 0), pred, 1)


# --- DSCagg by hand -----------------------------------------------------------------------------

def test_aggregated_dice_by_hand():
    shape = (3, 4, 12)
    big, small = (2.0, 2.0, 5.0), (1.0, 1.0, 3.0)  # 0.02 mL and 0.003 mL per voxel
    cases = [
        # A: GTVp pred 10, ref 6, overlap 4 (0.02 mL voxels); GTVn pred 2 = ref 2.
        score_case(labels(shape, gtvp=[np.s_[0, 0, 0:10]], gtvn=[np.s_[2, 3, 0:2]]),
                   labels(shape, gtvp=[np.s_[0, 0, 6:12]], gtvn=[np.s_[2, 3, 0:2]]), big),
        # B: GTVp missed, ref 5 (0.02 mL voxels); GTVn pred 3, none in the reference.
        score_case(labels(shape, gtvn=[np.s_[1, 1, 0:3]]),
                   labels(shape, gtvp=[np.s_[1, 2, 2:7]]), big),
        # C: GTVp false positive of 3 voxels (0.003 mL voxels); GTVn ref 4, missed.
        score_case(labels(shape, gtvp=[np.s_[2, 0, 0:3]]),
                   labels(shape, gtvn=[np.s_[0, 3, 4:8]]), small),
    ]
    expected_p = 2 * (4 * 0.02) / ((10 + 6 + 0 + 5) * 0.02 + (3 + 0) * 0.003)  # = 0.16 / 0.429
    assert aggregated_dice(cases, "GTVp") == pytest.approx(expected_p)
    assert aggregated_dice(cases, "GTVp") == pytest.approx(0.16 / 0.429)
    expected_n = 2 * (2 * 0.02) / ((2 + 2 + 3 + 0) * 0.02 + (0 + 4) * 0.003)    # = 0.08 / 0.152
    assert aggregated_dice(cases, "GTVn") == pytest.approx(expected_n)
    # Not the mean of per-case Dice (which would be (0.5 + 0 + 0) / 3 for GTVp).
    assert aggregated_dice(cases, "GTVp") != pytest.approx(np.mean([c["GTVp"]["dice"] for c in cases]))
    # Lesion counts of the same cases: A 1 TP, B 1 FP, C 1 FN -> F1agg = 2 / (2 + 1 + 1).
    assert aggregated_f1(cases) == pytest.approx(0.5)
    # A single case is its own Dice when not empty; a generator works as well as a list.
    assert aggregated_dice(iter(cases[:1]), "GTVp") == pytest.approx(cases[0]["GTVp"]["dice"])


def test_aggregated_dice_empty_set_or_absent_structure_is_nan():
    shape = (2, 3, 4)
    only_p = score_case(labels(shape, gtvp=[np.s_[0, 0, 0:2]]), labels(shape, gtvp=[np.s_[0, 0, 1:3]]), (1, 1, 1))
    empty = score_case(labels(shape), labels(shape), (1, 1, 1))
    assert math.isnan(aggregated_dice([only_p, empty], "GTVn"))
    assert math.isnan(aggregated_dice([], "GTVp"))
    assert aggregated_dice([only_p, empty], "GTVp") == pytest.approx(0.5)


# --- lesion matching and F1agg by hand -----------------------------------------------------------

def test_f1_no_nodes_anywhere_is_nan():
    shape = (3, 4, 5)
    empty = np.zeros(shape, bool)
    assert match_lesions(empty, empty) == (0, 0, 0)
    cases = [score_case(labels(shape, gtvp=[np.s_[1, 1, 1:3]]), labels(shape, gtvp=[np.s_[1, 1, 2:4]]), (1, 1, 3)),
             score_case(labels(shape), labels(shape), (1, 1, 3))]
    assert math.isnan(aggregated_f1(cases))
    assert math.isnan(aggregated_f1([]))


def test_f1_false_positives_only_is_zero():
    shape = (3, 6, 8)
    pred = labels(shape, gtvn=[np.s_[0, 0, 0:2], np.s_[2, 4, 5:8]])  # two separate nodes
    empty = labels(shape)
    assert match_lesions(pred == 2, empty == 2) == (0, 2, 0)
    assert match_lesions(empty == 2, pred == 2) == (0, 0, 2)
    cases = [score_case(pred, empty, (1, 1, 3)), score_case(empty, empty, (1, 1, 3))]
    assert aggregated_f1(cases) == 0.0


def test_face_adjacent_reference_nodes_are_one_lesion():
    """Two 2x2x2 reference nodes sharing a face form one 26-connected component; one predicted
    blob covering both is then one TP and no FN (IoU 1), although a reader might count two."""
    ref = np.zeros((5, 5, 7), bool)
    ref[1:3, 1:3, 1:3] = True
    ref[1:3, 1:3, 3:5] = True
    pred = ref.copy()
    assert match_lesions(pred, ref) == (1, 0, 0)
    # Predicting only one of the two halves: IoU 8/16 = 0.5 with the single reference lesion.
    half = np.zeros_like(ref)
    half[1:3, 1:3, 1:3] = True
    assert match_lesions(half, ref) == (1, 0, 0)


def test_corner_touching_nodes_are_one_lesion_one_voxel_gap_makes_two():
    a = np.s_[1:3, 1:3, 1:3]
    pred = np.zeros((7, 7, 7), bool)
    pred[a] = True  # the prediction finds node A only
    corner = pred.copy()
    corner[3:5, 3:5, 3:5] = True  # node B touches A at one corner only: still one lesion
    gap = pred.copy()
    gap[4:6, 4:6, 4:6] = True  # one voxel apart diagonally: two lesions
    assert match_lesions(corner, corner) == (1, 0, 0)
    assert match_lesions(gap, gap) == (2, 0, 0)
    assert match_lesions(pred, corner) == (1, 0, 0)  # IoU 8/16 = 0.5 with the merged lesion
    assert match_lesions(pred, gap) == (1, 0, 1)  # A found, B missed


def test_one_blob_over_two_nodes_matches_only_one():
    """IoU 0.4 with each of two separate nodes, but matching is one-to-one: 1 TP, 1 FN."""
    ref = np.zeros((3, 3, 6), bool)
    ref[0:2, 0:2, 0:2] = True
    ref[0:2, 0:2, 3:5] = True
    pred = np.zeros_like(ref)
    pred[0:2, 0:2, 0:5] = True  # 20 voxels: 8 / 20 = 0.4 with each node
    assert match_lesions(pred, ref) == (1, 0, 1)


def test_matching_is_optimal_and_independent_of_component_order():
    """Along one row: R1 = x 0-19, R2 = x 21-26; P2 = x 0-6, P1 = x 10-26 (covers R1's tail, the
    gap and R2). IoU P1-R1 = 10/27 = 0.370, P1-R2 = 6/17 = 0.353, P2-R1 = 7/20 = 0.35. Greedy
    pairing by highest IoU takes P1-R1 and leaves 1 TP, 1 FP, 1 FN; the optimum pairs P1-R2 and
    P2-R1. Reversing the row reverses the component labels and must not change the counts."""
    ref = np.zeros((1, 1, 28), bool)
    pred = np.zeros_like(ref)
    ref[0, 0, 0:20] = True    # R1
    ref[0, 0, 21:27] = True   # R2
    pred[0, 0, 0:7] = True    # P2
    pred[0, 0, 10:27] = True  # P1
    assert match_lesions(pred, ref) == (2, 0, 0)
    assert match_lesions(pred[..., ::-1], ref[..., ::-1]) == (2, 0, 0)
    assert match_lesions(ref, pred) == (2, 0, 0)


def test_iou_threshold_is_strict():
    """A 10 x 10 reference node: 30 predicted voxels inside it is IoU 0.3 exactly (no match),
    31 is IoU 0.31 (match)."""
    ref = np.zeros((3, 12, 12), bool)
    ref[1, 1:11, 1:11] = True
    inside = np.argwhere(ref)
    at, above, below = (np.zeros_like(ref) for _ in range(3))
    for mask, n in ((at, 30), (above, 31), (below, 29)):
        mask[tuple(inside[:n].T)] = True
    assert match_lesions(at, ref) == (0, 1, 1)
    assert match_lesions(above, ref) == (1, 0, 0)
    assert match_lesions(below, ref) == (0, 1, 1)
    assert match_lesions(at, ref, iou_threshold=0.29) == (1, 0, 0)
    # The same through score_case and F1agg.
    lab_ref = np.where(ref, 2, 0).astype(np.uint8)
    cases_at = [score_case(np.where(at, 2, 0).astype(np.uint8), lab_ref, (1, 1, 3))]
    cases_above = [score_case(np.where(above, 2, 0).astype(np.uint8), lab_ref, (1, 1, 3))]
    assert aggregated_f1(cases_at) == 0.0
    assert aggregated_f1(cases_above) == 1.0


def test_scoring_refuses_labels_outside_0_1_2():
    ref = np.zeros((4, 5, 5), np.uint8)
    ref[1, 1:3, 1:3] = 1
    pred = ref.copy()
    pred[2, 2, 2] = 3  # a third class from another tool must not score as background
    with pytest.raises(ValueError, match=r"prediction holds label values 3 outside \{0, 1, 2\} \(1 voxels\)"):
        score_case(pred, ref, (1, 1, 1))
    with pytest.raises(ValueError, match="reference holds label values 255"):
        score_case(ref, np.where(ref == 1, 255, 0).astype(np.uint8), (1, 1, 1))


def test_scoring_images_refuses_a_pair_on_different_grids():
    import SimpleITK as sitk

    from HNTumorSegLib.evaluation.metrics import score_images

    ref = np.zeros((4, 5, 5), np.uint8)
    ref[1, 1:3, 1:3] = 1
    a, b = sitk.GetImageFromArray(ref), sitk.GetImageFromArray(ref)
    assert score_images(a, b)["GTVp"]["dice"] == 1.0
    b.SetOrigin((0.0, 0.0, 3.0))  # same shape, other voxels
    with pytest.raises(ValueError, match=r"case7: label is not on the reference grid \(origin .* vs reference"):
        score_images(a, b, "case7")
    flipped = sitk.Flip(a, (True, False, False))  # same array shape, stored the other way
    with pytest.raises(ValueError, match="direction differs from the reference's"):
        score_images(flipped, sitk.GetImageFromArray(ref), "flipped")


def test_a_label_value_that_is_not_whole_reads_as_not_whole():
    """f"{v:g}" printed a float label's 1.0000001 as "1", as if 1 were outside {0, 1, 2}."""
    ref = np.zeros((4, 5, 5), np.float32)
    ref[1, 1:3, 1:3] = 1
    pred = ref.copy()
    pred[2, 2, 2] = np.float32(1.0000001)
    with pytest.raises(ValueError, match=r"prediction holds label values 1\.0000001 outside"):
        score_case(pred, ref, (1, 1, 1))
