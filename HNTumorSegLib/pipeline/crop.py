"""The PET-guided "brain peak cut": paper section 2.2, equations (1)-(10).

Pure numpy on the PET on the analysis lattice, ``P`` with shape (Z, Y, X) and index z growing
toward the head. The window is always 256 x 256 x 112 voxels; where it reaches past the lattice
the caller pads (CT -1000 HU, PET 0), so every case reaches the network at one size.

The equations look at little of the lattice: the top slices down to the first above tau (eq. 1),
a 20-slice slab (eqs. 2-4), the z-profile inside the 256 x 256 in-plane window (eq. 7) and the
top slice (eq. 9); before eq. (10) anchors on the profile's peak, that the peak looks like the brain
(:func:`brain_like`: the paper assumes the brain in the field of view). So the PET is asked for box by box (:class:`LatticePet`): an array already on
the lattice (:class:`ArrayLatticePet`), or a sampler that resamples only each box
(``preprocess``), which never holds the whole lattice (a whole-body PET on 1 x 1 x 3 mm is
~300 MB of float32; the window's column ~80 MB). Same numbers either way: a box resampled alone
equals that box of the whole resampled lattice, bit for bit (tested).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Protocol

import numpy as np

from HNTumorSegLib.imaging.geometry import LATTICE_SPACING

#: Suprathreshold uptake, SUV (eq. 1 and 3).
TAU = 0.5
#: Thickness of the slab under the top of the head used for the in-plane centroid (eq. 2).
SLAB = 20
#: Window size in voxels, (z, y, x) = 112 x 256 x 256.
WINDOW_ZYX = (112, 256, 256)
#: Eq. (9): mean SUV of the most superior slice above which the scan is taken to cut the brain.
TOP_SLICE_MEAN = 0.1
#: Eq. (9): a peak at or below this slice index is too shallow to anchor on.
SHALLOW_PEAK = 50
#: Eq. (1) looks down from the top this many slices at a time.
TOP_CHUNK = 16
#: What makes the profile's peak the brain (checked before eq. 10 anchors on it; not in the paper, which assumes
#: the brain in the field of view): the hot area of the peak slice (at least BRAIN_FRACTION of its maximum) is
#: at least BRAIN_MIN_AREA_MM2, and the peak lies at most BRAIN_MAX_DEPTH_MM under the top of the uptake. The
#: brain's widest slice holds 120-190 cm^2 (27 phantoms anchored on it, of all styles and fields of view: 127-183
#: cm^2, 63-81 mm deep); a primary tumour or node under 30 cm^2; the bladder of a scan from the skull base down
#: lies 50 cm deep.
BRAIN_FRACTION = 0.4
BRAIN_MIN_AREA_MM2 = 5000.0
BRAIN_MAX_DEPTH_MM = 150.0


class NoUptakeError(ValueError):
    """No PET voxel exceeds TAU, so eq. (1) has no solution."""


@dataclass(frozen=True)
class CropWindow:
    """Half-open voxel window [x1, x2) x [y1, y2) x [z1, z2) on the lattice; may reach past it."""

    x1: int
    x2: int
    y1: int
    y2: int
    z1: int
    z2: int

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def start_xyz(self) -> tuple[int, int, int]:
        return (self.x1, self.y1, self.z1)

    @property
    def size_xyz(self) -> tuple[int, int, int]:
        return (self.x2 - self.x1, self.y2 - self.y1, self.z2 - self.z1)

    def clipped(self, shape_zyx: tuple[int, int, int]) -> "CropWindow":
        """The part of the window inside a lattice of this shape (the real, unpadded voxels)."""
        z, y, x = shape_zyx
        return CropWindow(max(self.x1, 0), min(self.x2, x), max(self.y1, 0), min(self.y2, y),
                          max(self.z1, 0), min(self.z2, z))


@dataclass(frozen=True)
class CropDecision:
    """The window and the quantities of eqs. (1)-(9) that chose it (kept in the provenance)."""

    window: CropWindow
    anchor: str  # "top" or "peak"
    z_top: int
    z_peak: int
    centroid_xy: tuple[float, float]
    top_slice_mean: float
    #: False when eq. (9) chose the peak but the peak is no brain (:func:`brain_like`): the scan holds no brain
    #: (it starts at the skull base, or below), and the window was anchored at the top instead.
    brain_found: bool = True
    #: The lattice slices [0, pet_top) the PET's field of view reaches; above them the lattice holds padding.
    #: Less than the lattice's depth when the PET ends below the CT's top: "the top" of eqs. (1), (9) and (10)
    #: is then the PET's top slice, not the lattice's (see :func:`find_crop_and_column`).
    pet_top: int | None = None


def _in_plane_start(centre: float, n: int, half: int) -> int:
    """Eqs. (5)/(6): clamp the window start so it stays inside the image where it fits."""
    return int(min(max(int(np.floor(centre)) - half, 0), max(0, n - 2 * half)))


class LatticePet(Protocol):
    """The PET on the analysis lattice, handed out box by box (half-open index ranges inside the lattice)."""

    shape: tuple[int, int, int]  # (Z, Y, X)

    def box(self, z0: int, z1: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        """The float32 PET of [z0, z1) x [y0, y1) x [x0, x1), shape (z1 - z0, y1 - y0, x1 - x0)."""


class ArrayLatticePet:
    """A PET already resampled onto the whole lattice."""

    def __init__(self, pet: np.ndarray):
        if pet.ndim != 3:
            raise ValueError(f"PET must be 3D (Z, Y, X), got shape {pet.shape}")
        self.pet = pet
        self.shape = tuple(int(n) for n in pet.shape)

    def box(self, z0: int, z1: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return self.pet[z0:z1, y0:y1, x0:x1]


def find_crop(pet: np.ndarray | LatticePet, tau: float = TAU, pet_top: int | None = None) -> CropDecision:
    """Decide the 256 x 256 x 112 window from the PET on the lattice (shape (Z, Y, X))."""
    return find_crop_and_column(pet, tau, pet_top)[0]


def find_crop_and_column(pet: np.ndarray | LatticePet, tau: float = TAU,
                         pet_top: int | None = None) -> tuple[CropDecision, np.ndarray]:
    """The window (eqs. 1-10) and the PET column it was found in: every slice of the lattice inside the
    in-plane window (clipped to the lattice), shape (Z, min(Y, y2) - y1, min(X, x2) - x1). The window's
    real PET voxels are ``column[z1:z2]`` of the clipped window.

    ``pet_top``: the lattice slices [0, pet_top) the PET's field of view reaches (None: all). The paper's
    "most superior slice" is the PET's: where the PET ends below the CT's top, eq. (1) looks down from its top
    slice, eq. (9) tests that slice (uptake there: the PET's field of view cuts through the patient) and a
    window anchored at the top hangs from it. Why: on the lattice's top slice, padding, eq. (9) never saw the
    cut, and the cut edge's body cross-section passed for the brain's peak (false lesions along it), or a
    window anchored at the lattice's top held CT without PET. A PET that reaches the lattice's top: the paper's
    equations unchanged.
    """
    if isinstance(pet, np.ndarray):
        pet = ArrayLatticePet(pet)
    depth, height, width = WINDOW_ZYX
    n_z, n_y, n_x = pet.shape
    top = n_z if pet_top is None else min(max(int(pet_top), 1), n_z)

    # Eq. (1): the most superior slice with suprathreshold uptake, looking down from the top.
    z_top, top_slice, z = None, None, top
    while z > 0 and z_top is None:
        z0 = max(0, z - TOP_CHUNK)
        block = pet.box(z0, z, 0, n_y, 0, n_x)
        if top_slice is None:
            top_slice = block[-1]
        hot = np.flatnonzero(block.reshape(z - z0, -1).max(axis=1) > tau)
        if hot.size:
            z_top = z0 + int(hot[-1])
        z = z0
    if z_top is None:
        raise NoUptakeError(f"no PET voxel above SUV {tau}")

    # Eqs. (2)-(4): centroid of suprathreshold voxels in the 20-slice slab ending at z_top.
    slab = pet.box(max(0, z_top - (SLAB - 1)), z_top + 1, 0, n_y, 0, n_x)
    _, ys, xs = np.nonzero(slab > tau)
    x_bar, y_bar = float(xs.mean()), float(ys.mean())

    # Eqs. (5)-(6).
    x1 = _in_plane_start(x_bar, n_x, width // 2)
    y1 = _in_plane_start(y_bar, n_y, height // 2)
    x2, y2 = x1 + width, y1 + height

    # Eqs. (7)-(8): z-profile inside the in-plane window and its peak.
    column = pet.box(0, n_z, y1, min(y2, n_y), x1, min(x2, n_x))
    profile = column.sum(axis=(1, 2), dtype=np.float64)
    z_peak = int(np.argmax(profile))

    # Eq. (9) on the full most superior slice, then eq. (10) with a fixed depth of 112.
    top_mean = float(top_slice.mean(dtype=np.float64))
    anchor = "top" if (top_mean > TOP_SLICE_MEAN or z_peak <= SHALLOW_PEAK) else "peak"
    brain_found = anchor == "top" or brain_like(column[z_peak], z_top - z_peak)
    if not brain_found:  # anchored on a tumour or the bladder, the window would miss the head and neck
        anchor = "top"
    z2 = top if anchor == "top" else z_peak + 1
    window = CropWindow(x1, x2, y1, y2, z2 - depth, z2)
    return CropDecision(window, anchor, z_top, z_peak, (x_bar, y_bar), top_mean, brain_found, top), column


def brain_like(peak_slice: np.ndarray, depth_slices: int) -> bool:
    """Whether the profile's peak (its slice of the in-plane window, SUV on the 1 x 1 x 3 mm lattice, and its
    depth under the top of the uptake in slices) looks like the brain: see :data:`BRAIN_MIN_AREA_MM2`.

    Why: eq. (10) ends the window at the peak of the z-profile, the brain in a head-and-neck scan. A scan
    without the brain (skull base to thighs; the neck alone) has its peak elsewhere, the bladder or the
    primary tumour itself, and the window then missed the tumours, or cut the primary in half, silently.
    """
    sx, sy, sz = LATTICE_SPACING
    hottest = float(peak_slice.max()) if peak_slice.size else 0.0
    area = np.count_nonzero(peak_slice >= BRAIN_FRACTION * hottest) * sx * sy if hottest > 0 else 0.0
    return area >= BRAIN_MIN_AREA_MM2 and depth_slices * sz <= BRAIN_MAX_DEPTH_MM
