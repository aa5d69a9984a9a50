"""Tests of HNTumorSegLib.network: SE Norm, blocks, PSAM and the PSAM U-Net (small, CPU-fast)."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from HNTumorSegLib.errors import ModelFileError
from HNTumorSegLib.network import (
                                   PSAM, NetworkConfig, PointwiseConv3d, PSAMUNet, SENorm3d, build_network, multiscale,
                                   )

SMALL = dict(channels=(4, 8, 16, 32, 64), psam_channels=(2, 4, 8))
SHAPE = (1, 2, 16, 32, 32)


def small(psam: bool = True, norm: str = "se", **kw) -> PSAMUNet:
    torch.manual_seed(0)
    return build_network(NetworkConfig(psam=psam, norm=norm, **SMALL, **kw))


def rand(shape=SHAPE, seed: int = 1) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g)


# ---------------------------------------------------------------- SE Normalization
def _manual_in(x: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    mean = x.mean(dim=(2, 3, 4), keepdim=True)
    var = x.var(dim=(2, 3, 4), keepdim=True, unbiased=False)
    return (x - mean) / torch.sqrt(var + eps)


def _affine_input(seed: int = 0) -> torch.Tensor:
    x = rand((2, 6, 4, 8, 8), seed)
    scale = torch.linspace(0.5, 3.0, 6).view(1, 6, 1, 1, 1)
    shift = torch.linspace(-2.0, 4.0, 6).view(1, 6, 1, 1, 1)
    return x * scale + shift


@pytest.mark.parametrize("grad", [True, False])
def test_senorm_equals_gamma_in_plus_beta(grad):
    torch.manual_seed(0)
    m = SENorm3d(6, reduction=2)
    x = _affine_input()
    g = x.mean(dim=(2, 3, 4))  # descriptor of the block input (Iantsen et al.)
    gamma = torch.sigmoid(m.gamma[2](torch.relu(m.gamma[0](g)))).detach()
    beta = torch.tanh(m.beta[2](torch.relu(m.beta[0](g)))).detach()
    expected = gamma[..., None, None, None] * _manual_in(x) + beta[..., None, None, None]
    with torch.set_grad_enabled(grad):  # both the autograd path and the in-place inference path
        y = m(x)
    torch.testing.assert_close(y.detach(), expected, rtol=1e-5, atol=1e-5)


def test_senorm_gamma_beta_ranges():
    torch.manual_seed(0)
    m = SENorm3d(8, reduction=4)
    with torch.no_grad():
        for p in m.parameters():
            p.mul_(3.0)  # push the branches towards saturation
        gamma, beta = m.modulation(rand((4, 8, 4, 4, 4)) * 5)
    assert gamma.shape == beta.shape == (4, 8)
    assert bool(((gamma > 0) & (gamma < 1)).all())
    assert bool(((beta > -1) & (beta < 1)).all())


def test_senorm_normalised_part_invariant_to_channel_affine():
    torch.manual_seed(0)
    m = SENorm3d(6)
    x = rand((2, 6, 4, 8, 8))
    a = torch.tensor([0.5, 2.0, 3.0, 1.5, 0.8, 7.0]).view(1, 6, 1, 1, 1)  # std >> sqrt(eps)
    b = torch.tensor([1.0, -3.0, 0.0, 10.0, 2.0, -0.5]).view(1, 6, 1, 1, 1)
    with torch.no_grad():
        y1, y2 = m(x.clone()), m(x * a + b)
        (g1, b1), (g2, b2) = m.modulation(x), m.modulation(x * a + b)
        r1 = (y1 - b1[..., None, None, None]) / g1[..., None, None, None]
        r2 = (y2 - b2[..., None, None, None]) / g2[..., None, None, None]
    torch.testing.assert_close(r1, r2, rtol=1e-4, atol=1e-4)
    # With the excitation weights at zero, gamma/beta are constants and y itself is invariant.
    with torch.no_grad():
        m.gamma[2].weight.zero_()
        m.beta[2].weight.zero_()
        torch.testing.assert_close(m(x.clone()), m(x * a + b), rtol=1e-4, atol=1e-4)


def test_senorm_modulation_depends_on_input():
    """gamma/beta must be data-dependent (GAP of IN(x) would be identically zero)."""
    torch.manual_seed(0)
    m = SENorm3d(6)
    x = rand((1, 6, 4, 8, 8))
    with torch.no_grad():
        g1, _ = m.modulation(x)
        g2, _ = m.modulation(x + torch.linspace(-3, 3, 6).view(1, 6, 1, 1, 1))
    assert not torch.allclose(g1, g2)


def test_pointwise_conv_equals_conv3d():
    torch.manual_seed(0)
    pw = PointwiseConv3d(5, 3)
    conv = torch.nn.Conv3d(5, 3, 1)
    conv.load_state_dict(pw.state_dict())
    x = rand((2, 5, 4, 6, 8))
    torch.testing.assert_close(pw(x), conv(x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- config
def test_config_defaults_and_roundtrip():
    c = NetworkConfig()
    assert (c.in_channels, c.out_channels, c.channels, c.psam, c.norm, c.psam_channels, c.pet_channel) == \
        (2, 3, (16, 32, 64, 128, 256), True, "se", (8, 16, 32), 1)
    d = json.loads(json.dumps(c.to_dict()))
    assert NetworkConfig.from_dict(d) == c
    b = NetworkConfig(psam=False, norm="instance", channels=[4, 8, 16])
    assert NetworkConfig.from_dict(b.to_dict()) == b and b.channels == (4, 8, 16)


@pytest.mark.parametrize("change, needle", [
    ({"norm": "batch"}, "norm"),
    ({"channels": [16, 0, 64, 128, 256]}, "channels"),
    ({"channels": "16,32"}, "channels"),
    ({"psam": "yes"}, "psam"),
    ({"pet_channel": 2}, "pet_channel"),
    ({"in_channels": 2.0}, "in_channels"),
    ({"channels": [16, 32, 64]}, "psam needs"),
    ({"bogus": 1}, "unknown key"),
])
def test_config_rejects_bad_values(change, needle):
    d = {**NetworkConfig().to_dict(), **change}
    with pytest.raises(ModelFileError) as e:
        NetworkConfig.from_dict(d, source="m.json")
    msg = str(e.value)
    assert needle in msg and msg.startswith("m.json: ") and "\n" not in msg


def test_config_rejects_missing_key():
    d = NetworkConfig().to_dict()
    del d["norm"]
    with pytest.raises(ModelFileError, match="missing key"):
        NetworkConfig.from_dict(d)
    with pytest.raises(ModelFileError):
        NetworkConfig(norm="group")


# ---------------------------------------------------------------- shapes and variants
@pytest.mark.parametrize("psam, norm", [(True, "se"), (False, "instance"), (True, "instance"), (False, "se")])
def test_output_shape(psam, norm):
    m = small(psam, norm)
    with torch.no_grad():
        assert m(rand((2, 2, 16, 32, 32))).shape == (2, 3, 16, 32, 32)
        assert m(rand((1, 2, 32, 64, 48))).shape == (1, 3, 32, 64, 48)


def test_default_network_small_input():
    m = build_network()
    assert isinstance(m, PSAMUNet) and m.config == NetworkConfig()
    with torch.inference_mode():
        y = m(rand((1, 2, 16, 32, 32)))
    assert y.shape == (1, 3, 16, 32, 32) and torch.isfinite(y).all()


def test_unet_baseline_has_no_psam_or_se_parameters():
    m = small(psam=False, norm="instance")
    names = [n for n, _ in m.named_parameters()]
    assert m.psam is None and len(m.gates) == 0
    assert not any("psam" in n for n in names)
    assert not any(isinstance(mod, SENorm3d) for mod in m.modules())
    assert not any(".gamma." in n or ".beta." in n for n in names)
    p = small(psam=True, norm="se")
    pnames = [n for n, _ in p.named_parameters()]
    assert any(n.startswith("psam.") for n in pnames) and any(".gamma." in n for n in pnames)
    assert len(p.gates) == 3


def test_input_validation():
    m = small()
    with pytest.raises(ValueError, match="divisible by 16"):
        m(rand((1, 2, 16, 32, 24)))
    with pytest.raises(ValueError, match="expected input"):
        m(rand((1, 3, 16, 32, 32)))
    with pytest.raises(ValueError, match="attention must have shape"):
        m(rand(), attention=torch.ones(1, 1, 8, 16, 16))
    with pytest.raises(ValueError, match="no PSAM"):
        small(psam=False, norm="instance")(rand(), attention=torch.ones(1, 1, 16, 32, 32))


def test_grad_and_inference_paths_agree():
    """The in-place inference paths (SE Norm, skip gate) compute the same as the autograd ones."""
    m = small().eval()
    x = rand()
    y_grad = m(x)
    assert y_grad.requires_grad
    with torch.inference_mode():
        y_inf = m(x)
    torch.testing.assert_close(y_grad.detach(), y_inf, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- PSAM
def test_multiscale_sizes_and_values():
    a = torch.rand(2, 1, 16, 32, 32)
    maps = multiscale(a)
    assert [tuple(t.shape) for t in maps] == [(2, 1, 16, 32, 32), (2, 1, 8, 16, 16), (2, 1, 4, 8, 8)]
    assert maps[0] is a
    torch.testing.assert_close(maps[1][0, 0, 1, 2, 3], a[0, 0, 2:4, 4:6, 6:8].mean())
    torch.testing.assert_close(maps[2][1, 0, 0, 1, 1], a[1, 0, 0:4, 4:8, 4:8].mean())


def test_psam_map_is_sigmoid_at_full_resolution_and_reads_pet_only():
    m = small().eval()
    x = rand()
    with torch.no_grad():
        a = m.attention(x)
        assert a.shape == (1, 1, 16, 32, 32) and bool(((a > 0) & (a < 1)).all())
        x2 = x.clone()
        x2[:, 0] = rand((1, 16, 32, 32), seed=9)  # change CT only
        torch.testing.assert_close(m.attention(x2), a)
        torch.testing.assert_close(m.psam(x[:, 1:2]), a)
        # Default forward == forward with PSAM's own map passed explicitly.
        torch.testing.assert_close(m(x), m(x, attention=a))


def _decoder_inputs(model: PSAMUNet, x: torch.Tensor, **kw):
    """Run the model; return its output and, per level, the (up-sampled, skip) halves of each decoder's input."""
    ch = model.config.channels
    seen: dict[int, torch.Tensor] = {}
    hooks = [dec.register_forward_pre_hook(lambda mod, args, i=i: seen.__setitem__(i, args[0].clone()))
             for i, dec in enumerate(model.decoders)]
    try:
        y = model(x, **kw)
    finally:
        for h in hooks:
            h.remove()
    ups = [seen[i][:, :ch[i]] for i in range(len(model.decoders))]
    skips = [seen[i][:, ch[i]:] for i in range(len(model.decoders))]
    return y, ups, skips


def test_attention_zero_removes_gated_skips():
    m = small().eval()
    x = rand()
    zeros = torch.zeros(1, 1, 16, 32, 32)
    ones = torch.ones(1, 1, 16, 32, 32)
    with torch.no_grad():
        y0, ups0, skips0 = _decoder_inputs(m, x, attention=zeros)
        y1, ups1, skips1 = _decoder_inputs(m, x, attention=ones)
    # Levels 1-3 (full, 1/2, 1/4 resolution) reach the decoder as exact zeros; level 4 is ungated.
    assert [tuple(s.shape[2:]) for s in skips0[:3]] == [(16, 32, 32), (8, 16, 16), (4, 8, 8)]
    for s in skips0[:3]:
        assert torch.count_nonzero(s) == 0
    assert torch.count_nonzero(skips0[3]) > 0
    torch.testing.assert_close(skips0[3], skips1[3])  # the encoder itself is untouched by A
    for s in skips1[:3]:
        assert torch.count_nonzero(s) > 0
    # Only the skips are gated: the up-sampled path into level 3 comes from ungated levels 4-5.
    torch.testing.assert_close(ups0[2], ups1[2], rtol=0, atol=0)
    assert all(torch.count_nonzero(u) > 0 for u in ups0)
    assert not torch.allclose(y0, y1)

    # attention = 0 must equal attention = 1 with the gated skips zeroed where they enter the decoder.
    hooks = [g.register_forward_hook(lambda mod, args, out: torch.zeros_like(out)) for g in m.gates]
    try:
        with torch.no_grad():
            y_hooked = m(x, attention=ones)
    finally:
        for h in hooks:
            h.remove()
    torch.testing.assert_close(y0, y_hooked, rtol=0, atol=0)


def test_psam_acts_only_through_the_skips():
    """With A = 1 the PSAM net equals the same backbone without PSAM (eq. 11 is the only coupling)."""
    m = small(psam=True, norm="se").eval()
    plain = small(psam=False, norm="se").eval()
    state = {k: v for k, v in m.state_dict().items() if not k.startswith("psam.")}
    plain.load_state_dict(state, strict=True)
    x = rand()
    with torch.no_grad():
        torch.testing.assert_close(m(x, attention=torch.ones(1, 1, 16, 32, 32)), plain(x), rtol=0, atol=0)
        a = torch.rand(1, 1, 16, 32, 32)
        assert not torch.allclose(m(x, attention=a), plain(x))


def test_attention_scales_gated_skip_linearly():
    m = small().eval()
    x = rand()
    with torch.no_grad():
        _, _, s1 = _decoder_inputs(m, x, attention=torch.ones(1, 1, 16, 32, 32))
        _, _, sh = _decoder_inputs(m, x, attention=torch.full((1, 1, 16, 32, 32), 0.5))
    for i in range(3):
        torch.testing.assert_close(sh[i], 0.5 * s1[i])
    torch.testing.assert_close(sh[3], s1[3])


def test_gradients_reach_psam():
    m = small().train()
    x = rand()
    target = torch.randint(0, 3, (1, 16, 32, 32))
    loss = F.cross_entropy(m(x), target)
    loss.backward()
    for name, p in m.psam.named_parameters():
        assert p.grad is not None, name
        assert torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
    assert all(p.grad is not None for p in m.parameters())


def test_psam_module_alone():
    p = PSAM((2, 4, 8))
    a = p(rand((2, 1, 8, 16, 16)))
    assert a.shape == (2, 1, 8, 16, 16) and bool(((a > 0) & (a < 1)).all())


# ---------------------------------------------------------------- CPU inference fast path
def _reference(model, *args, **kw):
    """The model's output on the reference (NCDHW, autograd-style) path, without autograd."""
    mods = [m for m in model.modules() if hasattr(m, "fast_inference")]
    for m in mods:
        m.fast_inference = False
    try:
        with torch.inference_mode():
            return model(*args, **kw)
    finally:
        for m in mods:
            m.fast_inference = True


@pytest.mark.parametrize("psam, norm, shape", [
    (True, "se", (1, 2, 16, 32, 32)),
    (True, "se", (2, 2, 32, 48, 16)),
    (False, "instance", (1, 2, 16, 32, 48)),
    (True, "instance", (2, 2, 16, 16, 32)),
])
def test_fast_inference_equals_reference(psam, norm, shape):
    m = small(psam, norm).eval()
    x = rand(shape) * 3 + 1
    with torch.inference_mode():
        y = m(x)
    ref = _reference(m, x)
    assert y.shape == ref.shape == (shape[0], 3, *shape[2:])
    assert y.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
    if psam:
        with torch.inference_mode():
            a = m.attention(x)
        torch.testing.assert_close(a, _reference(m.psam, x[:, 1:2]), rtol=1e-5, atol=1e-5)


def test_fast_inference_default_network_and_given_attention():
    m = build_network().eval()
    x = rand((1, 2, 16, 32, 32))
    a = torch.rand(1, 1, 16, 32, 32, generator=torch.Generator().manual_seed(3))
    with torch.inference_mode():
        y, ya = m(x), m(x, attention=a)
    torch.testing.assert_close(y, _reference(m, x), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(ya, _reference(m, x, attention=a), rtol=1e-4, atol=1e-4)


def test_fast_path_only_without_autograd_and_hooks(monkeypatch):
    m = small().eval()
    calls = []
    original = PSAMUNet._forward_inference
    monkeypatch.setattr(PSAMUNet, "_forward_inference", lambda self, *a: calls.append(1) or original(self, *a))
    x = rand()
    m(x)  # autograd on: reference path
    assert calls == []
    with torch.no_grad():
        m(x)
    assert calls == [1]
    handle = m.decoders[0].register_forward_pre_hook(lambda mod, args: None)
    with torch.no_grad():
        m(x)  # a hook watches a decoder input: reference path, so it sees the concatenation
    handle.remove()
    assert calls == [1]
    m.fast_inference = False
    with torch.no_grad():
        m(x)
    assert calls == [1]


def test_channel_stats_match_instance_norm_statistics():
    from HNTumorSegLib.network.blocks import channel_stats
    x = rand((2, 5, 9, 20, 12))
    x = x * torch.tensor([1e-3, 1.0, 5.0, 0.2, 3.0]).view(1, 5, 1, 1, 1) \
        + torch.tensor([1e3, -2.0, 0.0, 50.0, 7.0]).view(1, 5, 1, 1, 1)  # mean >> std in channel 0
    var, mean = torch.var_mean(x.double(), dim=(2, 3, 4), correction=0)
    for t in (x, x.contiguous(memory_format=torch.channels_last_3d)):
        m, rstd = channel_stats(t, 1e-5)
        torch.testing.assert_close(m.double(), mean, rtol=1e-6, atol=1e-6)
        torch.testing.assert_close(rstd.double(), (var + 1e-5).rsqrt(), rtol=1e-4, atol=0)


def test_fast_blocks_equal_modules():
    from HNTumorSegLib.network.blocks import ConvBlock, UpSample, Workspace
    torch.manual_seed(0)
    cl = torch.channels_last_3d
    up, block = UpSample(6, 3), ConvBlock(6, 3, "se")
    h = rand((2, 6, 4, 6, 8)).contiguous(memory_format=cl)
    skip = rand((2, 3, 8, 12, 16), seed=2).contiguous(memory_format=cl)
    with torch.no_grad():
        ref_up = up(h)
        ref = block(torch.cat([ref_up, skip], dim=1))
        for ws in (None, Workspace()):
            u = up.forward_inference(h, ws)
            torch.testing.assert_close(u, ref_up, rtol=1e-5, atol=1e-5)
            y = block.conv2.forward_inference(block.conv1.forward_inference(u, skip.clone(), ws), ws=ws)
            assert y.is_contiguous(memory_format=cl)
            torch.testing.assert_close(y, ref, rtol=1e-4, atol=1e-4)
        strided = ConvBlock(2, 4, "instance", stride=2)
        x = rand((1, 2, 8, 8, 8))
        torch.testing.assert_close(strided.forward_inference(x, Workspace()), strided(x), rtol=1e-4, atol=1e-4)


def test_workspace_recycles_released_buffers():
    from HNTumorSegLib.network.blocks import Workspace
    cl = torch.channels_last_3d
    ws = Workspace()
    a = ws.empty((1, 4, 2, 3, 5))  # 120 elements
    assert a.shape == (1, 4, 2, 3, 5) and a.is_contiguous(memory_format=cl)
    ws.release(a)
    b = ws.empty((1, 2, 4, 3, 5))  # the same number of elements: the same memory
    assert b.data_ptr() == a.data_ptr() and b.is_contiguous(memory_format=cl)
    c = ws.empty((1, 2, 2, 3, 5))  # nothing free: a new buffer (60 elements)
    assert c.data_ptr() != a.data_ptr()
    ws.release(b, c)
    ws.release(b)  # released twice: still listed once
    d = ws.empty((1, 1, 2, 3, 5))  # the smallest free buffer that fits: c's
    e = ws.empty((1, 1, 2, 3, 5))  # then a's, of which it uses the start
    assert (d.data_ptr(), e.data_ptr()) == (c.data_ptr(), a.data_ptr())
    assert ws.empty((1, 1, 2, 3, 5)).data_ptr() not in (a.data_ptr(), c.data_ptr())
    ws.release(d, e)
    ws.trim(100)  # drops c's 60-element buffer
    assert ws.empty((1, 2, 2, 3, 5)).data_ptr() == a.data_ptr()
    ws.release(torch.zeros(1, 4, 2, 3, 5))  # not from the workspace: ignored
    assert not ws._free
    ws.reserve(1000, count=2)
    assert [f.numel() for f in ws._free] == [1000, 1000]
    f, g = ws.empty((1, 10, 10, 10, 1)), ws.empty((1, 1, 2, 2, 2))
    assert not ws._free and f.data_ptr() != g.data_ptr()
    assert ws.scratch(50).data_ptr() == ws.scratch(20).data_ptr()


def test_pointwise_conv_channels_last_equals_conv3d():
    torch.manual_seed(0)
    pw = PointwiseConv3d(5, 3)
    conv = torch.nn.Conv3d(5, 3, 1)
    conv.load_state_dict(pw.state_dict())
    x = rand((2, 5, 4, 6, 8)).contiguous(memory_format=torch.channels_last_3d)
    y = pw(x)
    assert y.is_contiguous(memory_format=torch.channels_last_3d)
    torch.testing.assert_close(y, conv(x), rtol=1e-5, atol=1e-5)


def test_fast_inference_without_fused_conv_add(monkeypatch):
    """Where oneDNN's in-place conv + add is unavailable, the fast path falls back to conv + add_."""
    from HNTumorSegLib.network import blocks
    monkeypatch.setattr(blocks, "_FUSED_CONV_ADD", [False])
    m = small().eval()
    x = rand()
    with torch.inference_mode():
        y = m(x)
    torch.testing.assert_close(y, _reference(m, x), rtol=1e-4, atol=1e-4)
