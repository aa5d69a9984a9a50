"""What the network sees: cached cases as tensors, with patch sampling and augmentations.

Cases come from the cache (:func:`.cache.open_case`): float16 image (2, 112, 256, 256) and uint8
label, memory-mapped, so a patch costs only the pages it covers. The float16 -> float32
conversion happens on the patch (or on the source region of an augmented patch), after cropping.

Training (:class:`TrainDataset`), in this order:

1. Patch (optional, ``patch_size``): with probability ``p_fg`` the patch is centred on a random
   voxel of a random foreground class present in the case (clipped to the volume, so the voxel
   stays inside), else placed uniformly. Why oversample: GTVn is often < 0.1 % of the window, and
   uniformly placed patches would show most nodes to the network rarely (nnU-Net uses 1/3).
2. Augmentation, by preset (:mod:`.augment`, which documents each transform):

   * ``default``: nnU-Net's spatial transforms (rotation, scaling, optional elastic deformation,
     mirroring), sampled around the patch from a larger region of the window, on image and label
     together; PET-specific SUV scale and resolution blur; nnU-Net's intensity transforms (noise,
     blur, brightness, contrast, simulated low resolution, gamma), in the HU and PET z-score
     domains rather than on the sigmoid values. Needs MONAI.
   * ``light`` (the behaviour before issue 11; :class:`Augmentation` is its parameter class):
     left-right flip along x with probability ``flip_p``, image and label together; per channel,
     on the normalised inputs (both in about (0, 1)), with probability ``intensity_p`` a scale from
     U(1 - scale, 1 + scale) and a shift from U(-shift, shift); with probability ``noise_p``
     Gaussian noise of standard deviation U(0, noise_std) (off by default).
   * ``off``: the patch as cached.

Randomness: each draw has its own generator, seeded from (seed, epoch, draw) -- the key that
:class:`.sampler.EpochSampler` yields -- not from a worker's global state; every augmentation
parameter (and the noise) comes from it. So a batch does not depend on the number of workers or
on which worker served it, and a resumed epoch repeats exactly. (DataLoader workers are still
seeded, by :func:`seed_worker`, for any library code that reaches for the global generators.)
Validation (:class:`ValDataset`): full volumes, no augmentation.
"""

from __future__ import annotations

import os
import random
import signal
import sys
import traceback
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from .augment import (LightAugmentation, NnUNetAugmentation, NoAugmentation, augmented_patch, light_augment,
                      make_augmentation, needs_monai, pet_offset_of, require_monai)
from .cache import open_case

#: Classes the patch sampler may centre on (1 GTVp, 2 GTVn).
FOREGROUND_CLASSES = (1, 2)
#: At most this many voxel positions are kept per class and case for centring (memory bound).
MAX_FG_VOXELS = 20000
#: Tag of the per-draw random stream (see sampler.ORDER_STREAM).
DRAW_STREAM = 2
PATCH_MULTIPLE = 16


#: The ``light`` preset's parameters (the name the training code used before presets existed).
Augmentation = LightAugmentation


def check_patch_size(patch_size: Sequence[int], volume: Sequence[int], multiple: int = PATCH_MULTIPLE) -> tuple[int, ...]:
    """``patch_size`` as a tuple, checked: 3 positive multiples of ``multiple`` within ``volume``."""
    patch = tuple(int(p) for p in patch_size)
    if len(patch) != 3 or any(p <= 0 or p % multiple for p in patch):
        raise ValueError(f"patch_size must be 3 positive multiples of {multiple}, got {list(patch_size)}")
    if any(p > v for p, v in zip(patch, volume)):
        raise ValueError(f"patch_size {list(patch)} exceeds the volume {list(volume)}")
    return patch


def patch_start(rng: np.random.Generator, volume: Sequence[int], patch: Sequence[int],
                centre: Sequence[int] | None = None) -> tuple[int, ...]:
    """Corner of a patch: uniform, or centred on ``centre`` and clipped into the volume."""
    if centre is None:
        return tuple(int(rng.integers(0, v - p + 1)) for v, p in zip(volume, patch))
    return tuple(int(min(max(c - p // 2, 0), v - p)) for c, p, v in zip(centre, patch, volume))


def foreground_voxels(label: np.ndarray, case_seed: int = 0,
                      classes: Sequence[int] = FOREGROUND_CLASSES) -> dict[int, np.ndarray]:
    """Per present class, up to MAX_FG_VOXELS voxel positions (N, 3) int16, subsampled reproducibly."""
    out = {}
    rng = np.random.default_rng([case_seed, DRAW_STREAM])
    for c in classes:
        idx = np.flatnonzero(np.asarray(label).reshape(-1) == c)
        if idx.size == 0:
            continue
        if idx.size > MAX_FG_VOXELS:
            idx = np.sort(rng.choice(idx, MAX_FG_VOXELS, replace=False))
        out[c] = np.stack(np.unravel_index(idx, label.shape), axis=1).astype(np.int16)
    return out


def augment(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
            aug: LightAugmentation) -> tuple[np.ndarray, np.ndarray, bool]:
    """The ``light`` preset on float32 ``image`` (C, Z, Y, X) and ``label`` (Z, Y, X); also returns flipped."""
    return light_augment(image, label, rng, aug)


class _CaseReader:
    """Opens cached cases lazily, once per process (memory maps are not shared across workers)."""

    def __init__(self, cache_dir: str | Path, case_ids: Sequence[str]) -> None:
        self.cache_dir = Path(cache_dir)
        self.case_ids = list(case_ids)
        if not self.case_ids:
            raise ValueError("no cases given")
        self._open: dict[int, Any] = {}

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_open": {}}

    def case(self, index: int):
        if index not in self._open:
            self._open[index] = open_case(self.cache_dir, self.case_ids[index])
        return self._open[index]


class TrainDataset(Dataset):
    """Augmented training samples; index with the sampler's ``(case_index, epoch, draw)`` keys.

    A plain int ``i`` is read as ``(i, 0, i)``. ``patch_size`` must be a multiple of
    ``patch_multiple`` (the network's down-sampling factor, at least 16). ``augmentation``: a preset
    name (``default``, ``light``, ``off``), a parameter object or record of :mod:`.augment`; None is
    ``default``. Items: ``image`` float32 (2, *size), ``label`` uint8 (*size), ``case_id``,
    ``fg_centred`` (patch centred on foreground), ``flipped`` (mirrored along x) and ``start``
    (the corner of the patch in the window before any spatial transform; an augmented patch is
    sampled around that patch's centre).
    """

    def __init__(self, cache_dir: str | Path, case_ids: Sequence[str], *,
                 patch_size: Sequence[int] | None = None, p_fg: float = 0.5,
                 augmentation: Any = None, seed: int = 0,
                 patch_multiple: int = PATCH_MULTIPLE) -> None:
        self.reader = _CaseReader(cache_dir, case_ids)
        if not 0.0 <= p_fg <= 1.0:
            raise ValueError(f"p_fg must be in [0, 1], got {p_fg}")
        first = self.reader.case(0)
        self.volume = tuple(first.label.shape)
        self.patch_size = (check_patch_size(patch_size, self.volume, patch_multiple)
                           if patch_size is not None else None)
        self.p_fg = p_fg
        self.augmentation = make_augmentation(augmentation)
        if needs_monai(self.augmentation):
            require_monai()  # fail here, in one line, not in a loader worker
        self.seed = int(seed)
        self._fg: dict[int, dict[int, np.ndarray]] = {}

    @property
    def case_ids(self) -> list[str]:
        return self.reader.case_ids

    def __len__(self) -> int:
        return len(self.reader.case_ids)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fg": {}}

    def foreground(self, index: int) -> dict[int, np.ndarray]:
        if index not in self._fg:
            self._fg[index] = foreground_voxels(self.reader.case(index).label, case_seed=index)
        return self._fg[index]

    def __getitem__(self, key: int | tuple[int, int, int]) -> dict[str, Any]:
        index, epoch, draw = (key, 0, key) if isinstance(key, (int, np.integer)) else key
        rng = np.random.default_rng([self.seed, int(epoch), int(draw), DRAW_STREAM])
        case = self.reader.case(int(index))
        centred = False
        start: tuple[int, ...] = (0, 0, 0)
        size = self.patch_size or self.volume
        if self.patch_size is not None:
            centre = None
            if rng.random() < self.p_fg:
                fg = self.foreground(int(index))
                if fg:
                    voxels = fg[list(fg)[int(rng.integers(len(fg)))]]
                    centre = voxels[int(rng.integers(len(voxels)))].tolist()
                    centred = True
            start = patch_start(rng, self.volume, self.patch_size, centre)
        aug = self.augmentation
        if isinstance(aug, NnUNetAugmentation):
            image, label, spatial, _ = augmented_patch(case.image, case.label, start, size, rng, aug,
                                                       pet_offset_of(case.provenance))
            flipped = spatial.mirror[2]
        else:
            window = tuple(slice(s, s + p) for s, p in zip(start, size))
            image = np.array(case.image[(slice(None), *window)], dtype=np.float32)
            label = np.array(case.label[window])
            flipped = False
            if isinstance(aug, LightAugmentation):
                image, label, flipped = augment(image, label, rng, aug)
            elif not isinstance(aug, NoAugmentation):
                raise TypeError(f"unknown augmentation {aug!r}")
        return {"image": torch.from_numpy(image), "label": torch.from_numpy(label),
                "case_id": self.case_ids[int(index)], "fg_centred": centred, "flipped": flipped,
                "start": torch.tensor(start)}


class ValDataset(Dataset):
    """Full preprocessed windows for validation: ``image`` float32 (2, Z, Y, X), ``label`` uint8, ``case_id``."""

    def __init__(self, cache_dir: str | Path, case_ids: Sequence[str]) -> None:
        self.reader = _CaseReader(cache_dir, case_ids)

    def __len__(self) -> int:
        return len(self.reader.case_ids)

    def __getitem__(self, index: int) -> dict[str, Any]:
        case = self.reader.case(int(index))
        return {"image": torch.from_numpy(np.asarray(case.image, dtype=np.float32)),
                "label": torch.from_numpy(np.array(case.label)), "case_id": self.reader.case_ids[int(index)]}


def leave_stops_to_the_trainer(worker_id: int = 0) -> None:
    """A loader worker leaves Ctrl-C to the trainer and ends quietly (status 0) on SIGTERM. ``timeout``, a
    scheduler or a terminal sends the stop to every process of the job; a worker killed by SIGTERM made torch
    raise "DataLoader worker ... is killed by signal" in the trainer (a traceback; for the click model, the
    network lost) before the trainer's own clean-up. A worker that ends with status 0 is no error to torch.
    Not ignored: the loader's own shutdown and multiprocessing's exit end workers with SIGTERM, and a worker
    ignoring it kept the trainer waiting at exit."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, _end_quietly)
    sys.excepthook = _silent_on_a_departed_trainer(sys.excepthook)


def _end_quietly(signum, frame) -> None:
    os._exit(0)


def _silent_on_a_departed_trainer(previous):
    """A worker's ``sys.excepthook`` that drops a connection lost in multiprocessing's resource sharer, and passes
    on anything else. Why: a worker hands each batch's shared memory to the trainer through a thread of its own
    (``multiprocessing.resource_sharer``), which prints a traceback when the trainer's side goes away mid-handshake;
    a SIGTERM to the job's process group stops the trainer there before the worker's own handler has run (seen
    in a CI run of the SIGTERM test: a traceback after a clean stop). The trainer is stopping; nothing is lost."""
    sharer = os.path.join("multiprocessing", "resource_sharer.py")

    def hook(kind, value, tb) -> None:
        if issubclass(kind, (EOFError, ConnectionError)) and any(
                frame.f_code.co_filename.endswith(sharer) for frame, _ in traceback.walk_tb(tb)):
            return
        previous(kind, value, tb)
    return hook


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: stops left to the trainer (:func:`leave_stops_to_the_trainer`); python and
    numpy's global generators seeded from the worker's torch seed.

    The DataLoader gives each worker ``base_seed + worker_id``, with ``base_seed`` drawn from the
    loader's generator (seeded per epoch in :mod:`.fit`); this makes code that uses the global
    generators reproducible too. The augmentations here do not need it (per-draw generators).
    """
    leave_stops_to_the_trainer(worker_id)
    s = torch.initial_seed() % 2 ** 32
    np.random.seed(s)
    random.seed(s)
