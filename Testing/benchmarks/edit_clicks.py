"""Benchmark: Dice after k clicks, with a simulated editor correcting the bundled model's result.

On phantoms the bundled model never saw (seeds outside its training cohort, the styles it was
trained on and the endemic style it was not), the model segments each case, then the simulated
editor (HNTumorSegLib.editing.simulated_user) clicks the worst remaining error, one click at a
time: add a missed lesion at its SUVmax voxel or a missed part of a found one at its centre, remove a
false positive, relabel a mislabelled lesion, redraw a badly drawn one from the PET, with the same
functions as ``hntumorseg edit`` and the module's buttons. ``--click-at centre`` clicks each lesion at
its centre (the voxel farthest from its edge: autoPET IV's simulated clicks) instead of its SUVmax
voxel: how much the result depends on where a reader clicks. A click that cannot act (e.g. nothing above the threshold to add) still
counts as a click; an add or a redraw that makes its structure worse is undone by the next click
(the user sees it), which counts too. Printed: per-case
mean Dice of GTVp and GTVn (both empty = 1), GTVn F1agg (HECKTOR's lesion detection) and the cases
with both Dice >= 0.90, after 0, 1, 2, 3 and 5 clicks; written: the figures as JSON and their curve.
Target: mean Dice >= 0.90 for both structures after at most 3 clicks per case. Run:

    python Testing/benchmarks/edit_clicks.py [--cases 12] [--click-at peak|centre] [--out edit_clicks/]

``--click-model M.json`` draws the nodes with a click model of one's own (``hntumorseg-train click-model``);
``--refine-nodes`` starts from the segmentation with every node redrawn by the click model (``segment --refine-nodes``);
``--first-seed`` benchmarks other phantoms (keep them apart from the click model's training seeds).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from HNTumorSegLib.editing.clicks import METHODS
from HNTumorSegLib.editing.node_refinement import MOST_NODES_REDRAWN, refine_nodes
from HNTumorSegLib.editing.simulated_user import CLICK_PLACES, apply_click, candidate_clicks
from HNTumorSegLib.errors import InputError
from HNTumorSegLib.evaluation.metrics import dice, match_lesions
from HNTumorSegLib.phantom import make_phantom
from HNTumorSegLib.pipeline.inference import Segmenter

#: Clicks after which the figures are reported.
REPORTED = (0, 1, 2, 3, 5)
#: Seeds outside the bundled model's training cohort (0..239) and the demo's.
FIRST_SEED = 910_000
#: Styles in turn: three the model was trained on, and one it never saw.
STYLES = ("classic", "legacy", "digital", "endemic")


def scores(label: sitk.Image, truth: sitk.Image) -> dict:
    pred, ref = sitk.GetArrayViewFromImage(label), sitk.GetArrayViewFromImage(truth)
    tp, fp, fn = match_lesions(pred == 2, ref == 2)
    return {"GTVp": dice(pred, ref, 1), "GTVn": dice(pred, ref, 2), "tp": tp, "fp": fp, "fn": fn}


def run_case(segmenter: Segmenter, seed: int, style: str, max_clicks: int, method: str = "auto",
             at: str = "peak", click_model: str | None = None, refine: bool = False) -> dict:
    case = make_phantom(seed, "head_upper", style=style)
    label = segmenter.segment(case.ct, case.pet).label
    kept = 0
    if refine:  # segment --refine-nodes: every node redrawn by the click model before the first click
        refined = refine_nodes(label, case.ct, case.pet, click_model)
        label, kept = refined.label, refined.smaller_nodes_kept  # beyond the largest nodes: not redrawn
    trail = [scores(label, case.label)]
    actions = []
    tried = set()  # a click is not repeated at the same place
    undo = None  # the label before a redraw that made its structure worse: the next click undoes it
    for _ in range(max_clicks):
        if undo is not None:
            label, undo = undo, None
            actions.append("undo")
            trail.append(scores(label, case.label))
            continue
        candidates = [c for c in candidate_clicks(label, case.label, case.pet, at) if (c.action, c.point_mm) not in tried]
        if not candidates:
            trail.append(trail[-1])
            actions.append("none left")
            continue
        click = candidates[0]
        tried.add((click.action, click.point_mm))
        before = label
        try:
            label = apply_click(label, case.pet, click, case.ct, method, click_model).label
            actions.append(f"{click.action} {click.structure}")
        except InputError as exc:  # a click that does nothing is still a click
            actions.append(f"{click.action} {click.structure} (no effect: {exc})")
        trail.append(scores(label, case.label))
        if click.action in ("add", "redraw") and trail[-1][click.structure] < trail[-2][click.structure]:
            undo = before  # the user sees a worse contour and undoes it (one more click)
    return {"case": case.case_id, "seed": seed, "style": style, "after_clicks": trail, "clicks": actions,
            "smaller_nodes_kept": kept}


def summarise(cases: list[dict]) -> list[dict]:
    rows = []
    for k in REPORTED:
        at = [c["after_clicks"][k] for c in cases]
        tp, fp, fn = (sum(s[key] for s in at) for key in ("tp", "fp", "fn"))
        rows.append({"clicks": k, "dice_GTVp": float(np.mean([s["GTVp"] for s in at])),
                     "dice_GTVn": float(np.mean([s["GTVn"] for s in at])),
                     "f1agg": 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else 1.0,
                     "cases_both_0.90": sum(s["GTVp"] >= 0.9 and s["GTVn"] >= 0.9 for s in at)})
    return rows


def plot(rows_by_group: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(rows_by_group), figsize=(5 * len(rows_by_group), 3.6), squeeze=False)
    for ax, (title, rows) in zip(axes[0], rows_by_group.items()):
        clicks = [r["clicks"] for r in rows]
        for key, label in (("dice_GTVp", "Dice GTVp"), ("dice_GTVn", "Dice GTVn"), ("f1agg", "F1agg (GTVn)")):
            ax.plot(clicks, [r[key] for r in rows], marker="o", label=label)
        ax.axhline(0.9, color="grey", linestyle=":", linewidth=1)
        ax.set(title=title, xlabel="clicks per case", ylim=(0.0, 1.02), xticks=clicks)
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean over cases")
    axes[0][-1].legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", type=int, default=12, help="phantom cases (styles in turn)")
    parser.add_argument("--model", help="model JSON (default: the bundled model)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--method", choices=METHODS, default="auto",
                        help="how adds and redraws draw (auto: the click model for nodes, the threshold otherwise)")
    parser.add_argument("--click-at", choices=CLICK_PLACES, default="peak",
                        help="where the simulated editor clicks a lesion: its SUVmax voxel or its centre")
    parser.add_argument("--click-model", help="click model JSON to draw nodes with (default: the bundled one)")
    parser.add_argument("--refine-nodes", action="store_true",
                        help="every node of the segmentation redrawn by the click model before the first click "
                             "(segment --refine-nodes)")
    parser.add_argument("--first-seed", type=int, default=FIRST_SEED,
                        help=f"seed of the first phantom (default {FIRST_SEED}: the README's cases; others for more)")
    parser.add_argument("--out", type=Path, default=Path("edit_clicks"), help="folder for the JSON and the curve")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    segmenter = Segmenter(args.model, device=args.device)
    cases = []
    t0 = time.perf_counter()
    for i in range(args.cases):
        style = STYLES[i % len(STYLES)]
        cases.append(run_case(segmenter, args.first_seed + i, style, max(REPORTED), args.method, args.click_at,
                              args.click_model, args.refine_nodes))
        trail = cases[-1]["after_clicks"]
        print(f"{cases[-1]['case']} ({style}): Dice GTVp/GTVn {trail[0]['GTVp']:.2f}/{trail[0]['GTVn']:.2f} -> "
              f"{trail[3]['GTVp']:.2f}/{trail[3]['GTVn']:.2f} after 3 clicks ({', '.join(cases[-1]['clicks'][:3])})",
              flush=True)
    groups = {"all cases": cases,
              "training styles": [c for c in cases if c["style"] != "endemic"],
              "unseen style (endemic)": [c for c in cases if c["style"] == "endemic"]}
    summaries = {name: summarise(group) for name, group in groups.items() if group}
    for name, rows in summaries.items():
        n = len(groups[name])
        print(f"\n{name} ({n} cases)\n| clicks | Dice GTVp | Dice GTVn | F1agg GTVn | cases with both Dice >= 0.90 |\n"
              "|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['clicks']} | {r['dice_GTVp']:.3f} | {r['dice_GTVn']:.3f} | {r['f1agg']:.3f} | "
                  f"{r['cases_both_0.90']} of {n} |")
    (args.out / "edit_clicks.json").write_text(json.dumps({"click_at": args.click_at, "method": args.method,
                                                        "click_model": args.click_model or "bundled",
                                                        "refine_nodes": args.refine_nodes,
                                                        "first_seed": args.first_seed, "summaries": summaries, "cases": cases}, indent=1))
    plot(summaries, args.out / "edit_clicks.png")
    if args.refine_nodes:
        print(f"\nnodes beyond the {MOST_NODES_REDRAWN} largest, kept as drawn: "
              f"{sum(c['smaller_nodes_kept'] for c in cases)} in all")
    print(f"\n{len(cases)} cases in {time.perf_counter() - t0:.0f} s; wrote {args.out / 'edit_clicks.json'} "
          f"and {args.out / 'edit_clicks.png'}")


if __name__ == "__main__":
    main()
