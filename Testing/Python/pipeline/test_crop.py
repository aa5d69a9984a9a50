"""Eqs. (1)-(10) on constructed PET volumes whose answers are worked out by hand."""

import numpy as np
import pytest

from HNTumorSegLib.pipeline.crop import CropWindow, NoUptakeError, brain_like, find_crop


def box(pet, z, y, x, value):
    pet[z[0]:z[1], y[0]:y[1], x[0]:x[1]] = value


def test_peak_anchor_centroid_and_slab():
    pet = np.zeros((200, 300, 320), np.float32)
    # "Brain": slices 150..179, rows 70..169, cols 170..269 (SUV 8; 100 cm^2, as a brain). Top slice 179.
    box(pet, (150, 180), (70, 170), (170, 270), 8.0)
    # Uptake below the 20-slice slab must not move the centroid: a hot body far off to one side.
    box(pet, (20, 40), (10, 20), (10, 20), 5.0)
    d = find_crop(pet)
    assert d.z_top == 179
    # Slab = slices 160..179; the brain block is symmetric: centroid = (219.5, 119.5).
    assert d.centroid_xy == (219.5, 119.5)
    # x1 = min(max(219 - 128, 0), 320 - 256) = 64 (clamped at the right edge); y1 = 119 - 128 < 0 -> 0.
    # Profile peak: the brain's slices all sum alike; argmax takes the first, 150. 150 > 50 -> peak.
    assert d.anchor == "peak"
    assert d.z_peak == 150
    assert d.window == CropWindow(64, 320, 0, 256, 151 - 112, 151)


def test_centroid_only_from_suprathreshold_slab_and_floor():
    pet = np.zeros((100, 400, 400), np.float32)
    box(pet, (90, 95), (200, 201), (300, 301), 2.0)  # 5 voxels at x=300
    box(pet, (70, 71), (200, 201), (100, 101), 2.0)  # z=70 is outside the slab 76..95
    pet[95, 0, 0] = 0.5  # equal to tau: not suprathreshold (strict >)
    d = find_crop(pet)
    assert d.z_top == 94
    assert d.centroid_xy == (300.0, 200.0)
    # x1 = min(max(300 - 128, 0), 400 - 256) = 144: clamped so the window stays inside.
    assert (d.window.x1, d.window.y1) == (144, 72)


def test_slab_clamped_at_bottom_when_top_is_low():
    pet = np.zeros((60, 300, 300), np.float32)
    box(pet, (0, 1), (50, 51), (60, 61), 1.0)
    box(pet, (10, 11), (150, 151), (160, 161), 1.0)
    d = find_crop(pet)
    assert d.z_top == 10
    assert d.centroid_xy == (110.0, 100.0)  # both voxels lie in S = {0..10}


def test_profile_restricted_to_in_plane_window():
    pet = np.zeros((150, 300, 600), np.float32)
    box(pet, (120, 140), (100, 140), (100, 140), 5.0)  # head near x=120
    box(pet, (60, 70), (100, 140), (500, 590), 50.0)  # very hot, but outside x in [0, 256)
    d = find_crop(pet)
    assert d.window.x1 == 0
    assert d.z_peak == 120
    # Had the hot block been inside the window it would win:
    pet2 = pet.copy()
    box(pet2, (60, 70), (100, 140), (150, 240), 50.0)
    assert find_crop(pet2).z_peak == 60


def test_top_anchor_when_top_slice_is_hot():
    pet = np.zeros((150, 300, 300), np.float32)
    box(pet, (100, 150), (50, 250), (50, 250), 1.0)  # brain cut by the top of the scan
    box(pet, (70, 71), (140, 160), (140, 160), 400.0)  # a hot peak at z=70 > 50
    d = find_crop(pet)
    assert d.z_peak == 70
    assert d.top_slice_mean > 0.1
    assert d.anchor == "top"
    assert (d.window.z1, d.window.z2) == (150 - 112, 150)


def test_top_slice_mean_uses_the_full_slice():
    pet = np.zeros((150, 100, 400), np.float32)
    box(pet, (100, 120), (0, 100), (20, 120), 3.0)  # a brain of 100 cm^2, in the in-plane window x in [0, 256)
    pet[149, :, 300:] = 0.36  # below tau; full-slice mean 0.09, window mean 0
    d = find_crop(pet)
    assert d.z_top == 119 and d.anchor == "peak" and d.z_peak == 100
    pet[149, :, 300:] = 0.45  # full-slice mean 0.1125 > 0.1, though none of it is in the window
    assert find_crop(pet).anchor == "top"


def test_top_anchor_when_peak_shallow_and_z_padding():
    pet = np.zeros((80, 256, 256), np.float32)
    box(pet, (40, 60), (100, 150), (100, 150), 6.0)
    d = find_crop(pet)
    assert d.z_peak == 40 and d.anchor == "top"  # 40 <= 50
    # Z = 80 < 112: z1 = 80 - 112 = -32, padding inferiorly.
    assert d.window == CropWindow(0, 256, 0, 256, -32, 80)
    assert d.window.clipped(pet.shape) == CropWindow(0, 256, 0, 256, 0, 80)


def test_peak_boundary_at_50_and_51():
    for z_peak, anchor in [(50, "top"), (51, "peak")]:
        pet = np.zeros((200, 256, 256), np.float32)
        box(pet, (z_peak, z_peak + 5), (78, 178), (78, 178), 6.0)  # 100 cm^2: a brain
        d = find_crop(pet)
        assert (d.z_peak, d.anchor) == (z_peak, anchor)
    # peak-anchored with z_peak = 51: z2 = 52, z1 = 52 - 112 = -60 (padding below).
    assert (d.window.z1, d.window.z2) == (-60, 52)


def test_in_plane_padding_when_field_of_view_is_small():
    pet = np.zeros((150, 200, 230), np.float32)
    box(pet, (120, 140), (40, 160), (60, 180), 5.0)  # a brain of 144 cm^2
    d = find_crop(pet)
    # X, Y < 256: max(0, X - 256) = 0 so x1 = y1 = 0; the window reaches past the image.
    assert (d.window.x1, d.window.x2, d.window.y1, d.window.y2) == (0, 256, 0, 256)
    assert d.window.clipped(pet.shape) == CropWindow(0, 230, 0, 200, 9, 121)


def test_left_edge_clamp():
    pet = np.zeros((150, 400, 400), np.float32)
    box(pet, (120, 140), (5, 15), (5, 15), 5.0)
    d = find_crop(pet)
    assert (d.window.x1, d.window.y1) == (0, 0)


def test_no_uptake_raises():
    with pytest.raises(NoUptakeError):
        find_crop(np.full((20, 30, 30), 0.5, np.float32))


def test_a_peak_that_is_no_brain_anchors_the_window_at_the_top():
    """A scan without the brain (from the skull base down): the profile's peak is the bladder, far below, or the
    primary tumour, small. Eq. (10) anchored the window there and missed the head and neck; the window now starts
    at the top of the scan, and the decision says no brain was found."""
    pet = np.full((260, 256, 256), 0.05, np.float32)  # top slice mean <= 0.1: eq. (9) looks for the peak
    box(pet, (200, 259), (100, 156), (100, 156), 1.0)  # neck tissue under the top
    box(pet, (230, 240), (120, 140), (110, 130), 12.0)  # the primary: 4 cm^2
    box(pet, (60, 80), (80, 160), (90, 170), 40.0)  # the bladder: 64 cm^2 but 550 mm under the top
    d = find_crop(pet)
    assert d.z_peak in range(60, 80) and not d.brain_found and d.anchor == "top"
    assert (d.window.z1, d.window.z2) == (260 - 112, 260)
    box(pet, (60, 80), (80, 160), (90, 170), 0.05)  # no bladder: the peak is the primary, too small for a brain
    d = find_crop(pet)
    assert d.z_peak in range(230, 240) and not d.brain_found and d.anchor == "top"


def test_brain_like_on_area_and_depth():
    brain = np.zeros((256, 256), np.float32)
    brain[60:180, 70:170] = 8.0  # 120 cm^2
    assert brain_like(brain, 25) and not brain_like(brain, 60)  # 75 mm deep; 180 mm
    assert not brain_like(brain[:50, :50] * 0, 25)  # an empty slice
    tumour = np.zeros((256, 256), np.float32)
    tumour[100:150, 100:150] = 15.0  # 25 cm^2
    assert not brain_like(tumour, 10)


def test_a_pet_ending_below_the_lattice_top_is_read_from_its_own_top_slice():
    """The brain cut by the PET's field of view, 20 slices under the CT's top (the lattice above it: padding).
    Eq. (9) on the lattice's top slice saw padding and anchored on a peak; on the PET's top slice it sees the cut,
    and the window hangs from the PET's top, as it does when the cut is the lattice's own top."""
    pet = np.zeros((170, 300, 300), np.float32)
    box(pet, (100, 150), (50, 250), (50, 250), 1.0)  # the brain, cut at slice 149 by the PET's field of view
    box(pet, (120, 121), (50, 250), (50, 250), 2.0)  # its widest, hottest slice: the profile's peak
    paper_literal = find_crop(pet)
    assert paper_literal.anchor == "peak" and paper_literal.window.z2 == 121  # the cut unseen: what the fix mends
    d = find_crop(pet, pet_top=150)
    assert d.pet_top == 150 and d.z_top == 149 and d.top_slice_mean > 0.1
    assert d.anchor == "top" and (d.window.z1, d.window.z2) == (150 - 112, 150)
    assert d.window == find_crop(pet[:150]).window  # as if the lattice ended where the PET does
    assert find_crop(pet, pet_top=170) == paper_literal  # a PET that reaches the top: the paper's equations
