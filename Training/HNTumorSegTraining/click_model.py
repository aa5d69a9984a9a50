"""The click model's training: node crops from phantoms, a small PSAM U-Net, a click model file.

The click model (:mod:`HNTumorSegLib.editing.click_model`) draws the lymph node (GTVn) at a user's click,
where a fixed threshold misjudges small, weak and matted nodes. The crop, the network's inputs and the model
file's ``"click_model"`` entry are that module's contract; this module uses its functions as they are
(:func:`~HNTumorSegLib.editing.click_model.crops`, :func:`~HNTumorSegLib.editing.click_model.network_inputs`),
so the network trains on exactly what the editor will give it.

Samples (:func:`node_samples`): for every GTVn lesion of a phantom, the clicks the simulated editor makes: its
SUVmax voxel ("peak"), its deepest voxel ("deep") and a random interior voxel jittered by a hand's unsteadiness
("random"). Each is a CT and a PET crop centred on the click and the clicked lesion resampled into the crop
(the target: that lesion only, not its neighbours, which is what a click asks for), as the share of each crop
voxel that the lesion covers (:func:`target_crop`).

Why shares, not a mask: the crop's 2 mm voxels are coarser than a label grid's ~1 mm in-plane, and the editor
reads the network's probability back by linear interpolation. A target that is a mask (share >= 1/2) caps what
can be learnt: on the benchmark's 26 nodes, a node itself put into the crop as a mask and read back has a mean
Dice of 0.930 with itself (0.77-0.92 for nodes under 1 mL); put in as shares, 0.974. Cross-entropy and soft
Dice take the shares as they are. Measured: going on from the mask-trained weights on shares raised the
validation Dice 0.831 -> 0.840 (read at 1 mm 0.832 -> 0.841); how much of that is the shares and how much the
longer training was not separated (the network's error, not the cap, is what limits it today).

Files: one ``s{SEED}.npz`` per phantom in the data folder (:func:`make_samples`), arrays ``ct`` and ``pet``
(float16: HU to 0.5 and SUV to 3 digits is all the inputs keep), ``t`` (the target's shares in 1/255 steps,
uint8; bool in the prototype's files: masks, read as shares 0 or 1) and ``kind``; a
phantom without nodes has an empty file, so that a rerun knows it was drawn. Each file is written atomically, so
a rerun resumes where a killed one stopped. The layout is the prototype's, whose folders resume as they are.

Training (:func:`train`): AdamW, cosine learning rate over a time budget (what a CPU session can give, not a
number of epochs), cross-entropy plus soft Dice of the lesion, flips and a PET scale as augmentation. On a GPU
(``--device``, CUDA when there is one) the forward pass runs under bf16 autocast (never on the CPU: ~100x slower
there) and loader processes (``--loader-workers``) build the augmented batches while the GPU trains; the bundled
network is narrow because a CPU trained it, ``--channels`` widens it where a GPU trains. Its
validation Dice is reported beside that of the clinical 41 % threshold on the same crops
(:func:`threshold_region`), so the model file says what the network beat.

Command: ``hntumorseg-train click-model --out MODEL --data DIR --seeds A:B --val-seeds C:D --budget-s S``
(or ``python -m HNTumorSegTraining.click_model ...``) draws the samples (resuming), trains (``--init MODEL``: on
from a click model's weights) and writes the model file (:func:`export`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import multiprocessing
import os
import sys
import time
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Mapping, NamedTuple, Sequence

import numpy as np
import SimpleITK as sitk
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from HNTumorSegLib import LABELS
from HNTumorSegLib.cli.guard import Terminated, raise_pending_stop, run_guarded
from HNTumorSegLib.editing.click_model import (CLICK_MODEL_KEY, CONTRACT, CROP_VOXELS, crop_grid,
                                               crops, network_inputs)
from HNTumorSegLib.editing.clicks import DEFAULT_FRACTION, DEFAULT_RADIUS_MM, avid_region
from HNTumorSegLib.errors import InputError
from HNTumorSegLib.evaluation.metrics import values_in_box
from HNTumorSegLib.imaging.components import MM_NOISE, depth_in_box, lesion_ids
from HNTumorSegLib.imaging.geometry import Geometry
from HNTumorSegLib.imaging.image_io import atomic_path, remove_temporaries
from HNTumorSegLib.network import NetworkConfig, build_network
from HNTumorSegLib.phantom import PhantomCase, make_phantom
from HNTumorSegLib.pipeline.inference import available_cpus
from HNTumorSegLib.phantom.styles import STYLES

from .data import leave_stops_to_the_trainer
from .distributed import resolve_device
from .fit import AMP_CHOICES, resolve_amp
from .validate import autocast_context

PROG = "python -m HNTumorSegTraining.click_model"
#: The structure a click model draws, and its label value.
STRUCTURE = "GTVn"
GTVN = {name: value for value, name in LABELS.items()}[STRUCTURE]
#: Phantom style of seed s: STYLE_CYCLE[s % 4]. Why all four: the editor must hold whatever the scanner.
STYLE_CYCLE = tuple(STYLES)
#: Fields of view drawn (the neck's nodes are in both; whole-body scans add only slices without nodes).
FIELDS = ("head", "head_upper")
#: Share of phantoms stored with direction diag(-1, -1, 1) (the crop is in LPS whatever the storage).
P_FLIP_XY = 0.2
#: Click kinds, as the simulated editor makes them.
KINDS = ("peak", "deep", "random")
#: A "random" click is an interior voxel at least this deep (mm) in its lesion ...
RANDOM_MIN_DEPTH_MM = 1.0
#: ... moved by a normal draw of this standard deviation (mm) per axis: a hand's unsteadiness.
RANDOM_JITTER_MM = 1.5
#: Label voxels kept around a lesion when it is resampled into a crop: linear interpolation at its edge needs the
#: zeros beyond it (beyond an image's last voxel SimpleITK gives the default, not an interpolation).
TARGET_MARGIN_VOXELS = 2
#: The network: the segmentation's PSAM U-Net blocks, four levels (48 -> 6 voxels), narrow (CPU-trainable).
NETWORK = NetworkConfig(in_channels=3, out_channels=2, channels=(8, 16, 32, 64), psam=True, norm="se",
                        psam_channels=(8, 16, 32), pet_channel=1)
#: The PET is scaled by a factor drawn from this range in training: an uptake level the phantoms did not draw.
PET_SCALE = (0.8, 1.25)
INTENDED_USE = ("Research use only; not a medical device and not for clinical decisions. Draws the lymph node "
                "(GTVn) at a click in HNTumorSeg's editor; trained on synthetic phantoms only, never on patients.")


class Sample(NamedTuple):
    """One click: (N, N, N) CT (HU) and PET (SUV) crops centred on it, the clicked lesion in the crop, the kind."""

    ct: np.ndarray
    pet: np.ndarray
    target: np.ndarray
    kind: str


# --------------------------------------------------------------------------------------------- samples


def draw_phantom(seed: int, rng: np.random.Generator, ct_matrix: int | None = None) -> PhantomCase:
    """Phantom ``seed``: its style from the seed, its field of view and storage drawn from ``rng``.
    ``ct_matrix``: in-plane CT voxels (default the style's; small ones for tests)."""
    fov = str(rng.choice(FIELDS))
    flip_xy = bool(rng.uniform() < P_FLIP_XY)
    return make_phantom(seed, fov, style=STYLE_CYCLE[seed % len(STYLE_CYCLE)], flip_xy=flip_xy, ct_matrix=ct_matrix)


def _lesion_image(lesion: np.ndarray, lo: np.ndarray, hi: np.ndarray, grid: Geometry) -> sitk.Image:
    """The lesion's bounding box (plus :data:`TARGET_MARGIN_VOXELS`) on the label's grid, float32 0/1."""
    a = np.maximum(lo - TARGET_MARGIN_VOXELS, 0)
    b = hi + TARGET_MARGIN_VOXELS
    image = sitk.GetImageFromArray(lesion[a[0]:b[0], a[1]:b[1], a[2]:b[2]].astype(np.float32))
    return grid.subgrid(a[::-1].tolist(), image.GetSize()).apply(image)


#: Targets are stored as shares of a crop voxel in steps of 1/SHARE_STEPS (uint8).
SHARE_STEPS = 255


def target_crop(lesion: sitk.Image, point_mm: Sequence[float]) -> np.ndarray:
    """The share of each crop voxel (at ``point_mm``) that the lesion covers, in 1/:data:`SHARE_STEPS` steps
    (uint8): the lesion's 0/1 image resampled linearly into the crop, the share a linear reading gives and the
    one the network's probability is read back with."""
    resampled = sitk.Resample(lesion, crop_grid(point_mm), sitk.Transform(), sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    return np.round(np.clip(sitk.GetArrayFromImage(resampled), 0.0, 1.0) * SHARE_STEPS).astype(np.uint8)


def as_mask(share: np.ndarray) -> np.ndarray:
    """Shares (1/:data:`SHARE_STEPS` steps) as the mask the editor reads: at least half the voxel."""
    return np.asarray(share) >= SHARE_STEPS / 2


def as_share(share: np.ndarray) -> np.ndarray:
    """Shares (1/:data:`SHARE_STEPS` steps) as float32 fractions in [0, 1]."""
    return np.asarray(share).astype(np.float32) / SHARE_STEPS


def click_voxels(inside: np.ndarray, suv: np.ndarray, depth: np.ndarray,
                 rng: np.random.Generator) -> list[tuple[str, tuple[int, ...]]]:
    """The clicks on one lesion (indices into its box): its SUVmax voxel, its deepest voxel and, where it has
    voxels :data:`RANDOM_MIN_DEPTH_MM` deep, one of them at random."""
    picks = [("peak", np.unravel_index(np.argmax(np.where(inside, suv, -np.inf)), inside.shape)),
             ("deep", np.unravel_index(np.argmax(np.where(inside, depth, -np.inf)), inside.shape))]
    interior = np.argwhere(inside & (depth >= RANDOM_MIN_DEPTH_MM - MM_NOISE))
    if len(interior):
        picks.append(("random", tuple(interior[rng.integers(len(interior))])))
    return [(kind, tuple(int(v) for v in index)) for kind, index in picks]


def lesion_samples(case: PhantomCase, lesion: np.ndarray, rng: np.random.Generator) -> list[Sample]:
    """The samples of one lesion (a boolean mask on the label's grid).

    The SUV is resampled onto the lesion's bounding box only (:func:`values_in_box`): the whole PET onto a
    512 x 512 label grid took most of a phantom's time for a few hundred voxels used."""
    grid = Geometry.of(case.label)
    spacing_zyx = np.array(grid.spacing[::-1])
    inside, depth, start = depth_in_box(lesion, spacing_zyx)  # depth: mm to the nearest voxel outside
    lo = np.array(start)
    hi = lo + inside.shape
    suv = values_in_box(case.pet, grid.subgrid(lo[::-1].tolist(), (hi - lo)[::-1].tolist()))
    target = _lesion_image(lesion, lo, hi, grid)
    samples = []
    for kind, index in click_voxels(inside, suv, depth, rng):
        point = grid.index_to_point((np.array(index) + lo)[::-1])
        if kind == "random":
            point = point + rng.normal(0.0, RANDOM_JITTER_MM, 3)
        ct, pet = crops(case.ct, case.pet, point)
        samples.append(Sample(ct.astype(np.float16), pet.astype(np.float16), target_crop(target, point), kind))
    return samples


def case_samples(case: PhantomCase, rng: np.random.Generator) -> list[Sample]:
    """The samples of every GTVn lesion (26-connected, as HECKTOR counts them) of a phantom, largest first."""
    ids, n = lesion_ids(sitk.GetArrayViewFromImage(case.label) == GTVN)
    samples: list[Sample] = []
    for k in range(1, n + 1):
        samples += lesion_samples(case, ids == k, rng)
    return samples


def node_samples(seed: int, rng: np.random.Generator | None = None, ct_matrix: int | None = None) -> list[Sample]:
    """The samples of phantom ``seed`` (:func:`draw_phantom`, then :func:`case_samples`); ``rng`` defaults to one
    seeded by ``seed``, which makes the samples a function of the seed alone."""
    rng = np.random.default_rng(seed) if rng is None else rng
    return case_samples(draw_phantom(seed, rng, ct_matrix), rng)


def sample_path(folder: Path, seed: int) -> Path:
    return Path(folder) / f"s{seed}.npz"


#: A sample file's ``ct_matrix`` entry for phantoms drawn at their style's own CT matrix (the default).
STYLE_MATRIX = 0


def write_samples(samples: Sequence[Sample], path: Path, ct_matrix: int | None = None) -> None:
    """One phantom's samples as an .npz (empty arrays for none), atomically, with the CT matrix they were drawn
    at (:data:`STYLE_MATRIX` for the style's own)."""
    empty = np.zeros((0,) + (CROP_VOXELS,) * 3)
    arrays = {"ct": np.stack([s.ct for s in samples]) if samples else empty.astype(np.float16),
              "pet": np.stack([s.pet for s in samples]) if samples else empty.astype(np.float16),
              "t": np.stack([s.target for s in samples]) if samples else empty.astype(np.uint8),
              "kind": np.array([s.kind for s in samples], dtype="<U6"),
              "ct_matrix": np.array(ct_matrix or STYLE_MATRIX)}
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez(fh, **arrays)


def _make_one(task: tuple[int, str, int | None]) -> tuple[int, int, str | None]:
    """Draw phantom ``seed`` and write its samples (a pool task: module-level, picklable): (seed, samples, why it
    could not be drawn or None). A phantom the generator refuses is reported, not fatal: one of hundreds."""
    seed, folder, ct_matrix = task
    rng = np.random.default_rng(seed)
    try:
        case = draw_phantom(seed, rng, ct_matrix)
    except RuntimeError as exc:
        return seed, 0, str(exc)
    samples = case_samples(case, rng)
    write_samples(samples, sample_path(Path(folder), seed), ct_matrix)
    return seed, len(samples), None


def make_samples(seeds: Iterable[int], folder: str | os.PathLike, workers: int = 1, ct_matrix: int | None = None,
                 progress: bool = True) -> dict[int, str]:
    """Write ``s{seed}.npz`` for every seed without one in ``folder`` (resumable); returns the seeds whose phantom
    could not be drawn, with why (they have no file, and are tried again by a rerun). ``workers`` processes draw
    phantoms at once (spawned, as :mod:`.phantom_cohort`'s: the parent may hold SimpleITK threads)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise InputError(f"{folder}: not a folder (the samples' folder)")
    folder.mkdir(parents=True, exist_ok=True)
    seeds = list(seeds)
    todo = [s for s in seeds if not sample_path(folder, s).is_file()]
    for seed in seeds:  # kept files must be of these phantoms: another matrix's would train without a word
        if seed not in todo:
            _check_matrix(sample_path(folder, seed), ct_matrix)
    remove_temporaries(folder, [sample_path(folder, s).name for s in todo], min_age_s=600)  # a killed run's
    failed: dict[int, str] = {}
    tasks = [(s, str(folder), ct_matrix) for s in todo]
    with tqdm(total=len(seeds), initial=len(seeds) - len(todo), desc="phantoms", disable=not progress) as bar:
        if workers <= 1 or len(tasks) <= 1:
            results: Iterable[tuple[int, int, str | None]] = map(_make_one, tasks)
            pool = None
        else:
            pool = multiprocessing.get_context("spawn").Pool(min(workers, len(tasks)))
            results = pool.imap_unordered(_make_one, tasks)
        try:
            for seed, _, problem in results:
                if problem is not None:
                    failed[seed] = problem
                    tqdm.write(f"phantom {seed} not drawn: {problem}", file=sys.stderr)
                bar.update()
        finally:
            if pool is not None:
                pool.terminate()
                pool.join()
    return failed


@dataclass
class Samples:
    """Samples stacked: ``ct``/``pet`` (M, N, N, N) float16, ``target`` (M, N, N, N) uint8 shares
    (:data:`SHARE_STEPS`), ``kind`` (M,) str; ``phantoms``: the seeds read (with or without nodes)."""

    ct: np.ndarray
    pet: np.ndarray
    target: np.ndarray
    kind: np.ndarray
    phantoms: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.ct)

    def counts(self) -> dict[str, int]:
        return {k: int(np.count_nonzero(self.kind == k)) for k in KINDS}


def drawn_matrix(path: Path) -> int | None:
    """The CT matrix a sample file's phantom was drawn at (None: the style's own; files written before this was
    recorded are taken as the style's own, as all such files of this project were)."""
    try:
        with np.load(path) as data:
            value = int(data["ct_matrix"]) if "ct_matrix" in data.files else STYLE_MATRIX
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a file of click-model samples ({exc}); delete it to draw it again") from None
    return None if value == STYLE_MATRIX else value


def _check_matrix(path: Path, ct_matrix: int | None) -> None:
    drawn = drawn_matrix(path)
    if drawn != ct_matrix:
        words = {None: "the styles' own CT matrix"}
        raise InputError(f"{path}: drawn at {words.get(drawn, f'--ct-matrix {drawn}')}, not "
                         f"{words.get(ct_matrix, f'--ct-matrix {ct_matrix}')}: give the --ct-matrix the folder was "
                         "drawn with, or another --data folder")


def _read_file(path: Path) -> dict[str, np.ndarray]:
    """One phantom's arrays, checked; a file that is not one is an InputError naming it."""
    try:
        with np.load(path) as data:
            arrays = {k: data[k] for k in ("ct", "pet", "t", "kind")}
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as exc:
        raise InputError(f"{path}: not a file of click-model samples ({exc}); delete it to draw it again") from None
    crop = (CROP_VOXELS,) * 3
    n = len(arrays["kind"])
    if arrays["t"].dtype == bool:  # the prototype's masks: shares 0 or 1
        arrays["t"] = arrays["t"].astype(np.uint8) * SHARE_STEPS
    elif arrays["t"].dtype != np.uint8:
        raise InputError(f"{path}: targets of type {arrays['t'].dtype}, not shares (uint8); delete the folder's "
                         "files to draw them again")
    if any(arrays[k].shape != (n, *crop) for k in ("ct", "pet", "t")):
        raise InputError(f"{path}: crops of {arrays['ct'].shape[1:]} voxels, not {crop} (another contract's "
                         "samples); delete the folder's files to draw them again")
    return arrays


def load_samples(folder: str | os.PathLike, seeds: Iterable[int] | None = None) -> Samples:
    """The samples of ``seeds`` (default: every ``s*.npz``) in ``folder``; seeds without a file are left out
    (their phantoms could not be drawn). InputError when none is left."""
    folder = Path(folder)
    if seeds is None:
        seeds = sorted(int(p.stem[1:]) for p in folder.glob("s*.npz") if p.stem[1:].isdigit())
    files = {s: sample_path(folder, s) for s in seeds}
    parts = {s: _read_file(p) for s, p in files.items() if p.is_file()}
    if not any(len(a["kind"]) for a in parts.values()):
        raise InputError(f"{folder}: no click samples for these seeds ({len(parts)} phantoms read, none with a node)")
    arrays = list(parts.values())
    return Samples(ct=np.concatenate([a["ct"] for a in arrays]), pet=np.concatenate([a["pet"] for a in arrays]),
                   target=np.concatenate([a["t"] for a in arrays]),
                   kind=np.concatenate([a["kind"] for a in arrays]).astype(str), phantoms=sorted(parts))


# --------------------------------------------------------------------------------------------- the baseline


def threshold_region(pet: np.ndarray) -> np.ndarray:
    """The editor's threshold node in a crop: :func:`HNTumorSegLib.editing.clicks.avid_region` as the editor's
    add button runs it (41 % over the local background, the node radius, leak steps, holes filled), on the
    crop's 2 mm grid at its centre; empty where no uptake stands above the background. The baseline the
    network's validation Dice is read against: the rule the click model replaces, not a copy of it."""
    centre = (0.0, 0.0, 0.0)
    grid = crop_grid(centre)
    image = sitk.GetImageFromArray(np.asarray(pet, np.float32))
    image.CopyInformation(grid)
    try:
        return avid_region(grid, image, centre, DEFAULT_FRACTION, DEFAULT_RADIUS_MM[STRUCTURE]).mask
    except InputError:  # no uptake above the background near the click
        return np.zeros(np.shape(pet), bool)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice of two masks (0 when both are empty: a target is never empty)."""
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def by_kind(values: Sequence[float], kinds: np.ndarray) -> dict[str, float]:
    """Mean of ``values`` over all samples and per click kind (rounded to 4 digits)."""
    values = np.asarray(values, float)
    out = {"all": round(float(values.mean()), 4)}
    out.update({k: round(float(values[kinds == k].mean()), 4) for k in KINDS if np.any(kinds == k)})
    return out


def threshold_dice(samples: Samples) -> dict[str, float]:
    """Mean Dice of :func:`threshold_region` on every sample, over all and per kind."""
    return by_kind([dice(threshold_region(p), as_mask(t)) for p, t in zip(samples.pet, samples.target)],
                   samples.kind)


# --------------------------------------------------------------------------------------------- training


@dataclass
class TrainResult:
    network: nn.Module
    steps: int
    seconds: float
    val_dice: dict[str, float]
    val_dice_threshold_41: dict[str, float]
    history: list[dict[str, Any]]
    val_dice_1mm: dict[str, float] = field(default_factory=dict)
    #: "Ctrl-C" or "SIGTERM" where the training was stopped before its budget (the network is what it had learnt).
    interrupted: str | None = None


def lesion_loss(logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Cross-entropy plus the soft Dice of the lesion channel, per sample, then the batch mean; ``target``: the
    lesion's share of each voxel (B, N, N, N) in [0, 1] (a mask is shares 0 and 1).

    Linear sums with 1 added, not :func:`.losses.soft_dice_loss` (squared, 1e-5): every crop holds its lesion,
    so no empty target needs the small constant, and this form trained the prototype to its Dice."""
    p = torch.softmax(logits.float(), dim=1)[:, 1]
    y = target.float()
    soft_dice = 1 - (2 * (p * y).sum((1, 2, 3)) + 1) / (p.sum((1, 2, 3)) + y.sum((1, 2, 3)) + 1)
    return nn.functional.cross_entropy(logits.float(), torch.stack([1 - y, y], dim=1)) + soft_dice.mean()


def training_batch(samples: Samples, rng: np.random.Generator, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A random batch, augmented: each sample's PET scaled by a factor from :data:`PET_SCALE` (an uptake level
    the phantoms did not draw), the batch flipped along each axis with probability 1/2 (nodes lie left and right,
    and a crop's up and down say little)."""
    index = rng.integers(len(samples), size=batch)
    scale = rng.uniform(*PET_SCALE, (batch, 1, 1, 1)).astype(np.float32)
    x = network_inputs(samples.ct[index], samples.pet[index].astype(np.float32) * scale)
    y = as_share(samples.target[index])
    for axis in (1, 2, 3):
        if rng.uniform() < 0.5:
            x, y = np.flip(x, axis + 1), np.flip(y, axis)
    return torch.from_numpy(np.ascontiguousarray(x)), torch.from_numpy(np.ascontiguousarray(y))


class _Batches(IterableDataset):
    """Endless :func:`training_batch` batches. In the main process (no loader workers) they come from one stream
    seeded by ``seed``; loader worker ``w`` draws from its own stream seeded by ``(seed, w)``."""

    def __init__(self, samples: Samples, seed: int, batch: int):
        self.samples, self.seed, self.batch = samples, seed, batch

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        info = get_worker_info()
        rng = np.random.default_rng(self.seed if info is None else [self.seed, info.id])
        while True:
            yield training_batch(self.samples, rng, self.batch)


def training_batches(samples: Samples, seed: int, batch: int, workers: int = 0,
                     pin_memory: bool = False) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Augmented batches without end, built by ``workers`` loader processes (0: here, between steps). Why
    workers: a GPU steps faster than one CPU core crops, scales and flips (forked, they share the samples'
    arrays; nothing is copied)."""
    loader = DataLoader(_Batches(samples, seed, batch), batch_size=None, num_workers=workers, pin_memory=pin_memory,
                        prefetch_factor=4 if workers else None, worker_init_fn=leave_stops_to_the_trainer)
    return iter(loader)


def predict(network: nn.Module, samples: Samples, batch: int = 8) -> np.ndarray:
    """The lesion's probability the network gives, (M, N, N, N) float32 (in float32, on the network's device);
    the network is left in train mode."""
    network.eval()
    device = next(network.parameters()).device
    out = []
    with torch.inference_mode():
        for i in range(0, len(samples), batch):
            x = torch.from_numpy(network_inputs(samples.ct[i:i + batch], samples.pet[i:i + batch])).to(device)
            out.append(torch.softmax(network(x).float(), dim=1)[:, 1].cpu().numpy())
    network.train()
    return np.concatenate(out)


def at_1mm(crop: np.ndarray) -> np.ndarray:
    """A crop's probability or share read at 1 mm (twice the crop's resolution, linearly) and taken where it is
    >= 1/2: the editor's reading of the network onto a label grid of ~1 mm in-plane voxels, on the crop."""
    fine = nn.functional.interpolate(torch.from_numpy(np.asarray(crop, np.float32))[None, None], scale_factor=2,
                                     mode="trilinear", align_corners=False)
    return fine[0, 0].numpy() >= 0.5


def network_dice(network: nn.Module, samples: Samples) -> tuple[dict[str, float], dict[str, float]]:
    """Mean per-sample Dice of the network's lesion against the target, over all and per kind: on the crop's
    2 mm voxels (probability and share >= 1/2) and at 1 mm (:func:`at_1mm` of both), where what the shares
    teach shows: the edge of a node within a 2 mm voxel."""
    pairs = list(zip(predict(network, samples), samples.target))
    return (by_kind([dice(p >= 0.5, as_mask(t)) for p, t in pairs], samples.kind),
            by_kind([dice(at_1mm(p), at_1mm(as_share(t))) for p, t in pairs], samples.kind))


def _as_samples(data: Samples | str | os.PathLike) -> Samples:
    return data if isinstance(data, Samples) else load_samples(data)


def train(train_data: Samples | str | os.PathLike, val_data: Samples | str | os.PathLike, budget_s: float,
          lr: float = 2e-3, batch: int = 4, seed: int = 0, *, eval_every: int = 200, max_steps: int | None = None,
          config: NetworkConfig = NETWORK, init: nn.Module | None = None, device: str | torch.device = "auto",
          amp: str = "auto", loader_workers: int = 0, log: Callable[[str], None] | None = print) -> TrainResult:
    """Train a click network on ``train_data`` (samples or their folder) for ``budget_s`` seconds (or
    ``max_steps`` steps, whichever ends first), validating on ``val_data`` every ``eval_every`` steps and at the
    end. The learning rate falls from ``lr`` along a cosine over the budget, so the run ends annealed whenever
    the machine's speed lets it end; the last weights are kept (choosing the best on the validation set would
    make its Dice a selected, not a held-out, figure). ``init``: a network to go on training (a click model's,
    :func:`start_from`) instead of a new one of ``config``. ``device``: "auto" (CUDA when there is one), "cpu",
    "cuda[:N]"; ``amp``: the autocast on CUDA (:data:`.fit.AMP_CHOICES`; none on the CPU, whatever it says);
    ``loader_workers``: processes building batches (:func:`training_batches`). The network comes back on the CPU.
    ``log``: progress lines (None: quiet)."""
    if budget_s <= 0 or batch < 1 or lr <= 0 or eval_every < 1 or loader_workers < 0:
        raise ValueError(f"budget_s {budget_s}, batch {batch}, lr {lr}, eval_every {eval_every}, loader_workers "
                         f"{loader_workers}: give positive values (loader_workers 0 or more)")
    device = resolve_device(device)
    amp_dtype = resolve_amp(amp, device)
    train_set, val_set = _as_samples(train_data), _as_samples(val_data)
    say = log or (lambda line: None)
    baseline = threshold_dice(val_set)
    say(f"train {len(train_set)} samples of {len(train_set.phantoms)} phantoms {train_set.counts()}; "
        f"validation {len(val_set)} of {len(val_set.phantoms)}; 41 % threshold val Dice {baseline}")
    torch.manual_seed(seed)
    network = (build_network(config) if init is None else init).to(device)
    n_parameters = sum(p.numel() for p in network.parameters())
    say(f"network {list(network.config.channels)} ({n_parameters / 1e6:.2f} M parameters) on {device}"
        f"{f' with {amp_dtype} autocast' if amp_dtype else ''}, batch {batch}, {loader_workers} loader workers")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # one input size throughout: the fastest kernels are worth finding
    network.train()
    optimiser = torch.optim.AdamW(network.parameters(), lr, weight_decay=1e-4)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    batches = training_batches(train_set, seed, batch, loader_workers, pin_memory=device.type == "cuda")
    history: list[dict[str, float]] = []
    losses: list[float] = []
    start, steps, interrupted = time.monotonic(), 0, None
    try:
        while True:
            raise_pending_stop()  # a stop lost in a loader's clean-up (see guard)
            done = (time.monotonic() - start) / budget_s
            if max_steps is not None:
                done = max(done, steps / max_steps)
            if done >= 1.0:
                break
            for group in optimiser.param_groups:
                group["lr"] = lr * 0.5 * (1.0 + math.cos(math.pi * done))
            x, y = (t.to(device, non_blocking=True) for t in next(batches))
            with autocast_context(device, amp_dtype):
                logits = network(x)
            loss = lesion_loss(logits, y)  # in float32
            optimiser.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimiser)
            scaler.update()
            steps += 1
            losses.append(loss.item())
            if steps % eval_every == 0:
                history.append(_checkpoint_line(network, val_set, steps, start, losses[-eval_every:], say))
    except KeyboardInterrupt as stop:  # Ctrl-C, or SIGTERM as the command lines raise it (guard.Terminated)
        if steps == 0:
            raise  # nothing learnt to keep
        interrupted = "SIGTERM" if isinstance(stop, Terminated) else "Ctrl-C"
        say(f"{interrupted} at step {steps}: validating the network trained so far to keep it (again to stop "
            "without it)")
    if not history or history[-1]["step"] != steps:
        history.append(_checkpoint_line(network, val_set, steps, start, losses[-eval_every:], say))
    del batches  # its loader workers end
    network.to("cpu").eval()
    return TrainResult(network, steps, round(time.monotonic() - start, 1), history[-1]["val_dice"], baseline,
                       history, history[-1]["val_dice_1mm"], interrupted)


def _checkpoint_line(network: nn.Module, val_set: Samples, steps: int, start: float, losses: list[float],
                     say: Callable[[str], None]) -> dict[str, Any]:
    scores, fine = network_dice(network, val_set)
    entry = {"step": steps, "seconds": round(time.monotonic() - start, 1),
             "loss": round(float(np.mean(losses)), 4) if losses else None, "val_dice": scores, "val_dice_1mm": fine}
    say(f"step {steps} {entry['seconds']:.0f} s loss {entry['loss']} val Dice {scores} at 1 mm {fine}")
    return entry


# --------------------------------------------------------------------------------------------- the model file


def export(network: nn.Module, path: str | os.PathLike, metadata: Mapping[str, Any] | None = None) -> tuple[Path, Path]:
    """Write ``network`` as a click model file (:func:`HNTumorSegLib.pipeline.model_file.save_model`): its
    ``"click_model"`` entry is this software's contract and the structure drawn; ``metadata`` adds
    ``trained_on``, ``metrics``, ``intended_use`` (default :data:`INTENDED_USE`) and any further keys, but not
    the entry itself nor save_model's reserved keys (ValueError)."""
    from HNTumorSegLib.pipeline.model_file import save_model

    metadata = dict(metadata or {})
    if CLICK_MODEL_KEY in metadata:
        raise ValueError(f"metadata may not set {CLICK_MODEL_KEY!r} (written by export: the contract)")
    metadata.setdefault("intended_use", INTENDED_USE)
    entry = {**CONTRACT, "structure": STRUCTURE}
    return save_model(network, network.config, path, metadata={CLICK_MODEL_KEY: entry, **metadata})


def start_from(path: str | os.PathLike) -> nn.Module:
    """The network of the click model file at ``path`` (checked as the editor checks it: a ModelFileError names
    the file when it is not one), to go on training from its weights."""
    from HNTumorSegLib.editing.click_model import ClickModel

    return ClickModel(path).network


def model_metadata(result: TrainResult, train_set: Samples, val_set: Samples, settings: Mapping[str, Any],
                   failed: Mapping[int, str]) -> dict[str, Any]:
    """The model file's ``trained_on`` and ``metrics``: what it saw, how long, and what it beat."""
    return {
        "trained_on": {
            "data": "synthetic PET/CT phantoms (HNTumorSegLib.phantom.make_phantom), styles "
                    f"{'/'.join(STYLE_CYCLE)} by seed % {len(STYLE_CYCLE)}, fields {'/'.join(FIELDS)}; clicks "
                    f"{'/'.join(KINDS)} on every GTVn lesion",
            **settings,
            "phantoms": len(train_set.phantoms), "samples": len(train_set), "samples_by_kind": train_set.counts(),
            "val_phantoms": len(val_set.phantoms), "val_samples": len(val_set),
            "phantoms_not_drawn": sorted(failed),
            "steps": result.steps, "seconds": result.seconds,
            "interrupted": result.interrupted,  # by Ctrl-C or SIGTERM before its budget: not annealed
        },
        "metrics": {
            "val_dice": result.val_dice["all"], "val_dice_threshold_41": result.val_dice_threshold_41["all"],
            "val_dice_by_kind": result.val_dice, "val_dice_threshold_41_by_kind": result.val_dice_threshold_41,
            "val_dice_1mm": result.val_dice_1mm.get("all"), "val_dice_1mm_by_kind": result.val_dice_1mm,
            "validation": "mean per-click Dice on the validation phantoms' crops (softmax >= 0.5 against the "
                          "target's share >= 0.5, on the crop's 2 mm voxels; val_dice_1mm: both read at 1 mm, "
                          "linearly); the threshold is the editor's (41 % over the local background) on the same "
                          "crops",
            "history": result.history,
        },
    }


# --------------------------------------------------------------------------------------------- command line


def seed_range(text: str) -> range:
    """``A:B``: phantom seeds A to B - 1 (an argparse type)."""
    try:
        a, b = (int(v) for v in text.split(":"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"give seeds as A:B (A to B - 1), not {text!r}") from None
    if not 0 <= a < b:
        raise argparse.ArgumentTypeError(f"give 0 <= A < B in A:B, not {text!r}")
    return range(a, b)


def _positive(kind: type) -> Callable[[str], Any]:
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if value is None or not value > 0 or (kind is float and not math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"give a positive {'integer' if kind is int else 'number'}, "
                                             f"not {text!r}")
        return value
    return parse


DESCRIPTION = "Train the click model (draws the lymph node at a click) on phantoms and write its model file."


def build_parser() -> argparse.ArgumentParser:
    return add_arguments(argparse.ArgumentParser(prog=PROG, description=DESCRIPTION))


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The command's options on ``parser`` (this module's command, or ``hntumorseg-train click-model``)."""
    parser.add_argument("--out", required=True, type=Path, help="model path without suffix, e.g. models/NAME")
    parser.add_argument("--data", required=True, type=Path,
                        help="folder of the samples (one s{SEED}.npz per phantom; drawn where missing)")
    parser.add_argument("--seeds", required=True, type=seed_range, metavar="A:B", help="training phantom seeds")
    parser.add_argument("--val-seeds", required=True, type=seed_range, metavar="C:D",
                        help="validation phantom seeds (apart from the training ones)")
    parser.add_argument("--budget-s", required=True, type=_positive(float), help="training time (seconds)")
    parser.add_argument("--workers", type=_positive(int), default=1, help="processes drawing phantoms")
    parser.add_argument("--lr", type=_positive(float), default=2e-3, help="peak learning rate (AdamW)")
    parser.add_argument("--batch", type=_positive(int), default=4)
    parser.add_argument("--seed", type=int, default=0, help="seed of the network's start and the batches")
    parser.add_argument("--init", type=Path, metavar="MODEL",
                        help="go on training this click model (its weights and network) instead of a new one")
    parser.add_argument("--eval-every", type=_positive(int), default=200, help="validate every N steps")
    parser.add_argument("--max-steps", type=_positive(int), help="stop after N steps (smoke runs)")
    parser.add_argument("--ct-matrix", type=_positive(int),
                        help="in-plane CT voxels of the phantoms (default the style's; small for smoke runs)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar while drawing phantoms")
    parser.add_argument("--device", default="auto", help="auto (CUDA when there is one; default), cpu, cuda, cuda:N")
    parser.add_argument("--amp", choices=AMP_CHOICES, default="auto",
                        help="autocast on CUDA: auto (bf16 where supported), bf16, fp16, none; never on the CPU")
    parser.add_argument("--loader-workers", type=_positive_or_zero, default=0,
                        help="processes building the augmented batches (default 0: between steps; on a GPU, "
                             "a few keep it busy)")
    parser.add_argument("--channels", type=_channels, metavar="C1,C2,C3,C4",
                        help=f"the network's width per level (default {','.join(map(str, NETWORK.channels))}: "
                             "CPU-trainable); not with --init, whose network is kept")
    return parser


def _check_buildable(config: NetworkConfig, channels: Sequence[int] | None) -> None:
    """The network built once, at once: widths this machine cannot hold fail here in one line, not after the
    phantoms were drawn, in the allocator's traceback."""
    try:
        with torch.random.fork_rng():  # the run's own start stays that of its seed
            build_network(config)
    except (RuntimeError, MemoryError) as exc:
        widths = ",".join(map(str, channels or config.channels))
        raise InputError(f"--channels {widths}: the network cannot be built here ({str(exc).splitlines()[0][:160]}); "
                         "give smaller widths") from None


def _positive_or_zero(text: str) -> int:
    if not (text.isascii() and text.isdigit()):
        raise argparse.ArgumentTypeError(f"give 0 or a positive integer, not {text!r}")
    return int(text)


def _channels(text: str) -> tuple[int, ...]:
    """``C1,C2,C3,C4``: the channels of the network's four levels, each a positive integer (an argparse type)."""
    parts = [p.strip() for p in text.split(",")]
    if len(parts) != len(NETWORK.channels) or not all(p.isascii() and p.isdigit() and int(p) > 0 for p in parts):
        raise argparse.ArgumentTypeError(f"give {len(NETWORK.channels)} positive integers separated by commas "
                                         f"(one per level, e.g. 16,32,64,128), not {text!r}")
    return tuple(int(p) for p in parts)


def _check_out(out: Path) -> None:
    """Before hours of work: the model's folder must be one that can be written."""
    if out.is_dir():
        raise InputError(f"--out {out}: a folder; give the model's path without suffix, e.g. {out / 'NAME'}")
    parent = out.parent
    if parent.exists() and not parent.is_dir():
        raise InputError(f"--out {out}: {parent} is not a folder")
    parent.mkdir(parents=True, exist_ok=True)
    if not os.access(parent, os.W_OK):
        raise InputError(f"--out {out}: {parent} cannot be written")


def run(args: argparse.Namespace) -> int:
    overlap = set(args.seeds) & set(args.val_seeds)
    if overlap:
        raise InputError(f"--seeds and --val-seeds share {len(overlap)} phantoms ({min(overlap)}...): validation "
                         "must be on phantoms not trained on")
    if args.ct_matrix is not None and args.ct_matrix < 64:
        raise InputError(f"--ct-matrix {args.ct_matrix}: give 64 or more")
    cpus = available_cpus()
    if args.loader_workers > cpus:  # each a process with its own copy of the samples: 1000 forked the machine to a halt
        raise InputError(f"--loader-workers {args.loader_workers}: this machine gives this process {cpus} CPUs; "
                         f"give at most {cpus}")
    _check_out(args.out)
    if args.init is not None and args.channels is not None:
        raise InputError(f"--channels with --init {args.init}: training goes on with that model's network; "
                         "give one or the other")
    device = resolve_device(args.device)  # before hours of drawing phantoms, as the rest
    config = NETWORK if args.channels is None else dataclasses.replace(NETWORK, channels=args.channels)
    if args.init is not None and args.init.is_dir():
        raise InputError(f"--init {args.init}: a folder; give the click model's .json")
    init = start_from(args.init) if args.init is not None else None
    if init is None:
        _check_buildable(config, args.channels)
    failed = make_samples(list(args.seeds) + list(args.val_seeds), args.data, workers=args.workers,
                          ct_matrix=args.ct_matrix, progress=not args.no_progress)
    train_set, val_set = load_samples(args.data, args.seeds), load_samples(args.data, args.val_seeds)
    result = train(train_set, val_set, args.budget_s, lr=args.lr, batch=args.batch, seed=args.seed,
                   eval_every=args.eval_every, max_steps=args.max_steps, config=config, init=init, device=device,
                   amp=args.amp, loader_workers=args.loader_workers, log=lambda line: print(line, flush=True))
    settings = {"seeds": f"{args.seeds.start}:{args.seeds.stop}",
                "val_seeds": f"{args.val_seeds.start}:{args.val_seeds.stop}",
                "ct_matrix": args.ct_matrix, "budget_s": args.budget_s, "lr": args.lr, "batch": args.batch,
                "seed": args.seed, "init": args.init.name if args.init is not None else None,
                "channels": list(result.network.config.channels),
                "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
                "amp": str(resolve_amp(args.amp, device) or "none").replace("torch.", ""),
                "loader_workers": args.loader_workers}
    weights, config = export(result.network, args.out, model_metadata(result, train_set, val_set, settings, failed))
    print(f"wrote {config} and {weights}: val Dice {result.val_dice['all']:.4f} (41 % threshold "
          f"{result.val_dice_threshold_41['all']:.4f}) after {result.steps} steps"
          f"{f' ({result.interrupted} before the budget was spent)' if result.interrupted else ''}")
    # a script that stopped the run learns it was stopped; the model is kept all the same
    return {None: 0, "Ctrl-C": 130, "SIGTERM": 143}[result.interrupted]


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded(PROG, run, args, user_errors=(InputError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
