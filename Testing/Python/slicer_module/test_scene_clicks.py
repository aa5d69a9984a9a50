"""One-click corrections in the scene (slicer-core): the library's clicks on real segments, undo, guard, table."""

from __future__ import annotations

import sys

import numpy as np
import pytest
import SimpleITK as sitk
import vtk

from headless_slicer import HeadlessSlicer, import_slicer_core, scene_logic_class

from HNTumorSegLib.errors import InputError
from HNTumorSegLib.imaging.components import lesion_ids
from HNTumorSegLib.phantom import make_phantom, write_case
from HNTumorSegLib.slicer_support.edit_guard import ASK, REPLACE
from HNTumorSegLib.slicer_support.segmentation_job import JobResult

slicer = import_slicer_core()


@pytest.fixture
def scene(tmp_path):
    """A phantom whose "result" is its truth with the largest node missed and a false positive drawn."""
    case = make_phantom(900_014, "head")
    paths = write_case(case, tmp_path)
    app = HeadlessSlicer()
    logic = scene_logic_class()(workerPython=[sys.executable])
    ct, pet = app.load_volume(paths["ct"], "CT"), app.load_volume(paths["pet"], "PET")
    truth = sitk.GetArrayFromImage(case.label)
    nodes, _ = lesion_ids(truth == 2)
    result = truth.copy()
    result[nodes == 1] = 0  # the largest node missed
    body = np.argwhere(sitk.GetArrayFromImage(case.ct) > 0)
    fp = tuple(body[len(body) // 3])
    result[fp[0], fp[1] - 2:fp[1] + 3, fp[2] - 2:fp[2] + 3] = 2  # a node drawn where there is none
    seg = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "result")
    seg.CreateDefaultDisplayNodes()
    logic.writeSegments(seg, result, ct)  # as a run leaves it: fingerprinted, unedited
    params = logic.getParameterNode()

    def ras_of(index_zyx):
        x, y, z = case.label.TransformIndexToPhysicalPoint(tuple(int(i) for i in index_zyx[::-1]))
        return [-x, -y, z]

    pet_array = sitk.GetArrayFromImage(case.pet)
    hottest_node = np.unravel_index(np.argmax(np.where(nodes == 1, sitk.GetArrayFromImage(
        sitk.Resample(case.pet, case.label, sitk.Transform(), sitk.sitkLinear)), -np.inf)), nodes.shape)
    yield {"app": app, "logic": logic, "ct": ct, "pet": pet, "seg": seg, "params": params, "truth": truth,
           "result": result, "missed": nodes == 1, "fp_ras": ras_of(fp), "add_ras": ras_of(hottest_node),
           "pet_array": pet_array, "paths": paths, "ras_of": ras_of}
    app.close()


def dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_clicks_correct_the_segments_update_the_table_and_undo(scene):
    logic, seg, ct, pet, params = (scene[k] for k in ("logic", "seg", "ct", "pet", "params"))
    assert logic.outputPolicy(seg, ct) == REPLACE and not logic.canUndo(seg)
    message = logic.editAt(seg, ct, pet, scene["add_ras"], "add", "GTVn", params=params)
    after = logic.segmentLabels(seg, ct)
    assert "added" in message and dice(after == 2, scene["truth"] == 2) > dice(scene["result"] == 2, scene["truth"] == 2)
    assert dice((after == 2) & scene["missed"], scene["missed"]) > 0.6
    assert logic.outputPolicy(seg, ct) == ASK  # the guard sees an edited result
    table = params.resultsTable
    names = [table.GetCellText(r, 0) for r in range(table.GetNumberOfRows())]
    assert "GTVn_1" in names and names.count("GTVp") == 1
    logic.editAt(seg, ct, pet, scene["fp_ras"], "remove", params=params)
    assert (logic.segmentLabels(seg, ct)[scene["result"] != scene["truth"]] == 0).sum() >= 25
    # undo twice: back to the run's result, which the guard recognises again
    assert logic.undoEdit(seg, ct, pet, params) and logic.undoEdit(seg, ct, pet, params)
    np.testing.assert_array_equal(logic.segmentLabels(seg, ct), scene["result"])
    assert logic.outputPolicy(seg, ct) == REPLACE and not logic.undoEdit(seg, ct)


def test_the_threshold_the_user_sets_bounds_a_redraw(scene):
    """The panel's threshold slider (clickThresholdPercent) reaches the click: with the click model unchecked
    (method "threshold", as the panel passes it), a lower threshold redraws the same node wider, a higher one
    tighter, and undo steps back through both. Checked (the default), the node is the click model's drawing."""
    logic, seg, ct, pet, params = (scene[k] for k in ("logic", "seg", "ct", "pet", "params"))
    assert "click model" in logic.editAt(seg, ct, pet, scene["add_ras"], "add", "GTVn", params=params)
    sizes = {}
    for percent in (25, 60):
        logic.editAt(seg, ct, pet, scene["add_ras"], "redraw", params=params, fraction=percent / 100.0,
                     method="threshold")
        labels = logic.segmentLabels(seg, ct)
        sizes[percent] = int(np.count_nonzero((labels == 2) & (scene["result"] != 2)))  # the redrawn node
    assert sizes[25] > sizes[60] > 0
    assert logic.undoEdit(seg, ct, pet, params) and logic.undoEdit(seg, ct, pet, params)


def test_a_click_model_of_ones_own_draws_the_node_and_a_missing_one_changes_nothing(scene, tmp_path):
    """The panel's click model path (clickModelPath) reaches the click, as `edit --click-model` does; a path that
    holds no click model is one status line, and the segments stay."""
    from HNTumorSegLib.editing.click_model import DEFAULT_CLICK_MODEL

    logic, seg, ct, pet, params = (scene[k] for k in ("logic", "seg", "ct", "pet", "params"))
    own = tmp_path / "my_clicks.json"
    for suffix in (".json", ".safetensors"):
        own.with_suffix(suffix).write_bytes(DEFAULT_CLICK_MODEL.with_suffix(suffix).read_bytes())
    before = logic.segmentLabels(seg, ct)
    with pytest.raises(InputError, match="missing.json"):
        logic.editAt(seg, ct, pet, scene["add_ras"], "add", "GTVn", params=params,
                     clickModel=str(tmp_path / "missing.json"))
    np.testing.assert_array_equal(logic.segmentLabels(seg, ct), before)
    assert not logic.canUndo(seg)
    message = logic.editAt(seg, ct, pet, scene["add_ras"], "add", "GTVn", params=params, clickModel=str(own))
    assert "drawn by the click model my_clicks.json" in message


def test_relabel_and_a_click_on_nothing(scene):
    logic, seg, ct, pet = (scene[k] for k in ("logic", "seg", "ct", "pet"))
    logic.editAt(seg, ct, pet, scene["fp_ras"], "relabel")
    assert np.count_nonzero(logic.segmentLabels(seg, ct) == 1) == np.count_nonzero(scene["result"] == 1) + 25
    before = logic.segmentLabels(seg, ct)
    corner = vtk.vtkMatrix4x4()
    ct.GetIJKToRASMatrix(corner)  # voxel (0, 0, 0): air in a corner of the field of view
    with pytest.raises(InputError, match="no lesion at"):
        logic.editAt(seg, ct, pet, [corner.GetElement(i, 3) for i in range(3)], "remove")
    with pytest.raises(InputError, match="outside the label map's grid"):
        logic.editAt(seg, ct, pet, [4000.0, 0.0, 0.0], "remove")
    np.testing.assert_array_equal(logic.segmentLabels(seg, ct), before)
    assert logic.undoEdit(seg, ct) and not logic.canUndo(seg)  # the failed click left no undo step


def test_nodes_one_by_one_are_segments_that_clicks_and_the_label_map_understand(scene):
    logic, seg, ct, pet = (scene[k] for k in ("logic", "seg", "ct", "pet"))
    result = scene["result"]
    nodes, count = lesion_ids(result == 2)
    logic.writeSegments(seg, result, ct, split=True)
    segmentation = seg.GetSegmentation()
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert sorted(names) == sorted(["GTVp"] + [f"GTVn_{i}" for i in range(1, count + 1)]) and count >= 2
    assert logic.isSplit(seg)
    assert logic.outputPolicy(seg, ct) == REPLACE  # the fingerprint written is that of the segments read back
    np.testing.assert_array_equal(logic.segmentLabels(seg, ct), result)  # the same label map either way
    for i in range(1, count + 1):
        mask = slicer.util.arrayFromSegmentBinaryLabelmap(seg, segmentation.GetSegmentIdBySegmentName(f"GTVn_{i}"), ct)
        np.testing.assert_array_equal(mask > 0, nodes == i)
    # after a click the nodes are still one segment each, renumbered by size
    logic.editAt(seg, ct, pet, scene["add_ras"], "add", "GTVn")
    edited = logic.segmentLabels(seg, ct)
    assert np.count_nonzero(edited == 2) > np.count_nonzero(result == 2)
    nodes_now, count_now = lesion_ids(edited == 2)
    names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
    assert sorted(names) == sorted(["GTVp"] + [f"GTVn_{i}" for i in range(1, count_now + 1)])
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(seg, segmentation.GetSegmentIdBySegmentName("GTVn_1"), ct)
    np.testing.assert_array_equal(mask > 0, nodes_now == 1)
    # written whole again: one GTVn segment, no stale node segments
    logic.writeSegments(seg, result, ct)
    assert sorted(segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())) == \
        ["GTVn", "GTVp"]
    assert logic.outputPolicy(seg, ct) == REPLACE
    # a segment of the user's own beside ours is part of the fingerprint: written over, then edited
    mine = segmentation.AddEmptySegment("mine", "mine", (0.2, 0.8, 0.2))
    drawn = np.zeros(result.shape, np.uint8)
    drawn[1:3, 1:4, 1:5] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(drawn, seg, mine, ct)
    logic.writeSegments(seg, result, ct)
    assert logic.outputPolicy(seg, ct) == REPLACE
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg, mine, ct), drawn)
    drawn[5, 5, 5] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(drawn, seg, mine, ct)
    assert logic.outputPolicy(seg, ct) == ASK


def test_segments_read_from_memory_equal_slicers_export(scene):
    """segmentMasks reads a segment on the CT's grid from its labelmap in memory; Slicer's export (which
    resamples) must give the same voxels: after a write, after the Segment Editor's kind of edit, for a
    segment on another grid and for a segmentation in another frame (those two fall back to the export)."""
    logic, seg, ct, pet, app = (scene[k] for k in ("logic", "seg", "ct", "pet", "app"))

    def check(node, reference, fast_expected=True):
        segmentation = node.GetSegmentation()
        masks = logic.segmentMasks(node, reference)
        assert masks and any(mask.any() for mask in masks.values())
        for i in range(segmentation.GetNumberOfSegments()):
            segment_id = segmentation.GetNthSegmentID(i)
            exported = slicer.util.arrayFromSegmentBinaryLabelmap(node, segment_id, reference) != 0
            np.testing.assert_array_equal(masks[segmentation.GetNthSegment(i).GetName()], exported)
            fast = logic.segmentMaskOnCtGrid(node, segment_id, reference)
            assert (fast is not None) == fast_expected

    check(seg, ct)  # as the module wrote it (one import of the label's bounding box)
    gtvp = seg.GetSegmentation().GetSegmentIdBySegmentName("GTVp")
    painted = logic.segmentMasks(seg, ct)["GTVp"].astype(np.uint8)
    painted[0, 0, 0] = painted[-1, -1, -1] = 1  # the grid's far corners: the extent grows to the whole grid
    slicer.util.updateSegmentBinaryLabelmapFromArray(painted, seg, gtvp, ct)
    check(seg, ct)
    assert logic.segmentMasks(seg, ct)["GTVp"][-1, -1, -1]

    on_pet = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "on the PET's grid")
    on_pet.SetReferenceImageGeometryParameterFromVolumeNode(pet)
    blob = np.zeros(slicer.util.arrayFromVolume(pet).shape, np.uint8)
    centre = [n // 2 for n in blob.shape]
    blob[centre[0] - 3:centre[0] + 3, centre[1] - 4:centre[1] + 4, centre[2] - 4:centre[2] + 4] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(blob, on_pet, on_pet.GetSegmentation().AddEmptySegment("blob"), pet)
    check(on_pet, ct, fast_expected=False)

    moved = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode")
    shift = vtk.vtkMatrix4x4()
    shift.SetElement(0, 3, 12.0)
    moved.SetMatrixTransformToParent(shift)
    seg.SetAndObserveTransformNodeID(moved.GetID())
    check(seg, ct, fast_expected=False)


def test_undo_never_writes_a_step_of_another_run_ct_or_scene(scene):
    """A run into the segmentation empties its undo steps; a step made on another CT grid is refused (it would
    land shifted); closing the scene forgets every step (node IDs start again at 1 there)."""
    logic, seg, ct, pet, app = (scene[k] for k in ("logic", "seg", "ct", "pet", "app"))
    logic.editAt(seg, ct, pet, scene["fp_ras"], "remove")
    assert logic.canUndo(seg)
    cropped = app.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "CT cropped")
    cropped.CopyOrientation(ct)
    slicer.util.updateVolumeFromArray(cropped, slicer.util.arrayFromVolume(ct)[:, 10:, 10:].copy())
    before = logic.segmentMasks(seg, ct)
    with pytest.raises(InputError, match="was made on CT 'CT': select it as the CT to undo it"):
        logic.undoEdit(seg, cropped)
    after = logic.segmentMasks(seg, ct)
    assert sorted(before) == sorted(after) and all(np.array_equal(before[k], after[k]) for k in before)
    assert logic.canUndo(seg)  # kept: with the CT of the click selected again, it is undone
    with pytest.raises(InputError, match="lie on the grid of CT 'CT': select it as the CT to correct them"):
        logic.editAt(seg, cropped, pet, scene["add_ras"], "add", "GTVn")  # nor is a click made on another grid
    assert logic.undoEdit(seg, ct) and not logic.canUndo(seg)
    np.testing.assert_array_equal(logic.segmentLabels(seg, ct), scene["result"])

    logic.editAt(seg, ct, pet, scene["add_ras"], "add", "GTVn")
    assert logic.canUndo(seg)
    first_id = seg.GetID()
    app.scene.Clear(0)  # File > Close Scene
    ct2 = app.load_volume(scene["paths"]["ct"], "CT")
    seg2 = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "new patient")
    assert seg2.GetID() == first_id and ct2 is not None
    assert not logic.canUndo(seg2)


def test_a_run_into_a_segmentation_empties_its_undo_steps(scene, tmp_path):
    logic, seg, ct, pet = (scene[k] for k in ("logic", "seg", "ct", "pet"))
    logic.editAt(seg, ct, pet, scene["fp_ras"], "remove")
    label_path = tmp_path / "label.nrrd"
    image = sitk.GetImageFromArray(scene["result"])
    image.CopyInformation(sitk.ReadImage(str(scene["paths"]["ct"])))
    sitk.WriteImage(image, str(label_path))
    report = {"structures": {}, "lesions": [], "model": {"file": "m"}, "device": "cpu",
              "provenance": None}
    params = logic.getParameterNode()
    logic.showAnalysisWindow = lambda provenance, params: None  # the report above has no analysis window
    logic.applyResult(JobResult(label_path, report), ct, pet, seg, "overwrite", params)
    assert not logic.canUndo(seg)
    WARNINGS_ATTRIBUTE = sys.modules[type(logic).__module__].WARNINGS_ATTRIBUTE
    assert seg.GetAttribute(WARNINGS_ATTRIBUTE) == ""
    report["provenance"] = {"warnings": ["no brain uptake found"]}  # what the panel's status line shows
    logic.applyResult(JobResult(label_path, report), ct, pet, seg, "overwrite", params)
    assert seg.GetAttribute(WARNINGS_ATTRIBUTE) == "no brain uptake found"


def test_a_segmentation_of_closed_surfaces_takes_clicks_undo_and_a_rerun(scene):
    logic, seg, ct, pet = (scene[k] for k in ("logic", "seg", "ct", "pet"))
    result = scene["result"]
    logic.writeSegments(seg, result, ct, split=True)
    seg.CreateClosedSurfaceRepresentation()
    surface = slicer.vtkSegmentationConverter.GetClosedSurfaceRepresentationName()
    seg.GetSegmentation().SetSourceRepresentationName(surface)  # as after importing an RTSTRUCT
    logic.editAt(seg, ct, pet, scene["fp_ras"], "remove")
    binary = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    assert seg.GetSegmentation().GetSourceRepresentationName() == binary
    edited = logic.segmentLabels(seg, ct)
    assert np.count_nonzero(edited == 2) < np.count_nonzero(result == 2)
    assert logic.undoEdit(seg, ct)
    assert 2 * np.count_nonzero((logic.segmentLabels(seg, ct) > 0) & (result > 0)) / \
        (np.count_nonzero(logic.segmentLabels(seg, ct) > 0) + np.count_nonzero(result > 0)) > 0.95  # via surfaces
    seg.CreateClosedSurfaceRepresentation()
    seg.GetSegmentation().SetSourceRepresentationName(surface)
    logic.writeSegments(seg, result, ct)  # an overwrite, nodes as one segment
    np.testing.assert_array_equal(logic.segmentLabels(seg, ct), result)
    assert sorted(names_of(seg)) == ["GTVn", "GTVp"]


def names_of(seg):
    segmentation = seg.GetSegmentation()
    return [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]


def test_nodes_stay_one_by_one_when_clicks_leave_none_and_undo_restores_the_run(scene):
    logic, seg, ct, pet = (scene[k] for k in ("logic", "seg", "ct", "pet"))
    result = scene["result"]
    nodes, count = lesion_ids(result == 2)
    logic.writeSegments(seg, result, ct, split=True)
    ras_of = scene["ras_of"]
    for i in range(1, count + 1):  # remove every node
        logic.editAt(seg, ct, pet, ras_of(np.argwhere(nodes == i)[0]), "remove")
    assert names_of(seg) == ["GTVp"]
    logic.editAt(seg, ct, pet, scene["add_ras"], "add", "GTVn")
    assert sorted(names_of(seg)) == ["GTVn_1", "GTVp"]  # still node by node
    while logic.undoEdit(seg, ct):
        pass
    assert sorted(names_of(seg)) == sorted(["GTVp"] + [f"GTVn_{i}" for i in range(1, count + 1)])
    np.testing.assert_array_equal(logic.segmentLabels(seg, ct), result)
    assert logic.outputPolicy(seg, ct) == REPLACE


def test_a_users_own_segment_named_like_a_node_is_left_alone(scene):
    logic, seg, ct = (scene[k] for k in ("logic", "seg", "ct"))
    result = scene["result"]
    segmentation = seg.GetSegmentation()
    mine = segmentation.AddEmptySegment("", "GTVn_1", (0.1, 0.9, 0.1))  # drawn by the user, not by a run
    drawn = np.zeros(result.shape, np.uint8)
    drawn[2:4, 2:6, 2:6] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(drawn, seg, mine, ct)
    assert not logic.isSplit(seg)
    np.testing.assert_array_equal(logic.segmentLabels(seg, ct), result)  # not counted as GTVn
    logic.writeSegments(seg, result, ct)  # an overwrite
    assert sorted(names_of(seg)) == ["GTVn", "GTVn_1", "GTVp"]
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg, mine, ct), drawn)


def test_a_users_own_segment_named_gtvp_is_neither_read_nor_rewritten(scene):
    """A user's box named "GTVp" beside the run's: the run's GTVp is what is counted and clicked on; a click on
    a node leaves both as they are; the edit guard sees the user's addition."""
    logic, seg, ct, pet = (scene[k] for k in ("logic", "seg", "ct", "pet"))
    result = scene["result"]
    box = np.zeros(result.shape, np.uint8)
    box[2:5, 2:8, 2:8] = 1
    mine = seg.GetSegmentation().AddEmptySegment("", "GTVp", (0.9, 0.9, 0.1))
    slicer.util.updateSegmentBinaryLabelmapFromArray(box, seg, mine, ct)
    np.testing.assert_array_equal(logic.segmentLabels(seg, ct), result)
    assert logic.outputPolicy(seg, ct) == ASK  # the user added a segment: an edit
    logic.editAt(seg, ct, pet, scene["fp_ras"], "remove")
    after = logic.segmentLabels(seg, ct)
    assert np.array_equal(after == 1, result == 1) and np.count_nonzero(after == 2) < np.count_nonzero(result == 2)
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg, mine, ct), box)
    assert logic.undoEdit(seg, ct, pet)
    np.testing.assert_array_equal(logic.segmentLabels(seg, ct), result)


def test_a_users_own_segmentation_chosen_as_output_keeps_its_segments(scene):
    """A segmentation the module never wrote (no fingerprint, no tagged segment) holds none of the module's
    segments, whatever their names: writing into it adds the module's and removes or replaces nothing."""
    logic, ct = scene["logic"], scene["ct"]
    result = scene["result"]
    own = scene["app"].scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "contoured by hand")
    drawn = np.zeros(result.shape, np.uint8)
    drawn[2:4, 2:6, 2:6] = 1
    ids = {}
    for name in ("GTVp", "GTVn_1"):
        ids[name] = own.GetSegmentation().AddEmptySegment("", name, (0.1, 0.9, 0.1))
        slicer.util.updateSegmentBinaryLabelmapFromArray(drawn, own, ids[name], ct)
    assert logic.ownedSegments(own) == {}
    logic.writeSegments(own, result, ct)
    assert sorted(names_of(own)) == ["GTVn", "GTVn_1", "GTVp", "GTVp"]
    for segment_id in ids.values():
        np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(own, segment_id, ct), drawn)
    np.testing.assert_array_equal(logic.segmentLabels(own, ct), result)


def test_a_segmentation_under_another_transform_never_moves_the_users_segments(scene):
    """The output segmentation moved under a transform (the CT is not) and holding a segment of the user's:
    a click is refused in one line and changes nothing; a run writes a new segmentation and leaves it alone.
    Holding only the module's segments, it is put back under the CT's frame and rewritten."""
    logic, seg, ct, pet, app = (scene[k] for k in ("logic", "seg", "ct", "pet", "app"))
    result = scene["result"]
    mine = seg.GetSegmentation().AddEmptySegment("", "Parotid", (0.1, 0.9, 0.1))
    drawn = np.zeros(result.shape, np.uint8)
    drawn[2:4, 2:6, 2:6] = 1
    slicer.util.updateSegmentBinaryLabelmapFromArray(drawn, seg, mine, ct)
    shift = app.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 40.0)
    shift.SetMatrixTransformToParent(matrix)
    seg.SetAndObserveTransformNodeID(shift.GetID())
    where_seen = slicer.util.arrayFromSegmentBinaryLabelmap(seg, mine, ct)  # the user's segment, in world space
    with pytest.raises(InputError, match="lies under the transform 'shift'.*would move the other segments"):
        logic.editAt(seg, ct, pet, scene["fp_ras"], "remove")
    assert seg.GetTransformNodeID() == shift.GetID() and not logic.canUndo(seg)
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg, mine, ct), where_seen)

    label_path = scene["paths"]["ct"].parent / "label.nrrd"
    image = sitk.GetImageFromArray(result)
    image.CopyInformation(sitk.ReadImage(str(scene["paths"]["ct"])))
    sitk.WriteImage(image, str(label_path))
    report = {"structures": {}, "lesions": [], "model": {"file": "m"}, "device": "cpu", "provenance": None}
    params = logic.getParameterNode()
    logic.showAnalysisWindow = lambda provenance, params: None  # the report above has no analysis window
    written = logic.applyResult(JobResult(label_path, report), ct, pet, seg, "overwrite", params)
    assert written is not seg and seg.GetTransformNodeID() == shift.GetID()
    np.testing.assert_array_equal(slicer.util.arrayFromSegmentBinaryLabelmap(seg, mine, ct), where_seen)
    np.testing.assert_array_equal(logic.segmentLabels(written, ct), result)

    seg.GetSegmentation().RemoveSegment(mine)  # only the module's segments left: written in the CT's frame
    logic.editAt(seg, ct, pet, scene["add_ras"], "add", "GTVn")
    assert not seg.GetTransformNodeID()


def test_a_lesion_row_is_found_again_after_the_table_is_saved_and_loaded(scene, tmp_path):
    """The centroid a double-click centres the views on is read from the table (saved with the scene), not
    from the last run in memory: another scene's table gives its own lesion."""
    logic, seg, ct, pet, params = (scene[k] for k in ("logic", "seg", "ct", "pet", "params"))
    structures = logic.updateResultsTable(seg, ct, pet, params)
    assert structures["GTVn"]["voxels"] > 0
    table = params.resultsTable
    row = next(r for r in range(table.GetNumberOfRows()) if table.GetCellText(r, 0) == "GTVn_1")
    lesion = logic.lesionAtRow(params, row)
    storage = scene["app"].scene.AddNewNodeByClass("vtkMRMLTableStorageNode")
    storage.SetFileName(str(tmp_path / "results.tsv"))
    assert storage.WriteData(table)  # as the scene is saved
    logic.editAt(seg, ct, pet, scene["add_ras"], "add", "GTVn")  # the table and the lesions change
    loaded = scene["app"].scene.AddNewNodeByClass("vtkMRMLTableNode", "loaded")
    assert storage.ReadData(loaded)
    params.resultsTable = loaded
    assert logic.lesionAtRow(params, row) == lesion
    assert logic.lesionAtRow(params, 0) is None  # GTVp's row
