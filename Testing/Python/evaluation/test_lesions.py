"""The lesion table: one row per 26-connected component, measured where it is."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from HNTumorSegLib.evaluation.lesions import MIDLINE_MM, REVIEW_BELOW, describe_lesion, lesion_table
from HNTumorSegLib.evaluation.metrics import structure_statistics
from HNTumorSegLib.imaging.components import lesion_ids

SPACING = (2.0, 2.0, 3.0)
ORIGIN = (-100.0, -80.0, -50.0)


def image(array: np.ndarray, spacing=SPACING, origin=ORIGIN) -> sitk.Image:
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


def body_case():
    """A body centred at x = -30 mm (not the image centre) on a wide couch; a primary and two nodes."""
    ct = np.full((20, 80, 100), -1000, np.int16)
    x_mm = ORIGIN[0] + SPACING[0] * np.arange(100)
    ct[:, 10:60, (x_mm > -70) & (x_mm < 10)] = 40  # body: x from -70 to 10 mm, centre -30
    ct[:, 70:74, :] = 300  # couch under it, across the whole field, centred at x = 0
    label = np.zeros_like(ct, dtype=np.uint8)
    label[8:12, 30:36, 33:37] = 1  # primary at x ~ -32 mm: midline
    label[8:11, 20:24, 52:55] = 2  # node at x ~ +6 mm: patient left (LPS +x)
    label[5:7, 40:42, 10:12] = 2  # smaller node at x ~ -79 mm: patient right
    label[7, 42, 12] = 2  # touches the smaller node at a corner only: the same lesion (26-connected)
    pet = np.ones_like(ct, dtype=np.float32)
    pet[label == 1] = 8.0
    pet[label == 2] = 4.0
    pet[9, 21, 53] = 12.0
    return image(ct), image(label), image(pet)


def test_each_lesion_is_measured_placed_and_sided():
    ct, label, pet = body_case()
    rows = lesion_table(label, pet, ct)
    assert [r["id"] for r in rows] == ["GTVp_1", "GTVn_1", "GTVn_2"]
    by_id = {r["id"]: r for r in rows}
    voxel_ml = np.prod(SPACING) / 1000
    assert by_id["GTVn_1"]["voxels"] == 36 and by_id["GTVn_2"]["voxels"] == 9  # 8 + the corner voxel
    assert by_id["GTVn_1"]["volume_ml"] == pytest.approx(36 * voxel_ml)
    assert by_id["GTVn_1"]["suv_max"] == pytest.approx(12.0) and by_id["GTVn_2"]["suv_max"] == pytest.approx(4.0)
    assert by_id["GTVn_1"]["suv_mean"] == pytest.approx((35 * 4 + 12) / 36)
    assert by_id["GTVn_1"]["tlg"] == pytest.approx(by_id["GTVn_1"]["suv_mean"] * by_id["GTVn_1"]["volume_ml"])
    # centroid in patient coordinates (LPS mm): voxel centre mean through the image geometry
    z, y, x = np.nonzero(sitk.GetArrayFromImage(label) == 1)
    expected = label.TransformContinuousIndexToPhysicalPoint((x.mean(), y.mean(), z.mean()))
    np.testing.assert_allclose(by_id["GTVp_1"]["centroid_mm"], expected)
    assert [by_id[k]["side"] for k in ("GTVp_1", "GTVn_1", "GTVn_2")] == ["midline", "left", "right"]
    # without probabilities: no confidence and no review flag, rather than invented ones
    assert all(r["confidence_mean"] is None and r["review"] is None for r in rows)
    # the rows add up to the structures' totals
    totals = structure_statistics(label, pet)
    assert sum(r["volume_ml"] for r in rows if r["structure"] == "GTVn") == pytest.approx(totals["GTVn"]["volume_ml"])
    assert sum(r["tlg"] for r in rows if r["structure"] == "GTVn") == pytest.approx(totals["GTVn"]["tlg"])


def test_side_and_centroid_do_not_depend_on_voxel_order():
    ct, label, pet = body_case()
    flip = (True, False, False)  # stored right-to-left: the same patient
    rows = lesion_table(sitk.Flip(label, flip), sitk.Flip(pet, flip), sitk.Flip(ct, flip))
    plain = lesion_table(label, pet, ct)
    assert [r["side"] for r in rows] == [r["side"] for r in plain]
    for a, b in zip(rows, plain):
        np.testing.assert_allclose(a["centroid_mm"], b["centroid_mm"], atol=1e-9)


def test_side_is_midline_within_the_tolerance():
    ct, label, pet = body_case()
    arr = np.zeros(label.GetSize()[::-1], np.uint8)
    # body centre x = -30 mm; voxel x index i sits at -100 + 2 i
    for i, expected in ((35, "midline"), (35 + int(MIDLINE_MM), "left"), (35 - int(MIDLINE_MM), "right")):
        arr[:] = 0
        arr[10, 30, i] = 1
        rows = lesion_table(image(arr), pet, ct)
        assert rows[0]["side"] == expected, (i, rows[0]["centroid_mm"])


def test_confidence_comes_from_the_probabilities_on_their_own_grid():
    ct, label, pet = body_case()
    lab = sitk.GetArrayFromImage(label)
    # probabilities on a coarser, shifted grid (as the analysis window is), GTVn high except in the small node
    p_gtvn = np.full((10, 40, 50), 0.9, np.float32)
    window = image(p_gtvn, spacing=(4.0, 4.0, 6.0), origin=(-101.0, -81.0, -51.5))
    small = lesion_ids(lab == 2)[0] == 2
    z, y, x = np.nonzero(small)
    for k, j, i in zip(z, y, x):  # the coarse voxels under the small node get 0.4
        point = label.TransformIndexToPhysicalPoint((int(i), int(j), int(k)))
        idx = window.TransformPhysicalPointToIndex(point)
        p_gtvn[idx[2], idx[1], idx[0]] = 0.4
    window = image(p_gtvn, spacing=(4.0, 4.0, 6.0), origin=(-101.0, -81.0, -51.5))
    rows = {r["id"]: r for r in lesion_table(label, pet, ct, {"GTVn": window})}
    assert rows["GTVn_1"]["confidence_mean"] == pytest.approx(0.9, abs=0.05) and not rows["GTVn_1"]["review"]
    assert rows["GTVn_2"]["confidence_mean"] < REVIEW_BELOW and rows["GTVn_2"]["review"]
    assert rows["GTVn_2"]["confidence_max"] >= rows["GTVn_2"]["confidence_mean"]
    assert rows["GTVp_1"]["confidence_mean"] is None  # no GTVp probabilities given
    assert "(review)" in describe_lesion(rows["GTVn_2"]) and "right" in describe_lesion(rows["GTVn_2"])


def test_an_empty_label_has_no_lesions():
    ct, label, pet = body_case()
    assert lesion_table(image(np.zeros(label.GetSize()[::-1], np.uint8)), pet, ct) == []


def test_lesion_ids_number_the_largest_first():
    mask = np.zeros((5, 10, 10), bool)
    mask[0, 0, 0] = True
    mask[3:5, 5:8, 5:8] = True
    ids, n = lesion_ids(mask)
    assert n == 2 and ids[0, 0, 0] == 2 and ids[4, 7, 7] == 1


def test_the_midline_is_found_once_per_slice_range_however_many_specks(monkeypatch):
    """A network early in training returns thousands of specks; the body search ran once per lesion (7 minutes
    on 105,000). Per distinct slice range it runs once, and the sides are the ones a search per lesion gives."""
    from HNTumorSegLib.evaluation import lesions

    ct, _, pet = body_case()
    specks = np.zeros((20, 80, 100), np.uint8)
    specks[2:18:2, 12:58:3, 8:96:3] = 2  # isolated voxels, each its own lesion, on 8 slices
    label = image(specks)
    calls = []
    real = lesions.midline_x_mm

    def counted(ct_image, z_first, z_last):
        calls.append((z_first, z_last))
        return real(ct_image, z_first, z_last)

    monkeypatch.setattr(lesions, "midline_x_mm", counted)
    rows = lesion_table(label, pet, ct)
    assert len(rows) == 8 * 16 * 30 and sorted(calls) == sorted(set(calls)) and len(calls) == 8
    for row in rows[::97]:
        z = int(round(label.TransformPhysicalPointToContinuousIndex(row["centroid_mm"])[2]))
        assert row["side"] == lesions.side_of(row["centroid_mm"][0], real(ct, z, z))
