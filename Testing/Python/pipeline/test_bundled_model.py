"""The bundled phantom model: a verified, honestly labelled file that segments phantoms it never saw.

The model was fine-tuned with ``Training/recipes/robust_phantom_model.sh`` on phantoms of three centre
styles (classic, legacy, digital; cohort seed 11, phantom seeds 1 100 000 + index) and evaluated on
held-out cases of those styles and on a fourth style it never saw (endemic). Its JSON records both
evaluations; the floors below are what it measured, rounded down, so a weaker model cannot be
shipped under this name unnoticed. The issue's targets (held out GTVp 0.85 / GTVn 0.75, unseen
0.75 / 0.60) are not met yet: see the README. The per-case checks use classic phantoms with other
seeds (the Slicer self-test runs the first one).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from HNTumorSegLib.cli.commands import DEMO_SEED, main
from HNTumorSegLib.pipeline.inference import Segmenter, default_model_path
from HNTumorSegLib.evaluation.metrics import dice
from HNTumorSegLib.pipeline.model_file import load_model, model_paths
from HNTumorSegLib.phantom import make_phantom

#: Size limit of the bundled model (weights + JSON).
MAX_BYTES = 25 * 1024 * 1024


@pytest.fixture(scope="module")
def segmenter() -> Segmenter:
    return Segmenter(device="cpu")


#: (evaluation, structure) -> floor of the per-case mean Dice recorded in the model JSON (measured:
#: held out 0.801 / 0.588 on 26 cases, unseen style 0.673 / 0.584 on 24 cases).
RECORDED_DICE_FLOORS = {("heldout_training_styles", "GTVp"): 0.80, ("heldout_training_styles", "GTVn"): 0.58,
                        ("unseen_style", "GTVp"): 0.67, ("unseen_style", "GTVn"): 0.58}
#: GTVp volume predicted GTVn (pooled), the issue's limit (measured 0.049 held out, 0.013 unseen).
MAX_GTVP_AS_GTVN = 0.05


def test_the_bundled_model_is_verified_small_and_says_what_it_is():
    path = default_model_path()
    loaded = load_model(path)  # sha256 and shapes checked
    paths = model_paths(path)
    assert paths.weights.stat().st_size + paths.json.stat().st_size <= MAX_BYTES
    meta = loaded.meta
    trained = meta["trained_on"]
    assert trained["synthetic"] is True and trained["train_cases"] >= 190
    assert "not for clinical use" in meta["intended_use"].lower()
    cohort = trained["cohort"]
    assert set(cohort["styles"]) == {"classic", "legacy", "digital"}
    phantom_seeds = {cohort["seed"] * 100_000 + i for i in cohort["indices"]}
    assert not phantom_seeds & {DEMO_SEED, 9001, 424242}  # the demo and the cases below were never trained on
    evaluations = meta["metrics"]["evaluations"]
    heldout, unseen = evaluations["heldout_training_styles"], evaluations["unseen_style"]
    assert heldout["split"] == "val" and heldout["cases"] >= 25 and unseen["cases"] >= 20
    assert set(unseen["per_centre"]) == {"PNE"} and "PNE" not in trained["centres"]  # a style never seen
    for (name, structure), floor in RECORDED_DICE_FLOORS.items():
        assert evaluations[name]["overall"][structure]["dice_mean"] >= floor, (name, structure)
    for evaluation in (heldout, unseen):
        assert evaluation["overall"]["confusion"]["GTVp_as_GTVn"]["pooled"] < MAX_GTVP_AS_GTVN
        assert evaluation["postprocess"] == {"rules": meta["postprocess"]["rules"]}
    assert meta["inference"]["patch_size"] == meta["training"]["patch_size"]
    # the clean-up was chosen on phantoms apart from both the training and the held-out cases: split
    # "all" is refused for the run's own cache
    chosen_on = meta["postprocess"]["chosen_on"]
    assert chosen_on["cases"] >= 60 and chosen_on["split"] == "all" and chosen_on["cache"] != "cache"


@pytest.mark.parametrize("seed,fov,n_nodes", [(9001, "head", 2), (424242, "whole_body", 3)])
def test_unseen_phantoms_are_segmented(segmenter, seed, fov, n_nodes):
    case = make_phantom(seed, fov, n_nodes=n_nodes)
    label = segmenter.segment(case.ct, case.pet).label
    pred, truth = sitk.GetArrayViewFromImage(label), sitk.GetArrayViewFromImage(case.label)
    assert dice(pred, truth, 1) >= 0.80
    assert dice(pred, truth, 2) >= 0.70


def test_demo_runs_end_to_end_with_the_bundled_model(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--device", "cpu"]) == 0, capsys.readouterr().err
    report = json.loads(next(out.glob("*_seg.json")).read_text())
    assert report["model"]["file"].endswith("hntumorseg_phantom_psam.json")
    assert report["postprocess_applied"] is True and report["model"]["postprocess"]["rules"]
    # A summary of the model, not its training record (200 case indices, settings, per-centre metrics).
    model = report["model"]
    assert set(model) == {"name", "file", "weights_sha256", "network", "trained_on", "synthetic", "intended_use",
                          "inference", "postprocess"}
    assert model["name"] == "hntumorseg_phantom_psam" and model["synthetic"] is True
    assert model["trained_on"].startswith("synthetic PET/CT phantoms") and "194 train" in model["trained_on"]
    assert "\n" not in model["trained_on"] and len(json.dumps(model)) < 1500
    assert report["reference"]["phantom"]["seed"] == DEMO_SEED
    # measured 0.764 / 0.780 with this model (the previous, classic-only model did better on this classic case)
    assert report["reference"]["dice"]["GTVp"] >= 0.75 and report["reference"]["dice"]["GTVn"] >= 0.75
    assert (out / next(out.glob("*_overlay.png")).name).stat().st_size > 0
    # every lesion on its own: they add up to the structures, with the network's confidence and a side
    lesions = report["lesions"]
    for name, total in report["structures"].items():
        rows = [row for row in lesions if row["structure"] == name]
        assert [row["id"] for row in rows] == [f"{name}_{k}" for k in range(1, len(rows) + 1)]
        assert sum(row["volume_ml"] for row in rows) == pytest.approx(total["volume_ml"])
        assert all(0.0 < row["confidence_mean"] <= row["confidence_max"] <= 1.0 for row in rows)
    truth = report["reference"]["phantom"]
    largest_node = max(truth["nodes"], key=lambda n: np.prod(n["semi_axes_mm"]))
    found = min((row for row in lesions if row["structure"] == "GTVn"),
                key=lambda row: np.linalg.norm(np.subtract(row["centroid_mm"], largest_node["centre_mm"])))
    assert np.linalg.norm(np.subtract(found["centroid_mm"], largest_node["centre_mm"])) < 5.0
    assert found["side"] == {"L": "left", "R": "right"}[largest_node["side"]]
    assert found["confidence_mean"] > 0.7 and not found["review"]
    printed = capsys.readouterr().out
    assert f"    {found['id']}: " in printed
