"""Lesions: the primary tumour (GTVp, label 1) and the metastatic lymph nodes (GTVn, label 2).

Two models. ``classic`` (:func:`_draw_lesions`) is the historical one that the bundled model was
trained on: a lumpy primary near the oropharynx and 0-4 level II-III nodes. ``sites``
(:func:`draw_site_lesions`) places the primary at one of the head-and-neck subsites relative to
the phantom's anatomy (airway, jaw, spine, brain), with a volume from under 1 mL to over 50 mL and
a lobulated, infiltrative or necrotic outline, and 0-6 nodes at the nodal levels that site drains
to, on either side or both, some necrotic, weak or matted together. Everything is drawn in the
unposed patient; :class:`~HNTumorSegLib.phantom.anatomy.Posture` moves it with the neck.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .anatomy import BRAIN_CENTRE, Patient, _inside_any, _no_go_shapes
from .shapes import Blob, Ellipsoid, Layer, Shape, union_volume_ml
from .styles import MAX_NODES, PhantomStyle

def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A uniformly random 3D rotation (from a random unit quaternion)."""
    q = rng.normal(size=4)
    w, x, y, z = q / np.linalg.norm(q)
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


@dataclass
class Lesions:
    """Primary tumour lobes and nodes (scanner mm) plus their layers, and a summary for ``info``;
    ``spheres`` (centre, radius) bound each lesion part, for placing uptake clear of them."""

    layers: list[Layer]
    summary: dict
    spheres: list[tuple[np.ndarray, float]] = field(default_factory=list)


def _draw_lesions(pt: Patient, rng: np.random.Generator, n_nodes: int | None) -> Lesions:
    """GTVp: a lumpy union of 2-5 rotated ellipsoids near the oropharynx, 8-11 cm below the brain
    centre and just anterior to the spine. GTVn: 0-4 separate ellipsoids (8-25 mm) in the lateral
    neck (levels II-III), on either side, kept >= 5 mm from each other and from the tumour."""
    s = pt.s
    depth = rng.uniform(80.0, 110.0)
    side_t = 1 if rng.uniform() < 0.5 else -1
    centre = pt.p(side_t * rng.uniform(4, 18), rng.uniform(-26, -2), BRAIN_CENTRE[2] - depth)
    main = rng.uniform(8.0, 17.0, 3) * s
    base_suv = rng.uniform(6.0, 20.0)
    tumour_hu = rng.uniform(55.0, 75.0)
    rot0 = _random_rotation(rng)
    lobes = [(centre, main, rot0)]
    for _ in range(int(rng.integers(1, 5))):
        # Each lobe is centred inside the main ellipsoid, so the union stays one connected mass.
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        lobes.append((centre + rot0 @ (d * main * rng.uniform(0.5, 0.9)), main * rng.uniform(0.45, 0.8, 3),
                      _random_rotation(rng)))
    layers = []
    for i, (c, r, rot) in enumerate(lobes):
        lobe_suv = float(np.clip(base_suv * rng.uniform(0.85, 1.15), 6.0, 20.0))
        layers.append(Layer(f"gtvp_{i}", Ellipsoid(c, r, rot), tumour_hu, lobe_suv, label=1))
    necrotic = bool(main.mean() > 13.0 * s and rng.uniform() < 0.3)
    if necrotic:
        layers.append(Layer("gtvp_necrosis", Ellipsoid(centre, 0.45 * main, rot0), 25, 0.3 * base_suv))
    t_radius = max(float(np.linalg.norm(c - centre) + r.max()) for c, r, _ in lobes)

    n_random = int(rng.integers(0, 5))
    n = n_random if n_nodes is None else int(n_nodes)
    if not 0 <= n <= 4:
        raise ValueError(f"n_nodes must be in 0..4, got {n_nodes}")
    nodes: list[dict] = []
    placed: list[tuple[np.ndarray, float]] = [(centre, t_radius)]
    for k in range(n):
        size = rng.uniform(4.0, 12.5)
        for attempt in range(2000):
            semi = np.minimum(size * np.array([rng.uniform(0.75, 1.0), rng.uniform(0.75, 1.0),
                                               rng.uniform(1.0, 1.4)]), 12.5) * s
            side = 1 if rng.uniform() < 0.5 else -1
            ax = rng.uniform(24.0, 46.0 - semi.max() / s)
            c = pt.p(side * ax, rng.uniform(-15, 18), rng.uniform(-235, -160))
            rmax = float(semi.max())
            if all(np.linalg.norm(c - pc) >= rmax + pr + 5.0 for pc, pr in placed):
                break
            if attempt % 200 == 199:
                size = max(4.0, 0.9 * size)
        else:  # pragma: no cover - the neck has room for four nodes
            raise RuntimeError("could not place the lymph nodes")
        placed.append((c, rmax))
        node_suv = rng.uniform(3.0, 12.0)
        node_hu = rng.uniform(45.0, 65.0)
        rot = _random_rotation(rng) if rng.uniform() < 0.5 else None
        layers.append(Layer(f"gtvn_{k}", Ellipsoid(c, semi, rot), node_hu, node_suv, label=2))
        nec = bool(semi.max() > 9.0 and rng.uniform() < 0.35)
        if nec:
            layers.append(Layer(f"gtvn_{k}_necrosis", Ellipsoid(c, 0.5 * semi, rot), 20,
                                max(1.0, 0.3 * node_suv)))
        nodes.append({"centre_mm": [float(v) for v in c], "semi_axes_mm": [float(v) for v in semi],
                      "suv": float(node_suv), "hu": float(node_hu), "side": "L" if side > 0 else "R",
                      "necrotic": nec})
    summary = {
        "tumour_centre_mm": [float(v) for v in centre],
        "tumour_depth_below_brain_centre_mm": float(depth * s),
        "tumour_lobes": [{"centre_mm": [float(v) for v in c], "semi_axes_mm": [float(v) for v in r]}
                         for c, r, _ in lobes],
        "tumour_radius_mm": t_radius,
        "tumour_suv": float(base_suv),
        "tumour_hu": float(tumour_hu),
        "tumour_necrotic": necrotic,
        "nodes": nodes,
    }
    return Lesions(layers, summary)



# ----------------------------------------------------------------------------------------------
# The anatomical ("sites") model
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Site:
    """Where a primary arises, in the patient frame (unscaled mm; x is the distance from the
    midline, mirrored to the tumour's side): an anchor and a uniform jitter for its centre, the z
    band the whole tumour stays in, and the nodal levels it drains to first (weights)."""

    anchor: tuple[float, float, float]
    jitter: tuple[float, float, float]
    z_band: tuple[float, float]
    drainage: tuple[tuple[str, float], ...]


#: Primary sites relative to the anatomy of :mod:`~HNTumorSegLib.phantom.anatomy` (brain centre at
#: z = -75, airway y 0-10 from z -140 down, tonsils at z -168, teeth -193, mandible -216, larynx
#: around -250, cervical vertebral bodies from y 17-27 backwards).
SITES: dict[str, Site] = {
    # Posterior-superior to the nasal cavity, at the top of the airway, under the skull base.
    "nasopharynx": Site((4.0, 0.0, -138.0), (5.0, 4.0, 5.0), (-182.0, -123.0),
                        (("RP", 0.35), ("II", 0.4), ("V", 0.2), ("III", 0.05))),
    # Oral tongue / floor of mouth, inside the dental arch, anterior to the airway.
    "oral_cavity": Site((14.0, -34.0, -200.0), (8.0, 8.0, 5.0), (-235.0, -176.0),
                        (("Ib", 0.4), ("II", 0.4), ("III", 0.2))),
    # Palatine tonsil: lateral oropharyngeal wall, replacing the tonsil on its side.
    "oropharynx_tonsil": Site((15.0, 2.0, -170.0), (3.0, 4.0, 6.0), (-215.0, -138.0),
                              (("II", 0.6), ("III", 0.25), ("RP", 0.1), ("IV", 0.05))),
    # Base of tongue: anterior oropharyngeal wall, below the tonsils, behind the oral tongue.
    "oropharynx_base_of_tongue": Site((4.0, -10.0, -195.0), (4.0, 3.0, 5.0), (-230.0, -168.0),
                                      (("II", 0.6), ("III", 0.3), ("Ib", 0.05), ("IV", 0.05))),
    # Glottis / supraglottis: around the laryngeal airway, above the thyroid.
    "larynx": Site((7.0, 0.0, -252.0), (3.0, 3.0, 7.0), (-295.0, -215.0),
                   (("II", 0.4), ("III", 0.4), ("IV", 0.2))),
    # Pyriform sinus: lateral and posterior to the larynx, in front of the spine.
    "hypopharynx": Site((15.0, 10.0, -245.0), (3.0, 3.0, 7.0), (-298.0, -212.0),
                        (("II", 0.35), ("III", 0.35), ("IV", 0.2), ("V", 0.05), ("RP", 0.05))),
}

#: Nodal level boxes (patient frame, unscaled mm; x is the distance from the midline): node
#: centres are drawn in them (Ib submandibular, II-IV upper/mid/lower jugular, V posterior
#: triangle, RP lateral retropharyngeal).
LEVELS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "Ib": ((14.0, -44.0, -234.0), (30.0, -26.0, -214.0)),
    "II": ((28.0, -8.0, -228.0), (44.0, 14.0, -180.0)),
    "III": ((26.0, -12.0, -258.0), (42.0, 8.0, -228.0)),
    "IV": ((24.0, -16.0, -292.0), (40.0, 4.0, -258.0)),
    "V": ((36.0, 14.0, -285.0), (50.0, 36.0, -200.0)),
    "RP": ((16.0, 8.0, -165.0), (24.0, 18.0, -138.0)),
}
#: Short semi-axis cap of retropharyngeal nodes (mm).
RP_MAX_SEMI = 6.5
#: Only primaries of this volume (mL) or more are drawn necrotic; only nodes whose short
#: semi-axis is this (mm) or more.
NECROSIS_MIN_ML = 4.0
NODE_NECROSIS_MIN_SEMI = 7.0
#: Clearance (mm) between a lesion and the skin surface.
SKIN_MARGIN = 4.0
#: How far (mm, in-plane, beyond the jitter) fitting may move a primary away from its site's anchor.
MAX_DRIFT = 12.0


def _fibonacci_directions(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    phi = np.arccos(1.0 - 2.0 * i / n)
    theta = math.pi * (1.0 + 5.0 ** 0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)


_DIRS = _fibonacci_directions(64)


def _log_uniform(rng: np.random.Generator, lo: float, hi: float) -> float:
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _weighted(rng: np.random.Generator, weights) -> str:
    names = [n for n, _ in weights]
    w = np.array([w for _, w in weights], float)
    return names[int(rng.choice(len(names), p=w / w.sum()))]


def _extent(shape: Ellipsoid) -> np.ndarray:
    """Semi-axes of the ellipsoid that bounds ``shape`` (an Ellipsoid or a Blob)."""
    return shape.r * (1.0 + getattr(shape, "amp", 0.0))


def _sample_points(shape: Ellipsoid, margin: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """(surface points pushed ``margin`` mm outward, interior points at half the radius), (N, 3)."""
    semi = _extent(shape)
    local = _DIRS * semi[None, :]
    rot = np.eye(3) if shape.rot is None else shape.rot
    surface = local @ rot.T
    norm = np.linalg.norm(surface, axis=1, keepdims=True)
    pushed = shape.c + surface * (1.0 + margin / np.maximum(norm, 1e-9))
    return pushed, shape.c + 0.5 * surface


def _violations(shapes: list[Ellipsoid], skin: list[Shape], no_go: list[Shape],
                margin: float) -> tuple[np.ndarray, np.ndarray]:
    """Sample points of the shapes that leave the skin (pushed ``margin`` mm outward) and that
    enter a no-go structure, each (N, 3)."""
    outside, blocked = [], []
    for shape in shapes:
        outer, inner = _sample_points(shape, margin)
        outside.append(outer[~_inside_any(skin, outer)])
        bare, _ = _sample_points(shape)
        pts = np.concatenate([bare, inner, shape.c[None, :]])
        blocked.append(pts[_inside_any(no_go, pts)])
    return np.concatenate(outside), np.concatenate(blocked)


def _placement_ok(shapes: list[Ellipsoid], skin: list[Shape], no_go: list[Shape], margin: float) -> bool:
    """All of the shapes inside the skin (with a margin) and clear of the no-go structures."""
    outside, blocked = _violations(shapes, skin, no_go, margin)
    return len(outside) == 0 and len(blocked) == 0


def _radius_along(shape: Ellipsoid, d: np.ndarray) -> float:
    local = d if shape.rot is None else shape.rot.T @ d
    return float(1.0 / math.sqrt(float(np.sum((local / _extent(shape)) ** 2))))


def _rot_z(angle: float) -> np.ndarray:
    c, s = math.cos(angle), math.sin(angle)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def _primary_template(rng: np.random.Generator, outline: str) -> list[tuple]:
    """Parts (offset, semi-axes, rotation, blob parameters or None) of a unit-size primary."""
    aspect = rng.uniform(0.75, 1.3, 3)
    rot0 = _random_rotation(rng)
    if outline == "lobulated":
        parts = [(np.zeros(3), aspect, rot0, None)]
        for _ in range(int(rng.integers(1, 5))):
            d = rng.normal(size=3)
            d /= np.linalg.norm(d)
            parts.append((rot0 @ (d * aspect * rng.uniform(0.5, 0.9)), aspect * rng.uniform(0.45, 0.8, 3),
                          _random_rotation(rng), None))
        return parts
    k = 6
    dirs = rng.normal(size=(k, 3))
    dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
    blob = {"amp": rng.uniform(0.18, 0.35), "directions": dirs, "frequencies": rng.uniform(1.5, 4.5, k),
            "phases": rng.uniform(0.0, 2 * math.pi, k), "weights": rng.uniform(0.3, 1.0, k)}
    return [(np.zeros(3), aspect, rot0, blob)]


def _build(parts: list[tuple], scale: float, centre: np.ndarray) -> list[Ellipsoid]:
    out = []
    for offset, semi, rot, blob in parts:
        c = centre + scale * offset
        out.append(Ellipsoid(c, scale * semi, rot) if blob is None else Blob(c, scale * semi, rot, **blob))
    return out


def _draw_site_primary(pt: Patient, rng: np.random.Generator, style: PhantomStyle, skin, no_go):
    """The primary: site, side, volume, outline, uptake; then fitted into the anatomy: slid into
    the site's z band, stepped away from the skin, spine and brain where it reaches them (at most
    MAX_DRIFT from the site's anchor) and, while it still does not fit, shrunk a little at a time.
    Returns (shapes, description); the description's ``volume_ml`` is the fitted solid's."""
    site = _weighted(rng, style.sites)
    spec = SITES[site]
    side = 1 if rng.uniform() < 0.5 else -1
    target_ml = _log_uniform(rng, *style.primary_volume_ml)
    kinds = [(k, w) for k, w in style.primary_shapes if k != "necrotic" or target_ml >= NECROSIS_MIN_ML]
    kind = _weighted(rng, kinds) if sum(w for _, w in kinds) > 0 else "lobulated"
    outline = kind if kind != "necrotic" else ("lobulated" if rng.uniform() < 0.5 else "infiltrative")
    parts = _primary_template(rng, outline)
    jitter = rng.uniform(-1.0, 1.0, 3) * np.array(spec.jitter)
    base_suv = _log_uniform(rng, *style.primary_suv)
    lobe_suv = [float(np.clip(base_suv * rng.uniform(0.85, 1.15), *style.primary_suv)) for _ in parts]
    hu = rng.uniform(45.0, 80.0)
    core = (rng.uniform(0.45, 0.62), rng.uniform(15.0, 30.0), rng.uniform(0.08, 0.2))

    mirror = np.array([side, 1.0, 1.0])
    anchor = pt.p(*(np.array(spec.anchor) * mirror))
    centre = pt.p(*((np.array(spec.anchor) + jitter) * mirror))
    z_lo, z_hi = (pt.offset[2] + pt.s * z for z in spec.z_band)
    scale = 10.0 * (target_ml / union_volume_ml(_build(parts, 10.0, np.zeros(3)))) ** (1.0 / 3.0)
    fitted = False
    for attempt in range(120):
        shapes = _build(parts, scale, centre)
        pts = np.concatenate([_sample_points(s)[0] for s in shapes])
        zmin, zmax = float(pts[:, 2].min()), float(pts[:, 2].max())
        if zmax - zmin > (z_hi - z_lo) - 2.0:
            scale *= 0.95
            continue
        if zmax > z_hi - 1.0 or zmin < z_lo + 1.0:  # slide into the site's z band
            centre = centre + np.array([0.0, 0.0, (z_hi - 1.0 - zmax) if zmax > z_hi - 1.0 else (z_lo + 1.0 - zmin)])
            shapes = _build(parts, scale, centre)
        outside, blocked = _violations(shapes, skin, no_go, SKIN_MARGIN)
        if len(outside) == 0 and len(blocked) == 0:
            fitted = True
            break
        # Step away from what it hits (skin, spine, brain), at most MAX_DRIFT from the anchor.
        step = np.zeros(3)
        for bad, sign in ((outside, -1.0), (blocked, -1.0)):
            if len(bad):
                d = bad.mean(axis=0) - centre
                step += sign * d / max(float(np.linalg.norm(d)), 1e-6)
        centre = centre + 2.0 * step
        drift = centre[:2] - anchor[:2]
        limit = MAX_DRIFT * pt.s + np.hypot(*spec.jitter[:2])
        if np.hypot(*drift) > limit:
            centre[:2] = anchor[:2] + drift * (limit / np.hypot(*drift))
        if attempt % 4 == 3:
            scale *= 0.96
    volume = union_volume_ml(shapes)
    return shapes, {
        "site": site, "side": "L" if side > 0 else "R", "shape": kind, "outline": outline,
        "target_volume_ml": target_ml, "volume_ml": volume, "fitted": fitted,
        "suv": base_suv, "lobe_suv": lobe_suv, "hu": hu, "necrotic": kind == "necrotic", "core": core,
    }


def _draw_site_nodes(pt: Patient, rng: np.random.Generator, style: PhantomStyle, n: int, site: str, side: int,
                     avoid: list[tuple[np.ndarray, float]], skin, no_go) -> list[dict]:
    """``n`` nodes at the levels ``site`` drains to; each dict holds its shape and description.

    A node that finds no room in its tries is left out, so fewer than ``n`` may come back: a
    cluster node keeps its partner's level, and a small level box (Ib) that earlier nodes filled
    has none (digital seed 940506 raised "could not place the lymph nodes"). Cases whose nodes
    all fit draw exactly what they drew before."""
    nodes: list[dict] = []
    for k in range(n):
        partner = int(rng.integers(len(nodes))) if nodes and rng.uniform() < style.p_node_cluster else None
        if partner is not None:
            level, node_side = nodes[partner]["level"], nodes[partner]["side_sign"]
        else:
            level = _weighted(rng, SITES[site].drainage)
            node_side = -side if rng.uniform() < style.p_node_contralateral else side
        base = _log_uniform(rng, *style.node_semi_mm)
        if level == "RP":
            base = min(base, RP_MAX_SEMI)
        semi = base * np.array([1.0, rng.uniform(1.0, 1.25), rng.uniform(1.1, 1.6)])
        semi[2] = min(semi[2], 25.0)
        rot = _rot_z(rng.uniform(0.0, math.pi))
        weak = bool(rng.uniform() < style.p_node_weak)
        suv = rng.uniform(2.0, 3.5) if weak else _log_uniform(rng, *style.node_suv)
        hu = rng.uniform(35.0, 60.0)
        necrotic = bool(semi.min() >= NODE_NECROSIS_MIN_SEMI and rng.uniform() < style.p_node_necrotic)
        core = (rng.uniform(0.45, 0.6), rng.uniform(10.0, 25.0), rng.uniform(0.1, 0.3))
        shape = None
        for attempt in range(3000):
            if attempt and attempt % 150 == 0:
                semi = np.maximum(semi * 0.92, 3.0)
            if attempt and attempt % 600 == 0 and partner is None:  # try another level
                level = str(rng.choice(sorted(LEVELS)))
            if partner is not None and attempt < 600:
                other = nodes[partner]["shape"]
                d = np.array([rng.uniform(-0.5, 0.5), rng.uniform(-0.5, 0.5), 1.0 if rng.uniform() < 0.5 else -1.0])
                d /= np.linalg.norm(d)
                trial = Ellipsoid(np.zeros(3), semi, rot)
                dist = (_radius_along(other, d) + _radius_along(trial, d)) * rng.uniform(0.75, 0.95)
                c = other.c + d * dist
            else:
                lo, hi = LEVELS[level]
                p = rng.uniform(lo, hi)
                p[0] *= node_side
                c = pt.p(*p)
            trial = Ellipsoid(c, semi, rot)
            r = float(semi.max())
            if any(np.linalg.norm(c - ac) < ar + r + 2.0 for ac, ar in avoid):
                continue
            clear = True
            for j, other in enumerate(nodes):
                gap = np.linalg.norm(c - other["shape"].c)
                if j == partner and attempt < 600:
                    clear &= bool(gap >= 0.5 * (float(other["shape"].r.max()) + r))
                else:
                    clear &= bool(gap >= float(other["shape"].r.max()) + r + 2.0)
            if clear and _placement_ok([trial], skin, no_go, SKIN_MARGIN - 1.0):
                shape = trial
                break
        if shape is None:  # no room for this node: leave it out (the later ones may still fit)
            continue
        nodes.append({"shape": shape, "level": level, "side_sign": node_side, "suv": float(suv), "hu": float(hu),
                      "weak": weak, "necrotic": necrotic, "core": core,
                      "cluster_with": partner if partner is not None and attempt < 600 else None})
    return nodes


def draw_site_lesions(pt: Patient, rng: np.random.Generator, style: PhantomStyle, n_nodes: int | None,
                      skin: list[Shape], no_go: list[Shape], posture) -> Lesions:
    """The anatomical lesion model: a primary at one of :data:`SITES` and 0-6 nodes at
    :data:`LEVELS` (layers unposed; the summary's positions are posed by ``posture``)."""
    shapes, primary = _draw_site_primary(pt, rng, style, skin, _no_go_shapes(pt, mandible=False))
    counts = np.asarray(style.node_counts, float)
    n_random = int(rng.choice(len(counts), p=counts / counts.sum()))
    n = n_random if n_nodes is None else int(n_nodes)
    if not 0 <= n <= MAX_NODES:
        raise ValueError(f"n_nodes must be in 0..{MAX_NODES}, got {n_nodes}")
    spheres = [(s.c.copy(), float(_extent(s).max())) for s in shapes]
    nodes = _draw_site_nodes(pt, rng, style, n, primary["site"], 1 if primary["side"] == "L" else -1, spheres,
                             skin, no_go)

    layers = []
    for i, (shape, suv) in enumerate(zip(shapes, primary.pop("lobe_suv"))):
        layers.append(Layer(f"gtvp_{i}", shape, primary["hu"], suv, label=1))
    core_f, core_hu, core_suv = primary.pop("core")
    main = shapes[0]
    if primary["necrotic"]:
        core_shape = Ellipsoid(main.c, core_f * main.r, main.rot)
        layers.append(Layer("gtvp_necrosis", core_shape, core_hu, core_suv * primary["suv"]))
        primary["core"] = {"centre_mm": [float(v) for v in posture.forward(main.c)],
                           "semi_axes_mm": [float(v) for v in core_shape.r], "hu": core_hu,
                           "suv": core_suv * primary["suv"]}
    node_info = []
    for k, node in enumerate(nodes):
        shape = node["shape"]
        layers.append(Layer(f"gtvn_{k}", shape, node["hu"], node["suv"], label=2))
        entry = {"centre_mm": [float(v) for v in posture.forward(shape.c)],
                 "semi_axes_mm": [float(v) for v in shape.r], "suv": node["suv"], "hu": node["hu"],
                 "side": "L" if node["side_sign"] > 0 else "R", "necrotic": node["necrotic"],
                 "level": node["level"], "weak": node["weak"], "cluster_with": node["cluster_with"]}
        if node["necrotic"]:
            f, c_hu, c_suv = node["core"]
            core_shape = Ellipsoid(shape.c, f * shape.r, shape.rot)
            layers.append(Layer(f"gtvn_{k}_necrosis", core_shape, c_hu, max(0.4, c_suv * node["suv"])))
            entry["core"] = {"centre_mm": entry["centre_mm"], "semi_axes_mm": [float(v) for v in core_shape.r],
                             "hu": c_hu, "suv": max(0.4, c_suv * node["suv"])}
        node_info.append(entry)
        spheres.append((shape.c.copy(), float(shape.r.max())))

    centre = posture.forward(main.c)
    brain = posture.forward(pt.p(*BRAIN_CENTRE))
    lobes = [{"centre_mm": [float(v) for v in posture.forward(s.c)], "semi_axes_mm": [float(v) for v in _extent(s)]}
             for s in shapes]
    summary = {
        "tumour_centre_mm": [float(v) for v in centre],
        "tumour_depth_below_brain_centre_mm": float(brain[2] - centre[2]),
        "tumour_lobes": lobes,
        "tumour_radius_mm": max(float(np.linalg.norm(s.c - main.c) + _extent(s).max()) for s in shapes),
        "tumour_suv": primary["suv"],
        "tumour_hu": primary["hu"],
        "tumour_necrotic": primary["necrotic"],
        "primary": primary,
        "nodes": node_info,
        "n_nodes_requested": n,  # more than len(nodes) when a node found no room
    }
    return Lesions(layers, summary, spheres)
