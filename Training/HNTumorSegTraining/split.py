"""Seeded, centre-stratified train/validation split (paper section 2.1, Table 1).

Why per centre: centres differ in field of view and uptake patterns, so model selection on a
validation set that misses a centre, or over-represents one, says little about the others.

Two ways to say how many validation cases each centre gives:

* ``val_fraction`` (the default rule): centre c with n_c cases gets its share
  f * n_c, rounded by the largest-remainder (Hamilton) method so that the total is
  round(f * N) (halves up); every centre with at least 2 cases gives at least 1 validation case
  and keeps at least 1 training case. When those bounds make round(f * N) impossible, the
  total is moved to the nearest feasible value (e.g. 7 centres of >= 2 cases need >= 7).
* ``val_counts``: explicit counts per centre, e.g. the ``"paper"`` preset
  :data:`PAPER_TABLE1_VAL_COUNTS`. The paper calls its split "centre-proportional", but its
  Table 1 counts are *not* a function of the centre sizes: CHUP and CHUS both have 72 cases yet
  give 8 and 12 validation cases, and USZ gives 4 of 11 (36 %) while MDA gives 32 of 396 (8 %).
  No proportional rule reproduces them, so they are given explicitly.

Which ids go to validation: each centre's ids are sorted, then shuffled by a numpy Generator
seeded with (seed, CRC-32 of the centre name), and the first k taken. The result depends only on
the set of ids, the counts and the seed, not on input order, and adding a centre does not
change the choice within the others.

Cross-validation folds (:func:`fold_cases`, ``fit --fold k --folds n``) split the *training* cases
of a split again, the same way stratified by centre: each centre's ids are sorted and shuffled
(Generator(seed, CRC-32 of the centre, FOLD_STREAM)), then all centres, in name order, are dealt
round-robin into the n folds, the deal continuing where the previous centre stopped. So every
centre's cases are spread over the folds as evenly as possible (fold counts of a centre differ by
at most 1), the folds' sizes differ by at most 1, and the folds depend only on the set of ids, n
and the seed. The split's validation cases are not part of any fold: they stay held out.
"""

from __future__ import annotations

import math
import zlib
from typing import Mapping, Sequence

import numpy as np

from HNTumorSegLib.cases.hecktor import case_sort_key, parse_case_id

#: Paper Table 1: validation cases per centre (80 of 680).
PAPER_TABLE1_VAL_COUNTS: dict[str, int] = {
    "CHUM": 12, "CHUP": 8, "CHUS": 12, "HGJ": 8, "HMR": 4, "MDA": 32, "USZ": 4}
#: Paper Table 1: cases per centre.
PAPER_TABLE1_TOTALS: dict[str, int] = {
    "CHUM": 56, "CHUP": 72, "CHUS": 72, "HGJ": 55, "HMR": 18, "MDA": 396, "USZ": 11}
#: Named val_counts presets (for the command line).
VAL_COUNT_PRESETS: dict[str, dict[str, int]] = {"paper": PAPER_TABLE1_VAL_COUNTS}
#: The paper's overall validation fraction, 80 / 680; the default of the proportional rule.
DEFAULT_VAL_FRACTION = 80 / 680
#: Stream tag of the fold shuffles (the split's own shuffles use none).
FOLD_STREAM = 4


def resolve_val_counts(val_counts: Mapping[str, int] | str | None) -> dict[str, int] | None:
    """A preset name ("paper") or a mapping to a plain dict of counts; None stays None."""
    if val_counts is None:
        return None
    if isinstance(val_counts, str):
        if val_counts not in VAL_COUNT_PRESETS:
            raise ValueError(f"unknown val_counts preset {val_counts!r}; known: "
                             f"{', '.join(sorted(VAL_COUNT_PRESETS))}")
        return dict(VAL_COUNT_PRESETS[val_counts])
    return dict(val_counts)


def proportional_counts(sizes: Mapping[str, int], val_fraction: float) -> dict[str, int]:
    """Validation cases per centre by the largest-remainder rule described in the module docstring."""
    if not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be in [0, 1), got {val_fraction}")
    centres = sorted(sizes)
    rank = {c: i for i, c in enumerate(centres)}
    if val_fraction == 0.0:
        return {c: 0 for c in centres}
    quota = {c: val_fraction * sizes[c] for c in centres}
    lo = {c: 1 if sizes[c] >= 2 else 0 for c in centres}
    hi = {c: sizes[c] - 1 if sizes[c] >= 2 else 0 for c in centres}
    counts = {c: min(max(math.floor(quota[c]), lo[c]), hi[c]) for c in centres}
    target = math.floor(val_fraction * sum(sizes.values()) + 0.5)
    target = min(max(target, sum(lo.values())), sum(hi.values()))
    # Largest remainder: hand out seats to the centres furthest below their quota, take seats
    # back from those furthest above it; ties go to the larger centre, then by name.
    while sum(counts.values()) < target:
        c = max((c for c in centres if counts[c] < hi[c]),
                key=lambda c: (quota[c] - counts[c], sizes[c], -rank[c]))
        counts[c] += 1
    while sum(counts.values()) > target:
        c = min((c for c in centres if counts[c] > lo[c]),
                key=lambda c: (quota[c] - counts[c], -sizes[c], rank[c]))
        counts[c] -= 1
    return counts


def _check_counts(sizes: Mapping[str, int], counts: Mapping[str, int]) -> None:
    unknown = sorted(set(counts) - set(sizes))
    if unknown:
        raise ValueError(f"val_counts names centres with no cases: {', '.join(unknown)} "
                         f"(centres with cases: {', '.join(sorted(sizes)) or 'none'})")
    missing = sorted(set(sizes) - set(counts))
    if missing:
        raise ValueError(f"val_counts gives no count for centres {', '.join(missing)}; give 0 "
                         "explicitly to keep a centre out of validation")
    for c in sorted(counts):
        k = counts[c]
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
            raise ValueError(f"val_counts[{c!r}] must be a non-negative integer, got {k!r}")
        if k > sizes[c]:
            raise ValueError(f"val_counts[{c!r}] = {k} but centre {c} has only {sizes[c]} cases")


def _centre_rng(seed: int, centre: str) -> np.random.Generator:
    return np.random.default_rng([int(seed), zlib.crc32(centre.encode("utf-8"))])


def split_cases(ids_by_centre: Mapping[str, list[str]], val_fraction: float | None = None,
                val_counts: Mapping[str, int] | str | None = None, seed: int = 0) -> dict:
    """Train/validation split of case ids grouped by centre.

    Give ``val_fraction`` (proportional rule) or ``val_counts`` (explicit, or a preset name such
    as ``"paper"``), not both; neither means ``val_fraction = DEFAULT_VAL_FRACTION``. Returns a
    JSON-ready dict: ``train``, ``val`` (sorted ids), ``val_counts``, ``seed``, ``rule`` and
    ``centres`` ({centre: {"total", "train", "val"}}).
    """
    if val_fraction is not None and val_counts is not None:
        raise ValueError("give val_fraction or val_counts, not both")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    ids = {c: sorted(set(v), key=case_sort_key) for c, v in ids_by_centre.items()}
    for c, v in ids_by_centre.items():
        if len(ids[c]) != len(v):
            raise ValueError(f"centre {c}: duplicate case ids")
    seen: dict[str, str] = {}
    for c in sorted(ids):
        for i in ids[c]:
            if i in seen:
                raise ValueError(f"case {i} is listed under centres {seen[i]} and {c}")
            seen[i] = c
    sizes = {c: len(v) for c, v in ids.items()}

    counts_given = resolve_val_counts(val_counts)
    if counts_given is not None:
        _check_counts(sizes, counts_given)
        counts = {c: int(counts_given[c]) for c in sorted(sizes)}
        rule = (f"explicit per-centre counts (preset {val_counts!r})" if isinstance(val_counts, str)
                else "explicit per-centre counts")
    else:
        fraction = DEFAULT_VAL_FRACTION if val_fraction is None else float(val_fraction)
        counts = proportional_counts(sizes, fraction)
        rule = (f"proportional, val_fraction={fraction:.6g}, largest remainder, total "
                f"round(f*N) within [1 per centre with >= 2 cases, n_c - 1 per centre]")

    train: list[str] = []
    val: list[str] = []
    for c in sorted(ids):
        order = _centre_rng(seed, c).permutation(len(ids[c]))
        chosen = {ids[c][i] for i in order[:counts[c]]}
        val += [i for i in ids[c] if i in chosen]
        train += [i for i in ids[c] if i not in chosen]
    return {
        "train": sorted(train, key=case_sort_key),
        "val": sorted(val, key=case_sort_key),
        "val_counts": counts,
        "seed": int(seed),
        "rule": rule + "; ids per centre sorted, shuffled by numpy Generator(seed, crc32(centre))",
        "centres": {c: {"total": sizes[c], "train": sizes[c] - counts[c], "val": counts[c]}
                    for c in sorted(sizes)},
    }


def _centre_or_self(case_id: str) -> str:
    try:
        return parse_case_id(case_id)
    except ValueError:
        return case_id


def fold_cases(case_ids: Sequence[str], folds: int, seed: int = 0) -> list[list[str]]:
    """``case_ids`` in ``folds`` centre-stratified folds (module docstring); each fold sorted.

    Ids that are not of the CENTRE-NNN form count as a centre of their own.
    """
    ids = sorted(set(case_ids), key=case_sort_key)
    if len(ids) != len(case_ids):
        raise ValueError("duplicate case ids")
    if isinstance(folds, bool) or not isinstance(folds, (int, np.integer)) or folds < 2:
        raise ValueError(f"folds must be an integer >= 2, got {folds!r}")
    if folds > len(ids):
        raise ValueError(f"{folds} folds need at least {folds} training cases, the split has {len(ids)}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"fold seed must be a non-negative integer, got {seed!r}")
    by_centre: dict[str, list[str]] = {}
    for i in ids:
        by_centre.setdefault(_centre_or_self(i), []).append(i)
    out: list[list[str]] = [[] for _ in range(folds)]
    position = 0
    for centre in sorted(by_centre):
        members = by_centre[centre]
        order = np.random.default_rng([int(seed), zlib.crc32(centre.encode("utf-8")), FOLD_STREAM]).permutation(
            len(members))
        for k in order:
            out[position % folds].append(members[k])
            position += 1
    return [sorted(f, key=case_sort_key) for f in out]


def fold_split(case_ids: Sequence[str], fold: int, folds: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """(training, validation) ids of fold ``fold`` (0-based) of :func:`fold_cases`: validate on it, train on the rest."""
    if isinstance(fold, bool) or not isinstance(fold, (int, np.integer)) or not 0 <= fold < folds:
        raise ValueError(f"fold must be an integer in [0, {folds}) (0-based), got {fold!r}")
    parts = fold_cases(case_ids, folds, seed)
    train = sorted((i for k, part in enumerate(parts) if k != fold for i in part), key=case_sort_key)
    return train, parts[fold]
