"""PET-guided Spatial Attention Module (PSAM, paper section 2.3).

A light U-Net on the PET volume alone outputs one sigmoid map ``A`` in (0, 1) at full resolution;
:func:`multiscale` average-pools it by 1, 2, 4 to match the first three skip levels of the
backbone, where eq. 11 gates the encoder features. Lesions are most conspicuous on PET, so this
lets PET decide *where* the CT/PET skip features pass into the decoder.
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .blocks import ConvBlock, PointwiseConv3d, UpSample, Workspace, as_channels_last, use_fast_inference


def multiscale(a: Tensor, levels: int = 3) -> list[Tensor]:
    """``[A, avgpool2(A), avgpool4(A), ...]`` -- ``levels`` maps, each half the size of the last."""
    maps = [a]
    for k in range(1, levels):
        f = 2 ** k
        maps.append(F.avg_pool3d(a, kernel_size=f, stride=f))
    return maps


class PSAM(nn.Module):
    """Small instance-norm U-Net: (B, 1, Z, Y, X) PET -> (B, 1, Z, Y, X) attention in (0, 1).

    Spatial sizes must be divisible by ``2 ** (len(channels) - 1)``.
    """

    #: Use the channels-last CPU inference path when autograd is off (see ``blocks.use_fast_inference``).
    fast_inference: bool = True

    def __init__(self, channels: Sequence[int] = (8, 16, 32), in_channels: int = 1) -> None:
        super().__init__()
        channels = tuple(channels)
        if not channels:
            raise ValueError("PSAM needs at least one level")
        self.channels = channels
        self.encoders = nn.ModuleList(
            ConvBlock(in_channels if i == 0 else channels[i - 1], c, "instance", stride=1 if i == 0 else 2)
            for i, c in enumerate(channels)
        )
        self.ups = nn.ModuleList(UpSample(channels[i + 1], channels[i]) for i in range(len(channels) - 1))
        self.decoders = nn.ModuleList(
            ConvBlock(2 * channels[i], channels[i], "instance") for i in range(len(channels) - 1)
        )
        self.head = PointwiseConv3d(channels[0], 1)

    def forward(self, pet: Tensor) -> Tensor:
        if use_fast_inference(self, pet):
            return self.forward_inference(pet)
        skips: list[Tensor] = []
        h = pet
        for i, enc in enumerate(self.encoders):
            h = enc(h)
            if i < len(self.encoders) - 1:
                skips.append(h)
        for i in reversed(range(len(self.decoders))):
            h = torch.cat([self.ups[i](h), skips.pop()], dim=1)
            h = self.decoders[i](h)
        return torch.sigmoid(self.head(h))

    def forward_inference(self, pet: Tensor, ws: Workspace | None = None) -> Tensor:
        """:meth:`forward` without autograd on the CPU: channels-last, in place, no concatenation.

        Intermediates live in ``ws`` (a new :class:`~.blocks.Workspace` if None) and are all
        released to it on return; the attention map itself is a fresh tensor.
        """
        ws = ws if ws is not None else Workspace()
        skips: list[Tensor] = []
        h = as_channels_last(pet)
        for i, enc in enumerate(self.encoders):
            h = enc.forward_inference(h, ws)
            if i < len(self.encoders) - 1:
                skips.append(h)
        for i in reversed(range(len(self.decoders))):
            up = self.ups[i].forward_inference(h, ws)
            ws.release(h)  # the bottleneck or the previous decoder's output
            skip = skips.pop()
            h1 = self.decoders[i].conv1.forward_inference(up, skip, ws)
            ws.release(up, skip)
            h = self.decoders[i].conv2.forward_inference(h1, ws=ws)
            ws.release(h1)
            del up, skip, h1
        a = torch.sigmoid_(self.head(h))
        ws.release(h)
        return a
