"""The module's scene logic on Slicer's real libraries (slicer-core): what a clinician's Segment does.

Volumes come in through Slicer's own reader (``AddArchetypeVolume``), the worker runs as its own
process with the bundled model, and everything lands in real MRML nodes. The reference is the
command line: ``hntumorseg segment`` on the same files must give the same label map, voxel for
voxel, whatever the storage orientation or the parent transform the volumes sit under.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import vtk

from headless_slicer import HeadlessSlicer, import_slicer_core, scene_logic_class

from HNTumorSegLib.cases.inputs import read_ct
from HNTumorSegLib.cli import main as cli_main
from HNTumorSegLib.dicom.series import read_series
from HNTumorSegLib.dicom.segment_terminology import SEGMENTS
from HNTumorSegLib.errors import InputError
from HNTumorSegLib.phantom import make_phantom
from HNTumorSegLib.phantom.dicom import write_dicom_case
from HNTumorSegLib.slicer_support.edit_guard import ASK, CREATE, REPLACE
from HNTumorSegLib.slicer_support.results_table import COLUMNS, table_rows
from HNTumorSegLib.slicer_support.scene_geometry import analysis_window_box
from HNTumorSegLib.slicer_support.segmentation_job import CANCELLED, JobResult, SegmentationJob

slicer = import_slicer_core()

PHANTOM_SEED = 9001
#: A rigid parent transform in RAS (what a registration leaves): 12 degrees about S, then a shift.
ANGLE = np.deg2rad(12.0)
RAS_TRANSFORM = np.array([[np.cos(ANGLE), -np.sin(ANGLE), 0.0, 15.0],
                          [np.sin(ANGLE), np.cos(ANGLE), 0.0, -20.0],
                          [0.0, 0.0, 1.0, 30.0],
                          [0.0, 0.0, 0.0, 1.0]])


def harden(image: sitk.Image, ras_to_world: np.ndarray) -> sitk.Image:
    """``image`` moved by a RAS transform, as Slicer's Harden Transform leaves it (voxels unchanged)."""
    lps = np.diag([-1.0, -1.0, 1.0])
    rotation = lps @ ras_to_world[:3, :3] @ lps
    shift = lps @ ras_to_world[:3, 3]
    out = sitk.Image(image)
    direction = np.asarray(image.GetDirection()).reshape(3, 3)
    out.SetDirection(tuple((rotation @ direction).ravel()))
    out.SetOrigin(tuple(rotation @ np.asarray(image.GetOrigin()) + shift))
    return out


class Case:
    """A phantom written to disk in one storage orientation, with the CLI's result on it."""

    def __init__(self, folder: Path, orientation: str):
        phantom = make_phantom(PHANTOM_SEED, "head", n_nodes=2)
        ct, pet = phantom.ct, phantom.pet
        if orientation == "flipped":  # other voxel order (x and y flipped), same anatomy
            ct, pet = sitk.Flip(ct, (True, True, False)), sitk.Flip(pet, (True, True, False))
        folder.mkdir(parents=True, exist_ok=True)
        self.ct_path, self.pet_path = folder / "ct.nrrd", folder / "pet.nrrd"
        sitk.WriteImage(ct, str(self.ct_path))
        sitk.WriteImage(pet, str(self.pet_path))
        self.transformed = orientation == "transformed"
        cli_ct, cli_pet = self.ct_path, self.pet_path
        if self.transformed:  # the CLI sees the hardened images: the world the module segments in
            cli_ct, cli_pet = folder / "ct_world.nrrd", folder / "pet_world.nrrd"
            sitk.WriteImage(harden(ct, RAS_TRANSFORM), str(cli_ct))
            sitk.WriteImage(harden(pet, RAS_TRANSFORM), str(cli_pet))
        self.cli_label_path = folder / "cli_seg.nii.gz"
        assert cli_main(["segment", "--ct", str(cli_ct), "--pet", str(cli_pet), "--out", str(self.cli_label_path),
                         "--device", "cpu"]) == 0
        self.cli_label = sitk.GetArrayFromImage(sitk.ReadImage(str(self.cli_label_path)))
        self.cli_report = json.loads(self.cli_label_path.with_name("cli_seg.json").read_text(encoding="utf-8"))
        self.truth = phantom.label if orientation != "flipped" else sitk.Flip(phantom.label, (True, True, False))

    def load(self, app: HeadlessSlicer):
        ct = app.load_volume(self.ct_path, "CT")
        pet = app.load_volume(self.pet_path, "PET")
        if self.transformed:
            transform = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "registration")
            transform.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(RAS_TRANSFORM))
            for node in (ct, pet):
                node.SetAndObserveTransformNodeID(transform.GetID())
        return ct, pet


def assert_close(actual, expected, rel: float = 1e-9) -> None:
    """Equal JSON-like structures, numbers to ``rel`` (Slicer's IJK-to-RAS matrix carries ~1e-16 noise)."""
    if isinstance(expected, dict):
        assert isinstance(actual, dict) and sorted(actual) == sorted(expected)
        for key in expected:
            assert_close(actual[key], expected[key], rel)
    elif isinstance(expected, list):
        assert isinstance(actual, list) and len(actual) == len(expected)
        for a, e in zip(actual, expected):
            assert_close(a, e, rel)
    elif isinstance(expected, float):
        assert actual == pytest.approx(expected, rel=rel, abs=1e-12)
    else:
        assert actual == expected


@pytest.fixture
def headless_slicer():
    app = HeadlessSlicer()
    try:
        yield app
    finally:
        app.close()


@pytest.fixture(scope="module")
def plain_case(tmp_path_factory) -> Case:
    return Case(tmp_path_factory.mktemp("plain"), "plain")


@pytest.fixture(scope="module")
def segmented(plain_case):
    """The plain case segmented once through the worker, in a study, kept for the checks below."""
    app = HeadlessSlicer()
    logic = scene_logic_class()(workerPython=[sys.executable])
    ct, pet = plain_case.load(app)
    sh = app.scene.GetSubjectHierarchyNode()
    study = sh.CreateStudyItem(sh.CreateSubjectItem(sh.GetSceneItemID(), "phantom patient"), "phantom study")
    for node in (ct, pet):
        sh.SetItemParent(sh.GetItemByDataNode(node), study)
    params = logic.getParameterNode()
    seg = logic.segment(ct, pet, device="cpu", parameterNode=params)
    yield {"app": app, "logic": logic, "ct": ct, "pet": pet, "seg": seg, "params": params, "study": study}
    app.close()


def test_segment_in_the_scene_equals_the_command_line(segmented, plain_case):
    label = segmented["logic"].segmentLabels(segmented["seg"], segmented["ct"])
    assert label.shape == plain_case.cli_label.shape
    assert np.count_nonzero(label == 1) > 1000 and np.count_nonzero(label == 2) > 100
    np.testing.assert_array_equal(label, plain_case.cli_label)


@pytest.mark.parametrize("orientation", ["flipped", "transformed"])
def test_orientation_and_parent_transform_do_not_change_the_result(tmp_path, orientation):
    case = Case(tmp_path, orientation)
    app = HeadlessSlicer()
    try:
        logic = scene_logic_class()(workerPython=[sys.executable])
        ct, pet = case.load(app)
        if case.transformed:
            assert [level for level, _ in logic.inputProblems(ct, pet)] == ["info", "info"]
        seg = logic.segment(ct, pet, device="cpu")
        label = logic.segmentLabels(seg, ct)
        np.testing.assert_array_equal(label, case.cli_label)
        assert logic.outputPolicy(seg, ct) == REPLACE  # the stored fingerprint is that of the segments read back
        # and it is the phantom's anatomy, not an artefact of the orientation
        truth = sitk.GetArrayFromImage(case.truth)
        assert 2 * np.count_nonzero((label == 1) & (truth == 1)) / (np.count_nonzero(label == 1)
                                                                   + np.count_nonzero(truth == 1)) > 0.5
    finally:
        app.close()


def test_segments_are_named_coloured_coded_and_placed_in_the_ct_study(segmented):
    seg, ct = segmented["seg"], segmented["ct"]
    segmentation = seg.GetSegmentation()
    names = sorted(segmentation.GetSegment(segmentation.GetNthSegmentID(i)).GetName()
                   for i in range(segmentation.GetNumberOfSegments()))
    assert names == ["GTVn", "GTVp"]
    tag_name = slicer.vtkSegment.GetTerminologyEntryTagName()
    for definition in SEGMENTS:
        segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(definition.name))
        np.testing.assert_allclose(segment.GetColor(), definition.color, atol=1e-6)
        tag = vtk.reference("")
        assert segment.GetTag(tag_name, tag)
        assert str(tag) == definition.terminology_entry()
    assert seg.GetNodeReferenceID(seg.GetReferenceImageGeometryReferenceRole()) == ct.GetID()
    sh = segmented["app"].scene.GetSubjectHierarchyNode()
    assert sh.GetItemParent(sh.GetItemByDataNode(seg)) == segmented["study"]


def test_slicer_reads_the_terminology_tags_back_to_the_same_codes():
    # Slicer's own parser: seven '~' fields, coded fields as scheme^value^meaning, the category not empty.
    logic = slicer.vtkSlicerTerminologiesModuleLogic()
    for definition in SEGMENTS:
        entry = slicer.vtkSlicerTerminologyEntry()
        assert logic.DeserializeTerminologyEntry(definition.terminology_entry(), entry)
        assert entry.GetTerminologyContextName() == "Segmentation category and type - DICOM master list"
        category, kind = entry.GetCategoryObject(), entry.GetTypeObject()
        assert (category.GetCodeValue(), category.GetCodeMeaning()) == ("49755003", "Morphologically Altered Structure")
        assert (kind.GetCodingSchemeDesignator(), kind.GetCodeValue()) == ("SCT", definition.type.value)
        assert logic.SerializeTerminologyEntry(entry) == definition.terminology_entry()


def test_results_table_matches_the_command_line_statistics(segmented, plain_case):
    table = segmented["params"].resultsTable
    assert [table.GetColumnName(i) for i in range(table.GetNumberOfColumns())] == list(COLUMNS)
    rows = [[table.GetCellText(r, c) for c in range(table.GetNumberOfColumns())] for r in range(table.GetNumberOfRows())]
    assert rows == [list(row) for row in table_rows(plain_case.cli_report["structures"],
                                                    plain_case.cli_report["lesions"])]
    assert any(row[0] == "GTVn_1" for row in rows)


def test_a_lesion_row_centres_the_slice_views_on_that_lesion(segmented, plain_case):
    from headless_views import SliceView

    logic, params, app = segmented["logic"], segmented["params"], segmented["app"]
    table = params.resultsTable
    row = next(r for r in range(table.GetNumberOfRows()) if table.GetCellText(r, 0) == "GTVn_1")
    lesion = logic.lesionAtRow(params, row)
    expected = next(item for item in plain_case.cli_report["lesions"] if item["id"] == "GTVn_1")
    assert lesion["id"] == "GTVn_1"
    np.testing.assert_allclose(lesion["centroid_mm"], expected["centroid_mm"], atol=0.05)  # as shown, to 0.1 mm
    assert logic.lesionAtRow(params, 0) is None  # GTVp's segment row: not a lesion
    views = [SliceView(app, name, orientation, (64, 64)) for name, orientation in (("Red", "Axial"), ("Green", "Coronal"))]
    try:
        ras = logic.centreViewsOn(lesion)
        for view in views:
            slice_to_ras = view.node.GetSliceToRAS()
            np.testing.assert_allclose([slice_to_ras.GetElement(i, 3) for i in range(3)], ras, atol=1e-6)
    finally:
        for view in views:
            view.close()
    # the point is inside the lesion: the label under it is GTVn
    ijk = sitk.ReadImage(str(plain_case.cli_label_path)).TransformPhysicalPointToIndex([-ras[0], -ras[1], ras[2]])
    assert plain_case.cli_label[ijk[2], ijk[1], ijk[0]] == 2


def test_analysis_window_roi_is_the_window_the_command_line_used(segmented, plain_case):
    roi = segmented["params"].analysisWindowROI
    box = analysis_window_box(plain_case.cli_report["provenance"])
    np.testing.assert_allclose(roi.GetSize(), box.size_mm, atol=1e-6)
    np.testing.assert_allclose(roi.GetCenter(), box.center_ras, atol=1e-6)
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(roi.GetObjectToNodeMatrix()), box.object_to_world(),
                               atol=1e-9)
    assert roi.GetLocked()


def test_edit_guard_replaces_an_unedited_run_and_keeps_an_edited_one(segmented, plain_case):
    logic, ct, pet, params = segmented["logic"], segmented["ct"], segmented["pet"], segmented["params"]
    scene = segmented["app"].scene
    result = JobResult(label_path=plain_case.cli_label_path, report=plain_case.cli_report)
    first = logic.applyResult(result, ct, pet, None, "new", params)
    assert logic.outputPolicy(None, ct) == CREATE and logic.outputPolicy(first, ct) == REPLACE
    again = logic.applyResult(result, ct, pet, first, "new", params)
    assert again.GetID() == first.GetID()  # unedited: replaced in place

    edited = logic.segmentMasks(first, ct)["GTVp"].astype(np.uint8)
    edited[:, :, : edited.shape[2] // 2] = 0
    slicer.util.updateSegmentBinaryLabelmapFromArray(edited, first, first.GetSegmentation().GetSegmentIdBySegmentName(
        "GTVp"), ct)
    before = logic.segmentMasks(first, ct)
    assert logic.outputPolicy(first, ct) == ASK
    count = scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode")
    kept = logic.applyResult(result, ct, pet, first, "new", params)
    assert kept.GetID() != first.GetID() and scene.GetNumberOfNodesByClass("vtkMRMLSegmentationNode") == count + 1
    after = logic.segmentMasks(first, ct)
    for name in before:
        np.testing.assert_array_equal(before[name], after[name])
    overwritten = logic.applyResult(result, ct, pet, first, "overwrite", params)
    assert overwritten.GetID() == first.GetID()
    np.testing.assert_array_equal(logic.segmentLabels(first, ct), plain_case.cli_label)


def test_scene_saved_and_read_back_keeps_the_segments(segmented, tmp_path):
    app, logic, ct, seg = segmented["app"], segmented["logic"], segmented["ct"], segmented["seg"]
    expected = logic.segmentLabels(seg, ct)
    for node in (ct, seg, segmented["params"].resultsTable):
        if node.GetStorageNode() is None:
            node.AddDefaultStorageNode()
        storage = node.GetStorageNode()
        storage.SetFileName(str(tmp_path / f"{node.GetID()}.{storage.GetDefaultWriteFileExtension()}"))
        assert storage.WriteData(node)
    assert seg.GetStorageNode().GetFileName().endswith(".seg.nrrd")
    app.scene.SetRootDirectory(str(tmp_path))
    app.scene.SetURL(str(tmp_path / "scene.mrml"))
    assert app.scene.Commit()

    reread = slicer.vtkMRMLScene()
    reread.SetURL(str(tmp_path / "scene.mrml"))
    assert reread.Import()
    seg2 = reread.GetNodeByID(seg.GetID())
    ct2 = reread.GetNodeByID(ct.GetID())
    assert seg2.GetAttribute("HNTumorSeg.Fingerprint") == seg.GetAttribute("HNTumorSeg.Fingerprint")
    np.testing.assert_array_equal(logic.segmentLabels(seg2, ct2), expected)
    reread.Clear(1)


def test_cancel_leaves_the_scene_unchanged(headless_slicer, plain_case):
    logic = scene_logic_class()(workerPython=[sys.executable])
    ct = headless_slicer.load_volume(plain_case.ct_path, "CT")
    pet = headless_slicer.load_volume(plain_case.pet_path, "PET")
    scene = headless_slicer.scene
    before = sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))
    job = logic.startJob(ct, pet, device="cpu")
    try:
        job.cancel()
        assert job.state == CANCELLED
    finally:
        job.cleanup()
    assert not job.folder.exists()
    assert sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())) == before


def test_a_worker_killed_mid_run_is_reported_and_the_scene_can_run_again(headless_slicer, plain_case):
    """The worker killed (the system's out-of-memory killer sends SIGKILL): the logic says what happened,
    the scene keeps exactly its nodes, and the next run segments as always."""
    killed = [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    ct = headless_slicer.load_volume(plain_case.ct_path, "CT")
    pet = headless_slicer.load_volume(plain_case.pet_path, "PET")
    scene = headless_slicer.scene
    before = sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))
    with pytest.raises(RuntimeError, match=r"segmentation failed: the segmentation worker was stopped by SIGKILL "
                                           r"\(the system may have run out of memory"):
        scene_logic_class()(workerPython=killed).segment(ct, pet, device="cpu")
    assert sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())) == before
    seg = scene_logic_class()(workerPython=[sys.executable]).segment(ct, pet, device="cpu")
    np.testing.assert_array_equal(scene_logic_class()(workerPython=[sys.executable]).segmentLabels(seg, ct),
                                  plain_case.cli_label)


class DicomDatabase:
    """Slicer's DICOM database as the scene logic uses it (instance UID -> file): the one part of a DICOM
    load that needs the application. Everything after the look-up is the real code."""

    def __init__(self, folder: Path):
        import pydicom

        self.files = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID): str(p)
                      for p in folder.iterdir() if p.is_file()}

    def fileForInstance(self, uid: str) -> str:
        return self.files.get(uid, "")

    def fileValue(self, path: str, tag: str) -> str:
        import pydicom

        return str(pydicom.dcmread(path, stop_before_pixels=True)[int(tag.replace(",", ""), 16)].value)


def test_pet_loaded_from_dicom_in_bq_per_ml_is_converted_as_the_command_line_does(tmp_path, monkeypatch):
    phantom = make_phantom(PHANTOM_SEED, "head", n_nodes=2)
    study = tmp_path / "study"
    write_dicom_case(phantom, study)
    cli_out = tmp_path / "cli.nii.gz"
    assert cli_main(["segment", "--ct", str(study), "--pet", str(study), "--out", str(cli_out), "--device", "cpu"]) == 0
    cli_report = json.loads(cli_out.with_name("cli.json").read_text(encoding="utf-8"))
    # What the DICOM module puts in the scene: the series' values (Bq/mL) and the instance UIDs.
    ct_image, _ = read_ct(study)
    pet_volume = read_series(study, "PT")
    sitk.WriteImage(ct_image, str(tmp_path / "ct.nrrd"))
    sitk.WriteImage(pet_volume.image, str(tmp_path / "pet_bqml.nrrd"))
    app = HeadlessSlicer()
    try:
        logic = scene_logic_class()(workerPython=[sys.executable])
        ct = app.load_volume(tmp_path / "ct.nrrd", "CT")
        pet = app.load_volume(tmp_path / "pet_bqml.nrrd", "PET")
        # Without its DICOM origin, a PET in Bq/mL is refused before anything runs ...
        assert [level for level, _ in logic.inputProblems(ct, pet)] == ["error"]
        monkeypatch.setattr(slicer, "dicomDatabase", DicomDatabase(study), raising=False)
        pet.SetAttribute("DICOM.instanceUIDs", " ".join(pet_volume.sop_instance_uids))
        assert logic.dicomModality(pet) == "PT"
        # ... from DICOM, the panel shows the factor and the tags, and the run goes ahead.
        problems = logic.inputProblems(ct, pet)
        assert [level for level, _ in problems] == ["info"]
        assert f"factor {cli_report['suv']['suv_factor']:.6g}" in problems[0][1], problems
        seg = logic.segment(ct, pet, device="cpu")
        np.testing.assert_array_equal(logic.segmentLabels(seg, ct), sitk.GetArrayFromImage(sitk.ReadImage(str(cli_out))))
        params = logic.getParameterNode()
        structures = json.loads(json.dumps(logic.updateResultsTable(seg, ct, pet, params), default=float))
        assert_close(structures, cli_report["structures"])  # the CT spacing read back from MRML carries ~1e-16 noise
        # A tag that gives no SUV is named, and nothing runs.
        for path in DicomDatabase(study).files.values():
            import pydicom

            ds = pydicom.dcmread(path)
            if ds.Modality == "PT":
                del ds.RadiopharmaceuticalInformationSequence
                ds.save_as(path)
        problems = logic.inputProblems(ct, pet)
        assert [level for level, _ in problems] == ["error"]
        assert "RadiopharmaceuticalInformationSequence (0054,0016) is missing" in problems[0][1]
    finally:
        app.close()



def test_dicom_inputs_of_other_patients_another_suv_or_a_topogram_are_caught_before_a_run(tmp_path, monkeypatch):
    """As the command line: a PET of another patient than the CT (both loaded from DICOM) is refused; so is a PET
    in SUVlbm (Slicer's PET-DICOM extension codes it), and an RGB volume names its components. A topogram and
    the NAC PET are never the default inputs."""
    from HNTumorSegLib.phantom.dicom import DicomStudy, write_ct_series

    phantom = make_phantom(PHANTOM_SEED, "head", ct_matrix=64, n_nodes=1)
    study, other = tmp_path / "study", tmp_path / "other"
    write_dicom_case(phantom, study)
    write_ct_series(phantom.ct, other, DicomStudy("SOMEONE-ELSE"))
    monkeypatch.setattr(slicer, "dicomDatabase", DicomDatabase(study), raising=False)
    app = HeadlessSlicer()
    try:
        logic = scene_logic_class()(workerPython=[sys.executable])
        ct_volume, pet_volume = read_series(study, "CT"), read_series(study, "PT")
        nodes = {}
        for name, volume in (("CT", ct_volume), ("PET", pet_volume), ("CT other", read_series(other, "CT"))):
            sitk.WriteImage(volume.image, str(tmp_path / f"{name}.nrrd"))
            nodes[name] = app.load_volume(tmp_path / f"{name}.nrrd", name)
            nodes[name].SetAttribute("DICOM.instanceUIDs", " ".join(volume.sop_instance_uids))
        ct, pet = nodes["CT"], nodes["PET"]
        assert [level for level, _ in logic.inputProblems(ct, pet)] == ["info"]
        slicer.dicomDatabase.files.update(DicomDatabase(other).files)
        problems = logic.inputProblems(nodes["CT other"], pet)
        assert [level for level, _ in problems] == ["error"]
        assert problems[0][1].startswith("PET 'PET' is of PatientID") and "SOMEONE-ELSE" in problems[0][1]

        units = slicer.vtkCodedEntry()
        units.SetValueSchemeMeaning("{SUVlbm}g/ml", "UCUM", "Standardized Uptake Value lean body mass")
        sul = app.load_volume(tmp_path / "PET.nrrd", "PET SUL")
        slicer.util.updateVolumeFromArray(sul, slicer.util.arrayFromVolume(pet) * 2e-4)  # values of an SUV
        sul.SetVoxelValueUnits(units)
        problems = logic.inputProblems(ct, sul)
        assert [level for level, _ in problems] == ["error"] and "SUVlbm (lean body mass), not SUVbw" in problems[0][1]
        with pytest.raises(InputError, match="not SUVbw"):
            logic.petImage(sul)

        rgb = app.scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "PET CT Fusion")
        rgb.CopyOrientation(pet)
        slicer.util.updateVolumeFromArray(rgb, np.zeros((*slicer.util.arrayFromVolume(pet).shape, 3), np.uint8))
        problems = logic.inputProblems(ct, rgb)
        assert [level for level, _ in problems] == ["error"] and "3 components" in problems[0][1], problems

        topogram = app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "Topogram")  # loaded last, one image
        slicer.util.updateVolumeFromArray(topogram, np.full((1, 64, 64), -1000, np.int16))
        topogram.SetAttribute("DICOM.instanceUIDs", ct_volume.sop_instance_uids[0])
        assert logic.defaultInputs()[0] in (ct, nodes["CT other"])
    finally:
        app.close()


def test_a_ct_in_hu_plus_1024_is_refused_before_the_worker_starts(headless_slicer, plain_case, tmp_path, monkeypatch):
    shifted = sitk.Cast(sitk.ReadImage(str(plain_case.ct_path)) + 1024, sitk.sitkUInt16)  # an unsigned export
    sitk.WriteImage(shifted, str(tmp_path / "ct_unsigned.nrrd"))
    logic = scene_logic_class()(workerPython=[sys.executable])
    ct = headless_slicer.load_volume(tmp_path / "ct_unsigned.nrrd", "CT")
    pet = headless_slicer.load_volume(plain_case.pet_path, "PET")
    problems = logic.inputProblems(ct, pet)
    assert [level for level, _ in problems] == ["error"] and "HU + 1024" in problems[0][1], problems
    assert problems[0][1].startswith("CT 'CT': CT values look like HU + 1024")
    started = []
    monkeypatch.setattr(SegmentationJob, "start", lambda job: started.append(job))
    nodes = headless_slicer.scene.GetNumberOfNodes()
    with pytest.raises(InputError, match="HU \\+ 1024"):
        logic.segment(ct, pet, device="cpu")
    assert started == [] and headless_slicer.scene.GetNumberOfNodes() == nodes
    # the plain CT of the same case passes
    plain = headless_slicer.load_volume(plain_case.ct_path, "CT plain")
    assert [level for level, _ in logic.inputProblems(plain, pet)] == []

def test_the_uncertainty_overlay_lies_on_the_ct_and_marks_the_lesion_edges(segmented, plain_case):
    from headless_views import SliceView

    params, ct, app = segmented["params"], segmented["ct"], segmented["app"]
    volume = params.uncertaintyVolume
    assert volume is not None and "entropy" in volume.GetAttribute("HNTumorSeg.UncertaintyMeasure")
    values = slicer.util.arrayFromVolume(volume)
    assert values.shape == slicer.util.arrayFromVolume(ct).shape and values.min() >= 0 and values.max() <= 100
    a, b = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    ct.GetIJKToRASMatrix(a)
    volume.GetIJKToRASMatrix(b)
    np.testing.assert_allclose(slicer.util.arrayFromVTKMatrix(a), slicer.util.arrayFromVTKMatrix(b))
    # the network is least sure at the edges of what it found, and sure far from it
    from scipy import ndimage
    label = plain_case.cli_label > 0
    edge = ndimage.binary_dilation(label, iterations=1) & ~ndimage.binary_erosion(label, iterations=1)
    far = ~ndimage.binary_dilation(label, iterations=10) & (values > 0)  # inside the analysis window
    assert values[edge].mean() > 20 > values[far].mean()
    view = SliceView(app, "Red", "Axial", (32, 32))
    try:
        composite = view.logic.GetSliceCompositeNode()
        params.showUncertainty = True
        segmented["logic"].showUncertainty(params)
        assert composite.GetForegroundVolumeID() == volume.GetID() and composite.GetForegroundOpacity() > 0
        params.showUncertainty = False
        segmented["logic"].showUncertainty(params)
        assert composite.GetForegroundVolumeID() is None
    finally:
        view.close()


def test_a_deleted_output_segmentation_or_table_is_replaced_by_a_new_one(segmented, plain_case):
    logic, ct, pet, params = segmented["logic"], segmented["ct"], segmented["pet"], segmented["params"]
    scene = segmented["app"].scene
    result = JobResult(label_path=plain_case.cli_label_path, report=plain_case.cli_report)
    doomed = logic.applyResult(result, ct, pet, None, "new", params)
    scene.RemoveNode(doomed)  # the user deletes the output (and the table) while a run goes on
    scene.RemoveNode(params.resultsTable)
    assert logic.outputPolicy(doomed, ct) == CREATE
    written = logic.applyResult(result, ct, pet, doomed, "new", params)
    assert written.GetScene() is scene and written is not doomed and params.resultsTable.GetScene() is scene
    np.testing.assert_array_equal(logic.segmentLabels(written, ct), plain_case.cli_label)


def test_the_uncertainty_map_of_a_run_is_never_offered_as_the_ct(segmented):
    params = segmented["params"]
    assert params.uncertaintyVolume is not None and params.uncertaintyVolume.GetScene() is not None
    ct, pet = segmented["logic"].defaultInputs()
    assert ct is segmented["ct"] and pet is segmented["pet"]


@pytest.mark.parametrize("fault", ["one slice", "no image data"])
def test_a_volume_that_is_no_3d_image_is_an_input_error_before_a_run(segmented, fault):
    logic, ct, pet = segmented["logic"], segmented["ct"], segmented["pet"]
    scene = segmented["app"].scene
    bad = scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", f"CT {fault}")
    try:
        if fault == "one slice":
            slicer.util.updateVolumeFromArray(bad, slicer.util.arrayFromVolume(ct)[:1].copy())
        problems = logic.inputProblems(bad, pet)
        assert [level for level, _ in problems] == ["error"]
        assert problems[0][1] == (f"CT 'CT {fault}' image has size [{ct.GetImageData().GetDimensions()[0]}, "
                                  f"{ct.GetImageData().GetDimensions()[1]}, 1]; a 3D volume is needed"
                                  if fault == "one slice" else f"CT 'CT {fault}' holds no image data")
        with pytest.raises(InputError):
            logic.startJob(bad, pet, device="cpu")
    finally:
        scene.RemoveNode(bad)


def test_a_label_map_picked_as_the_pet_is_refused_before_the_worker_starts(headless_slicer, plain_case, tmp_path):
    """A segmentation's label map (0, 1, 2) picked in the PET selector has SUV-sized values: it was segmented."""
    pet_image = sitk.ReadImage(str(plain_case.pet_path))
    values = sitk.GetArrayFromImage(pet_image)
    fake = sitk.GetImageFromArray(np.digitize(values, [np.percentile(values, 95), np.percentile(values, 99.5)]).astype(np.uint8))
    fake.CopyInformation(pet_image)
    sitk.WriteImage(fake, str(tmp_path / "labels.nrrd"))
    logic = scene_logic_class()(workerPython=[sys.executable])
    ct = headless_slicer.load_volume(plain_case.ct_path, "CT")
    as_pet = headless_slicer.load_volume(tmp_path / "labels.nrrd", "labels")
    problems = logic.inputProblems(ct, as_pet)
    assert problems[-1] == ("error", "PET 'labels' holds only the values 0, 1, 2: a mask or label map, not a PET; "
                                     "give the PET (in SUV, or DICOM in Bq/mL)"), problems
    with pytest.raises(InputError, match="a mask or label map"):
        logic.segment(ct, as_pet, device="cpu")
    assert [level for level, _ in logic.inputProblems(ct, headless_slicer.load_volume(plain_case.pet_path, "PET"))
            if level == "error"] == []
