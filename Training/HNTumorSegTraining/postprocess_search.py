"""Choose a model's connected-component clean-up (``HNTumorSegLib.pipeline.postprocess``) on tuning cases.

The network runs once per case (the real :class:`~HNTumorSegLib.pipeline.inference.Segmenter`
prediction, on the cached network input); every connected component of its GTVp and GTVn is
recorded with its size, its peak probability and how many of its voxels are in the reference.
Each candidate rule's per-case Dice then follows from sums over the kept components, so a
grid of rules is scored exactly without re-running anything. The rule with the highest mean
Dice is written into the weights' JSON (``"postprocess"``), where ``evaluate``, ``export``,
the CLI and the Slicer module find it; ties go to the gentler rule.

Choose it on cases the model will not be evaluated on: the run's training cases (the default),
or better a separate tuning cache (``--cache``), e.g. extra phantoms prepared apart from the
cohort. The choice, its cases and the Dice before and after are recorded beside the rule.
"""

from __future__ import annotations

import itertools
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from HNTumorSegLib import LABELS
from HNTumorSegLib.errors import InputError
from HNTumorSegLib.imaging.geometry import LATTICE_SPACING, voxel_volume_ml
from HNTumorSegLib.imaging.image_io import write_json
from HNTumorSegLib.pipeline.inference import Segmenter
from HNTumorSegLib.pipeline.postprocess import ComponentFilter, StructureRule, components, kept_components

from .cache import case_dir, is_finished, open_case
from .evaluate import make_segmenter, run_settings, run_window, split_case_ids, weights_of

#: Candidate thresholds: component volume (mL) and peak probability; each with and without largest-only.
VOLUME_GRID_ML = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
PEAK_GRID = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
VOXEL_ML = voxel_volume_ml(LATTICE_SPACING)


@dataclass(frozen=True)
class CaseStructure:
    """One structure of one case: its predicted components and the reference size (voxels)."""

    sizes: np.ndarray
    peaks: np.ndarray
    hits: np.ndarray  # reference voxels of the structure inside each component
    reference: int

    def dice(self, rule: StructureRule) -> float:
        keep = kept_components(self.sizes, self.peaks, rule, VOXEL_ML)
        predicted, hit = int(self.sizes[keep].sum()), int(self.hits[keep].sum())
        if predicted + self.reference == 0:
            return 1.0  # absent from both: the evaluation's empty-mask rule
        return 2.0 * hit / (predicted + self.reference)


def case_structures(label: np.ndarray, probabilities: np.ndarray,
                    reference: np.ndarray) -> dict[str, CaseStructure]:
    """Components of every structure of a predicted ``label`` against ``reference`` (window grid)."""
    out = {}
    for value, name in LABELS.items():
        comp = components(label == value, probabilities[value])
        inside = reference == value
        hits = np.bincount(comp.ids[inside], minlength=len(comp.sizes) + 1)[1:]
        out[name] = CaseStructure(comp.sizes, comp.peaks, hits, int(inside.sum()))
    return out


def candidate_rules() -> list[StructureRule]:
    """The grid, gentlest first (so that ties keep the gentler rule)."""
    rules = [StructureRule(v, p, largest) for largest, v, p in
             itertools.product((False, True), VOLUME_GRID_ML, PEAK_GRID)]
    return sorted(rules, key=lambda r: (r.largest_only, r.min_volume_ml + r.min_peak_probability,
                                        r.min_volume_ml))


def mean_dice(items: Sequence[CaseStructure], rule: StructureRule) -> float:
    return float(np.mean([item.dice(rule) for item in items]))


def best_rule(items: Sequence[CaseStructure]) -> tuple[StructureRule, float, float]:
    """``(rule, mean Dice without clean-up, mean Dice with the rule)`` for one structure."""
    before = mean_dice(items, StructureRule())
    best, best_score = StructureRule(), before
    for rule in candidate_rules():
        score = mean_dice(items, rule)
        if score > best_score + 1e-9:
            best, best_score = rule, score
    return best, before, best_score


def tuning_cases(cache: Path, split: str) -> list[str]:
    """The finished cases of ``split`` of ``cache``; InputError when there are none."""
    ids, _ = split_case_ids(cache, split)
    ids = [i for i in ids if is_finished(case_dir(cache, i))]
    if not ids:
        raise InputError(f"{cache}: no prepared cases in split {split!r}")
    return ids


def collect(segmenter: Segmenter, cache: Path, ids: Iterable[str],
            progress: Callable[[int, int, str], None] | None = None) -> dict[str, list[CaseStructure]]:
    """Run the network on every case once and record its components per structure."""
    ids = list(ids)
    found: dict[str, list[CaseStructure]] = {name: [] for name in LABELS.values()}
    for i, case_id in enumerate(ids, 1):
        case = open_case(cache, case_id)
        prob = segmenter.probabilities(np.asarray(case.image, dtype=np.float32))
        per = case_structures(prob.argmax(axis=0).astype(np.uint8), prob, np.asarray(case.label))
        for name, item in per.items():
            found[name].append(item)
        if progress:
            progress(i, len(ids), case_id)
    return found


def choose(found: Mapping[str, Sequence[CaseStructure]]) -> tuple[ComponentFilter, dict[str, Any]]:
    """The best rule per structure and the Dice before/after (window grid, mean over cases)."""
    rules, scores = {}, {}
    for name, items in found.items():
        rule, before, after = best_rule(items)
        rules[name] = rule
        scores[name] = {"mean_dice_before": round(before, 4), "mean_dice_after": round(after, 4)}
    return ComponentFilter(rules), scores


def tune_postprocess(run: str | Path, *, which: str = "last", cache: str | Path | None = None,
                     split: str = "train", limit: int | None = None, device: str = "auto", tta: bool = False,
                     progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Choose the clean-up of ``run``'s ``which`` weights and write it into their JSON; returns the entry."""
    run = Path(run)
    info = run_settings(run)
    weights = weights_of(run, which)
    cache = Path(cache) if cache is not None else Path(info["cache"])
    if cache.resolve() == Path(info["cache"]).resolve() and split in ("val", "all"):
        raise InputError(f"{cache}: split {split!r} holds the run's validation cases; choose the clean-up on "
                         "training cases or a separate tuning cache, not on the cases it will be evaluated on")
    ids = tuning_cases(cache, split)
    if limit is not None:
        ids = ids[:limit]
    segmenter = make_segmenter(weights, run_window(info), device=device, tta=tta, postprocess=False)
    chosen, scores = choose(collect(segmenter, cache, ids, progress))
    entry = {**chosen.to_dict(),
             "chosen_on": {"cache": str(cache.resolve()), "split": split, "cases": len(ids), "tta": bool(tta),
                           "grid": {"min_volume_ml": list(VOLUME_GRID_ML), "min_peak_probability": list(PEAK_GRID),
                                    "largest_only": [False, True]},
                           "window_grid_dice": scores}}
    meta = json.loads(weights.read_text(encoding="utf-8"))
    meta["postprocess"] = entry
    write_json(meta, weights)
    return entry
