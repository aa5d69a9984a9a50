"""Every node of a segmentation redrawn by the click model, from its centre: the segmentation's nodes, refined.

Why: the segmentation network draws nodes too tight (the weak half of matted nodes left out): on 24 unseen
phantoms, after the editor's 3 clicks, 25 of the 51 nodes found were still its drawing, at a mean Dice of 0.71,
and the click model draws a node from its centre at 0.86 (``Testing/benchmarks/click_nodes.py``). Each node
redrawn so before any click: mean per-case GTVn Dice 0.588 -> 0.698 with no click, 0.829 -> 0.865 after 3
(README, "Editing"). The redraw is the editor's *redraw* of :mod:`.clicks` at each node's deepest voxel, with the
click model (``method="network"``), so a user sees what a click there would give.

Each node is redrawn on the segmentation as it came (its point fixed first: a redraw may grow into the place of
another node's centre), and the drawings are merged: first every redrawn node is cleared, then each drawing is
written where no other structure lies, so redraws that meet merge and none erases another, whatever the order.
A node the click model sees nothing at (:class:`InputError`) is kept as the network drew it. GTVp is never touched.

Only the :data:`MOST_NODES_REDRAWN` largest nodes are redrawn, the rest kept as drawn and counted in the report. Why:
a redraw costs about a second on a 2-core CPU (two views of eight mirror images), and a network that speckles (an
untrained or a wrong model, a scan unlike its training data) can leave thousands of one-voxel "nodes": 4977 on a test scan, 40 minutes of redrawing
where the user pressed a button expecting seconds. A patient has far fewer nodes than the bound.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import SimpleITK as sitk

from HNTumorSegLib import LABELS
from HNTumorSegLib.editing.clicks import DEFAULT_FRACTION, draw_region, radius_for
from HNTumorSegLib.errors import InputError
from HNTumorSegLib.imaging.components import deepest_voxel, lesion_ids

GTVN = next(value for value, name in LABELS.items() if name == "GTVn")

#: The most nodes redrawn, chosen by size: well above the nodes of a head-and-neck patient, so it bounds the time of
#: a speckled segmentation (a second or so a node) without leaving a real node as the network drew it.
MOST_NODES_REDRAWN = 32


@dataclass
class NodeRefinement:
    """The refined label map and, per node of the segmentation, where it was redrawn and what came of it."""

    label: sitk.Image
    #: per node: centre_mm (LPS), voxels before and after (after: its drawing's voxels written), redrawn (False: kept,
    #: with why); the largest :data:`MOST_NODES_REDRAWN` only
    nodes: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    click_model: str = ""
    #: nodes beyond the largest :data:`MOST_NODES_REDRAWN`, kept as the network drew them
    smaller_nodes_kept: int = 0

    def report(self) -> dict:
        return {"click_model": self.click_model, "seconds": round(self.seconds, 3), "nodes": self.nodes,
                "smaller_nodes_kept": self.smaller_nodes_kept}


def refine_nodes(label: sitk.Image, ct: sitk.Image, pet: sitk.Image,
                 click_model: str | os.PathLike | None = None) -> NodeRefinement:
    """Each GTVn lesion (26-connected component) of ``label`` redrawn by the click model from its deepest voxel
    (see the module). ``ct`` and ``pet`` (SUV) on any grids covering the label's; ``click_model``: its JSON, None
    for the bundled one. An InputError where the click model cannot run (torch missing, a model that draws no
    GTVn); ``label`` itself is never modified."""
    from HNTumorSegLib.editing.click_model import load_click_model

    t0 = time.perf_counter()
    model = load_click_model() if click_model is None else load_click_model(os.path.abspath(click_model))
    if model.structure != LABELS[GTVN]:
        raise InputError(f"click model {model.name}: draws {model.structure}, not GTVn; it cannot refine nodes")
    array = sitk.GetArrayFromImage(label)
    refined = NodeRefinement(label, [], 0.0, model.name)
    nodes = array == GTVN
    if not nodes.any():
        refined.seconds = time.perf_counter() - t0
        return refined
    # components within the nodes' bounding box (a whole-body grid takes far longer), then back on the grid
    present = np.nonzero(nodes)
    start = [int(a.min()) for a in present]
    box = tuple(slice(s, int(a.max()) + 1) for s, a in zip(start, present))
    ids_box, n = lesion_ids(nodes[box])
    spacing_zyx = label.GetSpacing()[::-1]
    sizes = np.bincount(ids_box.ravel(), minlength=n + 1)[1:]
    largest = np.argsort(-sizes, kind="stable")[:MOST_NODES_REDRAWN] + 1  # the same nodes whatever the ties
    refined.smaller_nodes_kept = n - len(largest)
    drawings = []
    for k in sorted(int(k) for k in largest):
        component = np.zeros(array.shape, bool)
        component[box] = ids_box == k
        centre = deepest_voxel(component, spacing_zyx)
        point = tuple(float(v) for v in label.TransformIndexToPhysicalPoint(tuple(int(i) for i in centre[::-1])))
        entry = {"centre_mm": [round(v, 2) for v in point], "voxels_before": int(component.sum())}
        try:
            drawn = draw_region(label, pet, point, GTVN, DEFAULT_FRACTION, radius_for(GTVN, None), True,
                                (array == 0) | component, ct, "network", click_model).mask
        except InputError as exc:  # nothing the click model takes for a node there: the network's drawing stays
            entry.update(redrawn=False, why=str(exc))
        else:
            drawings.append((component, drawn, entry))
            entry["redrawn"] = True
        refined.nodes.append(entry)
    out = array.copy()
    for component, _, _ in drawings:
        out[component] = 0
    for _, drawn, entry in drawings:
        write = drawn & (out == 0)
        out[write] = GTVN
        entry["voxels_after"] = int(np.count_nonzero(drawn & (out == GTVN)))
    image = sitk.GetImageFromArray(out)
    image.CopyInformation(label)
    refined.label = image
    refined.seconds = time.perf_counter() - t0
    return refined
