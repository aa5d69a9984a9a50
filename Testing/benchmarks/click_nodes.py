"""Benchmark: how well one click draws a node, with no model segmentation in the way.

Every reference node (GTVn lesion) of phantoms the click model never saw is added alone to an empty
label by one click, the *add GTVn* of ``hntumorseg edit`` and the module, at its SUVmax voxel (where a
PET reader looks first) and at its centre (the voxel farthest from its edge), drawn by the click model
and by the threshold (41 % over the local background). Printed per drawing and place: the nodes' mean
and median Dice, the share of the node left out and the share drawn outside it (medians: which way a
drawing errs), and the mean per-case GTVn Dice had every node been drawn so and nothing else been wrong:
the ceiling of "Dice after k clicks" (``edit_clicks.py``) with these drawings. And the time of a click, the
library's ``add_lesion`` end to end (median and 90th percentile; the first click of the run, which loads torch and
the click model, counted apart).

Why: ``edit_clicks.py`` measures the whole correction, behind the segmentation model's result; this
measures the drawing tool alone, in a fraction of the time and without the segmentation model, so two
click models (``--click-model``: one's own, e.g. trained on a GPU) are compared on the same nodes. Run:

    python Testing/benchmarks/click_nodes.py [--cases 24] [--click-model M.json] [--out click_nodes/]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from HNTumorSegLib.editing.clicks import add_lesion
from HNTumorSegLib.editing.simulated_user import _hottest
from HNTumorSegLib.errors import InputError
from HNTumorSegLib.evaluation.metrics import values_in_box
from HNTumorSegLib.imaging.components import deepest_voxel, lesion_ids
from HNTumorSegLib.imaging.geometry import Geometry
from HNTumorSegLib.phantom import make_phantom

#: Seeds outside the click model's training and validation phantoms (940000-940699), and edit_clicks.py's.
FIRST_SEED = 910_000
STYLES = ("classic", "legacy", "digital", "endemic")
#: Kept around the case's lesions when the label grid is cut down (a click draws within 40 mm of itself).
MARGIN_MM = 75.0
DRAWINGS = ("network", "threshold")
PLACES = ("peak", "centre")


def lesion_box(label: sitk.Image) -> sitk.Image:
    """The label cut to its lesions plus MARGIN_MM: the clicks' arrays are then small, the drawing the same (the CT
    and PET stay whole and are read around each click)."""
    array = sitk.GetArrayViewFromImage(label)
    present = np.nonzero(array > 0)
    margin = np.ceil(MARGIN_MM / np.array(label.GetSpacing()[::-1])).astype(int)
    lo = np.maximum([int(a.min()) for a in present] - margin, 0)
    hi = np.minimum([int(a.max()) + 1 for a in present] + margin, array.shape)
    return sitk.RegionOfInterest(label, (hi - lo)[::-1].tolist(), lo[::-1].tolist())


def draw_nodes(case, click_model: str | None) -> list[dict]:
    """Each node of ``case`` drawn by one add click on an empty label, by each drawing from each place."""
    reference = lesion_box(case.label)
    ref = sitk.GetArrayFromImage(reference)
    empty = sitk.Image(reference.GetSize(), sitk.sitkUInt8)
    empty.CopyInformation(reference)
    suv = values_in_box(case.pet, Geometry.of(reference))
    spacing_zyx = reference.GetSpacing()[::-1]
    ids, n = lesion_ids(ref == 2)
    rows = []
    for k in range(1, n + 1):
        node = ids == k
        for place, index in (("peak", _hottest(node, suv)), ("centre", deepest_voxel(node, spacing_zyx))):
            point = reference.TransformIndexToPhysicalPoint(tuple(int(i) for i in index[::-1]))
            for drawing in DRAWINGS:
                t0 = time.perf_counter()
                try:
                    drawn = sitk.GetArrayViewFromImage(add_lesion(empty, case.pet, point, "GTVn", ct=case.ct,
                                                                  method=drawing, click_model=click_model).label) == 2
                except InputError:  # nothing drawn: the node missed
                    drawn = np.zeros_like(node)
                seconds = time.perf_counter() - t0
                overlap = int(np.count_nonzero(drawn & node))
                voxels = int(node.sum())
                rows.append({"case": case.case_id, "node": k, "voxels": voxels, "place": place, "drawing": drawing,
                             "dice": 2 * overlap / (int(drawn.sum()) + voxels),
                             "left_out": 1 - overlap / voxels,
                             "outside": int(np.count_nonzero(drawn & ~node)) / voxels, "seconds": seconds})
    return rows


def summarise(rows: list[dict], cases: list[str]) -> list[dict]:
    """Per drawing and place: node Dice (mean, median), median shares left out / outside, and the mean case Dice
    had every node been drawn so (cases without nodes count 1, as in edit_clicks.py)."""
    out = []
    for drawing in DRAWINGS:
        for place in PLACES:
            these = [r for r in rows if r["drawing"] == drawing and r["place"] == place]
            if not these:
                continue
            per_case = []
            for case in cases:
                nodes = [r for r in these if r["case"] == case]
                found = sum(r["voxels"] * (1 - r["left_out"]) for r in nodes)  # drawn inside the nodes
                drawn = found + sum(r["voxels"] * r["outside"] for r in nodes)
                size = sum(r["voxels"] for r in nodes) + drawn
                per_case.append(2 * found / size if nodes else 1.0)
            dice = [r["dice"] for r in these]
            out.append({"drawing": drawing, "place": place, "nodes": len(these), "mean_dice": float(np.mean(dice)),
                        "median_dice": float(np.median(dice)),
                        "median_left_out": float(np.median([r["left_out"] for r in these])),
                        "median_outside": float(np.median([r["outside"] for r in these])),
                        "case_gtvn_ceiling": float(np.mean(per_case))})
    return out


def click_seconds(rows: list[dict]) -> dict[str, dict[str, float]]:
    """Per drawing: the first click's seconds (torch and the click model loaded) and the median and 90th
    percentile of the others."""
    out = {}
    for drawing in DRAWINGS:
        seconds = [r["seconds"] for r in rows if r["drawing"] == drawing]
        if seconds:
            rest = seconds[1:] or seconds
            out[drawing] = {"first": seconds[0], "median": float(np.median(rest)),
                            "p90": float(np.percentile(rest, 90))}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=24, help="phantom cases (styles in turn)")
    parser.add_argument("--first-seed", type=int, default=FIRST_SEED)
    parser.add_argument("--click-model", help="click model JSON (default: the bundled one)")
    parser.add_argument("--out", type=Path, default=Path("click_nodes"), help="folder for the JSON")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    rows, cases = [], []
    for i in range(args.cases):
        case = make_phantom(args.first_seed + i, "head_upper", style=STYLES[i % len(STYLES)])
        cases.append(case.case_id)
        if np.any(sitk.GetArrayViewFromImage(case.label) == 2):
            rows += draw_nodes(case, args.click_model)
        print(f"{case.case_id}: {sum(r['case'] == case.case_id for r in rows) // 4} nodes", flush=True)
    summary = summarise(rows, cases)
    print(f"\n{len(rows) // 4} nodes of {len(cases)} cases\n| drawing | click at | mean node Dice | median | left out "
          "(median) | outside (median) | case GTVn ceiling |\n|---|---|---|---|---|---|---|")
    for r in summary:
        print(f"| {r['drawing']} | {r['place']} | {r['mean_dice']:.3f} | {r['median_dice']:.3f} | "
              f"{r['median_left_out']:.3f} | {r['median_outside']:.3f} | {r['case_gtvn_ceiling']:.3f} |")
    timing = click_seconds(rows)
    for drawing, t in timing.items():
        print(f"a click by the {drawing}: median {t['median']:.2f} s, 90th percentile {t['p90']:.2f} s "
              f"(the run's first: {t['first']:.2f} s)")
    (args.out / "click_nodes.json").write_text(json.dumps({"click_model": args.click_model or "bundled",
                                                         "first_seed": args.first_seed, "summary": summary,
                                                         "click_seconds": timing, "nodes": rows}, indent=1))
    print(f"\n{len(cases)} cases in {time.perf_counter() - t0:.0f} s; wrote {args.out / 'click_nodes.json'}")


if __name__ == "__main__":
    main()
