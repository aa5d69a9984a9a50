"""Evaluation of a model where it matters: on the native CT grid, through the inference path.

Why not the validation numbers of ``fit``: those are measured on the preprocessed window. A
user sees the label map that :class:`HNTumorSegLib.pipeline.inference.Segmenter` restores to the CT
grid, so evaluation runs exactly that (preprocess, network(s), restore) on the original CT and
PET files and scores against the original labels with :mod:`HNTumorSegLib.evaluation.metrics`.

Two sets of cases can be scored:

* a run's own split (:func:`evaluate`: ``--run RUN --split val``), into ``RUN/evaluation/SPLIT-WHICH/``;
* any folder of labelled cases in a HECKTOR layout (:func:`evaluate_folder`: ``--model M --data
  FOLDER --out DIR``, or ``--run RUN --data FOLDER --out DIR``): held-out centres, another
  acquisition style (leave-one-style-out), a clinic's own cases. ``M`` is a model file (one
  network or an ensemble) or a run's weights. Why: a held-out split of the training data says
  how a model does on more of the same; only cases from elsewhere say how it does under shift.

Figures (per case, then per centre and for the whole set):

* Dice of GTVp and GTVn and their mean, per case then averaged over cases (the paper's Table 3);
* HECKTOR's aggregated Dice (DSCagg, physical volumes pooled over the set) per structure;
* GTVn F1agg (26-connected nodes, one-to-one matching at IoU > 0.3, counts pooled);
* HD95 in mm, averaged over the cases where it is defined, with the number left out;
* class confusion: the share of the reference GTVp volume that was predicted GTVn, and of the
  reference GTVn volume predicted GTVp, per case and pooled (summed volumes) over the set. Why:
  Dice cannot tell a missed node from a node called tumour; a model that confuses the two
  classes (a primary near a node, or another centre's uptake) needs another remedy than one
  that misses lesions.

Empty-mask rules (from :mod:`HNTumorSegLib.evaluation.metrics`, repeated in every report): Dice is 1 when
a structure is absent from both prediction and reference and 0 when absent from only one; HD95
is 0 when both are empty and undefined (left out of the mean, counted) when only one is; DSCagg
and F1agg are undefined (NaN, written as null) only when the whole set has no such structure.
A confusion share is undefined for a case without the reference structure (left out, counted)
and, pooled, only when no case of the set has it.

Outputs: ``cases.csv`` (one row per case), ``summary.json`` (read by ``compare`` and
``export``), ``summary.md`` and ``boxplot.png``.
"""

from __future__ import annotations

import csv
import io
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk
import torch

from HNTumorSegLib.errors import InputError
from HNTumorSegLib.imaging.geometry import voxel_volume_ml
from HNTumorSegLib.imaging.image_io import read_image, read_json, write_bytes, write_json
from HNTumorSegLib.pipeline.inference import Network, Segmenter, resolve_device
from HNTumorSegLib.imaging.label_checks import label_grid_problem, label_values_problem
from HNTumorSegLib.evaluation.metrics import CaseScores, aggregated_dice, aggregated_f1, score_images
from HNTumorSegLib.pipeline.model_file import model_paths, tensors_sha256
from HNTumorSegLib.pipeline.postprocess import ComponentFilter
from HNTumorSegLib.pipeline.preprocess import PREPROCESSING_VERSION
from HNTumorSegLib.pipeline.sliding_window import InferenceWindow

from HNTumorSegLib.cases.hecktor import Case, CaseProblem, find_cases
from .cache import case_dir, read_provenance
from .validate import inference_window
from .weights import load_weights

SPLITS = ("val", "train", "all")
WHICH = ("best", "last")
EVALUATION_DIR = "evaluation"
SUMMARY_FILE = "summary.json"
STRUCTURES = ("GTVp", "GTVn")
#: Class confusion: (key, reference structure, reference label, predicted label).
CONFUSIONS = (("GTVp_as_GTVn", "GTVp", 1, 2), ("GTVn_as_GTVp", "GTVn", 2, 1))
EMPTY_MASK_RULES = (
    "Dice: 1 when a structure is absent from both prediction and reference, 0 when absent from one. "
    "HD95: 0 when both are empty; undefined when exactly one is (left out of the mean and counted). "
    "DSCagg / F1agg: undefined (null) only when no case of the set has the structure or a node."
)
CONFUSION_RULE = (
    "Class confusion: GTVp_as_GTVn is the share of the reference GTVp volume predicted GTVn, GTVn_as_GTVp the "
    "share of the reference GTVn volume predicted GTVp (0 = no confusion, 1 = all of it). Pooled: the summed "
    "volumes (mL) of the set, undefined (null) only when no case has the reference structure. Per case: the "
    "mean over the cases that have it (the others are undefined, left out and counted)."
)


@dataclass(frozen=True)
class CaseResult:
    """The scores of one case, the seconds its inference took, and its class confusion."""

    case_id: str
    centre: str
    scores: CaseScores
    seconds: float
    confusion: Mapping[str, float] = field(default_factory=dict)  # see confusion_of


class SpecSegmenter(Segmenter):
    """The inference path for networks HNTumorSegLib does not build (``unetr``, ``umamba``).

    Only the model comes from elsewhere: preprocessing, the (sliding-window) prediction, test-time
    augmentation and restoration are :class:`Segmenter`'s, so all four models of the comparison
    are scored on one path. Fixed-size and patch-trained networks get a ``window``.
    """

    def __init__(self, model: torch.nn.Module, window: InferenceWindow | None, device: str = "auto",
                 tta: bool = False, postprocess: ComponentFilter | None = None, name: str = "model") -> None:
        self.device = resolve_device(device)
        spec = getattr(model, "model_spec", None) or {}
        self.networks = [Network(name, model.to(self.device).eval(), window, tensors_sha256(model.state_dict()),
                                 spec.get("name"))]
        self.tta = tta
        self.postprocess = postprocess
        self.member_seconds = []
        self.loaded = None


def run_settings(run: Path) -> dict[str, Any]:
    """``run.json`` of a run folder; InputError naming the folder if it is not one."""
    path = Path(run) / "run.json"
    if not path.is_file():
        raise InputError(f"{run}: not a training run (no run.json)")
    return read_json(path)


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
    """A Segmenter for any run weights or model file (one network or an ensemble): model files
    directly, others (unetr, umamba) via their spec.

    ``window`` applies to a single network whose JSON does not say how to run it (weights written
    before model files recorded it); an ensemble's members always say. ``postprocess=False``
    ignores the JSON's component clean-up.
    """
    meta = read_json(weights)
    if str(meta.get("preprocessing_version", "")) != PREPROCESSING_VERSION:
        raise InputError(f"{weights}: trained on preprocessing version {meta.get('preprocessing_version')!r}, "
                         f"this software makes version {PREPROCESSING_VERSION!r}")
    if meta.get("format") == "hntumorseg-model":
        segmenter = Segmenter(weights, device=device, tta=tta, postprocess=postprocess)
        if "inference" not in meta and "members" not in meta:
            segmenter.window = window
        return segmenter
    model, meta = load_weights(weights)
    return SpecSegmenter(model, InferenceWindow.from_meta(meta) or window, device=device, tta=tta,
                         postprocess=ComponentFilter.from_meta(meta, weights.name) if postprocess else None,
                         name=meta.get("name") or weights.stem)


def members_of(segmenter: Segmenter) -> list[dict[str, Any]]:
    """What identifies the networks a segmenter ran: name, network, tensors_sha256, window (no timings)."""
    return [n.summary() for n in getattr(segmenter, "networks", [])]


def split_case_ids(cache: Path, split: str) -> tuple[list[str], dict[str, Any]]:
    """The case ids of ``split`` ("val", "train" or "all") from the cache's ``split.json``."""
    if split not in SPLITS:
        raise InputError(f"split must be one of {', '.join(SPLITS)}, got {split!r}")
    path = Path(cache) / "split.json"
    if not path.is_file():
        raise InputError(f"{path}: split file not found (run hntumorseg-train prepare)")
    data = read_json(path)
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


def _check_limit(limit: int | None) -> None:
    """InputError for a ``limit`` below 1: ``ids[:0]`` scores nothing and ``ids[:-2]`` silently drops cases."""
    if limit is not None and limit < 1:
        raise InputError(f"--limit {limit}: must be at least 1 (a number of cases)")


def refuse_other_labels(cache: Path, cases: Sequence[Case]) -> None:
    """InputError when a case's label file differs in size from the one its cached case was prepared
    from (recorded in its provenance). Why: ``--data ROOT`` (or an edited data root) may hold other files
    under the split's ids; scoring against them would report a figure for cases the run never saw."""
    for case in cases:
        recorded = ((read_provenance(case_dir(cache, case.case_id)) or {}).get("sources") or {}).get("label") or {}
        if case.label is None or "bytes" not in recorded:
            continue  # a cache written without sources (or by hand): nothing to compare
        size = Path(case.label).stat().st_size
        if size != recorded["bytes"]:
            raise InputError(f"{case.label}: label file of {case.case_id} has {size} bytes, the cache "
                             f"{cache} was prepared from one of {recorded['bytes']}; not the cases the run was "
                             "split on (prepare again, or evaluate the folder with --out DIR)")


def confusion_of(prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float]) -> dict[str, float]:
    """Class confusion of one case: per :data:`CONFUSIONS` key the share (NaN without the reference
    structure) and the confused volume in mL (``KEY_ml``); arrays (z, y, x), spacing SimpleITK (x, y, z)."""
    voxel_ml = voxel_volume_ml(spacing)
    out: dict[str, float] = {}
    for key, _, ref_label, pred_label in CONFUSIONS:
        ref = reference == ref_label
        n_ref = int(ref.sum())
        n_confused = int(np.logical_and(ref, prediction == pred_label).sum())
        out[key] = n_confused / n_ref if n_ref else float("nan")
        out[f"{key}_ml"] = n_confused * voxel_ml
    return out


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
    pred, ref = sitk.GetArrayViewFromImage(segmentation.label), sitk.GetArrayViewFromImage(reference)
    scores = score_images(segmentation.label, reference, f"{case.case_id} prediction")
    return CaseResult(case.case_id, case.centre, scores, seconds, confusion_of(pred, ref, ct.GetSpacing()))


def _finite_mean(values: Iterable[float]) -> tuple[float | None, int]:
    """Mean of the finite values and how many were not finite (left out)."""
    values = list(values)
    finite = [v for v in values if math.isfinite(v)]
    return (float(np.mean(finite)) if finite else None), len(values) - len(finite)


def _none_if_nan(value: float) -> float | None:
    return value if math.isfinite(value) else None


def summarise_confusion(results: Sequence[CaseResult]) -> dict[str, Any]:
    """Pooled and per-case-mean class confusion of ``results`` (see :data:`CONFUSION_RULE`)."""
    out: dict[str, Any] = {}
    for key, structure, _, _ in CONFUSIONS:
        confused = float(sum(r.confusion.get(f"{key}_ml", 0.0) for r in results))
        reference = float(sum(r.scores[structure]["ref_volume_ml"] for r in results))
        case_mean, undefined = _finite_mean(r.confusion.get(key, float("nan")) for r in results)
        out[key] = {"pooled": confused / reference if reference > 0 else None, "case_mean": case_mean,
                    "undefined_cases": undefined, "confused_ml": confused, "reference_ml": reference}
    return out


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
    out["confusion"] = summarise_confusion(results)
    return out


def _fmt(value: float | None, digits: int = 4) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


def _set_rows(summary: Mapping[str, Any]) -> list[tuple[str, Mapping[str, Any]]]:
    return [("all", summary["overall"])] + sorted(summary["per_centre"].items())


def confusion_table(summary: Mapping[str, Any]) -> str:
    """The class confusion of the set and per centre as a Markdown table (no rule text)."""
    head = ("| Set | Cases | GTVp predicted GTVn (pooled) | GTVn predicted GTVp (pooled) "
            "| GTVp predicted GTVn (per case) | GTVn predicted GTVp (per case) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, s in _set_rows(summary):
        c = s.get("confusion")
        if not c:  # a summary written before confusion was reported
            continue
        pooled = [_fmt(c[k]["pooled"]) for k, *_ in CONFUSIONS]
        per_case = []
        for k, *_ in CONFUSIONS:
            text = _fmt(c[k]["case_mean"])
            if c[k]["undefined_cases"]:
                text += f" ({c[k]['undefined_cases']} undef.)"
            per_case.append(text)
        lines.append(f"| {name} | {s['cases']} | {pooled[0]} | {pooled[1]} | {per_case[0]} | {per_case[1]} |")
    return "\n".join(lines) + "\n"


def markdown_table(summary: Mapping[str, Any]) -> str:
    """The set and per-centre figures, then the class confusion, as Markdown tables with their rules."""
    head = ("| Set | Cases | Dice GTVp | Dice GTVn | Mean | DSCagg GTVp | DSCagg GTVn | F1agg GTVn "
            "| HD95 GTVp (mm) | HD95 GTVn (mm) |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, s in _set_rows(summary):
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
    if summary["overall"].get("confusion"):
        lines += ["", confusion_table(summary).rstrip("\n"), "", CONFUSION_RULE]
    not_scored = summary.get("not_scored") or []
    if not_scored:
        lines += ["", f"Not scored ({len(not_scored)}; not complete labelled cases):"]
        lines += [f"- {p['case_id']}: {p['reason']}" for p in not_scored]
    overlap = summary.get("training_cases_in_set") or []
    if overlap:
        lines += ["", f"**{len(overlap)} of these cases were training cases of the run**: "
                      f"{', '.join(overlap[:10])}{', …' if len(overlap) > 10 else ''}"]
    return "\n".join(lines) + "\n"


def cases_csv(results: Sequence[CaseResult]) -> bytes:
    """One row per case: Dice, HD95 (empty when undefined), volumes (mL), node counts, confusion, seconds."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = ["dice", "hd95", "pred_volume_ml", "ref_volume_ml", "tp_volume_ml"]
    confusion_cols = [c for key, *_ in CONFUSIONS for c in (key, f"{key}_ml")]
    w.writerow(["case_id", "centre", *(f"{s}_{c}" for s in STRUCTURES for c in cols), "mean_dice",
                "GTVn_lesion_tp", "GTVn_lesion_fp", "GTVn_lesion_fn", *confusion_cols, "seconds"])

    def number(v: float) -> str:
        return "" if not math.isfinite(v) else f"{v:.6g}"

    for r in results:
        values = [number(r.scores[s][c]) for s in STRUCTURES for c in cols]
        n = r.scores["GTVn"]
        confusion = [number(r.confusion.get(c, float("nan"))) for c in confusion_cols]
        w.writerow([r.case_id, r.centre, *values, f"{r.scores['mean_dice']:.6g}", n["lesion_tp"], n["lesion_fp"],
                    n["lesion_fn"], *confusion, f"{r.seconds:.2f}"])
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


def _score(segmenter: Segmenter, cases: Sequence[Case],
           progress: Callable[[int, int, CaseResult], None] | None) -> list[CaseResult]:
    results: list[CaseResult] = []
    for i, case in enumerate(cases, 1):
        results.append(evaluate_case(segmenter, case))
        if progress:
            progress(i, len(cases), results[-1])
    return results


def _common_summary(segmenter: Segmenter, results: Sequence[CaseResult], tta: bool) -> dict[str, Any]:
    """The summary keys both kinds of evaluation write: how it was run and the figures."""
    return {
        "device": str(segmenter.device), "tta": bool(tta),
        "inference_window": segmenter.window.to_dict() if getattr(segmenter, "window", None) else None,
        "postprocess": segmenter.postprocess.to_dict() if getattr(segmenter, "postprocess", None) else None,
        "members": members_of(segmenter),
        "path": "HNTumorSegLib Segmenter (preprocess, network, restore) on the native CT grid",
        "empty_mask_rules": EMPTY_MASK_RULES,
        "confusion_rule": CONFUSION_RULE,
        "overall": summarise(results),
        "per_centre": {c: summarise([r for r in results if r.centre == c])
                       for c in sorted({r.centre for r in results})},
        "seconds_per_case": float(np.mean([r.seconds for r in results])) if results else None,
        "case_ids": [r.case_id for r in results],
    }


def _write_reports(out: Path, results: Sequence[CaseResult], summary: Mapping[str, Any], title: str) -> None:
    out.mkdir(parents=True, exist_ok=True)
    write_bytes(cases_csv(results), out / "cases.csv")
    write_bytes(markdown_table(summary).encode("utf-8"), out / "summary.md")
    write_bytes(boxplot_png(results, title), out / "boxplot.png")
    write_json(summary, out / SUMMARY_FILE)  # last: compare and export read it


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
    _check_limit(limit)
    ids, split_data = split_case_ids(Path(info["cache"]), split)
    if limit is not None:
        ids = ids[:limit]
    if not ids:  # a summary of no case would pass for an evaluation (export reads it as one)
        raise InputError(f"{info['cache']}: split {split!r} holds no case; nothing to evaluate")
    root = Path(data_root) if data_root is not None else Path(split_data["data_root"])
    cases = cases_for(root, ids)
    refuse_other_labels(Path(info["cache"]), cases)
    if segmenter is None:
        segmenter = make_segmenter(weights, run_window(info), device=device, tta=tta, postprocess=postprocess)
    results = _score(segmenter, cases, progress)
    model_name = info.get("model_spec", {}).get("name", "?")
    summary = {
        "format": "hntumorseg-evaluation", "run": str(run.resolve()), "model": model_name, "weights": which,
        "weights_file": str(weights), "split": split, "cases_from": f"split {split} of the run's cache",
        "data_root": str(root.resolve()), "limited_to_first": limit,
        **_common_summary(segmenter, results, tta),
    }
    title = f"{run.name} ({model_name}, {which}) on {split}"
    _write_reports(evaluation_dir(run, split, which), results, summary, title)
    return summary


def _run_of(weights: Path) -> Path | None:
    """The run folder a weights file lies in (``RUN/best.json``), or None for a model file elsewhere."""
    return weights.parent if (weights.parent / "run.json").is_file() else None


def training_case_ids(run: Path) -> list[str] | None:
    """The training cases of a run (from its cache's split.json), or None when they cannot be read."""
    try:
        ids, _ = split_case_ids(Path(run_settings(run)["cache"]), "train")
    except (InputError, OSError, KeyError, ValueError):
        return None
    return ids


def folder_cases(data: Path) -> tuple[list[Case], list[CaseProblem]]:
    """The complete labelled cases of a folder (HECKTOR layouts) and what could not be used."""
    if not Path(data).is_dir():
        raise InputError(f"{data}: case folder not found")
    cases, problems = find_cases(data, require_label=True)
    if not cases:
        listed = "; ".join(f"{p.case_id}: {p.reason}" for p in problems[:3])
        raise InputError(f"{data}: no labelled cases found (HECKTOR layout: CASE/CASE__CT.nii.gz, CASE__PT.nii.gz, "
                         f"CASE.nii.gz, or imagesTr/ + labelsTr/){'; ' + listed if listed else ''}")
    return cases, problems


def evaluate_folder(data: str | Path | None, out: str | Path, *, model: str | Path | None = None,
                    run: str | Path | None = None, which: str = "best", device: str = "auto", tta: bool = False,
                    postprocess: bool = True, limit: int | None = None,
                    progress: Callable[[int, int, CaseResult], None] | None = None,
                    segmenter: Segmenter | None = None, cache: str | Path | None = None,
                    split: str = "val") -> dict[str, Any]:
    """Score a model on every labelled case of the folder ``data``; writes the reports into ``out``.

    The model is ``model`` (a model file, one network or an ensemble, or a run's weights JSON) or
    ``run``'s ``which`` weights; exactly one of the two, unless ``segmenter`` is given (tests).
    Cases that are not complete (no label, a missing PET) are listed in the summary as not scored.
    When the model comes from a run, the summary lists the folder's cases that were among the
    run's training cases (``training_cases_in_set``): a score on them is not a held-out score.

    ``cache``: score only the cases of its ``split`` (from its ``split.json``), read from ``data`` or,
    when None, from the data root the cache records. How an ensemble of folds is scored on the
    cases that every fold held out, as a single run is with ``evaluate --run RUN --split val``.
    """
    out = Path(out)
    if limit is not None and limit < 0:  # (0 is refused below, as no case to evaluate)
        _check_limit(limit)
    if (model is None) == (run is None) and segmenter is None:
        raise InputError("evaluate a folder with either --model MODEL or --run RUN, not both or neither")
    if cache is not None:
        ids, split_data = split_case_ids(Path(cache), split)
        data = Path(data) if data is not None else Path(split_data["data_root"])
        cases, problems = cases_for(data, ids), []
        refuse_other_labels(Path(cache), cases)
        cases_from = f"split {split} of cache {Path(cache).name}"
    else:
        if data is None:
            raise InputError("give the folder of cases to score (--data FOLDER) or a cache's split (--cache CACHE)")
        data = Path(data)
        cases, problems = folder_cases(data)
        cases_from = "folder"
    if limit is not None:
        cases = cases[:limit]
    if not cases:
        raise InputError(f"{data}: no case to evaluate" + (" (--limit 0)" if limit == 0 else ""))
    weights: Path | None = None
    window = None
    if run is not None:
        run = Path(run)
        info = run_settings(run)
        weights = weights_of(run, which)
        window = run_window(info)
    elif model is not None:
        weights = model_paths(model).json
        if not weights.is_file():
            raise InputError(f"{model}: model file not found ({weights.name})")
        run = _run_of(weights)
        if run is not None:
            window = run_window(run_settings(run))
    if segmenter is None:
        segmenter = make_segmenter(weights, window, device=device, tta=tta, postprocess=postprocess)
    training = training_case_ids(run) if run is not None else None
    overlap = sorted(set(training or []) & {c.case_id for c in cases})
    results = _score(segmenter, cases, progress)
    meta = read_json(weights) if weights is not None else {}
    if run is not None and weights is not None and weights.stem in WHICH:
        which = weights.stem
    name = meta.get("name") or (f"{run.name}/{which}" if run is not None else None) \
        or (weights.stem if weights is not None else "?")
    summary = {
        "format": "hntumorseg-evaluation", "model": name, "model_file": str(weights) if weights else None,
        "weights_sha256": meta.get("weights_sha256"), "run": str(run.resolve()) if run is not None else None,
        "weights": which if run is not None else None, "split": split if cache is not None else None,
        "cases_from": cases_from,
        "data_root": str(data.resolve()), "limited_to_first": limit,
        "not_scored": [{"case_id": p.case_id, "reason": p.reason} for p in problems],
        "training_cases_in_set": overlap if training is not None else None,
        **_common_summary(segmenter, results, tta),
    }
    _write_reports(out, results, summary, f"{name} on {data.name}")
    return summary


def read_summary(run: str | Path, split: str = "val", which: str = "best") -> dict[str, Any]:
    """The ``summary.json`` that :func:`evaluate` wrote; InputError when the run was not evaluated."""
    path = evaluation_dir(Path(run), split, which) / SUMMARY_FILE
    if not path.is_file():
        raise InputError(f"{run}: not evaluated on {split} with its {which} weights "
                         f"(run: hntumorseg-train evaluate --run {run} --split {split} --weights {which})")
    return read_json(path)


def read_evaluation(folder: str | Path) -> dict[str, Any]:
    """The ``summary.json`` of an evaluation folder (``evaluate --out DIR``, or ``RUN/evaluation/val-best``)."""
    path = Path(folder) / SUMMARY_FILE
    if not path.is_file():
        raise InputError(f"{folder}: not an evaluation folder (no {SUMMARY_FILE}; write one with "
                         "hntumorseg-train evaluate ... --out DIR)")
    summary = read_json(path)
    if not isinstance(summary, dict) or summary.get("format") != "hntumorseg-evaluation":
        raise InputError(f"{path}: not an hntumorseg evaluation summary")
    return summary


def table3(runs: Sequence[tuple[str, Mapping[str, Any]]]) -> str:
    """The paper's Table 3 layout (Method, GTVp, GTVn, Mean) for (name, summary) pairs, as Markdown."""
    lines = ["| Method | GTVp | GTVn | Mean (GTVp/GTVn) |", "|---|---|---|---|"]
    for name, s in runs:
        o = s["overall"]
        lines.append(f"| {name} | {_fmt(o['GTVp']['dice_mean'])} | {_fmt(o['GTVn']['dice_mean'])} "
                     f"| {_fmt(o['mean_dice'])} |")
    return "\n".join(lines) + "\n"


def confusion_line(confusion: Mapping[str, Any], key: str = "pooled") -> str:
    """``GTVp->GTVn 0.0123, GTVn->GTVp 0.0000`` from a set's (or a case's) confusion."""
    parts = []
    for k, structure, _, _ in CONFUSIONS:
        value = confusion[k][key] if isinstance(confusion.get(k), Mapping) else confusion.get(k)
        other = "GTVn" if structure == "GTVp" else "GTVp"
        parts.append(f"{structure}->{other} "
                     f"{'n/a' if value is None or not math.isfinite(value) else f'{value:.4f}'}")
    return ", ".join(parts)
