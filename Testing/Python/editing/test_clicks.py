"""One-click corrections on a constructed case whose every lesion is known."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from HNTumorSegLib.editing.clicks import (DEFAULT_FRACTION, TOLERANCE_MM, add_lesion, redraw_lesion, relabel_lesion,
                                          remove_lesion, structure_value)
from HNTumorSegLib.errors import InputError

SPACING = (1.0, 1.0, 2.0)
ORIGIN = (-60.0, -50.0, -40.0)
SHAPE = (40, 100, 120)  # z, y, x


def image(array, spacing=SPACING, origin=ORIGIN):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(spacing)
    img.SetOrigin(origin)
    return img


def point_of(index_zyx):
    z, y, x = index_zyx
    return (ORIGIN[0] + x * SPACING[0], ORIGIN[1] + y * SPACING[1], ORIGIN[2] + z * SPACING[2])


def sphere(centre_zyx, radius_mm):
    z, y, x = np.meshgrid(*[(np.arange(n) - c) * s for n, c, s in zip(SHAPE, centre_zyx, SPACING[::-1])],
                          indexing="ij")
    return z * z + y * y + x * x <= radius_mm ** 2


PRIMARY, NODE, MISSED, FALSE = (20, 50, 40), (20, 50, 80), (20, 20, 90), (10, 80, 30)


@pytest.fixture
def case():
    """PET: a primary (SUV 12), a node (6) and a missed node (8); label: the primary, the node and a false positive."""
    pet = np.full(SHAPE, 1.0, np.float32)
    truth = np.zeros(SHAPE, np.uint8)
    for centre, radius, suv, value in ((PRIMARY, 10, 12.0, 1), (NODE, 6, 6.0, 2), (MISSED, 7, 8.0, 2)):
        ball = sphere(centre, radius)
        pet[ball] = suv
        truth[ball] = value
    pet = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(image(pet), 2.0))  # a PET's blur
    label = truth.copy()
    label[sphere(MISSED, 7)] = 0  # the model missed it
    label[sphere(FALSE, 4)] = 2  # and drew a node on nothing
    return image(label), image(pet), truth


def dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_add_grows_the_missed_node_from_a_click_beside_its_peak(case):
    label, pet, truth = case
    click = point_of((MISSED[0], MISSED[1] + 3, MISSED[2] - 3))  # a few mm off the hottest voxel
    edit = add_lesion(label, pet, click, "GTVn")
    after = sitk.GetArrayFromImage(edit.label)
    added = (after != sitk.GetArrayFromImage(label))
    assert edit.action == "add" and edit.structure == "GTVn" and edit.voxels == added.sum()
    assert dice(added, sphere(MISSED, 7)) > 0.8
    assert (after[added] == 2).all()
    # nothing else moved
    np.testing.assert_array_equal(after[~added], sitk.GetArrayFromImage(label)[~added])
    assert edit.label.GetSpacing() == label.GetSpacing() and edit.label.GetOrigin() == label.GetOrigin()
    assert "41%" in edit.message and "GTVn" in edit.message


def test_add_never_overwrites_the_other_structure_and_follows_the_threshold(case):
    label, pet, truth = case
    # a click on the primary, or just beside it, asking for GTVn is refused: its region would be a shell of
    # fragments around the primary (and every primary voxel stays GTVp)
    for at in (PRIMARY, (PRIMARY[0], PRIMARY[1], PRIMARY[2] + 11)):
        with pytest.raises(InputError, match=r"is on a GTVp lesion \(or within 3 mm of it\): relabel it"):
            add_lesion(label, pet, point_of(at), "GTVn", fraction=0.3)
    # inside it, asking for GTVp: the halo; then, once the whole region is segmented, there is nothing to add
    grown = add_lesion(label, pet, point_of(PRIMARY), "GTVp", fraction=0.3)
    assert grown.voxels > 0 and (sitk.GetArrayFromImage(grown.label)[sphere(PRIMARY, 10)] == 1).all()
    with pytest.raises(InputError, match="already segmented"):
        add_lesion(grown.label, pet, point_of(PRIMARY), "GTVp", fraction=0.3)
    # a higher threshold draws a smaller region
    wide = add_lesion(label, pet, point_of(MISSED), 2, fraction=0.3).voxels
    tight = add_lesion(label, pet, point_of(MISSED), 2, fraction=0.7).voxels
    assert tight < wide
    with pytest.raises(InputError, match="between 0 and 1"):
        add_lesion(label, pet, point_of(MISSED), 2, fraction=41)


def test_add_is_bounded_by_the_radius(case):
    label, pet, _ = case
    edit = add_lesion(label, pet, point_of(MISSED), "GTVn", fraction=0.05, radius_mm=5.0)
    added = np.argwhere(sitk.GetArrayFromImage(edit.label) != sitk.GetArrayFromImage(label))
    reach = np.abs((added - np.array(MISSED)) * np.array(SPACING[::-1]))
    assert np.sqrt((reach ** 2).sum(axis=1)).max() <= 5.0 + 1e-9



def test_the_default_radius_reaches_further_for_a_primary_than_for_a_node():
    """A lesion 70 mm long: as GTVp (45 mm reach) it is drawn whole, as GTVn (25 mm) it is cut at 25 mm each side."""
    pet = np.full(SHAPE, 1.0, np.float32)
    z, y, x = np.meshgrid(*[np.arange(n) * s for n, s in zip(SHAPE, SPACING[::-1])], indexing="ij")
    rod = ((z - 40.0) ** 2 + (y - 50.0) ** 2 <= 36.0) & (np.abs(x - 60.0) <= 35.0)
    pet[rod] = 10.0
    pet[20, 50, 60] = 10.5  # the hottest voxel, in the middle
    empty = image(np.zeros(SHAPE, np.uint8))
    pet_image = image(pet)
    click = point_of((20, 50, 60))
    as_primary = sitk.GetArrayFromImage(add_lesion(empty, pet_image, click, "GTVp").label) == 1
    as_node = sitk.GetArrayFromImage(add_lesion(empty, pet_image, click, "GTVn").label) == 2
    assert dice(as_primary, rod) > 0.97
    extent = np.abs(np.argwhere(as_node)[:, 2] - 60)
    assert extent.max() <= 25 and 0.6 < dice(as_node, rod) < 0.9
    # an explicit radius holds for either structure
    narrow = sitk.GetArrayFromImage(add_lesion(empty, pet_image, click, "GTVp", radius_mm=10.0).label) == 1
    assert np.abs(np.argwhere(narrow)[:, 2] - 60).max() <= 10
    with pytest.raises(InputError, match="must be a positive number"):
        add_lesion(empty, pet_image, click, "GTVp", radius_mm=0.0)

def weak_and_necrotic_nodes():
    """A weak node (SUV 2.2 on a background of 1.0) and a necrotic one (a rim of SUV 8 around a cold core)."""
    pet = np.full(SHAPE, 1.0, np.float32)
    pet[sphere(MISSED, 7)] = 2.2
    necrotic = sphere(NODE, 9)
    pet[necrotic] = 8.0
    pet[sphere(NODE, 5)] = 1.0
    pet = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(image(pet), 1.5))
    return image(np.zeros(SHAPE, np.uint8)), image(pet), necrotic


def test_the_threshold_is_taken_over_the_local_background():
    label, pet, _ = weak_and_necrotic_nodes()
    corrected = add_lesion(label, pet, point_of(MISSED), "GTVn")
    plain = add_lesion(label, pet, point_of(MISSED), "GTVn", background=False)
    weak = sphere(MISSED, 7)
    # 41 % of SUVmax 2.2 lies below the background: the plain threshold fills the whole reach; over the background
    # the node is found
    assert dice(sitk.GetArrayFromImage(corrected.label) == 2, weak) > 0.8
    # (the plain threshold's flood is cut as a leak, at a higher fraction, and is still far off)
    assert dice(sitk.GetArrayFromImage(plain.label) == 2, weak) < 0.7
    assert "over background 1.00" in corrected.message and "over background" not in plain.message
    with pytest.raises(InputError, match="no PET uptake above the background"):
        add_lesion(label, image(np.full(SHAPE, 1.0, np.float32)), point_of(MISSED), "GTVn")


def test_a_necrotic_core_is_part_of_the_added_lesion():
    label, pet, necrotic = weak_and_necrotic_nodes()
    added = sitk.GetArrayFromImage(add_lesion(label, pet, point_of((NODE[0], NODE[1], NODE[2] + 7)), "GTVn").label)
    assert (added[sphere(NODE, 4)] == 2).all()  # the cold core, enclosed by the rim, is filled
    assert dice(added == 2, necrotic) > 0.8


def test_remove_takes_the_lesion_under_or_beside_the_click(case):
    label, _, _ = case
    before = sitk.GetArrayFromImage(label)
    edit = remove_lesion(label, point_of((FALSE[0], FALSE[1], FALSE[2] + 4 + 3)))  # 3 mm beside its edge
    after = sitk.GetArrayFromImage(edit.label)
    np.testing.assert_array_equal(after != before, sphere(FALSE, 4))
    assert (after[sphere(FALSE, 4)] == 0).all() and edit.voxels == sphere(FALSE, 4).sum()
    with pytest.raises(InputError, match=r"no lesion at .* within 5 mm"):
        remove_lesion(label, point_of((FALSE[0], FALSE[1], FALSE[2] + 4 + TOLERANCE_MM + 2)))


def test_relabel_switches_one_lesion_only(case):
    label, _, _ = case
    before = sitk.GetArrayFromImage(label)
    edit = relabel_lesion(label, point_of(NODE))
    after = sitk.GetArrayFromImage(edit.label)
    assert (after[sphere(NODE, 6)] == 1).all() and edit.structure == "GTVp"
    np.testing.assert_array_equal(after[~sphere(NODE, 6)], before[~sphere(NODE, 6)])
    assert (sitk.GetArrayFromImage(relabel_lesion(label, point_of(PRIMARY), "GTVn").label)[sphere(PRIMARY, 10)] == 2).all()
    with pytest.raises(InputError, match="GTVp already"):
        relabel_lesion(label, point_of(PRIMARY), "gtvp")


def test_points_are_patient_coordinates_whatever_the_voxel_order(case):
    label, pet, _ = case
    flip = (True, True, False)
    flipped = add_lesion(sitk.Flip(label, flip), sitk.Flip(pet, flip), point_of(MISSED), "GTVn")
    plain = add_lesion(label, pet, point_of(MISSED), "GTVn")
    np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.Flip(flipped.label, flip)),
                                  sitk.GetArrayFromImage(plain.label))


def test_bad_clicks_are_one_line_errors(case):
    label, pet, _ = case
    with pytest.raises(InputError, match=r"outside the label map's grid"):
        remove_lesion(label, (500.0, 0.0, 0.0))
    with pytest.raises(InputError, match="unknown structure 'GTVx'"):
        add_lesion(label, pet, point_of(MISSED), "GTVx")
    assert structure_value("gtvn") == 2 and structure_value(1) == 1 and structure_value("2") == 2
    assert DEFAULT_FRACTION == 0.41


def test_redraw_replaces_the_lesion_with_the_avid_region_and_keeps_its_structure(case):
    label, pet, truth = case
    array = sitk.GetArrayFromImage(label)
    array[sphere(NODE, 6)] = 0
    array[sphere(NODE, 3)] = 2  # drawn too tight
    edit = redraw_lesion(image(array), pet, point_of(NODE))
    after = sitk.GetArrayFromImage(edit.label)
    assert edit.action == "redraw" and edit.structure == "GTVn"
    node_now = (after == 2) & sphere(NODE, 12)
    assert dice(node_now, sphere(NODE, 6)) > 0.8 > dice(sphere(NODE, 3), sphere(NODE, 6))
    np.testing.assert_array_equal(after[~sphere(NODE, 12)], array[~sphere(NODE, 12)])  # nothing else moved
    with pytest.raises(InputError, match="no lesion at"):
        redraw_lesion(label, pet, point_of(MISSED))  # nothing drawn there to redraw: that is an add


def test_the_background_is_taken_over_voxels_the_pet_measured():
    """A PET whose field of view ends inside the background shell: the voxels beyond it are the resampling's 0,
    not tissue; the region is the one the whole PET gives."""
    shape, spacing, origin = (30, 40, 40), (2.0, 2.0, 2.0), (-40.0, -40.0, -30.0)
    z, y, x = np.mgrid[0:shape[0], 0:shape[1], 0:shape[2]]
    suv = 2.0 + 8.0 * np.exp(-(((x - 20) * 2.0) ** 2 + ((y - 20) * 2.0) ** 2 + ((z - 15) * 2.0) ** 2) / 18.0)
    whole = image(suv.astype(np.float32), spacing, origin)
    short = whole[14:27, 14:27, 9:22]  # 26 mm around the peak: the 10 mm reach, not the shell beyond it
    empty = image(np.zeros(shape, np.uint8), spacing, origin)
    regions = [add_lesion(empty, pet, (0.0, 0.0, 0.0), "GTVn", radius_mm=10.0) for pet in (whole, short)]
    assert "background 2.00" in regions[0].message and "background 2.00" in regions[1].message
    np.testing.assert_array_equal(sitk.GetArrayFromImage(regions[0].label), sitk.GetArrayFromImage(regions[1].label))


def test_a_click_on_a_face_takes_the_same_voxel_however_the_grid_is_stored():
    """Both outer faces belong to the grid, and a point between two voxels takes the one toward +x (L), +y, +z:
    on a volume and on its copy stored flipped, the same physical voxel."""
    array = np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6) % 2 + 1
    plain = image(array, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    flipped = sitk.Flip(plain, [True, False, False])  # the same voxels in space, x stored the other way round
    for x in (-0.5, 0.5, 2.5, 5.5):  # the outer faces and two faces between voxels
        on_plain = remove_lesion(plain, (x, 2.0, 1.0)).label
        on_flipped = remove_lesion(flipped, (x, 2.0, 1.0)).label
        np.testing.assert_array_equal(sitk.GetArrayFromImage(sitk.Resample(on_flipped, plain)),
                                      sitk.GetArrayFromImage(on_plain))
    with pytest.raises(InputError, match="outside the label map's grid"):
        remove_lesion(plain, (5.6, 2.0, 1.0))


HOT, WEAK = (20, 50, 40), (20, 50, 52)  # matted nodes: the hot one's radius 6 and the weak one's 7 overlap by 1 mm


def matted_nodes():
    """PET of two matted nodes, one hot (SUV 12) and one weak (SUV 3); a label holding the hot one only."""
    pet = np.full(SHAPE, 1.0, np.float32)
    pet[sphere(WEAK, 7)] = 3.0
    pet[sphere(HOT, 6)] = 12.0
    pet = sitk.SmoothingRecursiveGaussian(image(pet), 2.0)
    label = sphere(HOT, 6).astype(np.uint8) * 2
    return image(label), pet


def test_a_click_on_the_uncontoured_one_of_matted_nodes_adds_it_not_the_hot_one_beside_it():
    """Sought everywhere within 6 mm of the click, the peak was the contoured hot node's, whose region was drawn
    already: the weak node the user clicked on was not added."""
    label, pet = matted_nodes()
    edit = add_lesion(label, pet, point_of(WEAK), "GTVn")
    after = sitk.GetArrayFromImage(edit.label)
    added = after != sitk.GetArrayFromImage(label)
    weak_alone = sphere(WEAK, 7) & ~sphere(HOT, 6)
    assert dice(added, weak_alone) > 0.75
    assert (after[sphere(HOT, 6)] == 2).all()  # the hot node stays as drawn


def test_a_click_inside_a_lesion_adds_what_of_its_avid_region_is_still_uncontoured():
    pet = np.full(SHAPE, 1.0, np.float32)
    pet[sphere(PRIMARY, 10)] = 12.0
    pet = sitk.SmoothingRecursiveGaussian(image(pet), 2.0)
    tight = image(sphere(PRIMARY, 5).astype(np.uint8))  # a primary drawn far too tight
    edit = add_lesion(tight, pet, point_of(PRIMARY), "GTVp")
    after = sitk.GetArrayFromImage(edit.label) == 1
    assert dice(after, sphere(PRIMARY, 10)) > 0.9


def test_a_region_that_runs_into_the_uptake_beside_it_is_cut_at_a_higher_fraction():
    """A node (SUV 6) touching a gland's uptake (SUV 3.3, above the node's 41 % over the background): at 41 % the
    region floods the gland (Dice 0.4); one step up it holds the node alone. Without the cut, the user had to find
    the fraction by hand."""
    from HNTumorSegLib.editing import clicks

    node, gland = (20, 20, 90), (20, 20, 69)
    pet = np.full(SHAPE, 1.0, np.float32)
    pet[sphere(gland, 14)] = 3.3
    pet[sphere(node, 7)] = 6.0
    pet = sitk.SmoothingRecursiveGaussian(image(pet), 2.0)
    empty = image(np.zeros(SHAPE, np.uint8))
    edit = add_lesion(empty, pet, point_of(node), "GTVn")
    assert dice(sitk.GetArrayFromImage(edit.label) == 2, sphere(node, 7)) > 0.9
    assert "voxels >= 45% of SUVmax" in edit.message and "raised from 41%" in edit.message
    drawn = clicks.avid_region(empty, pet, point_of(node))
    assert drawn.fraction == pytest.approx(0.45) and dice(drawn.mask, sphere(node, 7)) > 0.9
    # a lesion alone is drawn at the fraction asked for
    alone = clicks.avid_region(empty, sitk.SmoothingRecursiveGaussian(image(np.where(sphere(node, 7), 6.0, 1.0)
                                                                              .astype(np.float32)), 2.0), point_of(node))
    assert alone.fraction == DEFAULT_FRACTION


def test_a_click_outside_the_pet_s_field_of_view_says_so(case):
    """A PET shorter than the CT: an add or a redraw clicked where the PET has no voxel said "no PET uptake above the
    background" (its resampled padding), as if the PET had been read there."""
    label, pet, _ = case
    short = pet[:, :, 16:]  # the PET begins at slice 16 (z = -8 mm) of the label's 40
    for click in (lambda: add_lesion(label, short, point_of(FALSE), "GTVn"),  # slice 10: below the PET
                  lambda: redraw_lesion(label, short, point_of(FALSE))):
        with pytest.raises(InputError, match=r"\(-30.0, 30.0, -20.0\) mm lies outside the PET's field of view"):
            click()
    added = sitk.GetArrayFromImage(add_lesion(label, short, point_of(MISSED), "GTVn").label)
    assert np.any(added[sphere(MISSED, 3)] == 2)  # inside the PET: drawn
