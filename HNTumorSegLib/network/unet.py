"""3D U-Net backbone with optional PSAM skip gating (paper section 2.3, eq. 11).

Input (B, 2, Z, Y, X) -- channel 0 CT, channel 1 PET -- and output (B, 3, Z, Y, X) logits for
background, GTVp and GTVn. Five levels with stride-2 down-sampling, so each spatial size must be
divisible by 16. With ``config.psam`` the encoder features of levels 1-3 (full, 1/2 and 1/4
resolution) are multiplied by PSAM's attention ``A^(s)`` before being concatenated into the
decoder; deeper skips are not gated, and PSAM touches nothing else. ``psam=False,
norm="instance"`` gives the plain U-Net baseline from the same code.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from .blocks import CHANNELS_LAST, ConvBlock, PointwiseConv3d, UpSample, Workspace, use_fast_inference
from .config import PSAM_GATED_LEVELS, NetworkConfig
from .psam import PSAM, multiscale


class SkipGate(nn.Module):
    """Eq. 11: ``F~ = F * A`` (A has one channel, broadcast over F's channels).

    A module (not a bare multiply) so the gated skip can be observed with forward hooks.
    Without autograd the product is written into ``F``, which nothing else uses afterwards.
    """

    def forward(self, feat: Tensor, att: Tensor) -> Tensor:
        if torch.is_grad_enabled() and (feat.requires_grad or att.requires_grad):
            return feat * att
        return feat.mul_(att)


class PSAMUNet(nn.Module):
    """PSAM U-Net with SE Normalization (or the plain U-Net baseline), built from a NetworkConfig.

    Without autograd on the CPU, :meth:`forward` takes a faster channels-last path that computes the
    same logits (to float rounding; see ``blocks.use_fast_inference``); its output is then a
    channels-last tensor. Set ``fast_inference = False`` for the reference path.
    """

    fast_inference: bool = True

    def __init__(self, config: NetworkConfig | None = None) -> None:
        super().__init__()
        config = config if config is not None else NetworkConfig()
        config.validate()
        self.config = config
        ch = config.channels
        n = len(ch)
        kw = dict(norm=config.norm, se_reduction=config.se_reduction)
        self.encoders = nn.ModuleList(
            ConvBlock(config.in_channels if i == 0 else ch[i - 1], ch[i], stride=1 if i == 0 else 2, **kw)
            for i in range(n)
        )
        # ups[i] / decoders[i] produce level i+1's resolution (index 0 = full resolution).
        self.ups = nn.ModuleList(UpSample(ch[i + 1], ch[i]) for i in range(n - 1))
        self.decoders = nn.ModuleList(ConvBlock(2 * ch[i], ch[i], **kw) for i in range(n - 1))
        self.head = PointwiseConv3d(ch[0], config.out_channels)
        if config.psam:
            self.psam: PSAM | None = PSAM(config.psam_channels, in_channels=1)
            self.gates = nn.ModuleList(SkipGate() for _ in range(min(PSAM_GATED_LEVELS, n - 1)))
        else:
            self.psam = None
            self.gates = nn.ModuleList()

    # ------------------------------------------------------------------ helpers
    def _check_input(self, x: Tensor) -> None:
        c = self.config
        if x.dim() != 5 or x.shape[1] != c.in_channels:
            raise ValueError(f"expected input (B, {c.in_channels}, Z, Y, X), got {tuple(x.shape)}")
        m = c.size_multiple
        if any(s % m for s in x.shape[2:]):
            raise ValueError(f"input spatial size {tuple(x.shape[2:])} must be divisible by {m}")

    def attention(self, x: Tensor) -> Tensor:
        """PSAM's full-resolution attention map A, (B, 1, Z, Y, X) in (0, 1), from x's PET channel."""
        if self.psam is None:
            raise ValueError("this network has no PSAM (config.psam is False)")
        self._check_input(x)
        p = self.config.pet_channel
        return self.psam(x[:, p:p + 1])

    def _gate_maps(self, x: Tensor, attention: Tensor | None, ws: Workspace | None = None) -> list[Tensor]:
        if self.psam is None:
            if attention is not None:
                raise ValueError("attention given, but this network has no PSAM (config.psam is False)")
            return []
        if attention is None and ws is not None and self.psam.fast_inference:
            p = self.config.pet_channel
            a = self.psam.forward_inference(x[:, p:p + 1], ws)
        elif attention is None:
            a = self.attention(x)
        else:
            want = (1, *x.shape[2:])
            if attention.dim() != 5 or tuple(attention.shape[1:]) != want or attention.shape[0] not in (1, x.shape[0]):
                raise ValueError(f"attention must have shape (B or 1, {', '.join(map(str, want))}), "
                                 f"got {tuple(attention.shape)}")
            a = attention.to(dtype=x.dtype, device=x.device)
        return multiscale(a, len(self.gates))

    # ------------------------------------------------------------------ forward
    def forward(self, x: Tensor, attention: Tensor | None = None) -> Tensor:
        """Logits (B, out_channels, Z, Y, X). ``attention`` (B, 1, Z, Y, X) replaces PSAM's A."""
        self._check_input(x)
        if use_fast_inference(self, x):
            return self._forward_inference(x, attention)
        maps = self._gate_maps(x, attention)  # computed first, so PSAM's activations are freed
        skips: list[Tensor] = []
        h = x
        last = len(self.encoders) - 1
        for i, enc in enumerate(self.encoders):
            h = enc(h)
            if i < last:
                skips.append(h)
        for i in reversed(range(len(self.decoders))):
            up = self.ups[i](h)
            skip = skips.pop()
            if i < len(maps):
                skip = self.gates[i](skip, maps[i])
            h = torch.cat([up, skip], dim=1)
            del up, skip  # drop the references so the inputs of cat can be freed now
            h = self.decoders[i](h)
        return self.head(h)

    def _forward_inference(self, x: Tensor, attention: Tensor | None) -> Tensor:
        """:meth:`forward` without autograd on the CPU: channels-last, in place, no concatenation.

        Every large intermediate, PSAM's included, lives in one :class:`~.blocks.Workspace`,
        released as soon as nothing reads it any more; only the returned logits are a fresh tensor.
        """
        ws = Workspace()
        # The full-resolution level holds three buffers at once (up-sampled, skip, conv output);
        # reserved first, their memory also serves PSAM and every smaller level.
        ws.reserve(x.shape[0] * self.config.channels[0] * math.prod(x.shape[2:]), count=3, dtype=x.dtype)
        maps = self._gate_maps(x, attention, ws)
        skips: list[Tensor] = []
        h = x if x.is_contiguous(memory_format=CHANNELS_LAST) else ws.empty(x.shape, x.dtype).copy_(x)
        last = len(self.encoders) - 1
        for i, enc in enumerate(self.encoders):
            out = enc.forward_inference(h, ws)
            if i == 0:
                ws.release(h)  # the channels-last copy of x; deeper inputs are the skips: kept
            h = out
            if i < last:
                skips.append(h)
        for i in reversed(range(len(self.decoders))):
            up = self.ups[i].forward_inference(h, ws)
            ws.release(h)  # the bottleneck or the previous decoder's output
            ws.trim(up.numel())  # levels only grow from here: smaller buffers are not needed again
            skip = skips.pop()
            if i < len(maps):
                skip = self.gates[i](skip, maps[i])
            h1 = self.decoders[i].conv1.forward_inference(up, skip, ws)
            ws.release(up, skip)
            h = self.decoders[i].conv2.forward_inference(h1, ws=ws)
            ws.release(h1)
            del up, skip, h1
        return self.head(h)
