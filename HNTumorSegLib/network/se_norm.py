"""Squeeze-and-Excitation Normalization (paper eq. 12; Iantsen et al., HECKTOR 2020).

Instance normalisation without a learned affine, followed by a *data-dependent* per-channel affine
``y_c = gamma_c * IN(x)_c + beta_c``, where ``gamma = sigmoid(FC(ReLU(FC(g))))`` and
``beta = tanh(FC(ReLU(FC(g))))`` come from two squeeze-excitation branches on the global channel
descriptor ``g``. This lets the network re-weight CT- and PET-driven channels per image.

The descriptor ``g`` is the global average of the block's *input* ``x``, as in Iantsen et al.'s
reference implementation (``FastSmoothSENorm``). Eq. 12 of the paper writes ``GAP(IN(x))``, but an
instance-normalised channel has zero mean by construction, so that descriptor is identically 0 and
gamma/beta would collapse to learned constants -- i.e. plain affine instance norm.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class SEBranch(nn.Sequential):
    """FC(C -> C/r) -> ReLU -> FC(C/r -> C) on a (B, C) channel descriptor (pre-activation)."""

    def __init__(self, channels: int, hidden: int) -> None:
        super().__init__(nn.Linear(channels, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, channels))


class SENorm3d(nn.Module):
    """SE Normalization for (B, C, Z, Y, X) tensors.

    ``gamma`` lies in (0, 1) and ``beta`` in (-1, 1), so the modulation is bounded and stable.
    """

    def __init__(self, channels: int, reduction: int = 2, eps: float = 1e-5) -> None:
        super().__init__()
        if channels < 1 or reduction < 1:
            raise ValueError(f"SENorm3d: channels and reduction must be >= 1, got {channels}, {reduction}")
        hidden = max(channels // reduction, 1)
        self.channels = channels
        self.eps = eps
        self.gamma = SEBranch(channels, hidden)
        self.beta = SEBranch(channels, hidden)

    def modulation(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Per-sample, per-channel ``(gamma, beta)``, each of shape (B, C)."""
        return self.excitation(x.mean(dim=(2, 3, 4)))

    def excitation(self, g: Tensor) -> tuple[Tensor, Tensor]:
        """``(gamma, beta)`` from the (B, C) channel descriptor ``g`` (the spatial mean of the input)."""
        return torch.sigmoid(self.gamma(g)), torch.tanh(self.beta(g))

    def forward(self, x: Tensor) -> Tensor:
        gamma, beta = self.modulation(x)
        shape = gamma.shape + (1, 1, 1)
        gamma, beta = gamma.reshape(shape), beta.reshape(shape)
        xn = F.instance_norm(x, eps=self.eps)
        if torch.is_grad_enabled() and (xn.requires_grad or gamma.requires_grad):
            return torch.addcmul(beta, xn, gamma)  # one allocation, autograd-safe
        return xn.mul_(gamma).add_(beta)  # inference: reuse the normalised buffer

    def extra_repr(self) -> str:
        return f"{self.channels}, hidden={self.gamma[0].out_features}"
