"""Physiological uptake that is not tumour (label 0), for the centre styles.

Why: a network that only ever sees hot spots where tumours are learns "hot = tumour". Real
head-and-neck PET has avid lymphoid tissue (palatine and lingual tonsils), salivary glands,
muscles (tongue, pterygoids, vocal cords when the patient talked), brown fat (PET-hot but fat on
CT), a diffusely avid thyroid and inflammation (periodontal, sinus mucosa, small reactive nodes).
The tonsils, parotid and submandibular glands and the thyroid belong to the anatomy (their SUV
ranges come from the style); this module adds the rest. Every region is described in the case's
``info["physiological_uptake"]`` with whether a lesion overlaps it (then the lesion wins).
"""

from __future__ import annotations

import math

import numpy as np

from .anatomy import Patient, _dental_arch
from .lesions import _placement_ok
from .shapes import Ellipsoid, Layer, Shape
from .styles import PhantomStyle


def _overlaps(c: np.ndarray, r: float, spheres: list[tuple[np.ndarray, float]], gap: float = 1.0) -> bool:
    return any(float(np.linalg.norm(c - sc)) < r + sr + gap for sc, sr in spheres)


def _fits(shape: Ellipsoid, skin: list[Shape], no_go: list[Shape], margin: float = 2.0) -> bool:
    return _placement_ok([shape], skin, no_go, margin)


def physiological_layers(pt: Patient, rng: np.random.Generator, style: PhantomStyle,
                         lesion_spheres: list[tuple[np.ndarray, float]], skin: list[Shape],
                         no_go: list[Shape]) -> tuple[list[Layer], list[dict]]:
    """Layers (unposed, painted after the anatomy and before the lesions) and their records."""
    H = pt.hu
    layers: list[Layer] = []
    records: list[dict] = []
    u = rng.uniform

    def add(name: str, kind: str, shape: Ellipsoid, hu: float | None, suv: float) -> None:
        layers.append(Layer(name, shape, hu, suv))
        r = float(shape.r.max())
        records.append({"name": name, "kind": kind, "centre_mm": shape.c.copy(),
                        "semi_axes_mm": [float(v) for v in shape.r], "suv": float(suv),
                        "hu": None if hu is None else float(hu),
                        "overlaps_lesion": _overlaps(shape.c, r, lesion_spheres)})

    # Oral tongue (muscle) and the lingual tonsil at the base of the tongue.
    tongue = u(*style.tongue_suv) if style.tongue_suv else None
    lingual = u(*style.lingual_tonsil_suv) if style.lingual_tonsil_suv else None
    if tongue is not None:
        add("tongue", "muscle", pt.ell((0, -38, -198), (20, 22, 8)), H["tissue"] + 3, tongue)
    if lingual is not None:
        add("lingual_tonsil", "lymphoid", pt.ell((0, -6, -188), (13, 6, 9)), H["tissue"] + 5, lingual)

    # Medial pterygoid muscles (chewing), both sides, not quite symmetric.
    pterygoid = u() < style.p_pterygoid
    base, asym = u(*style.pterygoid_suv), u(0.7, 1.0)
    if pterygoid:
        for side, f in ((-1, 1.0), (1, asym)):
            add(f"pterygoid_{side}", "muscle", pt.ell((side * 36, -2, -172), (5, 11, 14)), H["tissue"] + 8,
                max(style.pterygoid_suv[0], base * f))

    # Vocal cords (the patient talked during the uptake time), in the laryngeal airway wall.
    cords = u() < style.p_vocal_cords
    cord_suv = u(*style.vocal_cord_suv)
    if cords:
        for side in (-1, 1):
            add(f"vocal_cord_{side}", "muscle", pt.ell((side * 11.5, 1, -250), (3, 7, 4)), H["tissue"],
                cord_suv)

    # Brown fat: symmetric pairs in the supraclavicular fossae and the posterior neck; fat on CT.
    brown = u() < style.p_brown_fat
    brown_suv = u(*style.brown_fat_suv)
    n_pairs = int(rng.integers(2, 6))
    pairs = []
    for i in range(n_pairs):
        region = rng.uniform() < 0.6
        c = (np.array([u(40, 75), u(-5, 25), u(-305, -285)]) if region
             else np.array([u(28, 42), u(30, 45), u(-280, -235)]))
        semi = np.array([u(4, 9), u(4, 8), u(5, 10)])
        pairs.append((c, semi, u(0.8, 1.2), u(-90, -55)))
    if brown:
        for i, (c, semi, f, hu) in enumerate(pairs):
            for side in (-1, 1):
                shape = pt.ell((side * c[0], c[1], c[2]), semi)
                if _overlaps(shape.c, float(shape.r.max()), lesion_spheres, 2.0) or not _fits(shape, skin, no_go):
                    continue
                add(f"brown_fat_{i}_{side}", "brown_fat", shape, hu, brown_suv * f)

    # Inflammation: 1-2 of periodontal, sinus mucosa, small reactive node.
    inflamed = u() < style.p_inflammation
    n_spots = int(rng.integers(1, 3))
    zt, tcy, ta, tb = _dental_arch(pt)
    for i in range(n_spots):
        kind = ("periodontal", "sinusitis", "reactive_node")[int(rng.choice(3, p=[0.35, 0.25, 0.4]))]
        suv = u(*style.inflammation_suv)
        side = 1 if u() < 0.5 else -1
        if kind == "periodontal":
            phi = u(0.2, 1.2)
            c = (side * ta * math.cos(phi), tcy - tb * math.sin(phi), zt + u(-5, 5))
            shape, hu = pt.ell(c, (5, 5, 5)), None  # PET only: the teeth stay on the CT
        elif kind == "sinusitis":
            shape, hu = pt.ell((side * 28, -45, -133), (10, 11, 6)), H["tissue"] - 10
            suv = max(1.5, 0.6 * suv)
        else:
            lo, hi = ((28.0, -8.0, -228.0), (44.0, 14.0, -180.0)) if u() < 0.6 else ((14.0, -44.0, -234.0),
                                                                                   (30.0, -26.0, -214.0))
            p = rng.uniform(lo, hi)
            p[0] *= side
            shape, hu = pt.ell(tuple(p), (u(3.5, 5), u(3.5, 5), u(4, 6))), H["tissue"] + 10
            suv = min(suv, 4.0)
        if not inflamed:
            continue
        if _overlaps(shape.c, float(shape.r.max()), lesion_spheres, 2.0):
            continue
        if kind == "reactive_node" and not _fits(shape, skin, no_go):
            continue
        add(f"inflammation_{i}", f"inflammation_{kind}", shape, hu, suv)
    return layers, records


def pose_records(records: list[dict], posture) -> list[dict]:
    """The records with their centres posed and made JSON-serialisable."""
    out = []
    for rec in records:
        rec = dict(rec)
        rec["centre_mm"] = [float(v) for v in posture.forward(np.asarray(rec["centre_mm"], float))]
        out.append(rec)
    return out

