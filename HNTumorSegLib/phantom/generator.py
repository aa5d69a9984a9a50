"""One case: draw everything (:func:`plan_phantom`), then rasterise it (:func:`render_phantom`).

Reproducibility: everything is drawn from children of one ``numpy.random.SeedSequence`` per
case, one per concern: anatomy, lesions, scan geometry, CT noise, PET noise (the classic five, in
their historical order) and, spawned after them, centre (grid and calibration choices), body
(posture, arms, dental metal) and physiological uptake. The ``classic`` style seeds the sequence
with the seed alone and draws exactly what it always drew (its extra parameters are zero); the
other styles mix a tag of their name into the seed, so one seed gives unrelated patients in
different styles. The same seed and style with another field of view, ``brain_cut``,
``small_fov``, ``flip_xy`` or ``ct_matrix`` gives the *same patient*, only scanned differently.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from HNTumorSegLib.errors import InputError

from .anatomy import (BRAIN_CENTRE, BRAIN_SEMI, BRAIN_ZMIN, Patient, Posture, _airway_layers, _arm_layers,
                      _body_layers, _draw_patient, _head_layers, _no_go_shapes, _skeleton_layers, _skin_shapes,
                      _table_layer, _thorax_abdomen_layers)
from .lesions import _DIRS, _draw_lesions, draw_site_lesions
from .scanner import (FIELDS_OF_VIEW, DentalMetal, _add_metal_streaks, _ct_grid, _ct_noise_and_fov,
                      _draw_dental_metal, _pet_formation, _pet_grid, _pose_metal, _scan_z_range)
from .shapes import Grid, Layer, rasterise_ct, rasterise_label, rasterise_pet
from .styles import PhantomStyle, get_style
from .uptake import physiological_layers, pose_records


@dataclass
class PhantomCase:
    """One synthetic case: CT (int16 HU), PET (float32 SUV, own grid), label on the CT grid."""

    case_id: str
    ct: sitk.Image      # int16, HU, CT grid
    pet: sitk.Image     # float32, SUV, its own coarser grid
    label: sitk.Image   # uint8 {0,1,2} on the CT grid (1 GTVp, 2 GTVn)
    info: dict = field(default_factory=dict)  # JSON-serialisable description of the case


@dataclass
class PhantomPlan:
    """Everything drawn for one case before any voxel is painted: the posed layers in painter's
    order, both grids, the scanner's parameters and the seeds of the two noise draws."""

    case_id: str
    style: PhantomStyle
    flip_xy: bool
    patient: Patient
    posture: Posture
    layers: list[Layer]
    ct_grid: Grid
    pet_grid: Grid
    fov_centre: np.ndarray
    fov_diameter: float
    ct_sigma: float
    fwhm: float
    rel_noise: float
    calibration: float
    metal: DentalMetal | None
    ct_noise_seed: np.random.SeedSequence
    pet_noise_seed: np.random.SeedSequence
    info: dict
    timings: dict


def _posed_extent(posture: Posture, pt: Patient, centre, semi, zmin: float | None = None) -> tuple[float, float]:
    """z range (scanner mm) of a patient-frame ellipsoid (cut below ``zmin``) in the posture."""
    pts = np.asarray(centre, float) + _DIRS * np.asarray(semi, float)
    pts = np.concatenate([pts, np.asarray(centre, float)[None, :] + np.array([[0.0, 0.0, float(semi[2])]])])
    if zmin is not None:
        pts = pts[pts[:, 2] >= zmin]
    posed = posture.forward(pt.offset + pt.s * pts)
    return float(posed[:, 2].min()), float(posed[:, 2].max())


def check_seed(seed: int) -> None:
    """Refuse a seed numpy cannot take: a negative one failed deep in ``SeedSequence`` with "expected
    non-negative integer" and a traceback (``hntumorseg demo --seed -1``), naming no seed."""
    if int(seed) < 0:
        raise InputError(f"phantom seed {seed!r}: give a non-negative integer")


def plan_phantom(seed: int, fov: str = "head_upper", *, case_id: str | None = None, brain_cut: bool = False,
                 small_fov: bool = False, flip_xy: bool = False, n_nodes: int | None = None,
                 ct_matrix: int | None = None, style: str | PhantomStyle = "classic") -> PhantomPlan:
    """Draw one case (see :func:`make_phantom` for the arguments); nothing is rasterised yet."""
    st = get_style(style)
    check_seed(seed)
    if fov not in FIELDS_OF_VIEW:
        raise ValueError(f"fov must be one of {FIELDS_OF_VIEW}, got {fov!r}")
    ct_matrix = st.ct_matrix if ct_matrix is None else ct_matrix
    if int(ct_matrix) < 64:
        raise ValueError(f"ct_matrix must be at least 64, got {ct_matrix}")
    t0 = time.perf_counter()
    tag = st.seed_tag
    seq = np.random.SeedSequence(int(seed)) if tag is None else np.random.SeedSequence([int(seed), tag])
    s_anat, s_lesion, s_scan, s_ct, s_pet = seq.spawn(5)
    s_centre, s_body, s_uptake = seq.spawn(3)
    rng_anat, rng_lesion, rng_scan = (np.random.default_rng(s) for s in (s_anat, s_lesion, s_scan))
    rng_centre, rng_body, rng_uptake = (np.random.default_rng(s) for s in (s_centre, s_body, s_uptake))

    pt = _draw_patient(rng_anat, st)
    posture = Posture.of(pt, rng_body.uniform(*st.neck_tilt_deg))
    arms_down = bool(rng_body.uniform() < st.p_arms_down)
    metal = _draw_dental_metal(pt, rng_body, st)
    skin, no_go = _skin_shapes(pt), _no_go_shapes(pt)
    if st.lesion_model == "classic":
        lesions = _draw_lesions(pt, rng_lesion, n_nodes)
    else:
        lesions = draw_site_lesions(pt, rng_lesion, st, n_nodes, skin, no_go, posture)
    anatomy = (_body_layers(pt) + _thorax_abdomen_layers(pt, rng_anat) + _skeleton_layers(pt)
               + _airway_layers(pt) + _head_layers(pt))
    if arms_down:
        anatomy += _arm_layers(pt)
    uptake, uptake_records = physiological_layers(pt, rng_uptake, st, lesions.spheres, skin, no_go)
    if metal is not None:
        anatomy += metal.ct_layers
        uptake += metal.pet_layers
    metal = _pose_metal(metal, posture)

    ct_fov = float(st.ct_fov_mm[int(rng_centre.integers(len(st.ct_fov_mm)))])
    slice_mm = float(st.ct_slice_mm[int(rng_centre.integers(len(st.ct_slice_mm)))])
    calibration = float(rng_centre.uniform(*st.suv_calibration))
    s, zv = pt.s, pt.offset[2]
    if posture.identity:
        vertex_z = brain_top = head_xy = None
        brain_centre = pt.p(*BRAIN_CENTRE)
        brain_z = [float(zv + s * BRAIN_ZMIN), float(zv + s * (BRAIN_CENTRE[2] + BRAIN_SEMI[2]))]
        vertex = float(zv)
    else:
        vertex = _posed_extent(posture, pt, (0, 5, -75), (77, 93, 75))[1]
        brain_z = list(_posed_extent(posture, pt, BRAIN_CENTRE, BRAIN_SEMI, BRAIN_ZMIN))
        vertex_z, brain_top = vertex, brain_z[1]
        brain_centre = posture.forward(pt.p(*BRAIN_CENTRE))
        head_xy = posture.forward(pt.p(0.0, 0.0, -190.0))[:2]
    top, bottom = _scan_z_range(pt, fov, brain_cut, rng_scan, vertex_z, brain_top)
    ct_grid, fov_centre, fov_diameter = _ct_grid(pt, top, bottom, int(ct_matrix), small_fov, rng_scan,
                                                 ct_fov, slice_mm, head_xy)
    pet_grid = _pet_grid(ct_grid, rng_scan, st.pet_spacing_xy, st.pet_spacing_z)
    fwhm = rng_scan.uniform(*st.pet_fwhm_mm)
    rel_noise = rng_scan.uniform(*st.pet_noise)
    ct_sigma = rng_scan.uniform(*st.ct_noise_hu)
    layers = (posture.layers(anatomy) + [_table_layer(pt, fov_centre)] + posture.layers(uptake)
              + posture.layers(lesions.layers))
    timings = {"setup": time.perf_counter() - t0}

    if case_id is None:
        case_id = f"PHANTOM-{int(seed):03d}" if tag is None else f"PHANTOM{st.centres[0]}-{int(seed):03d}"
    info = {
        "case_id": case_id, "seed": int(seed), "fov": fov,
        "flags": {"brain_cut": bool(brain_cut), "small_fov": bool(small_fov), "flip_xy": bool(flip_xy)},
        "n_nodes": len(lesions.summary["nodes"]), "ct_matrix": int(ct_matrix),
        "patient": {"scale": float(s), "build": float(pt.w), "fat_mm": float(pt.fat),
                    "head_offset_mm": [float(v) for v in pt.offset[:2]]},
        "vertex_z_mm": float(vertex),
        "brain_centre_mm": [float(v) for v in brain_centre],
        "brain_z_range_mm": brain_z,
        "scan_z_range_mm": [float(ct_grid.origin[2]), float(top)],
        "ct": {"size": list(ct_grid.size), "spacing": list(ct_grid.spacing), "origin": list(ct_grid.origin),
               "fov_diameter_mm": float(fov_diameter), "noise_hu": float(ct_sigma)},
        "pet": {"size": list(pet_grid.size), "spacing": list(pet_grid.spacing), "origin": list(pet_grid.origin),
                "fwhm_mm": float(fwhm), "relative_noise": float(rel_noise)},
        "suv": {k: float(v) for k, v in pt.suv.items()},
        **lesions.summary,
    }
    info.setdefault("n_nodes_requested", info["n_nodes"])  # the sites model leaves out nodes with no room
    info["style"] = st.name
    info["patient"].update({"neck_tilt_deg": float(posture.tilt_deg), "arms": "down" if arms_down else "up"})
    info["posture"] = posture.summary()
    info["pet"]["suv_calibration"] = calibration
    info["dental_metal"] = None if metal is None else metal.summary()
    info["physiological_uptake"] = pose_records(uptake_records, posture)
    return PhantomPlan(case_id, st, bool(flip_xy), pt, posture, layers, ct_grid, pet_grid, fov_centre,
                       float(fov_diameter), float(ct_sigma), float(fwhm), float(rel_noise), calibration, metal,
                       s_ct, s_pet, info, timings)


def render_phantom(plan: PhantomPlan) -> PhantomCase:
    """Rasterise a plan: CT (metal streaks, noise, reconstruction circle), label, PET (blur, noise,
    calibration), wrapped as images (RAS-style when the plan says ``flip_xy``)."""
    timings = dict(plan.timings)
    t0 = time.perf_counter()
    ct = rasterise_ct(plan.layers, plan.ct_grid)
    if plan.metal is not None:
        _add_metal_streaks(ct, plan.ct_grid, plan.metal)
    _ct_noise_and_fov(ct, plan.ct_grid, plan.fov_centre, plan.fov_diameter, plan.ct_sigma,
                      np.random.default_rng(plan.ct_noise_seed), plan.style.ct_noise_bank)
    timings["ct"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    label = rasterise_label(plan.layers, plan.ct_grid)
    timings["label"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pet = _pet_formation(rasterise_pet(plan.layers, plan.pet_grid), plan.pet_grid, plan.fwhm, plan.rel_noise,
                         np.random.default_rng(plan.pet_noise_seed))
    if plan.calibration != 1.0:
        pet *= np.float32(plan.calibration)
    timings["pet"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    ct_img = plan.ct_grid.to_image(ct, plan.flip_xy)
    pet_img = plan.pet_grid.to_image(pet, plan.flip_xy)
    label_img = plan.ct_grid.to_image(label, plan.flip_xy)
    timings["images"] = time.perf_counter() - t0
    info = dict(plan.info)
    info["timings_s"] = {k: round(v, 4) for k, v in timings.items()}
    return PhantomCase(plan.case_id, ct_img, pet_img, label_img, info)


def make_phantom(seed: int, fov: str = "head_upper", *, case_id: str | None = None,
                 brain_cut: bool = False, small_fov: bool = False, flip_xy: bool = False,
                 n_nodes: int | None = None, ct_matrix: int | None = None,
                 style: str | PhantomStyle = "classic") -> PhantomCase:
    """One reproducible synthetic PET/CT case.

    ``fov``: "head" (vertex to about the clavicles), "head_upper" (to mid-abdomen) or
    "whole_body" (vertex to the proximal thighs, bladder included). ``brain_cut``: the scan's top
    slice lies inside the brain. ``small_fov``: a CT reconstruction of 200-240 mm at the usual
    spacing (fewer voxels), so a 256 mm window must be padded. ``flip_xy``: CT, PET and label
    stored with direction diag(-1,-1,1), the same physical content. ``n_nodes``: lymph nodes,
    0-4 for ``classic``, 0-6 for the other styles (random when None); a node that finds no room is
    left out (``info["n_nodes"]`` drawn, ``info["n_nodes_requested"]`` asked for). ``ct_matrix``: in-plane CT
    voxels for the style's reconstruction field of view (default the style's, 512).
    ``style``: a name of :data:`~HNTumorSegLib.phantom.styles.STYLES` or a
    :class:`~HNTumorSegLib.phantom.styles.PhantomStyle`; the default ``classic`` is the generator
    the bundled model was trained on, unchanged.
    """
    return render_phantom(plan_phantom(seed, fov, case_id=case_id, brain_cut=brain_cut, small_fov=small_fov,
                                       flip_xy=flip_xy, n_nodes=n_nodes, ct_matrix=ct_matrix, style=style))
