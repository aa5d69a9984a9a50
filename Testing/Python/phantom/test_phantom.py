"""Synthetic PET/CT phantoms: reproducibility, image properties, and the realism the pipeline
relies on (the PET brain peak wins the z-profile; every lesion fits in the 256 x 256 x 112 window).

The realism checks run the pipeline's own window decision (:func:`HNTumorSegLib.pipeline.crop.find_crop`)
on the PET resampled to the 1 x 1 x 3 mm lattice built on the LPS-oriented CT, as preprocessing
does, and then look at where the brain and the labels are in physical space.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from HNTumorSegLib.pipeline.crop import find_crop
from HNTumorSegLib.phantom import FIELDS_OF_VIEW, PhantomCase, make_phantom, write_case

LATTICE = (1.0, 1.0, 3.0)


def arr(img: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(img)


def on_lattice(case: PhantomCase):
    """PET (linear) and label (nearest) on the analysis lattice of the LPS-oriented CT."""
    ct_o = sitk.DICOMOrient(case.ct, "LPS")
    size = [int(round(n * s / t)) for n, s, t in zip(ct_o.GetSize(), ct_o.GetSpacing(), LATTICE)]
    ref = sitk.Image(size, sitk.sitkUInt8)
    ref.SetSpacing(LATTICE)
    ref.SetOrigin(ct_o.GetOrigin())
    ref.SetDirection(ct_o.GetDirection())
    pet = sitk.Resample(sitk.DICOMOrient(case.pet, "LPS"), ref, sitk.Transform(), sitk.sitkLinear, 0.0,
                        sitk.sitkFloat32)
    lab = sitk.Resample(sitk.DICOMOrient(case.label, "LPS"), ref, sitk.Transform(),
                        sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return arr(pet), arr(lab), ref


def check_realism(case: PhantomCase) -> None:
    """Realism checks (1)-(3) of the phantom specification, via the pipeline's crop."""
    pet, lab, ref = on_lattice(case)
    d = find_crop(pet)
    z0 = ref.GetOrigin()[2]
    brain_lo, brain_hi = case.info["brain_z_range_mm"]
    # (1) The z-profile peak lies in the brain, not the heart or bladder.
    z_peak_mm = z0 + LATTICE[2] * d.z_peak
    assert brain_lo - 3.0 <= z_peak_mm <= brain_hi + 3.0, (z_peak_mm, case.info["brain_z_range_mm"])
    # The in-plane centroid (top 20 slices of uptake) is the head's.
    cx = ref.GetOrigin()[0] + d.centroid_xy[0]
    cy = ref.GetOrigin()[1] + d.centroid_xy[1]
    bc = case.info["brain_centre_mm"]
    assert abs(cx - bc[0]) < 20 and abs(cy - bc[1]) < 25, ((cx, cy), bc)
    # (3) Top slice: inside the brain when cut, air above the vertex otherwise.
    if case.info["flags"]["brain_cut"]:
        assert d.top_slice_mean > 0.1
        assert d.anchor == "top"
    else:
        assert d.top_slice_mean < 0.1
        assert d.anchor == "peak"
    # (2) Every labelled voxel lies inside the 256 x 256 x 112 window.
    w = d.window
    zs, ys, xs = np.nonzero(lab)
    assert zs.size > 0
    assert w.z1 <= zs.min() and zs.max() < w.z2, (w, zs.min(), zs.max())
    assert w.y1 <= ys.min() and ys.max() < w.y2, (w, ys.min(), ys.max())
    assert w.x1 <= xs.min() and xs.max() < w.x2, (w, xs.min(), xs.max())
    # ... and, in mm, within 336 mm below the peak (or top) and +-128 mm of the head centroid.
    z_end_mm = z0 + LATTICE[2] * (w.z2 - 1)
    lab_z_mm = z0 + LATTICE[2] * zs
    assert lab_z_mm.max() <= z_end_mm and lab_z_mm.min() > z_end_mm - 336.0
    assert np.abs(ref.GetOrigin()[0] + xs - cx).max() <= 129.0
    assert np.abs(ref.GetOrigin()[1] + ys - cy).max() <= 129.0
    # Nearest-neighbour resampling keeps every lesion class that the CT-grid label has.
    assert set(np.unique(lab)) == set(np.unique(arr(case.label)))


@pytest.fixture(scope="module")
def head() -> PhantomCase:
    return make_phantom(11, "head", n_nodes=3, ct_matrix=256)


# ---------------------------------------------------------------------------------------------

def test_reproducible_and_seed_dependent():
    a = make_phantom(4, "head", ct_matrix=128)
    b = make_phantom(4, "head", ct_matrix=128)
    c = make_phantom(5, "head", ct_matrix=128)
    for key in ("ct", "pet", "label"):
        np.testing.assert_array_equal(arr(getattr(a, key)), arr(getattr(b, key)))
        assert getattr(a, key).GetOrigin() == getattr(b, key).GetOrigin()
    strip = lambda info: {k: v for k, v in info.items() if k != "timings_s"}  # noqa: E731
    assert strip(a.info) == strip(b.info)
    assert a.case_id == "PHANTOM-004" and c.case_id == "PHANTOM-005"
    assert not np.array_equal(arr(a.pet), arr(c.pet)) or a.pet.GetSize() != c.pet.GetSize()
    assert a.info["tumour_centre_mm"] != c.info["tumour_centre_mm"]


def test_same_patient_in_every_field_of_view():
    """The seed fixes the patient; the field of view and flags only change how it is scanned."""
    a = make_phantom(8, "head", ct_matrix=64)
    b = make_phantom(8, "head_upper", ct_matrix=64, brain_cut=True)
    assert a.info["tumour_centre_mm"] == b.info["tumour_centre_mm"]
    assert a.info["nodes"] == b.info["nodes"]
    assert a.info["brain_centre_mm"] == b.info["brain_centre_mm"]


def test_types_values_and_json_info(head):
    ct, pet, lab = arr(head.ct), arr(head.pet), arr(head.label)
    assert ct.dtype == np.int16 and pet.dtype == np.float32 and lab.dtype == np.uint8
    assert ct.min() >= -1024 and ct.max() <= 3071
    assert pet.min() >= 0.0 and 10.0 < pet.max() < 60.0
    assert set(np.unique(lab)) <= {0, 1, 2}
    assert (lab == 1).sum() > 0
    json.dumps(head.info)
    # Tissue classes at known places: brain centre (CT ~35 HU, PET high), air above the vertex,
    # bone present, the lesions enhancing on CT and hot on PET.
    bc = head.info["brain_centre_mm"]
    k, j, i = reversed(head.ct.TransformPhysicalPointToIndex(bc))
    assert 0 < np.median(ct[k, j - 3:j + 4, i - 3:i + 4]) < 60
    assert np.median(ct[-1]) < -900
    assert (ct > 700).sum() > 1000
    pk = head.pet.TransformPhysicalPointToIndex(bc)[::-1]
    assert 3.0 < pet[pk] < 12.0
    gtvp = ndimage.binary_erosion(lab == 1)
    assert 45 < ct[gtvp].mean() < 90
    pet_on_ct = arr(sitk.Resample(head.pet, head.ct, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    assert pet_on_ct[lab == 1].max() > 4.0
    assert pet_on_ct[lab == 1].mean() > 3 * np.median(pet_on_ct[(ct > 0) & (ct < 100) & (lab == 0)])


def test_pet_and_ct_grids_differ_but_pet_covers_ct(head):
    ct, pet = head.ct, head.pet
    assert ct.GetSize() != pet.GetSize()
    assert not np.allclose(ct.GetSpacing(), pet.GetSpacing())
    assert not np.allclose(ct.GetOrigin(), pet.GetOrigin())
    assert 3.5 <= pet.GetSpacing()[0] <= 4.5 and 3.0 <= pet.GetSpacing()[2] <= 4.0
    assert ct.GetSpacing()[2] == 3.0

    def extent(img):
        o, s, n = np.array(img.GetOrigin()), np.array(img.GetSpacing()), np.array(img.GetSize())
        return o - s / 2, o + (n - 1) * s + s / 2

    clo, chi = extent(ct)
    plo, phi = extent(pet)
    assert np.all(plo <= clo + 1e-3) and np.all(phi >= chi - 1e-3)
    assert np.all(plo > clo - 20) and np.all(phi < chi + 20)


@pytest.mark.parametrize("n_nodes", [0, 1, 2, 4])
def test_node_count_matches_components(n_nodes):
    case = make_phantom(20 + n_nodes, "head", n_nodes=n_nodes, ct_matrix=192)
    lab = arr(case.label)
    assert case.info["n_nodes"] == n_nodes == len(case.info["nodes"])
    _, n_gtvp = ndimage.label(lab == 1, structure=np.ones((3, 3, 3)))
    assert n_gtvp == 1
    _, n_comp = ndimage.label(lab == 2)
    assert n_comp == n_nodes
    if n_nodes == 0:
        assert not (lab == 2).any()


def test_field_of_view_extents():
    lengths = {}
    for fov in ("head", "head_upper"):
        case = make_phantom(2, fov, ct_matrix=64)
        lengths[fov] = case.ct.GetSize()[2] * 3.0
    assert 240 <= lengths["head"] <= 370
    assert 540 <= lengths["head_upper"] <= 700
    assert make_phantom(2, "head", ct_matrix=64).ct.GetSize()[:2] == (64, 64)
    small = make_phantom(2, "head", small_fov=True)
    assert small.ct.GetSize()[0] * small.ct.GetSpacing()[0] < 256.0
    assert small.ct.GetSpacing()[0] == pytest.approx(500 / 512)
    assert small.pet.GetSize()[0] * small.pet.GetSpacing()[0] < 256.0 + 20.0
    with pytest.raises(ValueError):
        make_phantom(1, "torso")
    with pytest.raises(ValueError):
        make_phantom(1, "head", n_nodes=5)


def test_realism_head(head):
    check_realism(head)


@pytest.mark.parametrize("kwargs", [
    {"fov": "head_upper"},
    {"fov": "head", "brain_cut": True},
    {"fov": "head_upper", "brain_cut": True, "small_fov": True},
    {"fov": "head", "small_fov": True, "flip_xy": True},
])
def test_realism_variants(kwargs):
    check_realism(make_phantom(31, ct_matrix=192, **kwargs))


def test_realism_whole_body():
    """One full-size case: 512 x 512, vertex to proximal thigh, bladder and heart in the window."""
    case = make_phantom(3, "whole_body")
    assert case.ct.GetSize()[:2] == (512, 512)
    assert 280 <= case.ct.GetSize()[2] <= 360
    # The bladder is in the scan and very hot, yet the brain wins the z-profile.
    assert arr(case.pet).max() > 12.0
    check_realism(case)


def test_flip_xy_same_physical_content():
    a = make_phantom(6, "head", ct_matrix=128)
    b = make_phantom(6, "head", ct_matrix=128, flip_xy=True)
    for key in ("ct", "pet", "label"):
        ia, ib = getattr(a, key), getattr(b, key)
        assert ib.GetDirection() == (-1.0, 0.0, 0.0, 0.0, -1.0, 0.0, 0.0, 0.0, 1.0)
        assert not np.array_equal(arr(ia), arr(ib))
        ob = sitk.DICOMOrient(ib, "LPS")
        np.testing.assert_array_equal(arr(ob), arr(ia))
        np.testing.assert_allclose(ob.GetOrigin(), ia.GetOrigin(), atol=1e-3)
        np.testing.assert_allclose(ob.GetDirection(), np.eye(3).ravel())
        assert ob.GetSpacing() == ia.GetSpacing()


@pytest.mark.parametrize("flip_xy", [False, True])
def test_write_case_hecktor_names_roundtrip(tmp_path, flip_xy):
    case = make_phantom(9, "head", ct_matrix=96, flip_xy=flip_xy, case_id="CHUV-042")
    paths = write_case(case, tmp_path)
    assert paths == {"ct": tmp_path / "CHUV-042" / "CHUV-042__CT.nii.gz",
                     "pet": tmp_path / "CHUV-042" / "CHUV-042__PT.nii.gz",
                     "label": tmp_path / "CHUV-042" / "CHUV-042.nii.gz"}
    for key, path in paths.items():
        assert path.is_file()
        orig, back = getattr(case, key), sitk.ReadImage(str(path))
        assert back.GetPixelID() == orig.GetPixelID()
        np.testing.assert_array_equal(arr(back), arr(orig))
        np.testing.assert_allclose(back.GetSpacing(), orig.GetSpacing(), rtol=0, atol=1e-6)
        np.testing.assert_allclose(back.GetOrigin(), orig.GetOrigin(), rtol=0, atol=1e-4)
        np.testing.assert_allclose(back.GetDirection(), orig.GetDirection(), atol=1e-6)


def test_fields_of_view_constant():
    assert FIELDS_OF_VIEW == ("head", "head_upper", "whole_body")


def test_public_names_of_the_former_module_remain():
    """``HNTumorSegLib.phantom`` became a package; what the single module offered is still there."""
    import HNTumorSegLib.phantom as phantom

    for name in ("PhantomCase", "make_phantom", "write_case", "FIELDS_OF_VIEW", "CT_FOV_MM", "CT_SLICE_MM",
                 "SMALL_FOV_MM", "PET_SPACINGS_XY", "PET_SPACINGS_Z", "CT_OUTSIDE_FOV_HU", "CT_HU_RANGE", "Grid",
                 "Shape", "Ellipsoid", "Tube", "Capsule", "Box", "Difference", "Layer", "rasterise_ct",
                 "rasterise_pet", "rasterise_label", "Patient", "BRAIN_CENTRE", "BRAIN_SEMI", "BRAIN_ZMIN", "Lesions"):
        assert hasattr(phantom, name), name
    assert phantom.PET_SPACINGS_XY == (4.0728, 3.6458, 4.0) and phantom.CT_SLICE_MM == 3.0
    with pytest.raises(ValueError, match="n_nodes"):
        make_phantom(1, "head", n_nodes=5, ct_matrix=64)  # classic: 0-4 nodes, as before


def test_the_timing_module_answers_help_without_generating_anything(capsys):
    from HNTumorSegLib.phantom.__main__ import main

    with pytest.raises(SystemExit) as done:
        main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: python -m HNTumorSegLib.phantom") and "hntumorseg-train phantoms" in out
