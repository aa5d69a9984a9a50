"""A seeded cohort of synthetic PET/CT phantoms in the HECKTOR 2025 layout.

Real HECKTOR data needs a data-use agreement, so smoke runs, tests and the bundled demo model
train on phantoms. The cohort mixes the fields of view of the paper's Fig. 1 and the awkward
cases (brain cut by the scan, in-plane field of view under 256 mm, RAS-stored directions) over
a few pseudo-centres, so that ``prepare``, the split and training see the variety they must
handle. Case ``i`` is always the same phantom for the same seed (and style).

Styles (``--style``, see :mod:`HNTumorSegLib.phantom.styles`): without one, the cohort is the
``classic`` one the bundled model was trained on (centres PHA, PHB, PHC), unchanged. With one or
more, case ``i`` belongs to style ``styles[i % len(styles)]`` and to that style's centre code
(legacy PLG, digital PDG, endemic PNE), numbered by its cohort index (``PDG-007`` is index 6),
so that case ids never collide, whatever styles a cohort is extended with; ``cohort.json`` records
the style of every case.
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from HNTumorSegLib.errors import InputError
from HNTumorSegLib.imaging.image_io import read_json, remove_temporaries, write_json
from HNTumorSegLib.imaging.input_integrity import check_input_file
from HNTumorSegLib.phantom import case_paths, make_phantom, write_case
from HNTumorSegLib.phantom.styles import CLASSIC, STYLES, get_style

#: Pseudo-centres of the classic style and their field-of-view mix (head, head_upper, whole_body),
#: like Fig. 1's spread.
CENTRES = dict(zip(CLASSIC.centres, CLASSIC.fov_mix))
FIELDS = ("head", "head_upper", "whole_body")
#: Marker in the data root: says the cases are synthetic (export labels models trained on them).
COHORT_FILE = "cohort.json"
MARKER_FORMAT = "hntumorseg-phantom-cohort"
#: Case indices of one seed: case ``i`` of seed ``s`` is phantom seed ``s * MAX_INDEX + i``.
MAX_INDEX = 100_000


def cohort_case(index: int, seed: int = 0, style: str = "classic") -> dict:
    """The recipe of case ``index`` of a cohort of ``style``: centre, id, phantom seed, field of view,
    variant flags and style (the keyword arguments of :func:`make_phantom`, with ``case_id``)."""
    st = get_style(style)
    tag = st.seed_tag
    rng = np.random.default_rng([seed, index] if tag is None else [seed, index, tag])
    k = len(st.centres)
    centre = st.centres[index % k]
    fov = FIELDS[int(rng.choice(3, p=st.fov_mix[index % k]))]
    return {
        "case_id": f"{centre}-{index // k + 1:03d}",
        "seed": int(seed * MAX_INDEX + index),
        "fov": fov,
        "brain_cut": bool(rng.random() < st.p_brain_cut),
        "small_fov": bool(fov == "head" and rng.random() < st.p_small_fov),
        "flip_xy": bool(rng.random() < st.p_flip_xy),
        "style": st.name,
    }


def parse_styles(values: Sequence[str] | str | None) -> list[str]:
    """Style names from ``--style`` values (each may be a comma list), in order, without repeats."""
    if values is None:
        return []
    if isinstance(values, str):
        values = [values]
    out: list[str] = []
    for value in values:
        for name in (v.strip() for v in value.split(",")):
            if not name:
                continue
            get_style(name)  # ValueError naming the known styles
            if name not in out:
                out.append(name)
    return out


def style_of(index: int, styles: Sequence[str] | None) -> str:
    """The style of case ``index`` when the cohort's cases are spread over ``styles``."""
    return styles[index % len(styles)] if styles else "classic"


def _write_case(recipe: dict, root: Path) -> None:
    """Draw one phantom from its cohort recipe and write it (a pool task: module-level, picklable)."""
    recipe = dict(recipe)
    case_id = recipe.pop("case_id")
    write_case(make_phantom(recipe.pop("seed"), recipe.pop("fov"), case_id=case_id, **recipe), root)


def write_cohort(root: str | os.PathLike, n: int, seed: int = 0, start: int = 0, progress: bool = True,
                 styles: Sequence[str] | None = None, workers: int = 1) -> list[str]:
    """Write cases ``start .. start + n - 1`` under ``root``; existing cases are kept (resumable).
    ``styles``: spread the cases over these styles (default: the classic cohort). ``workers``: cases
    drawn in that many processes at once (a cohort of hundreds takes minutes per core).

    A root already holding a cohort is resumed or extended only with the seed and styles its
    ``cohort.json`` records (:func:`check_settings`): the old cases would otherwise be kept beside
    new ones of another cohort, under a marker recording the new seed. The marker is written before
    any case, so that even a run killed before its end has recorded its seed and styles (it may list
    cases not yet written: the resume draws them). A case is kept only when
    its three files are whole (:func:`case_problem`); a damaged one is drawn again.
    """
    root = Path(root)
    check_range(n, seed, start)
    styles = parse_styles(list(styles)) if styles else []
    recipes = {index: cohort_case(index, seed, style_of(index, styles)) for index in range(start, start + n)}
    cohort = read_cohort(root)
    if cohort is not None:
        check_settings(root, cohort, seed, recipes)
    write_json(_marker(cohort, seed, recipes), root / COHORT_FILE)
    missing: list[dict] = []
    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:  # zlib lets go of the GIL
        problems = list(pool.map(case_problem, [root] * n, [r["case_id"] for r in recipes.values()]))
    for recipe, problem in zip(recipes.values(), problems):
        if problem:
            if problem != "missing":
                tqdm.write(f"{problem}; drawing {recipe['case_id']} again", file=sys.stderr)
            names = [path.name for path in case_paths(root, recipe["case_id"]).values()]
            remove_temporaries(root / recipe["case_id"], names, min_age_s=600)  # a killed run's (not a running one's)
            missing.append(recipe)
    bar = tqdm(total=n, initial=n - len(missing), desc="phantoms", disable=not progress)
    with bar:
        if workers <= 1 or len(missing) <= 1:
            for recipe in missing:
                _write_case(recipe, root)
                bar.update()
        else:
            # Spawn, not fork (the parent may hold SimpleITK threads); one case per task. Case i is a
            # function of (seed, i, style) alone, so the files do not depend on the number of workers.
            with ProcessPoolExecutor(max_workers=min(workers, len(missing)),
                                     mp_context=multiprocessing.get_context("spawn")) as pool:
                for _ in pool.map(_write_case, missing, [root] * len(missing)):
                    bar.update()
    return [recipe["case_id"] for recipe in recipes.values()]


def check_range(n: int, seed: int, start: int) -> None:
    """Refuse numbers that give no cohort, or one that repeats another: case ``i`` of seed ``s`` is
    phantom seed ``s * 100000 + i`` (published figures depend on that formula), so index 100000 + i
    would draw case ``i`` of seed ``s + 1`` again."""
    for option, value in (("--n", n), ("--seed", seed), ("--start", start)):
        if value < 0:
            raise InputError(f"{option} {value}: give a non-negative integer")
    if start + n > MAX_INDEX:
        raise InputError(f"--start {start} --n {n}: case indices must stay below {MAX_INDEX} (case i of seed s is "
                         f"phantom seed s * {MAX_INDEX} + i, so index {MAX_INDEX} + i repeats case i of seed s + 1)")


def check_settings(root: Path, cohort: dict[str, Any], seed: int, recipes: dict[int, dict]) -> None:
    """Refuse to add ``recipes`` (by case index) to the cohort its marker describes unless they are of the same cohort:
    the recorded seed, and the recorded style for every index already drawn."""
    path = root / COHORT_FILE
    if cohort["seed"] != seed:
        raise InputError(f"{path}: the cases here were drawn with --seed {cohort['seed']}, not --seed {seed}; "
                         f"give --seed {cohort['seed']} to resume or extend this cohort, or another --out")
    recorded = _case_styles(cohort)
    done = set(cohort["indices"])
    for index, recipe in recipes.items():
        if index in done and recipe["case_id"] not in recorded:
            was = next((case for case in (cohort_case(index, seed, name) for name in STYLES)
                        if case["case_id"] in recorded), None)
            old = f"style {was['style']} ({was['case_id']})" if was else "another style"
            raise InputError(f"{path}: case index {index} was drawn as {old}, not style {recipe['style']} "
                             f"({recipe['case_id']}); give the recorded --style to resume, or extend the cohort "
                             f"with --start {max(done) + 1}")


def case_problem(root: Path, case_id: str) -> str | None:
    """Why case ``case_id`` under ``root`` is not complete ("missing", or a file's damage), or None.

    Files are written atomically now, but a root written by an earlier version, or copied in part,
    can hold a cut one that reads without an error (see
    :mod:`~HNTumorSegLib.imaging.input_integrity`); a resumed run must draw such a case again."""
    paths = list(case_paths(root, case_id).values())
    if not all(path.is_file() for path in paths):
        return "missing"
    try:
        for path in paths:
            check_input_file(path)
    except InputError as exc:
        return str(exc)
    return None


def _case_styles(cohort: dict[str, Any]) -> dict[str, str]:
    """Case id -> style of the cases a marker records."""
    case_styles = dict(cohort.get("case_styles") or {})
    if cohort["indices"] and not case_styles:  # a marker written before styles existed: classic
        case_styles = {cohort_case(i, cohort["seed"])["case_id"]: "classic" for i in cohort["indices"]}
    return case_styles


def _marker(cohort: dict[str, Any] | None, seed: int, recipes: dict[int, dict]) -> dict[str, Any]:
    """The marker of the cohort ``cohort`` records plus ``recipes`` (by case index)."""
    cohort = cohort or {"seed": seed, "indices": []}
    indices = sorted(set(cohort["indices"]) | set(recipes))
    case_styles = _case_styles(cohort)
    case_styles.update({r["case_id"]: r["style"] for r in recipes.values()})
    case_styles = dict(sorted(case_styles.items()))
    used = sorted(set(case_styles.values()), key=list(STYLES).index)
    return {"format": MARKER_FORMAT, "synthetic": True,
            "generator": "HNTumorSegLib.phantom.make_phantom", "seed": seed, "indices": indices,
            "cases": len(case_styles) if case_styles else len(indices),
            "styles": {name: {"centres": list(STYLES[name].centres),
                              "cases": sum(1 for v in case_styles.values() if v == name)} for name in used},
            "case_styles": case_styles}


def read_cohort(root: str | os.PathLike) -> dict[str, Any] | None:
    """The cohort marker of a data root, or None when the root holds none.

    A marker that cannot be read is an InputError naming it: it was silently replaced before, and
    with it the record of the cases drawn earlier (their seed and styles)."""
    path = Path(root) / COHORT_FILE
    if not path.exists() and not path.is_symlink():
        return None
    data = read_json(path)
    if not isinstance(data, dict) or data.get("format") != MARKER_FORMAT:
        raise InputError(f"{path}: not a phantom cohort marker (no \"format\": \"{MARKER_FORMAT}\"); "
                         "damaged, or not written by hntumorseg-train phantoms?")
    seed, indices, case_styles = data.get("seed"), data.get("indices"), data.get("case_styles", {})
    if not (_is_index(seed) and isinstance(indices, list) and all(_is_index(i) for i in indices)
            and isinstance(case_styles, dict) and all(v in STYLES for v in case_styles.values())):
        raise InputError(f"{path}: phantom cohort marker without a valid seed, indices or case_styles; damaged?")
    return data


def _is_index(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _whole(least: int):
    """An argparse type: an integer of at least ``least`` (argparse names the option in its error; a
    negative --n wrote an empty cohort, and a negative --seed failed in numpy naming no option)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            value = None
        if value is None or value < least:
            raise argparse.ArgumentTypeError(f"give an integer of {least} or more, not {text!r}")
        return value
    return parse


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--out", required=True, type=Path, help="data root to write (HECKTOR layout)")
    parser.add_argument("--n", type=_whole(1), default=240, help="number of cases")
    parser.add_argument("--seed", type=_whole(0), default=0)
    parser.add_argument("--start", type=_whole(0), default=0,
                        help=f"first case index (to extend a cohort; indices stay below {MAX_INDEX})")
    parser.add_argument("--workers", type=int, default=1,
                        help="processes drawing cases at once (the files do not depend on it)")
    parser.add_argument("--style", action="append", metavar="NAME[,NAME...]",
                        help=f"centre style(s) to spread the cases over, repeatable or a comma list "
                             f"({', '.join(STYLES)}; default: the classic cohort, centres PHA/PHB/PHC)")
    return parser


def run(args: argparse.Namespace) -> int:
    styles = parse_styles(args.style)  # ValueError (one error line) for an unknown name
    if args.workers < 1:
        raise InputError(f"--workers {args.workers}: give 1 or more")
    ids = write_cohort(args.out, args.n, args.seed, args.start, styles=styles or None, workers=args.workers)
    by_style = {}
    for index in range(args.start, args.start + args.n):
        by_style[style_of(index, styles)] = by_style.get(style_of(index, styles), 0) + 1
    detail = ", ".join(f"{name} {count}" for name, count in by_style.items())
    print(f"{len(ids)} phantom cases in {args.out} ({detail})")
    return 0
