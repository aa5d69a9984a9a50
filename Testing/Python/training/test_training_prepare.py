"""Training data preparation: case discovery, checks, the split, the cache and its reports."""

from __future__ import annotations

import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from conftest import tiny_ct_pet
from HNTumorSegLib.pipeline.crop import WINDOW_ZYX
from HNTumorSegLib.imaging.geometry import Geometry
from HNTumorSegLib.imaging.image_io import read_image
from HNTumorSegLib.phantom import make_phantom, write_case
from HNTumorSegLib.pipeline.preprocess import PREPROCESSING_VERSION, preprocess
from HNTumorSegTraining import prepare as prepare_module
from HNTumorSegTraining.cache import open_case
from HNTumorSegLib.cases.hecktor import Case, find_cases, parse_case_id
from HNTumorSegTraining.checks import check_case
from HNTumorSegTraining.containment import lost_voxels
from HNTumorSegTraining.prepare import prepare
from HNTumorSegTraining.split import (DEFAULT_VAL_FRACTION, PAPER_TABLE1_TOTALS, PAPER_TABLE1_VAL_COUNTS,
                                      proportional_counts, split_cases)

# ----------------------------------------------------------------------------------------------
# Helpers: tiny cases on disk
# ----------------------------------------------------------------------------------------------


def _tiny_label(ct: sitk.Image, value: int = 1) -> sitk.Image:
    arr = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    arr[20:24, 40:50, 40:50] = value
    label = sitk.GetImageFromArray(arr)
    label.CopyInformation(ct)
    return label


def _write_tiny(root: Path, case_id: str, *, label_value: int = 1, label_grid: str = "ct",
                pet_shift: float = 0.0, pet_scale: float = 1.0, garbage: str | None = None,
                with_pet: bool = True) -> dict[str, Path]:
    """A tiny case in the folder layout; options break it in one way each."""
    ct, pet = tiny_ct_pet(pet_scale)
    if pet_shift:
        pet.SetOrigin([v + pet_shift for v in pet.GetOrigin()])
    label = _tiny_label(ct, label_value)
    if label_grid == "other":
        label = sitk.Resample(label, [50, 50, 40], sitk.Transform(), sitk.sitkNearestNeighbor,
                              ct.GetOrigin(), (4.0, 4.0, 3.0), ct.GetDirection(), 0, sitk.sitkUInt8)
    folder = root / case_id
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"ct": folder / f"{case_id}__CT.nii.gz", "pet": folder / f"{case_id}__PT.nii.gz",
             "label": folder / f"{case_id}.nii.gz"}
    for role, img in (("ct", ct), ("pet", pet), ("label", label)):
        if role == "pet" and not with_pet:
            continue
        sitk.WriteImage(img, str(paths[role]))
    if garbage:
        paths[garbage].write_bytes(b"this is not a NIfTI file")
    return paths


# ----------------------------------------------------------------------------------------------
# checks.py
# ----------------------------------------------------------------------------------------------


def _case(paths: dict[str, Path], case_id: str) -> Case:
    return Case(case_id, parse_case_id(case_id), paths["ct"], paths["pet"], paths["label"])


@pytest.mark.parametrize("kwargs, expected", [
    ({}, None),
    ({"label_value": 3}, "label values 3 outside {0, 1, 2}"),
    ({"label_grid": "other"}, "label is not on the CT grid (size [50, 50, 40] vs CT [100, 100, 40]"),
    ({"pet_shift": 5000.0}, "PET does not overlap the CT"),
    ({"garbage": "ct"}, "cannot read the CT image"),
])
def test_check_case_reports_each_problem(tmp_path, kwargs, expected):
    problems = check_case(_case(_write_tiny(tmp_path, "HGJ-001", **kwargs), "HGJ-001"))
    if expected is None:
        assert problems == []
    else:
        assert len(problems) == 1 and expected in problems[0], problems


def test_check_case_lists_all_problems_of_a_case(tmp_path):
    paths = _write_tiny(tmp_path, "HGJ-001", label_value=3, garbage="pet")
    problems = check_case(_case(paths, "HGJ-001"))
    assert len(problems) == 2
    assert "cannot read the PET image" in problems[0] and "label values 3" in problems[1]
    paths["ct"].unlink()
    assert any("CT file not found" in p for p in check_case(_case(paths, "HGJ-001")))


# ----------------------------------------------------------------------------------------------
# split.py
# ----------------------------------------------------------------------------------------------


def _synthetic_ids(totals: dict[str, int], sep: str = "-") -> dict[str, list[str]]:
    return {c: [f"{c}{sep}{i:03d}" for i in range(1, n + 1)] for c, n in totals.items()}


def test_split_reproduces_paper_table1():
    ids = _synthetic_ids(PAPER_TABLE1_TOTALS)
    for spec in ("paper", PAPER_TABLE1_VAL_COUNTS):
        split = split_cases(ids, val_counts=spec, seed=0)
        assert split["val_counts"] == PAPER_TABLE1_VAL_COUNTS
        assert (len(split["train"]), len(split["val"])) == (600, 80)
        for centre, n in PAPER_TABLE1_TOTALS.items():
            val = [i for i in split["val"] if parse_case_id(i) == centre]
            assert len(val) == PAPER_TABLE1_VAL_COUNTS[centre]
            assert split["centres"][centre] == {"total": n, "train": n - len(val), "val": len(val)}
        assert set(split["train"]).isdisjoint(split["val"])
        assert sorted(split["train"] + split["val"]) == sorted(sum(ids.values(), []))
    # The paper's counts are not proportional: no proportional rule gives CHUP 8 and CHUS 12 of 72.
    assert proportional_counts(PAPER_TABLE1_TOTALS, 80 / 680) != PAPER_TABLE1_VAL_COUNTS


@pytest.mark.parametrize("fraction", [0.05, DEFAULT_VAL_FRACTION, 0.2, 0.5])
def test_proportional_rule_totals_and_minimums(fraction):
    sizes = {**PAPER_TABLE1_TOTALS, "TINY": 2, "ONE": 1}
    counts = split_cases(_synthetic_ids(sizes), val_fraction=fraction)["val_counts"]
    n = sum(sizes.values())
    n_small = sum(1 for v in sizes.values() if v >= 2)
    assert sum(counts.values()) == max(int(np.floor(fraction * n + 0.5)), n_small)
    for c, k in counts.items():
        assert k == 0 if sizes[c] == 1 else 1 <= k <= sizes[c] - 1
    if fraction >= 0.2:  # no clipping: every count is the quota rounded down or up
        for c, k in counts.items():
            if sizes[c] >= 10:
                assert np.floor(fraction * sizes[c]) <= k <= np.ceil(fraction * sizes[c])


def test_default_rule_uses_the_paper_fraction():
    split = split_cases(_synthetic_ids(PAPER_TABLE1_TOTALS))
    assert len(split["val"]) == 80 and "proportional" in split["rule"]


def test_split_is_seeded_and_independent_of_input_order():
    ids = _synthetic_ids(PAPER_TABLE1_TOTALS, sep="_")
    a = split_cases(ids, val_fraction=0.2, seed=7)
    rng = random.Random(1)
    shuffled = {}
    for c in rng.sample(sorted(ids), len(ids)):
        shuffled[c] = rng.sample(ids[c], len(ids[c]))
    assert split_cases(shuffled, val_fraction=0.2, seed=7) == a
    assert split_cases(ids, val_fraction=0.2, seed=8)["val"] != a["val"]
    assert split_cases(ids, val_fraction=0.2, seed=8)["val_counts"] == a["val_counts"]
    # Dropping a centre does not change which ids the others give to validation.
    fewer = {c: v for c, v in ids.items() if c != "MDA"}
    b = split_cases(fewer, val_counts={c: a["val_counts"][c] for c in fewer}, seed=7)
    assert b["val"] == [i for i in a["val"] if not i.startswith("MDA")]


@pytest.mark.parametrize("kwargs, message", [
    ({"val_counts": {"CHUM": 57, "MDA": 1}}, "CHUM has only 56 cases"),
    ({"val_counts": {"CHUM": 1, "MDA": 1, "XYZ": 1}}, "centres with no cases: XYZ"),
    ({"val_counts": {"CHUM": 1}}, "no count for centres MDA"),
    ({"val_counts": {"CHUM": -1, "MDA": 1}}, "non-negative integer"),
    ({"val_counts": "nonsense"}, "unknown val_counts preset"),
    ({"val_counts": "paper"}, "centres with no cases"),
    ({"val_counts": {"CHUM": 1, "MDA": 1}, "val_fraction": 0.1}, "not both"),
    ({"val_fraction": 1.0}, r"val_fraction must be in \[0, 1\)"),
])
def test_split_errors(kwargs, message):
    ids = {"CHUM": [f"CHUM-{i:03d}" for i in range(1, 57)], "MDA": ["MDA-001", "MDA-002"]}
    with pytest.raises(ValueError, match=message):
        split_cases(ids, **kwargs)


def test_split_rejects_duplicate_ids():
    with pytest.raises(ValueError, match="duplicate"):
        split_cases({"CHUM": ["CHUM-001", "CHUM-001"]})


# ----------------------------------------------------------------------------------------------
# containment.py on a hand-made geometry
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("flip", [False, True])
@pytest.mark.parametrize("start_x, kept_columns", [(2, 5), (-3, 2), (6, 2)])
def test_lost_voxels_on_hand_made_grids(flip, start_x, kept_columns):
    """Native 10^3 label at 1 mm; lattice 1 x 1 x 3 mm over its x = 0..7 only; window 5 lattice
    columns wide from ``start_x``: native columns with centres in the window AND the lattice are kept
    (start 6 reaches past the lattice: x = 8, 9 are in the window box but are padding)."""
    arr = np.ones((10, 10, 10), np.uint8)
    arr[:, :, 0] = 2   # the x = 0 column is GTVn (the first one in physical x when not flipped)
    label = sitk.GetImageFromArray(arr)
    if flip:  # same voxels stored RAS-style: physical x runs from 9 down to 0
        label.SetDirection((-1.0, 0, 0, 0, -1.0, 0, 0, 0, 1.0))
        label.SetOrigin((9.0, 9.0, 0.0))
    lattice = Geometry((8, 10, 4), (1.0, 1.0, 3.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    window = lattice.subgrid((start_x, 0, 0), (5, 10, 4))
    out = lost_voxels(label, {"window": window.to_dict(), "resampled": lattice.to_dict()})
    kept_x = [x for x in range(10) if start_x - 0.5 <= x < start_x + 4.5 and x < 7.5]
    assert len(kept_x) == kept_columns
    gtvn_x = 9 if flip else 0
    assert out["GTVn"] == {"voxels": 100, "lost_voxels": 0 if gtvn_x in kept_x else 100,
                           "lost_ml": pytest.approx(0.0 if gtvn_x in kept_x else 0.1)}
    assert out["GTVp"]["voxels"] == 900
    assert out["GTVp"]["lost_voxels"] == 900 - 100 * sum(1 for x in kept_x if x != gtvn_x)


# ----------------------------------------------------------------------------------------------
# prepare.py on phantoms
# ----------------------------------------------------------------------------------------------

#: Extra label voxels written into CHUM-002 at in-plane corners of its 500 mm CT field of view,
#: at least 120 mm beyond any 256 mm window around the head: all of them must be reported lost.
EXTRA_GTVN = (slice(50, 52), slice(0, 3), slice(0, 4))      # 2 * 3 * 4 = 24 voxels
EXTRA_GTVP = (slice(40, 41), slice(-2, None), slice(-3, None))  # 1 * 2 * 3 = 6 voxels


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
    root = tmp_path_factory.mktemp("data")
    native = {}
    for seed, cid, matrix in ((1, "CHUM-001", 512), (2, "CHUM-002", 512), (3, "MDA-001", 256)):
        case = make_phantom(seed, "head", case_id=cid, ct_matrix=matrix)
        assert max(abs(v) for v in case.info["patient"]["head_offset_mm"]) < 100
        if cid == "CHUM-002":
            arr = sitk.GetArrayFromImage(case.label)
            assert not arr[EXTRA_GTVN].any() and not arr[EXTRA_GTVP].any()
            arr[EXTRA_GTVN] = 2
            arr[EXTRA_GTVP] = 1
            label = sitk.GetImageFromArray(arr)
            label.CopyInformation(case.label)
            case.label = label
        native[cid] = sitk.GetArrayFromImage(case.label)
        write_case(case, root)
    _write_tiny(root, "HGJ-001", label_value=3)
    _write_tiny(root, "HGJ-002", label_grid="other")
    _write_tiny(root, "HGJ-003", pet_shift=5000.0)
    _write_tiny(root, "HGJ-004", garbage="ct")
    _write_tiny(root, "HGJ-005", pet_scale=5000.0)   # passes the checks, preprocess refuses Bq/mL
    _write_tiny(root, "HGJ-006", with_pet=False)
    cache_dir = tmp_path_factory.mktemp("cache")
    report = prepare(root, cache_dir, workers=1, progress=False)
    return root, cache_dir, report, native


def test_prepare_accepts_good_cases_and_lists_every_rejection(prepared):
    root, cache_dir, report, _ = prepared
    assert report.accepted == ["CHUM-001", "CHUM-002", "MDA-001"]
    assert report.processed == report.accepted and report.skipped == []
    stages = {r.case_id: (r.stage, " ".join(r.reasons)) for r in report.rejected}
    assert set(stages) == {f"HGJ-00{i}" for i in range(1, 7)}
    assert stages["HGJ-001"][0] == "check" and "label values 3" in stages["HGJ-001"][1]
    assert stages["HGJ-002"][0] == "check" and "not on the CT grid" in stages["HGJ-002"][1]
    assert stages["HGJ-003"][0] == "check" and "does not overlap" in stages["HGJ-003"][1]
    assert stages["HGJ-004"][0] == "check" and "cannot read the CT image" in stages["HGJ-004"][1]
    assert stages["HGJ-005"][0] == "preprocess" and "Bq/mL" in stages["HGJ-005"][1]
    assert stages["HGJ-006"][0] == "discovery" and "no PET" in stages["HGJ-006"][1]
    on_disk = json.loads((cache_dir / "rejected.json").read_text())
    assert {r["case_id"]: r["stage"] for r in on_disk["rejected"]} == {k: v[0] for k, v in stages.items()}
    hgj5 = cache_dir / "cases" / "HGJ-005"
    assert not hgj5.exists() or not any(hgj5.iterdir())
    assert report.counts == {"accepted": 3, "processed": 3, "skipped": 0, "rejected": 6, "train": 2, "val": 1}


def test_cache_files_are_memory_mappable_float16_and_match_preprocess(prepared):
    root, cache_dir, _, _ = prepared
    for cid in ("CHUM-001", "CHUM-002", "MDA-001"):
        cached = open_case(cache_dir, cid)
        assert isinstance(cached.image, np.memmap) and isinstance(cached.label, np.memmap)
        assert cached.image.shape == (2, *WINDOW_ZYX) and cached.image.dtype == np.float16
        assert cached.label.shape == WINDOW_ZYX and cached.label.dtype == np.uint8
        assert cached.provenance["version"] == PREPROCESSING_VERSION and cached.provenance["case_id"] == cid
    folder = root / "MDA-001"
    ref = preprocess(read_image(folder / "MDA-001__CT.nii.gz", "CT"),
                     read_image(folder / "MDA-001__PT.nii.gz", "PET"),
                     read_image(folder / "MDA-001.nii.gz", "label"))
    cached = open_case(cache_dir, "MDA-001")
    assert np.abs(cached.image.astype(np.float32) - ref.image).max() < 1e-3
    assert np.array_equal(cached.label, ref.label)
    assert cached.provenance["crop"] == ref.provenance["crop"]


def test_containment_report_counts_voxels_outside_the_window(prepared):
    _, cache_dir, report, native = prepared
    n_gtvn, n_gtvp = 2 * 3 * 4, 1 * 2 * 3
    per_case = report.per_case_containment
    for cid in ("CHUM-001", "MDA-001"):
        assert per_case[cid]["GTVp"]["lost_voxels"] == 0 and per_case[cid]["GTVn"]["lost_voxels"] == 0
    c2 = per_case["CHUM-002"]
    assert c2["GTVn"]["lost_voxels"] == n_gtvn and c2["GTVp"]["lost_voxels"] == n_gtvp
    assert c2["GTVn"]["voxels"] == int((native["CHUM-002"] == 2).sum())
    voxel_ml = (500 / 512) ** 2 * 3.0 / 1000
    assert c2["GTVn"]["lost_ml"] == pytest.approx(n_gtvn * voxel_ml)
    s = report.containment
    assert (s["cases"], s["all_GTVp_inside"], s["all_GTVn_inside"], s["all_inside"]) == (3, 2, 2, 2)
    assert not s["satisfied"]
    assert [c["case_id"] for c in s["cases_losing_voxels"]] == ["CHUM-002"]
    assert s["cases_losing_voxels"][0]["GTVn_lost_voxels"] == n_gtvn
    on_disk = json.loads((cache_dir / "prepare_report.json").read_text())
    assert on_disk["containment"]["cases_losing_voxels"] == json.loads(json.dumps(s["cases_losing_voxels"]))
    # The cached label lost exactly those voxels: all the others made it into the window.
    cached = open_case(cache_dir, "CHUM-002")
    assert cached.label.max() == 2


def test_split_json_covers_the_accepted_cases(prepared):
    _, cache_dir, report, _ = prepared
    split = json.loads((cache_dir / "split.json").read_text())
    assert sorted(split["train"] + split["val"]) == report.accepted
    assert split["val_counts"] == {"CHUM": 1, "MDA": 0} and split["seed"] == 0


def test_resume_skips_finished_cases(prepared, tmp_path, monkeypatch):
    root, cache_dir, _, _ = prepared
    cache_copy = tmp_path / "cache"
    shutil.copytree(cache_dir, cache_copy)
    files = sorted((cache_copy / "cases").rglob("*.*"))
    mtimes = {p: p.stat().st_mtime_ns for p in files}
    calls = []
    real = prepare_module.preprocess

    def counting(*args, **kwargs):
        calls.append(Path(kwargs["ct_name"]).parent.name)
        return real(*args, **kwargs)

    monkeypatch.setattr(prepare_module, "preprocess", counting)
    report = prepare(root, cache_copy, progress=False)
    assert report.skipped == ["CHUM-001", "CHUM-002", "MDA-001"] and report.processed == []
    assert calls == ["HGJ-005"]   # only the case that failed in preprocessing is tried again
    assert {p: p.stat().st_mtime_ns for p in files} == mtimes
    assert report.containment == prepared[2].containment

    prov_path = cache_copy / "cases" / "MDA-001" / "provenance.json"
    prov = json.loads(prov_path.read_text())
    prov_path.write_text(json.dumps({**prov, "version": "0"}))
    calls.clear()
    report = prepare(root, cache_copy, progress=False)
    assert report.processed == ["MDA-001"] and calls == ["HGJ-005", "MDA-001"]
    assert json.loads(prov_path.read_text())["version"] == PREPROCESSING_VERSION


# ----------------------------------------------------------------------------------------------
# prepare.py: process pool and argument errors, on tiny cases
# ----------------------------------------------------------------------------------------------


def test_prepare_with_a_process_pool_matches_one_process(tmp_path):
    root = tmp_path / "data"
    _write_tiny(root, "USZ-001")
    _write_tiny(root, "USZ-002")
    _write_tiny(root, "USZ-003", label_value=3)
    serial = prepare(root, tmp_path / "c1", workers=1, progress=True)
    pooled = prepare(root, tmp_path / "c2", workers=2, progress=False)
    assert serial.accepted == pooled.accepted == ["USZ-001", "USZ-002"]
    assert [r.case_id for r in pooled.rejected] == ["USZ-003"]
    for cid in pooled.accepted:
        a, b = open_case(tmp_path / "c1", cid), open_case(tmp_path / "c2", cid)
        assert np.array_equal(a.image, b.image) and np.array_equal(a.label, b.label)
    assert serial.split == pooled.split


def test_prepare_checks_split_arguments_before_preprocessing(tmp_path):
    root = tmp_path / "data"
    _write_tiny(root, "USZ-001")
    with pytest.raises(ValueError, match="centres with no cases"):
        prepare(root, tmp_path / "cache", val_counts="paper", progress=False)
    assert not (tmp_path / "cache" / "cases").exists()


def test_a_case_whose_files_changed_is_prepared_again_and_the_data_root_is_absolute(tmp_path, monkeypatch):
    """An edited label must not train as it was cached; a moved data root (same files) is not prepared again."""
    monkeypatch.chdir(tmp_path)
    root = Path("data")
    _write_tiny(root, "USZ-001")
    _write_tiny(root, "USZ-002")
    first = prepare(root, tmp_path / "cache", progress=False)
    assert first.processed == ["USZ-001", "USZ-002"]
    split = json.loads((tmp_path / "cache" / "split.json").read_text())
    assert Path(split["data_root"]).is_absolute() and Path(split["data_root"]) == (tmp_path / "data")
    label_path = root / "USZ-002" / "USZ-002.nii.gz"
    label = sitk.ReadImage(str(label_path))
    sitk.WriteImage(label * 0, str(label_path))  # the tumour taken out of the label
    again = prepare(root, tmp_path / "cache", progress=False)
    assert again.processed == ["USZ-002"] and again.skipped == ["USZ-001"]
    assert not open_case(tmp_path / "cache", "USZ-002").label.any()
    shutil.move(str(tmp_path / "data"), str(tmp_path / "moved"))  # mtimes kept
    moved = prepare(tmp_path / "moved", tmp_path / "cache", progress=False)
    assert moved.processed == [] and moved.skipped == ["USZ-001", "USZ-002"]


def test_a_split_that_fails_removes_the_previous_one(tmp_path):
    root = tmp_path / "data"
    for cid in ("USZ-001", "USZ-002", "USZ-003", "USZ-004"):
        _write_tiny(root, cid)
    prepare(root, tmp_path / "cache", progress=False)
    assert (tmp_path / "cache" / "split.json").is_file()
    _write_tiny(root, "USZ-004", label_value=3)  # rejected when prepared again: 3 cases left for 4 validation
    with pytest.raises(ValueError, match="after rejections"):
        prepare(root, tmp_path / "cache", val_counts={"USZ": 4}, progress=False)
    assert not (tmp_path / "cache" / "split.json").exists()


def test_image_files_in_sub_folders_are_reported_not_lost(tmp_path):
    root = tmp_path / "data"
    _write_tiny(root, "USZ-001")
    _write_tiny(root / "centre_c", "USZ-002")           # ROOT/CENTRE/CASE/: not searched
    old = root / "USZ-001" / "old"
    old.mkdir()
    shutil.copy(root / "USZ-001" / "USZ-001.nii.gz", old / "USZ-001.nii.gz")
    cases, problems = find_cases(root)
    assert [c.case_id for c in cases] == ["USZ-001"]
    reasons = " ".join(p.reason for p in problems)
    assert reasons.count("where no case is searched") == 4 and "centre_c" in reasons and "old" in reasons
