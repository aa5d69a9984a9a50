"""A simulated editor: clicks the worst remaining error, as interactive challenges (autoPET IV/V) score tools.

Why: "Dice after k clicks" measures what an oncologist's corrections cost with our editing tools,
and it needs a user who clicks the same way every time. Against a reference label map, each
remaining error is one lesion, and one click fixes it:

- a **missed** reference lesion (no voxel of it predicted as its structure, and none as the other
  structure either) -> *add* at its SUVmax voxel, to its structure;
- a **false-positive** predicted lesion (no voxel of it in the reference) -> *remove* at its hottest voxel;
- a **mislabelled** predicted lesion (more of it in the other structure's reference than in its
  own) -> *relabel* at its hottest voxel;
- a **missed part** of a reference lesion that a predicted lesion touches (a blob of it predicted as
  nothing, at least :data:`MISSED_PART_MM` thick: the weak one of two matted nodes, the half of a node
  the model left out) -> *add* at the blob's centre (its deepest voxel), to the lesion's structure;
- a **badly drawn** predicted lesion (Dice below :data:`REDRAW_BELOW` against the reference voxels of
  its structure that it touches) -> *redraw* at the hottest voxel they share.

Why the missed part: HECKTOR's reference draws matted nodes as one lesion, and the model (or a
first click) often takes the hot node alone. An editor clicks on the part that is left out, not on
the hot node again (a redraw there draws the hot node again); clicks at the centre of the largest
missed region are also how the interactive challenges place their corrective clicks.

The worst error is the one whose voxels at stake (the missed lesion's, the false positive's, the mislabelled
overlap's, the badly drawn lesion's disagreement) are the largest share of their structure in the case (its
predicted and reference voxels together): what the click can change in that structure's Dice, the per-case,
per-structure measure the editor is judged by (a relabel counts in both structures). Why not the raw count: on
24 unseen phantoms, a missed 1177-voxel primary (its Dice 0) waited behind a 2356-voxel node add and a
1702-voxel node redraw, and a 120-voxel primary drawn at 0.65 was never clicked; by shares the primary comes
first (mean Dice after 3 clicks, GTVp / GTVn: 0.813 / 0.840 by voxels, 0.908 / 0.829 by shares). The
simulated user does not know whether a redraw will be better; a benchmark judges that after the click (and
may undo, at a cost).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from HNTumorSegLib import LABELS
from HNTumorSegLib.editing.clicks import Edit, edit_at
from HNTumorSegLib.evaluation.metrics import values_in_box
from HNTumorSegLib.imaging.components import MM_NOISE, deepest_voxel, depth_in_box, lesion_ids
from HNTumorSegLib.imaging.geometry import Geometry


#: A predicted lesion whose Dice against the reference it touches is below this gets a redraw click. Why 0.9
#: (0.8 before): the threshold draws primaries at a mean Dice of 0.94 per lesion, so an editor who accepts 0.85
#: leaves better contours one click away; a redraw that turns out worse is undone (a benchmark's rule).
REDRAW_BELOW = 0.9
#: A missed part of a touched reference lesion gets its own add click when it is at least this thick
#: (the largest distance, mm, from its inside to its edge): thinner misses are a boundary, for redraw.
MISSED_PART_MM = 3.0
#: Where a click on a lesion goes: its SUVmax voxel ("peak", where a PET reader looks first), or its centre, the
#: voxel farthest from its edge ("centre", autoPET IV's simulated clicks). A missed part is clicked at its centre
#: either way. Why both: a lesion's SUVmax voxel can be its hot neighbour's spill (a weak node beside a hot one,
#: the weak one of matted nodes), where a click asks for the neighbour; a reader clicks such a lesion inside.
CLICK_PLACES = ("peak", "centre")


@dataclass(frozen=True)
class Click:
    """One simulated click: what to do, where (LPS mm), to which structure, and how many voxels it is about."""

    action: str  # "add", "remove", "relabel" or "redraw"
    point_mm: tuple[float, float, float]
    structure: str  # for "add": the structure to add to; otherwise the lesion's current structure
    voxels_at_stake: int


def _hottest(mask: np.ndarray, suv: np.ndarray) -> tuple[int, int, int]:
    """(z, y, x) of the highest SUV inside ``mask``."""
    return tuple(int(v) for v in np.unravel_index(np.argmax(np.where(mask, suv, -np.inf)), mask.shape))



def _missed_parts(missed: np.ndarray, spacing_zyx) -> list[tuple[tuple[int, int, int], int]]:
    """(deepest voxel, voxels) of each 26-connected blob of ``missed`` at least :data:`MISSED_PART_MM` thick."""
    if not np.any(missed):
        return []
    box, depth, start = depth_in_box(missed, spacing_zyx)
    ids, n = lesion_ids(box)
    parts = []
    for k in range(1, n + 1):
        blob = ids == k
        deepest = np.unravel_index(np.argmax(np.where(blob, depth, -np.inf)), blob.shape)
        if depth[deepest] >= MISSED_PART_MM - MM_NOISE:
            parts.append((tuple(int(v) + s for v, s in zip(deepest, start)), int(blob.sum())))
    return parts


def candidate_clicks(prediction: sitk.Image, reference: sitk.Image, pet: sitk.Image,
                     at: str = "peak") -> list[Click]:
    """Every error one click fixes, worst (the largest share of its structure at stake, see the module) first;
    ``at`` (:data:`CLICK_PLACES`): where a click on a lesion goes."""
    if at not in CLICK_PLACES:
        raise ValueError(f"click place {at!r}: expected one of {', '.join(CLICK_PLACES)}")
    pred = sitk.GetArrayViewFromImage(prediction)
    ref = sitk.GetArrayViewFromImage(reference)
    suv = values_in_box(pet, Geometry.of(prediction))
    spacing_zyx = prediction.GetSpacing()[::-1]
    clicks = []
    added: set[tuple[int, int, int]] = set()  # missed parts already clicked (a reference lesion two predicted ones touch)

    def point(index_zyx) -> tuple[float, float, float]:
        return tuple(float(v) for v in prediction.TransformIndexToPhysicalPoint(tuple(int(i) for i in index_zyx[::-1])))

    def on(mask: np.ndarray) -> tuple[int, int, int]:
        """Where a click on ``mask`` goes (``at``)."""
        return _hottest(mask, suv) if at == "peak" else deepest_voxel(mask, spacing_zyx)

    for value, name in LABELS.items():
        other = next(v for v in LABELS if v != value)
        ref_ids, _ = lesion_ids(ref == value)
        ids, n = lesion_ids(pred == value)
        for k in range(1, n + 1):
            lesion = ids == k
            same, wrong = int(np.count_nonzero(lesion & (ref == value))), int(np.count_nonzero(lesion & (ref == other)))
            if same == 0 and wrong == 0:
                clicks.append(Click("remove", point(on(lesion)), name, int(lesion.sum())))
            elif wrong > same:
                clicks.append(Click("relabel", point(on(lesion)), name, wrong))
            else:
                touched = np.isin(ref_ids, np.unique(ref_ids[lesion & (ref_ids > 0)]))
                agreement = 2 * same / (int(lesion.sum()) + int(touched.sum()))
                for deepest, voxels in _missed_parts(touched & (pred == 0), spacing_zyx):
                    if deepest not in added:
                        added.add(deepest)
                        clicks.append(Click("add", point(deepest), name, voxels))
                if agreement < REDRAW_BELOW:
                    disagreement = int(np.count_nonzero(lesion ^ touched))
                    clicks.append(Click("redraw", point(on(lesion & touched)), name, disagreement))
        for k in range(1, int(ref_ids.max()) + 1):
            lesion = ref_ids == k
            if not np.any(lesion & (pred > 0)):
                clicks.append(Click("add", point(on(lesion)), name, int(lesion.sum())))
    voxels = {name: int(np.count_nonzero(pred == v)) + int(np.count_nonzero(ref == v)) for v, name in LABELS.items()}
    return sorted(clicks, key=lambda c: -_share_at_stake(c, voxels))


def _share_at_stake(click: Click, voxels: dict[str, int]) -> float:
    """The click's voxels at stake over its structure's ``voxels`` in the case (predicted and reference
    together); a relabel's count in both structures (it takes them from one and gives them to the other)."""
    names = [click.structure] + [n for n in LABELS.values() if n != click.structure and click.action == "relabel"]
    return sum(click.voxels_at_stake / max(voxels[n], 1) for n in names)


def apply_click(label: sitk.Image, pet: sitk.Image, click: Click, ct: sitk.Image | None = None,
                method: str = "auto", click_model: str | os.PathLike | None = None) -> Edit:
    """What the editor's button does for ``click`` (HNTumorSegLib.editing.clicks, default settings; with the CT,
    the click model draws the nodes: ``click_model``'s file, default the bundled one)."""
    return edit_at(label, pet, click.action, click.point_mm, click.structure if click.action == "add" else None,
                   ct=ct, method=method, click_model=click_model)
