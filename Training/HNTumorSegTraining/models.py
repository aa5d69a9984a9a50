"""The four networks of the paper's comparison (Table 3), built from one JSON-ready description.

* ``psam``: the paper's PSAM U-Net with SE Normalization (:mod:`HNTumorSegLib.network`).
* ``unet``: the same backbone without PSAM and with instance norm (the U-Net baseline).
* ``unetr``: MONAI's UNETR (ViT encoder on 16^3 patches, CNN decoder). It is built for one input
  size (``img_size``, its position embedding has one entry per 16^3 patch), so it trains on that
  size and validates with a sliding window.
* ``umamba``: U-Mamba-Bot: a U-Net (instance norm, the same conv blocks) whose bottleneck
  features pass through a Mamba layer over all bottleneck voxels (:mod:`.mamba`).

Why a spec dict: a run must be able to rebuild exactly the network its weights belong to, from
``run.json``, a checkpoint or an exported ``best.json``, without pickling classes. Every model
is built by :func:`build_from_spec` from a plain dict; :func:`make_spec` fills the defaults. All
models map (B, 2, Z, Y, X) -- CT, PET -- to (B, 3, Z, Y, X) logits.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import torch
from torch import Tensor, nn

from HNTumorSegLib.pipeline.crop import WINDOW_ZYX
from HNTumorSegLib.optional_packages import require
from HNTumorSegLib.network import ConvBlock, NetworkConfig, PointwiseConv3d, UpSample, build_network

from .mamba import DEFAULT_SCAN_CHUNK, MambaLayer

MODEL_NAMES = ("psam", "unet", "unetr", "umamba")
IN_CHANNELS, OUT_CHANNELS = 2, 3
#: UNETR's ViT patch size (fixed in MONAI's UNETR).
UNETR_PATCH = 16
#: Defaults of the paper-scale UNETR (Hatamizadeh et al. 2022: ViT-B/16, feature size 16).
UNETR_DEFAULTS = {"feature_size": 16, "hidden_size": 768, "mlp_dim": 3072, "num_heads": 12,
                  "dropout_rate": 0.0, "norm_name": "instance"}
UMAMBA_DEFAULTS = {"d_state": 16, "d_conv": 4, "expand": 2, "scan_chunk": DEFAULT_SCAN_CHUNK}


def _int_tuple(values: Sequence[int], what: str) -> tuple[int, ...]:
    out = tuple(int(v) for v in values)
    if not out or any(v <= 0 for v in out) or any(int(v) != v for v in values):
        raise ValueError(f"{what} must be positive integers, got {list(values)}")
    return out


def make_spec(name: str, *, channels: Sequence[int] | None = None,
              patch_size: Sequence[int] | None = None, **options: Any) -> dict[str, Any]:
    """The JSON-ready spec of model ``name`` with its defaults filled in.

    ``channels``: per-level widths (psam, unet, umamba; default NetworkConfig's 16..256).
    ``patch_size``: the training input size; UNETR is built for it (default: the full window).
    ``options``: model-specific keys -- psam/unet: ``psam_channels``, ``se_reduction``; unetr:
    the keys of :data:`UNETR_DEFAULTS`; umamba: those of :data:`UMAMBA_DEFAULTS`.
    """
    if name not in MODEL_NAMES:
        raise ValueError(f"unknown model {name!r} (expected one of {', '.join(MODEL_NAMES)})")
    chans = _int_tuple(channels, "channels") if channels is not None else None
    if name in ("psam", "unet"):
        kw: dict[str, Any] = {"psam": name == "psam", "norm": "se" if name == "psam" else "instance"}
        if chans is not None:
            kw["channels"] = chans
        for key in ("psam_channels", "se_reduction"):
            if key in options:
                kw[key] = options.pop(key)
        _no_more(name, options)
        return {"name": name, "network": NetworkConfig(**kw).to_dict()}
    if name == "unetr":
        if chans is not None:
            raise ValueError("unetr has no per-level channels; use feature_size / hidden_size")
        size = _int_tuple(patch_size if patch_size is not None else WINDOW_ZYX, "patch_size")
        if len(size) != 3 or any(s % UNETR_PATCH for s in size):
            raise ValueError(f"unetr needs a 3-D input size divisible by {UNETR_PATCH}, got {list(size)}")
        spec = {"name": name, "img_size": list(size)}
        for key, default in UNETR_DEFAULTS.items():
            spec[key] = options.pop(key, default)
        _no_more(name, options)
        if spec["hidden_size"] % spec["num_heads"]:
            raise ValueError(f"unetr hidden_size {spec['hidden_size']} must be divisible by num_heads "
                             f"{spec['num_heads']}")
        return spec
    spec = {"name": name, "channels": list(chans if chans is not None else NetworkConfig().channels)}
    for key, default in UMAMBA_DEFAULTS.items():
        spec[key] = int(options.pop(key, default))
    _no_more(name, options)
    if len(spec["channels"]) < 2:
        raise ValueError("umamba needs at least 2 levels")
    return spec


def _no_more(name: str, options: Mapping[str, Any]) -> None:
    if options:
        raise ValueError(f"unknown option(s) for {name}: {', '.join(sorted(options))}")


def build_from_spec(spec: Mapping[str, Any]) -> nn.Module:
    """A freshly initialised network for ``spec`` (as :func:`make_spec` writes it)."""
    name = spec.get("name")
    if name in ("psam", "unet"):
        return build_network(NetworkConfig.from_dict(spec["network"]))
    if name == "unetr":
        # imported here: MONAI takes seconds to import, and it comes with the training extra only
        require("einops", "the unetr model")  # MONAI's UNETR needs it, and says so only when building
        UNETR = require("monai.networks.nets", "the unetr model").UNETR

        net = UNETR(in_channels=IN_CHANNELS, out_channels=OUT_CHANNELS, img_size=tuple(spec["img_size"]),
                    feature_size=spec["feature_size"], hidden_size=spec["hidden_size"], mlp_dim=spec["mlp_dim"],
                    num_heads=spec["num_heads"], norm_name=spec["norm_name"], dropout_rate=spec["dropout_rate"],
                    proj_type="conv", spatial_dims=3)
        # MONAI's transformer blocks always create a cross-attention LayerNorm that UNETR never
        # calls; frozen, DDP does not wait for its (never coming) gradients. The state dict is unchanged.
        for pname, param in net.named_parameters():
            if ".norm_cross_attn." in pname:
                param.requires_grad_(False)
        return net
    if name == "umamba":
        return UMambaBot(spec["channels"], d_state=spec["d_state"], d_conv=spec["d_conv"], expand=spec["expand"],
                         scan_chunk=spec["scan_chunk"])
    raise ValueError(f"unknown model {name!r} in spec (expected one of {', '.join(MODEL_NAMES)})")


def build_model(name: str, *, channels: Sequence[int] | None = None, patch_size: Sequence[int] | None = None,
                **options: Any) -> nn.Module:
    """``build_from_spec(make_spec(...))``; the spec is kept as ``model.model_spec``."""
    spec = make_spec(name, channels=channels, patch_size=patch_size, **options)
    model = build_from_spec(spec)
    model.model_spec = spec
    return model


def config_of(spec: Mapping[str, Any]) -> NetworkConfig | None:
    """The NetworkConfig of a psam/unet spec (what HNTumorSegLib model files hold), else None."""
    return NetworkConfig.from_dict(spec["network"]) if spec.get("name") in ("psam", "unet") else None


def fixed_input_size(spec: Mapping[str, Any]) -> tuple[int, int, int] | None:
    """The one input size the model accepts (UNETR), or None when any multiple of :func:`size_multiple` works."""
    return tuple(spec["img_size"]) if spec.get("name") == "unetr" else None


def size_multiple(spec: Mapping[str, Any]) -> int:
    """Each spatial input size must be a multiple of this."""
    name = spec.get("name")
    if name in ("psam", "unet"):
        return NetworkConfig.from_dict(spec["network"]).size_multiple
    if name == "unetr":
        return UNETR_PATCH
    return 2 ** (len(spec["channels"]) - 1)


class UMambaBot(nn.Module):
    """U-Mamba-Bot (Ma et al. 2024): a 3-D U-Net with a Mamba layer after the bottleneck block.

    Encoder, decoder and head are the blocks of :mod:`HNTumorSegLib.network` with instance norm
    (conv 3x3x3 -> IN -> LeakyReLU, stride-2 down-sampling, transposed-conv up-sampling), so the
    comparison with ``unet`` isolates the Mamba layer. The bottleneck (1/16 resolution with 5
    levels: 7 x 16 x 16 = 1792 tokens for the full window) is where a global sequence model is
    cheapest.
    """

    def __init__(self, channels: Sequence[int], d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 scan_chunk: int = DEFAULT_SCAN_CHUNK) -> None:
        super().__init__()
        ch = list(channels)
        self.encoders = nn.ModuleList(
            ConvBlock(IN_CHANNELS if i == 0 else ch[i - 1], ch[i], norm="instance", stride=1 if i == 0 else 2)
            for i in range(len(ch)))
        self.mamba = MambaLayer(ch[-1], d_state=d_state, d_conv=d_conv, expand=expand, scan_chunk=scan_chunk)
        self.ups = nn.ModuleList(UpSample(ch[i + 1], ch[i]) for i in range(len(ch) - 1))
        self.decoders = nn.ModuleList(ConvBlock(2 * ch[i], ch[i], norm="instance") for i in range(len(ch) - 1))
        self.head = PointwiseConv3d(ch[0], OUT_CHANNELS)
        self.size_multiple = 2 ** (len(ch) - 1)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 5 or x.shape[1] != IN_CHANNELS or any(s % self.size_multiple for s in x.shape[2:]):
            raise ValueError(f"expected input (B, {IN_CHANNELS}, Z, Y, X) with sizes divisible by "
                             f"{self.size_multiple}, got {tuple(x.shape)}")
        skips = []
        h = x
        for enc in self.encoders:
            h = enc(h)
            skips.append(h)
        h = self.mamba(skips.pop())
        for i in reversed(range(len(self.decoders))):
            h = self.decoders[i](torch.cat([self.ups[i](h), skips.pop()], dim=1))
        return self.head(h)
