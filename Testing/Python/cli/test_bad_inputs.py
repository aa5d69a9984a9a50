"""Bad input of every kind (issue 15): one line ``hntumorseg: error: FILE: ...``, exit status 2, no traceback,
nothing written; and good input of an unusual shape next to it, accepted.

Kinds: zero-byte files; vector and 4D images; zero, negative or non-finite spacing; singular or sheared
directions; a CT in HU + 1024; a DICOM PET of another patient, frame of reference or week than its CT; an
input too large for the memory available; a model JSON asking for absurd widths or patches; an output that
is an input. All on the tiny constructed volumes of conftest (well under a second each).
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from HNTumorSegLib.cli import main
from HNTumorSegLib.imaging.image_checks import MEMORY_LIMIT_ENV
from HNTumorSegLib.phantom.dicom import DicomStudy, PetAcquisition, write_ct_series, write_pet_series

from conftest import tiny_ct_pet


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.err


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*")}


def assert_refused(code, err, path, *needles):
    assert code == 2, err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith(f"hntumorseg: error: {path}: "), (lines[0], path)
    assert "Traceback" not in err
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])


def refuse_preprocess(tmp_path, capsys, ct, pet, named, *needles, extra=()):
    """``preprocess`` refuses, naming ``named``, and nothing appears anywhere under tmp_path."""
    before = files_under(tmp_path)
    code, err = run_cli(["preprocess", "--ct", ct, "--pet", pet, "--out", tmp_path / "out", *extra], capsys)
    assert_refused(code, err, named, *needles)
    assert files_under(tmp_path) == before
    return err


def accept_preprocess(tmp_path, capsys, ct, pet):
    code, err = run_cli(["preprocess", "--ct", ct, "--pet", pet, "--out", tmp_path / "out"], capsys)
    assert code == 0, err
    assert (tmp_path / "out" / "input.npy").is_file()


def write(image: sitk.Image, path: Path, compress: bool = False) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), compress)
    return path


def pair(tmp_path: Path, ct_name: str = "CT.nii.gz", pet_name: str = "PT.nii.gz") -> dict[str, Path]:
    ct, pet = tiny_ct_pet()
    return {"ct": write(ct, tmp_path / "in" / ct_name, True), "pet": write(pet, tmp_path / "in" / pet_name, True)}


def edit_text_header(path: Path, pattern: bytes, replacement: bytes) -> Path:
    data = path.read_bytes()
    edited, n = re.subn(pattern, replacement, data, count=1)
    assert n == 1, (pattern, data[:300])
    path.write_bytes(edited)
    return path


# ----------------------------------------------------------------------------- 1. zero-byte files

@pytest.mark.parametrize("role", ["ct", "pet"])
def test_zero_byte_input_is_refused(tmp_path, capsys, role):
    paths = pair(tmp_path)
    paths[role].write_bytes(b"")
    refuse_preprocess(tmp_path, capsys, paths["ct"], paths["pet"], paths[role], "file is empty (0 bytes")


# ----------------------------------------------------------------------- 2. vector and 4D images

def _rgb_nrrd(path: Path) -> Path:
    ct, _ = tiny_ct_pet()
    band = sitk.Cast(sitk.RescaleIntensity(ct, 0, 255), sitk.sitkUInt8)
    return write(sitk.Compose(band, band, band), path)


def _vector_mha(path: Path) -> Path:
    ct, _ = tiny_ct_pet()
    f = sitk.Cast(ct, sitk.sitkFloat32)
    return write(sitk.Compose(f, f, f), path)


def _four_d_nifti(path: Path) -> Path:
    ct, _ = tiny_ct_pet()
    return write(sitk.JoinSeries([ct, ct]), path)


@pytest.mark.parametrize("role, name, make, needles", [
    ("ct", "CT.nrrd", _rgb_nrrd, ("CT image has 3 components per voxel", "scalar volume")),
    ("pet", "PT.mha", _vector_mha, ("PET image has 3 components per voxel",)),
    ("ct", "CT.nii", _four_d_nifti, ("CT image is 4D with size [100, 100, 40, 2]", "extract one frame")),
])
def test_vector_and_4d_images_are_refused(tmp_path, capsys, role, name, make, needles):
    paths = pair(tmp_path)
    paths[role] = make(tmp_path / "in" / name)
    refuse_preprocess(tmp_path, capsys, paths["ct"], paths["pet"], paths[role], *needles)


def test_a_4d_volume_of_one_frame_is_accepted(tmp_path, capsys):
    ct, _ = tiny_ct_pet()
    paths = pair(tmp_path)
    paths["ct"] = write(sitk.JoinSeries([ct]), tmp_path / "in" / "CT4.mha")
    assert sitk.ReadImage(str(paths["ct"])).GetDimension() == 4
    accept_preprocess(tmp_path, capsys, paths["ct"], paths["pet"])


# ---------------------------------------------------------------------------------- 3. spacing

def _nifti_pixdim(value: float):
    def damage(path: Path) -> Path:
        data = bytearray(path.read_bytes())
        struct.pack_into("<f", data, 80, value)  # pixdim[1]
        path.write_bytes(bytes(data))
        return path
    return damage


@pytest.mark.parametrize("name, damage, needles", [
    ("CT.nrrd", lambda p: edit_text_header(p, rb"space directions: \([^)]*\)", b"space directions: (0,0,0)"),
     ("spacing (0, 2, 3) mm is zero along x",)),
    ("CT.nrrd", lambda p: edit_text_header(p, rb"space directions: \([^)]*\)", b"space directions: (nan,0,0)"),
     ("NRRD space directions", "not finite")),
    ("CT.mha", lambda p: edit_text_header(p, rb"ElementSpacing = [^\n]*", b"ElementSpacing = 2 0 3"),
     ("MetaImage ElementSpacing", "zero along y")),
    ("CT.mha", lambda p: edit_text_header(p, rb"ElementSpacing = [^\n]*", b"ElementSpacing = -2 2 3"),
     ("negative along x",)),
    ("CT.mha", lambda p: edit_text_header(p, rb"ElementSpacing = [^\n]*", b"ElementSpacing = 2 2 inf"),
     ("not finite along z",)),
    ("CT.nii", _nifti_pixdim(0.0), ("NIfTI pixdim spacing (0, 2, 3) mm is zero along x",)),
    ("CT.nii", _nifti_pixdim(float("nan")), ("NIfTI pixdim", "not finite along x")),
    ("CT.nii", _nifti_pixdim(-2.0), ("NIfTI pixdim", "negative along x")),
])
def test_zero_negative_or_non_finite_spacing_is_refused(tmp_path, capsys, name, damage, needles):
    paths = pair(tmp_path)
    ct, _ = tiny_ct_pet()
    paths["ct"] = damage(write(ct, tmp_path / "in" / name))
    refuse_preprocess(tmp_path, capsys, paths["ct"], paths["pet"], paths["ct"], *needles)


# -------------------------------------------------------------------------------- 4. direction

def _nifti_sheared_sform(path: Path) -> Path:
    data = bytearray(path.read_bytes())
    struct.pack_into("<h", data, 252, 0)  # qform_code 0: only the (sheared) sform is left
    struct.pack_into("<4f", data, 280, -2.0, 1.0, 0.0, 100.0)  # srow_x
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("name, damage, needles", [
    ("CT.nrrd", lambda p: edit_text_header(p, rb"space directions: [^\n]*",
                                           b"space directions: (2,0,0) (2,0,0) (0,0,3)"), ("degenerate",)),
    ("CT.mha", lambda p: edit_text_header(p, rb"TransformMatrix = [^\n]*", b"TransformMatrix = 1 0 0 0 0 0 0 0 1"),
     ("degenerate (singular",)),
    ("CT.mha", lambda p: edit_text_header(p, rb"TransformMatrix = [^\n]*",
                                          b"TransformMatrix = 1 0 0 0.5 1 0 0 0 1"), ("not orthonormal", "sheared")),
    ("CT.mha", lambda p: edit_text_header(p, rb"TransformMatrix = [^\n]*", b"TransformMatrix = 2 0 0 0 1 0 0 0 1"),
     ("not orthonormal",)),
    ("CT.nii", _nifti_sheared_sform, ("orthonormal", "resample the image to an orthogonal grid")),
])
def test_singular_or_sheared_direction_is_refused(tmp_path, capsys, name, damage, needles):
    paths = pair(tmp_path)
    ct, _ = tiny_ct_pet()
    paths["ct"] = damage(write(ct, tmp_path / "in" / name))
    refuse_preprocess(tmp_path, capsys, paths["ct"], paths["pet"], paths["ct"], *needles)


def _edit_slices(folder: Path, **tags) -> Path:
    import pydicom

    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        for keyword, value in tags.items():
            setattr(ds, keyword, value)
        ds.save_as(path)
    return folder


@pytest.mark.parametrize("tags, needles", [
    ({"PixelSpacing": ["0", "2"]}, ("PixelSpacing spacing (2, 0) mm is zero along y",)),
    ({"PixelSpacing": ["2", "-2"]}, ("PixelSpacing spacing (-2, 2) mm is negative along x",)),
    ({"ImageOrientationPatient": ["1", "0", "0", "0.5", "1", "0"]}, ("ImageOrientationPatient", "sheared")),
    ({"ImageOrientationPatient": ["1", "0", "0", "1", "0", "0"]}, ("ImageOrientationPatient", "degenerate")),
])
def test_a_dicom_series_of_bad_geometry_is_refused(tmp_path, capsys, tags, needles):
    paths = pair(tmp_path)
    ct, _ = tiny_ct_pet()
    folder = tmp_path / "in" / "ct"
    write_ct_series(ct[:, :, :4], folder, DicomStudy("GEOMETRY-1"))
    _edit_slices(folder, **tags)
    refuse_preprocess(tmp_path, capsys, folder, paths["pet"], folder, *needles)


def test_an_oblique_grid_with_rounded_direction_cosines_is_accepted(tmp_path, capsys):
    """A rotated (orthonormal) grid whose cosines are written with 6 digits is good input."""
    paths = pair(tmp_path)
    ct, _ = tiny_ct_pet()
    c, s = round(np.cos(np.radians(8)), 6), round(np.sin(np.radians(8)), 6)
    ct.SetDirection((c, -s, 0.0, s, c, 0.0, 0.0, 0.0, 1.0))
    paths["ct"] = write(ct, tmp_path / "in" / "CT.mha")
    accept_preprocess(tmp_path, capsys, paths["ct"], paths["pet"])


# ------------------------------------------------------------------------------ 5. HU + 1024

@pytest.mark.parametrize("view", ["whole", "small_neck_in_a_large_field"])
def test_a_ct_in_hu_plus_1024_is_refused(tmp_path, capsys, view):
    paths = pair(tmp_path)
    ct, _ = tiny_ct_pet()
    if view == "small_neck_in_a_large_field":  # 2 % body, as a neck on a 500 mm reconstruction
        ct = sitk.ConstantPad(ct, (100, 100, 0), (100, 100, 0), -1000)
        body = float(np.mean(sitk.GetArrayViewFromImage(ct) > -500))
        assert 0.015 < body < 0.05, body
    paths["ct"] = write(sitk.Cast(ct + 1024, sitk.sitkUInt16), tmp_path / "in" / "CT_unsigned.nii.gz", True)
    refuse_preprocess(tmp_path, capsys, paths["ct"], paths["pet"], paths["ct"], "HU + 1024",
                      "subtract 1024", "RescaleIntercept")


def test_a_pet_given_as_the_ct_is_refused(tmp_path, capsys):
    """SUV values (a few units, no air, no bone) are no CT: refused in one line (a label map was written)."""
    paths = pair(tmp_path)
    as_ct = tmp_path / "in" / "CT_is_the_PET.nii.gz"
    shutil.copy(paths["pet"], as_ct)
    refuse_preprocess(tmp_path, capsys, as_ct, paths["pet"], as_ct, "does not look like a CT", "is it the PET")


@pytest.mark.parametrize("view", ["whole", "inside_the_body", "soft_tissue_window"])
def test_a_ct_in_hu_is_accepted_even_without_air(tmp_path, capsys, view):
    """A field of view all inside the body holds no air, but its soft tissue lies near 0 HU, not 1024."""
    paths = pair(tmp_path)
    ct, _ = tiny_ct_pet()
    if view == "inside_the_body":
        ct = ct[27:73, 22:78, :]  # the 40 HU block only (x 25:75, y 20:80)
        assert float(sitk.GetArrayViewFromImage(ct).min()) == 40
    elif view == "soft_tissue_window":
        ct = sitk.Clamp(ct, lowerBound=-160, upperBound=240)
    paths["ct"] = write(ct, tmp_path / "in" / "CT_view.nii.gz", True)
    accept_preprocess(tmp_path, capsys, paths["ct"], paths["pet"])


# --------------------------------------------------- 6, 7. DICOM PET of another patient, frame or week

@pytest.fixture(scope="module")
def dicom_pets(tmp_path_factory) -> dict[str, Path]:
    """A DICOM CT, and PET folders of its study, another patient, another frame of reference, a week later."""
    root = tmp_path_factory.mktemp("pairing")
    ct, pet = tiny_ct_pet()
    write_ct_series(ct, root / "ct", DicomStudy("PAIR-1"))
    week_later = PetAcquisition(injection=dt.datetime(2024, 3, 12, 9, 30), scan=dt.datetime(2024, 3, 12, 10, 30))
    for name, study, acquisition in (
            ("same", DicomStudy("PAIR-1"), PetAcquisition()),
            ("other_patient", DicomStudy("PAIR-2"), PetAcquisition()),
            ("other_frame", DicomStudy("PAIR-1", frame_of_reference_uid="1.2.826.0.1.3680043.2.1125.99"),
             PetAcquisition()),
            ("week_later", DicomStudy("PAIR-1", date="20240312"), week_later)):
        write_pet_series(pet, root / name, study, acquisition)
    return {"ct": root / "ct", **{name: root / name for name in ("same", "other_patient", "other_frame",
                                                                  "week_later")}}


def test_a_dicom_pet_of_the_ct_study_is_accepted(dicom_pets, tmp_path, capsys):
    accept_preprocess(tmp_path, capsys, dicom_pets["ct"], dicom_pets["same"])


@pytest.mark.parametrize("pet, needles", [
    ("other_patient", ("PatientID 'PAIR-2'", "'PAIR-1'", "one patient")),
    ("other_frame", ("FrameOfReferenceUID 1.2.826.0.1.3680043.2.1125.99", "coordinates are unrelated")),
    ("week_later", ("acquired on 2024-03-12", "on 2024-03-05", "7 days apart")),
])
def test_a_dicom_pet_of_another_patient_frame_or_week_is_refused(dicom_pets, tmp_path, capsys, pet, needles):
    refuse_preprocess(tmp_path, capsys, dicom_pets["ct"], dicom_pets[pet], dicom_pets[pet], *needles)


def test_only_one_dicom_input_is_a_warning_recorded_in_the_report(dicom_pets, tmp_path, capsys):
    """A DICOM CT with a PET file (or the reverse) carries no tags to compare: one warning line, the run goes on,
    and the provenance keeps it."""
    paths = pair(tmp_path)
    code, err = run_cli(["preprocess", "--ct", dicom_pets["ct"], "--pet", paths["pet"], "--out", tmp_path / "out"],
                        capsys)
    assert code == 0
    assert err.strip().splitlines() == ["hntumorseg: warning: only the CT is DICOM: whether the PET is of the same "
                                        "patient, frame of reference and day cannot be checked"]
    provenance = json.loads((tmp_path / "out" / "provenance.json").read_text())
    assert provenance["input_warnings"] == [err.strip().split("warning: ")[1]]


# ------------------------------------------------------------------------------------ 8. memory

@pytest.mark.parametrize("form", ["file", "dicom"])
def test_an_input_too_large_for_the_memory_is_refused_before_its_voxels_are_read(
        tmp_path, capsys, monkeypatch, dicom_pets, form):
    paths = pair(tmp_path)
    ct = dicom_pets["ct"] if form == "dicom" else paths["ct"]
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "1")  # the tiny CT needs 2.3 MiB (3 x 100 x 100 x 40 x 2 bytes)
    monkeypatch.setattr(sitk, "ReadImage", lambda *a, **k: pytest.fail("voxels read"))
    refuse_preprocess(tmp_path, capsys, ct, paths["pet"], ct, "100 x 100 x 40 voxels", "needs about",
                      f"more than the 1.0 MiB allowed by {MEMORY_LIMIT_ENV}", "coarser grid")


def test_the_memory_limit_allows_what_fits(tmp_path, capsys, monkeypatch):
    paths = pair(tmp_path)
    monkeypatch.setenv(MEMORY_LIMIT_ENV, "64")
    accept_preprocess(tmp_path, capsys, paths["ct"], paths["pet"])


@pytest.mark.parametrize("value", ["inf", "1e400", "-1", "0", "nan", "5 MiB"])
def test_a_memory_limit_that_is_no_positive_number_is_one_line(tmp_path, capsys, monkeypatch, value):
    paths = pair(tmp_path)
    monkeypatch.setenv(MEMORY_LIMIT_ENV, value)
    code, err = run_cli(["preprocess", "--ct", paths["ct"], "--pet", paths["pet"], "--out", tmp_path / "out"], capsys)
    assert code == 2 and err.strip() == (f"hntumorseg: error: {MEMORY_LIMIT_ENV}={value}: not a positive number of "
                                         "MiB (unset it to use the memory the machine has available)"), err


# ------------------------------------------------------------------------------- 9. model JSON

def copy_model(small_model: Path, folder: Path, **changes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(small_model.with_suffix(".safetensors"), folder / "m.safetensors")
    meta = json.loads(small_model.read_text())
    for key, value in changes.items():
        if key == "network":
            meta["network"] = {**meta["network"], **value}
        else:
            meta[key] = value
    (folder / "m.json").write_text(json.dumps(meta))
    return folder / "m.json"


def six_level_model(folder: Path) -> Path:
    """A real six-level network (size multiple 32) without a sliding window: 112 slices are not divisible."""
    import torch

    from HNTumorSegLib.network import NetworkConfig, build_network
    from HNTumorSegLib.pipeline.model_file import save_model

    config = NetworkConfig(channels=(2, 2, 2, 2, 2, 2), psam_channels=(2, 2, 2))
    torch.manual_seed(0)
    save_model(build_network(config), config, folder / "m")
    return folder / "m.json"


@pytest.mark.parametrize("changes, needles", [
    ({"network": {"channels": [4, 8, 16, 32, 100000]}}, ("channels [4, 8, 16, 32, 100000] exceed 1024",)),
    ({"network": {"channels": [4] * 9}}, ("channels must have 2 to 7 levels",)),
    ({"inference": {"patch_size": [112, 512, 256]}}, ("patch_size [112, 512, 256] exceeds the 112 x 256 x 256",)),
    ({"inference": {"patch_size": [40, 80, 80]}}, ("patch_size [40, 80, 80] is not divisible by 16",)),
    ({"inference": {"patch_size": [0, 64, 64]}}, ("invalid 'inference' entry",)),
    ("six_levels", ("6-level network needs input sizes divisible by 32", "inference patch_size")),
])
def test_a_model_json_asking_for_absurd_sizes_is_refused(tmp_path, capsys, small_model, changes, needles):
    paths = pair(tmp_path)
    folder = tmp_path / "model"
    model = six_level_model(folder) if changes == "six_levels" else copy_model(small_model, folder, **changes)
    before = files_under(tmp_path)
    code, err = run_cli(["segment", "--ct", paths["ct"], "--pet", paths["pet"], "--out", tmp_path / "out" / "seg.nii.gz",
                         "--model", model, "--device", "cpu"], capsys)
    assert_refused(code, err, "m.json", *needles)
    assert files_under(tmp_path) == before


# ------------------------------------------------------------------------ 10. output is an input

def _symlink_to(target: Path, link: Path) -> Path:
    link.symlink_to(target)
    return link


@pytest.mark.parametrize("clash, needles", [
    ("out_is_ct", ("--out is the same file as --ct",)),
    ("out_is_pet_spelled_differently", ("--out is the same file as --pet", "another spelling")),
    ("out_is_a_link_to_the_ct", ("--out is the same file as --ct", "through a link")),
    ("report_is_the_model_json", ("the report of --out is the same file as --model",)),
    ("probabilities_is_out", ("--probabilities is the same file as --out",)),
    ("out_writes_the_data_file_of_the_ct", ("--out would write its data file ct.zraw over the data of --ct",)),
    ("out_and_probabilities_share_a_data_file", ("--probabilities and --out", "would write the same data file")),
    ("out_under_a_dangling_folder_link", ("--out cannot be written: the folder", "which does not exist")),
])
def test_segment_refuses_an_output_that_is_an_input(tmp_path, capsys, small_model, clash, needles):
    paths = pair(tmp_path)
    model = copy_model(small_model, tmp_path / "in")
    out, extra = tmp_path / "out" / "seg.nii.gz", []
    if clash == "out_writes_the_data_file_of_the_ct":  # CT.mhd + CT.zraw read; CT.MHD would write CT.zraw
        sitk.WriteImage(sitk.ReadImage(str(paths["ct"])), str(tmp_path / "in" / "ct.mhd"), True)
        paths["ct"], out = tmp_path / "in" / "ct.mhd", tmp_path / "in" / "ct.MHD"
    elif clash == "out_and_probabilities_share_a_data_file":
        out, extra = tmp_path / "out" / "A.mhd", ["--probabilities", tmp_path / "out" / "A.MHD"]
    elif clash == "out_under_a_dangling_folder_link":
        out = _symlink_to(tmp_path / "gone", tmp_path / "results") / "seg.nii.gz"
    if clash == "out_is_ct":
        out = paths["ct"]
    elif clash == "out_is_pet_spelled_differently":
        out = tmp_path / "in" / ".." / "in" / "." / paths["pet"].name
    elif clash == "out_is_a_link_to_the_ct":
        out = _symlink_to(paths["ct"], tmp_path / "link.nii.gz")
    elif clash == "report_is_the_model_json":
        out = tmp_path / "in" / "m.nii.gz"  # its report would be in/m.json
    elif clash == "probabilities_is_out":
        extra = ["--probabilities", out]
    before = {p: p.read_bytes() if p.is_file() else None for p in files_under(tmp_path)}
    # a PET that cannot be read (unless it is the clash): the clash is found before any input is read
    pet = paths["pet"] if clash == "out_is_pet_spelled_differently" else tmp_path / "in" / "missing.nii.gz"
    code, err = run_cli(["segment", "--ct", paths["ct"], "--pet", pet, "--out", out, "--model", model,
                         "--device", "cpu", *extra], capsys)
    named = {"report_is_the_model_json": tmp_path / "in" / "m.json",
             "out_and_probabilities_share_a_data_file": tmp_path / "out" / "A.MHD"}.get(clash, out)
    assert_refused(code, err, named, *needles)
    assert {p: p.read_bytes() if p.is_file() else None for p in files_under(tmp_path)} == before


def test_preprocess_and_rtstruct_refuse_an_output_that_is_an_input(tmp_path, capsys):
    paths = pair(tmp_path)
    refuse_preprocess(tmp_path, capsys, paths["ct"], paths["pet"], paths["pet"], "--out is the same file as --pet",
                      extra=["--out", paths["pet"]])
    before = files_under(tmp_path)
    code, err = run_cli(["rtstruct", "--ct", tmp_path / "in", "--labels", paths["ct"], "--out", paths["ct"]], capsys)
    assert_refused(code, err, paths["ct"], "--out is the same file as --labels")
    code, err = run_cli(["edit", "--labels", paths["ct"], "--ct", paths["ct"], "--pet", paths["pet"],
                         "--remove", "0,0,0", "--out", paths["pet"]], capsys)
    assert_refused(code, err, paths["pet"], "--out is the same file as --pet")
    assert files_under(tmp_path) == before


@pytest.mark.parametrize("kind, needles", [("label map", ["the values 0, 1, 2", "a mask or label map"]),
                                           ("mask", ["the values 0, 255", "a mask or label map"]),
                                           ("empty", ["holds 0 in every voxel", "an empty image"])])
def test_a_label_map_or_an_empty_image_given_as_the_pet_is_refused(tmp_path, capsys, kind, needles):
    """A label map given as the PET has SUV-sized values and passed every check: it was segmented, its "uptake"
    the label values (the CT side has refused a PET given as the CT for long). An all-zero PET was told its
    values "in the thousands look like Bq/mL"."""
    paths = pair(tmp_path)
    pet = sitk.ReadImage(str(paths["pet"]))
    values = sitk.GetArrayFromImage(pet)
    fake = {"label map": np.digitize(values, [np.percentile(values, 90), np.percentile(values, 99)]),
            "mask": np.where(values > np.percentile(values, 90), 255, 0),
            "empty": np.zeros_like(values)}[kind].astype(np.uint8)
    image = sitk.GetImageFromArray(fake)
    image.CopyInformation(pet)
    as_pet = write(image, tmp_path / "in" / "PT_is_a_label.nii.gz", True)
    refuse_preprocess(tmp_path, capsys, paths["ct"], as_pet, as_pet, *needles)
    code, err = run_cli(["segment", "--ct", paths["ct"], "--pet", as_pet, "--out", tmp_path / "seg.nii.gz"], capsys)
    assert_refused(code, err, as_pet, *needles)


def test_a_pet_of_a_few_whole_uptake_levels_is_still_a_pet(tmp_path, capsys):
    """The tests' own synthetic PET holds 0, 1 and 8 (background and uptake levels): no mask's value set."""
    paths = pair(tmp_path)
    assert set(np.unique(sitk.GetArrayViewFromImage(sitk.ReadImage(str(paths["pet"]))))) == {0, 1, 8}
    accept_preprocess(tmp_path, capsys, paths["ct"], paths["pet"])
