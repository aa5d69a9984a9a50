"""Sliding-window inference for patch-trained models, and the batch reading of the soft Dice loss."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from HNTumorSegLib.errors import ModelFileError
from HNTumorSegLib.pipeline.inference import Segmenter
from HNTumorSegLib.pipeline.model_file import save_model
from HNTumorSegLib.network import NetworkConfig, build_network
from HNTumorSegLib.pipeline.sliding_window import InferenceWindow, gaussian_weight, sliding_window_logits, window_starts
from HNTumorSegTraining.losses import soft_dice_loss

SMALL = NetworkConfig(channels=(4, 8, 16, 32, 64), psam_channels=(2, 4, 8))


@pytest.mark.parametrize("length,size,overlap", [(112, 32, 0.25), (256, 80, 0.25), (256, 80, 0.5), (50, 64, 0.25),
                                                 (96, 96, 0.0), (100, 30, 0.0)])
def test_window_starts_cover_the_axis_with_at_least_the_overlap(length, size, overlap):
    starts = window_starts(length, size, overlap)
    assert starts[0] == 0 and starts[-1] == max(0, length - size)
    covered = np.zeros(length, bool)
    for s in starts:
        covered[s:s + size] = True
    assert covered.all()
    for a, b in zip(starts, starts[1:]):
        assert size - (b - a) >= overlap * size - 1  # neighbours overlap by at least the fraction (rounding)


def test_gaussian_weight_peaks_in_the_centre_and_never_vanishes():
    w = gaussian_weight((8, 20, 20))
    assert w.shape == (8, 20, 20) and float(w.max()) == pytest.approx(1.0, abs=1e-6)
    assert float(w.min()) >= 1e-3 and float(w[4, 10, 10]) > float(w[0, 0, 0])


def test_blending_a_pointwise_map_reproduces_it_exactly():
    """A voxel-wise network gives the same logits in every patch, so any weighting must return them."""
    x = torch.rand(1, 2, 40, 70, 90)

    def forward(t):
        return torch.stack([t[:, 0] * 2, t[:, 1] - 1, t[:, 0] * t[:, 1]], dim=1)

    got = sliding_window_logits(forward, x, InferenceWindow((16, 32, 32), 0.25))
    torch.testing.assert_close(got, forward(x))


def test_each_patch_is_seen_with_its_own_statistics():
    """A network that subtracts its input's mean: patch-wise output differs from the whole-input pass."""
    x = torch.zeros(1, 1, 16, 64, 64)
    x[..., :32] = 1.0

    def forward(t):
        return t - t.mean()

    whole = forward(x)
    patched = sliding_window_logits(forward, x, InferenceWindow((16, 32, 32), 0.0))
    assert torch.allclose(patched, torch.zeros_like(x))  # every 32-wide patch is constant
    assert not torch.allclose(whole, patched)


def test_segmenter_runs_patch_wise_when_the_model_file_says_so(tmp_path):
    torch.manual_seed(0)
    model = build_network(SMALL)
    plain = tmp_path / "plain"
    patched = tmp_path / "patched"
    save_model(model, SMALL, plain)
    save_model(model, SMALL, patched, metadata={"inference": {"patch_size": [16, 32, 32], "overlap": 0.25}})
    seg_plain, seg_patch = Segmenter(plain, device="cpu"), Segmenter(patched, device="cpu")
    assert seg_plain.window is None and seg_patch.window == InferenceWindow((16, 32, 32), 0.25)
    shapes = []
    seg_patch.model.register_forward_pre_hook(lambda m, args: shapes.append(tuple(args[0].shape[2:])))
    x = np.random.default_rng(0).random((2, 32, 64, 64), dtype=np.float32)
    mask = seg_patch.predict_window(x)
    assert mask.shape == (32, 64, 64) and set(shapes) == {(16, 32, 32)}
    assert len(shapes) == len(window_starts(32, 16, .25)) * len(window_starts(64, 32, .25)) ** 2
    with torch.inference_mode():
        expected = sliding_window_logits(seg_patch.model, torch.from_numpy(x)[None], seg_patch.window)
    assert np.array_equal(mask, expected.argmax(1)[0].numpy().astype(np.uint8))


def test_a_malformed_inference_entry_is_a_model_file_error(tmp_path):
    save_model(build_network(SMALL), SMALL, tmp_path / "m", metadata={"inference": {"patch_size": [16, 32]}})
    with pytest.raises(ModelFileError, match="m.json: invalid 'inference' entry"):
        Segmenter(tmp_path / "m", device="cpu")
    assert json.loads((tmp_path / "m.json").read_text())["inference"]["patch_size"] == [16, 32]


# ------------------------------------------------------------------------------------ batch Dice
def test_batch_dice_pools_the_batch_and_equals_per_sample_for_one_sample():
    torch.manual_seed(0)
    logits = torch.randn(1, 3, 4, 8, 8)
    target = torch.randint(0, 3, (1, 4, 8, 8))
    assert torch.allclose(soft_dice_loss(logits, target, batch=True), soft_dice_loss(logits, target))
    logits2 = torch.randn(2, 3, 4, 8, 8)
    target2 = torch.randint(0, 3, (2, 4, 8, 8))
    p = torch.softmax(logits2, 1)[:, 1:]
    y = torch.stack([target2 == 1, target2 == 2], 1).float()
    by_hand = 1 - (2 * (p * y).sum() + 1e-5) / ((p * p).sum() + (y * y).sum() + 1e-5)
    assert torch.allclose(soft_dice_loss(logits2, target2, batch=True), by_hand)


def test_batch_dice_penalises_false_positives_in_a_patch_without_tumour():
    """Per sample, an all-background patch full of false positives gets ~no gradient; pooled, it does."""
    target = torch.zeros(2, 4, 8, 8, dtype=torch.long)
    target[0, 1:3, 2:6, 2:6] = 1
    base = torch.zeros(2, 3, 4, 8, 8)
    base[1, 1] = 5.0  # sample 1: confident GTVp everywhere, but it has no tumour
    grads = {}
    for batch in (False, True):
        logits = base.clone().requires_grad_(True)
        soft_dice_loss(logits, target, batch=batch).backward()
        grads[batch] = logits.grad[1].abs().sum().item()
    assert grads[False] < 1e-6 < grads[True]


def test_patches_batched_per_call_give_the_same_logits():
    """``batch`` patches per forward call: the network normalises per sample, so the blend is the same."""
    from HNTumorSegLib.network import NetworkConfig, build_network

    torch.manual_seed(0)
    net = build_network(NetworkConfig(channels=(4, 8, 16, 32, 64), psam_channels=(2, 4, 8))).eval()
    x = torch.rand(1, 2, 32, 64, 64)
    calls = []

    def forward(t):
        calls.append(t.shape[0])
        return net(t)

    with torch.no_grad():
        one = sliding_window_logits(forward, x, InferenceWindow((16, 32, 32), 0.25))
        single_calls = len(calls)
        calls.clear()
        three = sliding_window_logits(forward, x, InferenceWindow((16, 32, 32), 0.25, batch=3))
    assert max(calls) == 3 and len(calls) == -(-single_calls // 3)
    torch.testing.assert_close(three, one, rtol=1e-5, atol=1e-5)
    assert InferenceWindow.from_entry({"patch_size": [16, 32, 32], "batch": 3}).batch == 3
    assert "batch" not in InferenceWindow((16, 32, 32)).to_dict()
    with pytest.raises(ValueError, match="batch must be 1 to 64"):
        InferenceWindow((16, 32, 32), batch=0)
