"""Evaluation of a trained run where it matters: on the native CT grid, through the inference path.

Why not the validation numbers of ``fit``: those are measured on the preprocessed window. A
user sees the label map that :class:`HNTumorSegLib.inference.Segmenter` restores to the CT
grid, so evaluation runs exactly that (preprocess, network, restore) on the original CT and PET
files and scores against the original labels with :mod:`HNTumorSegLib.metrics`.

Figures (per case, then per centre and for the whole set):

* Dice of GTVp and GTVn and their mean, per case then averaged over cases (the paper's Table 3);
* HECKTOR's aggregated Dice (DSCagg, physical volumes pooled over the set) per structure;
* GTVn F1agg (26-connected nodes, one-to-one matching at IoU > 0.3, counts pooled);
* HD95 in mm, averaged over the cases where it is defined, with the number left out.

Empty-mask rules (from :mod:`HNTumorSegLib.metrics`, repeated in every report): Dice is 1 when
a structure is absent from both prediction and reference and 0 when absent from only one; HD95
is 0 when both are empty and undefined (left out of the mean, counted) when only one is; DSCagg
and F1agg are undefined (NaN, written as null) only when the whole set has no such structure.

Outputs go to ``RUN/evaluation/SPLIT-WHICH/``: ``cases.csv`` (one row per case), ``summary.json``
(read by ``compare`` and ``export``), ``summary.md`` and ``boxplot.png``.
"""

from __future__ import annotations

import csv
import io
import json
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from HNTumorSegLib.errors import InputError
from HNTumorSegLib.image_io import read_image, write_bytes, write_json
from HNTumorSegLib.inference import Segmenter, resolve_device
from HNTumorSegLib.label_checks import label_grid_problem, label_values_problem
from HNTumorSegLib.metrics import CaseScores, aggregated_dice, aggregated_f1, score_case
from HNTumorSegLib.model_file import model_paths
from HNTumorSegLib.postprocess import ComponentFilter
from HNTumorSegLib.preprocess import PREPROCESSING_VERSION
from HNTumorSegLib.sliding_window import InferenceWindow

from .cases import Case, find_cases
from .validate import inference_window
from .weights import load_weights

SPLITS = ("val", "train", "all")
WHICH = ("best", "last")
EVALUATION_DIR = "evaluation"
STRUCTURES = ("GTVp", "GTVn")
EMPTY_MASK_RULES = (
    "Dice: 1 when a structure is absent from both prediction and reference, 0 when absent from one. "
    "HD95: 0 when both are empty; undefined when exactly one is (left out of the mean and counted). "
    "DSCagg / F1agg: undefined (null) only when no case of the set has the structure or a node."
)


@dataclass(frozen=True)
class CaseResult:
    """The scores of one case and the seconds its inference took."""

    case_id: str
    centre: str
    scores: CaseScores
    seconds: float


class SpecSegmenter(Segmenter):
    """The inference path for networks HNTumorSegLib does not build (``unetr``, ``umamba``).

    Only the model comes from elsewhere: preprocessing, the (sliding-window) prediction, test-time
    augmentation and restoration are :class:`Segmenter`'s, so all four models of the comparison
    are scored on one path. Fixed-size and patch-trained networks get a ``window``.
    """

    def __init__(self, model: torch.nn.Module, window: InferenceWindow | None, device: str = "auto",
                 tta: bool = False, postprocess: ComponentFilter | None = None) -> None:
        self.device = resolve_device(device)
        self.model = model.to(self.device).eval()
        self.window = window
        self.tta = tta
        self.postprocess = postprocess
        self.loaded = None


def run_settings(run: Path) -> dict[str, Any]:
    """``run.json`` of a run folder; InputError naming the folder if it is not one."""
    path = Path(run) / "run.json"
    if not path.is_file():
        raise InputError(f"{run}: not a training run (no run.json)")
    return json.loads(path.read_text(encoding="utf-8"))


def weights_of(run: Path, which: str) -> Path:
    """The JSON of the run's ``best`` or ``last`` weights; InputError when the run has none yet."""
    if which not in WHICH:
        raise InputError(f"weights must be one of {', '.join(WHICH)}, got {which!r}")
    path = model_paths(Path(run) / which).json
    if not path.is_file():
        raise InputError(f"{run}: no {which} weights ({path.name}) — has the run finished an epoch"
                         f"{' with validation' if which == 'best' else ''}?")
    return path


def run_window(info: Mapping[str, Any]) -> InferenceWindow | None:
    """How a run's model is applied at inference, from its settings (for weights that do not say)."""
    return inference_window(info["model_spec"], info.get("settings", {}).get("patch_size"))


def make_segmenter(weights: Path, window: InferenceWindow | None, device: str = "auto",
                   tta: bool = False, postprocess: bool = True) -> Segmenter:
    """A Segmenter for any run weights: HNTumorSegLib model files directly, others via the spec.

    ``window`` applies when the weights' JSON does not say how to run them (weights written
    before model files recorded it). ``postprocess=False`` ignores the JSON's component clean-up.
    """
    meta = json.loads(weights.read_text(encoding="utf-8"))
    if str(meta.get("preprocessing_version", "")) != PREPROCESSING_VERSION:
        raise InputError(f"{weights}: trained on preprocessing version {meta.get('preprocessing_version')!r}, "
                         f"this software makes version {PREPROCESSING_VERSION!r}")
    if meta.get("format") == "hntumorseg-model":
        segmenter = Segmenter(weights, device=device, tta=tta, postprocess=postprocess)
        if "inference" not in meta:
            segmenter.window = window
        return segmenter
    model, meta = load_weights(weights)
    return SpecSegmenter(model, InferenceWindow.from_meta(meta) or window, device=device, tta=tta,
                         postprocess=ComponentFilter.from_meta(meta, weights.name) if postprocess else None)


def split_case_ids(cache: Path, split: str) -> tuple[list[str], dict[str, Any]]:
    """The case ids of ``split`` ("val", "train" or "all") from the cache's ``split.json``."""
    if split not in SPLITS:
        raise InputError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    path = Path(cache) / "split.json"
    if not path.is_file():
        raise InputError(f"{path}: split file not found (run hntumorseg-train prepare)")
    data = json.loads(path.read_text(encoding="utf-8"))
    ids = list(data["train"]) + list(data["val"]) if split == "all" else list(data[split])
    return ids, data


def cases_for(data_root: Path, ids: Sequence[str]) -> list[Case]:
    """The :class:`Case` of every id, in the given order; InputError listing the ids not found."""
    if not Path(data_root).is_dir():
        raise InputError(f"{data_root}: data root not found (pass --data ROOT if it moved)")
    found = {c.case_id: c for c in find_cases(data_root)[0]}
    missing = [i for i in ids if i not in found]
    if missing:
        listed = ", ".join(missing[:5]) + (f", … (+{len(missing) - 5})" if len(missing) > 5 else "")
        raise InputError(f"{data_root}: {len(missing)} case(s) of the split not found: {listed}")
    return [found[i] for i in ids]


def evaluate_case(segmenter: Segmenter, case: Case) -> CaseResult:
    """Segment one case from its original files and score it on the CT grid."""
    ct = read_image(case.ct, "CT")
    pet = read_image(case.pet, "PET")
    reference = read_image(case.label, "label")
    problem = (label_grid_problem(reference, ct, str(case.label))
               or label_values_problem(reference, str(case.label)))
    if problem:
        raise InputError(problem)
    t0 = time.perf_counter()
    segmentation = segmenter.segment(ct, pet, ct_name=str(case.ct), pet_name=str(case.pet))
    seconds = time.perf_counter() - t0
    scores = score_case(sitk.GetArrayViewFromImage(segmentation.label),
                        sitk.GetArrayViewFromImage(reference), ct.GetSpacing())
    return CaseResult(case.case_id, case.centre, scores, seconds)


def _finite_mean(values: Iterable[float]) -> tuple[float | None, int]:
    """Mean of the finite values and how many were not finite (left out)."""
    values = list(values)
    finite = [v for v in values if math.isfinite(v)]
    return (float(np.mean(finite)) if finite else None), len(values) - len(finite)


def _none_if_nan(value: float) -> float | None:
    return value if math.isfinite(value) else None


def summarise(results: Sequence[CaseResult]) -> dict[str, Any]:
    """Set-level figures of ``results`` (see the module docstring); JSON-ready (NaN -> None)."""
    scores = [r.scores for r in results]
    out: dict[str, Any] = {"cases": len(results)}
    for s in STRUCTURES:
        dices = [c[s]["dice"] for c in scores]
        hd_mean, hd_left_out = _finite_mean(c[s]["hd95"] for c in scores)
        out[s] = {"dice_mean": float(np.mean(dices)) if dices else None,
                  "dice_std": float(np.std(dices)) if dices else None,
                  "dice_median": float(np.median(dices)) if dices else None,
                  "dsc_agg": _none_if_nan(aggregated_dice(scores, s)) if scores else None,
                  "hd95_mean_mm": hd_mean, "hd95_undefined_cases": hd_left_out}
    out["mean_dice"] = ((out["GTVp"]["dice_mean"] + out["GTVn"]["dice_mean"]) / 2 if scores else None)
    out["GTVn"]["f1_agg"] = _none_if_nan(aggregated_f1(scores)) if scores else None
    out["GTVn"]["lesions"] = {k: int(sum(c["GTVn"][f"lesion_{k}"] for c in scores)) for k in ("tp", "fp", "fn")}
    return out


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def markdown_table(summary: Mapping[str, Any]) -> str:
    """The set and per-centre figures as a Markdown table, with the empty-mask rules below it."""
    head = ("| Set | Cases | Dice GTVp | Dice GTVn | Mean | DSCagg GTVp | DSCagg GTVn | F1agg GTVn "
            "| HD95 GTVp (mm) | HD95 GTVn (mm) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    rows = [("all", summary["overall"])] + sorted(summary["per_centre"].items())
    for name, s in rows:
        hd = []
        for st in STRUCTURES:
            text = _fmt(s[st]["hd95_mean_mm"], 2)
            if s[st]["hd95_undefined_cases"]:
                text += f" ({s[st]['hd95_undefined_cases']} undef.)"
            hd.append(text)
        lines.append(f"| {name} | {s['cases']} | {_fmt(s['GTVp']['dice_mean'])} | {_fmt(s['GTVn']['dice_mean'])} "
                     f"| {_fmt(s['mean_dice'])} | {_fmt(s['GTVp']['dsc_agg'])} | {_fmt(s['GTVn']['dsc_agg'])} "
                     f"| {_fmt(s['GTVn']['f1_agg'])} | {hd[0]} | {hd[1]} |")
    lines += ["", f"Dice: per case, then the mean over cases. {EMPTY_MASK_RULES}"]
    return "\n".join(lines) + "\n"


def cases_csv(results: Sequence[CaseResult]) -> bytes:
    """One row per case: Dice, HD95 (empty when undefined), volumes (mL), node counts, seconds."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = ["dice", "hd95", "pred_volume_ml", "ref_volume_ml", "tp_volume_ml"]
    w.writerow(["case_id", "centre", *(f"{s}_{c}" for s in STRUCTURES for c in cols), "mean_dice",
                "GTVn_lesion_tp", "GTVn_lesion_fp", "GTVn_lesion_fn", "seconds"])
    for r in results:
        values = []
        for s in STRUCTURES:
            for c in cols:
                v = r.scores[s][c]
                values.append("" if not math.isfinite(v) else f"{v:.6g}")
        n = r.scores["GTVn"]
        w.writerow([r.case_id, r.centre, *values, f"{r.scores['mean_dice']:.6g}", n["lesion_tp"], n["lesion_fp"],
                    n["lesion_fn"], f"{r.seconds:.2f}"])
    return buf.getvalue().encode("utf-8")


def boxplot_png(results: Sequence[CaseResult], title: str) -> bytes:
    """Per-case Dice of GTVp and GTVn, one box per centre and one for all cases."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    centres = sorted({r.centre for r in results})
    groups = [("all", list(results))] + [(c, [r for r in results if r.centre == c]) for c in centres]
    fig, axes = plt.subplots(1, 2, figsize=(4 + 1.2 * len(groups), 4), sharey=True)
    for ax, s in zip(axes, STRUCTURES):
        data = [[r.scores[s]["dice"] for r in rs] for _, rs in groups]
        ax.boxplot(data, showmeans=True)
        ax.set_xticks(range(1, len(groups) + 1), [f"{g}\n(n={len(rs)})" for g, rs in groups])
        ax.set_title(f"{s} Dice per case")
        ax.set_ylim(-0.02, 1.02)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def evaluation_dir(run: Path, split: str, which: str) -> Path:
    return Path(run) / EVALUATION_DIR / f"{split}-{which}"


def evaluate(run: str | Path, *, split: str = "val", which: str = "best", data_root: str | Path | None = None,
             device: str = "auto", tta: bool = False, postprocess: bool = True, limit: int | None = None,
             progress: Callable[[int, int, CaseResult], None] | None = None,
             segmenter: Segmenter | None = None) -> dict[str, Any]:
    """Evaluate ``run``'s ``which`` weights on ``split``; writes the reports and returns the summary.

    ``data_root`` overrides the data root recorded in ``split.json`` (data moved). ``limit``
    scores only the first cases of the split (smoke runs; recorded in the summary).
    ``postprocess=False`` scores the raw network output, without the weights' component clean-up
    (the summary records which clean-up was applied). ``segmenter``
    replaces the one built from the weights (tests score known predictions this way).
    """
    run = Path(run)
    info = run_settings(run)
    weights = weights_of(run, which)
    ids, split_data = split_case_ids(Path(info["cache"]), split)
    if limit is not None:
        ids = ids[:limit]
    root = Path(data_root) if data_root is not None else Path(split_data["data_root"])
    cases = cases_for(root, ids)
    if segmenter is None:
        segmenter = make_segmenter(weights, run_window(info), device=device, tta=tta, postprocess=postprocess)
    results: list[CaseResult] = []
    for i, case in enumerate(cases, 1):
        results.append(evaluate_case(segmenter, case))
        if progress:
            progress(i, len(cases), results[-1])
    model_name = info.get("model_spec", {}).get("name", "?")
    summary = {
        "format": "hntumorseg-evaluation", "run": str(run.resolve()), "model": model_name, "weights": which,
        "weights_file": str(weights), "split": split, "data_root": str(root.resolve()),
        "limited_to_first": limit, "device": str(segmenter.device), "tta": bool(tta),
        "inference_window": segmenter.window.to_dict() if getattr(segmenter, "window", None) else None,
        "postprocess": segmenter.postprocess.to_dict() if getattr(segmenter, "postprocess", None) else None,
        "path": "HNTumorSegLib Segmenter (preprocess, network, restore) on the native CT grid",
        "empty_mask_rules": EMPTY_MASK_RULES,
        "overall": summarise(results),
        "per_centre": {c: summarise([r for r in results if r.centre == c])
                       for c in sorted({r.centre for r in results})},
        "seconds_per_case": float(np.mean([r.seconds for r in results])) if results else None,
    }
    out = evaluation_dir(run, split, which)
    out.mkdir(parents=True, exist_ok=True)
    write_bytes(cases_csv(results), out / "cases.csv")
    write_bytes(markdown_table(summary).encode("utf-8"), out / "summary.md")
    write_bytes(boxplot_png(results, f"{run.name} ({model_name}, {which}) on {split}"), out / "boxplot.png")
    write_json(summary, out / "summary.json")  # last: compare and export read it
    return summary


def read_summary(run: str | Path, split: str = "val", which: str = "best") -> dict[str, Any]:
    """The ``summary.json`` that :func:`evaluate` wrote; InputError when the run was not evaluated."""
    path = evaluation_dir(Path(run), split, which) / "summary.json"
    if not path.is_file():
        raise InputError(f"{run}: not evaluated on {split} with its {which} weights "
                         f"(run: hntumorseg-train evaluate --run {run} --split {split} --weights {which})")
    return json.loads(path.read_text(encoding="utf-8"))


def table3(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """The paper's Table 3 layout (Method, GTVp, GTVn, Mean) for (name, summary) pairs, as Markdown."""
    lines = ["| Method | GTVp | GTVn | Mean (GTVp/GTVn) |", "|---|---|---|---|"]
    for name, s in runs:
        o = s["overall"]
        lines.append(f"| {name} | {_fmt(o['GTVp']['dice_mean'])} | {_fmt(o['GTVn']['dice_mean'])} "
                     f"| {_fmt(o['mean_dice'])} |")
    return "\n".join(lines) + "\n"
