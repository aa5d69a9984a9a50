"""``hntumorseg-train postprocess``: the exact Dice shortcut, the choice, and the run-to-export path."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from HNTumorSegLib.imaging.geometry import LATTICE_SPACING
from HNTumorSegLib.errors import InputError
from HNTumorSegLib.evaluation.metrics import dice
from HNTumorSegLib.pipeline.model_file import load_model
from HNTumorSegLib.pipeline.postprocess import ComponentFilter, StructureRule
from HNTumorSegLib.pipeline.preprocess import PREPROCESSING_VERSION
from HNTumorSegTraining.cli import main
from HNTumorSegTraining.evaluate import make_segmenter
from HNTumorSegTraining.export import portable, same_clean_up
from HNTumorSegTraining.models import build_from_spec, make_spec
from HNTumorSegTraining.phantom_cohort import write_cohort
from HNTumorSegTraining.postprocess_search import (CRITERIA, CaseStructure, best_rule, candidate_rules,
                                                    case_structures, sign_test)
from HNTumorSegTraining.prepare import prepare
from HNTumorSegTraining.weights import save_weights

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _random_case(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Blobby random prediction, probabilities and reference (reference may lack a structure)."""
    shape = (12, 24, 24)
    label = np.zeros(shape, np.uint8)
    reference = np.zeros(shape, np.uint8)
    for target in (label, reference):
        for _ in range(rng.integers(0, 5)):
            z, y, x = rng.integers(0, 10), rng.integers(0, 20), rng.integers(0, 20)
            d = rng.integers(1, 4)
            target[z:z + d, y:y + d + 1, x:x + d + 1] = rng.integers(1, 3)
    prob = rng.dirichlet(np.ones(3), size=shape).transpose(3, 0, 1, 2).astype(np.float32)
    return label, prob, reference


def test_dice_from_component_sums_equals_dice_after_applying_the_rule():
    rng = np.random.default_rng(4)
    rules = candidate_rules()
    for _ in range(12):
        label, prob, reference = _random_case(rng)
        per = case_structures(label, prob, reference)
        for rule in rules[::7]:
            for value, name in ((1, "GTVp"), (2, "GTVn")):
                cleaned = ComponentFilter({name: rule}).apply(label, prob, LATTICE_SPACING)
                expected = dice(cleaned, reference, value)
                assert per[name].dice(rule) == pytest.approx(expected, abs=1e-12), (rule, name)


def _item(components: list[tuple[int, float, int]], reference: int) -> CaseStructure:
    sizes, peaks, hits = (np.array(v) for v in zip(*components)) if components else (np.zeros(0),) * 3
    return CaseStructure(np.asarray(sizes, int), np.asarray(peaks, float), np.asarray(hits, int), reference)


def test_the_choice_removes_islands_and_keeps_the_gentlest_rule_on_ties():
    # a lesion with a faint 10-voxel island; a lesion-free case with a faint 30-voxel island
    items = [_item([(1000, 0.97, 900), (10, 0.6, 0)], 1000), _item([(30, 0.65, 0)], 0)]
    rule, before, after = best_rule(items)
    assert before == pytest.approx((2 * 900 / 2010 + 0.0) / 2)
    assert after == pytest.approx((2 * 900 / 2000 + 1.0) / 2)
    assert rule.min_peak_probability > 0.65 or rule.min_volume_ml > 0.09 or rule.largest_only
    clean = [_item([(1000, 0.97, 900)], 1000), _item([], 0)]
    assert best_rule(clean)[0] == StructureRule()  # nothing to gain: no clean-up


def test_the_search_keeps_the_strongest_component_where_a_threshold_would_empty_a_case():
    """A 1.2 mL island beside a confident primary; in another case a weak 0.6 mL primary. Only a peak
    threshold separates the island (0.6) from the weak primary (0.65), and it empties the second case
    unless the strongest component stays."""
    items = [_item([(1000, 0.97, 900), (400, 0.6, 0)], 1000), _item([(200, 0.65, 180)], 200)]
    rule, before, after = best_rule(items)
    assert rule == StructureRule(0.0, 0.7, False, True)
    assert after == pytest.approx((2 * 900 / 2000 + 2 * 180 / 400) / 2) and after > before


def test_sign_test_counts_changed_cases_only():
    assert sign_test([0.1] * 5) == (5, 0, pytest.approx(1 / 32))
    assert sign_test([0.1, -0.1]) == (1, 1, pytest.approx(3 / 4))
    assert sign_test([0.0, 1e-12, 0.2, 0.3]) == (2, 0, pytest.approx(1 / 4))  # unchanged cases do not count
    assert sign_test([]) == (0, 0, 1.0)


def test_the_sign_criterion_refuses_a_rule_whose_mean_rests_on_one_case():
    """One lesion-free case gains 1.0 from dropping an island; two cases lose a true 50-voxel piece."""
    island = _item([(30, 0.65, 0)], 0)
    piece = _item([(1000, 0.97, 900), (50, 0.65, 50)], 1000)
    items = [island, piece, piece]
    rule, before, after = best_rule(items, "mean")
    assert rule != StructureRule() and after > before  # the mean takes it: (1 + 0.9 + 0.9) / 3 > 0.62
    rule, before, after = best_rule(items, "sign")
    assert rule == StructureRule() and after == before  # 1 case improved, 2 worsened
    # five lesion-free cases, each with a false island, and one it does not touch: p = 1/32
    items = [island] * 5 + [_item([(1000, 0.97, 900)], 1000)]
    rule, before, after = best_rule(items, "sign")
    assert rule != StructureRule() and after == pytest.approx(1.0 * 5 / 6 + 2 * 900 / 2000 / 6)
    with pytest.raises(InputError, match="criterion"):
        best_rule(items, "median")


def test_cli_criterion_choices_are_the_library_s(capsys):
    from HNTumorSegTraining.cli import build_parser

    for criterion in CRITERIA:
        args = build_parser().parse_args(["postprocess", "--run", "r", "--criterion", criterion])
        assert args.criterion == criterion
    assert build_parser().parse_args(["postprocess", "--run", "r"]).criterion == CRITERIA[0]
    with pytest.raises(SystemExit):
        build_parser().parse_args(["postprocess", "--run", "r", "--criterion", "median"])


def test_export_compares_clean_ups_as_rules_not_as_text():
    """An entry written before keep_strongest existed is the same clean-up as the one written with it off."""
    old = {"rules": {"GTVn": {"min_volume_ml": 0.5, "min_peak_probability": 0.9, "largest_only": False}}}
    new = {"rules": {"GTVn": {**old["rules"]["GTVn"], "keep_strongest": False}}}
    assert same_clean_up(old, new) and same_clean_up(None, None)
    assert not same_clean_up(old, {"rules": {"GTVn": {**new["rules"]["GTVn"], "keep_strongest": True}}})
    assert not same_clean_up(old, None) and not same_clean_up({"rules": {"GTVx": {}}}, old)


def _assembled_run(tmp_path: Path) -> Path:
    """Three phantoms prepared into a cache (two train, one val) and a run with tiny psam weights
    (whole-window inference: a sliding window would only make the test slower)."""
    root, cache, run = tmp_path / "data", tmp_path / "cache", tmp_path / "run"
    write_cohort(root, 3, seed=2, progress=False)
    prepare(root, cache, progress=False, val_counts={"PHA": 1, "PHB": 0, "PHC": 0})
    spec = make_spec("psam", channels=(4, 8, 16, 32, 64), psam_channels=[4, 4, 4])
    torch.manual_seed(0)
    run.mkdir()
    (run / "run.json").write_text(json.dumps({"cache": str(cache), "model_spec": spec, "device": "cpu"}))
    save_weights(build_from_spec(spec), spec, run / "last",
                 {"preprocessing_version": PREPROCESSING_VERSION, "training": {"epoch": 1}})
    return run


def test_cli_tunes_on_training_cases_then_evaluate_and_export_carry_the_rule(tmp_path, capsys):
    run = _assembled_run(tmp_path)
    assert main(["postprocess", "--run", str(run), "--weights", "last", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "[2/2]" in out and "GTVp: drop components" in out and "on 2 tuning cases" in out
    entry = json.loads((run / "last.json").read_text())["postprocess"]
    assert entry["chosen_on"]["split"] == "train" and entry["chosen_on"]["cases"] == 2
    chosen = ComponentFilter.from_meta({"postprocess": entry})
    assert set(chosen.rules) == {"GTVp", "GTVn"}
    for name, scores in entry["chosen_on"]["window_grid_dice"].items():
        assert scores["mean_dice_after"] >= scores["mean_dice_before"]

    assert make_segmenter(run / "last.json", None, device="cpu").postprocess == chosen
    assert make_segmenter(run / "last.json", None, device="cpu", postprocess=False).postprocess is None

    # the validation cases of the run's own cache are refused (one line, nothing written)
    before = (run / "last.json").read_text()
    assert main(["postprocess", "--run", str(run), "--weights", "last", "--split", "val"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "validation cases" in err[0] and (run / "last.json").read_text() == before

    # evaluate applies and records the rule; export carries it
    assert main(["evaluate", "--run", str(run), "--weights", "last", "--device", "cpu", "--limit", "1",
                 "--quiet"]) == 0
    summary_path = run / "evaluation" / "val-last" / "summary.json"
    summary = json.loads(summary_path.read_text())
    assert summary["postprocess"] == {"rules": entry["rules"]}
    assert main(["export", "--run", str(run), "--weights", "last", "--out", str(tmp_path / "m")]) == 0
    meta = load_model(tmp_path / "m").meta
    assert meta["postprocess"] == portable(entry) and meta["metrics"]["split"] == "val"
    assert meta["postprocess"]["chosen_on"]["cache"] == "cache"  # the folder's name, not the machine's path

    # an evaluation made with another clean-up (here: none) is stale for export
    summary["postprocess"] = None
    summary_path.write_text(json.dumps(summary))
    capsys.readouterr()
    assert main(["export", "--run", str(run), "--weights", "last", "--out", str(tmp_path / "m2")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "evaluate again" in err[0] and not (tmp_path / "m2.json").exists()


def _second_run(first: Path, name: str, seed: int) -> Path:
    """Another run on ``first``'s cache: same spec, other random weights."""
    run = first.parent / name
    run.mkdir()
    info = json.loads((first / "run.json").read_text())
    (run / "run.json").write_text(json.dumps(info))
    torch.manual_seed(seed)
    save_weights(build_from_spec(info["model_spec"]), info["model_spec"], run / "last",
                 {"preprocessing_version": PREPROCESSING_VERSION, "training": {"epoch": 1}})
    return run


def test_an_ensemble_s_rule_is_chosen_on_its_averaged_output_and_export_carries_it(tmp_path, capsys):
    from HNTumorSegTraining.cache import open_case
    from HNTumorSegTraining.postprocess_search import choose

    a = _assembled_run(tmp_path)
    b = _second_run(a, "run_b", seed=1)
    weights_before = [(r / "last.json").read_text() for r in (a, b)]
    rule = tmp_path / "rules" / "ensemble_rule.json"

    # several runs: the rule belongs to none of them, so it needs its own file
    assert main(["postprocess", "--run", str(a), "--run", str(b), "--weights", "last", "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--out" in err[0]

    assert main(["postprocess", "--run", str(a), "--run", str(b), "--weights", "last", "--device", "cpu",
                 "--quiet", "--out", str(rule)]) == 0
    assert "--postprocess-rule" in capsys.readouterr().out
    assert [(r / "last.json").read_text() for r in (a, b)] == weights_before  # the members' own rules stay
    written = json.loads(rule.read_text())
    digests = [load_model(r / "last").members[0].tensors_sha256 for r in (a, b)]
    assert [m["tensors_sha256"] for m in written["members"]] == digests
    assert written["chosen_on"]["averaged_over"] == 2 and written["chosen_on"]["cases"] == 2

    # the same choice, made here from the two networks' probabilities averaged by hand
    cache = Path(json.loads((a / "run.json").read_text())["cache"])
    segs = [make_segmenter(r / "last.json", None, device="cpu", postprocess=False) for r in (a, b)]
    found = {"GTVp": [], "GTVn": []}
    for case_id in ("PHB-001", "PHC-001"):
        case = open_case(cache, case_id)
        image = np.asarray(case.image, dtype=np.float32)
        prob = (segs[0].probabilities(image) + segs[1].probabilities(image)) / np.float32(2)
        for name, item in case_structures(prob.argmax(axis=0).astype(np.uint8), prob,
                                          np.asarray(case.label)).items():
            found[name].append(item)
    chosen, scores = choose(found)
    assert written["rules"] == chosen.to_dict()["rules"]
    for name, s in scores.items():
        assert written["chosen_on"]["window_grid_dice"][name]["mean_dice_before"] == pytest.approx(
            s["mean_dice_before"], abs=2e-4)

    # export carries it; the evaluation of the exported file matches it
    model = tmp_path / "m" / "ens"
    assert main(["export", "--run", str(a), "--run", str(b), "--weights", "last", "--postprocess-rule", str(rule),
                 "--unevaluated", "--out", str(model)]) == 0
    meta = load_model(model).meta
    assert meta["postprocess"]["rules"] == written["rules"]
    assert meta["postprocess"]["chosen_on"]["averaged_over"] == 2
    assert [m["run"] for m in meta["postprocess"]["chosen_for"]] == ["run", "run_b"]
    from HNTumorSegTraining.export import absolute_paths_in

    assert absolute_paths_in(meta) == []
    ev = tmp_path / "ev"
    assert main(["evaluate", "--model", str(model.with_suffix(".json")), "--data", str(tmp_path / "data"),
                 "--out", str(ev), "--device", "cpu", "--limit", "1", "--quiet"]) == 0
    assert json.loads((ev / "summary.json").read_text())["postprocess"] == {"rules": written["rules"]}
    assert main(["export", "--run", str(a), "--run", str(b), "--weights", "last", "--postprocess-rule", str(rule),
                 "--evaluation", f"heldout={ev}", "--out", str(model)]) == 0
    capsys.readouterr()

    # refused in one line, nothing written: a rule chosen for other weights; both flags; a damaged file
    refused = [(["--run", str(a), "--postprocess-rule", str(rule), "--unevaluated"], "chosen for other weights"),
               (["--run", str(a), "--run", str(b), "--postprocess-rule", str(rule), "--no-postprocess",
                 "--unevaluated"], "contradict"),
               (["--run", str(a), "--run", str(b), "--postprocess-rule", str(tmp_path / "none.json"),
                 "--unevaluated"], "no such clean-up rule file")]
    damaged = tmp_path / "damaged.json"
    damaged.write_text(rule.read_text()[:-40])
    refused.append((["--run", str(a), "--run", str(b), "--postprocess-rule", str(damaged), "--unevaluated"],
                    "not a readable clean-up rule file"))
    for args, needle in refused:
        assert main(["export", "--weights", "last", "--out", str(tmp_path / "x"), *args]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and needle in err[0], (needle, err)
        assert not list(tmp_path.glob("x.*"))


def test_one_run_s_rule_can_go_to_a_file_and_is_then_evaluated_with_the_exported_file(tmp_path, capsys):
    run = _assembled_run(tmp_path)
    before = (run / "last.json").read_text()
    rule = tmp_path / "rule.json"
    assert main(["postprocess", "--run", str(run), "--weights", "last", "--device", "cpu", "--quiet",
                 "--out", str(rule)]) == 0
    assert (run / "last.json").read_text() == before and "averaged_over" not in json.loads(rule.read_text())["chosen_on"]
    # the run's own evaluation was made with its own clean-up: export asks for one of the exported file
    assert main(["export", "--run", str(run), "--weights", "last", "--postprocess-rule", str(rule),
                 "--out", str(tmp_path / "m")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "evaluate --model OUT.json" in err[0] and not (tmp_path / "m.json").exists()
    assert main(["export", "--run", str(run), "--weights", "last", "--postprocess-rule", str(rule),
                 "--unevaluated", "--out", str(tmp_path / "m")]) == 0
    assert load_model(tmp_path / "m").meta["postprocess"]["rules"] == json.loads(rule.read_text())["rules"]
