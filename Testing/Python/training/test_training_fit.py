"""Training: loss, models, data sampling, fit with checkpoints, DDP and kill/resume.

Speed: the networks are tiny (channels 4..64) and the caches synthetic. Most tests use a cache of
32 x 64 x 64 windows, written in the cache's own file format (float16 image.npy, uint8
label.npy, provenance.json) but smaller than the real 112 x 256 x 256 window, because a full
window costs ~10 s per validation forward pass on two shared CPU cores. The patch-sampler tests
use one real-size case written by ``cache.write_case``. Torch runs single-threaded here (and
with OMP_NUM_THREADS=1 in the subprocesses): on a loaded 2-core machine two threads are slower.
"""

from __future__ import annotations

import json
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
import types
from pathlib import Path

import numpy as np
import pytest
import torch

from HNTumorSegLib.errors import InputError
from HNTumorSegLib.imaging.image_io import write_json, write_npy
from HNTumorSegLib.pipeline.model_file import load_model
from HNTumorSegLib.pipeline.preprocess import PREPROCESSING_VERSION
from HNTumorSegTraining import cache as cache_module
from HNTumorSegTraining.checkpoint import load_checkpoint
from HNTumorSegTraining.data import Augmentation, TrainDataset
from HNTumorSegTraining.fit import FitHooks, fit
from HNTumorSegTraining.losses import soft_dice_loss
from HNTumorSegTraining.mamba import MambaMixer, selective_scan, selective_scan_reference
from HNTumorSegTraining.models import MODEL_NAMES, build_from_spec, build_model
from HNTumorSegTraining.runlog import TensorBoardLog, read_history_csv
from HNTumorSegTraining.sampler import EpochSampler
from HNTumorSegTraining.weights import load_weights

from conftest import assert_batches_independent_of_workers, full_disk_at, stopped_group

TINY = (4, 8, 16, 32, 64)
TINY_OPTIONS = {"psam": {"psam_channels": [4, 4, 4]}, "unet": {}, "umamba": {"d_state": 4, "scan_chunk": 4},
                "unetr": {"feature_size": 4, "hidden_size": 32, "mlp_dim": 64, "num_heads": 4}}
SMALL_WINDOW = (32, 64, 64)
PATCH = (16, 32, 32)
TRAIN_IDS = ["CHUM-001", "CHUM-002", "MDA-001"]
VAL_IDS = ["MDA-002"]
SUBPROCESS_ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _lesion_case(shape, k, rng):
    """Image and label with one ellipsoidal GTVp and one smaller GTVn, bright on PET."""
    zz, yy, xx = np.ogrid[: shape[0], : shape[1], : shape[2]]
    sz, sy, sx = (s / 64 for s in shape)  # lesion sizes scale with the window
    cz, cy, cx = shape[0] // 2 + k, shape[1] // 2 + 2 * k, shape[2] // 2 - 6 * sx + 2 * k
    gtvp = ((zz - cz) / (4 * sz * 2)) ** 2 + ((yy - cy) / (6 * sy)) ** 2 + ((xx - cx) / (6 * sx)) ** 2 <= 1
    gtvn = ((zz - cz - 3) / (2 * sz * 2)) ** 2 + ((yy - cy - 10 * sy) / (3 * sy)) ** 2 + \
        ((xx - cx - 20 * sx) / (3 * sx)) ** 2 <= 1
    label = np.zeros(shape, np.uint8)
    label[gtvp], label[gtvn] = 1, 2
    image = np.empty((2, *shape), np.float32)
    image[0], image[1] = 0.3, 0.05
    image[0][gtvp | gtvn] = 0.5
    image[1][gtvp], image[1][gtvn] = 0.8, 0.6
    image += rng.normal(0, 0.02, image.shape).astype(np.float32)
    return image, label


@pytest.fixture(scope="module")
def small_cache(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("small_cache")
    rng = np.random.default_rng(0)
    for k, cid in enumerate(TRAIN_IDS + VAL_IDS):
        image, label = _lesion_case(SMALL_WINDOW, k, rng)
        folder = cache_module.case_dir(root, cid)
        folder.mkdir(parents=True)
        write_npy(image.astype(np.float16), folder / "image.npy")
        write_npy(label, folder / "label.npy")
        write_json({"version": PREPROCESSING_VERSION, "case_id": cid}, folder / "provenance.json")
    (root / "split.json").write_text(json.dumps({"train": TRAIN_IDS, "val": VAL_IDS}))
    return root


@pytest.fixture(scope="module")
def full_cache(tmp_path_factory) -> Path:
    """One case of the real cache layout and size (cache.write_case)."""
    root = tmp_path_factory.mktemp("full_cache")
    image, label = _lesion_case(cache_module.LABEL_SHAPE, 0, np.random.default_rng(1))
    folder = cache_module.case_dir(root, "HGJ-001")
    folder.mkdir(parents=True)
    cache_module.write_case(folder, image, label, {"version": PREPROCESSING_VERSION, "case_id": "HGJ-001"})
    assert cache_module.is_finished(folder)
    return root


def _tiny_kwargs(model: str = "psam", **over):
    kw = dict(channels=None if model == "unetr" else TINY, model_options=TINY_OPTIONS[model], patch_size=PATCH,
              max_steps_per_epoch=2, device="cpu", log=lambda m: None)
    kw.update(over)
    return kw


# ----------------------------------------------------------------------------------------- loss
def test_soft_dice_equals_hand_computation():
    torch.manual_seed(0)
    logits = torch.randn(2, 3, 2, 3, 4, dtype=torch.float64)
    target = torch.randint(0, 3, (2, 2, 3, 4))
    target[1] = 0  # a sample without foreground
    p = torch.softmax(logits, 1).numpy()
    losses = []
    for b in range(2):
        num = den = 0.0
        for c in (1, 2):
            y = (target[b].numpy() == c).astype(float)
            num += (p[b, c] * y).sum()
            den += (p[b, c] ** 2).sum() + (y ** 2).sum()
        losses.append(1 - (2 * num + 1e-5) / (den + 1e-5))
    assert soft_dice_loss(logits, target).item() == pytest.approx(np.mean(losses), rel=1e-12)


def test_soft_dice_is_zero_for_a_perfect_prediction():
    target = torch.randint(0, 3, (1, 4, 5, 6))
    target[0, 0, 0, :3] = torch.tensor([0, 1, 2])
    perfect = 200.0 * torch.nn.functional.one_hot(target, 3).movedim(-1, 1).double()
    assert soft_dice_loss(perfect, target).item() == pytest.approx(0.0, abs=1e-12)
    background = torch.zeros_like(target)
    assert soft_dice_loss(200.0 * torch.nn.functional.one_hot(background, 3).movedim(-1, 1).double(),
                          background).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("with_foreground", [True, False])
def test_soft_dice_gradients_are_finite(with_foreground):
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 4, 8, 8, requires_grad=True)
    target = torch.randint(0, 3, (2, 4, 8, 8)) if with_foreground else torch.zeros(2, 4, 8, 8, dtype=torch.long)
    loss = soft_dice_loss(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(logits.grad).all() and logits.grad.abs().sum() > 0


# ----------------------------------------------------------------------------------------- models
@pytest.mark.parametrize("name", MODEL_NAMES)
def test_each_model_builds_and_gives_three_class_logits(name):
    if name == "unetr":
        pytest.importorskip("einops", reason="MONAI's UNETR needs einops")
    torch.manual_seed(0)
    model = build_model(name, channels=None if name == "unetr" else TINY, patch_size=PATCH, **TINY_OPTIONS[name])
    spec = json.loads(json.dumps(model.model_spec))  # JSON round trip
    assert spec["name"] == name
    rebuilt = build_from_spec(spec)
    assert {k: v.shape for k, v in rebuilt.state_dict().items()} == {k: v.shape for k, v in model.state_dict().items()}
    x = torch.rand(2, 2, *PATCH, requires_grad=True)
    out = model(x)
    assert out.shape == (2, 3, *PATCH) and torch.isfinite(out).all()
    soft_dice_loss(out, torch.randint(0, 3, (2, *PATCH))).backward()
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in trainable)


def test_model_spec_errors():
    with pytest.raises(ValueError, match="unknown model"):
        build_model("vnet")
    with pytest.raises(ValueError, match="divisible by 16"):
        build_model("unetr", patch_size=(20, 32, 32))
    with pytest.raises(ValueError, match="unknown option"):
        build_model("unet", channels=TINY, feature_size=3)


@pytest.mark.parametrize("chunk", [1, 5, 16, 64])
def test_pure_selective_scan_equals_the_naive_loop(chunk):
    torch.manual_seed(chunk)
    b, length, d, n = 2, 37, 6, 4
    args = [torch.randn(b, length, d), torch.rand(b, length, d) * 0.5, -torch.rand(d, n) * 2,
            torch.randn(b, length, n), torch.randn(b, length, n), torch.randn(d)]
    args = [a.double().requires_grad_() for a in args]
    out = selective_scan(*args, chunk=chunk)
    ref = selective_scan_reference(*args)
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, ref, rtol=1e-10, atol=1e-10)
    grads = torch.autograd.grad(out.square().sum(), args)
    ref_grads = torch.autograd.grad(ref.square().sum(), args)
    for g, r in zip(grads, ref_grads):
        torch.testing.assert_close(g, r, rtol=1e-9, atol=1e-9)


def test_mamba_block_is_causal_and_named_like_mamba_ssm():
    torch.manual_seed(0)
    block = MambaMixer(8, d_state=4, scan_chunk=3)
    assert set(block.state_dict()) == {"in_proj.weight", "conv1d.weight", "conv1d.bias", "x_proj.weight",
                                       "dt_proj.weight", "dt_proj.bias", "A_log", "D", "out_proj.weight"}
    x = torch.randn(1, 10, 8)
    y = block(x)
    x2 = x.clone()
    x2[:, 6:] += 1.0  # changing later tokens must not change earlier outputs
    y2 = block(x2)
    torch.testing.assert_close(y[:, :6], y2[:, :6])
    assert not torch.allclose(y[:, 6:], y2[:, 6:])


# ----------------------------------------------------------------------------------------- data
def test_patch_sampler_shapes_and_foreground_oversampling_rate(full_cache):
    p_fg, n = 0.6, 300
    ds = TrainDataset(full_cache, ["HGJ-001"], patch_size=(32, 64, 64), p_fg=p_fg,
                      augmentation=Augmentation.off(), seed=3)
    label = cache_module.open_case(full_cache, "HGJ-001").label
    centred, centred_classes, uniform_with_fg = 0, set(), 0
    for draw in range(n):
        item = ds[(0, 1, draw)]
        assert item["image"].shape == (2, 32, 64, 64) and item["image"].dtype == torch.float32
        assert item["label"].shape == (32, 64, 64) and item["label"].dtype == torch.uint8
        z, y, x = item["start"].tolist()
        assert np.array_equal(item["label"].numpy(), label[z:z + 32, y:y + 64, x:x + 64])
        present = set(np.unique(item["label"].numpy()).tolist()) - {0}
        if item["fg_centred"]:
            centred += 1
            assert present  # a centred patch always holds foreground
            centred_classes |= present
        else:
            uniform_with_fg += bool(present)
    sd = math.sqrt(n * p_fg * (1 - p_fg))
    assert abs(centred - n * p_fg) < 4 * sd, centred  # binomial, 4 sigma (fixed seed: deterministic)
    assert centred_classes == {1, 2}
    assert uniform_with_fg < 0.5 * (n - centred)  # small lesions: uniform patches mostly miss them
    # Without oversampling nothing is centred; the same key gives the same sample.
    none = TrainDataset(full_cache, ["HGJ-001"], patch_size=(32, 64, 64), p_fg=0.0, seed=3)
    assert not any(none[(0, 1, d)]["fg_centred"] for d in range(20))
    a, b = ds[(0, 2, 7)], ds[(0, 2, 7)]
    assert torch.equal(a["image"], b["image"]) and torch.equal(a["label"], b["label"])


def test_flip_applies_to_image_and_label_together(small_cache):
    case = cache_module.open_case(small_cache, "CHUM-001")
    image, label = np.asarray(case.image, np.float32), np.asarray(case.label)
    aug = Augmentation(flip_p=0.5, intensity_p=0.0, noise_p=0.0)
    flips = []
    for patch in (None, PATCH):
        ds = TrainDataset(small_cache, ["CHUM-001"], patch_size=patch, p_fg=0.5, augmentation=aug, seed=0)
        for draw in range(16):
            item = ds[(0, 1, draw)]
            z, y, x = item["start"].tolist()
            size = patch or SMALL_WINDOW
            win = (slice(z, z + size[0]), slice(y, y + size[1]), slice(x, x + size[2]))
            ref_img, ref_lab = image[(slice(None), *win)], label[win]
            if item["flipped"]:
                ref_img, ref_lab = ref_img[..., ::-1], ref_lab[..., ::-1]
            assert np.array_equal(item["image"].numpy(), ref_img)
            assert np.array_equal(item["label"].numpy(), ref_lab)
            flips.append(item["flipped"])
    assert any(flips) and not all(flips)


def test_intensity_augmentation_is_a_small_per_channel_affine_map(small_cache):
    image = np.asarray(cache_module.open_case(small_cache, "CHUM-001").image, np.float32)
    ds = TrainDataset(small_cache, ["CHUM-001"], augmentation=Augmentation(flip_p=0.0, intensity_p=1.0,
                                                                           scale=0.1, shift=0.05, noise_p=0.0))
    out = ds[(0, 1, 0)]["image"].numpy()
    for c in range(2):
        a, b = np.polyfit(image[c].ravel(), out[c].ravel(), 1)
        assert 0.9 - 1e-4 <= a <= 1.1 + 1e-4 and abs(b) <= 0.05 + 1e-4
        np.testing.assert_allclose(out[c], a * image[c] + b, atol=1e-5)


def test_epoch_sampler_is_a_function_of_seed_and_epoch_and_shards_by_rank():
    s = EpochSampler(5, seed=1, samples_per_epoch=7)
    s.set_epoch(3)
    first = list(s)
    s.set_epoch(4)
    assert list(s) != first
    s.set_epoch(3)
    assert list(s) == first and len(first) == 7 and [k[2] for k in first] == list(range(7))
    shards = []
    for rank in range(2):
        r = EpochSampler(5, seed=1, samples_per_epoch=7, rank=rank, world_size=2)
        r.set_epoch(3)
        shards.append(list(r))
        assert len(shards[-1]) == len(r) == 4
    draws = sorted(k[2] for shard in shards for k in shard)
    assert draws == list(range(8))  # padded to a multiple of the world size, no draw twice
    assert [k[0] for k in first] == [k[0] for k in sorted(shards[0] + shards[1], key=lambda k: k[2])][:7]


def test_batches_do_not_depend_on_the_number_of_workers(small_cache):
    ds = TrainDataset(small_cache, TRAIN_IDS, patch_size=PATCH, seed=5)
    assert assert_batches_independent_of_workers(ds, seed=5, samples_per_epoch=4, epoch=2) == 2


def test_tensorboard_is_used_when_installed(tmp_path, monkeypatch):
    calls = []

    class FakeWriter:
        def __init__(self, log_dir, purge_step=None):
            calls.append(("init", log_dir, purge_step))

        def add_scalar(self, tag, value, step):
            calls.append((tag, value, step))

        def flush(self):
            pass

        def close(self):
            calls.append(("close",))

    fake = types.ModuleType("torch.utils.tensorboard")
    fake.SummaryWriter = FakeWriter
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", fake)
    lines: list[str] = []
    tb = TensorBoardLog(tmp_path, purge_step=7, log=lines.append)
    tb.epoch({"step": 9, "train_loss": 0.5, "lr": 1e-4, "val_dice_gtvp": 0.7, "val_dice_gtvn": None,
              "val_dice_mean": None})
    tb.close()
    assert not lines
    assert calls == [("init", str(tmp_path / "tensorboard"), 7), ("train/loss", 0.5, 9), ("train/lr", 1e-4, 9),
                     ("val/dice_gtvp", 0.7, 9), ("close",)]


# ----------------------------------------------------------------------------------------- fit
def test_two_epoch_fit_writes_checkpoint_logs_and_model_files(small_cache, tmp_path):
    out = tmp_path / "run"
    lines: list[str] = []
    result = fit(small_cache, "psam", out, epochs=2, **_tiny_kwargs(log=lines.append))
    for name in ("checkpoint_last.pt", "history.csv", "curves.png", "run.json", "best.json",
                 "best.safetensors", "last.json", "last.safetensors"):
        assert (out / name).is_file(), name
    assert not list(out.glob(".*.tmp"))
    rows = read_history_csv(out / "history.csv")
    assert [(r["epoch"], r["step"]) for r in rows] == [("1", "2"), ("2", "4")]
    assert all(0.0 <= float(r["val_dice_mean"]) <= 1.0 and float(r["train_loss"]) > 0 for r in rows)
    assert (out / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    ckpt = torch.load(out / "checkpoint_last.pt", weights_only=True)  # plain data only
    assert ckpt["epoch"] == 2 and ckpt["global_step"] == 4 and len(ckpt["history"]) == 2
    assert {"model", "optimizer", "scheduler", "scaler", "rng", "best", "settings"} <= set(ckpt)
    assert ckpt["best"]["epoch"] == result.best_epoch and ckpt["best"]["metric"] == result.best_metric

    run = json.loads((out / "run.json").read_text())
    assert run["preprocessing_version"] == PREPROCESSING_VERSION and run["model_spec"]["name"] == "psam"
    assert run["settings"]["patch_size"] == list(PATCH) and run["cache"] == str(small_cache.resolve())
    if any("TensorBoard logging is off" in line for line in lines):
        assert not (out / "tensorboard").exists()

    last = load_model(out / "last")
    assert last.meta["preprocessing_version"] == PREPROCESSING_VERSION and last.meta["training"]["epoch"] == 2
    x = torch.rand(1, 2, *PATCH)
    with torch.no_grad():
        torch.testing.assert_close(last.model(x).contiguous(), result.model.eval()(x).contiguous())
    best = load_model(out / "best")
    assert best.meta["metrics"]["epoch"] == result.best_epoch

    with pytest.raises(FileExistsError, match="resume"):
        fit(small_cache, "psam", out, epochs=2, **_tiny_kwargs())


def test_init_weights_fine_tunes_from_another_runs_weights(small_cache, tmp_path):
    first = fit(small_cache, "psam", tmp_path / "a", epochs=1, **_tiny_kwargs(val_every=0))
    start = {k: v.clone() for k, v in first.model.state_dict().items()}
    seen: list[dict] = []
    hooks = FitHooks(on_start=lambda st: seen.append({k: v.clone() for k, v in st.model.state_dict().items()}))
    fit(small_cache, "psam", tmp_path / "b", epochs=1, init_weights=tmp_path / "a" / "last", hooks=hooks,
        **_tiny_kwargs(val_every=0, seed=5))
    assert seen and all(torch.equal(seen[0][k], start[k]) for k in start)  # not the seed-5 initialisation
    settings = json.loads((tmp_path / "b" / "run.json").read_text())["settings"]
    assert settings["init_weights"]["path"].endswith("last.safetensors")
    assert len(settings["init_weights"]["sha256"]) == 64
    assert load_model(tmp_path / "b" / "last").meta["training"]["init_weights"] == settings["init_weights"]
    with pytest.raises(ValueError, match="different network"):
        fit(small_cache, "unet", tmp_path / "c", epochs=1, init_weights=tmp_path / "a" / "last",
            **_tiny_kwargs("unet", val_every=0))
    with pytest.raises(FileNotFoundError, match="initial weights not found"):
        fit(small_cache, "psam", tmp_path / "d", epochs=1, init_weights=tmp_path / "nothing", **_tiny_kwargs())


def test_fit_refuses_bad_case_lists(small_cache, tmp_path):
    with pytest.raises(ValueError, match="both training and validation: CHUM-001"):
        fit(small_cache, "unet", tmp_path / "a", epochs=1, train_ids=TRAIN_IDS, val_ids=["MDA-002", "CHUM-001"],
            **_tiny_kwargs("unet"))
    with pytest.raises(FileNotFoundError, match="missing from the cache: USZ-009"):
        fit(small_cache, "unet", tmp_path / "b", epochs=1, train_ids=["USZ-009"], val_ids=[], **_tiny_kwargs("unet"))
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_fit_refuses_settings_that_would_train_wrongly(small_cache, tmp_path):
    for bad in (dict(grad_clip=-1.0), dict(grad_clip=float("nan")), dict(samples_per_epoch=0)):
        with pytest.raises(ValueError, match="grad_clip must be a positive number|samples_per_epoch must be >= 1"):
            fit(small_cache, "unet", tmp_path / "a", epochs=1, **_tiny_kwargs("unet", **bad))
    with pytest.raises(ValueError, match="device 'bogus': use auto, cpu, cuda or cuda:N"):
        fit(small_cache, "unet", tmp_path / "a", epochs=1, **_tiny_kwargs("unet", device="bogus"))


def test_damaged_run_and_cache_files_are_named_in_one_line(small_cache, tmp_path, capsys):
    import shutil

    from HNTumorSegTraining.fit import main as fit_main

    out = tmp_path / "run"
    fit(small_cache, "unet", out, epochs=1, **_tiny_kwargs("unet"))
    checkpoint = out / "checkpoint_last.pt"
    checkpoint.write_bytes(checkpoint.read_bytes()[:1000])  # killed while copied
    with pytest.raises(ValueError, match="checkpoint_last.pt: cannot read the checkpoint"):
        load_checkpoint(checkpoint)
    (out / "run.json").write_text('{"fit_arguments": ')
    assert fit_main(["--out", str(out), "--resume"]) == 2  # the torchrun entry point, as the command line
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "run.json: not valid JSON" in err[0] and "Traceback" not in err[0]
    cache = tmp_path / "cache"
    shutil.copytree(small_cache, cache)
    image = cache_module.case_dir(cache, TRAIN_IDS[0]) / "image.npy"
    image.write_bytes(image.read_bytes()[:-100])
    with pytest.raises(InputError, match="image.npy: cannot read the cached array"):
        cache_module.open_case(cache, TRAIN_IDS[0])
    (cache / "split.json").write_text("{")
    assert fit_main(["--cache", str(cache), "--model", "unet", "--epochs", "1", "--out", str(tmp_path / "r2"),
                     "--device", "cpu"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "split.json: not valid JSON" in err[0]


def test_prepare_removes_what_a_killed_prepare_left_of_a_case(tmp_path):
    folder = tmp_path / "cases" / "X"
    folder.mkdir(parents=True)
    stale, fresh = folder / ".image.npy.abc123.npy", folder / ".label.npy.def456.npy"
    stale.write_bytes(b"x" * 100)
    fresh.write_bytes(b"y" * 100)  # another prepare may be writing this one now
    os.utime(stale, (0, 0))
    image, label = _lesion_case(cache_module.LABEL_SHAPE, 0, np.random.default_rng(2))
    cache_module.write_case(folder, image, label, {"version": PREPROCESSING_VERSION, "case_id": "X"})
    assert not stale.exists() and fresh.exists() and cache_module.is_finished(folder)


def test_a_rewrite_of_a_case_that_fails_at_its_second_file_leaves_it_unfinished(tmp_path, monkeypatch):
    """A case prepared again (its label edited) that fails writing label.npy (a full disk) must not keep the
    earlier provenance.json beside the new image.npy: the case would count as finished, its provenance
    (sources, containment) describing other data, and resume would skip it."""
    folder = tmp_path / "cases" / "X"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(3)
    image, label = _lesion_case(cache_module.LABEL_SHAPE, 0, rng)
    cache_module.write_case(folder, image, label, {"version": PREPROCESSING_VERSION, "case_id": "X"})
    assert cache_module.is_finished(folder)
    monkeypatch.setattr(cache_module, "write_npy", full_disk_at("label.npy", cache_module.write_npy))
    with pytest.raises(OSError):
        cache_module.write_case(folder, image * 0.5, label, {"version": PREPROCESSING_VERSION, "case_id": "X"})
    assert not (folder / "provenance.json").exists() and not cache_module.is_finished(folder)


class _Interrupt(Exception):
    pass


def test_resume_after_an_interruption_reproduces_the_uninterrupted_run(small_cache, tmp_path):
    kw = _tiny_kwargs("unet", samples_per_epoch=4, max_steps_per_epoch=None, val_every=2, warmup_epochs=1)
    straight = fit(small_cache, "unet", tmp_path / "a", epochs=3, **kw)

    def stop_after_two(state):
        if state.epoch == 2:
            raise _Interrupt

    with pytest.raises(_Interrupt):
        fit(small_cache, "unet", tmp_path / "b", epochs=3, hooks=FitHooks(on_epoch_end=stop_after_two), **kw)
    with pytest.raises(ValueError, match="different settings.*lr"):
        fit(small_cache, "unet", tmp_path / "b", epochs=3, resume=True, **{**kw, "lr": 1e-3})
    resumed = fit(small_cache, "unet", tmp_path / "b", epochs=3, resume=True, **kw)
    assert [r["step"] for r in resumed.history] == [4, 8, 12]
    for a, b in zip(straight.history, resumed.history):
        assert {k: v for k, v in a.items() if k != "seconds"} == {k: v for k, v in b.items() if k != "seconds"}
    for (k, a), b in zip(straight.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("name", ["umamba", "unetr"])
def test_non_hntumorseg_models_export_safetensors_with_their_spec(small_cache, tmp_path, name):
    if name == "unetr":
        pytest.importorskip("einops", reason="MONAI's UNETR needs einops")
    out = tmp_path / name
    result = fit(small_cache, name, out, epochs=1, **_tiny_kwargs(name))  # unetr validates by sliding window
    meta = json.loads((out / "best.json").read_text())
    assert meta["model_spec"] == result.model.model_spec
    assert meta["model_spec"]["name"] == name and (out / "best.safetensors").is_file()
    model, meta = load_weights(out / "last")
    x = torch.rand(1, 2, *PATCH)
    with torch.no_grad():
        torch.testing.assert_close(model(x), result.model.eval()(x))


# ----------------------------------------------------------------------------------------- processes
def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DRIVER = """
import json, os, sys, time, torch
from pathlib import Path
from HNTumorSegTraining.fit import FitHooks, fit

cfg = json.loads(sys.argv[1])
rank = int(os.environ.get("RANK", 0))
report = Path(cfg["report"])

def param_sum(model):
    return float(sum(p.detach().double().sum() * (i + 1) for i, p in enumerate(model.parameters())))

def on_start(state):
    report.joinpath(f"init{rank}.json").write_text(json.dumps(param_sum(state.model)))

def on_step_end(state):
    report.joinpath("progress.json").write_text(json.dumps([state.epoch, state.step_in_epoch]))
    time.sleep(cfg.get("sleep", 0.0))

result = fit(cfg["cache"], cfg["model"], cfg["out"], hooks=FitHooks(on_start, on_step_end), **cfg["kw"])
report.joinpath(f"final{rank}.json").write_text(json.dumps(param_sum(result.model)))
"""


def _driver(tmp_path: Path, cache: Path, out: Path, model: str, sleep: float = 0.0, **kw) -> tuple[Path, str]:
    script = tmp_path / "driver.py"
    script.write_text(textwrap.dedent(DRIVER))
    report = tmp_path / "report"
    report.mkdir(exist_ok=True)
    cfg = {"cache": str(cache), "out": str(out), "model": model, "report": str(report), "sleep": sleep,
           "kw": {**{k: v for k, v in _tiny_kwargs(model).items() if k != "log"}, **kw}}
    return script, json.dumps(cfg)


def test_ddp_on_two_gloo_processes_keeps_replicas_identical(small_cache, tmp_path):
    out = tmp_path / "run"
    script, cfg = _driver(tmp_path, small_cache, out, "unet", epochs=2, samples_per_epoch=4,
                          max_steps_per_epoch=None, val_every=0)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
           f"--master_port={_free_port()}", str(script), cfg]
    proc = subprocess.run(cmd, env=SUBPROCESS_ENV, capture_output=True, text=True, encoding="utf-8", timeout=180)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    report = tmp_path / "report"
    init = [json.loads((report / f"init{r}.json").read_text()) for r in range(2)]
    final = [json.loads((report / f"final{r}.json").read_text()) for r in range(2)]
    assert init[0] == init[1]
    assert final[0] == final[1]          # gradients were averaged: the replicas stayed identical
    assert final[0] != init[0]           # and they did train
    ckpt = load_checkpoint(out / "checkpoint_last.pt")
    # 4 draws per epoch over 2 ranks, batch 1: 2 steps per epoch on each rank
    assert ckpt["global_step"] == 4 and ckpt["settings"]["world_size"] == 2
    assert json.loads((out / "run.json").read_text())["world_size"] == 2
    assert [r["step"] for r in read_history_csv(out / "history.csv")] == ["2", "4"]
    assert proc.stdout.count("epoch 2/2") == 1   # only rank 0 logs


def _wait_for(predicate, timeout: float, proc: subprocess.Popen | None = None, what: str = ""):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"process ended (rc {proc.returncode}) while waiting for {what}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def _read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def test_kill_mid_epoch_then_resume_finishes_with_each_epoch_once(small_cache, tmp_path):
    out = tmp_path / "run"
    epochs, steps = 4, 3
    script, cfg = _driver(tmp_path, small_cache, out, "unet", sleep=0.3, epochs=epochs, samples_per_epoch=steps,
                          max_steps_per_epoch=None)
    progress = tmp_path / "report" / "progress.json"
    proc = subprocess.Popen([sys.executable, str(script), cfg], env=SUBPROCESS_ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        def mid_epoch_after_a_checkpoint():
            ckpt_path = out / "checkpoint_last.pt"
            where = _read_json(progress)
            if not ckpt_path.exists() or where is None:
                return None
            done = load_checkpoint(ckpt_path)["epoch"]   # atomic writes: always a whole checkpoint
            # Running step >= 1 of the epoch after the checkpointed one (and not the last step).
            return done if (done >= 1 and where[0] == done + 1 and 1 <= where[1] < steps) else None

        killed_after = _wait_for(mid_epoch_after_a_checkpoint, 120, proc, "a checkpoint and a running epoch")
        assert proc.poll() is None
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    ckpt = load_checkpoint(out / "checkpoint_last.pt")
    assert ckpt["epoch"] == killed_after < epochs
    before = read_history_csv(out / "history.csv")
    assert [r["epoch"] for r in before] == [str(e) for e in range(1, killed_after + 1)]

    script, cfg = _driver(tmp_path, small_cache, out, "unet", epochs=epochs, samples_per_epoch=steps,
                          max_steps_per_epoch=None, resume=True)
    done = subprocess.run([sys.executable, str(script), cfg], env=SUBPROCESS_ENV, capture_output=True, text=True,
                          encoding="utf-8", timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert f"resuming {out} after epoch {killed_after}" in done.stdout
    after = read_history_csv(out / "history.csv")
    assert [r["epoch"] for r in after] == ["1", "2", "3", "4"]
    assert after[: len(before)] == before            # rows from before the kill unchanged
    assert [int(r["step"]) for r in after] == [steps * e for e in range(1, epochs + 1)]
    final = load_checkpoint(out / "checkpoint_last.pt")
    assert final["epoch"] == epochs and final["global_step"] == epochs * steps
    assert len(json.loads((out / "run.json").read_text())["resumed"]) == 1
    assert not list(out.glob(".*.tmp"))


@pytest.mark.parametrize("stop, status, word", [(signal.SIGTERM, 143, "terminated"), (signal.SIGINT, 130, "interrupted")])
def test_a_stop_sent_to_the_whole_process_group_is_one_line_with_loader_workers(small_cache, tmp_path, stop, status,
                                                                                 word):
    """``timeout``, a scheduler or a terminal sends the stop to every process of the job, loader workers too; a
    worker killed by SIGTERM made torch raise "DataLoader worker ... is killed by signal" in the trainer (in
    the loop: a traceback and status 1; at the loader's clean-up: an "Exception ignored" trace)."""
    root = Path(__file__).resolve().parents[3]
    process = subprocess.Popen(
        [sys.executable, "-m", "HNTumorSegTraining.cli", "fit", "--cache", str(small_cache), "--model", "psam",
         "--channels", *map(str, TINY), "--patch-size", *map(str, PATCH), "--workers", "2", "--epochs", "500",
         "--samples-per-epoch", "2", "--device", "cpu", "--out", str(tmp_path / "run"), "--no-progress"],
        env={**SUBPROCESS_ENV, "PYTHONPATH": os.pathsep.join([str(root), str(root / "Training")])},
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    def an_epoch_done():
        for line in process.stdout:  # the loader's workers are running
            if line.startswith("epoch 1/"):
                time.sleep(0.5)
                return

    _, err = stopped_group(process, an_epoch_done, stop)
    assert process.returncode == status and err.strip() == f"hntumorseg-train: {word}", err[-2000:]


def test_a_worker_drops_the_resource_sharers_lost_connection_and_reports_anything_else():
    """A loader worker's excepthook: a connection lost in multiprocessing's resource sharer (the trainer stopping
    mid-handshake) prints nothing; the same error raised elsewhere, or another error there, goes to the hook before."""
    import multiprocessing

    from HNTumorSegTraining.data import _silent_on_a_departed_trainer

    def raised(kind, filename):
        code = compile(f"raise {kind.__name__}('peer gone')", filename, "exec")
        try:
            exec(code, {})
        except kind:
            return sys.exc_info()

    sharer = os.path.join(os.path.dirname(multiprocessing.__file__), "resource_sharer.py")
    passed_on = []
    hook = _silent_on_a_departed_trainer(lambda *info: passed_on.append(info[0]))
    for kind in (EOFError, ConnectionResetError, BrokenPipeError):
        hook(*raised(kind, sharer))
    assert passed_on == []
    hook(*raised(EOFError, "elsewhere.py"))
    hook(*raised(ValueError, sharer))
    assert passed_on == [EOFError, ValueError]
