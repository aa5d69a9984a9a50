"""The patient: analytic anatomy in a patient frame, its posture, and what lies around it.

The patient frame has x = 0 on the head's midline, y = 0 near the head's centre and z = 0 at the
vertex, in unscaled mm; :meth:`Patient.p` scales by the patient's size and translates into the
scanner frame (LPS, mm). The classic generator places the patient by translation only; the centre
styles can also bend the neck (:class:`Posture`) and add arms along the trunk (:func:`_arm_layers`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .shapes import _INF, Box, Capsule, Difference, Ellipsoid, Layer, Shape, Tube, Warped
from .styles import CLASSIC, PhantomStyle

@dataclass
class Patient:
    """Random per-patient parameters; lengths in the patient frame are multiplied by ``s``."""

    s: float            # overall size
    w: float            # trunk width factor (build)
    fat: float          # subcutaneous fat thickness of the trunk, mm
    offset: np.ndarray  # scanner position of the patient-frame origin (vertex on the head axis)
    hu: dict
    suv: dict

    def p(self, x: float, y: float, z: float) -> np.ndarray:
        """Patient-frame point (unscaled mm) to scanner mm."""
        return self.offset + self.s * np.array([x, y, z], float)

    def tube(self, z, cx, cy, a, b, **kw) -> Tube:
        """Patient-frame tube (unscaled mm) to a scanner-frame :class:`Tube`."""
        s, o = self.s, self.offset
        return Tube(np.asarray(z, float) * s + o[2], np.asarray(cx, float) * s + o[0],
                    np.asarray(cy, float) * s + o[1], np.asarray(a, float) * s,
                    np.asarray(b, float) * s, **kw)

    def ell(self, c, r, **kw) -> Ellipsoid:
        """Patient-frame axis-aligned ellipsoid (unscaled mm)."""
        return Ellipsoid(self.p(*c), self.s * np.asarray(r, float), **kw)

    def zclip(self, zmin: float | None = None, zmax: float | None = None) -> dict:
        """Clip keywords for a patient-frame z range."""
        lo = [-_INF, -_INF, -_INF if zmin is None else self.offset[2] + self.s * zmin]
        hi = [_INF, _INF, _INF if zmax is None else self.offset[2] + self.s * zmax]
        return {"clip_lo": lo, "clip_hi": hi}


#: Trunk outline (patient frame, unscaled): z knots, half-width a, half-depth b; centre y = 15.
_TRUNK_Z = np.array([-950.0, -820, -700, -560, -420, -322, -300, -285])
_TRUNK_A = np.array([165.0, 160, 142, 150, 158, 160, 105, 58])
_TRUNK_B = np.array([100.0, 105, 108, 108, 105, 95, 72, 55])
_TRUNK_CY = 15.0
#: Knots from here down get the build factor ``w`` (shoulders and below).
_TRUNK_W_FROM = -322.0
#: Vertebral bodies: z knots, centre y, half-width, half-depth (patient frame, unscaled).
_SPINE_Z = np.array([-900.0, -850, -830, -700, -560, -480, -330, -300, -140])
_SPINE_CY = np.array([70.0, 66, 45, 52, 60, 62, 50, 36, 27])
_SPINE_A = np.array([30.0, 28, 23, 21, 18, 16, 13, 11, 10])
_SPINE_B = np.array([14.0, 14, 18, 17, 16, 14, 12, 10, 9])
#: Lower face/jaw outline: z knots, centre y, half-width, half-depth.
_FACE_Z = np.array([-236.0, -228, -205, -170, -120, -80])
_FACE_CY = np.array([-28.0, -30, -25, -20, -15, -10])
_FACE_A = np.array([22.0, 36, 52, 60, 66, 66])
_FACE_B = np.array([30.0, 50, 70, 80, 85, 85])
#: Brain (patient frame): centre and semi-axes; the PET peak and the tumour depth refer to it.
BRAIN_CENTRE = (0.0, 10.0, -75.0)
BRAIN_SEMI = (64.0, 80.0, 62.0)
BRAIN_ZMIN = -120.0


def _trunk_ab(pt: Patient, inset: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Trunk half-axes (unscaled units) with the build factor, minus ``inset`` mm of real size."""
    wf = np.where(_TRUNK_Z <= _TRUNK_W_FROM, pt.w, 1.0)
    a = _TRUNK_A * wf - inset / pt.s
    b = _TRUNK_B * np.where(_TRUNK_Z <= _TRUNK_W_FROM, 0.5 + 0.5 * pt.w, 1.0) - inset / pt.s
    return np.maximum(a, 5.0), np.maximum(b, 5.0)


def _trunk_at(pt: Patient, z: float, inset: float = 0.0) -> tuple[float, float]:
    """Inner trunk half-axes (unscaled) at patient-frame z: organs are placed relative to these."""
    a, b = _trunk_ab(pt, inset)
    return float(np.interp(z, _TRUNK_Z, a)), float(np.interp(z, _TRUNK_Z, b))


def _spine_cy(z: float) -> float:
    return float(np.interp(z, _SPINE_Z, _SPINE_CY))


def _draw_patient(rng: np.random.Generator, style: PhantomStyle = CLASSIC) -> Patient:
    """Size, build, head position in the scanner and tissue values of one patient (ranges of the
    style; the draws are those of the classic generator, in its order)."""
    s = rng.uniform(*style.patient_scale)
    w = rng.uniform(*style.patient_build)
    fat = rng.uniform(*style.fat_mm) * w
    head_xy = rng.uniform(-40.0, 40.0, size=2)
    z_vertex = rng.uniform(-200.0, 200.0)
    u = rng.uniform
    hu = {
        "fat": u(-115, -85), "tissue": u(35, 50), "brain": u(34, 40), "white": u(25, 31),
        "bone": u(750, 1150), "spine": u(700, 900), "lung": u(-850, -780), "liver": u(50, 65),
        "blood": u(35, 50), "teeth": 1200.0, "csf": u(5, 15), "gland": u(-15, 15),
    }
    brain = u(7.0, 10.0)
    suv = {
        "fat": u(0.15, 0.3), "tissue": u(0.45, 0.75), "bone": u(0.3, 0.45), "marrow": u(1.0, 1.6),
        "lung": u(0.3, 0.5), "brain": brain, "white": 0.7 * brain, "deep_grey": 0.95 * brain,
        "cerebellum": 0.85 * brain, "csf": u(0.3, 0.6), "eye": u(0.2, 0.4),
        "parotid": u(*style.parotid_suv), "tonsil": u(*style.tonsil_suv),
        "submandibular": u(*style.submandibular_suv), "thyroid": u(*style.thyroid_suv),
        "heart": u(3.0, 6.0), "blood": u(1.4, 2.0), "liver": u(1.8, 2.5),
        "kidney": u(2.0, 4.0), "bowel": u(1.0, 2.5), "bladder": u(20.0, 35.0),
    }
    suv["spleen"] = 0.85 * suv["liver"]
    offset = np.array([head_xy[0], head_xy[1], z_vertex])
    return Patient(s=s, w=w, fat=fat, offset=offset, hu=hu, suv=suv)


def _body_layers(pt: Patient) -> list[Layer]:
    """Skin outline: head, face, neck, trunk and thighs, each as fat shell + soft-tissue core."""
    H, S = pt.hu, pt.suv
    a, b = _trunk_ab(pt)
    ai, bi = _trunk_ab(pt, pt.fat)
    neck_fat = 0.4 * pt.fat / pt.s
    leg_x = 0.5 * float(np.interp(-950, _TRUNK_Z, a))
    leg_z = [-1400.0, -935.0]
    layers = [
        Layer("trunk_fat", pt.tube(_TRUNK_Z, 0, _TRUNK_CY, a, b), H["fat"], S["fat"]),
        Layer("trunk", pt.tube(_TRUNK_Z, 0, _TRUNK_CY, ai, bi), H["tissue"], S["tissue"]),
        Layer("neck_fat", pt.tube([-300, -150], 0, 22, 58, 58), H["fat"], S["fat"]),
        Layer("neck", pt.tube([-300, -150], 0, 22, 58 - neck_fat, 58 - neck_fat), H["tissue"], S["tissue"]),
        Layer("face", pt.tube(_FACE_Z, 0, _FACE_CY, _FACE_A, _FACE_B), H["tissue"], S["tissue"]),
        Layer("head", pt.ell((0, 5, -75), (77, 93, 75)), H["tissue"], S["tissue"]),
    ]
    for side in (-1, 1):
        r_out = [0.8 * leg_x, leg_x]
        r_in = [max(0.8 * leg_x - pt.fat / pt.s, 10), max(leg_x - pt.fat / pt.s, 10)]
        layers.append(Layer(f"thigh_fat_{side}", pt.tube(leg_z, side * leg_x, _TRUNK_CY, r_out, r_out),
                            H["fat"], S["fat"]))
        layers.append(Layer(f"thigh_{side}", pt.tube(leg_z, side * leg_x, _TRUNK_CY, r_in, r_in),
                            H["tissue"], S["tissue"]))
    return layers


def _head_layers(pt: Patient) -> list[Layer]:
    """Skull, brain (cortex, white matter, deep grey nuclei, ventricles, cerebellum), sinuses,
    eyes, mandible, teeth and the physiologically avid glands near the tumour."""
    H, S = pt.hu, pt.suv
    bc, bs = BRAIN_CENTRE, BRAIN_SEMI
    layers = [
        Layer("nasal_cavity", pt.ell((0, -55, -130), (12, 22, 20)), -1000, 0.0),
        Layer("sinus_l", pt.ell((28, -45, -125), (13, 15, 15)), -1000, 0.0),
        Layer("sinus_r", pt.ell((-28, -45, -125), (13, 15, 15)), -1000, 0.0),
        Layer("eye_l", pt.ell((32, -58, -110), (12, 12, 12)), 15, S["eye"]),
        Layer("eye_r", pt.ell((-32, -58, -110), (12, 12, 12)), 15, S["eye"]),
        Layer("skull", pt.ell(bc, np.add(bs, 7), **pt.zclip(BRAIN_ZMIN - 8)), H["bone"], S["bone"]),
        Layer("posterior_fossa", pt.ell((0, 50, -118), (52, 35, 27), **pt.zclip(zmax=-118)),
              H["bone"], S["bone"]),
        Layer("brain", pt.ell(bc, bs, **pt.zclip(BRAIN_ZMIN)), H["brain"], S["brain"]),
        Layer("white_matter", pt.ell(bc, np.subtract(bs, 10), **pt.zclip(BRAIN_ZMIN)),
              H["white"], S["white"]),
        Layer("cerebellum", pt.ell((0, 50, -118), (45, 28, 20), **pt.zclip(-138)),
              H["brain"], S["cerebellum"]),
        Layer("thalamus_l", pt.ell((17, 8, -72), (9, 16, 13)), H["brain"], S["deep_grey"]),
        Layer("thalamus_r", pt.ell((-17, 8, -72), (9, 16, 13)), H["brain"], S["deep_grey"]),
        Layer("ventricle_l", pt.ell((7, 5, -62), (5, 22, 10)), H["csf"], S["csf"]),
        Layer("ventricle_r", pt.ell((-7, 5, -62), (5, 22, 10)), H["csf"], S["csf"]),
    ]
    # Mandible: the anterior half of an elliptic ring under the lower face, plus two rami.
    zm = -216.0
    fa, fb, fcy = (float(np.interp(zm, _FACE_Z, v)) for v in (_FACE_A, _FACE_B, _FACE_CY))
    y_cut = pt.offset[1] + pt.s * (fcy + 5)
    ring_clip = {"clip_hi": [_INF, y_cut, _INF]}
    layers.append(Layer("mandible", Difference(
        pt.tube([zm - 10, zm + 10], 0, fcy, fa - 4, fb - 4, **ring_clip),
        pt.tube([zm - 10, zm + 10], 0, fcy, fa - 11, fb - 11)), H["bone"], S["bone"]))
    zt = -193.0
    ta, tb, tcy = (float(np.interp(zt, _FACE_Z, v)) for v in (_FACE_A, _FACE_B, _FACE_CY))
    layers.append(Layer("teeth", Difference(
        pt.tube([zt - 7, zt + 7], 0, tcy, ta - 12, tb - 12, clip_hi=[_INF, y_cut - 3 * pt.s, _INF]),
        pt.tube([zt - 7, zt + 7], 0, tcy, ta - 19, tb - 19)), H["teeth"], S["bone"]))
    for side in (-1, 1):
        layers.append(Layer(f"ramus_{side}", Capsule(pt.p(side * (fa - 8), fcy + 8, zm),
                                                    pt.p(side * 54, 8, -140), 5 * pt.s),
                            H["bone"], S["bone"]))
    # Glands with physiological uptake (after the bones so they are not cut by them).
    for side in (-1, 1):
        layers += [
            Layer(f"parotid_{side}", pt.ell((side * 46, 12, -150), (11, 18, 22)), H["gland"], S["parotid"]),
            Layer(f"submandibular_{side}", pt.ell((side * 33, -25, -212), (11, 13, 11)),
                  H["tissue"] + 5, S["submandibular"]),
            Layer(f"thyroid_{side}", pt.ell((side * 17, -16, -275), (8, 9, 20)), H["tissue"] + 50,
                  S["thyroid"]),
        ]
    return layers


def _thorax_abdomen_layers(pt: Patient, rng: np.random.Generator) -> list[Layer]:
    """Lungs, mediastinum, heart, aorta, liver, spleen, kidneys, bowel and bladder."""
    H, S, s = pt.hu, pt.suv, pt.s
    A, B = _trunk_at(pt, -450, pt.fat)
    layers = []
    for side in (-1, 1):
        layers.append(Layer(f"lung_{side}", pt.ell((side * 0.45 * A, _TRUNK_CY, -440),
                                                   (0.40 * A, 0.78 * B, 118)), H["lung"], S["lung"]))
    layers.append(Layer("mediastinum", pt.tube([-560, -330], 0, _TRUNK_CY - 10, 0.18 * A, 0.45 * B),
                        H["tissue"], S["tissue"]))
    hc, hr = (0.12 * A, _TRUNK_CY - 0.25 * B, -495), np.array([0.36 * A, 0.45 * B, 55.0])
    layers.append(Layer("heart", pt.ell(hc, hr), H["blood"], S["heart"]))
    layers.append(Layer("heart_cavity", pt.ell(hc, hr - 10.0 / s), H["blood"], S["blood"]))
    az = np.array([-830.0, -700, -560, -340])
    layers.append(Layer("aorta", pt.tube(az, 0.12 * A, [_spine_cy(z) - 26 for z in az], 12, 12),
                        H["blood"], S["blood"]))
    A, B = _trunk_at(pt, -590, pt.fat)
    layers.append(Layer("liver", pt.ell((-0.38 * A, _TRUNK_CY, -590), (0.55 * A, 0.72 * B, 72)),
                        H["liver"], S["liver"]))
    layers.append(Layer("spleen", pt.ell((0.55 * A, _TRUNK_CY + 0.35 * B, -575), (0.17 * A, 0.3 * B, 45)),
                        H["liver"] - 8, S["spleen"]))
    A, B = _trunk_at(pt, -665, pt.fat)
    for side in (-1, 1):
        layers.append(Layer(f"kidney_{side}", pt.ell((side * 0.42 * A, 50, -665), (0.16 * A, 0.26 * B, 50)),
                            H["tissue"] - 5, S["kidney"]))
    A, B = _trunk_at(pt, -740, pt.fat)
    for i in range(int(rng.integers(2, 5))):  # bowel with mild uptake, then gas pockets
        c = (rng.uniform(-0.5, 0.5) * A, _TRUNK_CY + rng.uniform(-0.6, 0.1) * B, rng.uniform(-800, -650))
        layers.append(Layer(f"bowel_{i}", pt.ell(c, rng.uniform(10, 25, 3)), H["tissue"] - 10, S["bowel"]))
    for i in range(int(rng.integers(3, 8))):
        c = (rng.uniform(-0.5, 0.5) * A, _TRUNK_CY + rng.uniform(-0.6, 0.1) * B, rng.uniform(-800, -640))
        layers.append(Layer(f"gas_{i}", pt.ell(c, rng.uniform(6, 18, 3)), -950, 0.0))
    A, B = _trunk_at(pt, -862, pt.fat)
    v = rng.uniform(0.85, 1.1)
    layers.append(Layer("bladder", pt.ell((0, _TRUNK_CY - 0.35 * B, -862), (20 * v, 17 * v, 16 * v)),
                        8, S["bladder"]))
    return layers


def _skeleton_layers(pt: Patient) -> list[Layer]:
    """Spine (vertebrae with disc gaps, canal, arches), ribs, sternum, clavicles, pelvis, femurs."""
    H, S, s = pt.hu, pt.suv, pt.s
    vert = (18.0 * s, 14.0 * s, pt.offset[2])  # period, bone length, phase (mm)
    layers = [Layer("vertebrae", pt.tube(_SPINE_Z, 0, _SPINE_CY, _SPINE_A, _SPINE_B, period=vert),
                    H["spine"], S["marrow"])]
    canal_cy = _SPINE_CY + _SPINE_B + 8
    layers.append(Layer("vertebral_arch", Difference(
        pt.tube(_SPINE_Z[1:], 0, canal_cy[1:], 14, 12, period=vert),
        pt.tube(_SPINE_Z[1:], 0, canal_cy[1:], 8, 7)), H["spine"], S["marrow"]))
    layers.append(Layer("spinal_canal", pt.tube(_SPINE_Z[1:], 0, canal_cy[1:], 8, 7), H["csf"], S["tissue"]))
    # Ribs: slabs of the inner trunk wall.
    ai, bi = _trunk_ab(pt, pt.fat + 2.0)
    ak, bk = _trunk_ab(pt, pt.fat + 11.0)
    keep = (_TRUNK_Z >= -620) & (_TRUNK_Z <= -322)
    zr = np.concatenate([[-620.0], _TRUNK_Z[keep]])
    ir = lambda v: np.interp(zr, _TRUNK_Z, v)  # noqa: E731
    rib_period = (24.0 * s, 9.0 * s, pt.offset[2])  # oblique: the ribs rise toward the spine
    layers.append(Layer("ribs", Difference(
        pt.tube(zr, 0, _TRUNK_CY, ir(ai), ir(bi), period=rib_period, slope=0.5),
        pt.tube(zr, 0, _TRUNK_CY, ir(ak), ir(bk))), H["bone"], S["bone"]))
    A, B = _trunk_at(pt, -420, pt.fat)
    layers.append(Layer("sternum", pt.tube([-520, -335], 0, _TRUNK_CY - B + 8, 16, 6), H["bone"], S["bone"]))
    for side in (-1, 1):
        layers.append(Layer(f"clavicle_{side}", Capsule(pt.p(side * 22, _TRUNK_CY - 0.8 * B, -318),
                                                       pt.p(side * 0.85 * A, _TRUNK_CY - 0.2 * B, -306),
                                                       8 * s), H["bone"], S["bone"]))
    A, B = _trunk_at(pt, -800, pt.fat)
    An, _ = _trunk_at(pt, -900, pt.fat)
    leg_x = 0.5 * float(np.interp(-950, _TRUNK_Z, _trunk_ab(pt)[0]))
    for side in (-1, 1):
        layers += [
            Layer(f"ilium_{side}", pt.ell((side * 0.62 * A, _TRUNK_CY + 0.15 * B, -800), (14, 0.45 * B, 55),
                                          **pt.zclip(-845)), H["bone"], S["marrow"]),
            Layer(f"femoral_head_{side}", pt.ell((side * 0.55 * An, _TRUNK_CY, -900), (24, 24, 24)),
                  H["bone"], S["marrow"]),
            Layer(f"femoral_neck_{side}", Capsule(pt.p(side * 0.55 * An, _TRUNK_CY, -900),
                                                  pt.p(side * (leg_x + 6), _TRUNK_CY, -940), 13 * s),
                  H["bone"], S["marrow"]),
            Layer(f"femur_{side}", pt.tube([-1400, -935], side * (leg_x + 6), _TRUNK_CY, 14, 14),
                  H["bone"], S["marrow"]),
            Layer(f"pubis_{side}", Capsule(pt.p(side * 12, _TRUNK_CY - 0.6 * B, -885),
                                           pt.p(side * 0.45 * An, _TRUNK_CY - 0.2 * B, -880), 9 * s),
                  H["bone"], S["marrow"]),
        ]
    return layers


def _airway_layers(pt: Patient) -> list[Layer]:
    """Pharynx, larynx and trachea (air), then the palatine tonsils that bulge into it."""
    S, H = pt.suv, pt.hu
    layers = [Layer("airway", pt.tube([-400, -300, -230, -140], 0, [0, -8, 6, 10], [9, 9, 10, 12],
                                      [8, 8, 9, 9]), -1000, 0.0)]
    for side in (-1, 1):
        layers.append(Layer(f"tonsil_{side}", pt.ell((side * 15, 2, -168), (7, 9, 12)),
                            H["tissue"] + 5, S["tonsil"]))
    return layers



def _table_layer(pt: Patient, fov_centre_xy: np.ndarray) -> Layer:
    """The CT couch under the patient (invisible on the attenuation-corrected PET)."""
    _, b = _trunk_ab(pt)
    back = pt.offset[1] + pt.s * max(_TRUNK_CY + float(b.max()), 98.0) + 3.0
    return Layer("table", Box([fov_centre_xy[0] - 230, back, -1e5], [fov_centre_xy[0] + 230, back + 8, 1e5]),
                 250, None)


# ----------------------------------------------------------------------------------------------
# Centre styles: arms, neck posture, and the outlines that lesions must respect
# ----------------------------------------------------------------------------------------------

def _arm_layers(pt: Patient) -> list[Layer]:
    """Arms down along the trunk: a fat shell, muscle, humerus with its head at the shoulder and
    the forearm bones. They touch the trunk's sides; on a broad patient they leave the CT's
    reconstruction circle (truncated, as on real scans)."""
    H, S = pt.hu, pt.suv
    a, _ = _trunk_ab(pt)
    z = np.array([-960.0, -880, -640, -420, -345, -318])
    r = np.array([20.0, 25, 31, 38, 42, 30])
    cx = np.interp(z, _TRUNK_Z, a) + 0.85 * r
    cy = _TRUNK_CY + 8.0
    fat = max(3.0, 0.5 * pt.fat / pt.s)
    layers = []
    for side in (-1, 1):
        x = side * cx
        layers += [
            Layer(f"arm_fat_{side}", pt.tube(z, x, cy, r, r), H["fat"], S["fat"]),
            Layer(f"arm_{side}", pt.tube(z, x, cy, r - fat, r - fat), H["tissue"], S["tissue"]),
            Layer(f"humerus_{side}", pt.tube([-640, -350], np.interp([-640, -350], z, x), cy, 10, 10),
                  H["bone"], S["marrow"]),
            Layer(f"humeral_head_{side}", pt.ell((float(np.interp(-338, z, x)), cy, -338), (20, 20, 20)),
                  H["bone"], S["marrow"]),
            Layer(f"forearm_{side}", pt.tube([-880, -650], np.interp([-880, -650], z, x), cy, 9, 7),
                  H["bone"], S["marrow"]),
        ]
    return layers


#: Neck posture (patient frame): the warp is the identity below NECK_BEND_Z[0], a rigid rotation
#: about NECK_PIVOT_YZ above NECK_BEND_Z[1], and bends smoothly in between (the cervical spine).
NECK_PIVOT_YZ = (30.0, -300.0)
NECK_BEND_Z = (-300.0, -190.0)


@dataclass(frozen=True)
class Posture:
    """Flexion (+, chin toward the chest) or extension (-) of the head and neck by ``tilt_deg``
    about the left-right axis: a smooth warp of the (y, z) plane in scanner mm. Shapes are moved by
    :class:`~HNTumorSegLib.phantom.shapes.Warped`; points by :meth:`forward`."""

    tilt_deg: float
    pivot_y: float
    pivot_z: float
    z0: float
    z1: float

    @classmethod
    def of(cls, pt: Patient, tilt_deg: float) -> "Posture":
        p = pt.p(0.0, *NECK_PIVOT_YZ)
        return cls(float(tilt_deg), float(p[1]), float(p[2]), float(pt.offset[2] + pt.s * NECK_BEND_Z[0]),
                   float(pt.offset[2] + pt.s * NECK_BEND_Z[1]))

    @property
    def identity(self) -> bool:
        return self.tilt_deg == 0.0

    def angle(self, z):
        t = np.clip((np.asarray(z, float) - self.z0) / (self.z1 - self.z0), 0.0, 1.0)
        return math.radians(self.tilt_deg) * t * t * (3.0 - 2.0 * t)

    def forward(self, points) -> np.ndarray:
        """Posed positions of patient points (N, 3) or (3,), scanner mm."""
        p = np.array(points, float)
        q = p.reshape(-1, 3).copy()
        a = self.angle(q[:, 2])
        c, s = np.cos(a), np.sin(a)
        dy, dz = q[:, 1] - self.pivot_y, q[:, 2] - self.pivot_z
        q[:, 1] = self.pivot_y + c * dy - s * dz
        q[:, 2] = self.pivot_z + s * dy + c * dz
        return q.reshape(p.shape)

    def inverse(self, y, z, iterations: int = 6):
        """Unposed (y, z) of posed coordinates (broadcast together), by fixed-point iteration:
        the angle varies slowly with z, so a few steps converge to well under 0.1 mm."""
        dy, dz = y - self.pivot_y, z - self.pivot_z
        y0, z0 = y, z
        for _ in range(iterations):
            a = self.angle(z0)
            c, s = np.cos(a), np.sin(a)
            y0 = self.pivot_y + c * dy + s * dz
            z0 = self.pivot_z - s * dy + c * dz
        return y0, z0

    def layers(self, layers: list[Layer]) -> list[Layer]:
        """The layers in this posture (those wholly below the bend unchanged)."""
        if self.identity:
            return list(layers)
        out = []
        for layer in layers:
            if layer.shape.bounds()[1][2] <= self.z0:
                out.append(layer)
            else:
                out.append(Layer(layer.name, Warped(layer.shape, self), layer.hu, layer.suv, layer.label))
        return out

    def summary(self) -> dict:
        return {"tilt_deg": self.tilt_deg, "pivot_yz_mm": [self.pivot_y, self.pivot_z],
                "bend_z_mm": [self.z0, self.z1]}


def _skin_shapes(pt: Patient) -> list[Shape]:
    """The body outline above the pelvis (trunk, neck, lower face, head): lesions stay inside."""
    keep = ("trunk_fat", "neck_fat", "face", "head")
    return [layer.shape for layer in _body_layers(pt) if layer.name in keep]


def _no_go_shapes(pt: Patient, mandible: bool = True) -> list[Shape]:
    """Where a lesion must not reach: the vertebral bodies and arches, the brain and (unless
    ``mandible`` is False: a primary may invade it) the mandible's body."""
    canal_cy = _SPINE_CY + _SPINE_B + 8
    shapes = [pt.tube(_SPINE_Z, 0, _SPINE_CY, _SPINE_A, _SPINE_B),
              pt.tube(_SPINE_Z[1:], 0, canal_cy[1:], 14, 12),
              pt.ell(BRAIN_CENTRE, BRAIN_SEMI, **pt.zclip(BRAIN_ZMIN))]
    if mandible:
        zm = -216.0
        fa, fb, fcy = (float(np.interp(zm, _FACE_Z, v)) for v in (_FACE_A, _FACE_B, _FACE_CY))
        shapes.append(Difference(pt.tube([zm - 10, zm + 10], 0, fcy, fa - 4, fb - 4,
                                         clip_hi=[_INF, pt.offset[1] + pt.s * (fcy + 5), _INF]),
                                 pt.tube([zm - 10, zm + 10], 0, fcy, fa - 11, fb - 11)))
    return shapes


def _dental_arch(pt: Patient) -> tuple[float, float, float, float]:
    """The teeth ring of :func:`_head_layers` (patient frame): z, centre y, mid-ring half-axes."""
    zt = -193.0
    ta, tb, tcy = (float(np.interp(zt, _FACE_Z, v)) for v in (_FACE_A, _FACE_B, _FACE_CY))
    return zt, tcy, ta - 15.5, tb - 15.5


def _inside_any(shapes: list[Shape], points: np.ndarray) -> np.ndarray:
    """For points (N, 3) in scanner mm: inside at least one of the shapes."""
    x, y, z = points[:, 0], points[:, 1], points[:, 2]
    out = np.zeros(len(points), bool)
    for shape in shapes:
        out |= np.asarray(shape.inside(x, y, z), bool)
    return out
