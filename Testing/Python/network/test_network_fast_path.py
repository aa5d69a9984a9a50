"""The CPU inference fast path (channels-last, in place) gives the reference path's logits."""

from __future__ import annotations

import pytest
import torch

from HNTumorSegLib.network import NetworkConfig, build_network


@pytest.mark.parametrize("psam,norm", [(True, "se"), (False, "instance"), (True, "instance"), (False, "se")])
def test_fast_inference_equals_reference(psam, norm):
    torch.manual_seed(0)
    model = build_network(NetworkConfig(channels=(4, 8, 16, 32, 64), psam_channels=(2, 4, 8), psam=psam,
                                        norm=norm)).eval()
    x = torch.rand(1, 2, 32, 64, 64) * 2 - 0.5
    with torch.inference_mode():
        fast = model(x)
        model.fast_inference = False
        reference = model(x)
    assert fast.shape == reference.shape == (1, 3, 32, 64, 64)
    assert torch.allclose(fast, reference, atol=1e-4, rtol=1e-4), float((fast - reference).abs().max())
    with torch.no_grad():
        model.fast_inference = True
        assert torch.allclose(model(x), reference, atol=1e-4, rtol=1e-4)
    # The input is left untouched by the in-place path.
    x2 = x.clone()
    with torch.inference_mode():
        model(x2)
    assert torch.equal(x, x2)


def test_fast_inference_with_given_attention():
    torch.manual_seed(1)
    model = build_network(NetworkConfig(channels=(4, 8, 16, 32, 64), psam_channels=(2, 4, 8))).eval()
    x = torch.rand(1, 2, 32, 64, 64)
    a = torch.rand(1, 1, 32, 64, 64)
    with torch.inference_mode():
        fast = model(x, attention=a)
        model.fast_inference = False
        reference = model(x, attention=a)
    assert torch.allclose(fast, reference, atol=1e-4, rtol=1e-4)
