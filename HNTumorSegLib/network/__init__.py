"""Networks: the paper's PSAM U-Net with SE Normalization, and the plain U-Net baseline.

Build one with ``build_network(NetworkConfig(...))``; see :mod:`.config` for the options.
Bottom layer: imports torch and ``HNTumorSegLib.errors`` only; the pipeline and training import it.
"""

from __future__ import annotations

from torch import nn

from .blocks import ConvBlock, ConvNormAct, PointwiseConv3d, UpSample, make_norm
from .config import NetworkConfig
from .psam import PSAM, multiscale
from .se_norm import SENorm3d
from .unet import PSAMUNet, SkipGate


def build_network(config: NetworkConfig | None = None) -> nn.Module:
    """The network described by ``config`` (default: PSAM U-Net with SE Norm), freshly initialised."""
    return PSAMUNet(config if config is not None else NetworkConfig())


__all__ = [
    "NetworkConfig", "PSAMUNet", "build_network",
    "SENorm3d", "PSAM", "multiscale", "SkipGate", "ConvBlock", "ConvNormAct", "PointwiseConv3d", "UpSample", "make_norm",
]
