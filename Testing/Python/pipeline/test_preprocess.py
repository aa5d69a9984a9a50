"""Preprocessing and restoration on phantoms: the contract of paper section 2.2."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from HNTumorSegLib.pipeline.crop import CropWindow, find_crop
from HNTumorSegLib.imaging.geometry import Geometry, analysis_lattice, orient_lps, resample
from HNTumorSegLib.pipeline.intensity import normalize_ct
from HNTumorSegLib.evaluation.metrics import dice
from HNTumorSegLib.phantom import make_phantom
from HNTumorSegLib.pipeline.preprocess import PREPROCESSING_VERSION, preprocess
from HNTumorSegLib.pipeline.restore import restore

from conftest import tilted_case


@pytest.fixture(scope="module")
def head_case():
    return make_phantom(5, "head")


@pytest.fixture(scope="module")
def head_pre(head_case):
    return preprocess(head_case.ct, head_case.pet, head_case.label)


def test_output_shapes_types_and_ranges(head_pre):
    assert head_pre.image.shape == (2, 112, 256, 256) and head_pre.image.dtype == np.float32
    assert head_pre.label.shape == (112, 256, 256) and head_pre.label.dtype == np.uint8
    assert 0.0 < head_pre.image.min() and head_pre.image.max() < 1.0
    assert set(np.unique(head_pre.label)) <= {0, 1, 2}


def test_provenance_is_complete_and_json(head_pre, head_case):
    prov = json.loads(json.dumps(head_pre.provenance))
    for key in ("crop", "anchor", "z_top", "z_peak", "centroid_xy", "resampled", "original_ct", "version"):
        assert key in prov
    assert set(prov["crop"]) == {"x1", "x2", "y1", "y2", "z1", "z2"}
    c = prov["crop"]
    assert (c["x2"] - c["x1"], c["y2"] - c["y1"], c["z2"] - c["z1"]) == (256, 256, 112)
    assert prov["version"] == PREPROCESSING_VERSION
    assert Geometry.from_dict(prov["original_ct"]) == Geometry.of(head_case.ct)
    lattice = prov["resampled"]
    assert lattice["spacing"] == [1.0, 1.0, 3.0]
    ct_o = orient_lps(head_case.ct)
    assert lattice["origin"] == list(ct_o.GetOrigin())
    assert lattice["size"] == [int(round(n * s / t)) for n, s, t in
                               zip(ct_o.GetSize(), ct_o.GetSpacing(), (1.0, 1.0, 3.0))]


def test_crop_follows_the_equations_on_the_resampled_pet(head_case, head_pre):
    """Recompute P independently with plain SimpleITK and check the recorded window."""
    ct_o = sitk.DICOMOrient(head_case.ct, "LPS")
    lattice = analysis_lattice(Geometry.of(ct_o))
    P = sitk.GetArrayFromImage(resample(sitk.DICOMOrient(head_case.pet, "LPS"), lattice, sitk.sitkLinear, 0.0,
                                        sitk.sitkFloat32))
    d = find_crop(P)
    assert d.window == CropWindow(**head_pre.provenance["crop"])
    # The in-plane window holds the brain: the top 20 uptake slices lie inside it.
    assert head_pre.provenance["anchor"] in ("top", "peak")


def test_normalisation_and_padding_values():
    case = make_phantom(8, "head", small_fov=True)
    pre = preprocess(case.ct, case.pet)
    w = CropWindow(**pre.provenance["crop"])
    lattice = pre.provenance["resampled"]["size"]
    real = w.clipped((lattice[2], lattice[1], lattice[0]))
    assert real != w, "small field of view must need padding"
    dz, dy, dx = real.z1 - w.z1, real.y1 - w.y1, real.x1 - w.x1
    rz, ry, rx = real.z2 - real.z1, real.y2 - real.y1, real.x2 - real.x1
    inside = np.zeros((112, 256, 256), bool)
    inside[dz:dz + rz, dy:dy + ry, dx:dx + rx] = True
    ct_n, pet_n = pre.image
    # Padding: CT -1000 HU -> sigmoid(0) = 0.5; PET 0 -> sigmoid(-mu / sigma).
    assert np.allclose(ct_n[~inside], 0.5)
    mu, sigma = pre.provenance["pet_normalisation"]["mean"], pre.provenance["pet_normalisation"]["std"]
    assert np.allclose(pet_n[~inside], 1 / (1 + np.exp(mu / sigma)), atol=1e-6)
    # mu and sigma over the real voxels only: invert the sigmoid there and check the z-score.
    z = np.log(pet_n[inside].astype(np.float64) / (1 - pet_n[inside]))
    assert abs(z.mean()) < 1e-3 and abs(z.std() - 1) < 1e-3
    assert normalize_ct(np.array([-5000.0, -1000.0, 0.0, 1000.0, 3000.0])) == pytest.approx(
        1 / (1 + np.exp(-np.array([0.0, 0.0, 0.5, 1.0, 1.0]))))


def test_window_path_equals_full_path(head_case, head_pre):
    full = preprocess(head_case.ct, head_case.pet, head_case.label, ct_path="full")
    assert full.provenance == head_pre.provenance
    assert float(np.abs(full.image - head_pre.image).max()) <= 1e-4
    assert np.array_equal(full.label, head_pre.label)


def test_flipped_directions_give_the_same_input(head_pre):
    flipped = make_phantom(5, "head", flip_xy=True)
    assert np.allclose(np.asarray(flipped.ct.GetDirection()).reshape(3, 3), np.diag([-1, -1, 1]))
    pre = preprocess(flipped.ct, flipped.pet, flipped.label)
    assert pre.provenance["crop"] == head_pre.provenance["crop"]
    assert float(np.abs(pre.image - head_pre.image).max()) <= 1e-4
    assert np.array_equal(pre.label, head_pre.label)


@pytest.mark.parametrize("kwargs", [dict(fov="head"), dict(fov="head", flip_xy=True),
                                    dict(fov="head", small_fov=True), dict(fov="head_upper", brain_cut=True)])
def test_restore_round_trip(kwargs):
    fov = kwargs.pop("fov")
    case = make_phantom(21, fov, n_nodes=2, **kwargs)
    pre = preprocess(case.ct, case.pet, case.label)
    restored = restore(pre.label, pre.provenance)
    assert Geometry.of(restored) == Geometry.of(case.ct)
    assert restored.GetPixelID() == sitk.sitkUInt8
    got, truth = sitk.GetArrayViewFromImage(restored), sitk.GetArrayViewFromImage(case.label)
    assert set(np.unique(got)) <= {0, 1, 2}
    for value in (1, 2):
        assert (truth == value).any()
        assert dice(got, truth, value) >= 0.95, (kwargs, value)


def test_anchor_by_field_of_view():
    assert preprocess(*_ct_pet(make_phantom(2, "head_upper", brain_cut=True))).provenance["anchor"] == "top"
    whole = preprocess(*_ct_pet(make_phantom(2, "whole_body")))
    assert whole.provenance["anchor"] == "peak"
    assert whole.provenance["crop"]["z1"] > 0


def _ct_pet(case):
    return case.ct, case.pet


def test_restore_drops_padding_and_keeps_ct_grid():
    """A window full of label 1 restores to exactly the lattice voxels inside the window."""
    case = make_phantom(8, "head", small_fov=True)
    pre = preprocess(case.ct, case.pet)
    restored = restore(np.ones((112, 256, 256), np.uint8), pre.provenance)
    assert Geometry.of(restored) == Geometry.of(case.ct)
    arr = sitk.GetArrayViewFromImage(restored)
    # Every CT voxel whose centre lies in the window's physical box is labelled, and no other.
    win = Geometry.from_dict(pre.provenance["window"])
    ct_geom = Geometry.of(case.ct)
    idx = np.argwhere(np.ones(arr.shape, bool))[:: max(1, arr.size // 20000)]
    pts = np.array([ct_geom.index_to_point(i[::-1]) for i in idx])
    cont = np.array([win.point_to_index(p) for p in pts])
    inside = np.all((cont > -0.5 + 1e-6) & (cont < np.array(win.size) - 0.5 - 1e-6), axis=1)
    lattice = Geometry.from_dict(pre.provenance["resampled"])
    lat_idx = np.array([lattice.point_to_index(p) for p in pts])
    inside &= np.all((lat_idx > -0.5 + 1e-6) & (lat_idx < np.array(lattice.size) - 0.5 - 1e-6), axis=1)
    values = arr[tuple(idx.T)]
    assert np.array_equal(values.astype(bool), inside)


PET_BOX_VARIANTS = {
    "head": lambda: make_phantom(5, "head"),
    "whole-body": lambda: make_phantom(2, "whole_body"),
    "upper-brain-cut": lambda: make_phantom(2, "head_upper", brain_cut=True),
    "small-fov-flipped": lambda: make_phantom(8, "head", small_fov=True, flip_xy=True),
    "legacy-style": lambda: make_phantom(910001, "head_upper", style="legacy"),
    "oblique": lambda: tilted_case(make_phantom(21, "head", n_nodes=2), 12.0),
}


@pytest.mark.parametrize("variant", list(PET_BOX_VARIANTS))
def test_pet_resampled_box_by_box_gives_the_full_lattice_input_bit_for_bit(variant):
    """The crop asks the PET for the boxes its equations read (issue: no full-lattice PET array); the crop, the
    provenance, the network input and the label must be exactly those of resampling the whole lattice first."""
    case = PET_BOX_VARIANTS[variant]()
    boxes = preprocess(case.ct, case.pet, case.label)
    full = preprocess(case.ct, case.pet, case.label, pet_path="full")
    assert json.dumps(boxes.provenance) == json.dumps(full.provenance)
    assert boxes.image.tobytes() == full.image.tobytes()
    assert boxes.label.tobytes() == full.label.tobytes()
    assert boxes.label.any()


def test_the_crop_reads_a_fraction_of_the_lattice():
    """On a whole-body case the boxes the equations read hold about a third of the lattice's voxels, one at a time."""
    from HNTumorSegLib.pipeline.crop import find_crop_and_column
    from HNTumorSegLib.pipeline.preprocess import ResampledLatticePet

    case = make_phantom(2, "whole_body")
    ct_o, pet_o = orient_lps(case.ct), orient_lps(case.pet)
    source = ResampledLatticePet(pet_o, analysis_lattice(Geometry.of(ct_o)))
    asked = []
    real_box = source.box
    source.box = lambda *b: asked.append((b[1] - b[0]) * (b[3] - b[2]) * (b[5] - b[4])) or real_box(*b)
    decision, column = find_crop_and_column(source)
    lattice_voxels = int(np.prod(source.shape))
    assert decision.anchor == "peak" and sum(asked) < 0.4 * lattice_voxels, (sum(asked), lattice_voxels)
    assert column.shape == (source.shape[0], 256, 256)


def test_pet_statistics_leave_out_the_voxels_beyond_the_pet_field_of_view(head_case, head_pre):
    """A PET that covers less than the window (here: a third of its columns gone) is normalised by its data:
    the padding a resampling writes beyond its field of view counts no more than the padding beyond the CT."""
    assert head_pre.provenance["pet_normalisation"]["voxels_outside_pet"] == 0
    pet = head_case.pet
    cut = pet[pet.GetSize()[0] // 3:, :, :]  # SimpleITK slicing keeps the voxels where they were in space
    pre = preprocess(head_case.ct, cut)
    stats = pre.provenance["pet_normalisation"]
    win, lattice = Geometry.from_dict(pre.provenance["window"]), Geometry.from_dict(pre.provenance["resampled"])
    cut_o = orient_lps(cut)
    assert np.allclose(win.direction, np.eye(3).ravel()) and np.allclose(cut_o.GetDirection(), np.eye(3).ravel())
    # per axis (both grids are axis-aligned): window voxels inside the lattice and inside the PET's buffer
    keep = []
    for axis in range(3):
        i = np.arange(win.size[axis])
        points = win.origin[axis] + i * win.spacing[axis]
        in_lattice = np.rint((points - lattice.origin[axis]) / lattice.spacing[axis])
        in_lattice = (in_lattice >= 0) & (in_lattice <= lattice.size[axis] - 1)
        pet_index = (points - cut_o.GetOrigin()[axis]) / cut_o.GetSpacing()[axis]
        in_pet = (pet_index >= -0.5) & (pet_index <= cut_o.GetSize()[axis] - 0.5)
        keep.append((in_lattice, in_lattice & in_pet))
    real = keep[2][0][:, None, None] & keep[1][0][None, :, None] & keep[0][0][None, None, :]
    data = keep[2][1][:, None, None] & keep[1][1][None, :, None] & keep[0][1][None, None, :]
    assert stats["voxels_outside_pet"] == int(real.sum() - data.sum()) > 0
    values = sitk.GetArrayFromImage(resample(cut_o, win, sitk.sitkLinear, 0.0, sitk.sitkFloat32)).astype(np.float64)
    assert stats["mean"] == pytest.approx(values[data].mean(), rel=1e-6)
    assert stats["std"] == pytest.approx(values[data].std(), rel=1e-6)
    assert abs(values[real].mean() - stats["mean"]) > 0.05 * stats["mean"]  # what the padding used to do



@pytest.mark.parametrize("turn_degrees, flip", [(0.0, False), (0.0, True), (7.0, False)])
def test_values_restored_in_the_windows_box_equal_the_whole_grid_resampled(head_pre, turn_degrees, flip):
    """restore_values resamples only the CT voxels that can see the window; the whole CT grid resampled
    (the definition: linear, 0 outside the window) gives the same values, and the percent map rounds them.

    The "CT" is a fine grid (0.5 x 0.5 x 1 mm) around a corner of the window, so that the half window
    voxel beyond its border (1.5 mm in z) spans more than one CT voxel, turned or flipped.
    """
    import math

    from HNTumorSegLib.pipeline.restore import restore_values

    window = Geometry.from_dict(head_pre.provenance["window"])
    rng = np.random.default_rng(3)
    values = rng.random((112, 256, 256), dtype=np.float32) + 0.01  # no zero inside: the border shows
    image = window.apply(sitk.GetImageFromArray(values))
    a = math.radians(turn_degrees)
    turn = np.array([[math.cos(a), -math.sin(a), 0.0], [math.sin(a), math.cos(a), 0.0], [0.0, 0.0, 1.0]])
    direction = turn @ (np.diag([-1.0, -1.0, 1.0]) if flip else np.eye(3))
    size, spacing = np.array([120, 120, 60]), np.array([0.5, 0.5, 1.0])
    corner = window.index_to_point((0, 0, 0))
    origin = corner - direction @ (spacing * size / 2)  # the window's corner voxel in the grid's middle
    ct = Geometry(tuple(int(v) for v in size), tuple(spacing), tuple(float(v) for v in origin),
                  tuple(float(v) for v in direction.ravel()))
    provenance = {**head_pre.provenance, "original_ct": ct.to_dict()}
    whole = sitk.GetArrayFromImage(resample(image, ct.snapped(), sitk.sitkLinear, 0.0, sitk.sitkFloat32))
    assert (whole == 0).mean() > 0.5 and (whole > 0).mean() > 0.05

    restored = restore_values(image, provenance)
    assert Geometry.of(restored) == ct and restored.GetPixelID() == sitk.sitkFloat32
    got = sitk.GetArrayViewFromImage(restored)
    assert np.array_equal(got == 0, whole == 0)
    assert float(np.abs(got - whole).max()) <= 1e-6

    percent = restore_values(image, provenance, scale=100.0, pixel_id=sitk.sitkUInt8)
    assert percent.GetPixelID() == sitk.sitkUInt8 and Geometry.of(percent) == ct
    expected = np.floor(whole * 100.0 + 0.5)
    near_half = np.abs(whole * 100.0 - np.floor(whole * 100.0) - 0.5) < 1e-3  # float noise may round either way
    differs = sitk.GetArrayViewFromImage(percent) != expected
    assert not (differs & ~near_half).any()


def test_a_scan_without_the_brain_keeps_the_head_and_neck_in_the_window_and_says_so(small_model, tmp_path, capsys):
    """A whole-body scan from below the brain (skull base to thighs, as oncology PET/CT often is): the profile's
    peak is no brain (the pelvis), and the window anchored on it held none of the tumours. It starts at the top of
    the scan now, and segment warns in one line and records the warning."""
    from HNTumorSegLib.cli import main
    from HNTumorSegLib.phantom import write_case
    from HNTumorSegLib.pipeline.preprocess import NO_BRAIN_WARNING

    case = make_phantom(7, "whole_body")
    full = preprocess(case.ct, case.pet)
    assert full.provenance["brain_found"] and full.provenance["anchor"] == "peak"
    brain_z = full.provenance["resampled"]["origin"][2] + 3.0 * full.provenance["z_peak"]

    def below(image):  # the scan begins 60 mm under the brain's peak slice
        kept = [k for k in range(image.GetSize()[2]) if image.TransformIndexToPhysicalPoint((0, 0, k))[2] < brain_z - 60]
        return image[:, :, min(kept):max(kept) + 1]

    ct, pet, label = below(case.ct), below(case.pet), below(case.label)
    pre = preprocess(ct, pet, label)
    assert not pre.provenance["brain_found"] and pre.provenance["anchor"] == "top"
    assert pre.provenance["warnings"] == [NO_BRAIN_WARNING]
    truth = sitk.GetArrayViewFromImage(label)
    assert np.count_nonzero(pre.label == 1) == np.count_nonzero(truth == 1) > 0  # the whole primary in the window
    assert np.count_nonzero(pre.label == 2) >= 0.9 * np.count_nonzero(truth == 2)
    case.ct, case.pet, case.label = ct, pet, label
    paths = write_case(case, tmp_path)
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", "--ct", str(paths["ct"]), "--pet", str(paths["pet"]), "--out", str(out),
                 "--model", str(small_model), "--device", "cpu"]) == 0
    assert f"hntumorseg: warning: {NO_BRAIN_WARNING}" in capsys.readouterr().err
    assert json.loads(out.with_name("seg.json").read_text())["provenance"]["warnings"] == [NO_BRAIN_WARNING]


def test_a_scan_too_short_for_the_head_and_neck_is_said_and_recorded(small_model, tmp_path, capsys):
    """A CT of 5 slices (15 mm) was segmented without a word, its "lesions" false: the warning says how short the
    scan is; 120 mm of scan (the tests' small case) is no such scan."""
    from HNTumorSegLib.cli import main
    from HNTumorSegLib.pipeline.preprocess import SHORT_SCAN_WARNING

    from conftest import tiny_ct_pet

    ct, pet = tiny_ct_pet()
    assert not any("head to foot" in w for w in preprocess(ct, pet).provenance.get("warnings", []))
    ct = ct[:, :, 20:25]  # 5 slices of 3 mm
    assert SHORT_SCAN_WARNING.format(mm=15) in preprocess(ct, pet).provenance["warnings"]
    paths = {"ct": tmp_path / "ct.nii.gz", "pet": tmp_path / "pet.nii.gz"}
    sitk.WriteImage(ct, str(paths["ct"]))
    sitk.WriteImage(pet, str(paths["pet"]))
    out = tmp_path / "seg.nii.gz"
    assert main(["segment", "--ct", str(paths["ct"]), "--pet", str(paths["pet"]), "--out", str(out),
                 "--model", str(small_model), "--device", "cpu"]) == 0
    assert "hntumorseg: warning: CT and PET overlap over 15 mm head to foot only" in capsys.readouterr().err
    assert SHORT_SCAN_WARNING.format(mm=15) in json.loads(out.with_name("seg.json").read_text())["provenance"]["warnings"]


def test_a_pet_that_ends_below_the_ct_s_top_is_read_from_its_top_edge_and_said():
    """A PET whose field of view ends 39 mm under the CT's top, cutting through the patient (a PET from the neck
    down under a CT of the whole head): its cut edge was read as the top of the head, the window hung from the
    CT's top over slices without PET, and nothing was said. Now the window hangs from the PET's top edge and the
    warning says by how much the PET is short; a PET a slice short of the CT (the small case's own) is not said."""
    from HNTumorSegLib.pipeline.preprocess import PET_CUT_WARNING

    from conftest import tiny_ct_pet

    ct, pet = tiny_ct_pet()
    whole = preprocess(ct, pet).provenance
    assert whole["pet_z_end"] == 39 and not whole.get("warnings")  # one 3-mm slice short: quiet
    cut = preprocess(ct, pet[:, :, :20]).provenance  # PET up to z = 16 mm of the CT's 57 (lattice 40 slices)
    assert cut["pet_z_end"] == 26 and cut["z_top"] == 25 and cut["anchor"] == "top"
    assert cut["crop"]["z2"] == 26  # was 40, the lattice's top, 14 slices of CT without PET
    assert PET_CUT_WARNING.format(mm=42) in cut["warnings"]  # (and the short scan's: 78 mm of PET)
    air = sitk.Image(pet)
    air[:, :, 15:] = 0  # the same PET field of view, ending in air above the uptake: no cut, not said
    assert not any("PET ends" in w for w in preprocess(ct, air[:, :, :20]).provenance["warnings"])
