"""evaluate, compare and export: native-grid scoring of a run, the Table 3 layout, shipped model files.

A run folder is assembled by hand (run.json, a cache with split.json pointing at three phantom
cases, tiny psam weights) instead of training one: what is tested here is what happens after
training. Known predictions come from stand-in segmenters: an oracle that restores the
reference label through the real preprocess/restore path, and one that finds nothing.
"""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from HNTumorSegLib.pipeline.inference import Segmentation, Segmenter
from HNTumorSegLib.pipeline.model_file import load_model
from HNTumorSegLib.pipeline.preprocess import PREPROCESSING_VERSION, preprocess
from HNTumorSegLib.pipeline.restore import restore
from HNTumorSegTraining.cli import main
from HNTumorSegTraining.evaluate import evaluate, read_summary
from HNTumorSegTraining.export import PHANTOM_INTENDED_USE, absolute_paths_in, export
from HNTumorSegTraining.models import build_from_spec, make_spec
from HNTumorSegTraining.phantom_cohort import write_cohort
from HNTumorSegTraining.weights import save_weights

TINY = (4, 8, 16, 32, 64)
VAL = ["PHA-001", "PHB-001", "PHC-001"]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("phantoms")
    write_cohort(root, 3, seed=1, progress=False)
    return root


def _make_run(base: Path, data_root: Path, name: str = "psam", spec=None) -> Path:
    cache, run = base / f"cache_{name}", base / f"run_{name}"
    cache.mkdir()
    (cache / "split.json").write_text(json.dumps({
        "train": [], "val": VAL, "data_root": str(data_root), "preprocessing_version": PREPROCESSING_VERSION,
        "centres": {c: {"total": 1, "train": 0, "val": 1} for c in ("PHA", "PHB", "PHC")}}))
    spec = spec or make_spec("psam", channels=TINY, psam_channels=[4, 4, 4])
    torch.manual_seed(0)
    model = build_from_spec(spec)
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"cache": str(cache), "model_spec": spec, "device": "cpu"}))
    meta = {"preprocessing_version": PREPROCESSING_VERSION, "metrics": {"val_dice_mean": 0.5},
            "training": {"epoch": 1}, "selected": "best validation mean Dice"}
    save_weights(model, spec, run / "best", meta)
    save_weights(model, spec, run / "last", meta)
    return run


@pytest.fixture()
def run_dir(tmp_path, data_root) -> Path:
    return _make_run(tmp_path, data_root)


class OracleSegmenter(Segmenter):
    """Predicts the reference itself, carried into the window and restored like a network output."""

    def __init__(self, data_root: Path, empty: bool = False):
        self.data_root, self.empty = data_root, empty
        self.device, self.tta = torch.device("cpu"), False

    def segment(self, ct, pet, *, reference=None, ct_name="CT", pet_name="PET", progress=None):
        if self.empty:
            label = sitk.Image(ct.GetSize(), sitk.sitkUInt8)
            label.CopyInformation(ct)
            return Segmentation(label, {})
        case_id = Path(ct_name).parent.name
        reference = sitk.ReadImage(str(self.data_root / case_id / f"{case_id}.nii.gz"))
        pre = preprocess(ct, pet, reference)
        return Segmentation(restore(pre.label, pre.provenance), pre.provenance)


def _truth(data_root: Path, case_id: str) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(data_root / case_id / f"{case_id}.nii.gz")))


def test_oracle_scores_high_and_reports_are_consistent(run_dir, data_root):
    summary = evaluate(run_dir, segmenter=OracleSegmenter(data_root))
    out = run_dir / "evaluation" / "val-best"
    rows = list(csv.DictReader((out / "cases.csv").open()))
    assert [r["case_id"] for r in rows] == VAL
    assert sorted(summary["per_centre"]) == ["PHA", "PHB", "PHC"]
    for r in rows:  # restoration of the window label: near-perfect on the native grid
        assert float(r["GTVp_dice"]) > 0.9
        has_nodes = (_truth(data_root, r["case_id"]) == 2).any()
        assert float(r["GTVn_dice"]) > (0.8 if has_nodes else 0.999)
    o = summary["overall"]
    assert o["cases"] == 3
    assert o["GTVp"]["dice_mean"] == pytest.approx(np.mean([float(r["GTVp_dice"]) for r in rows]), abs=1e-5)
    assert o["mean_dice"] == pytest.approx((o["GTVp"]["dice_mean"] + o["GTVn"]["dice_mean"]) / 2)
    tp = sum(float(r["GTVp_tp_volume_ml"]) for r in rows)
    total = sum(float(r["GTVp_pred_volume_ml"]) + float(r["GTVp_ref_volume_ml"]) for r in rows)
    assert o["GTVp"]["dsc_agg"] == pytest.approx(2 * tp / total, rel=1e-4)
    assert o["GTVp"]["dsc_agg"] > 0.9
    saved = json.loads((out / "summary.json").read_text())
    assert saved["overall"] == json.loads(json.dumps(o)) and saved["empty_mask_rules"]
    md = (out / "summary.md").read_text()
    assert md.startswith("| Set | Cases | Dice GTVp") and "| all | 3 |" in md and "| PHB | 1 |" in md
    assert "absent from both" in md
    assert (out / "boxplot.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_empty_predictions_follow_the_stated_rules(run_dir, data_root):
    summary = evaluate(run_dir, segmenter=OracleSegmenter(data_root, empty=True))
    rows = list(csv.DictReader((run_dir / "evaluation" / "val-best" / "cases.csv").open()))
    for r in rows:
        assert float(r["GTVp_dice"]) == 0.0 and r["GTVp_hd95"] == ""  # missed tumour: Dice 0, HD95 undefined
        has_nodes = (_truth(data_root, r["case_id"]) == 2).any()
        assert float(r["GTVn_dice"]) == (0.0 if has_nodes else 1.0)
        assert r["GTVn_hd95"] == ("" if has_nodes else "0")
    o = summary["overall"]
    assert o["GTVp"]["dsc_agg"] == 0.0 and o["GTVp"]["hd95_mean_mm"] is None
    assert o["GTVp"]["hd95_undefined_cases"] == 3
    n_nodes = sum(int(r["GTVn_lesion_fn"]) for r in rows)
    assert o["GTVn"]["lesions"] == {"tp": 0, "fp": 0, "fn": n_nodes}
    assert o["GTVn"]["f1_agg"] == (0.0 if n_nodes else None)


def test_cli_evaluate_with_real_weights_then_compare_and_export(run_dir, data_root, tmp_path, capsys):
    assert main(["evaluate", "--run", str(run_dir), "--device", "cpu", "--limit", "1"]) == 0
    out = capsys.readouterr().out
    assert "[1/1] PHA-001: Dice GTVp" in out and "| all | 1 |" in out
    summary = read_summary(run_dir)
    assert summary["limited_to_first"] == 1 and summary["model"] == "psam"
    seg_case = summary["overall"]["GTVp"]["dice_mean"]
    assert 0.0 <= seg_case <= 1.0

    other = tmp_path / "run_copy"
    shutil.copytree(run_dir, other)
    assert main(["compare", str(run_dir), str(other), "--out", str(tmp_path / "t3.md")]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[0] == "| Method | GTVp | GTVn | Mean (GTVp/GTVn) |"
    assert table[2].startswith(f"| {run_dir.name} (psam) | {seg_case:.4f} |") and table[3].startswith("| run_copy")
    assert (tmp_path / "t3.md").read_text().splitlines() == table

    assert main(["export", "--run", str(run_dir), "--out", str(tmp_path / "models" / "m")]) == 0
    loaded = load_model(tmp_path / "models" / "m")
    meta = loaded.meta
    assert meta["trained_on"]["synthetic"] is True and meta["intended_use"] == PHANTOM_INTENDED_USE
    assert meta["trained_on"]["val_cases"] == 3 and "synthetic PET/CT phantoms" in meta["trained_on"]["description"]
    assert meta["metrics"]["overall"]["GTVp"]["dice_mean"] == seg_case
    assert meta["training"]["run"] == run_dir.name
    # The training machine's folders stay there: names only (the data root was an absolute path).
    assert meta["trained_on"]["data_root"] == data_root.name and meta["metrics"]["data_root"] == data_root.name
    assert absolute_paths_in(meta) == []
    x = torch.rand(1, 2, 32, 64, 64)
    ref = build_from_spec(meta["model_spec"])
    ref.load_state_dict(loaded.model.state_dict())
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(x), ref.eval()(x))


def test_export_refuses_an_unevaluated_run_unless_told(run_dir, tmp_path, capsys):
    assert main(["export", "--run", str(run_dir), "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "not evaluated on val" in err[0] and not (tmp_path / "m.json").exists()
    weights, config = export(run_dir, tmp_path / "m", require_evaluation=False, description="my data",
                             intended_use="testing only")
    meta = json.loads(config.read_text())
    assert meta["metrics"]["note"].startswith("not evaluated") and meta["metrics"]["val_dice_mean"] == 0.5
    assert meta["trained_on"]["description"] == "my data" and meta["intended_use"] == "testing only"


def test_export_of_a_network_hntumorseglib_cannot_build_is_a_clear_error(tmp_path, data_root, capsys):
    spec = make_spec("umamba", channels=TINY, d_state=4, scan_chunk=4)
    run = _make_run(tmp_path, data_root, "umamba", spec)
    assert main(["export", "--run", str(run), "--out", str(tmp_path / "m"), "--unevaluated"]) == 2
    err = capsys.readouterr().err
    assert "umamba network cannot be exported" in err and not (tmp_path / "m.json").exists()


def test_evaluate_errors_name_what_is_missing(tmp_path, data_root, capsys):
    assert main(["evaluate", "--run", str(tmp_path / "nope")]) == 2
    assert "not a training run" in capsys.readouterr().err
    run = _make_run(tmp_path, data_root)
    (run / "best.json").unlink()
    assert main(["evaluate", "--run", str(run)]) == 2
    assert "no best weights" in capsys.readouterr().err
    assert main(["evaluate", "--run", str(run), "--weights", "last", "--data", str(tmp_path / "moved")]) == 2
    assert "data root not found" in capsys.readouterr().err
    assert main(["compare", str(run)]) == 2
    assert "not evaluated on val" in capsys.readouterr().err


def test_cohort_marker_is_written_and_does_not_disturb_case_discovery(data_root):
    from HNTumorSegLib.cases.hecktor import find_cases

    marker = json.loads((data_root / "cohort.json").read_text())
    assert marker["synthetic"] is True and marker["cases"] == 3
    cases, problems = find_cases(data_root)
    assert [c.case_id for c in cases] == VAL and problems == []


def test_spec_segmenter_predicts_like_segmenter_with_its_window():
    """unetr/umamba weights go through Segmenter's own prediction (sliding window, TTA) unchanged."""
    from HNTumorSegLib.pipeline.sliding_window import InferenceWindow, sliding_window_logits
    from HNTumorSegTraining.evaluate import SpecSegmenter

    torch.manual_seed(0)
    model = build_from_spec(make_spec("umamba", channels=TINY, d_state=4, scan_chunk=4))
    window = InferenceWindow((16, 32, 32))
    x = np.random.default_rng(0).random((2, 32, 64, 64), dtype=np.float32)
    got = SpecSegmenter(model, window, device="cpu").predict_window(x)
    with torch.inference_mode():
        expected = sliding_window_logits(model.eval(), torch.from_numpy(x)[None], window).argmax(1)[0]
    assert np.array_equal(got, expected.numpy().astype(np.uint8))
    tta = SpecSegmenter(model, window, device="cpu", tta=True).predict_window(x)
    assert tta.shape == got.shape
