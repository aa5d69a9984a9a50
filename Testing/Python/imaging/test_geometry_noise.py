"""The same volume gives the same labels, wherever its geometry came from.

Geometry read back from Slicer's IJK-to-RAS matrix differs from the file's by ~1e-16 relative
(3.90625 becomes 3.9062499999999996). On a CT of 1.5 mm voxels every other voxel centre lies exactly
halfway between two voxels of the 1 x 1 x 3 mm lattice, so a nearest-neighbour step decides each of
those ties by the noise. These tests put ties everywhere and check the noise changes nothing.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from HNTumorSegLib.pipeline.crop import WINDOW_ZYX
from HNTumorSegLib.imaging.geometry import Geometry, snap_geometry
from HNTumorSegLib.pipeline.preprocess import preprocess
from HNTumorSegLib.pipeline.restore import restore
from HNTumorSegLib.slicer_support.scene_geometry import geometry_from_ijk_to_ras, ijk_to_ras_from_geometry

TIE_SPACING = 1.5  # against the 1 mm (x, y) and 3 mm (z: 1.5 mm voxels, every other one on a tie) lattice


def tie_ct_pet() -> tuple[sitk.Image, sitk.Image]:
    """CT 1.5 mm isotropic (ties everywhere against the lattice); PET 3 mm with a hot 'brain' and a lesion."""
    ct = np.full((60, 100, 100), -1000, np.int16)
    ct[:, 15:85, 20:80] = 40
    ct_img = sitk.GetImageFromArray(ct)
    ct_img.SetSpacing((TIE_SPACING,) * 3)
    ct_img.SetOrigin((-75.0, -75.0, -45.0))
    pet = np.zeros((30, 50, 50), np.float32)
    pet[:, 8:42, 10:40] = 1.0
    pet[22:28, 18:32, 18:32] = 8.0
    pet[8:12, 30:36, 14:20] = 6.0
    pet_img = sitk.GetImageFromArray(pet)
    pet_img.SetSpacing((3.0, 3.0, 3.0))
    pet_img.SetOrigin((-76.5, -73.5, -46.5))
    return ct_img, pet_img


def one_ulp_low_and_shifted(image: sitk.Image, shift_mm: float = 1e-13) -> sitk.Image:
    noisy = sitk.Image(image)
    noisy.SetSpacing([float(np.nextafter(s, 0.0)) for s in image.GetSpacing()])
    noisy.SetOrigin([o + shift_mm for o in image.GetOrigin()])
    return noisy


def through_slicer_matrix(image: sitk.Image) -> sitk.Image:
    """The geometry a Slicer volume node hands back: LPS -> IJK-to-RAS matrix -> LPS."""
    geometry = geometry_from_ijk_to_ras(ijk_to_ras_from_geometry(Geometry.of(image)), image.GetSize())
    return geometry.apply(sitk.Image(image))


def window_mask(prep) -> np.ndarray:
    """A mask with structure at voxel scale: GTVp from the PET channel, GTVn in stripes two voxels wide in the body."""
    pet = prep.image[1]
    mask = np.zeros(WINDOW_ZYX, np.uint8)
    mask[pet > np.percentile(pet, 95)] = 1
    zz, yy, xx = np.indices(WINDOW_ZYX)
    mask[(xx % 4 < 2) & (prep.image[0] > np.median(prep.image[0])) & (mask == 0)] = 2
    return mask


def shifted(image: sitk.Image, shift_mm: float = -1e-13) -> sitk.Image:
    noisy = sitk.Image(image)
    noisy.SetOrigin([o + shift_mm for o in image.GetOrigin()])
    return noisy


NOISES = {"one ulp low, origin +1e-13 mm": one_ulp_low_and_shifted, "origin -1e-13 mm": shifted,
          "Slicer IJK-to-RAS round trip": through_slicer_matrix}


@pytest.fixture(scope="module")
def exact():
    ct, pet = tie_ct_pet()
    prep = preprocess(ct, pet)
    mask = window_mask(prep)
    return ct, pet, prep, mask, sitk.GetArrayFromImage(restore(mask, prep.provenance))


def test_the_grid_really_puts_ties_everywhere(exact):
    """Guard of the test itself: CT voxel centres fall on lattice half-steps, so noise could flip them."""
    ct, _, prep, _, label = exact
    lattice = Geometry.from_dict(prep.provenance["resampled"])
    centres = np.array([Geometry.of(ct).index_to_point((i, 0, 0))[0] for i in range(10)])
    steps = (centres - lattice.origin[0]) / lattice.spacing[0]
    assert np.count_nonzero(np.isclose(steps % 1.0, 0.5)) == 5
    assert {1, 2} <= set(np.unique(label))


@pytest.mark.parametrize("shift_mm", [1e-13, -1e-13])
def test_restoring_onto_a_noisy_ct_grid_gives_identical_labels(exact, shift_mm):
    ct, _, prep, mask, label = exact
    noisy = dict(prep.provenance)
    noisy["original_ct"] = Geometry.of(one_ulp_low_and_shifted(ct, shift_mm)).to_dict()
    restored = restore(mask, noisy)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(restored), label)
    # The result carries the geometry it was asked for, exactly (not the snapped one).
    assert Geometry.of(restored) == Geometry.from_dict(noisy["original_ct"])


@pytest.mark.parametrize("noise", list(NOISES))
def test_the_whole_path_is_blind_to_geometry_noise(exact, noise):
    ct, pet, prep, mask, label = exact
    noisy_ct, noisy_pet = NOISES[noise](ct), NOISES[noise](pet)
    assert Geometry.of(noisy_ct) != Geometry.of(ct) or noise == "Slicer IJK-to-RAS round trip"
    noisy_prep = preprocess(noisy_ct, noisy_pet)
    np.testing.assert_array_equal(noisy_prep.image, prep.image)
    for key in ("crop", "resampled", "window"):
        assert noisy_prep.provenance[key] == prep.provenance[key], key
    np.testing.assert_array_equal(sitk.GetArrayFromImage(restore(mask, noisy_prep.provenance)), label)


def test_snapping_leaves_exact_geometry_alone_and_does_not_touch_the_callers_image():
    ct, _ = tie_ct_pet()
    assert snap_geometry(ct) is ct
    noisy = one_ulp_low_and_shifted(ct)
    before = Geometry.of(noisy)
    snapped = snap_geometry(noisy)
    assert Geometry.of(snapped) == Geometry.of(ct) and Geometry.of(noisy) == before
    dyadic = Geometry((2, 2, 2), (0.9765625, 0.9765625, 2.5), (-249.51171875, 0.0, 1.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    assert dyadic.snapped() == dyadic
    assert max(abs(a - b) for a, b in zip(Geometry((2, 2, 2), (0.976562, 1.3, 2.5), (-249.511719, 0.1, 1.0),
                                                   dyadic.direction).snapped().spacing, (0.976562, 1.3, 2.5))) < 1e-7


def test_slices_up_to_the_top_of_a_field_of_view_follow_itk_s_half_voxel_rule():
    """Lattice slice k (3 mm, z = k * 3) lies at or below the PET's top when at most half a PET voxel above its top
    voxel centre; the same with the 1e-16 noise of a geometry read back from Slicer."""
    from HNTumorSegLib.imaging.geometry import slices_up_to_top

    lattice = Geometry((10, 10, 40), (1.0, 1.0, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    for top_centre, expected in ((58.0, 21), (57.0, 20), (200.0, 40), (-4.0, 0)):  # +2 mm: half a 4-mm voxel
        pet = sitk.Image(5, 5, 10, sitk.sitkFloat32)
        pet.SetSpacing((4.0, 4.0, 4.0))
        pet.SetOrigin((0.0, 0.0, top_centre - 36.0))
        assert slices_up_to_top(pet, lattice) == expected, top_centre
    pet.SetOrigin((0.0, 0.0, 58.0 - 36.0))
    pet.SetSpacing((4.0, 4.0, 3.9999999999999996))  # top centre 57.99999999999999...: slice 20 (60 mm) still in
    assert slices_up_to_top(pet, lattice) == 21
