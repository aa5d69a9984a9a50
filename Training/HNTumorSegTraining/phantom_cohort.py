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
import json
import multiprocessing
import os
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from tqdm import tqdm

from HNTumorSegLib.errors import InputError
from HNTumorSegLib.imaging.image_io import write_json
from HNTumorSegLib.phantom import make_phantom, write_case
from HNTumorSegLib.phantom.styles import CLASSIC, STYLES, get_style

#: Pseudo-centres of the classic style and their field-of-view mix (head, head_upper, whole_body),
#: like Fig. 1's spread.
CENTRES = dict(zip(CLASSIC.centres, CLASSIC.fov_mix))
FIELDS = ("head", "head_upper", "whole_body")
#: Marker in the data root: says the cases are synthetic (export labels models trained on them).
COHORT_FILE = "cohort.json"


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
        "seed": int(seed * 100_000 + index),
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
    drawn in that many processes at once (a cohort of hundreds takes minutes per core)."""
    root = Path(root)
    styles = parse_styles(list(styles)) if styles else []
    ids = []
    written: dict[str, dict] = {}
    missing: list[dict] = []
    for index in range(start, start + n):
        recipe = cohort_case(index, seed, style_of(index, styles))
        case_id = recipe["case_id"]
        ids.append(case_id)
        written[case_id] = {"index": index, "style": recipe["style"]}
        folder = root / case_id
        if not all((folder / f"{case_id}{s}.nii.gz").exists() for s in ("__CT", "__PT", "")):
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
    cohort = read_cohort(root) or {}
    indices = sorted(set(cohort.get("indices", [])) | set(range(start, start + n)))
    case_styles = dict(cohort.get("case_styles", {}))
    if cohort.get("indices") and not case_styles:  # a marker written before styles existed: classic
        case_styles = {cohort_case(i, cohort.get("seed", seed))["case_id"]: "classic" for i in cohort["indices"]}
    case_styles.update({cid: w["style"] for cid, w in written.items()})
    case_styles = dict(sorted(case_styles.items()))
    used = sorted(set(case_styles.values()), key=list(STYLES).index)
    write_json({"format": "hntumorseg-phantom-cohort", "synthetic": True,
                "generator": "HNTumorSegLib.phantom.make_phantom", "seed": seed, "indices": indices,
                "cases": len(case_styles) if case_styles else len(indices),
                "styles": {name: {"centres": list(STYLES[name].centres),
                                  "cases": sum(1 for v in case_styles.values() if v == name)} for name in used},
                "case_styles": case_styles}, root / COHORT_FILE)
    return ids


def read_cohort(root: str | os.PathLike) -> dict[str, Any] | None:
    """The cohort marker of a data root, or None when the root holds no (readable) marker."""
    path = Path(root) / COHORT_FILE
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    parser.add_argument("--out", required=True, type=Path, help="data root to write (HECKTOR layout)")
    parser.add_argument("--n", type=int, default=240, help="number of cases")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--start", type=int, default=0, help="first case index (to extend a cohort)")
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
