"""hntumorseg-train faults: honest exported metrics, outputs that are inputs, degenerate tuning, odd inputs.

Runs are assembled by hand (run.json, a cache holding only split.json, tiny psam weights) and their
evaluations written by hand, so that what export, compare and postprocess do with them is tested without
running a network over images.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from conftest import tiny_ct_pet
from HNTumorSegLib.cases.hecktor import Case, find_cases
from HNTumorSegLib.errors import InputError
from HNTumorSegLib.imaging.image_io import temporary_prefix
from HNTumorSegLib.pipeline.model_file import load_model, tensors_sha256
from HNTumorSegLib.pipeline.postprocess import StructureRule
from HNTumorSegLib.pipeline.preprocess import PREPROCESSING_VERSION
from HNTumorSegTraining import postprocess_search
from HNTumorSegTraining.cli import main
from HNTumorSegTraining.evaluate import refuse_other_labels
from HNTumorSegTraining.models import build_from_spec, make_spec
from HNTumorSegTraining.postprocess_search import CaseStructure, best_rule, choose, tune_postprocess
from HNTumorSegTraining.rule_file import write_rule_file
from HNTumorSegTraining.weights import load_weights, save_weights

TINY = (4, 8, 16, 32, 64)
TRAIN, VAL = ["PHB-001"], ["PHA-001"]

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _run(base: Path, name: str = "run", seed: int = 0, version: str = PREPROCESSING_VERSION) -> Path:
    """A run trained (by hand) on cache ``base/cache``: PHB-001 for training, PHA-001 for validation."""
    cache, run, data = base / "cache", base / name, base / "data"
    data.mkdir(exist_ok=True)
    cache.mkdir(exist_ok=True)
    (cache / "split.json").write_text(json.dumps({
        "train": TRAIN, "val": VAL, "data_root": str(data), "preprocessing_version": PREPROCESSING_VERSION,
        "centres": {"PHA": {"total": 1, "train": 0, "val": 1}, "PHB": {"total": 1, "train": 1, "val": 0}}}))
    spec = make_spec("psam", channels=TINY, psam_channels=[4, 4, 4])
    torch.manual_seed(seed)
    model = build_from_spec(spec)
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"cache": str(cache), "model_spec": spec, "device": "cpu"}))
    meta = {"preprocessing_version": version, "metrics": {"val_dice_mean": 0.5}, "training": {"epoch": 1},
            "selected": "best validation mean Dice"}
    save_weights(model, spec, run / "best", meta)
    save_weights(model, spec, run / "last", meta)
    return run


def _digest(run: Path, which: str = "best") -> str:
    return tensors_sha256(load_weights(run / f"{which}.json")[0].state_dict())


def _figures(dice: float) -> dict:
    s = {"dice_mean": dice, "dice_std": 0.0, "dice_median": dice, "dsc_agg": dice, "hd95_mean_mm": 1.0,
         "hd95_undefined_cases": 0}
    return {"cases": 1, "GTVp": s, "GTVn": {**s, "f1_agg": dice}, "mean_dice": dice}


def _write_summary(run: Path, digest: str, case_ids=VAL, split: str = "val", dice: float = 0.75) -> Path:
    """An evaluation summary as ``evaluate`` writes it, of the networks ``digest`` on ``case_ids``."""
    folder = run / "evaluation" / f"{split}-best"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "summary.json").write_text(json.dumps({
        "format": "hntumorseg-evaluation", "model": "psam", "split": split, "data_root": "/data", "path": "p",
        "tta": False, "postprocess": None, "overall": _figures(dice), "per_centre": {"PHA": _figures(dice)},
        "empty_mask_rules": "rules", "members": [{"name": "m", "tensors_sha256": digest}],
        "case_ids": list(case_ids)}))
    return folder / "summary.json"


def _one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hntumorseg-train: error: "), err
    for needle in needles:
        assert needle in err[0], (needle, err[0])
    return err[0]


# ----------------------------------------------------------------------------------------------
# export: the run's own evaluation is checked like --evaluation (finding 1) and not read when unevaluated (4)
# ----------------------------------------------------------------------------------------------


def test_export_ships_the_run_s_evaluation_only_when_it_scored_these_weights(tmp_path, capsys):
    run = _run(tmp_path)
    _write_summary(run, _digest(_run(tmp_path, "other", seed=1)))  # weights replaced since (fit --resume)
    out = tmp_path / "m"
    assert main(["export", "--run", str(run), "--out", str(out)]) == 2
    _one_line_error(capsys, "scored other weights", "val-best")
    assert not list(tmp_path.glob("m.*"))
    _write_summary(run, _digest(run))
    assert main(["export", "--run", str(run), "--out", str(out)]) == 0
    assert load_model(out).meta["metrics"]["overall"]["GTVp"]["dice_mean"] == 0.75


def test_export_refuses_a_run_s_evaluation_of_training_cases(tmp_path, capsys):
    run = _run(tmp_path)
    _write_summary(run, _digest(run), case_ids=VAL + TRAIN)  # a folder evaluation written into val-best
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "m")]) == 2
    _one_line_error(capsys, "training cases", "PHB-001")
    _write_summary(run, _digest(run), case_ids=TRAIN, split="train")
    assert main(["export", "--run", str(run), "--split", "train", "--out", str(tmp_path / "m")]) == 2
    _one_line_error(capsys, "training cases")
    assert not list(tmp_path.glob("m.*"))


def test_unevaluated_export_with_a_rule_file_ignores_the_run_s_own_evaluation(tmp_path, capsys):
    """The command postprocess --out prints must work although the run was evaluated with its own clean-up."""
    run = _run(tmp_path)
    _write_summary(run, _digest(run))
    rule = tmp_path / "rule.json"
    entry = {"rules": {"GTVp": StructureRule(0.5, 0.0, False, False).to_dict()}, "chosen_on": {"cases": 1}}
    write_rule_file(rule, entry, [{"run": run.name, "weights": "best", "tensors_sha256": _digest(run)}])
    assert main(["export", "--run", str(run), "--postprocess-rule", str(rule), "--unevaluated",
                 "--out", str(tmp_path / "m")]) == 0
    meta = load_model(tmp_path / "m").meta
    assert meta["postprocess"]["rules"]["GTVp"]["min_volume_ml"] == 0.5
    assert meta["metrics"]["note"].startswith("not evaluated")  # not the figures of the run's own clean-up


# ----------------------------------------------------------------------------------------------
# export: preprocessing version (2), output names (7), outputs that are inputs (5), copies in an ensemble (8)
# ----------------------------------------------------------------------------------------------


def test_export_refuses_weights_of_another_preprocessing_version(tmp_path, capsys):
    old, new = _run(tmp_path, "old", version="0"), _run(tmp_path, "new", seed=1)
    assert main(["export", "--run", str(old), "--out", str(tmp_path / "m"), "--unevaluated"]) == 2
    _one_line_error(capsys, "preprocessing version '0'", "old")
    assert main(["export", "--run", str(new), "--run", str(old), "--out", str(tmp_path / "m"), "--unevaluated"]) == 2
    _one_line_error(capsys, "differ in preprocessing version")
    old_too = _run(tmp_path, "old_too", seed=1, version="0")
    assert main(["export", "--run", str(old), "--run", str(old_too), "--out", str(tmp_path / "m"),
                 "--unevaluated"]) == 2
    _one_line_error(capsys, "preprocessing version '0'", "could not be used")
    assert not list(tmp_path.glob("m.*"))


def test_export_names_the_model_by_its_file_stem_and_refuses_a_folder_output(tmp_path, capsys):
    run = _run(tmp_path)
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "m.json"), "--unevaluated"]) == 0
    assert json.loads((tmp_path / "m.json").read_text())["name"] == "m"
    (tmp_path / "d" / "x.json").mkdir(parents=True)
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "d" / "x"), "--unevaluated"]) == 2
    line = _one_line_error(capsys, str(tmp_path / "d" / "x.json"), "folder")
    assert "/." not in line  # not a hidden temporary file
    assert not (tmp_path / "d" / "x.safetensors").exists()


def test_outputs_that_are_inputs_are_refused_before_anything_is_written(tmp_path, capsys):
    run = _run(tmp_path)
    summary = _write_summary(run, _digest(run))
    kept = {p: p.read_bytes() for p in (run / "best.json", run / "best.safetensors", summary)}
    assert main(["export", "--run", str(run), "--out", str(run / "best")]) == 2
    _one_line_error(capsys, "--out is the same file as --run")
    assert main(["compare", str(run), "--out", str(summary)]) == 2
    _one_line_error(capsys, "--out is the same file")
    assert main(["postprocess", "--run", str(run), "--out", str(run / "best.json"), "--device", "cpu"]) == 2
    _one_line_error(capsys, "--out is the same file as --run")
    assert {p: p.read_bytes() for p in kept} == kept


def test_an_ensemble_of_a_run_and_its_copy_is_refused(tmp_path, capsys):
    run = _run(tmp_path)
    shutil.copytree(run, tmp_path / "copy")
    assert main(["export", "--run", str(run), "--run", str(tmp_path / "copy"), "--unevaluated",
                 "--out", str(tmp_path / "ens")]) == 2
    _one_line_error(capsys, "same network", "identical tensors")
    assert not list(tmp_path.glob("ens.*"))


# ----------------------------------------------------------------------------------------------
# compare (6)
# ----------------------------------------------------------------------------------------------


def test_compare_names_a_summary_that_lacks_figures(tmp_path, capsys):
    folder = tmp_path / "ev"
    folder.mkdir()
    (folder / "summary.json").write_text(json.dumps({"format": "hntumorseg-evaluation", "model": "psam"}))
    assert main(["compare", str(folder)]) == 2
    _one_line_error(capsys, str(folder / "summary.json"), "overall")


# ----------------------------------------------------------------------------------------------
# --limit (3), tuning on no case or on an absent structure (3, 13), tuning on validation cases (10)
# ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize("command", ["postprocess", "evaluate"])
@pytest.mark.parametrize("limit", ["0", "-1"])
def test_limit_below_one_is_refused(command, limit, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--run", "r", "--limit", limit])
    assert exc.value.code == 2
    assert "--limit" in capsys.readouterr().err


def test_tuning_on_no_case_is_refused_and_never_chooses_on_nan(tmp_path):
    run = _run(tmp_path)
    with pytest.raises(InputError, match="--limit 0"):
        tune_postprocess(run, which="best", limit=0, device="cpu")
    rule, before, after = best_rule([])
    assert rule == StructureRule() and np.isnan(after)


def _item(components: list[tuple[int, float, int]], reference: int) -> CaseStructure:
    sizes, peaks, hits = (np.array(v) for v in zip(*components)) if components else (np.zeros(0),) * 3
    return CaseStructure(np.asarray(sizes, int), np.asarray(peaks, float), np.asarray(hits, int), reference)


def test_no_rule_is_chosen_for_a_structure_no_tuning_case_has():
    """Deleting every predicted node scores Dice 1 on node-free cases; on cases with nodes it deletes them."""
    found = {"GTVp": [_item([(1000, 0.97, 900), (10, 0.6, 0)], 1000)],
             "GTVn": [_item([(30, 0.65, 0)], 0), _item([(40, 0.9, 0)], 0)]}
    chosen, scores = choose(found)
    assert chosen.rules["GTVn"] == StructureRule()
    assert "no tuning case has GTVn" in scores["GTVn"]["not_chosen"]
    assert chosen.rules["GTVp"] != StructureRule()


def test_tuning_cases_are_compared_with_the_runs_validation_cases_by_id(tmp_path, monkeypatch, capsys):
    run = _run(tmp_path)
    other = tmp_path / "other_cache"  # another cache (a copy) holding the run's validation case
    other.mkdir()
    shutil.copy(tmp_path / "cache" / "split.json", other / "split.json")
    monkeypatch.setattr(postprocess_search, "is_finished", lambda folder: True)
    assert main(["postprocess", "--run", str(run), "--cache", str(other), "--split", "val", "--device", "cpu"]) == 2
    _one_line_error(capsys, "validation cases", "PHA-001")


# ----------------------------------------------------------------------------------------------
# evaluate --data: other files under the split's ids (14)
# ----------------------------------------------------------------------------------------------


def test_evaluate_refuses_labels_other_than_the_cache_was_prepared_from(tmp_path, capsys):
    run = _run(tmp_path)
    data = tmp_path / "moved"
    for case_id in VAL:
        (data / case_id).mkdir(parents=True)
        for suffix in ("__CT", "__PT", ""):
            (data / case_id / f"{case_id}{suffix}.nii.gz").write_bytes(b"x" * 100)
        folder = tmp_path / "cache" / "cases" / case_id
        folder.mkdir(parents=True)
        (folder / "provenance.json").write_text(json.dumps({"sources": {"label": {"bytes": 50}}}))
    assert main(["evaluate", "--run", str(run), "--data", str(data), "--device", "cpu"]) == 2
    _one_line_error(capsys, "PHA-001.nii.gz", "100 bytes", "50")
    assert not (run / "evaluation").exists()
    case = Case("PHA-001", "PHA", data / "PHA-001" / "PHA-001__CT.nii.gz", data / "PHA-001" / "PHA-001__PT.nii.gz",
                data / "PHA-001" / "PHA-001.nii.gz")
    (tmp_path / "cache" / "cases" / "PHA-001" / "provenance.json").write_text(
        json.dumps({"sources": {"label": {"bytes": 100}}}))
    refuse_other_labels(tmp_path / "cache", [case])  # the same size: accepted


# ----------------------------------------------------------------------------------------------
# case discovery (11) and prepare (9, 12)
# ----------------------------------------------------------------------------------------------


def test_role_suffixes_match_in_any_letter_case(tmp_path):
    folder = tmp_path / "PHQ-001"
    folder.mkdir()
    for name in ("PHQ-001__ct.nii.gz", "PHQ-001__Pt.nii.gz", "PHQ-001.nii.gz"):
        (folder / name).write_bytes(b"")
    cases, problems = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["PHQ-001"] and problems == []
    assert cases[0].ct.name == "PHQ-001__ct.nii.gz" and cases[0].pet.name == "PHQ-001__Pt.nii.gz"


def _tiny_case(root: Path, case_id: str, with_pet: bool = True) -> None:
    ct, pet = tiny_ct_pet()
    arr = np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8)
    arr[20:24, 40:50, 40:50] = 1
    label = sitk.GetImageFromArray(arr)
    label.CopyInformation(ct)
    folder = root / case_id
    folder.mkdir(parents=True)
    for suffix, image in (("__CT", ct), ("__PT", pet if with_pet else None), ("", label)):
        if image is not None:
            sitk.WriteImage(image, str(folder / f"{case_id}{suffix}.nii.gz"))


def test_prepare_counts_cases_not_files_and_removes_old_leftovers_of_finished_cases(tmp_path, capsys):
    data, cache = tmp_path / "data", tmp_path / "cache"
    _tiny_case(data, "CHUM-001")
    _tiny_case(data, "CHUM-002")
    _tiny_case(data, "MDA-001", with_pet=False)
    shutil.copy(data / "CHUM-001" / "CHUM-001.nii.gz", data / "CHUM-001" / "CHUM-001_mask.nii.gz")
    args = ["prepare", "--data", str(data), "--out", str(cache), "--val-counts", "CHUM=1", "--no-progress"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "accepted 2" in out and "rejected 1," in out and "file_problems 1" in out
    assert "rejected MDA-001" in out and "file problem CHUM-001_mask.nii.gz" in out
    report = json.loads((cache / "prepare_report.json").read_text())
    assert [r["case_id"] for r in report["rejected"]] == ["MDA-001"]
    assert [r["case_id"] for r in report["file_problems"]] == ["CHUM-001_mask.nii.gz"]

    # a prepare killed while rewriting a finished case left temporary files: an old one goes, a young one
    # (maybe a concurrent prepare's) stays
    old = cache / "cases" / "CHUM-001" / f"{temporary_prefix('image.npy')}killed.npy"
    young = cache / "cases" / "CHUM-002" / f"{temporary_prefix('image.npy')}writing.npy"
    for leftover in (old, young):
        leftover.write_bytes(b"partial")
    hour_ago = time.time() - 3600
    os.utime(old, (hour_ago, hour_ago))
    assert main(args) == 0
    assert "skipped 2" in capsys.readouterr().out
    assert not old.exists() and young.exists()
