"""Training through its two entry points, and evidence that it learns.

``hntumorseg-train fit`` (``HNTumorSegTraining.cli.main``) and ``python -m HNTumorSegTraining.fit``
(what ``torchrun`` runs) on tiny caches in the cache's file format: overfitting two cases makes
the loss fall and the Dice rise; the learning rate follows warm-up then cosine at known steps;
``--batch-dice``, ``--init-weights``, ``--fold`` and ``--augment`` do what they say through the
command line. The networks are tiny (widths 4..64) and the windows 16 x 48 x 48, trained as one
patch (so the validation's single tile normalises like training), so each run takes seconds on
two CPU cores.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from HNTumorSegLib.imaging.image_io import write_json, write_npy
from HNTumorSegLib.pipeline.model_file import load_model
from HNTumorSegLib.pipeline.preprocess import PREPROCESSING_VERSION
from HNTumorSegLib.pipeline.sliding_window import RECORDED_BATCH
from HNTumorSegTraining import cache as cache_module
from HNTumorSegTraining import fit as fit_module
from HNTumorSegTraining.augment import LightAugmentation, NnUNetAugmentation
from HNTumorSegTraining.cli import main
from HNTumorSegTraining.data import ValDataset
from HNTumorSegTraining.models import build_from_spec
from HNTumorSegTraining.runlog import read_history_csv
from HNTumorSegTraining.split import fold_split
from HNTumorSegTraining.validate import inference_window, validate

pytestmark = pytest.mark.usefixtures("one_torch_thread")

WINDOW = (16, 48, 48)
TINY = ["--channels", "4", "8", "16", "32", "64", "--model-option", "psam_channels=[4,4,4]"]
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


def lesion_case(k: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A primary (GTVp) and a node (GTVn), both bright on PET, GTVp denser and GTVn lighter on CT, placed by ``k``."""
    zz, yy, xx = np.ogrid[: WINDOW[0], : WINDOW[1], : WINDOW[2]]
    cz, cy, cx = 7 + k % 2, 18 + 2 * (k % 3), 14 + 2 * (k % 3)
    gtvp = ((zz - cz) / 3) ** 2 + ((yy - cy) / 6) ** 2 + ((xx - cx) / 6) ** 2 <= 1
    gtvn = ((zz - cz - 1) / 3) ** 2 + ((yy - cy - 12) / 5) ** 2 + ((xx - cx - 16) / 5) ** 2 <= 1
    label = np.zeros(WINDOW, np.uint8)
    label[gtvp], label[gtvn] = 1, 2
    image = np.empty((2, *WINDOW), np.float32)
    image[0], image[1] = 0.60, 0.20
    image[0][gtvp], image[0][gtvn] = 0.63, 0.56
    image[1][gtvp], image[1][gtvn] = 0.95, 0.60
    image += rng.normal(0, 0.01, image.shape).astype(np.float32)
    return image, label


def write_cache(root: Path, train: list[str], val: list[str], copies: dict[str, str] | None = None) -> Path:
    """A cache with a split.json; ``copies`` maps an id to the training id whose data it repeats."""
    rng = np.random.default_rng(0)
    data = {}
    for k, cid in enumerate(train + val):
        source = (copies or {}).get(cid)
        image, label = data[source] if source else lesion_case(k, rng)
        data[cid] = (image, label)
        folder = cache_module.case_dir(root, cid)
        folder.mkdir(parents=True)
        write_npy(image.astype(np.float16), folder / "image.npy")
        write_npy(label, folder / "label.npy")
        write_json({"version": PREPROCESSING_VERSION, "case_id": cid,
                    "pet_normalisation": {"mean": 1.0, "std": 1.5}}, folder / "provenance.json")
    (root / "split.json").write_text(json.dumps({"train": train, "val": val, "seed": 0}))
    return root


@pytest.fixture(scope="module")
def overfit_cache(tmp_path_factory) -> Path:
    """Two training cases; the validation case is a copy of the first, so validation Dice is training Dice."""
    return write_cache(tmp_path_factory.mktemp("overfit"), ["CHUM-001", "MDA-001"], ["USZ-001"],
                       copies={"USZ-001": "CHUM-001"})


@pytest.fixture(scope="module")
def fold_cache(tmp_path_factory) -> Path:
    train = [f"CHUM-{i:03d}" for i in range(1, 5)] + [f"MDA-{i:03d}" for i in range(1, 6)]
    return write_cache(tmp_path_factory.mktemp("folds"), train, ["HGJ-001", "MDA-009"])


def fit_args(cache: Path, out: Path, *extra: str) -> list[str]:
    return ["fit", "--cache", str(cache), "--model", "psam", "--out", str(out), *TINY, "--device", "cpu",
            "--patch-size", *map(str, WINDOW), *extra]


def run_json(out: Path) -> dict:
    return json.loads((out / "run.json").read_text())


# ------------------------------------------------------------------------------------------- learning
#: 20 epochs of 2 steps (4 draws, batch 2): 40 optimiser steps, warm-up 3 steps, then cosine to 0.
LEARN = ["--epochs", "20", "--samples-per-epoch", "4", "--batch-size", "2", "--lr", "3e-2", "--warmup-epochs", "1.5",
         "--p-fg", "1", "--augment", "off", "--val-every", "5", "--seed", "0"]


def test_overfitting_two_cases_through_the_command_line_lowers_the_loss_and_raises_the_dice(overfit_cache, tmp_path,
                                                                                              capsys):
    out = tmp_path / "run"
    assert main(fit_args(overfit_cache, out, *LEARN)) == 0
    assert "best validation mean Dice" in capsys.readouterr().out
    rows = read_history_csv(out / "history.csv")
    assert [int(r["step"]) for r in rows] == [2 * e for e in range(1, 21)]
    loss = [float(r["train_loss"]) for r in rows]
    first, last = loss[0], float(np.mean(loss[-3:]))
    assert last < 0.5 * first, loss                        # a clear fall (measured: 0.93 -> ~0.1)

    # Dice on the training data (the validation case is a copy of CHUM-001), by the training code's validation:
    # the untrained network (fit's initialisation: torch seeded with --seed, then built) against the trained one.
    run = run_json(out)
    spec = run["model_spec"]
    window = inference_window(spec, run["settings"]["patch_size"])
    # the weights say how to run them: the training patch, RECORDED_BATCH patches per forward call
    assert load_model(out / "last").meta["inference"] == {"patch_size": list(WINDOW), "overlap": 0.25,
                                                          "batch": RECORDED_BATCH}
    val_set = ValDataset(overfit_cache, ["USZ-001", "MDA-001"])
    torch.manual_seed(0)
    untrained = validate(build_from_spec(spec), val_set, window, torch.device("cpu"), None)
    trained = validate(load_model(out / "last").model, val_set, window, torch.device("cpu"), None)
    assert untrained["GTVp"] < 0.1 and untrained["GTVn"] < 0.1, untrained
    assert trained["GTVp"] > 0.8 and trained["GTVn"] > 0.7, trained   # measured: 0.99 and 0.97
    val_mean = [float(r["val_dice_mean"]) for r in rows if r["val_dice_mean"]]
    assert len(val_mean) == 4 and val_mean[-1] > 0.75 and val_mean[-1] > val_mean[0]

    # The learning rate of the last step of each epoch: linear warm-up over 3 steps, then cosine over 37 to 0.
    for epoch, row in enumerate(rows, start=1):
        step = 2 * epoch - 1                                 # 0-based index of the epoch's last step
        factor = (step + 1) / 3 if step < 3 else 0.5 * (1 + math.cos(math.pi * (step - 3) / 37))
        assert float(row["lr"]) == pytest.approx(3e-2 * factor, rel=1e-9, abs=1e-15), (epoch, row["lr"])
    assert float(rows[0]["lr"]) == pytest.approx(2e-2) and float(rows[1]["lr"]) == pytest.approx(3e-2 * 0.5 * (
        1 + math.cos(math.pi * 0 / 37)))


def test_python_dash_m_fit_the_torchrun_entry_point_trains_and_resumes(overfit_cache, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "HNTumorSegTraining.fit", *fit_args(overfit_cache, out)[1:], "--epochs", "1",
           "--max-steps-per-epoch", "2", "--workers", "1", "--val-every", "0"]
    proc = subprocess.run(cmd, env=SUBPROCESS_ENV, capture_output=True, text=True, encoding="utf-8", timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "augmentation default" in proc.stdout and "epoch 1/1 step 2" in proc.stdout
    assert run_json(out)["settings"]["augmentation"] == NnUNetAugmentation().record()
    assert (out / "last.safetensors").is_file() and not (out / "best.json").exists()   # never validated
    resumed = subprocess.run([sys.executable, "-m", "HNTumorSegTraining.fit", "--out", str(out), "--resume",
                              "--epochs", "2", "--device", "cpu"], env=SUBPROCESS_ENV, capture_output=True, text=True,
                             encoding="utf-8", timeout=300)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert f"resuming {out} after epoch 1" in resumed.stdout and "epoch 2/2 step 4" in resumed.stdout
    assert [r["step"] for r in read_history_csv(out / "history.csv")] == ["2", "4"]


# ------------------------------------------------------------------------------------------- options
def test_batch_dice_through_the_command_line(overfit_cache, tmp_path):
    common = ["--epochs", "1", "--max-steps-per-epoch", "1", "--batch-size", "2", "--p-fg", "0.5", "--augment", "off",
              "--val-every", "0", "--seed", "3"]
    assert main(fit_args(overfit_cache, tmp_path / "sample", *common)) == 0
    assert main(fit_args(overfit_cache, tmp_path / "batch", *common, "--batch-dice")) == 0
    assert run_json(tmp_path / "sample")["settings"]["batch_dice"] is False
    assert run_json(tmp_path / "batch")["settings"]["batch_dice"] is True
    assert load_model(tmp_path / "batch" / "last").meta["training"]["batch_dice"] is True
    per_sample = float(read_history_csv(tmp_path / "sample" / "history.csv")[0]["train_loss"])
    pooled = float(read_history_csv(tmp_path / "batch" / "history.csv")[0]["train_loss"])
    assert per_sample != pooled   # same batch, same initial weights: only the loss's reading differs


def test_init_weights_through_the_command_line(overfit_cache, tmp_path):
    common = ["--epochs", "1", "--max-steps-per-epoch", "2", "--augment", "off", "--val-every", "0"]
    assert main(fit_args(overfit_cache, tmp_path / "a", *common, "--seed", "0")) == 0
    # lr 0: AdamW leaves the weights as they started, so "last" shows where fine-tuning started.
    assert main(fit_args(overfit_cache, tmp_path / "b", *common, "--seed", "1", "--lr", "0",
                         "--init-weights", str(tmp_path / "a" / "last"))) == 0
    assert main(fit_args(overfit_cache, tmp_path / "c", *common, "--seed", "1", "--lr", "0")) == 0
    a, b, c = (load_model(tmp_path / n / "last") for n in "abc")
    assert all(torch.equal(a.model.state_dict()[k], v) for k, v in b.model.state_dict().items())
    assert not all(torch.equal(a.model.state_dict()[k], v) for k, v in c.model.state_dict().items())
    started = run_json(tmp_path / "b")["settings"]["init_weights"]
    assert started["sha256"] == a.meta["weights_sha256"] and b.meta["training"]["init_weights"] == started


def test_fold_through_the_command_line_uses_exactly_the_folds_cases(fold_cache, tmp_path, monkeypatch, capsys):
    seen: dict[str, list[str]] = {}

    class RecordingTrain(fit_module.TrainDataset):
        def __init__(self, cache, case_ids, **kw):
            seen["train"] = list(case_ids)
            super().__init__(cache, case_ids, **kw)

    class RecordingVal(fit_module.ValDataset):
        def __init__(self, cache, case_ids):
            seen["val"] = list(case_ids)
            super().__init__(cache, case_ids)

    monkeypatch.setattr(fit_module, "TrainDataset", RecordingTrain)
    monkeypatch.setattr(fit_module, "ValDataset", RecordingVal)
    out = tmp_path / "fold1"
    split = json.loads((fold_cache / "split.json").read_text())
    assert main(fit_args(fold_cache, out, "--epochs", "1", "--max-steps-per-epoch", "1", "--augment", "light",
                         "--fold", "1", "--folds", "3", "--fold-seed", "7")) == 0
    train, val = fold_split(split["train"], 1, 3, 7)
    assert seen == {"train": train, "val": val}
    assert len(val) == 3 and not set(val) & set(train) and set(train) | set(val) == set(split["train"])
    assert not (set(train) | set(val)) & set(split["val"])           # the split's own val cases stay unseen
    settings = run_json(out)["settings"]
    assert settings["train_ids"] == train and settings["val_ids"] == val
    assert {k: settings["cv"][k] for k in ("fold", "folds", "seed", "train_ids", "val_ids", "held_out_val_ids")} == {
        "fold": 1, "folds": 3, "seed": 7, "train_ids": train, "val_ids": val, "held_out_val_ids": split["val"]}
    assert load_model(out / "last").meta["training"]["cv"] == settings["cv"]
    assert "(fold 1 of 3)" in capsys.readouterr().out

    # --resume keeps the fold (and the augmentation); another fold is refused in one line.
    seen.clear()
    assert main(["fit", "--out", str(out), "--resume", "--epochs", "2", "--device", "cpu"]) == 0
    assert seen == {"train": train, "val": val} and run_json(out)["settings"]["cv"] == settings["cv"]
    assert run_json(out)["settings"]["augmentation"] == LightAugmentation().record()
    capsys.readouterr()
    assert main(["fit", "--out", str(out), "--resume", "--epochs", "3", "--device", "cpu", "--fold", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot resume with different settings" in err[0] and "cv" in err[0]
    assert main(["fit", "--out", str(out), "--resume", "--epochs", "3", "--device", "cpu", "--augment", "default"]) == 2
    assert "augmentation" in capsys.readouterr().err
    assert main(fit_args(fold_cache, tmp_path / "bad", "--epochs", "1", "--fold", "3", "--folds", "3")) == 2
    assert "fold must be an integer in [0, 3)" in capsys.readouterr().err


def test_folds_partition_the_training_cases_stratified_by_centre_and_seeded():
    from HNTumorSegTraining.split import fold_cases

    ids = ([f"MDA-{i:03d}" for i in range(1, 24)] + [f"CHUP-{i:03d}" for i in range(1, 8)]
           + [f"USZ-{i:03d}" for i in range(1, 3)] + [f"HMR_{i}" for i in range(1, 6)])
    for folds in (2, 3, 5):
        parts = fold_cases(ids, folds, seed=0)
        flat = [i for p in parts for i in p]
        assert sorted(flat) == sorted(ids) and len(flat) == len(set(flat))          # a partition
        assert max(map(len, parts)) - min(map(len, parts)) <= 1                      # balanced sizes
        for centre in ("MDA", "CHUP", "USZ", "HMR"):
            counts = [sum(i.startswith(centre) for i in p) for p in parts]
            assert max(counts) - min(counts) <= 1, (folds, centre, counts)           # each centre spread evenly
        assert fold_cases(list(reversed(ids)), folds, seed=0) == parts              # order does not matter
        assert fold_cases(ids, folds, seed=0) == parts                               # seeded
        assert fold_cases(ids, folds, seed=1) != parts
    with pytest.raises(ValueError, match="folds must be an integer >= 2"):
        fold_cases(ids, 1)
    with pytest.raises(ValueError, match="need at least 40 training cases"):
        fold_cases(ids, 40)
