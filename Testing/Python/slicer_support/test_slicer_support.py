"""The Slicer module's decisions that need no Slicer: segment codes, default inputs, SUV check,
results table, edit guard, dependency list, export preconditions and device wording."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import SimpleITK as sitk

from HNTumorSegLib import LABELS
from HNTumorSegLib.slicer_support.default_inputs import VolumeCandidate, choose_default_inputs, classify
from HNTumorSegLib.slicer_support.device_info import device_choices, device_summary
from HNTumorSegLib.slicer_support.edit_guard import ASK, CREATE, REPLACE, output_policy, segmentation_fingerprint
from HNTumorSegLib.slicer_support.export_checks import (DICOM_SEG_PLUGIN, RTSTRUCT_PLUGIN, ExportState, dicom_seg_availability,
                                                        rtstruct_availability)
from HNTumorSegLib.evaluation.metrics import structure_statistics
from HNTumorSegLib.slicer_support.module_requirements import find_missing, torch_version_ok, version_tuple
from HNTumorSegLib.evaluation.overlay import COLOURS
from HNTumorSegLib.slicer_support.results_table import centroid_of_row, COLUMNS, NONE_FOUND, summary_line, table_rows
from HNTumorSegLib.dicom.segment_terminology import GTVN, GTVP, SEGMENTS, segment_by_name
from HNTumorSegLib.slicer_support.suv_check import ERROR, OK, WARNING, check_suv


# ------------------------------------------------------------------ terminology
def test_segments_match_the_label_map():
    assert {s.label: s.name for s in SEGMENTS} == LABELS


def test_terminology_strings_carry_the_dicom_codes():
    assert GTVP.terminology_entry() == (
        "Segmentation category and type - DICOM master list"
        "~SCT^49755003^Morphologically Altered Structure~SCT^86049000^Neoplasm, Primary~^^"
        "~Anatomic codes - DICOM master list~SCT^774007^Head and Neck~^^")
    assert GTVN.terminology_entry() == (
        "Segmentation category and type - DICOM master list"
        "~SCT^49755003^Morphologically Altered Structure~SCT^14799000^Neoplasm, Secondary~^^"
        "~Anatomic codes - DICOM master list~SCT^59441001^Lymph node~^^")
    for s in SEGMENTS:  # seven fields, three parts per coded field
        fields = s.terminology_entry().split("~")
        assert len(fields) == 7
        assert all(len(f.split("^")) == 3 for i, f in enumerate(fields) if i not in (0, 4))


def test_segment_colours_are_fixed_and_match_the_overlay_png():
    for s in SEGMENTS:
        assert "#%02x%02x%02x" % s.color_255 == COLOURS[s.label]
    assert GTVP.color != GTVN.color
    assert segment_by_name("GTVn") is GTVN
    with pytest.raises(KeyError):
        segment_by_name("GTV")


# ------------------------------------------------------------------ default inputs
@pytest.mark.parametrize("name,modality,minimum,expected", [
    ("CHUM-001__CT", None, None, "CT"),
    ("CHUM-001__PT", None, None, "PT"),
    ("PET AC CTAC 3D", None, None, "PT"),    # PET words win over CT words
    ("WB CTAC Body 3.0", None, None, "CT"),
    ("FDG whole body", None, None, "PT"),
    ("3: Unnamed Series", "CT", None, "CT"),  # DICOM modality wins over the name
    ("PET recon", "CT", None, "CT"),
    ("CT-looking name", "MR", None, None),     # DICOM says neither
    ("Series 4", None, -1024.0, "CT"),         # air in HU
    ("Series 5", None, 0.0, None),
    ("Spectrum", None, None, None),            # "ct" inside a word is no evidence
])
def test_volume_classification(name, modality, minimum, expected):
    assert classify(VolumeCandidate("k", name, modality, minimum=minimum))[0] == expected


def test_default_pair_prefers_dicom_evidence_and_one_study():
    volumes = [
        VolumeCandidate("ct_a", "CT head", "CT", "study-A"),
        VolumeCandidate("pet_b", "PET", "PT", "study-B"),
        VolumeCandidate("ct_b", "CT", "CT", "study-B"),
        VolumeCandidate("pet_a", "PET", "PT", "study-A"),
        VolumeCandidate("seg", "Segmentation", "SEG", "study-A"),
    ]
    ct, pet = choose_default_inputs(volumes)
    assert (ct, pet) in {("ct_a", "pet_a"), ("ct_b", "pet_b")}
    assert ct.split("_")[1] == pet.split("_")[1]  # same study
    # Without study information the latest strongest candidates win.
    flat = [VolumeCandidate("c1", "CT 1"), VolumeCandidate("p1", "PT 1"), VolumeCandidate("c2", "ct", "CT")]
    assert choose_default_inputs(flat) == ("c2", "p1")
    assert choose_default_inputs([VolumeCandidate("x", "MR T1")]) == (None, None)


def test_ct_with_a_pet_in_its_study_beats_a_lone_ct():
    volumes = [VolumeCandidate("pet", "PET", "PT", "s1"), VolumeCandidate("ct1", "CT", "CT", "s1"),
               VolumeCandidate("ct2", "CT later", "CT", "s2")]
    assert choose_default_inputs(volumes) == ("ct1", "pet")


def test_a_localizer_or_single_image_is_never_a_default_and_an_attenuation_corrected_pet_is_preferred():
    volumes = [VolumeCandidate("ct", "CT", "CT", "s1", slices=120), VolumeCandidate("ac", "PET AC", "PT", "s1"),
               VolumeCandidate("nac", "PET NAC", "PT", "s1", attenuation_corrected=False),
               VolumeCandidate("topogram", "Topogram", "CT", "s1", slices=1),
               VolumeCandidate("scout", "Scout", "CT", "s1", localizer=True)]
    assert choose_default_inputs(volumes) == ("ct", "ac")  # the NAC and the localizers were loaded last
    assert choose_default_inputs(volumes[:1] + volumes[2:]) == ("ct", "nac")  # the only PET: its check says why
    assert choose_default_inputs(volumes[3:]) == (None, None)


# ------------------------------------------------------------------ SUV plausibility
def _pet(max_value, low=0.0):
    rng = np.random.default_rng(0)
    pet = rng.uniform(0.2, 1.5, (20, 30, 30)).astype(np.float32)
    pet[5:8, 10:14, 10:14] = max_value
    pet[0, 0, 0] = low
    return pet


def test_suv_check_accepts_a_normal_pet():
    assert check_suv(_pet(12.0)) == check_suv(_pet(12.0), name="PET") and check_suv(_pet(12.0)).level == OK
    assert check_suv(_pet(12.0)).message == ""


@pytest.mark.parametrize("pet,level,needle", [
    (_pet(12.0) * 4000.0, ERROR, "Bq/mL"),
    (_pet(12.0) * 0.01, ERROR, "no PET value above SUV 0.5"),
    (_pet(2.0), WARNING, "brain in SUV reaches 5"),
    (_pet(400.0), WARNING, "unusually high"),
    (_pet(12.0, low=-3.0), WARNING, "down to -3.00"),
])
def test_suv_check_flags_pets_that_do_not_look_like_suv(pet, level, needle):
    result = check_suv(pet, name="PET series 4")
    assert result.level == level
    assert needle in result.message and result.message.startswith("PET series 4: ")
    assert "\n" not in result.message


def test_suv_check_refuses_nan():
    pet = _pet(10.0)
    pet[1, 1, 1] = np.nan
    assert check_suv(pet).level == ERROR and "NaN" in check_suv(pet).message


# ------------------------------------------------------------------ results table
def test_results_table_rows_from_structure_statistics():
    label = np.zeros((10, 20, 20), np.uint8)
    label[2:4, 5:10, 5:10] = 1  # 50 voxels of 2 x 2 x 3 mm = 0.6 mL
    pet = np.ones((10, 20, 20), np.float32)
    pet[2:4, 5:10, 5:10] = 4.0
    pet[3, 9, 9] = 9.0
    lab_img, pet_img = sitk.GetImageFromArray(label), sitk.GetImageFromArray(pet)
    for img in (lab_img, pet_img):
        img.SetSpacing((2.0, 2.0, 3.0))
    structures = structure_statistics(lab_img, pet_img)
    rows = table_rows(structures)
    assert len(COLUMNS) == 8 and all(len(row) == len(COLUMNS) for row in rows)
    assert rows[0][0] == "GTVp" and rows[0][1] == "0.60" and rows[0][2] == "9.00"
    assert float(rows[0][3]) == pytest.approx((49 * 4 + 9) / 50, abs=0.01)
    assert float(rows[0][4]) == pytest.approx(0.6 * (49 * 4 + 9) / 50, abs=0.05)
    assert rows[1] == ["GTVn", "0.00", NONE_FOUND, "", "", "", "", ""]
    assert summary_line(structures) == "GTVp 0.6 mL (SUVmax 9.0); GTVn none found"


def test_results_table_lists_each_lesion_under_its_segment():
    structures = {"GTVp": {"voxels": 10, "volume_ml": 1.5, "suv_max": 9.0, "suv_mean": 5.0, "tlg": 7.5},
                  "GTVn": {"voxels": 5, "volume_ml": 0.9, "suv_max": 4.0, "suv_mean": 3.0, "tlg": 2.7}}
    lesions = [
        {"id": "GTVp_1", "structure": "GTVp", "volume_ml": 1.5, "suv_max": 9.0, "suv_mean": 5.0, "tlg": 7.5,
         "side": "midline", "confidence_mean": 0.912, "review": False, "centroid_mm": [1.0, -2.04, 3.06]},
        {"id": "GTVn_1", "structure": "GTVn", "volume_ml": 0.6, "suv_max": 4.0, "suv_mean": 3.1, "tlg": 1.86,
         "side": "left", "confidence_mean": 0.55, "review": True, "centroid_mm": [-40.25, 10.0, -300.0]},
        {"id": "GTVn_2", "structure": "GTVn", "volume_ml": 0.3, "suv_max": 2.5, "suv_mean": 2.0, "tlg": 0.6,
         "side": "right", "confidence_mean": None, "review": None,  # an edited lesion: no network confidence
         "centroid_mm": [30.0, 12.5, -310.75]},
    ]
    rows = table_rows(structures, lesions)
    assert [row[0] for row in rows] == ["GTVp", "GTVp_1", "GTVn", "GTVn_1", "GTVn_2"]
    assert rows[1][5:] == ["midline", "0.91", "1.0, -2.0, 3.1"]
    assert rows[3][5:] == ["left", "0.55 (review)", "-40.2, 10.0, -300.0"]
    assert rows[4][5:] == ["right", "", "30.0, 12.5, -310.8"]
    assert rows[2][5:] == ["", "", ""]
    assert centroid_of_row(rows[3]) == (-40.2, 10.0, -300.0)
    assert centroid_of_row(rows[2]) is None and centroid_of_row(rows[3][:7]) is None  # a segment; an older table


# ------------------------------------------------------------------ edit guard
def test_fingerprint_changes_with_one_voxel_and_with_a_rename():
    a = np.zeros((4, 5, 6), np.uint8)
    a[1, 2, 3] = 1
    masks = {"GTVp": a, "GTVn": np.zeros_like(a)}
    base = segmentation_fingerprint(masks)
    assert base == segmentation_fingerprint({"GTVn": np.zeros_like(a), "GTVp": a.astype(bool)})
    edited = a.copy()
    edited[0, 0, 0] = 1
    assert segmentation_fingerprint({"GTVp": edited, "GTVn": np.zeros_like(a)}) != base
    assert segmentation_fingerprint({"GTVp (edited)": a, "GTVn": np.zeros_like(a)}) != base
    assert segmentation_fingerprint({"GTVp": a}) != base


def test_output_policy_never_replaces_an_edited_or_foreign_segmentation():
    assert output_policy(False, None, None) == CREATE
    assert output_policy(True, "abc", "abc") == REPLACE
    assert output_policy(True, "abc", "abd") == ASK
    assert output_policy(True, None, "abd") == ASK  # not written by the module
    assert output_policy(True, "", "") == ASK


# ------------------------------------------------------------------ dependencies
def test_missing_requirements_never_list_slicers_own_packages():
    nothing = find_missing(importable=lambda name: False, torch_version=lambda: None, self_test=True)
    assert nothing.torch
    assert nothing.bundled == ["numpy", "SimpleITK"]
    assert nothing.pip == ["safetensors>=0.4", "scipy>=1.9"]
    assert not any("numpy" in r or "SimpleITK" in r for r in nothing.pip)
    assert "PyTorch extension" in nothing.describe()

    old = find_missing(importable=lambda name: True, torch_version=lambda: "1.13.1+cu117")
    assert not old.torch and old.torch_version == "1.13.1+cu117" and not old.nothing
    assert find_missing(importable=lambda name: True, torch_version=lambda: "2.5.1+cu121").nothing
    assert version_tuple("2.10.0a0+git") == (2, 10, 0)
    assert torch_version_ok("2.2.0") and not torch_version_ok("2.1.2") and not torch_version_ok(None)


def test_this_environment_has_what_the_worker_needs():
    assert find_missing().nothing


def test_worker_imports_without_scipy_or_matplotlib():
    # Slicer may lack them; the worker must not need them.
    code = ("import sys; sys.modules['scipy'] = None; sys.modules['matplotlib'] = None\n"
            "import HNTumorSegLib.slicer_support.worker, HNTumorSegLib.slicer_support.segmentation_job, HNTumorSegLib.pipeline.inference, "
            "HNTumorSegLib.evaluation.metrics, HNTumorSegLib.slicer_support.scene_geometry")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, encoding="utf-8")
    assert proc.returncode == 0, proc.stderr


# ------------------------------------------------------------------ export preconditions
READY = ExportState(True, True, True, True, frozenset({RTSTRUCT_PLUGIN, DICOM_SEG_PLUGIN}))


@pytest.mark.parametrize("change,needle", [
    ({"plugins": frozenset()}, "extension"),
    ({"has_segmentation": False}, "Run Segment first"),
    ({"has_content": False}, "empty"),
    ({"ct_in_study": False}, "in no DICOM study"),
    ({"same_study": False}, "not in the CT's study"),
])
def test_export_buttons_say_why_they_are_disabled(change, needle):
    import dataclasses

    assert rtstruct_availability(READY)[0] and dicom_seg_availability(READY)[0]
    state = dataclasses.replace(READY, **change)
    for availability in (rtstruct_availability, dicom_seg_availability):
        enabled, tooltip = availability(state)
        assert not enabled and needle in tooltip
    if "plugins" in change:
        assert "SlicerRT" in rtstruct_availability(state)[1]
        assert "QuantitativeReporting" in dicom_seg_availability(state)[1]


def test_dicom_seg_needs_a_ct_from_dicom_and_rtstruct_does_not():
    import dataclasses

    state = dataclasses.replace(READY, ct_from_dicom=False)
    assert rtstruct_availability(state)[0]
    enabled, tooltip = dicom_seg_availability(state)
    assert not enabled and "load the CT from DICOM" in tooltip


# ------------------------------------------------------------------ devices
def test_device_wording_names_the_gpu_or_the_reason():
    gpu = {"torch": "2.5.1+cu121", "cuda_build": "12.1", "cuda_available": True, "cpu_threads": 16,
           "gpus": [{"index": 0, "name": "NVIDIA RTX A6000", "memory_gib": 47.5}]}
    assert device_summary(gpu) == "GPU: NVIDIA RTX A6000, 47.5 GiB (torch 2.5.1+cu121, CUDA 12.1)"
    choices = {c.value: c for c in device_choices(gpu)}
    assert choices["cuda"].enabled and choices["auto"].label == "Auto (NVIDIA RTX A6000)"

    cpu_build = {"torch": "2.5.1+cpu", "cuda_build": None, "cuda_available": False, "gpus": [], "cpu_threads": 8}
    assert "CPU-only build" in device_summary(cpu_build)
    choices = {c.value: c for c in device_choices(cpu_build)}
    assert not choices["cuda"].enabled and "CPU-only build" in choices["cuda"].tooltip
    assert choices["auto"].label == "Auto (CPU)"

    no_driver = {"torch": "2.5.1+cu121", "cuda_build": "12.1", "cuda_available": False, "gpus": [], "cpu_threads": 8}
    assert "driver" in device_summary(no_driver)
    assert [c.value for c in device_choices(None)] == ["auto", "cuda", "cpu"]
