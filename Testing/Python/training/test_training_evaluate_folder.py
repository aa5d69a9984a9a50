"""``hntumorseg-train evaluate`` on any folder of labelled cases, the class-confusion figures, and
``export`` with several named evaluations (held-out cases of the training styles, an unseen style).

The confusion figures are checked against values worked out by hand on constructed cases: a
stand-in segmenter returns prescribed label maps (one that swaps GTVp and GTVn scores 1.0), and
one case has another voxel size, so pooling by volume and averaging over cases differ. The
command-line runs use small random-weight networks on tiny volumes.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from HNTumorSegLib.errors import InputError
from HNTumorSegLib.pipeline.inference import Segmentation, Segmenter
from HNTumorSegLib.pipeline.model_file import load_model
from HNTumorSegLib.pipeline.preprocess import PREPROCESSING_VERSION
from HNTumorSegTraining.cli import main
from HNTumorSegTraining.evaluate import evaluate_folder, read_evaluation
from HNTumorSegTraining.export import check_evaluation, export, parse_evaluations

from conftest import tiny_ct_pet

pytestmark = pytest.mark.usefixtures("one_torch_thread")

SHAPE = (40, 100, 100)


def _write_case(root: Path, case_id: str, label: np.ndarray | None, spacing=(2.0, 2.0, 3.0)) -> None:
    ct, pet = tiny_ct_pet()
    ct.SetSpacing(spacing)
    folder = root / case_id
    folder.mkdir(parents=True)
    sitk.WriteImage(ct, str(folder / f"{case_id}__CT.nii.gz"))
    sitk.WriteImage(pet, str(folder / f"{case_id}__PT.nii.gz"))
    if label is not None:
        img = sitk.GetImageFromArray(label.astype(np.uint8))
        img.CopyInformation(ct)
        sitk.WriteImage(img, str(folder / f"{case_id}.nii.gz"))


def _blank() -> np.ndarray:
    return np.zeros(SHAPE, np.uint8)


def _hand_cases() -> tuple[dict[str, np.ndarray], dict[str, np.ndarray], dict[str, tuple]]:
    """References, predictions and spacings of three cases whose confusion is worked out by hand.

    AAA-001 (0.012 mL voxels): GTVp 100 voxels, 25 of them predicted GTVn; GTVn 50 voxels, 10 predicted GTVp.
    AAA-002 (0.012 mL): GTVp 100 voxels, all predicted GTVn; no GTVn.
    BBB-001 (0.048 mL): GTVp 50, GTVn 50 voxels, predicted exactly.
    """
    refs, preds = {}, {}
    r = _blank()
    r[10:14, 30:35, 40:45] = 1
    r[20:22, 50:55, 50:55] = 2
    p = r.copy()
    p[10, 30:35, 40:45] = 2
    p[20, 50:52, 50:55] = 1
    refs["AAA-001"], preds["AAA-001"] = r, p
    r = _blank()
    r[10:14, 30:35, 40:45] = 1
    p = r.copy()
    p[p == 1] = 2
    refs["AAA-002"], preds["AAA-002"] = r, p
    r = _blank()
    r[10:12, 30:35, 40:45] = 1
    r[20:22, 50:55, 50:55] = 2
    refs["BBB-001"], preds["BBB-001"] = r, r.copy()
    spacings = {"AAA-001": (2.0, 2.0, 3.0), "AAA-002": (2.0, 2.0, 3.0), "BBB-001": (4.0, 4.0, 3.0)}
    return refs, preds, spacings


class LabelSegmenter(Segmenter):
    """Returns a prescribed label map per case (found by the case folder of the CT path)."""

    def __init__(self, predictions: dict[str, np.ndarray]):
        self.predictions = predictions
        self.device, self.tta = torch.device("cpu"), False

    def segment(self, ct, pet, *, reference=None, ct_name="CT", pet_name="PET", progress=None):
        label = sitk.GetImageFromArray(self.predictions[Path(ct_name).parent.name])
        label.CopyInformation(ct)
        return Segmentation(label, {})


@pytest.fixture(scope="module")
def hand_folder(tmp_path_factory) -> tuple[Path, dict, dict]:
    root = tmp_path_factory.mktemp("hand")
    refs, preds, spacings = _hand_cases()
    for case_id, ref in refs.items():
        _write_case(root, case_id, ref, spacings[case_id])
    _write_case(root, "CCC-001", None)  # no label: listed as not scored
    return root, refs, preds


def test_confusion_figures_match_the_hand_computed_values(hand_folder, tmp_path):
    root, _, preds = hand_folder
    out = tmp_path / "ev"
    summary = evaluate_folder(root, out, segmenter=LabelSegmenter(preds))
    c = summary["overall"]["confusion"]
    # pooled: (25 + 100) x 0.012 mL / (100 x 0.012 + 100 x 0.012 + 50 x 0.048) mL = 1.5 / 4.8
    assert c["GTVp_as_GTVn"]["pooled"] == pytest.approx(0.3125)
    assert c["GTVp_as_GTVn"]["case_mean"] == pytest.approx((0.25 + 1.0 + 0.0) / 3)
    assert c["GTVp_as_GTVn"]["undefined_cases"] == 0
    assert c["GTVp_as_GTVn"]["confused_ml"] == pytest.approx(1.5) and c["GTVp_as_GTVn"]["reference_ml"] == \
        pytest.approx(4.8)
    # GTVn: 10 x 0.012 / (50 x 0.012 + 50 x 0.048) = 0.12 / 3.0; AAA-002 has no GTVn: undefined, counted
    assert c["GTVn_as_GTVp"]["pooled"] == pytest.approx(0.04)
    assert c["GTVn_as_GTVp"]["case_mean"] == pytest.approx((0.2 + 0.0) / 2)
    assert c["GTVn_as_GTVp"]["undefined_cases"] == 1
    aaa, bbb = summary["per_centre"]["AAA"]["confusion"], summary["per_centre"]["BBB"]["confusion"]
    assert aaa["GTVp_as_GTVn"]["pooled"] == pytest.approx(1.5 / 2.4)
    assert aaa["GTVn_as_GTVp"]["pooled"] == pytest.approx(0.2)
    assert bbb["GTVp_as_GTVn"]["pooled"] == 0.0 and bbb["GTVn_as_GTVp"]["pooled"] == 0.0

    rows = {r["case_id"]: r for r in csv.DictReader((out / "cases.csv").open())}
    assert sorted(rows) == ["AAA-001", "AAA-002", "BBB-001"]
    assert float(rows["AAA-001"]["GTVp_as_GTVn"]) == 0.25 and float(rows["AAA-001"]["GTVn_as_GTVp"]) == 0.2
    assert float(rows["AAA-002"]["GTVp_as_GTVn"]) == 1.0 and rows["AAA-002"]["GTVn_as_GTVp"] == ""
    assert float(rows["AAA-001"]["GTVp_as_GTVn_ml"]) == pytest.approx(0.3)
    assert float(rows["BBB-001"]["GTVp_as_GTVn"]) == 0.0

    saved = read_evaluation(out)
    assert saved["overall"] == json.loads(json.dumps(summary["overall"])) and saved["confusion_rule"]
    assert saved["cases_from"] == "folder" and saved["split"] is None
    assert saved["case_ids"] == ["AAA-001", "AAA-002", "BBB-001"]
    assert saved["not_scored"] == [{"case_id": "CCC-001", "reason": f"{root / 'CCC-001'}: no label (CCC-001.nii.gz)"}]
    md = (out / "summary.md").read_text()
    assert md.startswith("| Set | Cases | Dice GTVp")
    assert "| all | 3 | 0.3125 | 0.0400 | 0.4167 | 0.1000 (1 undef.) |" in md
    assert "| AAA | 2 | 0.6250 | 0.2000 | 0.6250 | 0.2000 (1 undef.) |" in md
    assert "| BBB | 1 | 0.0000 | 0.0000 | 0.0000 | 0.0000 |" in md
    assert "Not scored (1" in md and "CCC-001: no label" in md
    assert (out / "boxplot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_segmenter_that_swaps_the_labels_scores_confusion_one(hand_folder, tmp_path):
    root, refs, _ = hand_folder
    swapped = {k: np.choose(r, [0, 2, 1]).astype(np.uint8) for k, r in refs.items()}
    summary = evaluate_folder(root, tmp_path / "ev", segmenter=LabelSegmenter(swapped))
    for s in [summary["overall"], *summary["per_centre"].values()]:
        assert s["confusion"]["GTVp_as_GTVn"]["pooled"] == 1.0 and s["confusion"]["GTVp_as_GTVn"]["case_mean"] == 1.0
        assert s["confusion"]["GTVn_as_GTVp"]["pooled"] == 1.0 and s["confusion"]["GTVn_as_GTVp"]["case_mean"] == 1.0
        assert s["GTVp"]["dice_mean"] == 0.0
    # the truth itself: no confusion
    summary = evaluate_folder(root, tmp_path / "ev2", segmenter=LabelSegmenter(refs))
    c = summary["overall"]["confusion"]
    assert c["GTVp_as_GTVn"]["pooled"] == 0.0 and c["GTVn_as_GTVp"]["pooled"] == 0.0
    assert summary["overall"]["GTVp"]["dice_mean"] == 1.0


def test_a_folder_without_labelled_cases_is_an_error(tmp_path):
    _write_case(tmp_path / "d", "XYZ-001", None)
    with pytest.raises(InputError, match="no labelled cases found.*XYZ-001: no label"):
        evaluate_folder(tmp_path / "d", tmp_path / "ev", segmenter=LabelSegmenter({}))
    with pytest.raises(InputError, match="case folder not found"):
        evaluate_folder(tmp_path / "nope", tmp_path / "ev", segmenter=LabelSegmenter({}))


def test_an_evaluation_of_no_case_is_refused_not_written(hand_folder, tmp_path):
    root, refs, _ = hand_folder
    with pytest.raises(InputError, match=r"no case to evaluate \(--limit 0\)"):
        evaluate_folder(root, tmp_path / "ev", segmenter=LabelSegmenter(refs), limit=0)
    assert not (tmp_path / "ev").exists()  # nothing export could take for an evaluation


# ------------------------------------------------------------------------------------------- real networks
def _simple_label() -> np.ndarray:
    label = _blank()
    label[18:24, 40:50, 40:50] = 1
    label[18:22, 40:46, 60:66] = 2
    return label


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("tiny")
    for case_id in ("TR-001", "TV-001"):
        _write_case(base / "data", case_id, _simple_label())
    _write_case(base / "other_style", "OS-001", _simple_label())
    _write_case(base / "other_style", "OS-002", _simple_label())
    return {"base": base, "data": base / "data", "other": base / "other_style"}


def test_cli_evaluates_a_model_file_on_a_folder(small_model, tiny_data, tmp_path, capsys):
    out = tmp_path / "ev"
    assert main(["evaluate", "--model", str(small_model.with_suffix(".safetensors")), "--data",
                 str(tiny_data["other"]), "--out", str(out), "--device", "cpu", "--limit", "1"]) == 0
    printed = capsys.readouterr().out
    assert "[1/1] OS-001: Dice GTVp" in printed and "confusion GTVp->GTVn" in printed
    assert "| Set | Cases | GTVp predicted GTVn (pooled)" in printed and "| all | 1 |" in printed
    assert "confusion (pooled, all cases): GTVp->GTVn " in printed and f"reports: {out}" in printed
    summary = read_evaluation(out)
    assert summary["model"] == "small" and summary["run"] is None and summary["limited_to_first"] == 1
    assert summary["members"][0]["tensors_sha256"] == load_model(small_model).members[0].tensors_sha256
    assert summary["weights_sha256"] == json.loads(small_model.read_text())["weights_sha256"]
    rows = list(csv.DictReader((out / "cases.csv").open()))
    assert [r["case_id"] for r in rows] == ["OS-001"] and "GTVp_as_GTVn" in rows[0]
    # compare reads evaluation folders as well as runs
    assert main(["compare", str(out)]) == 0
    assert capsys.readouterr().out.splitlines()[2].startswith("| ev (small) |")


@pytest.mark.parametrize("argv, needle", [
    (["--model", "M.json"], "give --out DIR"),
    (["--run", "R", "--cache", "C"], "give --out DIR"),
    (["--model", "M.json", "--out", "D"], "give --data FOLDER"),
    (["--run", "R", "--data", "F", "--out", "D", "--split", "val"], "--split chooses among a run's own cases"),
    (["--run", "R", "--model", "M", "--data", "F", "--out", "D"], "either --model MODEL or --run RUN"),
    ([], "give --run RUN"),
])
def test_cli_evaluate_option_mistakes_are_one_line(argv, needle, capsys):
    assert main(["evaluate", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and needle in err[0]


def test_cli_evaluate_names_a_missing_model(tiny_data, tmp_path, capsys):
    assert main(["evaluate", "--model", str(tmp_path / "none.json"), "--data", str(tiny_data["other"]),
                 "--out", str(tmp_path / "ev")]) == 2
    err = capsys.readouterr().err
    assert "none.json: model file not found" in err and not (tmp_path / "ev").exists()


def _make_run(base: Path, data_root: Path) -> Path:
    from HNTumorSegTraining.models import build_from_spec, make_spec
    from HNTumorSegTraining.weights import save_weights

    cache, run = base / "cache", base / "run"
    cache.mkdir()
    (cache / "split.json").write_text(json.dumps({
        "train": ["TR-001"], "val": ["TV-001"], "data_root": str(data_root),
        "preprocessing_version": PREPROCESSING_VERSION, "centres": {"TR": {"total": 1, "train": 1, "val": 0},
                                                                    "TV": {"total": 1, "train": 0, "val": 1}}}))
    spec = make_spec("psam", channels=(4, 8, 16, 32, 64), psam_channels=[2, 4, 8])
    torch.manual_seed(0)
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"cache": str(cache), "model_spec": spec, "device": "cpu"}))
    save_weights(build_from_spec(spec), spec, run / "best",
                 {"preprocessing_version": PREPROCESSING_VERSION, "metrics": {}, "training": {"epoch": 1}})
    return run


def test_export_records_several_named_evaluations(tiny_data, tmp_path, capsys):
    run = _make_run(tmp_path, tiny_data["data"])
    # held-out cases of the styles trained on (the run's own val split) ...
    assert main(["evaluate", "--run", str(run), "--device", "cpu", "--quiet"]) == 0
    # ... and a style left out of training
    unseen = tmp_path / "eval_unseen"
    assert main(["evaluate", "--run", str(run), "--data", str(tiny_data["other"]), "--out", str(unseen),
                 "--device", "cpu", "--quiet", "--limit", "1"]) == 0
    capsys.readouterr()
    heldout = run / "evaluation" / "val-best"
    out = tmp_path / "models" / "m"
    assert main(["export", "--run", str(run), "--out", str(out), "--evaluation", f"heldout={heldout}",
                 "--evaluation", f"unseen_style={unseen}"]) == 0
    meta = load_model(out).meta
    evaluations = meta["metrics"]["evaluations"]
    assert list(evaluations) == ["heldout", "unseen_style"]
    assert evaluations["heldout"]["split"] == "val" and evaluations["heldout"]["data_root"] == "data"
    assert evaluations["unseen_style"]["cases_from"] == "folder"
    assert evaluations["unseen_style"]["data_root"] == "other_style" and evaluations["unseen_style"]["cases"] == 1
    for name, folder in (("heldout", heldout), ("unseen_style", unseen)):
        summary = read_evaluation(folder)
        assert evaluations[name]["overall"] == summary["overall"]
        assert evaluations[name]["overall"]["confusion"] == summary["overall"]["confusion"]
        assert evaluations[name]["per_centre"] == summary["per_centre"]
    assert "confusion_rule" in meta["metrics"] and "empty_mask_rules" in meta["metrics"]

    # today's single evaluation export still works and holds the confusion figures too
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "models" / "plain")]) == 0
    plain = load_model(tmp_path / "models" / "plain").meta["metrics"]
    assert plain["split"] == "val" and "confusion" in plain["overall"] and "evaluations" not in plain

    # a folder holding one of the run's training cases is no held-out evaluation
    seen = tmp_path / "eval_seen"
    assert main(["evaluate", "--run", str(run), "--data", str(tiny_data["data"]), "--out", str(seen),
                 "--device", "cpu", "--quiet", "--limit", "1"]) == 0
    captured = capsys.readouterr()
    assert "1 of these cases are training cases" in captured.err
    assert read_evaluation(seen)["training_cases_in_set"] == ["TR-001"]
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "models" / "bad"),
                 "--evaluation", f"seen={seen}"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "training cases of run" in err
    assert not (tmp_path / "models" / "bad.json").exists()


def test_evaluation_checks_and_names():
    assert parse_evaluations(["a=x", "b.2=y/z"]) == {"a": Path("x"), "b.2": Path("y/z")}
    for bad in (["a"], ["=x"], ["a b=x"], ["a=x", "a=y"]):
        with pytest.raises(InputError):
            parse_evaluations(bad)
    summary = {"members": [{"tensors_sha256": "1" * 64}], "postprocess": None, "case_ids": ["C-1"]}
    check_evaluation("e", Path("d"), summary, ["1" * 64], None, {"run": ["C-2"]})
    with pytest.raises(InputError, match="scored other weights"):
        check_evaluation("e", Path("d"), summary, ["2" * 64], None, {})
    with pytest.raises(InputError, match="clean-up"):
        check_evaluation("e", Path("d"), summary, ["1" * 64], {"rules": {}}, {})
    with pytest.raises(InputError, match="older version"):
        check_evaluation("e", Path("d"), {"postprocess": None}, ["1" * 64], None, {})
    with pytest.raises(InputError, match="1 of its cases are training cases of run"):
        check_evaluation("e", Path("d"), summary, ["1" * 64], None, {"run": ["C-1"]})


def test_export_with_an_evaluation_folder_that_is_not_one(tiny_data, tmp_path):
    run = _make_run(tmp_path, tiny_data["data"])
    with pytest.raises(InputError, match="not an evaluation folder"):
        export(run, tmp_path / "m", evaluations={"x": tmp_path})
