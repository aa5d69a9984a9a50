"""The click model's training (``HNTumorSegTraining.click_model``): samples, baseline, training, model file.

Phantoms are drawn with a 64-voxel CT matrix (8 mm in-plane voxels: a node is a few label voxels), so a sample
takes a fraction of a second; the network is the real one (the model file must pass the library's
:class:`~HNTumorSegLib.editing.click_model.ClickModel` checks), trained for two steps on one thread.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from HNTumorSegLib.editing.click_model import CONTRACT, CROP_VOXELS, ClickModel, crop_grid, crops, network_inputs
from HNTumorSegLib.errors import InputError, ModelFileError
from HNTumorSegLib.imaging.components import lesion_ids
from HNTumorSegLib.imaging.geometry import Geometry
from HNTumorSegLib.network import build_network
from HNTumorSegLib.pipeline.model_file import save_model
from HNTumorSegTraining.click_model import (NETWORK, Samples, draw_phantom, export, load_samples, main,
                                            make_samples, model_metadata, node_samples, sample_path,
                                            threshold_region, train)

pytestmark = pytest.mark.usefixtures("one_torch_thread")

CT_MATRIX = 64
#: Phantoms with three nodes (training), two (validation) and none.
TRAIN_SEED, VAL_SEED, NO_NODES_SEED = 940004, 940008, 940005
CENTRE = (CROP_VOXELS // 2,) * 3


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> Path:
    """The three phantoms' sample files."""
    folder = tmp_path_factory.mktemp("click_samples")
    assert make_samples([TRAIN_SEED, VAL_SEED, NO_NODES_SEED], folder, ct_matrix=CT_MATRIX, progress=False) == {}
    return folder


def test_samples_are_crops_centred_on_the_clicked_lesion():
    samples = node_samples(TRAIN_SEED, ct_matrix=CT_MATRIX)
    assert [s.kind for s in samples] == ["peak", "deep", "random"] * 3  # three nodes, three clicks each
    for s in samples:
        assert s.ct.shape == s.pet.shape == s.target.shape == (CROP_VOXELS,) * 3
        assert s.ct.dtype == s.pet.dtype == np.float16 and s.target.dtype == bool
        assert s.target.any() and not s.target.all()
        assert -1024 <= s.ct.min() and s.ct.max() < 3000 and s.pet.min() >= 0  # air is -1024, outside -1000
        if s.kind != "random":  # the click is a voxel of the lesion (the random one is jittered off it)
            assert s.target[CENTRE]
    peak = samples[0]
    assert peak.pet[CENTRE] > 2 * np.median(peak.pet)  # the click is on uptake
    assert 26 * np.count_nonzero(peak.target) < peak.target.size  # the clicked node, not the neck
    again = node_samples(TRAIN_SEED, ct_matrix=CT_MATRIX)  # a function of the seed alone
    assert all(np.array_equal(a.pet, b.pet) and np.array_equal(a.target, b.target) for a, b in zip(samples, again))


def test_sample_files_resume_and_load(folder: Path):
    files = [sample_path(folder, s) for s in (TRAIN_SEED, VAL_SEED, NO_NODES_SEED)]
    stamps = [os.stat(f).st_mtime_ns for f in files]
    assert make_samples([TRAIN_SEED, VAL_SEED, NO_NODES_SEED], folder, progress=False) == {}
    assert [os.stat(f).st_mtime_ns for f in files] == stamps  # nothing drawn again
    loaded = load_samples(folder, [TRAIN_SEED, NO_NODES_SEED])
    assert loaded.phantoms == [TRAIN_SEED, NO_NODES_SEED] and len(loaded) == 9  # a phantom without nodes is read
    assert loaded.counts() == {"peak": 3, "deep": 3, "random": 3}
    expected = node_samples(TRAIN_SEED, ct_matrix=CT_MATRIX)
    assert np.array_equal(loaded.ct, np.stack([s.ct for s in expected]))
    assert np.array_equal(loaded.target, np.stack([s.target for s in expected]))
    assert len(load_samples(folder)) == 15
    with pytest.raises(InputError, match="no click samples"):
        load_samples(folder, [NO_NODES_SEED])


def test_threshold_region_is_the_hot_ball_at_the_click():
    zz, yy, xx = np.ogrid[:CROP_VOXELS, :CROP_VOXELS, :CROP_VOXELS]
    r2 = (zz - 24) ** 2 + (yy - 25) ** 2 + (xx - 23) ** 2
    ball = r2 <= 16  # 8 mm radius
    pet = np.where(ball, 10.0, 1.0).astype(np.float32)
    pet[(zz - 24) ** 2 + (yy - 25) ** 2 + (xx - 33) ** 2 <= 9] = 12.0  # a hotter node 20 mm away, not touching
    assert np.array_equal(threshold_region(pet), ball)


def test_train_export_and_load(folder: Path, tmp_path: Path):
    train_set, val_set = load_samples(folder, [TRAIN_SEED]), load_samples(folder, [VAL_SEED])
    lines: list[str] = []
    result = train(train_set, val_set, budget_s=120, batch=2, max_steps=2, eval_every=1, log=lines.append)
    assert result.steps == 2 and [h["step"] for h in result.history] == [1, 2]
    assert len(lines) == 3 and "41 % threshold" in lines[0]
    assert set(result.val_dice) == {"all", "peak", "deep", "random"}
    assert 0.0 <= result.val_dice["all"] <= 1.0 and 0.3 < result.val_dice_threshold_41["all"] <= 1.0
    settings = {"seeds": f"{TRAIN_SEED}:{TRAIN_SEED + 1}", "val_seeds": f"{VAL_SEED}:{VAL_SEED + 1}"}
    _, json_path = export(result.network, tmp_path / "clicks", model_metadata(result, train_set, val_set, settings, {}))
    meta = json.loads(json_path.read_text())
    assert meta["click_model"] == {**CONTRACT, "structure": "GTVn"}
    assert meta["trained_on"]["samples"] == 9 and meta["trained_on"]["steps"] == 2
    assert meta["metrics"]["val_dice"] == result.val_dice["all"]
    assert meta["metrics"]["val_dice_threshold_41"] == result.val_dice_threshold_41["all"]

    model = ClickModel(json_path)
    case = draw_phantom(VAL_SEED, np.random.default_rng(VAL_SEED), CT_MATRIX)
    grid = Geometry.of(case.label)
    ids, _ = lesion_ids(sitk.GetArrayViewFromImage(case.label) == 2)
    index = np.argwhere(ids == 1)[0]
    point = grid.index_to_point(index[::-1])
    box = grid.subgrid((index[::-1] - [3, 3, 2]).tolist(), [7, 7, 5])
    probability = model.probability(case.ct, case.pet, box, point)
    assert probability.shape == (5, 7, 7) and np.isfinite(probability).all()
    assert probability.min() >= 0.0 and probability.max() <= 1.0
    # on the crop's own grid: the trained network's output, so the file holds the weights trained
    ct, pet = crops(case.ct, case.pet, point)
    with torch.inference_mode():
        own = torch.softmax(result.network(torch.from_numpy(network_inputs(ct[None], pet[None]))), 1)[0, 1].numpy()
    on_crop = model.probability(case.ct, case.pet, Geometry.of(crop_grid(point)), point)
    np.testing.assert_allclose(on_crop, own, atol=1e-5)


def test_a_model_without_the_click_entry_is_refused(tmp_path: Path):
    save_model(build_network(NETWORK), NETWORK, tmp_path / "segmenter", metadata={"trained_on": "nothing"})
    with pytest.raises(ModelFileError, match="not a click model"):
        ClickModel(tmp_path / "segmenter.json")
    with pytest.raises(ValueError, match="click_model"):
        export(build_network(NETWORK), tmp_path / "x", {"click_model": {}})


def test_command_trains_and_writes_a_click_model(folder: Path, tmp_path: Path, capsys):
    out = tmp_path / "models" / "clicks"
    args = ["--out", str(out), "--data", str(folder), "--seeds", f"{TRAIN_SEED}:{TRAIN_SEED + 2}",
            "--val-seeds", f"{VAL_SEED}:{VAL_SEED + 1}", "--budget-s", "120", "--max-steps", "1",
            "--ct-matrix", str(CT_MATRIX), "--no-progress"]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert "step 1 " in printed and f"wrote {out}.json" in printed
    assert sample_path(folder, TRAIN_SEED + 1).is_file()  # the missing phantom was drawn
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["trained_on"]["seeds"] == f"{TRAIN_SEED}:{TRAIN_SEED + 2}" and meta["trained_on"]["phantoms"] == 2
    assert ClickModel(out).structure == "GTVn"


@pytest.mark.parametrize("change, message", [
    ({"--val-seeds": "940004:940006"}, "share 1 phantoms"),
    ({"--out": "."}, "a folder"),
    ({"--ct-matrix": "32"}, "give 64 or more"),
])
def test_command_mistakes_are_one_line(tmp_path: Path, capsys, change: dict, message: str):
    options = {"--out": str(tmp_path / "m"), "--data": str(tmp_path / "d"), "--seeds": "940000:940005",
               "--val-seeds": "940008:940009", "--budget-s": "10", **change}
    assert main([v for item in options.items() for v in item]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "d").exists()  # refused before anything was drawn


@pytest.mark.parametrize("option, value", [("--seeds", "5:3"), ("--seeds", "x"), ("--budget-s", "0"),
                                           ("--budget-s", "nan"), ("--workers", "0")])
def test_command_refuses_bad_values(tmp_path: Path, capsys, option: str, value: str):
    options = {"--out": str(tmp_path / "m"), "--data": str(tmp_path / "d"), "--seeds": "0:2", "--val-seeds": "2:3",
               "--budget-s": "10", option: value}
    with pytest.raises(SystemExit) as exit_info:
        main([v for item in options.items() for v in item])
    assert exit_info.value.code == 2 and option in capsys.readouterr().err


def test_samples_dataclass_counts_kinds():
    empty = np.zeros((2,) + (CROP_VOXELS,) * 3, np.float16)
    samples = Samples(empty, empty, empty.astype(bool), np.array(["peak", "random"]), [1])
    assert len(samples) == 2 and samples.counts() == {"peak": 1, "deep": 0, "random": 1}
