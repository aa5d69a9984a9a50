"""RTSTRUCT output: contours that enclose exactly the label's voxels, a structure set that references
the CT, checked by readers we did not write (plastimatch, dciodvfy), and the commands that write it.
"""

from __future__ import annotations

import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

import pydicom

from HNTumorSegLib.cli import main
from HNTumorSegLib.dicom.contours import boundary_polygons, rasterise, slice_polygons
from HNTumorSegLib.dicom.series import read_series
from HNTumorSegLib.phantom import make_phantom
from HNTumorSegLib.phantom.dicom import write_dicom_case
from HNTumorSegLib.dicom.rtstruct import build_rtstruct
from HNTumorSegLib.dicom.segment_terminology import GTVN, GTVP
from HNTumorSegLib.errors import InputError

PLASTIMATCH_MISSING = "plastimatch (Debian package plastimatch) is not installed; .ci/run installs it"


# ---------------------------------------------------------------------------------------- contours

@pytest.mark.parametrize("seed", range(6))
def test_contours_enclose_exactly_the_mask_by_union_and_by_even_odd(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        mask = rng.random((13, 17)) < rng.uniform(0.3, 0.9)
        polygons = slice_polygons(mask)
        assert not any(p.is_hole for p in polygons)
        for rule in ("union", "even-odd"):
            assert np.array_equal(rasterise(polygons, mask.shape, rule), mask), rule
        assert sum(p.area for p in polygons) == pytest.approx(mask.sum())


def test_ring_with_an_island_is_one_keyholed_polygon_and_the_island():
    mask = np.zeros((11, 11), bool)
    mask[1:10, 1:10] = True
    mask[3:8, 3:8] = False
    mask[5, 5] = True
    plain = boundary_polygons(mask)
    assert sorted((p.is_hole, p.area) for p in plain) == [(False, 1.0), (False, 81.0), (True, 25.0)]
    polygons = slice_polygons(mask)
    assert sorted(p.area for p in polygons) == [1.0, 56.0]
    assert np.array_equal(rasterise(polygons, mask.shape, "union"), mask)
    assert not np.array_equal(rasterise(plain, mask.shape, "union"), mask), "union fills a plain hole"


def test_pixels_touching_at_a_corner_are_separate_polygons():
    mask = np.array([[1, 0], [0, 1]], bool)
    polygons = slice_polygons(mask)
    assert [p.area for p in polygons] == [1.0, 1.0]


# ---------------------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def study(tmp_path_factory):
    """A DICOM phantom study and a label on its CT grid with a holed, islanded GTVn added."""
    root = tmp_path_factory.mktemp("rt")
    case = make_phantom(21, "head", ct_matrix=128, n_nodes=2)
    write_dicom_case(case, root / "dicom")
    ct = read_series(root / "dicom", "CT")
    lab = sitk.GetArrayFromImage(case.label)
    lab[30:34, 40:60, 30:50] = 2
    lab[30:34, 44:56, 34:46] = 0   # a hole ...
    lab[30:34, 49:51, 39:41] = 2   # ... with an island in it
    lab[31, 70:74, 70:74] = 2      # a second island on one slice
    label = sitk.GetImageFromArray(lab)
    label.CopyInformation(ct.image)
    sitk.WriteImage(label, str(root / "label.nii.gz"))
    assert (lab == 1).any() and (lab == 2).any()
    return {"root": root, "dicom": root / "dicom", "ct": ct, "label": label, "label_path": root / "label.nii.gz",
            "case": case}


@pytest.fixture(scope="module")
def rtstruct_file(study):
    out = study["root"] / "out" / "RS.dcm"
    assert main(["rtstruct", "--ct", str(study["dicom"]), "--labels", str(study["label_path"]),
                 "--out", str(out)]) == 0
    return out


# ------------------------------------------------------------------------------------- structure set

def test_structure_set_references_the_ct(study, rtstruct_file):
    ds = pydicom.dcmread(rtstruct_file)
    ct = study["ct"]
    first = ct.headers[0]
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.481.3" and ds.Modality == "RTSTRUCT"
    assert ds.StudyInstanceUID == first.StudyInstanceUID and ds.PatientID == first.PatientID
    frame = ds.ReferencedFrameOfReferenceSequence[0]
    assert frame.FrameOfReferenceUID == first.FrameOfReferenceUID
    study_ref = frame.RTReferencedStudySequence[0]
    assert study_ref.ReferencedSOPInstanceUID == first.StudyInstanceUID
    series_ref = study_ref.RTReferencedSeriesSequence[0]
    assert series_ref.SeriesInstanceUID == ct.series.uid
    assert [i.ReferencedSOPInstanceUID for i in series_ref.ContourImageSequence] == ct.sop_instance_uids


def test_rois_have_names_colours_type_and_codes(rtstruct_file):
    ds = pydicom.dcmread(rtstruct_file)
    assert [r.ROIName for r in ds.StructureSetROISequence] == ["GTVp", "GTVn"]
    assert [list(c.ROIDisplayColor) for c in ds.ROIContourSequence] == [list(GTVP.color_255), list(GTVN.color_255)]
    obs = ds.RTROIObservationsSequence
    assert [o.RTROIInterpretedType for o in obs] == ["GTV", "GTV"]
    assert [o.RTROIIdentificationCodeSequence[0].CodeValue for o in obs] == ["86049000", "14799000"]
    assert [r.ROIGenerationAlgorithm for r in ds.StructureSetROISequence] == ["SEMIAUTOMATIC"] * 2


def test_contours_lie_on_their_ct_slice_in_patient_coordinates(study, rtstruct_file):
    ds = pydicom.dcmread(rtstruct_file)
    ct = study["ct"]
    z_of = {h.SOPInstanceUID: float(h.ImagePositionPatient[2]) for h in ct.headers}
    lab = sitk.GetArrayFromImage(study["label"])
    for value, roi in ((1, ds.ROIContourSequence[0]), (2, ds.ROIContourSequence[1])):
        slices = set()
        for item in roi.ContourSequence:
            assert item.ContourGeometricType == "CLOSED_PLANAR"
            points = np.asarray(item.ContourData, float).reshape(-1, 3)
            assert len(points) == item.NumberOfContourPoints
            uid = item.ContourImageSequence[0].ReferencedSOPInstanceUID
            assert np.allclose(points[:, 2], z_of[uid], atol=1e-3)
            slices.add(uid)
        expected = {ct.sop_instance_uids[k] for k in np.nonzero((lab == value).any(axis=(1, 2)))[0]}
        assert slices == expected


def _plastimatch_masks(rtstruct, dicom, out, xor: bool):
    cmd = [shutil.which("plastimatch"), "convert", "--input", str(rtstruct), "--referenced-ct", str(dicom),
           "--output-prefix", str(out), "--prefix-format", "nrrd"]
    if xor:
        cmd.insert(2, "--xor-contours")
    run = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    return {name: sitk.ReadImage(str(out / f"{name}.nrrd")) for name in ("GTVp", "GTVn")}


@pytest.mark.parametrize("xor", [False, True], ids=["union", "xor"])
def test_plastimatch_reads_back_our_voxels(study, rtstruct_file, tmp_path, xor):
    if shutil.which("plastimatch") is None:
        pytest.skip(PLASTIMATCH_MISSING)
    masks = _plastimatch_masks(rtstruct_file, study["dicom"], tmp_path / "pm", xor)
    ours = sitk.GetArrayFromImage(study["label"])
    for value, name in ((1, "GTVp"), (2, "GTVn")):
        theirs = sitk.Resample(masks[name], study["label"], sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        a, b = sitk.GetArrayFromImage(theirs) > 0, ours == value
        dice = 2 * np.logical_and(a, b).sum() / (a.sum() + b.sum())
        assert dice >= 0.95, f"{name}: Dice {dice:.4f}"
        assert dice == 1.0, f"{name}: voxel-edge contours should read back exactly (Dice {dice:.4f})"


def test_dciodvfy_finds_no_errors(rtstruct_file):
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed; .ci/run installs it")
    out = subprocess.run([dciodvfy, str(rtstruct_file)], capture_output=True, text=True, encoding="utf-8")
    report = out.stdout + out.stderr
    assert "RTStructureSet" in report
    assert not [line for line in report.splitlines() if line.startswith("Error")], report


def test_empty_structure_is_an_roi_without_contours(study):
    label = sitk.Image(study["label"])
    lab = sitk.GetArrayFromImage(label)
    lab[lab == 2] = 0
    empty = sitk.GetImageFromArray(lab)
    empty.CopyInformation(label)
    ds, summaries = build_rtstruct(empty, study["ct"])
    assert [s.contours > 0 for s in summaries] == [True, False]
    assert "ContourSequence" not in ds.ROIContourSequence[1]


# ------------------------------------------------------------------------------------------ errors

def test_label_on_another_grid_is_a_clear_error(study, tmp_path, capsys):
    other = sitk.Resample(study["label"], [64, 64, 40], sitk.Transform(), sitk.sitkNearestNeighbor,
                          study["label"].GetOrigin(), [4.0, 4.0, 3.0], study["label"].GetDirection())
    sitk.WriteImage(other, str(tmp_path / "other.nii.gz"))
    code = main(["rtstruct", "--ct", str(study["dicom"]), "--labels", str(tmp_path / "other.nii.gz"),
                 "--out", str(tmp_path / "RS.dcm")])
    err = capsys.readouterr().err
    assert code == 2 and "label is not on the CT grid" in err and err.count("\n") == 1
    assert not (tmp_path / "RS.dcm").exists()


def test_a_label_map_whose_report_records_another_ct_is_refused(study, tmp_path, capsys):
    """On a shared grid the grid check passed a label map of another case, and the structure set put one patient's
    contours on another's CT. The report beside a label map records its CT's digest (segment, batch, edit)."""
    import json

    from HNTumorSegLib.imaging.label_checks import ct_digest

    label = tmp_path / "seg.nii.gz"
    shutil.copy(study["label_path"], label)
    other = sitk.GetArrayFromImage(study["ct"].image)
    other[:, 40:60, 40:60] += 200  # another patient's anatomy on the same grid
    other_ct = sitk.GetImageFromArray(other)
    other_ct.CopyInformation(study["ct"].image)
    for digest, drawn_on, expected in ((ct_digest(other_ct), "/cases/B/ct", 2), (ct_digest(study["ct"].image), "", 0)):
        (tmp_path / "seg.json").write_text(json.dumps({"output": str(label), "ct_digest": digest,
                                                       "inputs": {"ct": drawn_on}}))
        code = main(["rtstruct", "--ct", str(study["dicom"]), "--labels", str(label), "--out", str(tmp_path / "RS.dcm")])
        err = capsys.readouterr().err
        assert code == expected, err
        assert (tmp_path / "RS.dcm").exists() == (expected == 0)
        if expected:
            assert f"{label}: drawn on another CT than {study['dicom']}" in err and "/cases/B/ct" in err
            assert err.count("\n") == 1


def test_rtstruct_with_a_nifti_ct_says_so_plainly(study, tmp_path, capsys):
    sitk.WriteImage(study["case"].ct, str(tmp_path / "ct.nii.gz"))
    code = main(["rtstruct", "--ct", str(tmp_path / "ct.nii.gz"), "--labels", str(study["label_path"]),
                 "--out", str(tmp_path / "RS.dcm")])
    err = capsys.readouterr().err
    assert code == 2 and "needs the CT as a DICOM folder" in err and "NIfTI CT has none" in err
    code = main(["segment", "--ct", str(tmp_path / "ct.nii.gz"), "--pet", str(tmp_path / "ct.nii.gz"),
                 "--out", str(tmp_path / "seg.nii.gz"), "--rtstruct", str(tmp_path / "RS.dcm")])
    err = capsys.readouterr().err
    assert code == 2 and "--rtstruct needs the CT as a DICOM folder" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]


def test_split_lesions_gives_one_roi_per_node_that_plastimatch_reads_back(study, tmp_path):
    from HNTumorSegLib.imaging.components import lesion_ids

    out = tmp_path / "RS_split.dcm"
    assert main(["rtstruct", "--ct", str(study["dicom"]), "--labels", str(study["label_path"]), "--out", str(out),
                 "--split-lesions"]) == 0
    ds = pydicom.dcmread(out)
    lab = sitk.GetArrayFromImage(study["label"])
    nodes, count = lesion_ids(lab == 2)
    names = [roi.ROIName for roi in ds.StructureSetROISequence]
    assert names == ["GTVp"] + [f"GTVn_{i}" for i in range(1, count + 1)] and count >= 2
    assert [obs.RTROIIdentificationCodeSequence[0].CodeValue for obs in ds.RTROIObservationsSequence[1:]] == \
        ["14799000"] * count
    if shutil.which("plastimatch") is None:
        pytest.skip(PLASTIMATCH_MISSING)
    cmd = [shutil.which("plastimatch"), "convert", "--input", str(out), "--referenced-ct", str(study["dicom"]),
           "--output-prefix", str(tmp_path / "pm"), "--prefix-format", "nrrd"]
    run = subprocess.run(cmd, capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    for i in range(1, count + 1):
        theirs = sitk.Resample(sitk.ReadImage(str(tmp_path / "pm" / f"GTVn_{i}.nrrd")), study["label"],
                               sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        assert np.array_equal(sitk.GetArrayFromImage(theirs) > 0, nodes == i), f"GTVn_{i}"


@pytest.mark.parametrize("keyword", ["StudyInstanceUID", "FrameOfReferenceUID", "SOPInstanceUID"])
def test_a_ct_without_the_uids_an_export_cites_is_a_one_line_error(study, tmp_path, capsys, keyword):
    from HNTumorSegLib.dicom.seg import build_dicom_seg

    folder = tmp_path / "ct"
    shutil.copytree(study["dicom"], folder)
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path)
        if ds.Modality == "CT":
            delattr(ds, keyword)
            ds.save_as(path)
    code = main(["rtstruct", "--ct", str(folder), "--labels", str(study["label_path"]), "--out", str(tmp_path / "RS.dcm")])
    err = capsys.readouterr().err
    assert code == 2 and f"the CT slice has no {keyword}; an RTSTRUCT must reference it" in err, err
    assert len(err.strip().splitlines()) == 1 and not (tmp_path / "RS.dcm").exists()
    with pytest.raises(InputError, match=f"no {keyword}; a DICOM SEG must reference it"):
        build_dicom_seg(study["label"], read_series(folder, "CT"))


def test_an_output_that_would_replace_a_file_of_the_ct_series_is_refused(study, tmp_path, capsys):
    folder = tmp_path / "ct"
    shutil.copytree(study["dicom"], folder)
    before = {p.name: p.read_bytes() for p in folder.iterdir()}
    slice_file = next(p for p in sorted(folder.iterdir()) if read_series(folder, "CT").files[0].name == p.name)
    code = main(["rtstruct", "--ct", str(folder), "--labels", str(study["label_path"]), "--out", str(slice_file)])
    err = capsys.readouterr().err
    assert code == 2 and "would replace a CT file of --ct" in err and len(err.strip().splitlines()) == 1
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    for _ in range(2):  # beside the slices, and again over the structure set written there before
        assert main(["rtstruct", "--ct", str(folder), "--labels", str(study["label_path"]),
                     "--out", str(folder / "RS.dcm")]) == 0
    assert read_series(folder, "CT").image.GetSize() == study["ct"].image.GetSize()


def test_contours_lie_on_the_plane_of_their_slice_when_positions_are_rounded(tmp_path):
    """Slice positions written to 0.1 mm (3.27 mm apart) are read as one regular grid; each contour still lies
    on the plane its referenced image's ImagePositionPatient gives, not on the fitted grid (up to 0.06 mm off)."""
    from HNTumorSegLib.phantom.dicom import DicomStudy, write_ct_series

    grid = sitk.Image(40, 30, 12, sitk.sitkInt16)
    grid.SetSpacing((0.9, 1.3, 3.27))
    grid.SetOrigin((-10.0, 5.0, -30.0))
    folder = tmp_path / "ct"
    folder.mkdir()
    write_ct_series(grid + 40, folder, DicomStudy("ROUNDED"))
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [f"{float(v):.1f}" for v in ds.ImagePositionPatient]
        ds.save_as(path)
    ct = read_series(folder, "CT")
    label = np.zeros((12, 30, 40), np.uint8)
    label[1:11, 10:20, 10:20] = 1
    image = sitk.GetImageFromArray(label)
    image.CopyInformation(ct.image)
    ds, _ = build_rtstruct(image, ct)
    z_of = {h.SOPInstanceUID: float(h.ImagePositionPatient[2]) for h in ct.headers}
    worst = max(abs(np.asarray(item.ContourData, float).reshape(-1, 3)[:, 2]
                    - z_of[item.ContourImageSequence[0].ReferencedSOPInstanceUID]).max()
                for item in ds.ROIContourSequence[0].ContourSequence)
    assert worst <= 1e-3
    fitted_off = max(abs(ct.image.GetOrigin()[2] + k * ct.image.GetSpacing()[2] - z_of[h.SOPInstanceUID])
                     for k, h in enumerate(ct.headers))
    assert fitted_off > 0.01  # the case this is about: the regular grid is off the written positions
