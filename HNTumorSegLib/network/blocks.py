"""Convolutional building blocks of the U-Nets: conv -> norm -> activation, down and up sampling.

Convolutions that feed a normalisation have no bias (instance normalisation removes it anyway).
Activations are in-place LeakyReLU: the normalisation output they overwrite is not needed by
autograd, and on a 112x256x256 volume every avoided copy is ~0.5 GB at 16 channels.
Down-sampling is the first convolution of a block having stride 2 (nnU-Net style), so no separate
pooling layer is needed; up-sampling is a stride-2 transposed convolution.

CPU inference fast path (``forward_inference`` methods, used by the networks when autograd is off,
see :func:`use_fast_inference`); same results to float rounding, ~2x faster on a full volume:

* activations stay in ``torch.channels_last_3d``, where oneDNN's 3D convolutions are ~1.5x faster
  and need no reorder buffers;
* PyTorch's instance norm would copy such a tensor back to NCDHW, so normalisation + activation
  are done here instead, in place and in cache-sized depth slabs: one read for the per-channel
  statistics, one read-write for ``leaky_relu(x * scale + shift)``;
* a decoder's first convolution reads the up-sampled tensor and the skip as two convolutions
  summed in place, so the concatenated input is never built;
* convolution and up-sampling outputs go into the buffers of a :class:`Workspace` (convolutions
  via oneDNN's sum post-op onto a zeroed buffer): a fresh 0.5 GB tensor costs ~0.1 s of page
  faults, and with glibc's or jemalloc's default settings every fresh output is faulted in anew
  (the reference path takes ~5 million page faults, ~10 s of kernel CPU time, per full-size
  pass); the workspace pages in ~1.6 GB once per pass.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.modules import module as _module

from .se_norm import SENorm3d

NEGATIVE_SLOPE = 0.01
CHANNELS_LAST = torch.channels_last_3d
#: Depth slabs of about this size keep the fast norm's passes in the CPU cache. Smaller is a
#: little faster on an idle CPU, but every slab op is a parallel region, and each one stalls at
#: its barrier while another process holds a core (4 MB slabs made a busy CPU 2x slower).
SLAB_BYTES = 16 << 20
#: Same, for the (rows, 8 * C) product of the transposed convolution (see UpSample.forward_inference).
UP_SLAB_BYTES = 16 << 20


# ---------------------------------------------------------------------- inference fast path
def _has_forward_hooks(module: nn.Module) -> bool:
    if _module._global_forward_hooks or _module._global_forward_pre_hooks:
        return True
    return any(m._forward_hooks or m._forward_pre_hooks for m in module.modules())


def _cpu_autocast_enabled() -> bool:
    try:
        return torch.is_autocast_enabled("cpu")
    except TypeError:  # torch < 2.4
        return torch.is_autocast_cpu_enabled()


def use_fast_inference(module: nn.Module, x: Tensor) -> bool:
    """Whether ``module`` may run its channels-last CPU inference path on ``x``.

    Only without autograd (the path works in place), for float32 CPU tensors with oneDNN, outside
    CPU autocast, and when no forward hook watches a submodule (hooks see the reference path's
    tensors, e.g. a decoder's concatenated input). ``module.fast_inference = False`` opts out.
    """
    return (getattr(module, "fast_inference", True) and not torch.is_grad_enabled()
            and x.device.type == "cpu" and x.dtype == torch.float32
            and torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled
            and not _cpu_autocast_enabled() and not _has_forward_hooks(module))


def _depth_slabs(x: Tensor) -> tuple[Tensor, ...]:
    """``x`` (B, C, Z, Y, X) split along Z into slabs of about SLAB_BYTES (views)."""
    per_slice = max(x.numel() // max(x.shape[2], 1) * x.element_size(), 1)
    return x.split(max(1, SLAB_BYTES // per_slice), dim=2)


def channel_stats(x: Tensor, eps: float, ws: Workspace | None = None) -> tuple[Tensor, Tensor]:
    """Per-(B, C) mean and ``1 / sqrt(var + eps)`` over the spatial dims (biased var, as instance norm).

    One pass over ``x`` in any memory format: sums of ``x - k`` and ``(x - k)^2`` per slab, where
    ``k`` is the mean of a sub-sample, so the one-pass variance does not cancel catastrophically.
    The slab temporary is ``ws``'s scratch buffer when given.
    """
    b, c = x.shape[:2]
    n = x[0, 0].numel()
    k = x[:, :, ::4, ::4, ::4].mean(dim=(2, 3, 4), keepdim=True)
    s1 = torch.zeros(b, c, dtype=torch.float64)
    s2 = torch.zeros(b, c, dtype=torch.float64)
    slabs = _depth_slabs(x)
    shape = slabs[0].shape
    if ws is not None:
        tmp = ws.scratch(math.prod(shape), x.dtype).view(shape[0], *shape[2:], shape[1]).permute(0, 4, 1, 2, 3)
    else:
        tmp = torch.empty(shape, dtype=x.dtype, memory_format=CHANNELS_LAST)
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
        torch.addcmul(shift, slab, scale, out=slab)
        if negative_slope is not None:
            F.leaky_relu_(slab, negative_slope)
    return x


def norm_act_(x: Tensor, norm: nn.Module, act: nn.Module, ws: Workspace | None = None) -> Tensor:
    """``act(norm(x))`` for inference, in place when ``norm`` and ``act`` are the kinds built here."""
    slope = act.negative_slope if isinstance(act, nn.LeakyReLU) else None
    if isinstance(norm, SENorm3d):
        mean, rstd = channel_stats(x, norm.eps, ws)
        gamma, beta = norm.excitation(mean)  # SE descriptor: spatial mean of the norm's input
        scale = gamma * rstd
        shift = beta - mean * scale
    elif isinstance(norm, nn.InstanceNorm3d) and not norm.track_running_stats:
        mean, rstd = channel_stats(x, norm.eps, ws)
        scale = rstd * norm.weight if norm.affine else rstd
        shift = -mean * scale
        if norm.affine:
            shift = shift + norm.bias
    else:
        return act(norm(x))
    scale_shift_act_(x, scale, shift, slope)
    return x if slope is not None or isinstance(act, nn.Identity) else act(x)


class Workspace:
    """Large channels-last buffers recycled within one fast forward pass.

    :meth:`empty` hands out a (B, C, Z, Y, X) channels-last tensor at the start of the smallest
    released buffer that is large enough, or of a new one. Memory is only paged in where it is
    written, so a few full-resolution buffers :meth:`reserve`-d up front also serve every smaller
    level: the pass pages in about its peak working set once, not every intermediate anew.
    Release only tensors that nothing else still uses: a later :meth:`empty` overwrites them.
    """

    def __init__(self) -> None:
        self._free: list[Tensor] = []
        self._owned: dict[int, Tensor] = {}  # data_ptr -> the 1-D buffer, for release()
        self._scratch: Tensor | None = None

    def scratch(self, numel: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """A 1-D temporary of ``numel`` elements, the same memory for every caller.

        For short-lived slab temporaries: a fresh 16 MB one per call would be unmapped and
        page-faulted again each time by allocators that return large blocks at once (jemalloc).
        """
        if self._scratch is None or self._scratch.numel() < numel or self._scratch.dtype != dtype:
            self._scratch = torch.empty(numel, dtype=dtype)
        return self._scratch[:numel]

    def _new(self, n: int, dtype: torch.dtype) -> Tensor:
        flat = torch.empty(n, dtype=dtype)
        self._owned[flat.data_ptr()] = flat
        return flat

    def reserve(self, numel: int, count: int = 1, dtype: torch.dtype = torch.float32) -> None:
        """Add ``count`` free buffers of ``numel`` elements (not paged in until used)."""
        self._free.extend(self._new(numel, dtype) for _ in range(count))

    def empty(self, shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> Tensor:
        b, c, *spatial = shape
        n = b * c * math.prod(spatial)
        fits = [i for i, f in enumerate(self._free) if f.numel() >= n and f.dtype == dtype]
        if fits:
            flat = self._free.pop(min(fits, key=lambda i: self._free[i].numel()))
        else:
            flat = self._new(n, dtype)
        return flat[:n].view(b, *spatial, c).permute(0, 4, 1, 2, 3)

    def release(self, *tensors: Tensor) -> None:
        """Give back tensors from :meth:`empty`; anything else is ignored."""
        for t in tensors:
            flat = self._owned.get(t.data_ptr())
            if flat is not None and not any(f is flat for f in self._free):
                self._free.append(flat)

    def trim(self, min_numel: int) -> None:
        """Free the released buffers smaller than ``min_numel`` (a decoder only grows)."""
        for f in self._free:
            if f.numel() < min_numel:
                del self._owned[f.data_ptr()]
        self._free = [f for f in self._free if f.numel() >= min_numel]


def as_channels_last(x: Tensor) -> Tensor:
    """``x`` in channels-last form; a one-channel tensor only gets channels-last strides (no copy).

    oneDNN picks its layout from the input's strides, and a contiguous (B, 1, Z, Y, X) tensor reads
    as NCDHW, which would make every later layer NCDHW too.
    """
    if x.dim() == 5 and x.shape[1] == 1:
        s = x.stride()
        y, xx = x.shape[3:]
        if s[4] == 1 and s[3] == xx and s[2] == y * xx:
            return x.as_strided(x.shape, (s[0], 1, s[2], s[3], 1), x.storage_offset())
    return x.contiguous(memory_format=CHANNELS_LAST)


_FUSED_CONV_ADD = [True]


def conv3d_add_(out: Tensor, x: Tensor, weight: Tensor, conv: nn.Conv3d, bias: Tensor | None = None) -> Tensor:
    """``out += conv3d(x, weight, bias)`` with ``conv``'s geometry, in place.

    Uses oneDNN's sum post-op (``mkldnn::_convolution_pointwise_``, as torch.compile's CPU backend
    does), so no full-size output is allocated; falls back to conv + add_ where that private op
    is missing or refuses the arguments.
    """
    if _FUSED_CONV_ADD[0]:
        try:
            return torch.ops.mkldnn._convolution_pointwise_.binary(
                out, x, weight, bias, list(conv.padding), list(conv.stride), list(conv.dilation), conv.groups,
                "add", 1.0, None, [], None)
        except (AttributeError, RuntimeError):
            _FUSED_CONV_ADD[0] = False
    return out.add_(F.conv3d(x, weight, bias, conv.stride, conv.padding, conv.dilation, conv.groups))


def conv3d_inference(conv: nn.Conv3d, parts: list[tuple[Tensor, Tensor]], ws: Workspace | None) -> Tensor:
    """``conv`` applied to the channel concatenation of the ``parts``' inputs, never built.

    ``parts`` is ``[(input, weight slice for its channels), ...]``; the result is channels-last,
    in a ``ws`` buffer when one is given.
    """
    x0, w0 = parts[0]
    if ws is not None and _FUSED_CONV_ADD[0] and x0.dim() == 5:
        spatial = [(s + 2 * p - d * (k - 1) - 1) // st + 1 for s, p, d, k, st in
                   zip(x0.shape[2:], conv.padding, conv.dilation, conv.kernel_size, conv.stride)]
        out = ws.empty((x0.shape[0], conv.out_channels, *spatial), x0.dtype).zero_()
        bias = conv.bias
        for x, w in parts:
            out = conv3d_add_(out, x, w, conv, bias)
            bias = None
        return out
    out = F.conv3d(x0, w0, conv.bias, conv.stride, conv.padding, conv.dilation, conv.groups)
    for x, w in parts[1:]:
        out = conv3d_add_(out, x, w, conv)
    return out


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

    def forward_inference(self, x: Tensor, skip: Tensor | None = None, ws: Workspace | None = None) -> Tensor:
        """Fast path (no autograd, CPU): channels-last output, norm and activation in place.

        With ``skip``, the input is the channel concatenation ``[x, skip]``, which is never built:
        the convolution is split along its input channels and the halves summed in place.
        """
        conv = self.conv
        if conv.padding_mode != "zeros" or isinstance(conv.padding, str):
            h = conv(torch.cat([x, skip], dim=1) if skip is not None else x)
        else:
            w = conv.weight
            if skip is None:
                parts = [(x, w.contiguous(memory_format=CHANNELS_LAST))]
            else:
                c = x.shape[1]
                parts = [(x, w[:, :c].contiguous(memory_format=CHANNELS_LAST)),
                         (skip, w[:, c:].contiguous(memory_format=CHANNELS_LAST))]
            h = conv3d_inference(conv, parts, ws)
        return norm_act_(h, self.norm, self.act, ws)


class ConvBlock(nn.Sequential):
    """Two :class:`ConvNormAct`; ``stride=2`` makes the first one down-sample by 2."""

    def __init__(self, in_channels: int, out_channels: int, norm: str = "instance", stride: int = 1,
                 se_reduction: int = 2) -> None:
        super().__init__()
        self.conv1 = ConvNormAct(in_channels, out_channels, norm, stride, se_reduction)
        self.conv2 = ConvNormAct(out_channels, out_channels, norm, 1, se_reduction)

    def forward_inference(self, x: Tensor, ws: Workspace | None = None) -> Tensor:
        """Fast path of :meth:`forward` (see :meth:`ConvNormAct.forward_inference`)."""
        h = self.conv1.forward_inference(x, ws=ws)
        out = self.conv2.forward_inference(h, ws=ws)
        if ws is not None:
            ws.release(h)
        return out


class UpSample(nn.ConvTranspose3d):
    """Transposed Conv3d, kernel 2, stride 2: doubles each spatial size."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__(in_channels, out_channels, kernel_size=2, stride=2)

    def forward_inference(self, x: Tensor, ws: Workspace | None = None) -> Tensor:
        """Fast path: channels-last output, in a ``ws`` buffer when one is given.

        Kernel 2 / stride 2 does not overlap, so it is one (voxels, C_in) x (C_in, 8 C_out) product
        whose rows are scattered to the 2x2x2 children: ~2x faster than oneDNN's transposed
        convolution and written straight into a recycled buffer.
        """
        x = x.contiguous(memory_format=CHANNELS_LAST)
        plain = (tuple(self.kernel_size) == (2, 2, 2) and tuple(self.stride) == (2, 2, 2) and self.groups == 1
                 and not any(self.padding) and not any(self.output_padding) and tuple(self.dilation) == (1, 1, 1))
        if ws is None or not plain:
            return F.conv_transpose3d(x, self.weight, self.bias, self.stride, self.padding, self.output_padding,
                                      self.groups, self.dilation)
        b, ci, d, h, w = x.shape
        co = self.out_channels
        out = ws.empty((b, co, 2 * d, 2 * h, 2 * w), x.dtype)
        wmat = self.weight.permute(0, 2, 3, 4, 1).reshape(ci, 8 * co)  # (C_in, [kz, ky, kx, C_out])
        bias = self.bias.repeat(8) if self.bias is not None else None
        rows = x.permute(0, 2, 3, 4, 1)  # (B, Z, Y, X, C_in), a view
        children = out.permute(0, 2, 3, 4, 1).view(b, d, 2, h, 2, w, 2, co).permute(0, 1, 3, 5, 2, 4, 6, 7)
        step = max(1, UP_SLAB_BYTES // (b * h * w * 8 * co * x.element_size()))
        tmp = ws.scratch(b * min(step, d) * h * w * 8 * co, x.dtype).view(-1, 8 * co)
        for z0 in range(0, d, step):
            z1 = min(d, z0 + step)
            t = tmp[:b * (z1 - z0) * h * w]
            src = rows[:, z0:z1].reshape(-1, ci)
            if bias is None:
                torch.mm(src, wmat, out=t)
            else:
                torch.addmm(bias, src, wmat, out=t)
            children[:, z0:z1].copy_(t.view(b, z1 - z0, h, w, 2, 2, 2, co))
        return out


class PointwiseConv3d(nn.Conv3d):
    """1x1x1 convolution (the output heads) computed as one matrix product.

    Same parameters and state-dict keys as ``nn.Conv3d(in, out, 1)``, but on CPU the matmul is
    ~3x faster than oneDNN's 1x1x1 convolution on a full-resolution volume (memory bound).
    A channels-last input gives a channels-last output (no copy).
    """

    def __init__(self, in_channels: int, out_channels: int, bias: bool = True) -> None:
        super().__init__(in_channels, out_channels, kernel_size=1, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        b, c = x.shape[:2]
        if x.dim() == 5 and not x.is_contiguous() and x.is_contiguous(memory_format=CHANNELS_LAST):
            # Channels-last: x is a (B * Z * Y * X, C) matrix already.
            rows = x.permute(0, 2, 3, 4, 1).reshape(-1, c)
            w = self.weight.view(self.out_channels, c).t()
            y = torch.addmm(self.bias, rows, w) if self.bias is not None else rows @ w
            return y.view(b, *x.shape[2:], self.out_channels).permute(0, 4, 1, 2, 3)
        y = torch.matmul(self.weight.view(self.out_channels, c), x.reshape(b, c, -1))
        if self.bias is not None:
            y.add_(self.bias.view(1, -1, 1))
        return y.view(b, self.out_channels, *x.shape[2:])
