"""Choose a model's connected-component clean-up (``HNTumorSegLib.pipeline.postprocess``) on tuning cases.

The network runs once per case (the real :class:`~HNTumorSegLib.pipeline.inference.Segmenter`
prediction, on the cached network input); every connected component of its GTVp and GTVn is
recorded with its size, its peak probability and how many of its voxels are in the reference.
Each candidate rule's per-case Dice then follows from sums over the kept components, so a
grid of rules is scored exactly without re-running anything. The rule with the highest mean
Dice is written into the weights' JSON (``"postprocess"``), where ``evaluate``, ``export``,
the CLI and the Slicer module find it; ties go to the gentler rule.

Criterion ``sign`` (``--criterion sign``) takes a rule only if it also passes a one-sided exact
sign test against no clean-up: it must improve more cases than it worsens, beyond chance at
``SIGN_TEST_ALPHA``. Why: on a few tuning cases the best mean can come from noise (+0.004 Dice from
deleting small pieces in three cases), and such a rule, strict where the tuning cases were easy,
deleted whole primaries on a centre the model had not seen. A mean is moved by one case going from
0 to 1; a count of cases is not.

Choose it on cases the model will not be evaluated on: the run's training cases (the default),
or better a separate tuning cache (``--cache``), e.g. extra phantoms prepared apart from the
cohort; a tuning case that is a validation case of a run (by id, whatever cache holds it) is refused.
The choice, its cases and the Dice before and after are recorded beside the rule. A structure that no
tuning case has (no GTVn anywhere) gets no rule: deleting every prediction of it would score best
there and delete it on the cases that have it.

An ensemble (``--run A --run B``) gets one rule chosen on its averaged probabilities, the output it
will actually clean up; it is written to a rule file of its own (:mod:`.rule_file`) that ``export
--postprocess-rule`` takes, because a member's own rule was chosen for that member alone.
"""

from __future__ import annotations

import itertools
import json
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import numpy as np

from HNTumorSegLib import LABELS
from HNTumorSegLib.cli.output_paths import refuse_clashes
from HNTumorSegLib.errors import InputError
from HNTumorSegLib.imaging.geometry import LATTICE_SPACING, voxel_volume_ml
from HNTumorSegLib.imaging.image_io import write_json
from HNTumorSegLib.pipeline.inference import Segmenter
from HNTumorSegLib.pipeline.model_file import model_paths
from HNTumorSegLib.pipeline.postprocess import ComponentFilter, StructureRule, components, kept_components

from .cache import case_dir, is_finished, open_case
from .evaluate import make_segmenter, members_of, run_settings, run_window, split_case_ids, weights_of
from .export import export
from .rule_file import write_rule_file

#: Candidate thresholds: component volume (mL) and peak probability; each with and without largest-only
#: and keep-strongest.
VOLUME_GRID_ML = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0)
PEAK_GRID = (0.0, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
VOXEL_ML = voxel_volume_ml(LATTICE_SPACING)
#: How the rule is chosen: ``mean`` (the best mean Dice) or ``sign`` (the best mean among rules that
#: pass the sign test against no clean-up).
CRITERIA = ("mean", "sign")
SIGN_TEST_ALPHA = 0.05


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
    """The grid, gentlest first (so that ties keep the gentler rule): keeping the strongest component
    of an otherwise emptied structure is gentler than not, and changes nothing without thresholds."""
    rules = [StructureRule(v, p, largest, strongest) for largest, strongest, v, p in
             itertools.product((False, True), (True, False), VOLUME_GRID_ML, PEAK_GRID)
             if not (strongest and v == 0.0 and p == 0.0)]
    return sorted(rules, key=lambda r: (r.largest_only, r.min_volume_ml + r.min_peak_probability,
                                        r.min_volume_ml, not r.keep_strongest))


def per_case_dice(items: Sequence[CaseStructure], rule: StructureRule) -> np.ndarray:
    return np.array([item.dice(rule) for item in items], dtype=float)


def sign_test(gains: Sequence[float], tolerance: float = 1e-9) -> tuple[int, int, float]:
    """``(cases improved, cases worsened, p)``: the one-sided exact sign test of per-case Dice gains,
    p the chance of at least that many improved cases among the changed ones if a rule were as
    likely to worsen a case as to improve it (unchanged cases do not count)."""
    from scipy.stats import binomtest

    gains = np.asarray(gains, dtype=float)
    up, down = int((gains > tolerance).sum()), int((gains < -tolerance).sum())
    p = float(binomtest(up, up + down, 0.5, alternative="greater").pvalue) if up + down else 1.0
    return up, down, p


def best_rule(items: Sequence[CaseStructure], criterion: str = "mean") -> tuple[StructureRule, float, float]:
    """``(rule, mean Dice without clean-up, mean Dice with the rule)`` for one structure."""
    if criterion not in CRITERIA:
        raise InputError(f"criterion must be one of {', '.join(CRITERIA)}, got {criterion!r}")
    if not items:  # no case: a mean of nothing (NaN) must not pick a rule
        return StructureRule(), float("nan"), float("nan")
    none = per_case_dice(items, StructureRule())
    before = float(none.mean())
    best, best_score = StructureRule(), before
    for rule in candidate_rules():
        per_case = per_case_dice(items, rule)
        score = float(per_case.mean())
        if not score > best_score + 1e-9:  # also never on NaN (no case): nothing to choose from
            continue
        if criterion == "sign" and sign_test(per_case - none)[2] > SIGN_TEST_ALPHA:
            continue
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


def choose(found: Mapping[str, Sequence[CaseStructure]],
           criterion: str = "mean") -> tuple[ComponentFilter, dict[str, Any]]:
    """The best rule per structure and the Dice before/after (window grid, mean over cases), with
    the cases it improved and worsened."""
    rules, scores = {}, {}
    for name, items in found.items():
        if not any(item.reference for item in items):
            # no reference voxel of it anywhere: every rule that deletes its predictions scores best, and
            # would delete the structure on cases that have it; nothing is chosen for it
            rules[name] = StructureRule()
            scores[name] = {"mean_dice_before": None, "mean_dice_after": None, "cases_improved": 0,
                            "cases_worsened": 0, "sign_test_p": None,
                            "not_chosen": f"no tuning case has {name}; no clean-up for it"}
            continue
        rule, before, after = best_rule(items, criterion)
        rules[name] = rule
        up, down, p = sign_test(per_case_dice(items, rule) - per_case_dice(items, StructureRule()))
        scores[name] = {"mean_dice_before": round(before, 4), "mean_dice_after": round(after, 4),
                        "cases_improved": up, "cases_worsened": down, "sign_test_p": round(p, 4)}
    return ComponentFilter(rules), scores


def _segmenter(runs: Sequence[Path], infos: Sequence[Mapping[str, Any]], which: str, device: str,
               tta: bool) -> Segmenter:
    """The raw (no clean-up) segmenter of one run's weights, or of several runs' as the ensemble that
    ``export`` writes: exported to a temporary file and loaded through the same path as the shipped
    file, so the probabilities searched are exactly the ones the model file will average."""
    if len(runs) == 1:
        return make_segmenter(weights_of(runs[0], which), run_window(infos[0]), device=device, tta=tta,
                              postprocess=False)
    with tempfile.TemporaryDirectory(prefix="hntumorseg-ensemble-") as tmp:
        _, config = export(runs, Path(tmp) / "ensemble", which=which, require_evaluation=False, postprocess=False)
        return make_segmenter(config, None, device=device, tta=tta, postprocess=False)


def _refuse_validation_cases(runs: Sequence[Path], infos: Sequence[Mapping[str, Any]], cache: Path, split: str,
                             ids: Sequence[str]) -> None:
    """InputError when a tuning case is a validation case of a run, by case id: another cache (or a copy
    of the run's) can hold the same cases, and a rule chosen on them would be evaluated on them."""
    for r, info in zip(runs, infos):
        try:
            val, _ = split_case_ids(Path(info["cache"]), "val")
        except InputError:
            continue  # the run's cache is gone: its validation cases cannot be known
        overlap = sorted(set(ids) & set(val))
        if overlap:
            raise InputError(f"{cache}: split {split!r} holds {len(overlap)} of the validation cases of {r} "
                             f"({', '.join(overlap[:3])}{', …' if len(overlap) > 3 else ''}); choose the clean-up "
                             "on training cases or a separate tuning cache, not on the cases it will be evaluated on")


def tune_postprocess(run: str | Path | Sequence[str | Path], *, which: str = "last",
                     cache: str | Path | None = None, split: str = "train", limit: int | None = None,
                     device: str = "auto", tta: bool = False, criterion: str = "mean",
                     out: str | Path | None = None,
                     progress: Callable[[int, int, str], None] | None = None) -> dict[str, Any]:
    """Choose the clean-up of ``run``'s ``which`` weights; returns the entry.

    One run and no ``out``: the entry is written into the weights' JSON. Several runs (an ensemble:
    the rule is chosen on their averaged probabilities) or ``out``: into the rule file ``out``
    (see :mod:`.rule_file`), for ``export --postprocess-rule``.
    """
    runs = [Path(run)] if isinstance(run, (str, Path)) else [Path(r) for r in run]
    if not runs:
        raise InputError("postprocess needs at least one --run")
    if len(runs) > 1 and out is None:
        raise InputError("the clean-up of several runs (an ensemble) belongs to none of them: give --out FILE.json "
                         "and export the ensemble with --postprocess-rule FILE.json")
    if limit is not None and limit < 1:
        raise InputError(f"--limit {limit}: must be at least 1 (the number of tuning cases)")
    if out is not None:  # before anything is read or written: --out RUN/best.json would replace the weights
        inputs = [("--run", p) for r in runs for w in ("best", "last") for p in (
            model_paths(r / w).json, model_paths(r / w).weights)]
        inputs += [("--run", r / "run.json") for r in runs]
        refuse_clashes([("--out", Path(out))], inputs)
    infos = [run_settings(r) for r in runs]
    own_caches = {Path(info["cache"]).resolve() for info in infos}
    if cache is None:
        if len(own_caches) > 1:
            raise InputError("the runs were trained on different caches: give the tuning cases with --cache")
        cache = Path(infos[0]["cache"])
    cache = Path(cache)
    ids = tuning_cases(cache, split)
    if limit is not None:
        ids = ids[:limit]
    _refuse_validation_cases(runs, infos, cache, split, ids)
    segmenter = _segmenter(runs, infos, which, device, tta)
    chosen, scores = choose(collect(segmenter, cache, ids, progress), criterion)
    entry = {**chosen.to_dict(),
             "chosen_on": {"cache": str(cache.resolve()), "split": split, "cases": len(ids), "tta": bool(tta),
                           "criterion": criterion,
                           **({"averaged_over": len(runs)} if len(runs) > 1 else {}),
                           "grid": {"min_volume_ml": list(VOLUME_GRID_ML), "min_peak_probability": list(PEAK_GRID),
                                    "largest_only": [False, True], "keep_strongest": [True, False]},
                           "window_grid_dice": scores}}
    if out is not None:
        members = [{"run": r.name, "weights": which, "tensors_sha256": n["tensors_sha256"]}
                   for r, n in zip(runs, members_of(segmenter))]
        write_rule_file(out, entry, members)
        return entry
    weights = weights_of(runs[0], which)
    meta = json.loads(weights.read_text(encoding="utf-8"))
    meta["postprocess"] = entry
    write_json(meta, weights)
    return entry
