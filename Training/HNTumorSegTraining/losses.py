"""The training objective: soft Dice, paper eq. (13).

    L = 1 - (2 * sum_i p_i * y_i + eps) / (sum_i p_i^2 + sum_i y_i^2 + eps)

``p`` are softmax probabilities, ``y`` the one-hot reference. Following the paper ("the sum runs
over voxels (and classes for multi-class outputs)") the sums run over the voxels *and* the
foreground classes together -- one ratio per sample, not a mean of per-class Dice losses.

Why only the foreground classes (1 GTVp, 2 GTVn): background fills > 99 % of a 112 x 256 x 256
window; including it would make the ratio ~1 for any prediction that finds the background and
drown the tumour terms, which is exactly the imbalance the paper chose soft Dice to counter.
Background still gets gradient through the softmax (raising p_bg lowers p_1 + p_2).

Why squared terms in the denominator (the V-Net form): that is eq. (13); it also keeps the loss
exactly 0 for a perfect one-hot prediction.

Why per sample, then the batch mean: the ratio is computed for each sample over its own voxels and
classes and the per-sample losses are averaged, so a case with a big primary does not swamp a
case with a few small nodes in the same batch. With batch size 1 (the paper's volumes) the two
readings agree.

With ``batch=True`` the sums also run over the samples of the batch: one ratio per batch ("batch
Dice", as nnU-Net trains). Why it matters for patch training: a patch without foreground has
target sums 0, so its per-sample loss is ``1 - eps / (sum p^2 + eps)``, which is ~1 with a
vanishing gradient once it holds many false-positive voxels -- such patches teach nothing. Pooled
with a patch that does hold tumour, their false positives enter that ratio's denominator and are
pushed down. With whole windows (every window holds a primary) the two readings differ little.

``eps`` (1e-5) keeps the ratio defined for a sample with no foreground at all: then the loss is
``1 - eps / (sum p^2 + eps)``, which pushes the foreground probabilities to 0.
"""

from __future__ import annotations

import torch
from torch import Tensor

#: Numerical-stability constant of eq. (13).
DICE_EPS = 1e-5
#: Classes whose voxels enter the sums (1 GTVp, 2 GTVn).
FOREGROUND_CLASSES = (1, 2)


def soft_dice_loss(logits: Tensor, target: Tensor, eps: float = DICE_EPS,
                   classes: tuple[int, ...] = FOREGROUND_CLASSES, batch: bool = False) -> Tensor:
    """Eq. (13) on ``logits`` (B, C, Z, Y, X) and integer ``target`` (B, Z, Y, X); a scalar.

    Computed in at least float32 whatever the logits' dtype (under bf16 autocast the sums over
    ~7 M voxels would otherwise lose most of their digits).
    """
    if logits.dim() < 3 or target.shape != (logits.shape[0], *logits.shape[2:]):
        raise ValueError(f"logits (B, C, ...) and target (B, ...) do not fit: {tuple(logits.shape)} vs "
                         f"{tuple(target.shape)}")
    probs = torch.softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=1)
    p = probs[:, list(classes)]
    # One-hot of the listed classes only, by comparison (F.one_hot would build an int64 tensor
    # of all classes: 176 MB for one full window).
    y = torch.stack([target == c for c in classes], dim=1).to(p.dtype)
    dims = tuple(range(0 if batch else 1, p.dim()))  # classes and voxels, per sample or over the batch
    intersection = (p * y).sum(dims)
    denominator = (p * p).sum(dims) + (y * y).sum(dims)
    return (1.0 - (2.0 * intersection + eps) / (denominator + eps)).mean()
