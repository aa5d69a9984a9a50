"""Training augmentation: the presets, their parameters, and the transforms (MONAI underneath).

Three presets (``fit --augment``):

* ``default``: nnU-Net's (v2) augmentation, with its probabilities and ranges
  (:class:`NnUNetAugmentation`), plus two PET-specific transforms. Needs MONAI (the ``train`` extra).
* ``light``: the augmentation before issue 11 (left-right flip, a small per-channel affine
  intensity map, optional noise; :class:`LightAugmentation`), drawing the same random numbers in the
  same order, so runs made with it can be reproduced exactly. Needs nothing beyond numpy.
* ``off``: none (:class:`NoAugmentation`).

Why MONAI: ``Testing/benchmarks/augment_cost.py`` timed MONAI, batchgeneratorsv2 and TorchIO on
the training patches (one CPU thread, as in one loader worker). With nnU-Net's probabilities a
2 x 32 x 80 x 80 patch cost on average 33 ms with MONAI's random transforms, 14 ms with
batchgeneratorsv2, 108 ms with TorchIO (which resamples through SimpleITK and lacks
multiplicative brightness and contrast), and 14 ms with this module (48 x 96 x 96: 79, 40, 442
and 33 ms). batchgeneratorsv2 draws from the global numpy/torch generators (a per-draw seed would
have to reseed a worker's global state), rotates voxel grids, and would be a new dependency.
MONAI was already a training dependency, has deterministic transforms that take their parameters
as arguments (so every parameter here is drawn from the per-draw generator of :mod:`.data`, and
a batch does not depend on the number of workers), resamples through any grid (rotations in
millimetres, although the lattice has 3 mm slices and 1 mm pixels; float32, which is what makes
this module's spatial transform 3-4x cheaper than MONAI's RandAffine in float64), and has nnU-Net's
gamma (inverted, statistics kept) and contrast (around the mean, range kept).

The default preset, per drawn patch, in this order:

1. Spatial, on CT, PET and label together (label nearest-neighbour), as one resampling:
   rotation about each axis by U(-30, 30) degrees (p 0.2), isotropic scaling of the sampled extent
   by U(0.7, 1.4) (p 0.2; > 1 shows more anatomy, so objects look smaller; nnU-Net's convention),
   elastic deformation (off by default: nnU-Net v2 does not use it either; ``elastic_p``), and
   mirroring with p 0.5 along each axis of ``mirror_axes`` (default x only: GTVp and GTVn labels do
   not depend on the side, so a left-right mirror is label-safe; a head-feet or front-back mirror is
   label-safe too but shows anatomy that never occurs, so it is optional). Rotations act in
   millimetres (the 3 mm slices are not treated as 1 mm). The patch is sampled from the window
   around its centre, from a source region as large as the rotated and scaled patch needs (nnU-Net
   samples from a patch larger than the target for the same reason), so rotated corners hold image,
   not padding; only where that region leaves the 112 x 256 x 256 window are images continued by
   their edge values and the label by background. With whole windows (no ``--patch-size``) there is
   no larger source and rotated corners are always such edge values. Without rotation, scaling
   and elastic deformation nothing is interpolated: the patch is cut out (and mirrored) exactly.
2. PET-specific, on the PET channel (see "PET" below): a SUV scale relative to the window's
   statistics, factor log-uniform in [1/1.3, 1.3] (p 0.2), and a resolution blur, Gaussian of FWHM
   U(2, 6) mm in millimetres (p 0.2).
3. nnU-Net's intensity transforms, each channel drawn separately unless said otherwise: Gaussian
   noise of variance U(0, 0.1) (p 0.1, one standard deviation for both channels), Gaussian blur of
   sigma U(0.5, 1) voxels per axis (p 0.2, each channel with p 0.5), multiplicative brightness
   U(0.75, 1.25) (p 0.15), contrast U(0.75, 1.25) around the mean, range kept (p 0.15), simulated low
   resolution: nearest-neighbour down to U(0.5, 1) of the size and trilinear back up (p 0.25, each
   channel with p 0.5), gamma U(0.7, 1.5) on the inverted image (p 0.1) and on the image (p 0.3),
   mean and standard deviation kept. nnU-Net's factor ranges are drawn its way: half the time
   below 1, half the time above.

Where the intensity transforms act. The cache holds the network's inputs, both squashed into
(0, 1) by a sigmoid (:mod:`HNTumorSegLib.pipeline.intensity`): CT = sigmoid((clip(HU, -1000, 1000) +
1000) / 2000), PET = sigmoid((SUV - mu) / sigma) with mu, sigma the mean and standard deviation
of the case's window. nnU-Net's transforms are meant for z-scored intensities; applied to sigmoid
values they would mean something else (a brightness factor of 1.25 on CT values in
[0.5, 0.73] is a shift of most of the HU range). So a channel that an intensity transform touches
is first taken back through the inverse sigmoid: CT to HU, standardised as (HU - 40) / 50 (soft
tissue at 0, 50 HU a unit: roughly nnU-Net's CT normalisation of head-and-neck tumours, so its
noise range means up to ~16 HU), and PET to the z-score (SUV - mu) / sigma itself, which is
exactly nnU-Net's normalisation of a non-CT channel. After the transforms, CT is clipped to
[-1000, 1000] HU as preprocessing would clip it, and both go through the sigmoid again.

PET. A global SUV scale k (calibration differences between centres, tens of percent) changes
nothing that the network sees: the normalisation divides it out exactly (mu and sigma scale with
k), so augmenting with it would be an identity. What calibration does change is the crop: the
brain-cut window is placed with SUV thresholds (:mod:`HNTumorSegLib.pipeline.crop`: uptake above 0.5 SUV,
a top slice of mean 0.1 SUV), so a scale can move the window by a few voxels -- which random patch
placement already covers. What does differ between centres in the normalised input is the uptake
*relative to the window's statistics*: how much hot tissue (brain, inflamed mucosa, brown fat)
enters the window and the tumour-to-background contrast at the centre's uptake time. That is what
``pet_scale`` models: every SUV multiplied by k while mu and sigma stay, z' = k z + (k - 1) mu /
sigma, which is the same as normalising with the statistics mu / k and sigma / k. SUV 0 (air,
the padding outside the scan) stays where it was. It needs mu / sigma from the case's provenance
(``pet_normalisation``, written by ``prepare``); without it the offset term is left out (scaling
about the window mean). The resolution blur is done on z, which is an affine function of the SUV,
so it equals blurring the SUV image (reconstructions and post-filters differ between centres);
mu stays, sigma would drop slightly, which is not modelled. Saturation: the cache stores float16,
in which the sigmoid reaches 1 at z ~ 7.6, so higher uptake is read back as z ~ 8.3 (the inverse
sigmoid of 1 - 2^-12); after the largest down-scale (1/1.3) such a voxel reads 0.998 instead of
about 1, a difference the network can hardly see.

Randomness: every parameter is drawn from the numpy Generator that :class:`.data.TrainDataset`
makes for each draw, in a fixed order; MONAI's own random transforms are not used. A probability
of 0 draws nothing further and changes nothing.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields
from typing import Any, Mapping, Sequence

import numpy as np
import torch

from HNTumorSegLib.imaging.geometry import LATTICE_SPACING
from HNTumorSegLib.pipeline.intensity import CT_CLIP_HU
from HNTumorSegLib.optional_packages import require

#: Voxel size of the cache's window in mm, (z, y, x).
SPACING_ZYX = tuple(float(s) for s in LATTICE_SPACING[::-1])
AXES = ("z", "y", "x")
PRESETS = ("default", "light", "off")
#: CT is augmented as (HU - CT_REFERENCE_HU[0]) / CT_REFERENCE_HU[1] (see the module docstring).
CT_REFERENCE_HU = (40.0, 50.0)
#: The cache's float16 sigmoid reaches 1.0 at z ~ 7.6; p is clipped to [P_MIN, 1 - P_MIN_TOP] before the logit.
P_MIN, P_MIN_TOP = 2.0 ** -24, 2.0 ** -12
FWHM_PER_SIGMA = 2.0 * math.sqrt(2.0 * math.log(2.0))


# ------------------------------------------------------------------------------------------- parameters
@dataclass(frozen=True)
class LightAugmentation:
    """The ``light`` preset, the augmentation before issue 11 (see :func:`light_augment`).

    Left-right flip with probability ``flip_p``; with probability ``intensity_p`` a per-channel
    scale U(1 - scale, 1 + scale) and shift U(-shift, shift) of the normalised inputs; with
    probability ``noise_p`` Gaussian noise of standard deviation U(0, noise_std) (off: 0).
    """

    flip_p: float = 0.5
    intensity_p: float = 0.5
    scale: float = 0.1
    shift: float = 0.05
    noise_p: float = 0.15
    noise_std: float = 0.0

    preset = "light"

    @classmethod
    def off(cls) -> "LightAugmentation":
        return cls(flip_p=0.0, intensity_p=0.0, scale=0.0, shift=0.0, noise_p=0.0, noise_std=0.0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def record(self) -> dict[str, Any]:
        return {"preset": self.preset, **self.to_dict()}


@dataclass(frozen=True)
class NoAugmentation:
    """The ``off`` preset: the patch as cached."""

    preset = "off"

    def to_dict(self) -> dict[str, Any]:
        return {}

    def record(self) -> dict[str, Any]:
        return {"preset": self.preset}


@dataclass(frozen=True)
class NnUNetAugmentation:
    """The ``default`` preset's parameters (module docstring); ranges are (low, high) pairs.

    Probabilities are per drawn patch; ``*_channel_p`` is the probability for each channel once the
    transform is drawn. ``rotation_deg`` is the largest angle about the z, y and x axes;
    ``scaling`` follows nnU-Net (> 1: a larger extent is sampled, objects look smaller);
    ``elastic_sigma_mm`` is the smoothness and ``elastic_magnitude_mm`` the largest displacement;
    ``mirror_axes`` are names among z, y, x.
    """

    rotation_p: float = 0.2
    rotation_deg: tuple[float, float, float] = (30.0, 30.0, 30.0)
    scaling_p: float = 0.2
    scaling: tuple[float, float] = (0.7, 1.4)
    elastic_p: float = 0.0
    elastic_sigma_mm: tuple[float, float] = (10.0, 20.0)
    elastic_magnitude_mm: tuple[float, float] = (0.0, 6.0)
    mirror_p: float = 0.5
    mirror_axes: tuple[str, ...] = ("x",)
    pet_scale_p: float = 0.2
    pet_scale: tuple[float, float] = (1 / 1.3, 1.3)
    pet_blur_p: float = 0.2
    pet_blur_fwhm_mm: tuple[float, float] = (2.0, 6.0)
    noise_p: float = 0.1
    noise_variance: tuple[float, float] = (0.0, 0.1)
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.5, 1.0)
    blur_channel_p: float = 0.5
    brightness_p: float = 0.15
    brightness: tuple[float, float] = (0.75, 1.25)
    contrast_p: float = 0.15
    contrast: tuple[float, float] = (0.75, 1.25)
    lowres_p: float = 0.25
    lowres_zoom: tuple[float, float] = (0.5, 1.0)
    lowres_channel_p: float = 0.5
    gamma_inverted_p: float = 0.1
    gamma_p: float = 0.3
    gamma: tuple[float, float] = (0.7, 1.5)

    preset = "default"

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, list):  # from JSON
                object.__setattr__(self, f.name, tuple(value))
                value = tuple(value)
            if f.name.endswith("_p") and not (isinstance(value, (int, float)) and 0.0 <= value <= 1.0):
                raise ValueError(f"augmentation {f.name} must be a probability in [0, 1], got {value!r}")
        bad = [a for a in self.mirror_axes if a not in AXES]
        if bad:
            raise ValueError(f"augmentation mirror_axes must name axes among z, y, x, got {list(self.mirror_axes)}")
        if len(self.rotation_deg) != 3:
            raise ValueError(f"augmentation rotation_deg needs 3 angles (z, y, x), got {list(self.rotation_deg)}")
        for name in ("scaling", "elastic_sigma_mm", "elastic_magnitude_mm", "pet_scale", "pet_blur_fwhm_mm",
                     "noise_variance", "blur_sigma", "brightness", "contrast", "lowres_zoom", "gamma"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not 0 <= lo_hi[0] <= lo_hi[1]:
                raise ValueError(f"augmentation {name} must be a range (low, high) with 0 <= low <= high, "
                                 f"got {list(lo_hi)}")
        if self.scaling[0] <= 0 or self.lowres_zoom[0] <= 0 or self.gamma[0] <= 0 or self.pet_scale[0] <= 0:
            raise ValueError("augmentation scaling, lowres_zoom, gamma and pet_scale must be positive")

    @classmethod
    def none(cls) -> "NnUNetAugmentation":
        """Every probability 0: the identity (tests)."""
        return cls(**{f.name: 0.0 for f in fields(cls) if f.name.endswith("_p")})

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    def record(self) -> dict[str, Any]:
        return {"preset": self.preset, **self.to_dict()}


AugmentationParams = LightAugmentation | NnUNetAugmentation | NoAugmentation
PRESET_CLASSES = {"default": NnUNetAugmentation, "light": LightAugmentation, "off": NoAugmentation}


def make_augmentation(spec: Any = None) -> AugmentationParams:
    """The augmentation ``spec`` names: a preset name, a record (dict), an instance, or None (``default``).

    A dict without ``"preset"`` is a record written before presets existed: the light parameters.
    Unknown keys are refused (one line), so a typo in ``--aug-set`` does not pass silently.
    """
    if spec is None:
        return NnUNetAugmentation()
    if isinstance(spec, (LightAugmentation, NnUNetAugmentation, NoAugmentation)):
        return spec
    if isinstance(spec, str):
        spec = {"preset": spec}
    if not isinstance(spec, Mapping):
        raise ValueError(f"augmentation must be a preset name ({', '.join(PRESETS)}) or a mapping, got {spec!r}")
    values = dict(spec)
    preset = values.pop("preset", "light")
    if preset not in PRESET_CLASSES:
        raise ValueError(f"unknown augmentation preset {preset!r}; known: {', '.join(PRESETS)}")
    cls = PRESET_CLASSES[preset]
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(values) - known)
    if unknown:
        raise ValueError(f"augmentation preset {preset!r} has no parameter {', '.join(unknown)}; "
                         f"known: {', '.join(sorted(known)) or 'none'}")
    return cls(**values)


def normalise_record(record: Any) -> Any:
    """A stored ``augmentation`` setting in today's form (records without a preset were light)."""
    if isinstance(record, Mapping) and "preset" not in record:
        return {"preset": "light", **record}
    return record


def needs_monai(aug: AugmentationParams) -> bool:
    return isinstance(aug, NnUNetAugmentation)


def require_monai() -> Any:
    """MONAI's transforms, or the one-line error naming the pip install."""
    return require("monai.transforms", "the default augmentation (fit --augment default)")


# ------------------------------------------------------------------------------------------- light
def light_augment(image: np.ndarray, label: np.ndarray, rng: np.random.Generator,
                  aug: LightAugmentation) -> tuple[np.ndarray, np.ndarray, bool]:
    """Flip and intensity-augment float32 ``image`` (C, Z, Y, X) and ``label`` (Z, Y, X); also returns flipped.

    The pre-issue-11 code, unchanged (same draws in the same order), so light runs reproduce.
    """
    flipped = bool(rng.random() < aug.flip_p)
    if flipped:
        image = np.ascontiguousarray(image[..., ::-1])
        label = np.ascontiguousarray(label[..., ::-1])
    channels = image.shape[0]
    if rng.random() < aug.intensity_p:
        scale = rng.uniform(1.0 - aug.scale, 1.0 + aug.scale, channels).astype(np.float32)
        shift = rng.uniform(-aug.shift, aug.shift, channels).astype(np.float32)
        image *= scale[:, None, None, None]
        image += shift[:, None, None, None]
    if aug.noise_std > 0 and rng.random() < aug.noise_p:
        std = rng.uniform(0.0, aug.noise_std)
        image += rng.standard_normal(image.shape, dtype=np.float32) * np.float32(std)
    return image, label, flipped


# ------------------------------------------------------------------------------------------- spatial
@dataclass
class SpatialDraw:
    """One patch's spatial parameters: angles (radians, about z, y, x), scaling, mirror signs, elastic field."""

    angles: tuple[float, float, float] = (0.0, 0.0, 0.0)
    scaling: float = 1.0
    mirror: tuple[bool, bool, bool] = (False, False, False)
    elastic: np.ndarray | None = None   # (3, Z, Y, X) displacement in mm of each patch voxel, before the affine

    @property
    def resamples(self) -> bool:
        return any(self.angles) or self.scaling != 1.0 or self.elastic is not None

    def matrix(self) -> np.ndarray:
        """3 x 3 map from patch offsets (mm, z y x) to source offsets (mm): rotation . scaling . mirror."""
        m = np.diag([-1.0 if f else 1.0 for f in self.mirror]) * self.scaling
        for axis, angle in enumerate(self.angles):
            if angle:
                m = _rotation_about(axis, angle) @ m
        return m


def _rotation_about(axis: int, angle: float) -> np.ndarray:
    """Rotation by ``angle`` about (z, y, x)[axis], acting on the other two coordinates."""
    i, j = [a for a in range(3) if a != axis]
    r = np.eye(3)
    c, s = math.cos(angle), math.sin(angle)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def _bg_range(rng: np.random.Generator, lo: float, hi: float) -> float:
    """nnU-Net's factor draw (BGContrast): half the time in [lo, 1), else in [1, hi] (when the range straddles 1)."""
    if lo < 1.0 < hi:
        return float(rng.uniform(lo, 1.0) if rng.random() < 0.5 else rng.uniform(1.0, hi))
    return float(rng.uniform(lo, hi))


def draw_spatial(rng: np.random.Generator, aug: NnUNetAugmentation, patch: Sequence[int]) -> SpatialDraw:
    """Spatial parameters, in this order: rotation, scaling, elastic field, mirror per allowed axis."""
    draw = SpatialDraw()
    if aug.rotation_p > 0 and rng.random() < aug.rotation_p:
        draw.angles = tuple(float(rng.uniform(-1, 1) * math.radians(d)) if d else 0.0 for d in aug.rotation_deg)
    if aug.scaling_p > 0 and rng.random() < aug.scaling_p:
        draw.scaling = float(rng.uniform(*aug.scaling))
    if aug.elastic_p > 0 and rng.random() < aug.elastic_p:
        draw.elastic = elastic_field(rng, patch, float(rng.uniform(*aug.elastic_sigma_mm)),
                                     float(rng.uniform(*aug.elastic_magnitude_mm)))
    if aug.mirror_p > 0:
        draw.mirror = tuple(bool(a in aug.mirror_axes and rng.random() < aug.mirror_p) for a in AXES)
    return draw


def elastic_field(rng: np.random.Generator, patch: Sequence[int], sigma_mm: float, magnitude_mm: float) -> np.ndarray:
    """Smooth random displacement (3, *patch) in mm, largest component ``magnitude_mm``.

    White noise on a control grid of sigma / 2 spacing, smoothed with a Gaussian of sigma (MONAI's
    separable filter) and interpolated trilinearly to the patch: a dense field with the smoothness
    of one smoothed at full resolution, for a fraction of the cost.
    """
    mt = require_monai()
    from monai.networks.layers import separable_filtering
    from monai.networks.layers.convutils import gaussian_1d

    step = max(sigma_mm / 2.0, 1e-3)
    coarse = [max(2, int(math.ceil(p * s / step)) + 1) for p, s in zip(patch, SPACING_ZYX)]
    noise = torch.from_numpy(rng.standard_normal((3, *coarse), dtype=np.float32))
    kernels = [gaussian_1d(torch.tensor(2.0), truncated=3.0) for _ in range(3)]
    smooth = separable_filtering(noise[None], kernels, mode="replicate")[0]
    dense = _plain(mt.Resize(tuple(patch), mode="trilinear", align_corners=True)(smooth))
    peak = dense.abs().amax(dim=(1, 2, 3), keepdim=True).clamp_min(1e-12)
    return (dense * (magnitude_mm / peak)).numpy()


@dataclass(frozen=True)
class SourceWindow:
    """Where a patch is sampled from: the source region [lo, hi) of the window and the patch centre in it."""

    lo: tuple[int, ...]
    hi: tuple[int, ...]
    centre: tuple[float, ...]   # patch centre, window voxel coordinates
    patch: tuple[int, ...]
    draw: SpatialDraw


def source_window(volume: Sequence[int], patch: Sequence[int], start: Sequence[int],
                  draw: SpatialDraw) -> SourceWindow:
    """The region of the window that ``draw`` samples for the patch at ``start`` (clipped to the window)."""
    patch = tuple(int(p) for p in patch)
    centre = tuple(s + (p - 1) / 2.0 for s, p in zip(start, patch))
    if not draw.resamples:
        return SourceWindow(tuple(int(s) for s in start), tuple(int(s) + p for s, p in zip(start, patch)), centre,
                            patch, draw)
    sp = np.array(SPACING_ZYX)
    half = (np.array(patch) - 1) / 2.0 * sp
    corners = np.array([[a * half[0], b * half[1], c * half[2]] for a in (-1, 1) for b in (-1, 1) for c in (-1, 1)])
    # An elastic displacement of at most e per component moves a point by at most sqrt(3) e.
    margin = 0.0 if draw.elastic is None else math.sqrt(3.0) * float(np.abs(draw.elastic).max()) * draw.scaling
    reach = (np.abs(corners @ draw.matrix().T).max(0) + margin) / sp
    lo = tuple(int(max(0, math.floor(c - r) - 1)) for c, r in zip(centre, reach))
    hi = tuple(int(min(v, math.ceil(c + r) + 2)) for c, r, v in zip(centre, reach, volume))
    return SourceWindow(lo, hi, centre, patch, draw)


def apply_spatial(image: np.ndarray, label: np.ndarray, window: SourceWindow) -> tuple[np.ndarray, np.ndarray]:
    """The patch from the source region ``image`` (C, *region) float32 and ``label`` (*region) uint8.

    Without resampling: the patch cut out exactly, mirrored. With it: one grid through MONAI's
    Resample, bilinear for the images (edge values past the window), nearest for the label
    (background past the window).
    """
    draw = window.draw
    if not draw.resamples:
        axes = [a for a, f in enumerate(draw.mirror) if f]
        if axes:
            image = np.ascontiguousarray(np.flip(image, [a + 1 for a in axes]))
            label = np.ascontiguousarray(np.flip(label, axes))
        return image, label
    mt = require_monai()
    from monai.transforms.utils import create_grid

    sp = torch.tensor(SPACING_ZYX, dtype=torch.float32)
    offsets = torch.as_tensor(create_grid(window.patch, spacing=SPACING_ZYX, homogeneous=False, backend="torch",
                                          dtype=torch.float32))          # (3, *patch), mm from the patch centre
    offsets = _plain(offsets)
    if draw.elastic is not None:
        offsets = offsets + torch.from_numpy(draw.elastic)
    m = torch.from_numpy(draw.matrix().astype(np.float32))
    moved = torch.einsum("ij,j...->i...", m, offsets)                   # mm from the centre, in the source
    size = torch.tensor(image.shape[1:], dtype=torch.float32)
    # Voxel coordinates relative to the centre of the source region (MONAI's norm_coords convention).
    rel = (torch.tensor(window.centre, dtype=torch.float32) - torch.tensor(window.lo, dtype=torch.float32)
           - (size - 1) / 2)
    grid = moved / sp.view(3, 1, 1, 1) + rel.view(3, 1, 1, 1)
    grid = torch.cat([grid, torch.ones((1, *window.patch))])
    resample = mt.Resample(dtype=torch.float32)
    img = _plain(resample(torch.from_numpy(np.ascontiguousarray(image)), grid, mode="bilinear",
                          padding_mode="border"))
    lab = _plain(resample(torch.from_numpy(label.astype(np.float32))[None], grid, mode="nearest",
                          padding_mode="zeros"))[0]
    return img.numpy(), np.rint(lab.numpy()).astype(np.uint8)


# ------------------------------------------------------------------------------------------- intensity
@dataclass
class IntensityOp:
    name: str
    channel: int
    value: Any


def draw_intensity(rng: np.random.Generator, aug: NnUNetAugmentation, channels: int = 2,
                   pet_channel: int = 1) -> list[IntensityOp]:
    """The intensity transforms of one patch, drawn in the order they apply (module docstring)."""
    ops: list[IntensityOp] = []
    hit = lambda p: p > 0 and rng.random() < p  # noqa: E731
    if hit(aug.pet_scale_p):
        lo, hi = aug.pet_scale
        ops.append(IntensityOp("pet_scale", pet_channel, float(math.exp(rng.uniform(math.log(lo), math.log(hi))))))
    if hit(aug.pet_blur_p):
        ops.append(IntensityOp("pet_blur", pet_channel, float(rng.uniform(*aug.pet_blur_fwhm_mm))))
    if hit(aug.noise_p):
        std = math.sqrt(float(rng.uniform(*aug.noise_variance)))
        ops += [IntensityOp("noise", c, std) for c in range(channels)]
    if hit(aug.blur_p):
        for c in range(channels):
            if rng.random() < aug.blur_channel_p:
                ops.append(IntensityOp("blur", c, tuple(float(rng.uniform(*aug.blur_sigma)) for _ in range(3))))
    if hit(aug.brightness_p):
        ops += [IntensityOp("brightness", c, _bg_range(rng, *aug.brightness)) for c in range(channels)]
    if hit(aug.contrast_p):
        ops += [IntensityOp("contrast", c, _bg_range(rng, *aug.contrast)) for c in range(channels)]
    if hit(aug.lowres_p):
        for c in range(channels):
            if rng.random() < aug.lowres_channel_p:
                ops.append(IntensityOp("lowres", c, float(rng.uniform(*aug.lowres_zoom))))
    if hit(aug.gamma_inverted_p):
        ops += [IntensityOp("gamma_inverted", c, _bg_range(rng, *aug.gamma)) for c in range(channels)]
    if hit(aug.gamma_p):
        ops += [IntensityOp("gamma", c, _bg_range(rng, *aug.gamma)) for c in range(channels)]
    return ops


def _logit(p: torch.Tensor) -> torch.Tensor:
    p = p.clamp(P_MIN, 1.0 - P_MIN_TOP)
    return torch.log(p) - torch.log1p(-p)


def to_linear(values: torch.Tensor, channel: int) -> torch.Tensor:
    """Cache values of a channel to where the intensity transforms act: standardised HU (CT) or the z-score (PET)."""
    u = _logit(values)
    if channel == 0:
        lo, hi = CT_CLIP_HU
        return (u * (hi - lo) + lo - CT_REFERENCE_HU[0]) / CT_REFERENCE_HU[1]
    return u


def from_linear(values: torch.Tensor, channel: int) -> torch.Tensor:
    """Inverse of :func:`to_linear`; CT clipped to the preprocessing's HU range on the way."""
    if channel == 0:
        lo, hi = CT_CLIP_HU
        hu = (values * CT_REFERENCE_HU[1] + CT_REFERENCE_HU[0]).clamp(lo, hi)
        values = (hu - lo) / (hi - lo)
    return torch.sigmoid(values)


def _blur(x: torch.Tensor, sigmas_vox: Sequence[float]) -> torch.Tensor:
    from monai.networks.layers import separable_filtering
    from monai.networks.layers.convutils import gaussian_1d

    kernels = [gaussian_1d(torch.tensor(float(s)), truncated=3.0, approx="erf") if s > 0 else torch.ones(1)
               for s in sigmas_vox]
    return separable_filtering(x[None, None], kernels, mode="replicate")[0, 0]


def apply_intensity(image: np.ndarray, ops: Sequence[IntensityOp], rng: np.random.Generator,
                    pet_offset: float = 0.0) -> np.ndarray:
    """Apply ``ops`` to float32 ``image`` (C, Z, Y, X) of cache values; channels without ops are not touched.

    ``pet_offset`` is mu / sigma of the case's PET window (0 when unknown), used by ``pet_scale``.
    Noise is drawn from ``rng`` here, channel by channel in op order.
    """
    if not ops:
        return image
    mt = require_monai()
    out = image
    for c in sorted({op.channel for op in ops}):
        x = to_linear(torch.from_numpy(np.ascontiguousarray(image[c])), c)
        for op in (o for o in ops if o.channel == c):
            x = _apply_op(mt, x, op, rng, pet_offset)
        out[c] = from_linear(x, c).numpy()
    return out


def _apply_op(mt: Any, x: torch.Tensor, op: IntensityOp, rng: np.random.Generator, pet_offset: float) -> torch.Tensor:
    v = op.value
    if op.name == "pet_scale":
        return x * v + (v - 1.0) * pet_offset
    if op.name == "pet_blur":
        sigma_mm = v / FWHM_PER_SIGMA
        return _blur(x, [sigma_mm / s for s in SPACING_ZYX])
    if op.name == "noise":
        if v <= 0:
            return x
        return x + torch.from_numpy(rng.standard_normal(tuple(x.shape), dtype=np.float32)) * v
    if op.name == "blur":
        return _blur(x, v)
    if op.name == "brightness":
        return _plain(mt.ScaleIntensity(minv=None, maxv=None, factor=v - 1.0)(x[None]))[0]
    if op.name == "contrast":
        return _plain(mt.ScaleIntensityFixedMean(factor=v - 1.0, preserve_range=True, fixed_mean=True)(x[None]))[0]
    if op.name == "lowres":
        small = tuple(max(1, int(round(s * v))) for s in x.shape)
        down = _plain(mt.Resize(small, mode="nearest-exact")(x[None]))
        return _plain(mt.Resize(tuple(x.shape), mode="trilinear")(down))[0]
    if op.name in ("gamma", "gamma_inverted"):
        return _plain(mt.AdjustContrast(v, invert_image=op.name == "gamma_inverted", retain_stats=True)(x[None]))[0]
    raise ValueError(f"unknown intensity op {op.name!r}")


def _plain(t: Any) -> torch.Tensor:
    """A plain tensor from MONAI's output (a MetaTensor while MONAI tracks metadata)."""
    return t.as_tensor() if hasattr(t, "as_tensor") else torch.as_tensor(t)


# ------------------------------------------------------------------------------------------- one patch
def augmented_patch(image_volume: np.ndarray, label_volume: np.ndarray, start: Sequence[int], patch: Sequence[int],
                    rng: np.random.Generator, aug: NnUNetAugmentation,
                    pet_offset: float = 0.0) -> tuple[np.ndarray, np.ndarray, SpatialDraw, list[IntensityOp]]:
    """The default preset on the patch at ``start`` of a cached case (memory-mapped arrays are fine).

    Reads only the source region, as float32. Returns image (C, *patch) float32, label uint8, and
    the drawn parameters.
    """
    draw = draw_spatial(rng, aug, patch)
    window = source_window(label_volume.shape, patch, start, draw)
    region = tuple(slice(a, b) for a, b in zip(window.lo, window.hi))
    image = np.array(image_volume[(slice(None), *region)], dtype=np.float32)
    label = np.array(label_volume[region], dtype=np.uint8)
    image, label = apply_spatial(image, label, window)
    ops = draw_intensity(rng, aug, channels=image.shape[0])
    image = apply_intensity(image, ops, rng, pet_offset)
    return image, label, draw, ops


def pet_offset_of(provenance: Mapping[str, Any] | None) -> float:
    """mu / sigma of the case's PET window from its provenance, or 0 when it does not say."""
    stats = (provenance or {}).get("pet_normalisation") or {}
    try:
        mu, sigma = float(stats["mean"]), float(stats["std"])
    except (KeyError, TypeError, ValueError):
        return 0.0
    return mu / sigma if sigma > 0 and math.isfinite(mu / sigma) else 0.0
