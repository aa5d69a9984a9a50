"""Synthetic head-and-neck PET/CT phantoms with GTVp/GTVn labels.

Layer: imports ``dicom`` (:mod:`.dicom` writes a phantom as DICOM series), ``imaging`` and the base
modules; never the pipeline, the Slicer support or the command line.

Why: real HECKTOR data cannot ship with the project, yet the tests, the demo and the training
smoke runs need cases that exercise the whole pipeline the way real scans do: a CT in HU on a
fine grid and a PET in SUV on a coarser grid with a different size and origin, a hot brain at
the top that the PET-guided crop anchors on, a bladder and a heart that must *not* win that
search, a primary tumour and neck nodes, three HECKTOR-like fields of view, scans that cut the
brain, small reconstruction fields of view and RAS-style flipped storage. And, because a model
learns where and how its generator draws things, named centre *styles* that vary what real
cohorts vary (see :mod:`.styles`).

How: the anatomy is described once, analytically, in millimetres (ellipsoids, elliptic tubes
with a piecewise-linear profile, capsules, boxes; see :mod:`.shapes`), and every image is
rasterised from that one description on its own grid: the CT with hard masks in HU, the PET with
anti-aliased masks in SUV on its own coarse grid (then blurred and made noisy), and the label
with the hard masks of the lesions on the CT grid. PET and CT are therefore consistent to the
voxel without any resampling between them, and the label is the geometric lesion (not a
thresholded PET).

Modules: :mod:`.shapes` (grids, solids, layers, rasterisation), :mod:`.anatomy` (the patient,
arms, neck posture), :mod:`.lesions` (classic and anatomical lesion models), :mod:`.uptake`
(physiological uptake, label 0), :mod:`.scanner` (fields of view, grids, PET formation, dental
metal), :mod:`.styles` (centre styles), :mod:`.generator` (:func:`make_phantom`), :mod:`.writing`.

Coordinate convention: physical axes are LPS (x toward the patient's Left, y toward Posterior,
z toward Superior), in mm. Unflipped images have the identity direction and their origin at the
corner voxel of the most inferior slice, so array index z grows toward the head. The patient
frame used to write the anatomy has x = 0 on the head's midline, y = 0 near the head's centre
and z = 0 at the vertex (top of the scalp); it is translated into the scanner frame, with the
head several cm off the centre of the field of view (the styles can also bend the neck).

Reproducibility: see :mod:`.generator`. The default style ``classic`` gives, for a seed, exactly
the arrays this generator always gave (the bundled model was trained on them).
"""

from .anatomy import BRAIN_CENTRE, BRAIN_SEMI, BRAIN_ZMIN, Patient, Posture
from .generator import PhantomCase, PhantomPlan, make_phantom, plan_phantom, render_phantom
from .lesions import LEVELS, SITES, Lesions
from .scanner import (CT_FOV_MM, CT_HU_RANGE, CT_OUTSIDE_FOV_HU, CT_SLICE_MM, FIELDS_OF_VIEW, PET_SPACINGS_XY,
                      PET_SPACINGS_Z, SMALL_FOV_MM)
from .shapes import (Blob, Box, Capsule, Difference, Ellipsoid, Grid, Layer, Shape, Tube, Warped, rasterise_ct,
                     rasterise_label, rasterise_pet, union_volume_ml)
from .styles import (CLASSIC, DIGITAL, ENDEMIC, LEGACY, MAX_NODES, NODE_LEVELS, PRIMARY_SHAPES, PRIMARY_SITES,
                     STYLES, PhantomStyle, get_style)
from .writing import case_paths, write_case

__all__ = [
    "BRAIN_CENTRE", "BRAIN_SEMI", "BRAIN_ZMIN", "Patient", "Posture",
    "PhantomCase", "PhantomPlan", "make_phantom", "plan_phantom", "render_phantom",
    "LEVELS", "SITES", "Lesions",
    "CT_FOV_MM", "CT_HU_RANGE", "CT_OUTSIDE_FOV_HU", "CT_SLICE_MM", "FIELDS_OF_VIEW", "PET_SPACINGS_XY",
    "PET_SPACINGS_Z", "SMALL_FOV_MM",
    "Blob", "Box", "Capsule", "Difference", "Ellipsoid", "Grid", "Layer", "Shape", "Tube", "Warped",
    "rasterise_ct", "rasterise_label", "rasterise_pet", "union_volume_ml",
    "CLASSIC", "DIGITAL", "ENDEMIC", "LEGACY", "MAX_NODES", "NODE_LEVELS", "PRIMARY_SHAPES", "PRIMARY_SITES",
    "STYLES", "PhantomStyle", "get_style",
    "case_paths", "write_case",
]
