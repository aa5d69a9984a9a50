"""The scanner: fields of view, CT and PET grids, image formation, metal artefacts.

Classic geometry: a CT of CT_FOV_MM / ct_matrix in-plane and CT_SLICE_MM slices, a coarser PET
grid chosen from PET_SPACINGS_XY / PET_SPACINGS_Z; the centre styles choose their own
(``PhantomStyle.ct_fov_mm``, ``ct_slice_mm``, ``pet_spacing_xy``, ``pet_spacing_z``). PET formation
is a Gaussian blur of the style's FWHM, count-like noise and, for the styles, a global SUV
calibration factor. Dental fillings add streaks to the CT in the planes that contain them.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from .anatomy import BRAIN_CENTRE, BRAIN_SEMI, Patient, _dental_arch
from .shapes import Ellipsoid, Grid, Layer, _f32
from .styles import PhantomStyle

FIELDS_OF_VIEW = ("head", "head_upper", "whole_body")

#: In-plane CT reconstruction field of view (mm) for the default ``ct_matrix`` grids.
CT_FOV_MM = 500.0
#: CT slice spacing (mm).
CT_SLICE_MM = 3.0
#: ``small_fov=True`` reconstructs a CT field of view of this size range (mm), under 256 mm.
SMALL_FOV_MM = (200.0, 240.0)
#: Candidate PET voxel sizes (in-plane, slice) in mm, as on common scanners.
PET_SPACINGS_XY = (4.0728, 3.6458, 4.0)
PET_SPACINGS_Z = (3.27, 3.0, 4.0)
#: Values written where a CT voxel lies outside the circular reconstruction field of view.
CT_OUTSIDE_FOV_HU = -1024
CT_HU_RANGE = (-1024, 3071)
#: Slices per chunk when adding CT noise (bounds the float32 temporary to ~32 MB).
_NOISE_CHUNK = 32


# ----------------------------------------------------------------------------------------------
# Scan geometry
# ----------------------------------------------------------------------------------------------

def _scan_z_range(pt: Patient, fov: str, brain_cut: bool, rng: np.random.Generator,
                  vertex_z: float | None = None, brain_top: float | None = None) -> tuple[float, float]:
    """Top and bottom slice positions (scanner z, mm) for a field of view. ``vertex_z`` and
    ``brain_top``: where a posed head puts them (default: the unposed patient's)."""
    s, zv = pt.s, pt.offset[2]
    air = rng.uniform(15.0, 35.0)
    cut = rng.uniform(20.0, 45.0)
    if brain_top is None:
        brain_top = zv + s * (BRAIN_CENTRE[2] + BRAIN_SEMI[2])
    top = brain_top - cut * s if brain_cut else (zv if vertex_z is None else vertex_z) + air
    if fov == "head":
        bottom = zv - rng.uniform(265.0, 300.0) * s
    elif fov == "head_upper":
        bottom = top - rng.uniform(550.0, 650.0)
    elif fov == "whole_body":
        bottom = zv - rng.uniform(900.0, 960.0) * s
    else:
        raise ValueError(f"fov must be one of {FIELDS_OF_VIEW}, got {fov!r}")
    return top, bottom


def _ct_grid(pt: Patient, top: float, bottom: float, ct_matrix: int, small_fov: bool,
             rng: np.random.Generator, fov_mm: float = CT_FOV_MM, slice_mm: float = CT_SLICE_MM,
             head_xy: np.ndarray | None = None) -> tuple[Grid, np.ndarray, float]:
    """CT grid, its in-plane centre and reconstruction diameter. The spacing is always
    fov_mm / ct_matrix; ``small_fov`` keeps that spacing and uses fewer voxels, centred
    near the head (``head_xy``, default the patient's head axis): a dedicated head-and-neck
    reconstruction."""
    sp = _f32(fov_mm / ct_matrix)
    jitter = rng.uniform(-10.0, 10.0, 2)
    fov_mm = rng.uniform(*SMALL_FOV_MM)
    if small_fov:
        n_xy = int(round(fov_mm / sp))
        centre = (pt.offset[:2] if head_xy is None else head_xy) + np.array([0.0, 5.0 * pt.s]) + jitter
    else:
        n_xy = int(ct_matrix)
        centre = np.zeros(2)
    n_z = int(math.floor((top - bottom) / slice_mm)) + 1
    origin = (_f32(centre[0] - (n_xy - 1) / 2 * sp), _f32(centre[1] - (n_xy - 1) / 2 * sp),
              _f32(top - (n_z - 1) * slice_mm))
    grid = Grid(origin, (sp, sp, slice_mm), (n_xy, n_xy, n_z))
    return grid, centre, n_xy * sp


def _pet_grid(ct: Grid, rng: np.random.Generator, spacings_xy: Sequence[float] = PET_SPACINGS_XY,
              spacings_z: Sequence[float] = PET_SPACINGS_Z) -> Grid:
    """A PET grid (voxel sizes chosen from ``spacings_xy`` and ``spacings_z``) covering the CT's
    voxel extent with a margin of 1-2 voxels, its centre a few mm off the CT's and its slices out
    of phase with the CT's."""
    sxy = _f32(spacings_xy[int(rng.integers(len(spacings_xy)))])
    sz = _f32(spacings_z[int(rng.integers(len(spacings_z)))])
    margin = int(rng.integers(1, 3))
    extent = ct.size[0] * ct.spacing[0]
    n_xy = int(math.ceil(extent / sxy)) + 2 * margin
    centre = np.array([ct.origin[a] + (ct.size[a] - 1) / 2 * ct.spacing[a] for a in (0, 1)])
    centre = centre + rng.uniform(-1, 1, 2) * min(4.0, 0.45 * margin * sxy)
    ct_bottom = ct.origin[2]
    ct_top = ct.origin[2] + (ct.size[2] - 1) * ct.spacing[2]
    z0 = ct_bottom - rng.uniform(0.0, sz)
    n_z = int(math.ceil((ct_top - z0) / sz)) + 1
    origin = (_f32(centre[0] - (n_xy - 1) / 2 * sxy), _f32(centre[1] - (n_xy - 1) / 2 * sxy), _f32(z0))
    return Grid(origin, (sxy, sxy, sz), (n_xy, n_xy, n_z))


# ----------------------------------------------------------------------------------------------
# Image formation
# ----------------------------------------------------------------------------------------------

def _noise_chunks(shape: tuple[int, int, int], rng: np.random.Generator, bank_slices: int):
    """(first slice, standard normal float32 noise) per chunk of slices. ``bank_slices`` 0: fresh
    noise for every voxel. N > 0: each slice is a slice of a bank of N fresh slices, randomly
    rolled in-plane and flipped: the same white Gaussian statistics in every slice, for a fraction
    of the random draws (drawing normals dominates the time of a large CT)."""
    if bank_slices <= 0:
        for z0 in range(0, shape[0], _NOISE_CHUNK):
            yield z0, rng.standard_normal((min(_NOISE_CHUNK, shape[0] - z0),) + tuple(shape[1:]), dtype=np.float32)
        return
    bank = rng.standard_normal((bank_slices,) + tuple(shape[1:]), dtype=np.float32)
    picks = rng.integers(0, bank_slices, shape[0])
    shifts = rng.integers(0, np.array(shape[1:]), (shape[0], 2))
    flips = rng.integers(0, 2, (shape[0], 2)).astype(bool)
    for z0 in range(0, shape[0], _NOISE_CHUNK):
        n = min(_NOISE_CHUNK, shape[0] - z0)
        out = np.empty((n,) + tuple(shape[1:]), np.float32)
        for i in range(n):
            k = z0 + i
            sl = bank[picks[k]]
            sl = sl[::-1] if flips[k, 0] else sl
            sl = sl[:, ::-1] if flips[k, 1] else sl
            out[i] = np.roll(sl, tuple(int(v) for v in shifts[k]), axis=(0, 1))
        yield z0, out


def _ct_noise_and_fov(ct: np.ndarray, grid: Grid, centre: np.ndarray, diameter: float, sigma: float,
                      rng: np.random.Generator, bank_slices: int = 0) -> None:
    """Gaussian noise (in chunks of slices, to bound memory; see :func:`_noise_chunks`), HU
    clipping, and -1024 outside the circular reconstruction field of view, in place."""
    for z0, noise in _noise_chunks(ct.shape, rng, bank_slices):
        chunk = ct[z0:z0 + noise.shape[0]]
        noise *= np.float32(sigma)
        noise += chunk
        np.rint(noise, out=noise)
        np.clip(noise, *CT_HU_RANGE, out=noise)
        chunk[...] = noise
    x = grid.origin[0] + grid.spacing[0] * np.arange(grid.size[0]) - centre[0]
    y = grid.origin[1] + grid.spacing[1] * np.arange(grid.size[1]) - centre[1]
    outside = (x[None, :] ** 2 + y[:, None] ** 2) > (diameter / 2) ** 2
    if outside.any():
        ct[:, outside] = CT_OUTSIDE_FOV_HU


def _pet_formation(pet: np.ndarray, grid: Grid, fwhm_mm: float, rel_noise: float,
                   rng: np.random.Generator) -> np.ndarray:
    """Scanner resolution (Gaussian blur of ``fwhm_mm``) then count-like noise whose variance
    grows with the signal (std = rel_noise * sqrt(SUV)), spatially correlated as after a
    reconstruction post-filter; clipped at 0."""
    sigma_vox = [fwhm_mm / 2.3548 / sp for sp in (grid.spacing[2], grid.spacing[1], grid.spacing[0])]
    pet = ndimage.gaussian_filter(pet, sigma_vox, mode="nearest", truncate=3.0)
    noise = ndimage.gaussian_filter(rng.standard_normal(pet.shape, dtype=np.float32), 0.7, truncate=3.0)
    noise /= max(float(noise.std()), 1e-6)
    pet += np.float32(rel_noise) * np.sqrt(np.maximum(pet, 0.0)) * noise
    np.maximum(pet, 0.0, out=pet)
    return pet.astype(np.float32, copy=False)



# ----------------------------------------------------------------------------------------------
# Dental metal: fillings, CT streaks in their planes, a mild PET attenuation-correction halo
# ----------------------------------------------------------------------------------------------

@dataclass
class Filling:
    """One filling (posed scanner mm) and the star of streaks it throws on the CT."""

    centre: np.ndarray
    semi: np.ndarray
    spokes: int
    phase: float
    amplitude_hu: float
    decay_mm: float


@dataclass
class DentalMetal:
    """Fillings (CT layers: metal at the top of the HU range; PET untouched) and their artefacts:
    a halo of mild uptake around each on the PET (attenuation over-correction) and, on the CT,
    streaks radiating from each filling plus a dark band between fillings of one plane."""

    fillings: list[Filling]
    ct_layers: list[Layer]
    pet_layers: list[Layer]
    band_hu: float
    band_width_mm: float

    def summary(self) -> dict:
        return {"fillings": [{"centre_mm": [float(v) for v in f.centre], "semi_axes_mm": [float(v) for v in f.semi]}
                             for f in self.fillings],
                "streak_hu": [float(f.amplitude_hu) for f in self.fillings], "band_hu": float(self.band_hu),
                "halo_suv": [float(layer.suv) for layer in self.pet_layers]}


def _draw_dental_metal(pt: Patient, rng: np.random.Generator, style: PhantomStyle) -> DentalMetal | None:
    """Fillings on the dental arch (unposed layers; :meth:`pose` moves the streak centres)."""
    present = rng.uniform() < style.p_dental_metal
    n = int(rng.integers(style.fillings[0], style.fillings[1] + 1))
    zt, tcy, ta, tb = _dental_arch(pt)
    fillings, ct_layers, pet_layers = [], [], []
    for i in range(n):
        side = 1 if rng.uniform() < 0.5 else -1
        phi = rng.uniform(0.2, 1.25)  # premolars and molars: the lateral part of the arch
        c = pt.p(side * ta * math.cos(phi), tcy - tb * math.sin(phi), zt + rng.uniform(-5.0, 5.0))
        semi = np.array([rng.uniform(2.5, 4.0), rng.uniform(2.5, 4.0), rng.uniform(2.0, 3.0)])
        fillings.append(Filling(c, semi, int(rng.integers(6, 14)), rng.uniform(0, 2 * math.pi),
                                rng.uniform(150.0, 450.0), rng.uniform(20.0, 45.0)))
        ct_layers.append(Layer(f"filling_{i}", Ellipsoid(c, semi), CT_HU_RANGE[1], None))
        pet_layers.append(Layer(f"metal_ac_halo_{i}", Ellipsoid(c, np.array([7.0, 7.0, 6.0])), None,
                                rng.uniform(*style.metal_ac_suv)))
    band, width = rng.uniform(200.0, 500.0), rng.uniform(1.5, 3.0)
    if not present:
        return None
    return DentalMetal(fillings, ct_layers, pet_layers, band, width)


def _pose_metal(metal: DentalMetal | None, posture) -> DentalMetal | None:
    if metal is None or posture.identity:
        return metal
    fillings = [Filling(posture.forward(f.centre), f.semi, f.spokes, f.phase, f.amplitude_hu, f.decay_mm)
                for f in metal.fillings]
    return DentalMetal(fillings, posture.layers(metal.ct_layers), posture.layers(metal.pet_layers),
                       metal.band_hu, metal.band_width_mm)


def _add_metal_streaks(ct: np.ndarray, grid: Grid, metal: DentalMetal) -> None:
    """Streaks in place on the CT slices that cut a filling: thin bright/dark spokes radiating from
    each filling (decaying with distance) and a dark band along the line between two fillings of
    the same slice (photon starvation)."""
    x = (grid.origin[0] + grid.spacing[0] * np.arange(grid.size[0], dtype=np.float32))[None, :]
    y = (grid.origin[1] + grid.spacing[1] * np.arange(grid.size[1], dtype=np.float32))[:, None]
    half_slice = 0.5 * grid.spacing[2]
    for k in range(grid.size[2]):
        zk = grid.origin[2] + grid.spacing[2] * k
        active = [f for f in metal.fillings if abs(zk - f.centre[2]) <= f.semi[2] + half_slice]
        if not active:
            continue
        field = np.zeros(ct.shape[1:], np.float32)
        for f in active:
            dx, dy = x - np.float32(f.centre[0]), y - np.float32(f.centre[1])
            r = np.hypot(dx, dy)
            s = np.cos(np.float32(f.spokes) * np.arctan2(dy, dx) + np.float32(f.phase))
            s4 = (s * s) ** 2
            s16 = (s4 * s4) ** 2
            spokes = s16 * s4 * np.sign(s)  # |cos|^20: thin lines
            field += np.float32(f.amplitude_hu) * spokes * np.exp(-r / np.float32(f.decay_mm)) \
                * (1.0 - np.exp(-(r / np.float32(5.0)) ** 2))
        for i, a in enumerate(active):
            for b in active[i + 1:]:
                v = np.array([b.centre[0] - a.centre[0], b.centre[1] - a.centre[1]], np.float32)
                length = float(np.hypot(*v))
                if length < 1e-3:
                    continue
                ux, uy = v / length
                dx, dy = x - np.float32(a.centre[0]), y - np.float32(a.centre[1])
                t = dx * ux + dy * uy
                d = np.abs(dx * uy - dy * ux)
                outside = np.maximum(np.maximum(-t, t - length), 0.0)
                ra2 = dx * dx + dy * dy
                rb2 = (x - np.float32(b.centre[0])) ** 2 + (y - np.float32(b.centre[1])) ** 2
                field -= np.float32(metal.band_hu) * np.exp(-0.5 * (d / np.float32(metal.band_width_mm)) ** 2) \
                    * np.exp(-outside / np.float32(25.0)) * (1.0 - np.exp(-ra2 / np.float32(25.0))) \
                    * (1.0 - np.exp(-rb2 / np.float32(25.0)))
        slice_ = ct[k].astype(np.float32) + field
        np.clip(np.rint(slice_), *CT_HU_RANGE, out=slice_)
        ct[k] = slice_.astype(np.int16)
