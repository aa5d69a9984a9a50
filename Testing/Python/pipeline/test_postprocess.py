"""Connected-component clean-up: components, rules, the model-file entry and the Segmenter path."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from HNTumorSegLib.errors import ModelFileError
from HNTumorSegLib.imaging.geometry import LATTICE_SPACING, voxel_volume_ml
from HNTumorSegLib.pipeline.inference import Segmenter
from HNTumorSegLib.pipeline.model_file import model_paths
from HNTumorSegLib.pipeline.postprocess import ComponentFilter, StructureRule, components, kept_components

#: (1, 1, 3) mm: 0.003 mL per voxel.
assert voxel_volume_ml(LATTICE_SPACING) == pytest.approx(0.003)
VOXEL_ML = voxel_volume_ml(LATTICE_SPACING)


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """GTVp: a 1000-voxel cube, a 27-voxel cube; GTVn: a 125-voxel cube, a lone voxel touching it diagonally,
    and an 8-voxel cube far away with low probability."""
    label = np.zeros((30, 40, 40), np.uint8)
    prob = np.zeros((3, *label.shape), np.float32)
    label[2:12, 2:12, 2:12] = 1
    prob[1][2:12, 2:12, 2:12] = 0.95
    label[20:23, 30:33, 30:33] = 1
    prob[1][20:23, 30:33, 30:33] = 0.9
    label[15:20, 15:20, 15:20] = 2
    prob[2][15:20, 15:20, 15:20] = 0.8
    label[20, 20, 20] = 2  # touches (19, 19, 19) at a corner: the same 26-connected component
    prob[2][20, 20, 20] = 0.99
    label[25:27, 2:4, 30:32] = 2
    prob[2][25:27, 2:4, 30:32] = 0.55
    prob[0] = 1.0 - prob[1] - prob[2]
    return label, prob


def test_components_are_26_connected_with_sizes_and_peaks():
    label, prob = _scene()
    comp = components(label == 2, prob[2])
    order = np.argsort(comp.sizes)
    assert comp.sizes[order].tolist() == [8, 126]
    assert comp.peaks[order].tolist() == pytest.approx([0.55, 0.99])
    assert set(np.unique(comp.ids)) == {0, 1, 2} and comp.ids[20, 20, 20] == comp.ids[15, 15, 15]
    assert components(np.zeros((3, 3, 3), bool)).sizes.size == 0


def test_rules_drop_small_low_confidence_and_non_largest_components():
    sizes, peaks = np.array([1000, 27, 8]), np.array([0.95, 0.9, 0.55])
    assert kept_components(sizes, peaks, StructureRule(), VOXEL_ML).tolist() == [True, True, True]
    assert kept_components(sizes, peaks, StructureRule(min_volume_ml=0.05), VOXEL_ML).tolist() == [True, True, False]
    assert kept_components(sizes, peaks, StructureRule(min_peak_probability=0.92), VOXEL_ML).tolist() == \
        [True, False, False]
    assert kept_components(sizes, peaks, StructureRule(largest_only=True), VOXEL_ML).tolist() == [True, False, False]
    # largest_only picks the largest of those the thresholds keep, and keeps nothing when none pass
    assert kept_components(sizes, peaks, StructureRule(min_peak_probability=0.96, largest_only=True),
                           VOXEL_ML).tolist() == [False, False, False]
    # keep_strongest: a structure is never emptied; the highest peak stays (ties: the larger), and
    # nothing changes while the thresholds keep anything
    strongest = StructureRule(min_peak_probability=0.96, keep_strongest=True)
    assert kept_components(sizes, peaks, strongest, VOXEL_ML).tolist() == [True, False, False]
    assert kept_components(np.array([8, 27, 1000]), np.array([0.5, 0.7, 0.6]), strongest, VOXEL_ML).tolist() == \
        [False, True, False]
    assert kept_components(np.array([8, 27]), np.array([0.7, 0.7]), strongest, VOXEL_ML).tolist() == [False, True]
    assert kept_components(sizes, peaks, StructureRule(min_peak_probability=0.92, keep_strongest=True),
                           VOXEL_ML).tolist() == [True, False, False]
    assert kept_components(np.zeros(0, int), np.zeros(0), strongest, VOXEL_ML).tolist() == []


def test_filter_applies_per_structure_and_leaves_the_input_alone():
    label, prob = _scene()
    before = label.copy()
    filt = ComponentFilter({"GTVp": StructureRule(largest_only=True), "GTVn": StructureRule(min_peak_probability=0.6)})
    out = filt.apply(label, prob, LATTICE_SPACING)
    np.testing.assert_array_equal(label, before)
    assert (out == 1).sum() == 1000 and out[21, 31, 31] == 0
    assert (out == 2).sum() == 126 and out[25, 2, 30] == 0
    only_n = ComponentFilter({"GTVn": StructureRule(min_volume_ml=0.1)}).apply(label, None, LATTICE_SPACING)
    assert (only_n == 1).sum() == 1027 and (only_n == 2).sum() == 126  # 8 voxels = 0.024 mL < 0.1 mL
    with pytest.raises(ValueError, match="probabilities"):
        filt.apply(label, None, LATTICE_SPACING)


def test_model_json_entry_round_trips_and_bad_entries_name_the_file():
    filt = ComponentFilter({"GTVn": StructureRule(0.2, 0.7, False), "GTVp": StructureRule(0.0, 0.9, True, True)})
    meta = {"postprocess": {**filt.to_dict(), "chosen_on": {"cases": 3}}}
    assert ComponentFilter.from_meta(json.loads(json.dumps(meta))) == filt
    # an entry written before keep_strongest existed reads as without it
    old = {"postprocess": {"rules": {"GTVn": {"min_volume_ml": 0.2, "min_peak_probability": 0.7, "largest_only": False}}}}
    assert ComponentFilter.from_meta(old) == ComponentFilter({"GTVn": StructureRule(0.2, 0.7, False, False)})
    assert ComponentFilter.from_meta({}) is None
    with pytest.raises(ValueError, match=r"m\.json: invalid 'postprocess' entry: unknown structure 'GTVx'"):
        ComponentFilter.from_meta({"postprocess": {"rules": {"GTVx": {}}}}, "m.json")
    with pytest.raises(ValueError, match=r"m\.json: invalid 'postprocess'"):
        ComponentFilter.from_meta({"postprocess": {"rules": {"GTVn": {"min_volume_ml": "big"}}}}, "m.json")


def _model_with(small_model, tmp_path, entry) -> str:
    src = model_paths(small_model)
    shutil.copy(src.weights, tmp_path / "pp.safetensors")
    meta = json.loads(src.json.read_text())
    meta["postprocess"] = entry
    (tmp_path / "pp.json").write_text(json.dumps(meta))
    return str(tmp_path / "pp.json")


def test_segmenter_applies_the_model_files_clean_up(small_model, tmp_path):
    torch.manual_seed(0)
    x = torch.randn(2, 32, 96, 96).numpy()  # any size the network takes; smaller is faster
    raw_seg = Segmenter(small_model, device="cpu")
    assert raw_seg.postprocess is None
    prob = raw_seg.probabilities(x)
    raw = raw_seg.predict_window(x)
    np.testing.assert_array_equal(raw, prob.argmax(axis=0))
    # a rule that certainly removes something: keep only the largest component of each structure
    entry = {"rules": {"GTVp": {"largest_only": True}, "GTVn": {"largest_only": True}}}
    path = _model_with(small_model, tmp_path, entry)
    seg = Segmenter(path, device="cpu")
    got = seg.predict_window(x)
    expected = ComponentFilter.from_meta({"postprocess": entry}).apply(raw, prob, LATTICE_SPACING)
    np.testing.assert_array_equal(got, expected)
    for value in (1, 2):
        assert len(components(got == value).sizes) <= 1
    assert (got != raw).any() and not (got[got != raw]).any()  # only set to background
    np.testing.assert_array_equal(Segmenter(path, device="cpu", postprocess=False).predict_window(x), raw)


def test_a_broken_entry_is_a_model_file_error(small_model, tmp_path):
    path = _model_with(small_model, tmp_path, {"rules": {"GTVn": {"min_peak_probability": [1]}}})
    with pytest.raises(ModelFileError, match=r"pp\.json: invalid 'postprocess' entry"):
        Segmenter(path, device="cpu")


def test_segment_command_applies_the_clean_up_unless_told_not_to(small_model, tiny_files, tmp_path, capsys):
    from HNTumorSegLib.cli import main

    path = _model_with(small_model, tmp_path, {"rules": {"GTVp": {"largest_only": True},
                                                         "GTVn": {"largest_only": True}}})
    labels = {}
    for flag in ([], ["--no-postprocess"]):
        out = tmp_path / f"seg{len(flag)}.nii.gz"
        assert main(["segment", "--ct", str(tiny_files["ct"]), "--pet", str(tiny_files["pet"]), "--out", str(out),
                     "--model", path, "--device", "cpu", *flag]) == 0, capsys.readouterr().err
        report = json.loads(out.with_name(out.name.replace(".nii.gz", ".json")).read_text())
        assert report["postprocess_applied"] is (not flag)
        assert report["model"]["postprocess"]["rules"]["GTVn"]["largest_only"] is True
        labels[bool(flag)] = sitk.GetArrayFromImage(sitk.ReadImage(str(out)))
    cleaned, raw = labels[False], labels[True]
    # (components are counted on the window grid; restored to the CT grid they may fall apart)
    assert (cleaned != raw).any() and ((cleaned == raw) | (cleaned == 0)).all()  # it only ever removes
