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

from HNTumorSegLib.editing.click_model import (CONTRACT, CROP_VOXELS, ClickModel, crop_grid, crops,
                                                lesion_probability, network_inputs)
from HNTumorSegLib.errors import InputError, ModelFileError
from HNTumorSegLib.imaging.components import lesion_ids
from HNTumorSegLib.imaging.geometry import Geometry
from HNTumorSegLib.network import build_network
from HNTumorSegLib.pipeline.model_file import save_model
from HNTumorSegTraining.click_model import (NETWORK, SHARE_STEPS, Samples, as_mask, at_1mm, draw_phantom, export,
                                            lesion_loss, load_samples, main, make_samples, model_metadata,
                                            node_samples, sample_path, target_crop, threshold_region, train,
                                            training_batch, training_batches)

from conftest import stopped_group

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
        assert s.ct.dtype == s.pet.dtype == np.float16 and s.target.dtype == np.uint8
        assert as_mask(s.target).any() and not as_mask(s.target).all()
        edge = (s.target > 0) & (s.target < SHARE_STEPS)
        assert edge.any()  # the lesion's edge covers parts of voxels
        assert -1024 <= s.ct.min() and s.ct.max() < 3000 and s.pet.min() >= 0  # air is -1024, outside -1000
        if s.kind != "random":  # the click is a voxel of the lesion (the random one is jittered off it)
            assert as_mask(s.target)[CENTRE]
    peak = samples[0]
    assert peak.pet[CENTRE] > 2 * np.median(peak.pet)  # the click is on uptake
    assert 26 * np.count_nonzero(peak.target) < peak.target.size  # the clicked node, not the neck
    again = node_samples(TRAIN_SEED, ct_matrix=CT_MATRIX)  # a function of the seed alone
    assert all(np.array_equal(a.pet, b.pet) and np.array_equal(a.target, b.target) for a, b in zip(samples, again))


def test_sample_files_resume_and_load(folder: Path):
    files = [sample_path(folder, s) for s in (TRAIN_SEED, VAL_SEED, NO_NODES_SEED)]
    stamps = [os.stat(f).st_mtime_ns for f in files]
    assert make_samples([TRAIN_SEED, VAL_SEED, NO_NODES_SEED], folder, ct_matrix=CT_MATRIX, progress=False) == {}
    assert [os.stat(f).st_mtime_ns for f in files] == stamps  # nothing drawn again
    # files of another CT matrix (here: the fixture's 64 against the styles' own) are not taken as these phantoms'
    with pytest.raises(InputError, match=rf"s{TRAIN_SEED}.npz: drawn at --ct-matrix 64, not the styles' own CT"):
        make_samples([TRAIN_SEED, VAL_SEED], folder, progress=False)
    with pytest.raises(InputError, match=r"drawn at --ct-matrix 64, not --ct-matrix 96"):
        make_samples([TRAIN_SEED], folder, ct_matrix=96, progress=False)
    assert [os.stat(f).st_mtime_ns for f in files] == stamps
    loaded = load_samples(folder, [TRAIN_SEED, NO_NODES_SEED])
    assert loaded.phantoms == [TRAIN_SEED, NO_NODES_SEED] and len(loaded) == 9  # a phantom without nodes is read
    assert loaded.counts() == {"peak": 3, "deep": 3, "random": 3}
    expected = node_samples(TRAIN_SEED, ct_matrix=CT_MATRIX)
    assert np.array_equal(loaded.ct, np.stack([s.ct for s in expected]))
    assert np.array_equal(loaded.target, np.stack([s.target for s in expected]))
    assert len(load_samples(folder)) == 15
    with pytest.raises(InputError, match="no click samples"):
        load_samples(folder, [NO_NODES_SEED])


def test_prototype_files_of_masks_load_as_whole_shares(folder: Path, tmp_path: Path):
    with np.load(sample_path(folder, TRAIN_SEED)) as data:
        arrays = {k: data[k] for k in ("ct", "pet", "t", "kind")}
    np.savez(sample_path(tmp_path, 7), **{**arrays, "t": as_mask(arrays["t"])})
    np.savez(sample_path(tmp_path, 8), **{**arrays, "t": arrays["t"].astype(np.float32)})
    assert np.array_equal(load_samples(tmp_path, [7]).target, as_mask(arrays["t"]) * np.uint8(SHARE_STEPS))
    with pytest.raises(InputError, match="s8.npz: targets of type float32"):
        load_samples(tmp_path, [8])


def test_the_target_is_the_lesion_share_of_each_crop_voxel():
    lesion = sitk.Image([40, 40, 20], sitk.sitkFloat32)
    lesion.SetSpacing([1.0, 1.0, 3.0])
    lesion[10:30, 10:30, 5:15] = 1.0  # a box 20 x 20 x 30 mm, from 10 to 29 mm in x and y
    share = target_crop(lesion, (19.5, 20.0, 30.0)).astype(float) / SHARE_STEPS
    assert share.max() == 1.0 and share.min() == 0.0
    # crop voxels at x = 19.5 + 2k mm: the one at the box's edge (9.5, 29.5 mm) is half covered, not in or out
    centre = CROP_VOXELS // 2
    assert share[centre, centre, centre + 4] == share[centre, centre, centre - 4] == 1.0
    assert share[centre, centre, centre + 5] == share[centre, centre, centre - 5] == pytest.approx(0.5, abs=0.01)
    assert share[centre, centre, centre + 6] == share[centre, centre, centre - 6] == 0.0
    along_z = share[:, centre, centre]
    assert 0.0 < along_z.min(initial=1.0, where=along_z > 0) < 1.0  # 3 mm slices on 2 mm voxels: parts


def test_at_1mm_reads_a_crop_linearly_at_twice_its_resolution():
    crop = np.zeros((CROP_VOXELS,) * 3, np.float32)
    crop[20:28, 20:28, 20:28] = 1.0
    crop[20:28, 20:28, 28] = 0.5  # half a voxel more along x: at 1 mm, one more voxel of the two
    fine = at_1mm(crop)
    assert fine.shape == (2 * CROP_VOXELS,) * 3
    assert fine[48, 48, 40:57].all() and not fine[48, 48, 57:].any() and not fine[48, 48, :40].any()
    assert 16 ** 3 < np.count_nonzero(fine) < 16 * 16 * 17  # (its rim of the half voxel reads below 1/2)


def test_the_loss_takes_shares_and_is_least_at_them():
    target = torch.tensor([0.0, 0.25, 0.75, 1.0]).reshape(1, 1, 1, 4).expand(1, 2, 2, 4)
    def loss_at(p: torch.Tensor) -> float:
        logit = torch.log(p / (1 - p))
        return float(lesion_loss(torch.stack([torch.zeros_like(logit), logit], dim=1), target))
    at_shares = loss_at(target.clamp(0.02, 0.98))
    assert at_shares < loss_at(torch.full_like(target, 0.5)) and at_shares < loss_at((target >= 0.5).float().clamp(0.02, 0.98))


def test_threshold_region_is_the_hot_ball_at_the_click():
    zz, yy, xx = np.ogrid[:CROP_VOXELS, :CROP_VOXELS, :CROP_VOXELS]
    r2 = (zz - 24) ** 2 + (yy - 25) ** 2 + (xx - 23) ** 2
    ball = r2 <= 16  # 8 mm radius
    pet = np.where(ball, 10.0, 1.0).astype(np.float32)
    pet[(zz - 24) ** 2 + (yy - 25) ** 2 + (xx - 33) ** 2 <= 9] = 12.0  # a hotter node 20 mm away, not touching
    assert np.array_equal(threshold_region(pet), ball)
    pet[ball & (r2 <= 1)] = 1.0  # a cold core: the editor fills it (avid_region itself, not a copy without that)
    assert np.array_equal(threshold_region(pet), ball)
    assert not threshold_region(np.ones_like(pet)).any()  # no uptake above the background: nothing


def test_train_export_and_load(folder: Path, tmp_path: Path):
    train_set, val_set = load_samples(folder, [TRAIN_SEED]), load_samples(folder, [VAL_SEED])
    lines: list[str] = []
    result = train(train_set, val_set, budget_s=120, batch=2, max_steps=2, eval_every=1, log=lines.append)
    assert result.steps == 2 and [h["step"] for h in result.history] == [1, 2]
    assert len(lines) == 4 and "41 % threshold" in lines[0] and "M parameters) on cpu" in lines[1]
    assert set(result.val_dice) == {"all", "peak", "deep", "random"}
    assert 0.0 <= result.val_dice["all"] <= 1.0 and 0.3 < result.val_dice_threshold_41["all"] <= 1.0
    settings = {"seeds": f"{TRAIN_SEED}:{TRAIN_SEED + 1}", "val_seeds": f"{VAL_SEED}:{VAL_SEED + 1}"}
    _, json_path = export(result.network, tmp_path / "clicks", model_metadata(result, train_set, val_set, settings, {}))
    meta = json.loads(json_path.read_text())
    assert meta["click_model"] == {**CONTRACT, "structure": "GTVn"}
    assert meta["trained_on"]["samples"] == 9 and meta["trained_on"]["steps"] == 2
    assert meta["metrics"]["val_dice"] == result.val_dice["all"]
    assert meta["metrics"]["val_dice_threshold_41"] == result.val_dice_threshold_41["all"]
    assert meta["metrics"]["val_dice_1mm"] == result.val_dice_1mm["all"] == result.history[-1]["val_dice_1mm"]["all"]

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
    # on the crop's own grid: the trained network's mirror-averaged output, so the file holds the weights trained
    ct, pet = crops(case.ct, case.pet, point)
    own = lesion_probability(result.network.eval(), network_inputs(ct[None], pet[None]))
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

    # --init: training goes on from that model's weights (one step of a small learning rate moves them little)
    again = tmp_path / "models" / "clicks_more"
    assert main([*args[:1], str(again), *args[2:], "--init", str(out), "--lr", "1e-6"]) == 0
    assert json.loads(again.with_suffix(".json").read_text())["trained_on"]["init"] == "clicks"
    before, after = ClickModel(out).network.state_dict(), ClickModel(again).network.state_dict()
    fresh = build_network(NETWORK).state_dict()
    name = "encoders.0.conv1.conv.weight"
    assert torch.allclose(before[name], after[name], atol=1e-4) and not torch.allclose(fresh[name], after[name])


def test_command_refuses_an_init_that_is_not_a_click_model(tmp_path: Path, capsys):
    save_model(build_network(NETWORK), NETWORK, tmp_path / "segmenter", metadata={"trained_on": "nothing"})
    assert main(["--out", str(tmp_path / "m"), "--data", str(tmp_path / "d"), "--seeds", "940000:940002",
                 "--val-seeds", "940002:940003", "--budget-s", "10", "--init", str(tmp_path / "segmenter")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "not a click model" in err
    assert not (tmp_path / "d").exists()  # refused before any phantom was drawn


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


def test_hntumorseg_train_has_the_command(tmp_path: Path, capsys):
    from HNTumorSegTraining.cli import main as train_main

    assert train_main(["click-model", "--out", str(tmp_path / "m"), "--data", str(tmp_path / "d"), "--seeds",
                       "940000:940005", "--val-seeds", "940004:940006", "--budget-s", "10"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "share 1 phantoms" in err and not (tmp_path / "d").exists()


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


def test_batches_here_are_the_seeded_stream_and_each_loader_worker_draws_its_own(folder: Path):
    """Without loader workers the batches are training_batch's from one generator seeded by the seed (as
    before loaders existed); with workers, each draws from a stream of its own: copies of one stream would
    train on every batch twice."""
    samples = load_samples(folder, [TRAIN_SEED])
    rng = np.random.default_rng(3)
    here = training_batches(samples, seed=3, batch=2)
    for _ in range(3):
        (x, y), (x0, y0) = next(here), training_batch(samples, rng, 2)
        assert torch.equal(x, x0) and torch.equal(y, y0)
    loaded = training_batches(samples, seed=3, batch=2, workers=2)
    batches = [next(loaded)[0] for _ in range(6)]
    del loaded
    assert all(b.shape == (2, 3, CROP_VOXELS, CROP_VOXELS, CROP_VOXELS) for b in batches)
    assert not any(torch.equal(a, b) for i, a in enumerate(batches) for b in batches[i + 1:])


def test_a_wider_network_trained_with_loader_workers_is_a_click_model_the_editor_draws_with(folder: Path,
                                                                                             tmp_path: Path, capsys):
    """--channels widens the network (what a GPU can train), --loader-workers builds batches in processes;
    the file is a click model as any other: ``hntumorseg edit --click-model`` draws a node with it."""
    from HNTumorSegLib.cli import main as hntumorseg

    out = tmp_path / "wide"
    assert main(["--out", str(out), "--data", str(folder), "--seeds", f"{TRAIN_SEED}:{TRAIN_SEED + 1}",
                 "--val-seeds", f"{VAL_SEED}:{VAL_SEED + 1}", "--budget-s", "120", "--max-steps", "2",
                 "--ct-matrix", str(CT_MATRIX), "--no-progress", "--channels", "4,8,16,24",
                 "--loader-workers", "2", "--device", "cpu", "--amp", "bf16"]) == 0
    printed = capsys.readouterr().out
    assert "network [4, 8, 16, 24]" in printed and "on cpu, batch 4, 2 loader workers" in printed
    assert "autocast" not in printed  # never on the CPU, whatever --amp says
    trained = json.loads(out.with_suffix(".json").read_text())["trained_on"]
    assert trained["channels"] == [4, 8, 16, 24] and trained["device"] == "cpu" and trained["amp"] == "none"
    assert trained["loader_workers"] == 2
    assert ClickModel(out.with_suffix(".json")).network.config.channels == (4, 8, 16, 24)

    case = draw_phantom(VAL_SEED, np.random.default_rng(VAL_SEED), CT_MATRIX)
    files = {name: tmp_path / f"{name}.nrrd" for name in ("ct", "pet", "labels")}
    for name, image in (("ct", case.ct), ("pet", case.pet), ("labels", case.label)):
        sitk.WriteImage(image, str(files[name]))
    ids, _ = lesion_ids(sitk.GetArrayViewFromImage(case.label) == 2)
    point = Geometry.of(case.label).index_to_point(np.argwhere(ids == 1)[0][::-1])
    args = ["edit", "--labels", str(files["labels"]), "--ct", str(files["ct"]), "--pet", str(files["pet"]),
            "--redraw", ",".join(f"{v:.2f}" for v in point), "--click-model", str(out.with_suffix(".json")),
            "--out", str(tmp_path / "edited.nrrd")]
    code = hntumorseg(args)
    printed, err = capsys.readouterr()
    # two steps of training draw something or nothing at the click: either way, the model named is this one
    assert (code == 0 and "click model wide.json" in printed) or (code == 2 and "click model wide.json finds" in err)


@pytest.mark.parametrize("extra, message", [
    (["--channels", "4,8,16,24", "--init", "x.json"], "--channels with --init"),
    (["--device", "cuda:7"], "device 'cuda:7'"),
    (["--device", "tpu"], "device 'tpu'"),
])
def test_device_and_width_mistakes_are_one_line_before_anything_is_drawn(tmp_path: Path, capsys, extra, message):
    options = ["--out", str(tmp_path / "m"), "--data", str(tmp_path / "d"), "--seeds", "940000:940005",
               "--val-seeds", "940008:940009", "--budget-s", "10", *extra]
    assert main(options) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
    assert not (tmp_path / "d").exists()


@pytest.mark.parametrize("value", ["8,16,32", "8,16,32,0", "8,16,x,64", ""])
def test_channels_that_are_not_four_positive_integers_are_refused(tmp_path: Path, capsys, value: str):
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "m"), "--data", str(tmp_path / "d"), "--seeds", "0:2", "--val-seeds", "2:3",
              "--budget-s", "10", "--channels", value])
    assert exit_info.value.code == 2 and "--channels" in capsys.readouterr().err


def test_more_loader_workers_than_cpus_are_refused_before_anything_is_drawn(tmp_path: Path, capsys):
    """`--loader-workers 1000` forked a thousand processes, each with its own copy of the samples."""
    from HNTumorSegLib.pipeline.inference import available_cpus

    too_many = available_cpus() + 1
    code = main(["--out", str(tmp_path / "m"), "--data", str(tmp_path / "d"), "--seeds", "0:2", "--val-seeds", "2:3",
                 "--budget-s", "10", "--loader-workers", str(too_many)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and f"--loader-workers {too_many}: this machine gives" in err
    assert not (tmp_path / "d").exists()


def test_a_cuda_device_this_machine_lacks_is_named(monkeypatch):
    from HNTumorSegTraining.distributed import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert resolve_device("cuda") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match="has 1 CUDA device"):
        resolve_device("cuda:1")
    with pytest.raises(ValueError, match="the CPU takes no number"):  # torch took it as the CPU
        resolve_device("cpu:1")


@pytest.mark.parametrize("stop, status", [(KeyboardInterrupt, 130), ("Terminated", 143)])
def test_a_run_stopped_before_its_budget_keeps_the_network_it_trained(folder: Path, tmp_path: Path, capsys,
                                                                      monkeypatch, stop, status):
    """Ctrl-C (or SIGTERM: a scheduler's time limit) an hour into a run wrote nothing before; now the network
    trained so far is validated and written, marked as stopped, and the status says it was stopped."""
    import HNTumorSegTraining.click_model as module
    from HNTumorSegLib.cli.guard import Terminated

    stop = Terminated if stop == "Terminated" else stop
    calls = []
    real = module.lesion_loss

    def stopping_loss(logits, target):
        calls.append(1)
        if len(calls) == 3:
            raise stop()
        return real(logits, target)

    monkeypatch.setattr(module, "lesion_loss", stopping_loss)
    out = tmp_path / "stopped"
    assert main(["--out", str(out), "--data", str(folder), "--seeds", f"{TRAIN_SEED}:{TRAIN_SEED + 1}",
                 "--val-seeds", f"{VAL_SEED}:{VAL_SEED + 1}", "--budget-s", "600", "--max-steps", "50",
                 "--ct-matrix", str(CT_MATRIX), "--no-progress", "--eval-every", "100"]) == status
    printed = capsys.readouterr().out
    name = "SIGTERM" if status == 143 else "Ctrl-C"
    assert f"{name} at step 2" in printed and f"after 2 steps ({name} before the budget was spent)" in printed
    meta = json.loads(out.with_suffix(".json").read_text())
    assert meta["trained_on"]["steps"] == 2 and meta["trained_on"]["interrupted"] == name
    assert meta["metrics"]["history"][-1]["step"] == 2
    ClickModel(out.with_suffix(".json"))


def test_a_run_stopped_before_its_first_step_writes_nothing(folder: Path, tmp_path: Path, capsys, monkeypatch):
    import HNTumorSegTraining.click_model as module

    def stopping_loss(logits, target):
        raise KeyboardInterrupt()

    monkeypatch.setattr(module, "lesion_loss", stopping_loss)
    out = tmp_path / "never"
    assert main(["--out", str(out), "--data", str(folder), "--seeds", f"{TRAIN_SEED}:{TRAIN_SEED + 1}",
                 "--val-seeds", f"{VAL_SEED}:{VAL_SEED + 1}", "--budget-s", "600", "--max-steps", "5",
                 "--ct-matrix", str(CT_MATRIX), "--no-progress"]) == 130
    assert "interrupted" in capsys.readouterr().err and not list(tmp_path.glob("never*"))


def test_sigterm_to_the_process_group_with_loader_workers_keeps_the_network(folder: Path, tmp_path: Path):
    """``timeout`` and schedulers send SIGTERM to every process of the job, loader workers too: a worker killed
    by it made torch raise "DataLoader worker ... is killed" in the trainer (a traceback, status 1, no model).
    Now the workers leave the stop to the trainer, which keeps what it learnt and ends with status 143."""
    import signal
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[3]
    out = tmp_path / "m"
    process = subprocess.Popen(
        [sys.executable, "-m", "HNTumorSegTraining.cli", "click-model", "--out", str(out), "--data", str(folder),
         "--seeds", f"{TRAIN_SEED}:{TRAIN_SEED + 1}", "--val-seeds", f"{VAL_SEED}:{VAL_SEED + 1}",
         "--budget-s", "600", "--ct-matrix", str(CT_MATRIX), "--no-progress", "--loader-workers", "2",
         "--eval-every", "1", "--batch", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True,
        env={**os.environ, "PYTHONPATH": os.pathsep.join([str(root), str(root / "Training")])})
    def validated_once():
        for line in process.stdout:  # the first validation line: training is under way, the workers running
            if line.startswith("step 1 "):
                return

    rest, err = stopped_group(process, validated_once, signal.SIGTERM)
    assert process.returncode == 143, err[-2000:]
    assert "Traceback" not in err and "SIGTERM before the budget was spent" in rest
    assert json.loads(out.with_suffix(".json").read_text())["trained_on"]["interrupted"] == "SIGTERM"


@pytest.mark.parametrize("extra, message", [
    (["--channels", "8,16,32,100000000"], "--channels 8,16,32,100000000: the network cannot be built here"),
    (["--init", "."], "--init .: a folder; give the click model's .json"),
])
def test_a_network_that_cannot_be_built_is_one_line_before_anything_is_drawn(tmp_path: Path, capsys, extra, message):
    """Widths this machine cannot hold ended in the allocator's traceback, after the phantoms were drawn."""
    assert main(["--out", str(tmp_path / "m"), "--data", str(tmp_path / "d"), "--seeds", "940000:940005",
                 "--val-seeds", "940008:940009", "--budget-s", "10", *extra]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and not (tmp_path / "d").exists()


@pytest.mark.parametrize("option, value", [("--loader-workers", "\u00b2"), ("--channels", "\uff18,16,32,64")])
def test_digits_that_are_not_ascii_are_refused_by_the_options_own_words(tmp_path: Path, capsys, option, value):
    with pytest.raises(SystemExit) as exit_info:
        main(["--out", str(tmp_path / "m"), "--data", str(tmp_path / "d"), "--seeds", "0:2", "--val-seeds", "2:3",
              "--budget-s", "10", option, value])
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and "give " in err and "invalid _" not in err
