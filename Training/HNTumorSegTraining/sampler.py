"""The order in which training cases are drawn: a pure function of (seed, epoch), sharded by rank.

Why not ``torch.utils.data.DistributedSampler``: it yields bare case indices, while the data set
needs to know *which draw* it serves, so that each draw's patch position and augmentations come
from its own seed (:mod:`.data`). With (case, epoch, draw) keys the batches of an epoch are the
same whatever the number of DataLoader workers, and an epoch redone after ``--resume`` sees
exactly the data it saw before the interruption. Otherwise this behaves like DistributedSampler
with ``shuffle=True, drop_last=False``: call :meth:`EpochSampler.set_epoch` before each epoch;
the epoch's draws are padded (by wrapping around) to a multiple of the world size and rank r
takes every world_size-th one from position r, so all ranks run the same number of steps.

``samples_per_epoch`` decouples the epoch from the data set size (nnU-Net's fixed-length
epochs): the draws are consecutive independent permutations of the cases, cut to that length.
"""

from __future__ import annotations

import math
from typing import Iterator

import numpy as np
from torch.utils.data import Sampler

#: Stream tags, so the order and the per-draw augmentations never share a random stream.
ORDER_STREAM = 1


class EpochSampler(Sampler):
    """Yields ``(case_index, epoch, draw)`` for this rank; ``draw`` is unique within the epoch."""

    def __init__(self, n_cases: int, *, seed: int = 0, samples_per_epoch: int | None = None,
                 rank: int = 0, world_size: int = 1) -> None:
        if n_cases < 1:
            raise ValueError("no training cases")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world size {world_size}")
        self.n_cases, self.seed, self.rank, self.world_size = n_cases, seed, rank, world_size
        self.samples = n_cases if samples_per_epoch is None else int(samples_per_epoch)  # 0 is no default
        if self.samples < 1:
            raise ValueError(f"samples_per_epoch must be >= 1, got {samples_per_epoch}")
        self.epoch = 1

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def epoch_order(self, epoch: int) -> np.ndarray:
        """Case index of every draw of ``epoch`` (all ranks, padded to a multiple of the world size)."""
        rng = np.random.default_rng([self.seed, epoch, ORDER_STREAM])
        reps = math.ceil(self.samples / self.n_cases)
        order = np.concatenate([rng.permutation(self.n_cases) for _ in range(reps)])[: self.samples]
        total = math.ceil(self.samples / self.world_size) * self.world_size
        return np.resize(order, total)  # np.resize repeats from the start: DistributedSampler's padding

    def __iter__(self) -> Iterator[tuple[int, int, int]]:
        order = self.epoch_order(self.epoch)
        for draw in range(self.rank, len(order), self.world_size):
            yield int(order[draw]), self.epoch, draw

    def __len__(self) -> int:
        return math.ceil(self.samples / self.world_size)
