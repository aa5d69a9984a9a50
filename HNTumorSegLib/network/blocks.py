"""Convolutional building blocks of the U-Nets: conv -> norm -> activation, down and up sampling.

Convolutions that feed a normalisation have no bias (instance normalisation removes it anyway).
Activations are in-place LeakyReLU: the normalisation output they overwrite is not needed by
autograd, and on a 112x256x256 volume every avoided copy is ~0.5 GB at 16 channels.
Down-sampling is the first convolution of a block having stride 2 (nnU-Net style), so no separate
pooling layer is needed; up-sampling is a stride-2 transposed convolution.

CPU inference fast path (``forward_inference`` methods, used by the networks when autograd is off,
see :func:`use_fast_inference`): activations stay in ``torch.channels_last_3d``, where oneDNN's 3D
convolutions are ~1.5x faster and need no reorder buffers. PyTorch's instance norm would copy such
a tensor back to NCDHW, so normalisation + activation are done here instead, in place and in
cache-sized depth slabs: one read for the per-channel statistics, one read-write for
``leaky_relu(x * scale + shift)``. A decoder's first convolution reads the up-sampled tensor and
the skip as two convolutions summed in place, so the concatenated input is never materialised.
"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _module

from .se_norm import SENorm3d

NEGATIVE_SLOPE = 0.01
CHANNELS_LAST = torch.channels_last_3d
#: Depth slabs of about this size keep the per-slab temporaries of the fast norm in the CPU cache.
SLAB_BYTES = 4 << 20


# ---------------------------------------------------------------------- inference fast path
def _has_forward_hooks(module: nn.Module) -> bool:
    if _module._global_forward_hooks or _module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def use_fast_inference(module: nn.Module, x: Tensor) -> bool:
    """Whether ``module`` may run its channels-last CPU inference path on ``x``.

    Only without autograd (the path works in place), for float32 CPU tensors with oneDNN, outside
    CPU autocast, and when no forward hook watches a submodule (hooks see the reference path's
    tensors, e.g. a decoder's concatenated input). ``module.fast_inference = False`` opts out.
    """
    return (getattr(module, "fast_inference", True) and not torch.is_grad_enabled()
            and x.device.type == "cpu" and x.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and not torch.is_autocast_enabled("cpu") and not _has_forward_hooks(module))


def _depth_slabs(x: Tensor) -> tuple[Tensor, ...]:
    """``x`` (B, C, Z, Y, X) split along Z into slabs of about SLAB_BYTES (views)."""
    per_slice = max(x.numel() // max(x.shape[2], 1) * x.element_size(), 1)
    return x.split(max(1, SLAB_BYTES // per_slice), dim=2)


def channel_stats(x: Tensor, eps: float) -> tuple[Tensor, Tensor]:
    """Per-(B, C) mean and ``1 / sqrt(var + eps)`` over the spatial dims (biased var, as instance norm).

    One pass over ``x`` in any memory format: sums of ``x - k`` and ``(x - k)^2`` per slab, where
    ``k`` is the mean of a sub-sample, so the one-pass variance does not cancel catastrophically.
    """
    b, c = x.shape[:2]
    n = x[0, 0].numel()
    k = x[:, :, ::4, ::4, ::4].mean(dim=(2, 3, 4), keepdim=True)
    s1 = torch.zeros(b, c, dtype=torch.float64)
    s2 = torch.zeros(b, c, dtype=torch.float64)
    slabs = _depth_slabs(x)
    tmp = torch.empty(slabs[0].shape, dtype=x.dtype).contiguous(memory_format=CHANNELS_LAST)
    for slab in slabs:
        t = tmp[:, :, :slab.shape[2]]
        torch.sub(slab, k, out=t)
        s1 += t.sum(dim=(2, 3, 4))
        t.square_()
        s2 += t.sum(dim=(2, 3, 4))
    m1 = s1 / n
    var = (s2 / n - m1 * m1).clamp_min_(0.0)
    mean = k.view(b, c).double() + m1
    return mean.to(x.dtype), (var + eps).rsqrt_().to(x.dtype)


def scale_shift_act_(x: Tensor, scale: Tensor, shift: Tensor, negative_slope: Optional[float]) -> Tensor:
    """In place, slab by slab: ``x = leaky_relu(x * scale + shift)``; (B, C) scale and shift.

    ``negative_slope=None`` skips the activation.
    """
    scale = scale.reshape(*scale.shape, 1, 1, 1)
    shift = shift.reshape(*shift.shape, 1, 1, 1)
    for slab in _depth_slabs(x):
        slab.mul_(scale).add_(shift)
        if negative_slope is not None:
            F.leaky_relu_(slab, negative_slope)
    return x


def norm_act_(x: Tensor, norm: nn.Module, act: nn.Module) -> Tensor:
    """``act(norm(x))`` for inference, in place when ``norm`` and ``act`` are the kinds built here."""
    slope = act.negative_slope if isinstance(act, nn.LeakyReLU) else None
    if isinstance(norm, SENorm3d):
        mean, rstd = channel_stats(x, norm.eps)
        gamma, beta = norm.excitation(mean)  # SE descriptor: spatial mean of the norm's input
        scale = gamma * rstd
        shift = beta - mean * scale
    elif isinstance(norm, nn.InstanceNorm3d) and not norm.track_running_stats:
        mean, rstd = channel_stats(x, norm.eps)
        scale = rstd * norm.weight if norm.affine else rstd
        shift = -mean * scale
        if norm.affine:
            shift = shift + norm.bias
    else:
        return act(norm(x))
    scale_shift_act_(x, scale, shift, slope)
    return x if slope is not None or isinstance(act, nn.Identity) else act(x)


_FUSED_CONV_ADD = [True]


def conv3d_add_(out: Tensor, x: Tensor, weight: Tensor, conv: nn.Conv3d) -> Tensor:
    """``out += conv3d(x, weight)`` (``conv``'s geometry, no bias), in place.

    Uses oneDNN's sum post-op (``mkldnn::_convolution_pointwise_``, as torch.compile's CPU backend
    does), so no second full-size output is allocated; falls back to conv + add_ where that
    private op is missing.
    """
    if _FUSED_CONV_ADD[0]:
        try:
            return torch.ops.mkldnn._convolution_pointwise_.binary(
                out, x, weight, None, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
                "add", 1.0, None, [], None)
        except (AttributeError, RuntimeError):
            _FUSED_CONV_ADD[0] = False
    return out.add_(F.conv3d(x, weight, None, conv.stride, conv.padding, conv.dilation, conv.groups))



def make_norm(norm: str, channels: int, se_reduction: int = 2) -> nn.Module:
    """``"se"`` -> :class:`SENorm3d`; ``"instance"`` -> affine InstanceNorm3d (the baseline)."""
    if norm == "se":
        return SENorm3d(channels, reduction=se_reduction)
    if norm == "instance":
        return nn.InstanceNorm3d(channels, affine=True)
    raise ValueError(f"unknown norm {norm!r} (expected 'se' or 'instance')")


class ConvNormAct(nn.Sequential):
    """Conv3d 3x3x3 (padding 1, optional stride) -> norm -> LeakyReLU."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "instance", stride: int = 1,
                 se_reduction: int = 2) -> None:
        super().__init__()
        self.conv = nn.Conv3d(in_channels, out_channels, kernel_size=3, stride=stride, padding=1, bias=False)
        self.norm = make_norm(norm, out_channels, se_reduction)
        self.act = nn.LeakyReLU(NEGATIVE_SLOPE, inplace=True)

    def forward_inference(self, x: Tensor, skip: Tensor | None = None) -> Tensor:
        """Fast path (no autograd, CPU): channels-last output, norm and activation in place.

        With ``skip``, the input is the channel concatenation ``[x, skip]``, never built: the
        convolution is split along its input channels and the halves summed in place.
        """
        conv = self.conv
        w = conv.weight
        if conv.padding_mode != "zeros":
            h = conv(torch.cat([x, skip], dim=1) if skip is not None else x)
        elif skip is None:
            h = F.conv3d(x, w.contiguous(memory_format=CHANNELS_LAST), conv.bias, conv.stride, conv.padding,
                         conv.dilation, conv.groups)
        else:
            c = x.shape[1]
            h = F.conv3d(x, w[:, :c].contiguous(memory_format=CHANNELS_LAST), conv.bias, conv.stride,
                         conv.padding, conv.dilation, conv.groups)
            h = conv3d_add_(h, skip, w[:, c:].contiguous(memory_format=CHANNELS_LAST), conv)
        return norm_act_(h, self.norm, self.act)


class ConvBlock(nn.Sequential):
    """Two :class:`ConvNormAct`; ``stride=2`` makes the first one down-sample by 2."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "instance", stride: int = 1,
                 se_reduction: int = 2) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_channels, out_channels, norm, stride, se_reduction)
        self.conv2 = ConvNormAct(out_channels, out_channels, norm, 1, se_reduction)

    def forward_inference(self, x: Tensor) -> Tensor:
        """Fast path of :meth:`forward` (see :meth:`ConvNormAct.forward_inference`)."""
        return self.conv2.forward_inference(self.conv1.forward_inference(x))


class UpSample(nn.ConvTranspose3d):
    """Transposed Conv3d, kernel 2, stride 2: doubles each spatial size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=2, stride=2)

    def forward_inference(self, x: Tensor) -> Tensor:
        """Fast path: channels-last output (oneDNN's transposed convolution is ~3x faster so)."""
        return F.conv_transpose3d(x.contiguous(memory_format=CHANNELS_LAST), self.weight, self.bias, self.stride,
                                  self.padding, self.output_padding, self.groups, self.dilation)


class PointwiseConv3d(nn.Conv3d):
    """1x1x1 convolution (the output heads) computed as one matrix product.

    Same parameters and state-dict keys as ``nn.Conv3d(in, out, 1)``, but on CPU the matmul is
    ~3x faster than oneDNN's 1x1x1 convolution on a full-resolution volume (memory bound).
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        if x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=CHANNELS_LAST):
            # Channels-last: x is a (B * Z * Y * X, C) matrix already; the output stays channels-last.
            rows = x.permute(0, 2, 3, 4, 1).reshape(-1, c)
            w = self.weight.view(self.out_channels, c).t()
            y = torch.addmm(self.bias, rows, w) if self.bias is not None else rows @ w
            return y.view(b, *x.shape[2:], self.out_channels).permute(0, 4, 1, 2, 3)
        y = torch.matmul(self.weight.view(self.out_channels, c), x.reshape(b, c, -1))
        if self.bias is not None:
            y.add_(self.bias.view(1, -1, 1))
        return y.view(b, self.out_channels, *x.shape[2:])
