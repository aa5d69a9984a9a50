"""One click, one correction: add the lesion at a point, remove it, or switch it between GTVp and GTVn.

Why: the errors a model makes on PET/CT are of a few kinds (a missed node, a false positive on
physiological uptake, a primary labelled as a node or the reverse), and each is one lesion. A
radiation oncologist fixes each with one click where a voxel-painting tool takes dozens of strokes.

- **add**: the region around the click above ``fraction`` of the local SUVmax over the local
  background (41 %, the clinical threshold, background-corrected), grown from the hottest voxel
  within :data:`SEEK_MM` of the click, kept within ``radius_mm`` of it, 26-connected to it, its
  enclosed holes filled; added to the chosen structure. Voxels of other lesions are left as they
  are (the other structure is never overwritten). The radius depends on the structure
  (:data:`DEFAULT_RADIUS_MM`): primaries reach further than nodes.

  Why per structure: on 12 unseen phantoms (38 lesions, each grown from its SUVmax voxel), a
  25 mm radius cut large primaries short (one of 37 mL at Dice 0.56) and 45 mm drew primaries at
  mean Dice 0.94 against 0.90; for nodes the wider reach ran into neighbouring uptake (0.71 at
  25 mm, 0.69 at 35 mm, 0.69 at 45 mm).

  Why background-corrected: a weak node (SUVmax 2-4 over a background near 0.6-0.8) has 41 % of
  its SUVmax below or close to the background, so the plain fixed threshold runs into the tissue
  around it. The threshold ``background + fraction * (SUVmax - background)`` (the
  source-to-background form of the fixed threshold) is the same rule where the background is
  negligible and holds on weak nodes: per lesion, from the SUVmax voxel, on 8 unseen phantoms of
  four styles, node Dice rose from 0.68 to 0.76 (median 0.83 to 0.92) and primaries held (0.92 to
  0.93). Why filled: a necrotic (cold) core is part of the GTV, as the contouring guidelines draw it.
  A node (GTVn) is drawn by the click model instead where the CT is given (:func:`draw_region`,
  :mod:`.click_model`): a network that sees the CT and PET around the click draws nodes the threshold cannot
  (small, weak, matted ones); ``method="threshold"`` keeps the threshold for them too.
- **remove**: the lesion (26-connected component, as HECKTOR counts them) under the click goes.
- **relabel**: the lesion under the click switches GTVp <-> GTVn (or to the structure named);
- **redraw**: the lesion under the click is replaced by the PET-avid region there (as *add* draws
  it): a boundary too tight or too wide, in one click.

A click that lands just beside a lesion (within :data:`TOLERANCE_MM`) takes the nearest lesion. Points
are patient coordinates in mm, LPS as in DICOM and SimpleITK. Every function returns a new label
image on the same grid and says what it did; a click that cannot act is an :class:`InputError`
naming the point.
"""

from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import SimpleITK as sitk

from HNTumorSegLib import LABELS
from HNTumorSegLib.errors import InputError
from HNTumorSegLib.evaluation.metrics import values_in_box
from HNTumorSegLib.imaging.components import MM_NOISE, deepest_voxel, distance_to, lesion_ids
from HNTumorSegLib.imaging.geometry import Geometry, outside_buffer

#: Fraction of the local SUVmax that bounds an added lesion (the clinical 41 % fixed threshold).
DEFAULT_FRACTION = 0.41
#: An added or redrawn lesion stays within this distance (mm) of its hottest voxel, by structure.
DEFAULT_RADIUS_MM = {"GTVp": 45.0, "GTVn": 25.0}
#: The hottest voxel is sought within this distance (mm) of the click: clicks land near, not on, the peak.
SEEK_MM = 6.0
#: Beside other lesions, the peak of an added region is sought this far (mm) from them: their blur is not
#: the uptake clicked on (see :func:`avid_region`).
CLEAR_MM = 3.0
#: A region that shrinks below 1 / LEAK_RATIO of its volume when the fraction rises by LEAK_STEP had leaked.
LEAK_STEP = 0.04
LEAK_STEPS = 6
LEAK_RATIO = 2.0
#: The local background is the median SUV in a shell this thick (mm) just beyond ``radius_mm`` of the peak.
BACKGROUND_SHELL_MM = 10.0
#: How an add or a redraw draws: "auto" (the click model where one draws the structure and the CT is given,
#: else the threshold), "threshold" (:func:`avid_region`) or "network" (:mod:`.click_model`; an error where none can).
METHODS = ("auto", "threshold", "network")
#: A remove/relabel click within this distance (mm) of a lesion takes that lesion.
TOLERANCE_MM = 5.0
STRUCTURES = {name: value for value, name in LABELS.items()}


@dataclass(frozen=True)
class Edit:
    """A corrected label image and what the click did."""

    label: sitk.Image
    action: str  # "add", "remove", "relabel" or "redraw"
    structure: str  # the structure the lesion belongs to after the edit ("" after a removal)
    voxels: int  # voxels changed
    point_mm: tuple[float, float, float]
    message: str
    #: What drew an added or redrawn lesion: "threshold" or "click model <name>"; "" for a removal or a relabel.
    drawn_by: str = ""


def structure_value(name: str | int) -> int:
    """"GTVp"/"gtvn"/1/2 to the label value; anything else is an InputError."""
    if isinstance(name, int) or str(name).isdigit():
        value = int(name)
        if value in LABELS:
            return value
    else:
        for key, value in STRUCTURES.items():
            if key.lower() == str(name).lower():
                return value
    raise InputError(f"unknown structure {name!r}: use {' or '.join(STRUCTURES)}")


def _index_of(label: sitk.Image, point_mm: Sequence[float]) -> np.ndarray:
    """(z, y, x) voxel index of a patient point; an InputError when it lies outside the label's grid.

    The voxels' faces belong to the grid (both outer faces alike), and a point on a face between two voxels
    takes the one toward the patient's +L, +P, +S side, however the grid is stored (flipped or not): the
    same click gives the same voxel on a volume and on its flipped copy.
    """
    geometry = Geometry.of(label)
    continuous = geometry.point_to_index(point_mm)
    size = np.array(label.GetSize())
    if not np.all(np.isfinite(continuous)) or np.any(continuous < -0.5 - _FACE) or np.any(continuous > size - 0.5 + _FACE):
        raise InputError(f"point {_fmt(point_mm)} mm lies outside the label map's grid")
    direction = np.asarray(geometry.direction, float).reshape(3, 3)
    toward_plus = np.array([direction[np.argmax(np.abs(direction[:, k])), k] > 0 for k in range(3)])
    index = np.where(toward_plus, np.floor(continuous + 0.5), np.ceil(continuous - 0.5))
    return np.clip(index, 0, size - 1).astype(int)[::-1]


#: How far (in voxels) a point may lie beyond a face and still be on it: rounding of millimetres typed in.
_FACE = 1e-6


def _fmt(point: Sequence[float]) -> str:
    return "(" + ", ".join(f"{v:.1f}" for v in point) + ")"


def _ball(shape: Sequence[int], centre: Sequence[float], spacing_zyx: Sequence[float], radius_mm: float) -> np.ndarray:
    """Voxels of a (z, y, x) grid whose centres lie within ``radius_mm`` of ``centre`` (an index)."""
    axes = [(np.arange(n) - c) * s for n, c, s in zip(shape, centre, spacing_zyx)]
    z, y, x = np.meshgrid(*axes, indexing="ij", sparse=True)
    return z * z + y * y + x * x <= radius_mm * radius_mm


def _box_around(label: sitk.Image, index_zyx: np.ndarray, radius_mm: float) -> tuple[np.ndarray, np.ndarray]:
    """Start and end (z, y, x) of the voxels within ``radius_mm`` of ``index_zyx`` along each axis, clipped."""
    spacing_zyx = np.array(label.GetSpacing()[::-1])
    size_zyx = np.array(label.GetSize()[::-1])
    reach = np.ceil(np.minimum(radius_mm / spacing_zyx, size_zyx)).astype(int)  # a box no larger than the grid
    lo = np.maximum(index_zyx - reach, 0)
    hi = np.minimum(index_zyx + reach + 1, np.array(label.GetSize()[::-1]))
    return lo, hi


def _replaced(label: sitk.Image, array: np.ndarray) -> sitk.Image:
    out = sitk.GetImageFromArray(array)
    out.CopyInformation(label)
    return out


class AvidRegion(NamedTuple):
    """The PET-avid region at a click (a mask on the label's grid), the SUVmax it was grown from, the
    background SUV under its threshold and the fraction it was drawn at."""

    mask: np.ndarray
    peak_suv: float
    floor: float
    fraction: float


def avid_region(label: sitk.Image, pet: sitk.Image, point_mm: Sequence[float], fraction: float = DEFAULT_FRACTION,
                radius_mm: float = DEFAULT_RADIUS_MM["GTVn"], background: bool = True,
                free: np.ndarray | None = None) -> AvidRegion:
    """The PET-avid region at a click, the SUVmax it was grown from, the background SUV under its
    threshold and the fraction it was drawn at.

    From the hottest voxel within :data:`SEEK_MM` of the click: the voxels at or above
    ``background + fraction * (SUVmax - background)``, within ``radius_mm`` of it, 26-connected to
    it, with enclosed holes filled. ``background``: the median SUV in a :data:`BACKGROUND_SHELL_MM`
    shell beyond ``radius_mm`` of the peak; ``background=False`` takes 0 (the plain fraction of
    SUVmax). ``pet`` in SUV on any grid covering the point (resampled linearly onto the label's grid).

    Leaks: where, within :data:`LEAK_STEPS` steps of :data:`LEAK_STEP` above ``fraction``, the region
    shrinks to less than 1 / :data:`LEAK_RATIO` of its volume in one step, it had run into the uptake
    beside it (physiological uptake, another node) through a narrow bridge, and the region after the
    (last such) step is taken. Why: on the 38 lesions of 12 unseen phantoms, each grown from its SUVmax
    voxel, one weak 1 mL node was drawn as 1.7 mL at 41 % and 45 % (Dice 0.34) and as 0.33 mL at 49 %
    (0.89); no other lesion shrank by more than 1 / 1.35 in a step between 41 % and 65 %.

    ``free`` (a mask on the label's grid, None: everywhere): the voxels the peak is sought in and the
    region grows through; the peak is sought at least :data:`CLEAR_MM` from voxels that are not free
    where any lie within :data:`SEEK_MM` of the click, and the region is what of the threshold region lies
    within :data:`CLEAR_MM` of its part that far from them. Why: a click on the uncontoured one of two
    matted nodes, one hot and one weak, means the weak one. Sought everywhere, the peak was the hot
    node's (already contoured, a few mm away) and the click added nothing; sought among free voxels
    alone, it was the hot node's blur just outside its contour, hotter than the weak node, and the
    region was a shell around the hot node.
    """
    check_fraction(fraction)
    click = _index_of(label, point_mm)
    spacing_zyx = np.array(label.GetSpacing()[::-1])
    lo, hi = _box_around(label, click, radius_mm + SEEK_MM + (BACKGROUND_SHELL_MM if background else 0.0))
    box = Geometry.of(label).subgrid(lo[::-1].tolist(), (hi - lo)[::-1].tolist())
    suv = values_in_box(pet, box)
    allowed = np.ones(suv.shape, bool) if free is None else free[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    near = _ball(suv.shape, click - lo, spacing_zyx, SEEK_MM) & allowed
    if not near.any():
        raise InputError(f"nothing to add at {_fmt(point_mm)} mm: every voxel within {SEEK_MM:g} mm is in a lesion already")
    clear = allowed if allowed.all() else distance_to(~allowed, spacing_zyx) >= CLEAR_MM - MM_NOISE
    if (near & clear).any():
        near &= clear
    peak = np.array(np.unravel_index(np.argmax(np.where(near, suv, -np.inf)), suv.shape))
    peak_suv = float(suv[tuple(peak)])
    reach = _ball(suv.shape, peak, spacing_zyx, radius_mm)
    floor = 0.0
    if background:
        # Only voxels the PET measured: beyond its field of view the resampling's 0 is no background.
        outside = outside_buffer(pet, box)
        shell = _ball(suv.shape, peak, spacing_zyx, radius_mm + BACKGROUND_SHELL_MM) & ~reach
        if outside is not None:
            shell &= ~outside
        floor = float(np.median(suv[shell])) if shell.any() else 0.0
    if not peak_suv > floor:
        raise InputError(f"no PET uptake above the background near {_fmt(point_mm)} mm (SUVmax {peak_suv:.2f} "
                         f"within {SEEK_MM:g} mm, background {floor:.2f})")
    near_lesions = bool(clear[tuple(peak)]) and not clear.all()  # a peak kept clear of lesions beside it

    def grown(at: float) -> np.ndarray:
        above = (suv >= floor + at * (peak_suv - floor)) & reach & allowed
        ids, _ = lesion_ids(above)
        region = ids == ids[tuple(peak)]
        if near_lesions:
            core_ids, _ = lesion_ids(above & clear)
            region &= distance_to(core_ids == core_ids[tuple(peak)], spacing_zyx) <= CLEAR_MM + MM_NOISE
        return region

    used, region = fraction, grown(fraction)
    previous = np.count_nonzero(region)
    for step in range(1, LEAK_STEPS + 1):  # a region that ran into the uptake beside it: cut the bridge
        at = fraction + step * LEAK_STEP
        if at >= 1.0:
            break
        tighter = grown(at)
        size = np.count_nonzero(tighter)
        if previous > LEAK_RATIO * size:
            used, region = at, tighter
        previous = size
    filled = sitk.BinaryFillhole(sitk.GetImageFromArray(region.astype(np.uint8)), fullyConnected=False, foregroundValue=1)
    mask = np.zeros(label.GetSize()[::-1], bool)
    mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = sitk.GetArrayFromImage(filled) > 0
    return AvidRegion(mask, peak_suv, floor, used)


class Drawn(NamedTuple):
    """The region an add or a redraw puts in (a mask on the label's grid) and how it was drawn, in words."""

    mask: np.ndarray
    words: str
    by: str  # "threshold" or "click model <name>" (Edit.drawn_by)


def draw_region(label: sitk.Image, pet: sitk.Image, point_mm: Sequence[float], value: int, fraction: float,
                radius_mm: float, background: bool, free: np.ndarray | None, ct: sitk.Image | None = None,
                method: str = "auto", click_model: str | os.PathLike | None = None) -> Drawn:
    """The lesion of structure ``value`` at a click, drawn by the click model or by the threshold (``method``,
    :data:`METHODS`); ``free`` as for :func:`avid_region`. ``click_model``: the click model file (its JSON) to
    draw with, None for the bundled one (a researcher's own, trained with ``hntumorseg-train click-model``).

    Why the click model for nodes: drawn from their SUVmax voxel, 26 nodes of 12 unseen phantoms had a mean Dice
    of 0.74 by the threshold (0.79 with the best fraction chosen per node, knowing the reference) and higher by the
    network (see :mod:`.click_model` and the README's figures). "auto" falls back to the threshold where the
    network cannot run: no CT given, a structure no click model draws, torch not installed (the Slicer module
    before its first segmentation).
    """
    if method not in METHODS:
        raise InputError(f"unknown drawing method {method!r}: use {', '.join(METHODS)}")
    pet_index = Geometry.of(pet).point_to_index(point_mm)  # ITK's rule: half a voxel beyond the outer centres
    if np.any(pet_index < -0.5 - 1e-6) or np.any(pet_index > np.asarray(pet.GetSize()[:3]) - 0.5 + 1e-6):
        # Why: there the resampled PET is padding, and the add said "no PET uptake above the background".
        raise InputError(f"the point {_fmt(point_mm)} mm lies outside the PET's field of view: no uptake there to "
                         "draw from")
    model = _click_model_for(value, ct, method, click_model)
    if model is None:
        drawn = avid_region(label, pet, point_mm, fraction, radius_mm, background, free=free)
        return Drawn(drawn.mask, _threshold_words(fraction, drawn, radius_mm), "threshold")
    # Where it sees no lesion the threshold is not tried in its place: on the benchmark that add leaked into the
    # uptake beside the node (GTVn after 3 clicks 0.780 without that fallback, 0.767 with it); the user may still.
    return Drawn(_network_region(model, label, ct, pet, point_mm, free), f"drawn by the click model {model.name}",
                 f"click model {model.name}")


def _click_model_for(value: int, ct: sitk.Image | None, method: str, path: str | os.PathLike | None = None):
    """The click model to draw ``value`` with (the file at ``path``, default the bundled one), or None for the
    threshold (an InputError where "network" cannot)."""
    if method == "threshold":
        return None
    from HNTumorSegLib.editing.click_model import load_click_model

    def refuse(why: str) -> None:
        if method == "network":
            raise InputError(f"cannot draw with the click model: {why}")

    if ct is None:
        return refuse("it needs the CT")
    if importlib.util.find_spec("torch") is None:  # the Slicer module, before its first segmentation installs it
        return refuse("torch is not installed")
    model = load_click_model() if path is None else load_click_model(os.path.abspath(path))  # links kept (see edit)
    if model.structure != LABELS[value]:
        return refuse(f"it draws {model.structure}, not {LABELS[value]}")
    return model


def _network_region(model, label: sitk.Image, ct: sitk.Image, pet: sitk.Image, point_mm: Sequence[float],
                    free: np.ndarray | None) -> np.ndarray:
    """The click model's lesion at the click on the label's grid: its part in ``free`` voxels connected to the
    click (or, where the click is not on it, the part nearest the click within :data:`SEEK_MM`), holes filled.

    Seen twice: from the click, then from the centre of what that drew (its deepest voxel), the two
    probabilities averaged. Why: the network draws a node best from a crop centred on it (its training's "deep"
    clicks; from the centre 0.847 mean node Dice, from the SUVmax voxel 0.806, 50 nodes of 24 phantoms, seeds
    920000-920023), and a user clicks where they look, often the hottest voxel; the second view moves the crop
    to the node. The mean of both, not the second alone: from the peak 0.806 -> 0.818 (the second alone 0.814),
    from the centre 0.847 -> 0.848 (the second alone 0.841: the first view, centred, is as good). It costs one
    more pass of the network (about 0.3-0.5 s on a 2-core CPU)."""
    from HNTumorSegLib.editing.click_model import CROP_SPACING_MM, CROP_VOXELS

    click = _index_of(label, point_mm)
    lo, hi = _box_around(label, click, CROP_SPACING_MM * CROP_VOXELS / 2)
    box = Geometry.of(label).subgrid(lo[::-1].tolist(), (hi - lo)[::-1].tolist())
    spacing_zyx = np.array(label.GetSpacing()[::-1])
    free_box = None if free is None else free[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    at = click - lo  # the click's index in the box
    probability = model.probability(ct, pet, box, point_mm)
    first = _part_at(probability, at, spacing_zyx, free_box)
    if first is None:
        raise InputError(f"the click model {model.name} finds no lesion within {SEEK_MM:g} mm of {_fmt(point_mm)} mm: "
                         "click on the node, or draw it with the threshold (edit --method threshold; in Slicer, "
                         "uncheck the click model)")
    centre = np.asarray(deepest_voxel(first, spacing_zyx)) + lo
    centre_mm = label.TransformIndexToPhysicalPoint(tuple(int(i) for i in centre[::-1]))
    both = _part_at((probability + model.probability(ct, pet, box, centre_mm)) / 2, at, spacing_zyx, free_box)
    drawn = first if both is None else both  # the mean may fall below 1/2 near the click: the first view stands
    filled = sitk.BinaryFillhole(sitk.GetImageFromArray(drawn.astype(np.uint8)), fullyConnected=False,
                                 foregroundValue=1)
    mask = np.zeros(label.GetSize()[::-1], bool)
    mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = sitk.GetArrayFromImage(filled) > 0
    return mask


def _part_at(probability: np.ndarray, click: np.ndarray, spacing_zyx: np.ndarray,
             free: np.ndarray | None) -> np.ndarray | None:
    """The component of ``probability >= 0.5`` (within ``free``) at the ``click`` index, or the one nearest it within
    :data:`SEEK_MM`; None where there is none."""
    region = probability >= 0.5
    if free is not None:
        region &= free
    near = _ball(region.shape, click, spacing_zyx, SEEK_MM) & region
    if not near.any():
        return None
    ids, _ = lesion_ids(region)
    return ids == ids[_nearest_voxel(near, click, spacing_zyx)]  # the click's own voxel where it is on the region


def check_fraction(fraction: float) -> None:
    """An InputError unless 0 < ``fraction`` < 1."""
    if not 0.0 < fraction < 1.0:
        raise InputError(f"threshold fraction {fraction} must lie between 0 and 1 (0.41 is the clinical default)")


def radius_for(value: int, radius_mm: float | None) -> float:
    """``radius_mm``, or the structure's default (:data:`DEFAULT_RADIUS_MM`) when it is None."""
    if radius_mm is None:
        return DEFAULT_RADIUS_MM[LABELS[value]]
    if not (radius_mm > 0 and np.isfinite(radius_mm)):
        raise InputError(f"radius {radius_mm} mm must be a positive number of millimetres")
    return float(radius_mm)


def _threshold_words(fraction: float, drawn: AvidRegion, radius_mm: float) -> str:
    over = f" over background {drawn.floor:.2f}" if drawn.floor else ""
    raised = (f" (raised from {fraction:.0%}: the region ran into the uptake beside it)"
              if drawn.fraction > fraction + 1e-9 else "")
    return f"voxels >= {drawn.fraction:.0%} of SUVmax {drawn.peak_suv:.2f}{over} within {radius_mm:g} mm{raised}"


def add_lesion(label: sitk.Image, pet: sitk.Image, point_mm: Sequence[float], structure: str | int,
               fraction: float = DEFAULT_FRACTION, radius_mm: float | None = None,
               background: bool = True, ct: sitk.Image | None = None, method: str = "auto",
               click_model: str | os.PathLike | None = None) -> Edit:
    """Add the lesion at ``point_mm`` (:func:`draw_region`: the click model, or the PET-avid region of
    :func:`avid_region`) to ``structure``; other lesions stay. ``radius_mm`` None: the structure's default
    (:data:`DEFAULT_RADIUS_MM`)."""
    value = structure_value(structure)
    radius_mm = radius_for(value, radius_mm)
    array = sitk.GetArrayFromImage(label)
    nearest = _nearest_lesion_voxel(array, label, point_mm, CLEAR_MM)
    at = 0 if nearest is None else int(array[nearest])
    if at not in (0, value):  # the region would be what lies around that lesion: a shell of fragments
        raise InputError(f"the point {_fmt(point_mm)} mm is on a {LABELS[at]} lesion (or within {CLEAR_MM:g} mm of "
                         f"it): relabel it to make it {LABELS[value]}, or click on the uptake you mean, "
                         f"{CLEAR_MM:g} mm or more from it")
    # Away from every lesion: the uptake there, not that of a lesion beside it. On (or at) a lesion of this
    # structure: what of its PET-avid region is still uncontoured.
    free = array == 0 if at == 0 else None
    drawn = draw_region(label, pet, point_mm, value, fraction, radius_mm, background, free, ct, method, click_model)
    grow = drawn.mask & (array == 0)  # other lesions, of either structure, stay as they are
    voxels = int(grow.sum())
    if voxels == 0:
        raise InputError(f"nothing to add at {_fmt(point_mm)} mm: the region ({drawn.words}) is already segmented")
    array[grow] = value
    ml = voxels * float(np.prod(label.GetSpacing())) / 1000.0
    return Edit(_replaced(label, array), "add", LABELS[value], voxels, tuple(float(v) for v in point_mm),
                f"added {ml:.2f} mL to {LABELS[value]} at {_fmt(point_mm)} mm: {drawn.words}", drawn.by)


def redraw_lesion(label: sitk.Image, pet: sitk.Image, point_mm: Sequence[float], fraction: float = DEFAULT_FRACTION,
                  radius_mm: float | None = None, tolerance_mm: float = TOLERANCE_MM,
                  background: bool = True, ct: sitk.Image | None = None, method: str = "auto",
                  click_model: str | os.PathLike | None = None) -> Edit:
    """Replace the lesion at ``point_mm`` by the PET-avid region there (:func:`avid_region`): a boundary too
    tight or too wide, fixed in one click. The lesion keeps its structure; the other structure is untouched.
    ``radius_mm`` None: the lesion's structure's default (:data:`DEFAULT_RADIUS_MM`)."""
    array = sitk.GetArrayFromImage(label)
    lesion, value = _lesion_at(array, label, point_mm, tolerance_mm)
    radius_mm = radius_for(value, radius_mm)
    drawn = draw_region(label, pet, point_mm, value, fraction, radius_mm, background, (array == 0) | lesion, ct, method,
                        click_model)
    region = drawn.mask
    before = array.copy()
    array[lesion] = 0
    array[region & (array == 0)] = value
    voxels = int(np.count_nonzero(array != before))
    ml = float(np.count_nonzero(array[region] == value)) * float(np.prod(label.GetSpacing())) / 1000.0
    return Edit(_replaced(label, array), "redraw", LABELS[value], voxels, tuple(float(v) for v in point_mm),
                f"redrew the {LABELS[value]} lesion at {_fmt(point_mm)} mm as {ml:.2f} mL: {drawn.words}", drawn.by)


def _lesion_at(array: np.ndarray, label: sitk.Image, point_mm: Sequence[float],
               tolerance_mm: float) -> tuple[np.ndarray, int]:
    """The mask of the lesion under (or within ``tolerance_mm`` of) the point, and its structure's value."""
    hit = _nearest_lesion_voxel(array, label, point_mm, tolerance_mm)
    if hit is None:
        raise InputError(f"no lesion at {_fmt(point_mm)} mm (none within {tolerance_mm:g} mm)")
    value = int(array[hit])
    same = array == value
    # components within the structure's bounding box only (a whole CT grid takes far longer)
    present = np.nonzero(same)
    start = [int(a.min()) for a in present]
    end = [int(a.max()) + 1 for a in present]
    ids, _ = lesion_ids(same[start[0]:end[0], start[1]:end[1], start[2]:end[2]])
    lesion = np.zeros_like(same)
    local = tuple(int(h - s) for h, s in zip(hit, start))
    lesion[start[0]:end[0], start[1]:end[1], start[2]:end[2]] = ids == ids[local]
    return lesion, value


def _nearest_lesion_voxel(array: np.ndarray, label: sitk.Image, point_mm: Sequence[float],
                          radius_mm: float) -> tuple[int, int, int] | None:
    """(z, y, x) of the lesion voxel nearest the point within ``radius_mm`` (None: none there)."""
    click = _index_of(label, point_mm)
    lo, hi = _box_around(label, click, radius_mm)
    window = array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    spacing_zyx = np.array(label.GetSpacing()[::-1])
    inside = (window > 0) & _ball(window.shape, click - lo, spacing_zyx, radius_mm)
    if not inside.any():
        return None
    return tuple(int(v) for v in np.add(_nearest_voxel(inside, click - lo, spacing_zyx), lo))


def _nearest_voxel(mask: np.ndarray, index: Sequence[int], spacing_zyx: Sequence[float]) -> tuple[int, int, int]:
    """(z, y, x) of the voxel of ``mask`` (not empty) nearest voxel ``index`` in mm (the first of equals)."""
    candidates = np.argwhere(mask)
    distances = np.linalg.norm((candidates - np.asarray(index)) * np.asarray(spacing_zyx), axis=1)
    return tuple(int(v) for v in candidates[np.argmin(distances)])


def remove_lesion(label: sitk.Image, point_mm: Sequence[float], tolerance_mm: float = TOLERANCE_MM) -> Edit:
    """Remove the lesion at ``point_mm``."""
    array = sitk.GetArrayFromImage(label)
    lesion, value = _lesion_at(array, label, point_mm, tolerance_mm)
    array[lesion] = 0
    voxels = int(lesion.sum())
    ml = voxels * float(np.prod(label.GetSpacing())) / 1000.0
    return Edit(_replaced(label, array), "remove", "", voxels, tuple(float(v) for v in point_mm),
                f"removed a {ml:.2f} mL {LABELS[value]} lesion at {_fmt(point_mm)} mm")


def relabel_lesion(label: sitk.Image, point_mm: Sequence[float], structure: str | int | None = None,
                   tolerance_mm: float = TOLERANCE_MM) -> Edit:
    """Switch the lesion at ``point_mm`` to ``structure`` (None: to the other one of GTVp/GTVn)."""
    array = sitk.GetArrayFromImage(label)
    lesion, value = _lesion_at(array, label, point_mm, tolerance_mm)
    target = structure_value(structure) if structure is not None else next(v for v in LABELS if v != value)
    if target == value:
        raise InputError(f"the lesion at {_fmt(point_mm)} mm is {LABELS[value]} already")
    array[lesion] = target
    voxels = int(lesion.sum())
    ml = voxels * float(np.prod(label.GetSpacing())) / 1000.0
    return Edit(_replaced(label, array), "relabel", LABELS[target], voxels, tuple(float(v) for v in point_mm),
                f"relabelled a {ml:.2f} mL lesion at {_fmt(point_mm)} mm from {LABELS[value]} to {LABELS[target]}")


#: The clicks :func:`edit_at` knows.
ACTIONS = ("add", "remove", "relabel", "redraw")


def edit_at(label: sitk.Image, pet: sitk.Image, action: str, point_mm: Sequence[float],
            structure: str | int | None = None, fraction: float = DEFAULT_FRACTION,
            radius_mm: float | None = None, background: bool = True, ct: sitk.Image | None = None,
            method: str = "auto", click_model: str | os.PathLike | None = None) -> Edit:
    """One click by name, as the command line, the module and the simulated editor make it.

    ``structure``: the structure to add to ("add"), the one to switch to ("relabel"; None: the other);
    ignored by "remove" and "redraw". ``fraction``, ``radius_mm`` and ``background`` bound "add" and
    "redraw" where the threshold draws (:func:`avid_region`); ``radius_mm`` None takes the structure's default.
    ``ct``, ``method`` and ``click_model``: see :func:`draw_region`.
    """
    if action == "add":
        return add_lesion(label, pet, point_mm, structure, fraction, radius_mm, background, ct, method, click_model)
    if action == "remove":
        return remove_lesion(label, point_mm)
    if action == "relabel":
        return relabel_lesion(label, point_mm, structure)
    if action == "redraw":
        return redraw_lesion(label, pet, point_mm, fraction, radius_mm, background=background, ct=ct, method=method,
                             click_model=click_model)
    raise ValueError(f"unknown click action {action!r}; known: {', '.join(ACTIONS)}")
