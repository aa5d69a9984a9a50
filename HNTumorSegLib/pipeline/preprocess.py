"""Preprocessing: CT + PET (+ label) to the 2 x 112 x 256 x 256 network input. Paper section 2.2.

1. Orient both images to LPS, so index z grows toward the head.
2. Build the 1 x 1 x 3 mm lattice on the oriented CT; the PET is resampled onto it linearly
   (outside 0), but only the boxes the crop's equations look at (:class:`ResampledLatticePet`).
3. Decide the window from the PET alone (:func:`crop.find_crop_and_column`, eqs. 1-10).
4. B-spline the CT (outside -1000 HU) and nearest-neighbour the label only inside the window.
   Equal to resampling the whole CT and cropping, because the CT handed to SimpleITK keeps a
   margin of voxels around the window wide enough for the B-spline prefilter to converge.
5. Pad (CT -1000 HU, PET 0), normalise, stack as (CT, PET) channels, axes (z, y, x).

The provenance records everything :mod:`restore` needs to put a mask back on the CT grid. Input
geometry is snapped below 1e-7 mm first (:meth:`geometry.Geometry.snapped`): noise far below a
micrometre must not move a nearest-neighbour tie.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import SimpleITK as sitk

from HNTumorSegLib import __version__
from HNTumorSegLib.pipeline.crop import (TAU, WINDOW_ZYX, ArrayLatticePet, CropWindow, NoUptakeError,
                                         find_crop_and_column)

#: Said (printed, and kept in the provenance's "warnings") when the scan holds no brain to anchor on.
NO_BRAIN_WARNING = ("no brain uptake found at the top of the PET (a scan from the skull base down, or of the neck "
                    "alone?): the 336 mm window starts at the top of the scan instead of at the brain, as the "
                    "method assumes; check that it covers the tumours")
from HNTumorSegLib.errors import InputError
from HNTumorSegLib.imaging.geometry import (LATTICE_SPACING, Geometry, analysis_lattice, axial_overlap_mm,
                                            orient_lps, outside_buffer, overlap_box, physical_overlap, resample,
                                            slices_up_to_top, snap_geometry)
from HNTumorSegLib.imaging.label_checks import label_grid_problem, label_values_problem
from HNTumorSegLib.pipeline.intensity import CT_PAD_HU, PET_PAD_SUV, normalize_ct, normalize_pet, pet_statistics

#: A CT and PET that overlap over less than this (mm, head to foot) are no head-and-neck scan: said, as above (a CT
#: of 5 slices was segmented without a word, its "lesions" false). A neck alone (~150 mm) passes quietly.
MIN_AXIAL_OVERLAP_MM = 100.0
SHORT_SCAN_WARNING = ("CT and PET overlap over {mm:.0f} mm head to foot only: the method looks at "
                      f"{WINDOW_ZYX[0] * LATTICE_SPACING[2]:g} mm from the brain down (the head and neck); on so "
                      "short a scan expect missed and false lesions")
#: Said, as above, when the PET's field of view ends below the CT's top with uptake (above the crop's TAU) on its top
#: slice: it cuts through the patient (a PET that starts at the brain, the neck or the chest under a CT of the whole
#: head). A PET that ends above the head, in air, under a longer CT is common and passes quietly.
PET_CUT_WARNING_MM = 30.0  # a PET a few slices shorter than its CT is common, and harmless
PET_CUT_WARNING = ("the PET ends {mm:.0f} mm below the top of the CT and cuts through the patient there (uptake on "
                   "its top slice): the window hangs from the PET's top edge; check that the PET covers the tumours")

#: Changes whenever the network input for the same case would change; models record it. Kept at "1" when a PET
#: that ends below the CT's top began to be read from its own top slice (crop.find_crop_and_column's ``pet_top``):
#: every case whose PET reaches the CT's top gets the same input, and a new version would refuse every model
#: trained so far; a training cache prepared before holds the old window for such cases (prepare them again).
PREPROCESSING_VERSION = "1"
#: CT voxels kept around the window before B-spline resampling. The cubic B-spline prefilter's
#: influence decays as 0.268^n, so 16 voxels put the difference to the full image below 1e-6 HU.
BSPLINE_MARGIN = 16
#: A 99th percentile of positive PET values above this is not SUV (Bq/mL are in the thousands).
MAX_PLAUSIBLE_SUV_P99 = 100.0


@dataclass
class Preprocessed:
    """Network input (2, 112, 256, 256) float32, label (112, 256, 256) uint8 or None, provenance."""

    image: np.ndarray
    label: np.ndarray | None
    provenance: dict
    timings: dict = field(default_factory=dict)


def _paste(real: np.ndarray, window: CropWindow, real_window: CropWindow, fill: float,
           dtype: np.dtype) -> np.ndarray:
    """Place the real part of the window into a full 112 x 256 x 256 array filled with ``fill``."""
    out = np.full(WINDOW_ZYX, fill, dtype=dtype)
    dz, dy, dx = real_window.z1 - window.z1, real_window.y1 - window.y1, real_window.x1 - window.x1
    nz, ny, nx = real.shape
    out[dz:dz + nz, dy:dy + ny, dx:dx + nx] = real
    return out


def resample_in_window(image: sitk.Image, grid: Geometry, interpolator: int, default: float,
                       pixel_id: int, margin: int = BSPLINE_MARGIN) -> sitk.Image:
    """Resample only the part of ``image`` that ``grid`` needs (plus ``margin`` voxels)."""
    box = overlap_box(grid, Geometry.of(image), margin=margin)
    if box is not None:
        start, size = box
        image = sitk.RegionOfInterest(image, size, start)
    return resample(image, grid, interpolator, default, pixel_id)


class ResampledLatticePet:
    """The PET on the analysis lattice, resampled box by box as the crop asks (see :mod:`crop`).

    Why: the whole lattice is the largest array of preprocessing (a whole-body PET: ~300 MB of
    float32) and the crop needs a fraction of it. A box resampled alone equals that box of the whole
    resampled lattice bit for bit (linear interpolation has no prefilter; the box's grid is the
    lattice's, shifted by whole voxels). ``seconds``: time spent resampling.
    """

    def __init__(self, pet_oriented: sitk.Image, lattice: Geometry):
        self.pet, self.lattice = pet_oriented, lattice
        self.shape = tuple(int(n) for n in lattice.size[::-1])
        self.seconds = 0.0

    def box(self, z0: int, z1: int, y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        t0 = time.perf_counter()
        grid = self.lattice.subgrid((x0, y0, z0), (x1 - x0, y1 - y0, z1 - z0))
        values = sitk.GetArrayFromImage(resample(self.pet, grid, sitk.sitkLinear, PET_PAD_SUV, sitk.sitkFloat32))
        self.seconds += time.perf_counter() - t0
        return values


def check_pet_units(pet: np.ndarray, pet_name: str) -> None:
    """An InputError when the PET's values look like activity (Bq/mL), not SUV: shared by ``segment`` and ``edit``."""
    positive = pet[pet > 0]
    if positive.size and float(np.percentile(positive, 99)) > MAX_PLAUSIBLE_SUV_P99:
        raise InputError(f"{pet_name}: PET values up to {float(positive.max()):.0f} look like Bq/mL, "
                         "not SUV; convert the PET to SUV (body weight) first")


def _check_label(label: sitk.Image, ct: sitk.Image, label_name: str) -> None:
    problem = label_grid_problem(label, ct, label_name) or label_values_problem(label, label_name)
    if problem:
        raise InputError(problem)


def preprocess(ct: sitk.Image, pet: sitk.Image, label: sitk.Image | None = None, *,
               ct_path: Literal["window", "full"] = "window", pet_path: Literal["boxes", "full"] = "boxes",
               ct_name: str = "CT", pet_name: str = "PET", label_name: str = "label") -> Preprocessed:
    """CT (HU) and PET (SUV), pre-registered in patient space, to the network input.

    ``ct_path="full"`` resamples the whole CT and then crops, and ``pet_path="full"`` resamples the
    PET onto the whole lattice before the crop: the paper's literal order, kept for tests and the
    benchmark; the defaults resample only what is needed and give the same values, bit for bit.
    The ``*_name`` arguments (usually file paths) name the inputs in error messages.
    """
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    if not physical_overlap(Geometry.of(ct), Geometry.of(pet)):
        raise InputError(f"{pet_name}: PET does not overlap the CT {ct_name} in space; "
                         "PET and CT must be registered in the same patient coordinates")
    if label is not None:
        _check_label(label, ct, label_name)
    original_ct, original_pet = Geometry.of(ct), Geometry.of(pet)
    # Every later step sees geometry on a fine binary grid, so the same volume gives the same lattice,
    # window and labels whether its geometry came from a file or from Slicer's IJK-to-RAS matrix.
    ct, pet = snap_geometry(ct), snap_geometry(pet)
    label = snap_geometry(label) if label is not None else None

    ct_o, pet_o = orient_lps(ct), orient_lps(pet)
    lattice = analysis_lattice(Geometry.of(ct_o))
    if pet_path == "boxes":
        source = ResampledLatticePet(pet_o, lattice)
    elif pet_path == "full":
        source = ArrayLatticePet(sitk.GetArrayFromImage(
            resample(pet_o, lattice, sitk.sitkLinear, PET_PAD_SUV, sitk.sitkFloat32)))
    else:
        raise ValueError(f"pet_path must be 'boxes' or 'full', not {pet_path!r}")
    timings["resample_pet"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    try:
        decision, column = find_crop_and_column(source, TAU, pet_top=slices_up_to_top(pet_o, lattice))
    except NoUptakeError:  # (a PET in Bq/mL has thousands in any tissue: this is not that)
        raise InputError(f"{pet_name}: no PET voxel above SUV {TAU} inside the CT field of view; the PET "
                         "must be in SUV (values in the thousands look like Bq/mL)") from None
    boxes_seconds = getattr(source, "seconds", 0.0)  # the boxes' resampling, inside the crop's time
    timings["resample_pet"] += boxes_seconds
    check_pet_units(column, pet_name)
    window = decision.window
    real = window.clipped(source.shape)
    pet_real = column[real.z1:real.z2]
    real_grid = lattice.subgrid(real.start_xyz, real.size_xyz)
    # Voxels beyond the PET's own field of view hold the resampling's padding, not uptake: left out of
    # the statistics as the window's padding beyond the lattice is, so a PET that covers less than the
    # CT is normalised by its data alone.
    outside_pet = outside_buffer(pet_o, real_grid)
    mu, sigma = pet_statistics(pet_real if outside_pet is None or outside_pet.all() else pet_real[~outside_pet])
    pet_window = _paste(pet_real, window, real, PET_PAD_SUV, np.float32)
    del column, source
    timings["crop"] = time.perf_counter() - t0 - boxes_seconds

    t0 = time.perf_counter()
    if ct_path == "window":
        ct_real = resample_in_window(ct_o, real_grid, sitk.sitkBSpline, CT_PAD_HU, sitk.sitkFloat32)
    elif ct_path == "full":
        ct_full = resample(ct_o, lattice, sitk.sitkBSpline, CT_PAD_HU, sitk.sitkFloat32)
        ct_real = sitk.RegionOfInterest(ct_full, list(real.size_xyz), list(real.start_xyz))
        del ct_full
    else:
        raise ValueError(f"ct_path must be 'window' or 'full', not {ct_path!r}")
    ct_window = _paste(sitk.GetArrayViewFromImage(ct_real), window, real, CT_PAD_HU, np.float32)
    timings["resample_ct"] = time.perf_counter() - t0

    label_window = None
    if label is not None:
        lab = resample_in_window(orient_lps(label), real_grid, sitk.sitkNearestNeighbor, 0,
                                 sitk.sitkUInt8, margin=1)
        label_window = _paste(sitk.GetArrayViewFromImage(lab), window, real, 0, np.uint8)

    t0 = time.perf_counter()
    image = np.stack([normalize_ct(ct_window), normalize_pet(pet_window, mu, sigma)])
    timings["normalise"] = time.perf_counter() - t0

    warnings = [] if decision.brain_found else [NO_BRAIN_WARNING]
    overlap = axial_overlap_mm(original_ct, original_pet)
    if overlap < MIN_AXIAL_OVERLAP_MM:
        warnings.append(SHORT_SCAN_WARNING.format(mm=overlap))
    pet_short_mm = (lattice.size[2] - decision.pet_top) * LATTICE_SPACING[2]
    if pet_short_mm >= PET_CUT_WARNING_MM and decision.z_top == decision.pet_top - 1:  # uptake up to its cut edge
        warnings.append(PET_CUT_WARNING.format(mm=pet_short_mm))
    provenance = {
        "version": PREPROCESSING_VERSION,
        "software": f"HNTumorSegLib {__version__}",
        "crop": window.to_dict(),
        "anchor": decision.anchor,
        "z_top": decision.z_top,
        "z_peak": decision.z_peak,
        "centroid_xy": list(decision.centroid_xy),
        "top_slice_mean_suv": decision.top_slice_mean,
        "brain_found": decision.brain_found,
        "pet_z_end": decision.pet_top,  # the lattice slices [0, pet_z_end) hold PET data
        **({"warnings": warnings} if warnings else {}),
        "tau": TAU,
        "window_size_zyx": list(WINDOW_ZYX),
        "window": lattice.subgrid(window.start_xyz, window.size_xyz).to_dict(),
        "resampled": lattice.to_dict(),
        "original_ct": original_ct.to_dict(),
        "original_pet": original_pet.to_dict(),
        "pet_normalisation": {"mean": mu, "std": sigma,
                              "voxels_outside_pet": 0 if outside_pet is None else int(outside_pet.sum())},
        "interpolation": {"ct": "bspline3", "pet": "linear", "label": "nearest"},
        "padding": {"ct_hu": CT_PAD_HU, "pet_suv": PET_PAD_SUV},
    }
    return Preprocessed(image, label_window, provenance, timings)
