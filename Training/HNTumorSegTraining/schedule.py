"""Learning-rate schedule: linear warm-up, then cosine decay to ``min_factor`` of the peak, per step.

Why per optimiser step (not per epoch): epochs can be long or short (``samples_per_epoch``), and
a warm-up of a few hundred steps should not depend on that. Why warm-up: AdamW's first moment
estimates are noisy and SE Norm's excitation MLPs start random; a few small steps avoid an early
jump into a poor region. The factor is a pure function of the step, so a LambdaLR restored from
a checkpoint (``last_epoch`` = steps done) continues exactly.
"""

from __future__ import annotations

import math
from functools import partial

from torch.optim import Optimizer
from torch.optim.lr_scheduler import LambdaLR


def warmup_cosine_factor(step: int, *, warmup_steps: int, total_steps: int, min_factor: float = 0.0) -> float:
    """Multiplier of the peak learning rate for optimiser step ``step`` (0-based)."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    decay_steps = max(total_steps - warmup_steps, 1)
    progress = min(max(step - warmup_steps, 0) / decay_steps, 1.0)
    return min_factor + (1.0 - min_factor) * 0.5 * (1.0 + math.cos(math.pi * progress))


def warmup_cosine(optimizer: Optimizer, *, warmup_steps: int, total_steps: int, min_factor: float = 0.0) -> LambdaLR:
    """A LambdaLR applying :func:`warmup_cosine_factor`; call ``.step()`` after every optimiser step.

    The lambda is a ``functools.partial`` (not a closure), so ``state_dict()`` holds only numbers.
    """
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need 0 <= warmup_steps <= total_steps and total_steps >= 1, got {warmup_steps}, "
                         f"{total_steps}")
    return LambdaLR(optimizer, partial(warmup_cosine_factor, warmup_steps=warmup_steps, total_steps=total_steps,
                                       min_factor=min_factor))
