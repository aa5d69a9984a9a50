"""Centre styles: one frozen parameter set per kind of centre (scanner, protocol and population).

Why: a model trained on one generator learns where and how that generator draws things. Real
cohorts differ by centre (PET resolution, noise and calibration, CT and PET grids, fields of view)
and by population (where the primary arises, how large it is, how many nodes, patient size and
posture, dental work, physiological uptake). A :class:`PhantomStyle` holds all of those as
ranges, choices and weights; :func:`~HNTumorSegLib.phantom.make_phantom` reads them, so a style is
data and the generator has one code path. Training on some styles and testing on another is a
real domain shift.

``classic`` is the generator the bundled model was trained on: its parameters are the historical
constants and it keeps its own lesion model (``lesion_model="classic"``) and random streams, so its
output is bit-identical to what it always was. The other styles use the anatomical lesion model
(:mod:`~HNTumorSegLib.phantom.lesions`) and the extra patient and uptake features.

Ranges ``(lo, hi)`` are drawn uniformly unless the field says log-uniform; ``(...)`` tuples of
numbers are choices (uniform); ``((name, weight), ...)`` are weighted choices.
"""

from __future__ import annotations

import re
import zlib
from dataclasses import dataclass, fields

Range = tuple[float, float]
Weights = tuple[tuple[str, float], ...]

#: Primary sites of the anatomical lesion model (see :data:`~HNTumorSegLib.phantom.lesions.SITES`).
PRIMARY_SITES = ("nasopharynx", "oral_cavity", "oropharynx_tonsil", "oropharynx_base_of_tongue", "larynx",
                 "hypopharynx")
#: Primary tumour outlines: lobulated (union of ellipsoids), infiltrative (irregular surface),
#: necrotic (either outline with a cold, hypodense core; only drawn for primaries of 4 mL or more).
PRIMARY_SHAPES = ("lobulated", "infiltrative", "necrotic")
#: Nodal levels of the anatomical lesion model (see :data:`~HNTumorSegLib.phantom.lesions.LEVELS`).
NODE_LEVELS = ("Ib", "II", "III", "IV", "V", "RP")
#: Most nodes a case of the anatomical lesion model can have.
MAX_NODES = 6

_CENTRE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]*$")


@dataclass(frozen=True)
class PhantomStyle:
    """The parameters of one kind of centre. Defaults are the ``classic`` generator's values."""

    name: str = "classic"
    #: Centre codes of a cohort of this style (case ids ``CODE-NNN``); cases cycle over them.
    centres: tuple[str, ...] = ("PHA", "PHB", "PHC")
    description: str = ""
    #: "classic": the historical oropharynx lobes and 0-4 level II-III nodes; "sites": anatomical.
    lesion_model: str = "classic"

    # --- patient -------------------------------------------------------------------------------
    patient_scale: Range = (0.92, 1.06)        # overall size factor
    patient_build: Range = (0.9, 1.15)         # trunk width factor
    fat_mm: Range = (6.0, 26.0)                # subcutaneous fat (times the build)
    neck_tilt_deg: Range = (0.0, 0.0)          # + flexion (chin down), - extension
    p_arms_down: float = 0.0                   # arms along the trunk (else raised, out of the scan)
    p_dental_metal: float = 0.0                # fillings with CT streaks in the teeth planes
    fillings: tuple[int, int] = (1, 5)         # number of fillings when there is metal

    # --- physiological uptake (SUV; label 0) ----------------------------------------------------
    parotid_suv: Range = (2.0, 3.5)
    tonsil_suv: Range = (2.5, 4.0)             # palatine tonsils
    submandibular_suv: Range = (1.5, 2.5)
    thyroid_suv: Range = (1.0, 2.0)
    lingual_tonsil_suv: Range | None = None    # base of tongue lymphoid tissue (None: absent)
    tongue_suv: Range | None = None            # oral tongue muscle
    p_pterygoid: float = 0.0                   # medial pterygoid muscles (chewing)
    pterygoid_suv: Range = (1.5, 4.0)
    p_vocal_cords: float = 0.0                 # talking during the uptake time
    vocal_cord_suv: Range = (2.5, 5.0)
    p_brown_fat: float = 0.0                   # neck and supraclavicular brown fat (CT: fat)
    brown_fat_suv: Range = (2.0, 10.0)
    p_inflammation: float = 0.0                # 1-2 inflammatory hot spots (periodontal, sinus, reactive node)
    inflammation_suv: Range = (2.0, 6.0)
    metal_ac_suv: Range = (1.0, 2.0)           # mild attenuation-correction halo at each filling

    # --- primary tumour (lesion_model "sites") -------------------------------------------------
    sites: Weights = ()
    primary_volume_ml: Range = (1.0, 40.0)     # log-uniform
    primary_shapes: Weights = (("lobulated", 1.0),)
    primary_suv: Range = (6.0, 20.0)           # log-uniform, painted SUVmax

    # --- nodes (lesion_model "sites") ---------------------------------------------------------
    node_counts: tuple[float, ...] = (0.2, 0.2, 0.2, 0.2, 0.2, 0.0, 0.0)  # weights of 0..6 nodes
    node_semi_mm: Range = (4.0, 12.5)          # log-uniform short semi-axis
    node_suv: Range = (3.0, 12.0)              # log-uniform
    p_node_necrotic: float = 0.0               # of nodes with a semi-axis of 7 mm or more
    p_node_weak: float = 0.0                   # SUV 2.0-3.5 whatever node_suv says
    p_node_cluster: float = 0.0                # touching the previous node (one conglomerate)
    p_node_contralateral: float = 0.0          # on the other side than a lateral primary

    # --- CT --------------------------------------------------------------------------------------
    ct_fov_mm: tuple[float, ...] = (500.0,)    # reconstruction diameter; spacing = fov / ct_matrix
    ct_matrix: int = 512
    ct_slice_mm: tuple[float, ...] = (3.0,)
    ct_noise_hu: Range = (6.0, 18.0)
    ct_noise_bank: int = 0                     # 0: fresh noise per voxel; N: shifted slices of N (faster)

    # --- PET -------------------------------------------------------------------------------------
    pet_spacing_xy: tuple[float, ...] = (4.0728, 3.6458, 4.0)
    pet_spacing_z: tuple[float, ...] = (3.27, 3.0, 4.0)
    pet_fwhm_mm: Range = (6.0, 7.0)
    pet_noise: Range = (0.08, 0.2)             # std = pet_noise * sqrt(SUV)
    suv_calibration: Range = (1.0, 1.0)        # global factor on the PET (cross-calibration error)

    # --- cohort recipe (hntumorseg-train phantoms) ------------------------------------------------
    fov_mix: tuple[tuple[float, float, float], ...] = ((0.6, 0.3, 0.1), (0.2, 0.6, 0.2), (0.1, 0.3, 0.6))
    p_brain_cut: float = 0.15
    p_small_fov: float = 0.15                  # of head fields of view
    p_flip_xy: float = 0.25

    def __post_init__(self) -> None:
        problems = []
        if not self.name or not re.fullmatch(r"[a-z][a-z0-9_]*", self.name):
            problems.append(f"name {self.name!r} must be lower-case letters, digits and '_'")
        if not self.centres or not all(_CENTRE_RE.match(c) for c in self.centres):
            problems.append(f"centres {self.centres!r} must be codes of letters and digits")
        if len(self.fov_mix) != len(self.centres) or any(len(m) != 3 or abs(sum(m) - 1) > 1e-6
                                                           for m in self.fov_mix):
            problems.append("fov_mix needs one (head, head_upper, whole_body) mix summing to 1 per centre")
        if self.lesion_model not in ("classic", "sites"):
            problems.append(f"lesion_model must be 'classic' or 'sites', not {self.lesion_model!r}")
        if self.lesion_model == "sites":
            if not self.sites or any(s not in PRIMARY_SITES for s, _ in self.sites):
                problems.append(f"sites must name some of {PRIMARY_SITES}")
            if any(s not in PRIMARY_SHAPES for s, _ in self.primary_shapes):
                problems.append(f"primary_shapes must name some of {PRIMARY_SHAPES}")
        if len(self.node_counts) != MAX_NODES + 1 or sum(self.node_counts) <= 0:
            problems.append(f"node_counts needs {MAX_NODES + 1} weights (0..{MAX_NODES} nodes)")
        for f in fields(self):
            value = getattr(self, f.name)
            if f.name.startswith("p_") and not 0.0 <= value <= 1.0:
                problems.append(f"{f.name} must be a probability")
            if f.type in ("Range", "Range | None") and value is not None and not (
                    len(value) == 2 and value[0] <= value[1]):
                problems.append(f"{f.name} must be a range (lo, hi) with lo <= hi")
            if f.name.endswith("_weights") or f.type == "Weights":
                if any(w < 0 for _, w in value) or (value and sum(w for _, w in value) <= 0):
                    problems.append(f"{f.name} needs non-negative weights with a positive sum")
        for name in ("primary_volume_ml", "primary_suv", "node_semi_mm", "node_suv"):
            if getattr(self, name)[0] <= 0:
                problems.append(f"{name} is log-uniform and must be positive")
        if problems:
            raise ValueError(f"phantom style {self.name!r}: " + "; ".join(problems))

    @property
    def max_nodes(self) -> int:
        return 4 if self.lesion_model == "classic" else MAX_NODES

    @property
    def seed_tag(self) -> int | None:
        """Mixed into the seed so that one seed gives unrelated patients in different styles;
        None for ``classic``, whose random streams are the historical ones."""
        return None if self.name == "classic" else zlib.crc32(self.name.encode("ascii"))

    def summary(self) -> dict:
        """JSON-serialisable parameters (for ``info`` and ``cohort.json``)."""
        out = {}
        for f in fields(self):
            v = getattr(self, f.name)
            out[f.name] = _jsonable(v)
        return out


def _jsonable(v):
    if isinstance(v, tuple):
        if v and all(isinstance(i, tuple) and len(i) == 2 and isinstance(i[0], str) for i in v):
            return {k: w for k, w in v}
        return [_jsonable(i) for i in v]
    return v


CLASSIC = PhantomStyle(
    name="classic", centres=("PHA", "PHB", "PHC"),
    description="The historical generator (the bundled model's training data): a lumpy primary near the "
                "oropharynx, 0-4 level II-III nodes, PET FWHM 6-7 mm, CT 0.98 x 0.98 x 3 mm, no calibration "
                "error; three pseudo-centres that differ by field-of-view mix only.")

LEGACY = PhantomStyle(
    name="legacy", centres=("PLG",), lesion_model="sites",
    description="A community hospital with an older BGO PET/CT: coarse PET (5.1-5.5 mm voxels, FWHM 8-10 mm), "
                "noisy, SUV under-calibrated by 2-22 %; CT 600-650 mm field of view and 3.75-5 mm slices. Older, "
                "heavier smokers: larynx, hypopharynx and oral cavity, large primaries, arms down, dental work, "
                "no head holder (neck posture varies).",
    patient_scale=(0.97, 1.10), patient_build=(1.0, 1.3), fat_mm=(10.0, 30.0), neck_tilt_deg=(-12.0, 12.0),
    p_arms_down=0.8, p_dental_metal=0.55, fillings=(2, 6),
    parotid_suv=(1.5, 3.5), tonsil_suv=(2.0, 5.0), submandibular_suv=(1.5, 3.0), thyroid_suv=(1.0, 3.0),
    lingual_tonsil_suv=(1.5, 4.0), tongue_suv=(1.0, 2.5), p_pterygoid=0.3, pterygoid_suv=(1.5, 4.0),
    p_vocal_cords=0.4, vocal_cord_suv=(2.5, 5.0), p_brown_fat=0.03, brown_fat_suv=(2.0, 8.0),
    p_inflammation=0.4, inflammation_suv=(2.0, 6.0), metal_ac_suv=(1.2, 2.5),
    sites=(("larynx", 0.3), ("hypopharynx", 0.2), ("oral_cavity", 0.25), ("oropharynx_tonsil", 0.1),
           ("oropharynx_base_of_tongue", 0.1), ("nasopharynx", 0.05)),
    primary_volume_ml=(0.8, 120.0), primary_shapes=(("lobulated", 0.35), ("infiltrative", 0.35), ("necrotic", 0.3)),
    primary_suv=(5.0, 30.0),
    node_counts=(0.15, 0.15, 0.2, 0.2, 0.15, 0.1, 0.05), node_semi_mm=(4.0, 16.0), node_suv=(2.5, 18.0),
    p_node_necrotic=0.3, p_node_weak=0.2, p_node_cluster=0.25, p_node_contralateral=0.25,
    ct_fov_mm=(600.0, 650.0), ct_slice_mm=(3.75, 5.0), ct_noise_hu=(14.0, 30.0), ct_noise_bank=24,
    pet_spacing_xy=(5.0781, 5.4688), pet_spacing_z=(3.27, 4.25), pet_fwhm_mm=(8.0, 10.0),
    pet_noise=(0.22, 0.35), suv_calibration=(0.78, 0.98),
    fov_mix=((0.1, 0.4, 0.5),), p_brain_cut=0.25, p_small_fov=0.0, p_flip_xy=0.3)

DIGITAL = PhantomStyle(
    name="digital", centres=("PDG",), lesion_model="sites",
    description="An academic centre with a digital PET/CT: fine PET (2.7-3.3 mm voxels, 2 mm slices, FWHM "
                "3.8-5 mm), low noise, SUV over-calibrated by 2-20 %; CT 0.98 mm, 2 mm slices, low noise, "
                "RAS-stored files. HPV-era population: tonsil and base-of-tongue primaries, often small, cystic "
                "(necrotic) nodes, head holder, arms mostly raised, avid tonsils, brown fat.",
    patient_scale=(0.92, 1.06), patient_build=(0.85, 1.1), fat_mm=(5.0, 22.0), neck_tilt_deg=(-5.0, 5.0),
    p_arms_down=0.15, p_dental_metal=0.3, fillings=(1, 4),
    parotid_suv=(1.5, 4.5), tonsil_suv=(2.5, 8.0), submandibular_suv=(1.5, 3.5), thyroid_suv=(1.0, 4.0),
    lingual_tonsil_suv=(2.0, 6.0), tongue_suv=(1.2, 3.5), p_pterygoid=0.4, pterygoid_suv=(2.0, 5.0),
    p_vocal_cords=0.5, vocal_cord_suv=(2.5, 6.0), p_brown_fat=0.15, brown_fat_suv=(3.0, 12.0),
    p_inflammation=0.3, inflammation_suv=(2.5, 7.0), metal_ac_suv=(1.0, 2.0),
    sites=(("oropharynx_tonsil", 0.35), ("oropharynx_base_of_tongue", 0.3), ("oral_cavity", 0.15),
           ("larynx", 0.1), ("hypopharynx", 0.05), ("nasopharynx", 0.05)),
    primary_volume_ml=(0.3, 70.0), primary_shapes=(("lobulated", 0.55), ("infiltrative", 0.25), ("necrotic", 0.2)),
    primary_suv=(4.0, 25.0),
    node_counts=(0.1, 0.2, 0.25, 0.2, 0.12, 0.08, 0.05), node_semi_mm=(3.5, 15.0), node_suv=(2.0, 20.0),
    p_node_necrotic=0.45, p_node_weak=0.25, p_node_cluster=0.3, p_node_contralateral=0.2,
    ct_fov_mm=(500.0,), ct_slice_mm=(2.0,), ct_noise_hu=(5.0, 12.0), ct_noise_bank=24,
    pet_spacing_xy=(2.7344, 3.2552), pet_spacing_z=(2.0,), pet_fwhm_mm=(3.8, 5.0),
    pet_noise=(0.04, 0.09), suv_calibration=(1.02, 1.2),
    fov_mix=((0.5, 0.45, 0.05),), p_brain_cut=0.1, p_small_fov=0.3, p_flip_xy=0.5)

ENDEMIC = PhantomStyle(
    name="endemic", centres=("PNE",), lesion_model="sites",
    description="A centre in a nasopharyngeal-carcinoma endemic region with a dedicated head-and-neck "
                "protocol: PET 3.0-3.2 mm voxels, 3 mm slices, FWHM 5.5-6.5 mm; CT 450-480 mm field of view, "
                "2.5 mm slices. Smaller patients; mostly nasopharynx, many bilateral retropharyngeal and "
                "level II/V nodes, often matted; arms down.",
    patient_scale=(0.86, 0.98), patient_build=(0.82, 1.0), fat_mm=(4.0, 16.0), neck_tilt_deg=(-8.0, 8.0),
    p_arms_down=0.6, p_dental_metal=0.35, fillings=(1, 4),
    parotid_suv=(2.0, 4.5), tonsil_suv=(2.0, 5.0), submandibular_suv=(1.5, 3.0), thyroid_suv=(1.0, 3.0),
    lingual_tonsil_suv=(1.5, 4.5), tongue_suv=(1.0, 3.0), p_pterygoid=0.3, pterygoid_suv=(1.5, 4.5),
    p_vocal_cords=0.3, vocal_cord_suv=(2.5, 5.0), p_brown_fat=0.08, brown_fat_suv=(2.5, 10.0),
    p_inflammation=0.35, inflammation_suv=(2.0, 6.0), metal_ac_suv=(1.0, 2.0),
    sites=(("nasopharynx", 0.6), ("oral_cavity", 0.15), ("oropharynx_tonsil", 0.05),
           ("oropharynx_base_of_tongue", 0.05), ("larynx", 0.1), ("hypopharynx", 0.05)),
    primary_volume_ml=(0.5, 90.0), primary_shapes=(("lobulated", 0.3), ("infiltrative", 0.5), ("necrotic", 0.2)),
    primary_suv=(6.0, 30.0),
    node_counts=(0.05, 0.1, 0.15, 0.2, 0.2, 0.15, 0.15), node_semi_mm=(4.0, 17.0), node_suv=(2.5, 18.0),
    p_node_necrotic=0.35, p_node_weak=0.15, p_node_cluster=0.4, p_node_contralateral=0.45,
    ct_fov_mm=(450.0, 480.0), ct_slice_mm=(2.5,), ct_noise_hu=(8.0, 16.0), ct_noise_bank=24,
    pet_spacing_xy=(3.0, 3.1818), pet_spacing_z=(3.0,), pet_fwhm_mm=(5.5, 6.5),
    pet_noise=(0.12, 0.2), suv_calibration=(0.9, 1.1),
    fov_mix=((0.7, 0.3, 0.0),), p_brain_cut=0.2, p_small_fov=0.2, p_flip_xy=0.0)

#: The named styles, ``classic`` (the default) first.
STYLES: dict[str, PhantomStyle] = {s.name: s for s in (CLASSIC, LEGACY, DIGITAL, ENDEMIC)}


def get_style(style: str | PhantomStyle | None) -> PhantomStyle:
    """A style by name (or the style itself); None is ``classic``."""
    if style is None:
        return CLASSIC
    if isinstance(style, PhantomStyle):
        return style
    try:
        return STYLES[str(style)]
    except KeyError:
        raise ValueError(f"unknown phantom style {style!r}; known: {', '.join(STYLES)}") from None


__all__ = ["PhantomStyle", "STYLES", "CLASSIC", "LEGACY", "DIGITAL", "ENDEMIC", "get_style",
           "PRIMARY_SITES", "PRIMARY_SHAPES", "NODE_LEVELS", "MAX_NODES"]
