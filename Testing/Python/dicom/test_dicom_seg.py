"""DICOM SEG output through highdicom, and ``segment`` from DICOM folders to RTSTRUCT + DICOM SEG.

The segment run uses a small random-weight model: it checks the plumbing (inputs, SUV, outputs,
report), not accuracy.
"""

from __future__ import annotations

import json
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

import pydicom
import highdicom as hd

from HNTumorSegLib.cli import main
from HNTumorSegLib.dicom.seg import write_dicom_seg
from HNTumorSegLib.dicom.series import read_series
from HNTumorSegLib.phantom import make_phantom
from HNTumorSegLib.phantom.dicom import write_dicom_case
from HNTumorSegLib.dicom.segment_terminology import GTVN, GTVP

from conftest import tilted_case


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    root = tmp_path_factory.mktemp("seg")
    case = make_phantom(31, "head", ct_matrix=128, n_nodes=2)
    write_dicom_case(case, root / "dicom")
    ct = read_series(root / "dicom", "CT")
    label = sitk.Image(case.label)
    label.CopyInformation(ct.image)  # DICOM positions carry 4 decimals
    return {"root": root, "dicom": root / "dicom", "ct": ct, "label": label}


@pytest.fixture(scope="module")
def seg_file(study):
    return write_dicom_seg(study["label"], study["ct"], study["root"] / "SEG.dcm")


def test_segments_carry_the_slicer_module_codes(seg_file):
    seg = hd.seg.segread(seg_file)
    described = [(d.segment_label, d.segmented_property_category.value, d.segmented_property_type.value,
                  d.segmented_property_type.scheme_designator) for d in seg.SegmentSequence]
    assert described == [("GTVp", GTVP.category.value, "86049000", "SCT"),
                         ("GTVn", GTVN.category.value, "14799000", "SCT")]
    assert [d.segmented_property_type.meaning for d in seg.SegmentSequence] == ["Neoplasm, Primary",
                                                                              "Neoplasm, Secondary"]


def test_highdicom_reads_back_the_voxels_on_the_ct_slices(study, seg_file):
    seg = hd.seg.segread(seg_file)
    ct = study["ct"]
    lab = sitk.GetArrayFromImage(study["label"])
    got = seg.get_pixels_by_source_instance(source_sop_instance_uids=ct.sop_instance_uids,
                                            combine_segments=True, skip_overlap_checks=True)
    assert got.shape == lab.shape
    assert np.array_equal(got, lab)
    refs = {r.ReferencedSOPInstanceUID for s in seg.ReferencedSeriesSequence for r in s.ReferencedInstanceSequence}
    assert refs == set(ct.sop_instance_uids)
    assert seg.StudyInstanceUID == ct.headers[0].StudyInstanceUID
    assert seg.FrameOfReferenceUID == ct.frame_of_reference_uid


def test_pydicom_reads_it_as_a_segmentation(seg_file):
    ds = pydicom.dcmread(seg_file)
    assert ds.SOPClassUID == "1.2.840.10008.5.1.4.1.1.66.4" and ds.Modality == "SEG"
    assert ds.SegmentationType == "BINARY" and int(ds.NumberOfFrames) > 0
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy:
        out = subprocess.run([dciodvfy, str(seg_file)], capture_output=True, text=True, encoding="utf-8")
        assert not [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]



def test_segment_dicom_in_rtstruct_and_dicom_seg_out(study, small_model, tmp_path, capsys):
    out = tmp_path / "res" / "seg.nii.gz"
    rs, sg = tmp_path / "res" / "RS.dcm", tmp_path / "res" / "SEG.dcm"
    code = main(["segment", "--ct", str(study["dicom"]), "--pet", str(study["dicom"]), "--out", str(out),
                 "--model", str(small_model), "--device", "cpu", "--rtstruct", str(rs), "--dicom-seg", str(sg)])
    assert code == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "res" / "seg.json").read_text())
    assert report["suv"]["suv_factor"] == pytest.approx(2.96075e-4, rel=1e-5)
    assert report["input_series"]["ct"]["series_instance_uid"] == study["ct"].series.uid
    assert report["rtstruct"]["file"] == str(rs) and report["dicom_seg"]["file"] == str(sg)
    assert report["rtstruct"]["referenced_ct_series"] == study["ct"].series.uid
    label = sitk.ReadImage(str(out))
    assert label.GetSize() == study["ct"].image.GetSize()
    assert pydicom.dcmread(rs).Modality == "RTSTRUCT"
    assert pydicom.dcmread(sg).Modality == "SEG"
    voxels = {name: s["voxels"] for name, s in report["rtstruct"]["structures"].items()}
    lab = sitk.GetArrayFromImage(label)
    assert voxels == {"GTVp": int((lab == 1).sum()), "GTVn": int((lab == 2).sum())}
    assert sorted(p.name for p in out.parent.iterdir()) == ["RS.dcm", "SEG.dcm", "seg.json", "seg.nii.gz"]


def test_split_lesions_writes_each_node_as_its_own_segment(study):
    from HNTumorSegLib.imaging.components import lesion_ids

    lab = sitk.GetArrayFromImage(study["label"])
    nodes, count = lesion_ids(lab == 2)
    assert count >= 2
    path = write_dicom_seg(study["label"], study["ct"], study["root"] / "SEG_split.dcm", split_lesions=True)
    seg = hd.seg.segread(path)
    assert [d.segment_label for d in seg.SegmentSequence] == ["GTVp"] + [f"GTVn_{i}" for i in range(1, count + 1)]
    assert {d.segmented_property_type.value for d in seg.SegmentSequence[1:]} == {"14799000"}
    got = seg.get_pixels_by_source_instance(source_sop_instance_uids=study["ct"].sop_instance_uids,
                                            combine_segments=True, skip_overlap_checks=True)
    assert np.array_equal(got == 1, lab == 1)
    for i in range(1, count + 1):  # segment 1 + i is node i, the largest first
        assert np.array_equal(got == 1 + i, nodes == i)
    sizes = [int((nodes == i).sum()) for i in range(1, count + 1)]
    assert sizes == sorted(sizes, reverse=True)


@pytest.mark.parametrize("pose", ["flipped", "oblique"])
def test_segment_outputs_on_a_flipped_or_oblique_ct_read_back_by_plastimatch_and_highdicom(small_model, tmp_path,
                                                                                          capsys, pose):
    """``segment``'s RTSTRUCT (ROI generation AUTOMATIC) and DICOM SEG (algorithm type AUTOMATIC, its anatomic
    region) on a CT stored with direction diag(-1, -1, 1), or tilted 12 degrees about the patient's long axis:
    plastimatch rasterises the RTSTRUCT back onto the CT and highdicom reads the SEG back, both equal to the
    label map ``segment`` wrote."""
    case = make_phantom(32, "head", ct_matrix=96, n_nodes=2, flip_xy=pose == "flipped")
    if pose == "oblique":
        case = tilted_case(case, 12.0)
    write_dicom_case(case, tmp_path / "dicom")
    out, rs, sg = tmp_path / "res" / "seg.nii.gz", tmp_path / "res" / "RS.dcm", tmp_path / "res" / "SEG.dcm"
    code = main(["segment", "--ct", str(tmp_path / "dicom"), "--pet", str(tmp_path / "dicom"), "--out", str(out),
                 "--model", str(small_model), "--device", "cpu", "--rtstruct", str(rs), "--dicom-seg", str(sg)])
    assert code == 0, capsys.readouterr().err
    label = sitk.ReadImage(str(out))
    ct = read_series(tmp_path / "dicom", "CT")
    np.testing.assert_allclose(label.GetDirection(), case.ct.GetDirection(), atol=1e-5)
    lab = sitk.GetArrayFromImage(label)
    assert (lab == 1).any() and (lab == 2).any()  # the random-weight model labels both: a real comparison

    structure_set = pydicom.dcmread(rs)
    assert [r.ROIGenerationAlgorithm for r in structure_set.StructureSetROISequence] == ["AUTOMATIC"] * 2
    seg = hd.seg.segread(sg)
    assert [d.SegmentAlgorithmType for d in seg.SegmentSequence] == ["AUTOMATIC"] * 2
    assert all(d.SegmentAlgorithmName == "HNTumorSeg" and d.AnatomicRegionSequence for d in seg.SegmentSequence)
    got = seg.get_pixels_by_source_instance(source_sop_instance_uids=ct.sop_instance_uids, combine_segments=True,
                                            skip_overlap_checks=True)
    assert np.array_equal(got, lab)

    if shutil.which("plastimatch") is None:
        pytest.skip("plastimatch (Debian package plastimatch) is not installed; .ci/run installs it")
    run = subprocess.run([shutil.which("plastimatch"), "convert", "--input", str(rs), "--referenced-ct",
                          str(tmp_path / "dicom"), "--output-prefix", str(tmp_path / "pm"), "--prefix-format", "nrrd"],
                         capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-2000:]
    for value, name in ((1, "GTVp"), (2, "GTVn")):
        theirs = sitk.ReadImage(str(tmp_path / "pm" / f"{name}.nrrd"))
        on_ct = sitk.Resample(theirs, label, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        a, b = sitk.GetArrayFromImage(on_ct) > 0, lab == value
        assert 2 * np.count_nonzero(a & b) / (a.sum() + b.sum()) == 1.0, name


def test_a_ct_in_a_japanese_character_set_gets_a_utf8_segmentation_with_the_same_name(study, tmp_path):
    """The standard multi-valued form of an ISO 2022 character set (an empty first value), which highdicom
    refused with a traceback when it copied the CT's set: the SEG is UTF-8, the patient's name unchanged."""
    folder = tmp_path / "jis"
    shutil.copytree(study["dicom"], folder)
    name = "Yamada^Tarou=山田^太郎=やまだ^たろう"
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        ds.SpecificCharacterSet = ["", "ISO 2022 IR 87"]
        ds.PatientName = name
        ds.save_as(path)
    ct = read_series(folder, "CT")
    seg = pydicom.dcmread(write_dicom_seg(study["label"], ct, tmp_path / "SEG.dcm"))
    assert seg.SpecificCharacterSet == "ISO_IR 192" and str(seg.PatientName) == name
    assert seg.PatientID == pydicom.dcmread(next(folder.iterdir())).PatientID


def test_an_anonymised_ct_without_type2_patient_study_attributes_or_slice_thickness_gets_a_valid_segmentation(
        study, tmp_path):
    """Anonymisers delete the Type 2 patient and study attributes (and some SliceThickness); highdicom read
    them from the CT and failed with an AttributeError. The SEG has them empty, the slice spacing as its
    thickness, is a valid IOD, reads back the label, and the CT's headers are left as read."""
    removed = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyID", "AccessionNumber",
               "StudyDate", "StudyTime", "ReferringPhysicianName", "SliceThickness")
    folder = tmp_path / "anonymous"
    shutil.copytree(study["dicom"], folder)
    for path in folder.iterdir():
        ds = pydicom.dcmread(path)
        for keyword in removed:
            if keyword in ds:
                delattr(ds, keyword)
        ds.save_as(path)
    ct = read_series(folder, "CT")
    path = write_dicom_seg(study["label"], ct, tmp_path / "SEG.dcm")
    assert not any(keyword in h for h in ct.headers for keyword in removed)
    ds = pydicom.dcmread(path)
    assert all(ds[keyword].value in ("", None) for keyword in removed[:-1])
    measures = ds.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0]
    assert float(measures.SliceThickness) == pytest.approx(ct.image.GetSpacing()[2])
    seg = hd.seg.segread(path)
    got = seg.get_pixels_by_source_instance(source_sop_instance_uids=ct.sop_instance_uids,
                                            combine_segments=True, skip_overlap_checks=True)
    assert np.array_equal(got, sitk.GetArrayFromImage(study["label"]))
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy:
        out = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, encoding="utf-8")
        assert not [ln for ln in (out.stdout + out.stderr).splitlines() if ln.startswith("Error")]
