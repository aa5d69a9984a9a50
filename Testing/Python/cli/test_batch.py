"""``hntumorseg batch``: case discovery (HECKTOR layout and DICOM studies), resume, failures, shards.

Most tests use a stand-in segmenter (PET above a threshold, on the CT grid) so that a batch of
several cases runs in seconds; one CLI test runs a small random-weight model end to end.
"""

from __future__ import annotations

import csv
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import SimpleITK as sitk
import torch

from HNTumorSegLib.cli.batch import (BATCH_STATE, DONE, ELSEWHERE, FAILED, LESION_COLUMNS, SKIPPED, BatchCase,
                                     BatchOptions, case_paths, find_batch_cases, parse_shard, process_case, run_batch,
                                     _earlier_row, _row, _safe, run_batch_parallel, run_case, shard)
from HNTumorSegLib.cli import main
from HNTumorSegLib.errors import InputError
from HNTumorSegLib.pipeline.inference import Segmentation, Segmenter
from HNTumorSegLib.pipeline.model_file import save_model
from HNTumorSegLib.network import NetworkConfig, build_network
from HNTumorSegLib.phantom import make_phantom, write_case
from HNTumorSegLib.phantom.dicom import DicomStudy, write_ct_series, write_dicom_case


class ThresholdSegmenter(Segmenter):
    """GTVp = PET above SUV 4 on the CT grid; counts its calls."""

    def __init__(self):  # no model file
        self.device, self.tta, self.calls = torch.device("cpu"), False, 0
        self.loaded = SimpleNamespace(meta={"trained_on": "stand-in"}, paths=SimpleNamespace(json="stand-in.json"))

    def segment(self, ct, pet, **kwargs):
        self.calls += 1
        on_ct = sitk.Resample(pet, ct, sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
        label = sitk.Cast(on_ct > 4.0, sitk.sitkUInt8)
        label.CopyInformation(ct)
        return Segmentation(label, {"stand_in": True}, {})


def _case(seed, case_id):
    return make_phantom(seed, "head", ct_matrix=64, n_nodes=1, case_id=case_id)


@pytest.fixture
def hecktor_root(tmp_path):
    root = tmp_path / "hecktor"
    for seed, case_id in ((1, "CHUM-001"), (2, "CHUM-002")):
        write_case(_case(seed, case_id), root)
    broken = root / "CHUP-003"
    broken.mkdir()
    shutil.copy(root / "CHUM-001" / "CHUM-001__CT.nii.gz", broken / "CHUP-003__CT.nii.gz")
    (broken / "CHUP-003__PT.nii.gz").write_bytes(b"not an image")
    return root


def _summary(path):
    with open(path, newline="") as fh:
        return {row["case"]: row for row in csv.DictReader(fh)}


def test_hecktor_batch_goes_on_after_a_failure_and_resumes(hecktor_root, tmp_path):
    cases = find_batch_cases(hecktor_root)
    assert [c.case_id for c in cases] == ["CHUM-001", "CHUM-002", "CHUP-003"]
    options = BatchOptions(tmp_path / "out")
    stand_in = ThresholdSegmenter()
    rows = run_batch(cases, options, summary=tmp_path / "out" / "summary.csv", make_segmenter=lambda: stand_in,
                     progress=False)
    assert [r["status"] for r in rows] == [DONE, DONE, FAILED]
    assert "CHUP-003__PT.nii.gz" in rows[2]["message"]
    summary = _summary(tmp_path / "out" / "summary.csv")
    assert set(summary) == {"CHUM-001", "CHUM-002", "CHUP-003"}
    assert float(summary["CHUM-001"]["GTVp_volume_ml"]) > 0 and float(summary["CHUM-001"]["GTVp_suv_max"]) > 4
    assert summary["CHUM-001"]["GTVn_volume_ml"] == "0.000" and summary["CHUM-001"]["GTVn_suv_max"] == ""
    # beside it, a row per lesion: the case's GTVp lesions add up to its summary volume
    with open(tmp_path / "out" / "lesions.csv", newline="") as fh:
        lesions = list(csv.DictReader(fh))
    assert list(lesions[0]) == list(LESION_COLUMNS)
    for case in ("CHUM-001", "CHUM-002"):
        own = [row for row in lesions if row["case"] == case]
        assert own and own[0]["lesion"] == "GTVp_1" and all(row["structure"] == "GTVp" for row in own)
        assert sum(float(row["volume_ml"]) for row in own) == pytest.approx(float(summary[case]["GTVp_volume_ml"]),
                                                                              abs=1e-3 * len(own))
        assert all(row["side"] in ("left", "right", "midline") for row in own)
        assert all(row["confidence_mean"] == "" for row in own)  # a stand-in without probabilities: no figure
    assert not any(row["case"] == "CHUP-003" for row in lesions)
    before = (tmp_path / "out" / "lesions.csv").read_text()
    report = tmp_path / "out" / "CHUM-001" / "CHUM-001_seg.json"
    stamp = report.stat().st_mtime_ns
    rows = run_batch(cases, options, summary=tmp_path / "out" / "summary.csv", make_segmenter=lambda: stand_in,
                     progress=False)
    assert [r["status"] for r in rows] == [SKIPPED, SKIPPED, FAILED]
    assert stand_in.calls == 2 and report.stat().st_mtime_ns == stamp
    assert _summary(tmp_path / "out" / "summary.csv")["CHUM-002"]["GTVp_volume_ml"] == \
        summary["CHUM-002"]["GTVp_volume_ml"]
    assert (tmp_path / "out" / "lesions.csv").read_text() == before  # resumed cases keep their lesions
    # the parallel runner skips them as well (no worker is started) and still writes its summary
    rows = run_batch_parallel(cases[:2], options, summary=tmp_path / "out" / "s2.csv", workers=2, progress=False)
    assert [r["status"] for r in rows] == [SKIPPED, SKIPPED]
    assert list(_summary(tmp_path / "out" / "s2.csv")) == ["CHUM-001", "CHUM-002"]


def test_dicom_tree_studies_become_cases_with_rtstruct(tmp_path):
    root = tmp_path / "archive"
    for seed, name in ((3, "PAT-A"), (4, "PAT-B")):
        write_dicom_case(_case(seed, name), root / name / "scan")
    mixed = _case(5, "PAT-C")
    study = write_dicom_case(mixed, root / "PAT-C")
    write_ct_series(mixed.ct, root / "PAT-C", DicomStudy("PAT-C"), number=7, description="CT lung", tag="ct2")
    cases = find_batch_cases(root)
    assert [c.case_id.split("_")[0] for c in cases] == ["PAT-A", "PAT-B", "PAT-C"]
    assert cases[2].problem and "2 CT and 1 PT series" in cases[2].problem and study.written["ct"] in cases[2].problem
    options = BatchOptions(tmp_path / "out", rtstruct=True)
    rows = run_batch(cases, options, summary=tmp_path / "out" / "summary.csv",
                     make_segmenter=ThresholdSegmenter, progress=False)
    assert [r["status"] for r in rows] == [DONE, DONE, FAILED]
    assert all(r["source"] == "DICOM" for r in rows)
    assert float(rows[0]["suv_factor"]) == pytest.approx(2.96075e-4, rel=1e-5)
    assert (tmp_path / "out" / cases[0].case_id / f"{cases[0].case_id}_RTSTRUCT.dcm").exists()
    # asking for a DICOM SEG later writes it from the earlier results, without segmenting again (it did, every case)
    import json

    stand_in = ThresholdSegmenter()
    rows = run_batch(cases, BatchOptions(tmp_path / "out", rtstruct=True, dicom_seg=True),
                     summary=tmp_path / "out" / "summary.csv", make_segmenter=lambda: stand_in, progress=False)
    assert [r["status"] for r in rows] == [DONE, DONE, FAILED] and stand_in.calls == 0
    assert "DICOM SEG written from the earlier result" in rows[0]["message"]
    seg = tmp_path / "out" / cases[0].case_id / f"{cases[0].case_id}_SEG.dcm"
    assert seg.exists()
    report = json.loads((tmp_path / "out" / cases[0].case_id / f"{cases[0].case_id}_seg.json").read_text())
    assert report["dicom_seg"]["file"] == str(seg) and "rtstruct" in report
    rows = run_batch(cases, BatchOptions(tmp_path / "out", rtstruct=True, dicom_seg=True),
                     summary=tmp_path / "out" / "summary.csv", make_segmenter=lambda: stand_in, progress=False)
    assert [r["status"] for r in rows] == [SKIPPED, SKIPPED, FAILED] and stand_in.calls == 0


def test_a_dicom_study_with_a_topogram_beside_its_ct_is_a_case_of_its_ct(tmp_path):
    """Most CT exports hold the topogram (a localizer series of modality CT): batch takes the study's CT, by the rule
    segment uses, and does not fail the study as one of two CT series."""
    import pydicom

    from HNTumorSegLib.dicom.series import read_series

    root = tmp_path / "archive"
    write_dicom_case(_case(3, "PAT-A"), root / "PAT-A")
    ct = read_series(root / "PAT-A", "CT")
    scout_uid = pydicom.uid.generate_uid()
    for k, path in enumerate(ct.files[:2]):
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.ImageType = scout_uid, ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(root / "PAT-A" / f"scout{k}.dcm")
    (case,) = find_batch_cases(root)
    assert case.problem is None and case.ct_series == ct.series.uid
    rows = run_batch([case], BatchOptions(tmp_path / "out"), summary=tmp_path / "out" / "summary.csv",
                     make_segmenter=ThresholdSegmenter, progress=False)
    assert [r["status"] for r in rows] == [DONE]


def test_shards_partition_the_cohort():
    cases = [BatchCase(f"C-{i:03d}", None, None) for i in range(11)]
    parts = [shard(cases, i, 3) for i in (1, 2, 3)]
    ids = [c.case_id for part in parts for c in part]
    assert sorted(ids) == [c.case_id for c in cases] and len(set(ids)) == 11
    assert parse_shard("2/3") == (2, 3)
    for bad in ("0/3", "4/3", "2", "a/b"):
        with pytest.raises(InputError, match="--shard"):
            parse_shard(bad)


def test_empty_input_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "nothing").mkdir()
    assert main(["batch", "--input", str(tmp_path / "nothing"), "--out", str(tmp_path / "out")]) == 2
    assert "no cases found" in capsys.readouterr().err



def test_an_output_folder_inside_the_input_is_refused_before_anything_is_written(hecktor_root, tmp_path, capsys):
    (tmp_path / "link").symlink_to(hecktor_root)
    for out in (hecktor_root, hecktor_root / "results", tmp_path / "link" / "results"):
        assert main(["batch", "--input", str(hecktor_root), "--out", str(out)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"hntumorseg: error: {out}: --out ") and "the next run would find its outputs among the cases" in err
        assert len(err.splitlines()) == 1
        assert ("through a link" in err) == (out.parent.name == "link")  # said only where a link is the reason
    assert not (hecktor_root / "results").exists() and not (hecktor_root / ".batch").exists()
    # beside the input is fine: a sibling whose name merely starts like it
    assert main(["batch", "--input", str(hecktor_root), "--out", str(tmp_path / "hecktor-out"), "--shard", "3/3",
                 "--device", "cpu"]) in (0, 1)


def test_a_case_whose_output_would_overwrite_its_input_fails_alone(hecktor_root, tmp_path):
    out = tmp_path / "out"
    (out / "A").mkdir(parents=True)
    ct = out / "A" / "A_seg.nii.gz"  # a CT that happens to sit where the case's label map goes
    shutil.copy(hecktor_root / "CHUM-001" / "CHUM-001__CT.nii.gz", ct)
    before = ct.read_bytes()
    row = run_case(BatchCase("A", ct, hecktor_root / "CHUM-001" / "CHUM-001__PT.nii.gz"), BatchOptions(out), None)
    assert row["status"] == FAILED and "its label map is the same file as its CT" in row["message"]
    assert ct.read_bytes() == before

def test_batch_command_runs_one_shard_with_a_model(hecktor_root, tmp_path, capsys):
    torch.manual_seed(0)
    small = NetworkConfig(channels=(4, 8, 16, 32, 64), psam_channels=(2, 4, 8))
    save_model(build_network(small), small, tmp_path / "small", metadata={"trained_on": "nothing (tests)"})
    out = tmp_path / "out"
    code = main(["batch", "--input", str(hecktor_root), "--out", str(out), "--shard", "2/2",
                 "--model", str(tmp_path / "small.json"), "--device", "cpu"])
    assert code == 0, capsys.readouterr().err  # shard 2/2 holds CHUM-002 only; the broken case is in 1/2
    summary = _summary(out / "summary_shard-2-of-2.csv")
    assert list(summary) == ["CHUM-002"] and summary["CHUM-002"]["status"] == DONE
    assert (out / "lesions_shard-2-of-2.csv").exists()
    label = sitk.ReadImage(str(out / "CHUM-002" / "CHUM-002_seg.nii.gz"))
    assert label.GetSize() == sitk.ReadImage(str(hecktor_root / "CHUM-002" / "CHUM-002__CT.nii.gz")).GetSize()


def test_department_folders_of_any_name_are_cases(tmp_path):
    root = tmp_path / "archive"
    case = _case(5, "CHUM-005")
    write_case(case, root)  # a HECKTOR-named case beside department folders
    for folder, ct_name, pet_name in (("12345678", "CT.nii.gz", "PET.nii.gz"),
                                      ("Smith John 2021-03", "scan__CT.nii.gz", "scan__PT.nii.gz"),
                                      ("acc.998", "ct.nii", "pt.nii")):
        (root / folder).mkdir(parents=True)
        sitk.WriteImage(case.ct, str(root / folder / ct_name))
        sitk.WriteImage(case.pet, str(root / folder / pet_name))
    sitk.WriteImage(case.label, str(root / "12345678" / "mask.nii.gz"))  # other files are not the case's business
    (root / "notes").mkdir()
    sitk.WriteImage(case.label, str(root / "notes" / "something.nii.gz"))
    cases = {c.case_id: c for c in find_batch_cases(root)}
    smith = next(i for i in cases if i.startswith("Smith_John_2021-03_"))  # a name that changed keeps a hash
    assert sorted(cases) == ["12345678", "CHUM-005", smith, "acc.998", "notes"]
    assert cases[smith].ct.parent.name == "Smith John 2021-03"
    assert cases["12345678"].ct.name == "CT.nii.gz" and cases["12345678"].pet.name == "PET.nii.gz"
    assert cases["acc.998"].pet.name == "pt.nii" and cases["12345678"].problem is None
    assert "no CT or PET file" in cases["notes"].problem
    # and they run: the stand-in segments the department folder like the HECKTOR one
    rows = run_batch([cases["12345678"], cases["CHUM-005"]], BatchOptions(tmp_path / "out"),
                     summary=tmp_path / "out" / "summary.csv", make_segmenter=ThresholdSegmenter, progress=False)
    assert [r["status"] for r in rows] == [DONE, DONE]
    assert (tmp_path / "out" / "12345678" / "12345678_seg.nii.gz").exists()


def test_two_workers_segment_what_one_does_and_a_failed_case_gives_status_1(hecktor_root, small_model, tmp_path,
                                                                           capsys):
    """``--workers 2`` runs the model in two processes: the same label maps and rows as one process, the broken
    case reported, and exit status 1 because a case failed."""
    outs = {}
    for workers in (1, 2):
        outs[workers] = tmp_path / f"out{workers}"
        code = main(["batch", "--input", str(hecktor_root), "--out", str(outs[workers]), "--workers", str(workers),
                     "--model", str(small_model), "--device", "cpu"])
        err = capsys.readouterr().err
        assert code == 1, err
        summary = _summary(outs[workers] / "summary.csv")
        assert [summary[c]["status"] for c in ("CHUM-001", "CHUM-002", "CHUP-003")] == [DONE, DONE, FAILED]
        assert "CHUP-003__PT.nii.gz" in summary["CHUP-003"]["message"]
    for case in ("CHUM-001", "CHUM-002"):
        one, two = (sitk.ReadImage(str(outs[w] / case / f"{case}_seg.nii.gz")) for w in (1, 2))
        assert sitk.GetArrayFromImage(one).any()  # the random-weight model labels voxels: a real comparison
        assert sitk.GetArrayFromImage(one).tobytes() == sitk.GetArrayFromImage(two).tobytes()
        assert one.GetOrigin() == two.GetOrigin() and one.GetDirection() == two.GetDirection()
        rows = [_summary(outs[w] / "summary.csv")[case] for w in (1, 2)]
        assert {k: v for k, v in rows[0].items() if "seconds" not in k} == \
            {k: v for k, v in rows[1].items() if "seconds" not in k}


def test_a_case_claimed_by_another_process_is_not_run_and_its_result_is_read_back(hecktor_root, tmp_path):
    """Two batch processes on one output folder: a case another process holds is "running elsewhere", not
    segmented here; once that process has finished it (done or failed), this process's summary shows its result."""
    import fcntl

    cases = find_batch_cases(hecktor_root)
    options = BatchOptions(tmp_path / "out")
    held = {}
    for case in (cases[0], cases[2]):  # the other process holds CHUM-001 and the broken CHUP-003
        path = case_paths(options, case)["claim"]
        path.parent.mkdir(parents=True, exist_ok=True)
        held[case.case_id] = open(path, "a")
        fcntl.flock(held[case.case_id].fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)

    class OtherProcessFinishes(ThresholdSegmenter):
        """While this process segments CHUM-002, the other one finishes its two cases and lets go."""

        def segment(self, ct, pet, **kwargs):
            for name, handle in held.items():
                handle.close()  # (closing drops the flock, as the end of a process does)
                other = next(c for c in cases if c.case_id == name)
                assert process_case(other, options, ThresholdSegmenter)["status"] in (DONE, FAILED)
            return super().segment(ct, pet, **kwargs)

    stand_in = OtherProcessFinishes()
    summary = tmp_path / "out" / "summary.csv"
    rows = run_batch(cases, options, summary=summary, make_segmenter=lambda: stand_in, progress=False)
    assert stand_in.calls == 1  # CHUM-002 only: the claimed cases were not segmented here
    assert [r["status"] for r in rows] == [SKIPPED, DONE, FAILED]  # read back from the other process's results
    assert "CHUP-003__PT.nii.gz" in rows[2]["message"]
    on_disk = _summary(summary)
    assert [on_disk[c]["status"] for c in ("CHUM-001", "CHUM-002", "CHUP-003")] == [SKIPPED, DONE, FAILED]
    with open(tmp_path / "out" / "lesions.csv", newline="") as fh:
        assert {row["case"] for row in csv.DictReader(fh)} == {"CHUM-001", "CHUM-002"}
    # a claim held for the whole run: the case stays "running elsewhere", the run says so
    with open(case_paths(options, cases[1])["claim"], "a") as other:
        fcntl.flock(other.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        case_paths(options, cases[1])["report"].unlink()
        again = run_batch(cases, options, summary=summary, make_segmenter=ThresholdSegmenter, progress=False)
    assert [r["status"] for r in again] == [SKIPPED, ELSEWHERE, FAILED]
    # the failure record is the other process's: a rerun that succeeds removes it
    assert case_paths(options, cases[2])["failed"].exists()


def test_the_same_batch_command_started_twice_loses_no_row(hecktor_root, small_model, tmp_path):
    """Two ``hntumorseg batch`` processes at once on one input and output folder: both finish, the last summary
    lists every case once with its final status, and the lesion table every lesion once."""
    import subprocess
    import sys

    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "HNTumorSegLib.cli", "batch", "--input", str(hecktor_root), "--out", str(out),
           "--model", str(small_model), "--device", "cpu"]
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                              env=env) for _ in (1, 2)]
    results = [p.communicate(timeout=300) for p in procs]
    for p, (stdout, stderr) in zip(procs, results):
        assert p.returncode in (0, 1), stderr  # 1: the broken case failed in (or was read back by) this process
        assert "Traceback" not in stderr
    summary = _summary(out / "summary.csv")
    assert list(summary) == ["CHUM-001", "CHUM-002", "CHUP-003"]
    assert {summary[c]["status"] for c in ("CHUM-001", "CHUM-002")} <= {DONE, SKIPPED}
    assert summary["CHUP-003"]["status"] == FAILED
    with open(out / "lesions.csv", newline="") as fh:
        lesions = [(row["case"], row["lesion"]) for row in csv.DictReader(fh)]
    assert len(lesions) == len(set(lesions)) and {case for case, _ in lesions} == {"CHUM-001", "CHUM-002"}
    for case in ("CHUM-001", "CHUM-002"):
        assert sitk.ReadImage(str(out / case / f"{case}_seg.nii.gz")).GetSize() == \
            sitk.ReadImage(str(hecktor_root / case / f"{case}__CT.nii.gz")).GetSize()


def test_folder_names_in_any_script_file_formats_and_letter_cases_are_distinct_cases(tmp_path):
    """Names that the old file-name rule mangled alike stay distinct cases; NRRD, MetaImage and upper-case
    suffixes are found; a folder named like a case id may hold plain CT / PT names; stray files in
    several folders, each a failure row, stop no other case."""
    from HNTumorSegLib.imaging.image_io import write_image

    root = tmp_path / "archive"
    case = _case(6, "CHUM-006")
    layouts = {"张三": ("CT.nii.gz", "PET.nii.gz"), "李四": ("CT.nii.gz", "PT.nii.gz"),
               "Müller 01": ("CT.nii.gz", "PET.nii.gz"), "Müller_01": ("CT.nrrd", "PET.nrrd"),
               "upper": ("CT.NII.GZ", "PET.NII.GZ"), "lower roles": ("p__ct.nii.gz", "p__pt.nii.gz"),
               "meta": ("ct.mha", "pet.MHA"), "CHUM-001": ("CT.nii.gz", "PT.nii.gz"),
               "CHUM-002": ("CT.nii.gz", "PT.nii.gz")}
    for folder, names in layouts.items():
        (root / folder).mkdir(parents=True)
        for image, name in zip((case.ct, case.pet), names):
            write_image(image, root / folder / name)  # (SimpleITK alone refuses to write CT.NII.GZ)
    for folder in ("CHUM-003", "CHUM-004"):  # only a stray file each: two failure rows named mask.nii.gz
        (root / folder).mkdir()
        sitk.WriteImage(case.label, str(root / folder / "mask.nii.gz"))
    cases = find_batch_cases(root)
    ids = [c.case_id for c in cases]
    assert len(set(ids)) == len(ids)
    found = {c.ct.parent.name: c for c in cases if c.problem is None}
    assert sorted(found) == sorted(layouts)
    assert found["张三"].case_id == "张三" and found["Müller_01"].case_id == "Müller_01"
    assert found["Müller 01"].case_id.startswith("Müller_01_") and found["CHUM-001"].case_id == "CHUM-001"
    assert found["Müller_01"].ct.name == "CT.nrrd" and found["meta"].pet.name == "pet.MHA"
    failed = [c for c in cases if c.problem]
    assert len(failed) == 2 and all("mask.nii.gz" in c.problem for c in failed)
    # the ids are the same on every run (resume finds the cases' earlier outputs)
    assert [c.case_id for c in find_batch_cases(root)] == ids
    # and the cases read: the stand-in segments the NRRD and the upper-case MetaImage ones
    rows = run_batch([found["Müller_01"], found["meta"]], BatchOptions(tmp_path / "out"),
                     summary=tmp_path / "out" / "summary.csv", make_segmenter=ThresholdSegmenter, progress=False)
    assert [r["status"] for r in rows] == [DONE, DONE], rows


def test_a_resumed_batch_redoes_a_case_whose_label_map_is_gone_or_whose_settings_changed(hecktor_root, tmp_path):
    cases = find_batch_cases(hecktor_root)[:2]
    options = BatchOptions(tmp_path / "out")
    stand_in = ThresholdSegmenter()
    summary = tmp_path / "out" / "summary.csv"
    run_batch(cases, options, summary=summary, make_segmenter=lambda: stand_in, progress=False)
    assert stand_in.calls == 2
    (tmp_path / "out" / "CHUM-001" / "CHUM-001_seg.nii.gz").unlink()  # deleted by hand: not "done earlier"
    rows = run_batch(cases, options, summary=summary, make_segmenter=lambda: stand_in, progress=False)
    assert [r["status"] for r in rows] == [DONE, SKIPPED] and stand_in.calls == 3
    for changed in (dict(tta=True), dict(postprocess=False), dict(model="other.json"), dict(split_lesions=True),
                    dict(pet_units="suv")):  # results of other settings are not taken for these
        other = BatchOptions(tmp_path / "out", **changed)
        assert all(row is None for row in (_earlier_row(c, other) for c in cases)), changed
    assert all(_earlier_row(c, options) is not None for c in cases)


def test_a_resumed_batch_knows_a_model_by_its_content_not_its_path(hecktor_root, small_model, tmp_path):
    """The same model under another path is the same (its cases are not run again); another model written over
    the same path is not (its cases are); a report of an earlier version that records the path only is compared on
    the path."""
    import json

    cases = find_batch_cases(hecktor_root)[:2]
    model_dir = tmp_path / "models"
    model_dir.mkdir()
    for suffix in (".json", ".safetensors"):
        shutil.copy(small_model.with_suffix(suffix), model_dir / f"copy{suffix}")
    options = BatchOptions(tmp_path / "out", model=str(small_model))
    run_batch(cases, options, summary=tmp_path / "out" / "summary.csv", make_segmenter=ThresholdSegmenter,
              progress=False)
    assert all(_earlier_row(c, options) is not None for c in cases)
    moved = BatchOptions(tmp_path / "out", model=str(model_dir / "copy.safetensors"))
    assert all(_earlier_row(c, moved) is not None for c in cases)  # same bytes, other path and spelling
    meta = json.loads((model_dir / "copy.json").read_text())
    meta["postprocess"] = None  # re-exported without its clean-up: other results
    (model_dir / "copy.json").write_text(json.dumps(meta))
    assert all(_earlier_row(c, moved) is None for c in cases)
    report_path = tmp_path / "out" / "CHUM-001" / "CHUM-001_seg.json"
    report = json.loads(report_path.read_text())
    del report["batch_settings"]["model_sha256"]  # as an earlier version wrote it
    report_path.write_text(json.dumps(report))
    assert _earlier_row(cases[0], options) is not None and _earlier_row(cases[0], moved) is None


def test_case_folders_never_take_the_names_of_the_batch_tables(tmp_path):
    root = tmp_path / "in"
    for name in ("lesions.csv", "summary.csv", "Summary_shard-1-of-2.csv", "plain"):
        write_case(_case(1, name), root)
    cases = find_batch_cases(root)
    ids = [c.case_id for c in cases]
    assert "plain" in ids and not any(i.lower() in ("lesions.csv", "summary.csv", "summary_shard-1-of-2.csv")
                                      for i in ids)
    rows = run_batch(cases, BatchOptions(tmp_path / "out"), summary=tmp_path / "out" / "summary.csv",
                     make_segmenter=ThresholdSegmenter, progress=False)
    assert [r["status"] for r in rows] == [DONE] * 4
    assert set(_summary(tmp_path / "out" / "summary.csv")) == set(ids)


def test_a_dicom_study_of_damaged_files_only_is_a_failed_row_not_left_out(tmp_path):
    root = tmp_path / "in"
    write_case(_case(1, "CHUM-001"), root)
    study = root / "study A"
    write_dicom_case(_case(2, "CHUM-002"), study)
    for path in study.iterdir():  # every file cut short: no series can be read
        path.write_bytes(path.read_bytes()[:310])
    cases = find_batch_cases(root)
    damaged = [c for c in cases if c.problem]
    assert len(cases) == 2 and len(damaged) == 1
    assert str(study) in damaged[0].problem and "no DICOM series could be read" in damaged[0].problem
    rows = run_batch(cases, BatchOptions(tmp_path / "out"), summary=tmp_path / "out" / "summary.csv",
                     make_segmenter=ThresholdSegmenter, progress=False)
    assert sorted(r["status"] for r in rows) == sorted([DONE, FAILED])


def test_workers_with_a_model_that_cannot_load_give_one_line(hecktor_root, small_model, tmp_path, capsys):
    broken = tmp_path / "broken"
    broken.mkdir()
    shutil.copy(small_model, broken / small_model.name)  # its weights left behind
    code = main(["batch", "--input", str(hecktor_root), "--out", str(tmp_path / "out"), "--workers", "2",
                 "--model", str(broken / small_model.name)])
    err = capsys.readouterr().err
    assert code == 2 and "weights file not found" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_ctrl_c_during_a_parallel_batch_stops_it_and_keeps_the_finished_cases(tmp_path, small_model):
    """Ctrl-C (SIGINT to the terminal's process group) during ``batch --workers 2``: the command ends with status
    130 and one line, the queued cases are never started, the summary lists the finished ones and no temporary
    file is left; the same command run again completes the batch."""
    import os
    import signal
    import subprocess
    import sys
    import time

    root = tmp_path / "hecktor"
    n_cases = 6
    for seed in range(n_cases):
        write_case(_case(seed, f"CHUM-{seed:03d}"), root)
    out = tmp_path / "out"
    cmd = [sys.executable, "-m", "HNTumorSegLib.cli", "batch", "--input", str(root), "--out", str(out),
           "--model", str(small_model), "--device", "cpu", "--workers", "2"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, encoding="utf-8",
                            env={**os.environ, "OMP_NUM_THREADS": "2"}, start_new_session=True)
    deadline = time.monotonic() + 240
    while not (out / "summary.csv").exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, "the batch ended before the first case was written: nothing to interrupt"
    os.killpg(proc.pid, signal.SIGINT)  # as the terminal does on Ctrl-C
    stdout, stderr = proc.communicate(timeout=120)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    finished = _summary(out / "summary.csv")
    assert 1 <= len(finished) < n_cases
    assert len(list(out.glob("*/*_seg.nii.gz"))) < n_cases  # the queued cases were cancelled, not run to the end
    for case, row in finished.items():
        assert row["status"] == DONE and (out / case / f"{case}_seg.nii.gz").is_file()
    hidden = [p for p in out.rglob(".*") if p.name != BATCH_STATE and p.parent.name != BATCH_STATE]
    assert not hidden, hidden  # temporary files are .NAME.RANDOM beside their target; OUT/.batch holds the claims
    again = subprocess.run(cmd[:-2], capture_output=True, text=True, encoding="utf-8", timeout=600)
    assert again.returncode == 0, again.stderr
    summary = _summary(out / "summary.csv")
    assert len(summary) == n_cases and all(summary[c]["status"] in (DONE, SKIPPED) for c in summary)
    assert all(summary[c]["status"] == SKIPPED for c in finished)


def test_a_done_case_with_a_warning_says_it_in_its_row():
    """A case segmented with a warning (no brain to anchor the window on; only one of CT and PET DICOM) is done,
    and its summary row's message says so; a failure's own message is kept."""
    case = BatchCase("C-001", None, None)
    report = {"input_warnings": ["only the CT is DICOM"], "provenance": {"warnings": ["no brain uptake found"]}}
    assert _row(case, DONE, 1.0, report)["message"] == "warning: only the CT is DICOM; no brain uptake found"
    assert _row(case, DONE, 1.0, {"provenance": {}})["message"] == ""
    assert _row(case, FAILED, 1.0, report, message="cannot read")["message"] == "cannot read"


def test_a_resumed_batch_redoes_a_case_whose_inputs_changed(hecktor_root, tmp_path):
    """Resume went by settings alone: a case whose PET was replaced (or whose DICOM PatientWeight was corrected)
    kept its earlier SUVs as "done earlier". The report now records a digest of the inputs' names, sizes and
    modification times, and a case whose inputs changed is run again; a report without it is taken as it is."""
    import json
    import os

    cases = find_batch_cases(hecktor_root)[:2]
    options = BatchOptions(tmp_path / "out")
    stand_in = ThresholdSegmenter()
    summary = tmp_path / "out" / "summary.csv"
    run_batch(cases, options, summary=summary, make_segmenter=lambda: stand_in, progress=False)
    report = json.loads((tmp_path / "out" / "CHUM-001" / "CHUM-001_seg.json").read_text())
    assert report["batch_inputs"]["files"] == 2 and len(report["batch_inputs"]["sha256"]) == 64
    pet = hecktor_root / "CHUM-001" / "CHUM-001__PT.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(pet)) * 1.2, str(pet))  # a corrected PET: the same name, other voxels
    rows = run_batch(cases, options, summary=summary, make_segmenter=lambda: stand_in, progress=False)
    assert [r["status"] for r in rows] == [DONE, SKIPPED] and stand_in.calls == 3
    assert rows[0]["input"] == str(hecktor_root / "CHUM-001")
    stat = pet.stat()
    os.utime(pet, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))  # touched: taken as changed (as rsync does)
    assert _earlier_row(cases[0], options) is None and _earlier_row(cases[1], options) is not None
    report_path = tmp_path / "out" / "CHUM-001" / "CHUM-001_seg.json"
    report = json.loads(report_path.read_text())
    del report["batch_inputs"]  # as an earlier version wrote it
    report_path.write_text(json.dumps(report))
    assert _earlier_row(cases[0], options) is not None


def test_a_dicom_case_whose_pet_changed_is_run_again_and_rows_name_the_folder(tmp_path):
    """A PET's PatientWeight corrected in every file: the SUVs change, so the case must not stay "done earlier".
    Rows name the study's folder (the case id comes from the DICOM patient and date, not the folder); a study
    without a PET says so, and not to choose a series."""
    import pydicom

    root = tmp_path / "archive"
    write_dicom_case(_case(3, "PAT-A"), root / "patient one" / "scan")
    lonely = _case(4, "PAT-B")
    write_ct_series(lonely.ct, root / "-ct only", DicomStudy("PAT-B"), number=2, description="CT", tag="ct")
    cases = find_batch_cases(root)
    options = BatchOptions(tmp_path / "out")
    stand_in = ThresholdSegmenter()
    rows = run_batch(cases, options, summary=tmp_path / "out" / "summary.csv", make_segmenter=lambda: stand_in,
                     progress=False)
    by_status = {r["status"]: r for r in rows}
    assert by_status[DONE]["input"] == str(root / "patient one" / "scan")
    failed = by_status[FAILED]
    assert failed["input"] == str(root / "-ct only") and failed["message"].startswith(str(root / "-ct only"))
    assert "the PET is not in this study" in failed["message"] and "--ct-series" not in failed["message"]
    pet_files = [f for f in (root / "patient one").rglob("*") if f.is_file() and pydicom.dcmread(f, stop_before_pixels=True).Modality == "PT"]
    for f in pet_files:
        ds = pydicom.dcmread(f)
        ds.PatientWeight = float(ds.PatientWeight) * 1.2
        ds.save_as(f)
    done = next(c for c in cases if not c.problem)
    assert _earlier_row(done, options) is None
    again = run_batch(cases, options, summary=tmp_path / "out" / "summary.csv", make_segmenter=lambda: stand_in,
                      progress=False)
    assert stand_in.calls == 2 and DONE in [r["status"] for r in again]
    assert float(next(r for r in again if r["status"] == DONE)["suv_factor"]) == pytest.approx(
        float(by_status[DONE]["suv_factor"]) * 1.2, rel=1e-4)


def test_a_folder_name_with_a_leading_dash_gives_a_case_id_without_one():
    """An output folder "-dash_01" is read as an option by shell tools (rm, ls, tar)."""

    assert not _safe("-dash Müller 01").startswith("-") and _safe("-x") != _safe("x")
    assert _safe("CHUM-001") == "CHUM-001"


def test_a_ct_and_a_pet_filed_as_two_studies_of_one_patient_and_day_are_one_case(tmp_path):
    """Some archives file a PET/CT session's PET and CT as two studies: they were two failure rows ("1 CT and 0 PT",
    "0 CT and 1 PT") though segment takes the pair."""
    from HNTumorSegLib.phantom.dicom import write_pet_series

    case = _case(6, "PAT-S")
    root = tmp_path / "archive"
    write_ct_series(case.ct, root / "PAT-S" / "CT", DicomStudy("PAT-S"))
    write_pet_series(case.pet, root / "PAT-S" / "PET", DicomStudy("PAT-S", study_uid="1.2.826.0.1.3680043.9.7777.1"))
    cases = find_batch_cases(root)
    assert len(cases) == 1 and cases[0].problem is None, cases
    rows = run_batch(cases, BatchOptions(tmp_path / "out"), summary=tmp_path / "out" / "summary.csv",
                     make_segmenter=ThresholdSegmenter, progress=False)
    assert [r["status"] for r in rows] == [DONE] and rows[0]["input"] == str(root / "PAT-S")


def test_empty_and_junk_folders_get_a_failed_row_saying_what_is_wrong(tmp_path, capsys):
    """A patient folder that gave no case (empty, notes only, images one level down) had no row: the summary did
    not account for every folder of the input."""

    root = tmp_path / "in"
    (root / "empty").mkdir(parents=True)
    (root / "junk").mkdir()
    (root / "junk" / "notes.txt").write_text("scan booked again")
    (root / "junk" / "scan.zip").write_bytes(b"PK\x03\x04 cut short")
    (root / "nested" / "old").mkdir(parents=True)
    (root / "nested" / "old" / "CT.nii.gz").write_bytes(b"not read")
    (root / "masks").mkdir()  # a folder reported before (an image that is no CT or PET)
    (root / "masks" / "mask.nii.gz").write_bytes(b"not read")
    (root / "ct only").mkdir()  # a case without its PET: its row names its folder, not the input root
    (root / "ct only" / "CT.nii.gz").write_bytes(b"not read")
    (root / ".hidden").mkdir()  # hidden folders are no patients
    out = tmp_path / "out"
    assert main(["batch", "--input", str(root), "--out", str(out), "--device", "cpu"]) == 1, capsys.readouterr().err
    summary = _summary(out / "summary.csv")
    assert sorted(summary) == sorted(_safe(name) for name in ("ct only", "empty", "junk", "masks", "nested"))
    assert {row["status"] for row in summary.values()} == {FAILED}
    assert all(summary[_safe(name)]["input"] == str(root / name)
               for name in ("empty", "junk", "nested", "masks", "ct only"))
    assert summary["empty"]["message"] == f"{root / 'empty'}: empty folder: no CT and PET images in it"
    assert summary["junk"]["message"].startswith(f"{root / 'junk'}: no image or DICOM file in it "
                                                 "(2 other file(s): notes.txt, scan.zip)")
    assert summary["nested"]["message"].startswith(f"{root / 'nested'}: no CT or PET directly in it; image files "
                                                   f"only in its sub-folders (e.g. {Path('old') / 'CT.nii.gz'})")
    assert "no CT or PET file" in summary["masks"]["message"]
    assert all(len(row["message"].splitlines()) == 1 for row in summary.values())


def test_an_empty_lock_file_beside_slices_named_without_a_suffix_is_ignored(tmp_path):
    """An empty ``LOCK`` (or ``LOCKFILE``, ``VERSION``) file, as PACS exports and DICOMDIR-style dumps leave, beside
    slices named without a suffix failed the study as "file is empty ... (an interrupted copy?)"; it cannot be a
    DICOM object. An empty file named like the slices (a slice whose copy failed) still fails the case, in one
    line naming it."""
    root = tmp_path / "in"
    study = root / "PAT-A"
    write_dicom_case(_case(3, "PAT-A"), study)  # slices named S2_0017, S3_0004: no suffix
    assert not any(path.suffix for path in study.iterdir())
    for marker in ("LOCK", "LOCKFILE", "VERSION"):
        (study / marker).write_bytes(b"")
    (case,) = find_batch_cases(root)
    assert case.problem is None and case.dicom
    assert not any(path.name in ("LOCK", "LOCKFILE", "VERSION") for path in case.input_files())
    out = tmp_path / "out"
    rows = run_batch([case], BatchOptions(out), summary=out / "summary.csv", make_segmenter=ThresholdSegmenter,
                     progress=False)
    assert [r["status"] for r in rows] == [DONE], rows
    lost = study / "S2_9999"  # a slice cut to nothing: the volume may be short, so the case fails
    lost.write_bytes(b"")
    (case,) = find_batch_cases(root)
    row = run_case(case, BatchOptions(tmp_path / "out2"), ThresholdSegmenter())
    assert row["status"] == FAILED and row["message"].startswith(f"{lost}: file is empty"), row
    assert len(row["message"].splitlines()) == 1


def test_image_files_and_the_dicom_study_of_the_same_scan_in_one_folder_are_one_case(tmp_path):
    """A patient folder holding CT.nii.gz + PET.nii.gz and the DICOM study they were converted from became two
    cases (the same patient segmented twice). One case now: the DICOM one (SUV metadata, DICOM exports), its row
    saying the image files were not segmented. Image files of other voxel grids than the study's (another scan)
    stay a case of their own, and both rows say so."""
    root = tmp_path / "in"
    same = _case(3, "PAT-A")
    write_dicom_case(same, root / "PAT-A" / "dicom")  # beside the converted images, one level down
    sitk.WriteImage(same.ct, str(root / "PAT-A" / "CT.nii.gz"))
    sitk.WriteImage(same.pet, str(root / "PAT-A" / "PET.nii.gz"))
    beside = _case(4, "PAT-B")
    write_dicom_case(beside, root / "PAT-B")  # slices and images in one folder
    sitk.WriteImage(beside.ct, str(root / "PAT-B" / "ct.nii.gz"))
    sitk.WriteImage(beside.pet, str(root / "PAT-B" / "pt.nii.gz"))
    write_dicom_case(_case(5, "PAT-C"), root / "PAT-C" / "dicom")
    other = make_phantom(6, "head", ct_matrix=80, n_nodes=1, case_id="PAT-C")  # another scan: other grids
    sitk.WriteImage(other.ct, str(root / "PAT-C" / "CT.nii.gz"))
    sitk.WriteImage(other.pet, str(root / "PAT-C" / "PET.nii.gz"))
    cases = find_batch_cases(root)
    assert len(cases) == 4 and not any(c.problem for c in cases), cases
    by_folder = {}
    for c in cases:
        by_folder.setdefault(c.location().relative_to(root).parts[0], []).append(c)
    for name in ("PAT-A", "PAT-B"):
        (case,) = by_folder[name]
        assert case.dicom and "were not segmented separately" in case.note
    images, study = sorted(by_folder["PAT-C"], key=lambda c: c.dicom)
    assert images.case_id == "PAT-C" and not images.dicom and str(root / "PAT-C" / "dicom") in images.note
    assert study.dicom and study.case_id.startswith("PAT-C_") and "CT.nii.gz and PET.nii.gz" in study.note
    out = tmp_path / "out"
    rows = run_batch(by_folder["PAT-A"], BatchOptions(out), summary=out / "summary.csv",
                     make_segmenter=ThresholdSegmenter, progress=False)
    assert [(r["status"], r["source"]) for r in rows] == [(DONE, "DICOM")]
    assert rows[0]["message"] == (f"CT.nii.gz and PET.nii.gz in {root / 'PAT-A'} have this study's voxel grids "
                                  "(converted from it?) and were not segmented separately")


def test_a_damaged_failure_record_of_another_process_leaves_the_case_running_elsewhere(hecktor_root, tmp_path):
    """The other process's ``CASE.failed.json`` read back is a JSON object of summary columns; a damaged one
    (here a list) is no record: the row stays "running elsewhere" (it raised AttributeError: a traceback at the
    end of a whole batch)."""
    from HNTumorSegLib.cli.batch import _refreshed, _row

    case = find_batch_cases(hecktor_root)[0]
    options = BatchOptions(tmp_path / "out")
    failed = case_paths(options, case)["failed"]
    failed.parent.mkdir(parents=True)
    row = _row(case, ELSEWHERE, 0.0)
    for text in ("[1, 2]", "{not json", '{"status": "failed", "message": "CT unreadable"}'):
        failed.write_text(text)
        refreshed = _refreshed(row, case, options)
        assert refreshed["status"] == ("failed" if text.startswith('{"') else ELSEWHERE)
    assert refreshed["message"] == "CT unreadable"
