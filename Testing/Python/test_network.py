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
