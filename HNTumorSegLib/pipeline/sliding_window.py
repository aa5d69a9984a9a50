"""Sliding-window prediction over the analysis window, for networks trained on patches.

Why it exists: every block of the network normalises with instance statistics (SE Norm), i.e.
per-channel means and variances over the whole input. A network trained on 32 x 80 x 80 patches
has only ever seen the statistics of such patches; fed the whole 112 x 256 x 256 window (mostly
air, brain and bladder) in one pass, its normalised features shift and it segments nothing
useful (on the bundled phantom model: GTVp Dice 0.80-0.93 on a patch, 0.0 on the same region
cut from a whole-window pass). So a patch-trained model is run the way it was trained: on
overlapping patches of its training size, blended with a Gaussian weight that trusts each
patch's centre more than its border (as nnU-Net and MONAI do). Networks trained on whole
windows (the paper's set-up) keep the single pass.

The model file says which: ``"inference": {"patch_size": [Z, Y, X], "overlap": 0.25}`` in its
JSON (see :class:`InferenceWindow`); absent means one pass over the whole window. ``"batch": n``
runs n patches per forward call: the same numbers (every normalisation is per sample), fewer
calls; whether it pays depends on the machine (``Testing/benchmarks/inference_settings.py``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
from torch import Tensor

#: Default fraction by which neighbouring patches overlap along each axis.
DEFAULT_OVERLAP = 0.25
#: Patches per forward call that training records in the model files it writes. Measured on 4 unseen
#: phantoms on a 2-core CPU (Testing/benchmarks/inference_settings.py): 4 patches a call cut the
#: network time from 11.8 s to 9.0 s a case with the same numbers; a model file that does not
#: say runs one patch a call.
RECORDED_BATCH = 4
#: Gaussian sigma as a fraction of the patch size along each axis (nnU-Net's choice).
SIGMA_SCALE = 0.125


@dataclass(frozen=True)
class InferenceWindow:
    """Patch size (Z, Y, X) and overlap of sliding-window inference."""

    patch_size: tuple[int, int, int]
    overlap: float = DEFAULT_OVERLAP
    batch: int = 1  # patches per forward call

    def __post_init__(self) -> None:
        if len(self.patch_size) != 3 or any(int(p) < 1 for p in self.patch_size):
            raise ValueError(f"patch_size must be three positive sizes, got {list(self.patch_size)}")
        if not 0.0 <= self.overlap < 1.0:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if not 1 <= int(self.batch) <= 64:
            raise ValueError(f"batch must be 1 to 64 patches per call, got {self.batch}")

    @classmethod
    def from_meta(cls, meta: Mapping[str, Any], source: str = "model") -> "InferenceWindow | None":
        """The window a model JSON asks for, or None for a single whole-window pass."""
        return cls.from_entry(meta.get("inference"), source)

    @classmethod
    def from_entry(cls, spec: Any, source: str = "model") -> "InferenceWindow | None":
        """The window of one ``"inference"`` entry (a model JSON's, or an ensemble member's); None: one pass."""
        if spec is None:
            return None
        try:
            if spec.get("patch_size") is None:
                return None
            return cls(tuple(int(p) for p in spec["patch_size"]), float(spec.get("overlap", DEFAULT_OVERLAP)),
                       int(spec.get("batch", 1)))
        except (TypeError, ValueError, AttributeError) as exc:
            raise ValueError(f"{source}: invalid 'inference' entry {spec!r}: {exc}") from None

    def to_dict(self) -> dict[str, Any]:
        out = {"patch_size": [int(p) for p in self.patch_size], "overlap": float(self.overlap)}
        if self.batch != 1:
            out["batch"] = int(self.batch)
        return out


def window_starts(length: int, size: int, overlap: float) -> list[int]:
    """Start indices of patches of ``size`` covering ``[0, length)`` with at least ``overlap``."""
    if size >= length:
        return [0]
    step = size * (1.0 - overlap)
    n = math.ceil((length - size) / step) + 1
    return sorted({round(i * (length - size) / (n - 1)) for i in range(n)})


def gaussian_weight(size: Sequence[int], device: torch.device | None = None) -> Tensor:
    """Separable Gaussian importance map of ``size``, peak 1, never below 1e-3 (borders still count)."""
    axes = []
    for n in size:
        x = torch.arange(n, dtype=torch.float32, device=device) - (n - 1) / 2.0
        axes.append(torch.exp(-0.5 * (x / (SIGMA_SCALE * n)) ** 2))
    w = axes[0][:, None, None] * axes[1][None, :, None] * axes[2][None, None, :]
    return (w / w.max()).clamp_min(1e-3)


def sliding_window_logits(forward: Callable[[Tensor], Tensor], image: Tensor, window: InferenceWindow) -> Tensor:
    """Gaussian-blended logits (B, C, Z, Y, X) in float32 of ``forward`` over ``image`` (B, Cin, Z, Y, X).

    A patch larger than the image along an axis is cut to the image there.
    """
    if image.dim() != 5:
        raise ValueError(f"image must be (B, C, Z, Y, X), got shape {tuple(image.shape)}")
    shape = tuple(image.shape[2:])
    size = tuple(min(p, s) for p, s in zip(window.patch_size, shape))
    weight = gaussian_weight(size, image.device)
    out: Tensor | None = None
    norm = torch.zeros(shape, dtype=torch.float32, device=image.device)
    boxes = [(slice(z, z + size[0]), slice(y, y + size[1]), slice(x, x + size[2]))
             for z in window_starts(shape[0], size[0], window.overlap)
             for y in window_starts(shape[1], size[1], window.overlap)
             for x in window_starts(shape[2], size[2], window.overlap)]
    n = image.shape[0]
    for first in range(0, len(boxes), window.batch):
        group = boxes[first:first + window.batch]
        patches = torch.cat([image[(slice(None), slice(None), *box)] for box in group]) if len(group) > 1 \
            else image[(slice(None), slice(None), *group[0])]
        logits = forward(patches).float()
        if out is None:
            out = torch.zeros((n, logits.shape[1], *shape), dtype=torch.float32, device=image.device)
        for k, box in enumerate(group):
            out[(slice(None), slice(None), *box)] += logits[k * n:(k + 1) * n] * weight
            norm[box] += weight
    assert out is not None
    return out / norm
