"""A seeded cohort of synthetic PET/CT phantoms in the HECKTOR 2025 layout.

Real HECKTOR data needs a data-use agreement, so smoke runs, tests and the bundled demo model
train on phantoms. The cohort mixes the fields of view of the paper's Fig. 1 and the awkward
cases (brain cut by the scan, in-plane field of view under 256 mm, RAS-stored directions) over
a few pseudo-centres, so that ``prepare``, the split and training see the variety they must
handle. Case ``i`` is always the same phantom for the same seed.
"""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from HNTumorSegLib.image_io import write_json
from HNTumorSegLib.phantom import make_phantom, write_case

#: Pseudo-centres and their field-of-view mix (head, head_upper, whole_body), like Fig. 1's spread.
CENTRES = {"PHA": (0.6, 0.3, 0.1), "PHB": (0.2, 0.6, 0.2), "PHC": (0.1, 0.3, 0.6)}
FIELDS = ("head", "head_upper", "whole_body")
#: Marker in the data root: says the cases are synthetic (export labels models trained on them).
COHORT_FILE = "cohort.json"


def cohort_case(index: int, seed: int = 0) -> dict:
    """The recipe of case ``index``: centre, id, phantom seed, field of view and variant flags."""
    rng = np.random.default_rng([seed, index])
    centre = list(CENTRES)[index % len(CENTRES)]
    fov = FIELDS[int(rng.choice(3, p=CENTRES[centre]))]
    return {
        "case_id": f"{centre}-{index // len(CENTRES) + 1:03d}",
        "seed": int(seed * 100_000 + index),
        "fov": fov,
        "brain_cut": bool(rng.random() < 0.15),
        "small_fov": bool(fov == "head" and rng.random() < 0.15),
        "flip_xy": bool(rng.random() < 0.25),
    }


def write_cohort(root: str | os.PathLike, n: int, seed: int = 0, start: int = 0, progress: bool = True) -> list[str]:
    """Write cases ``start .. start + n - 1`` under ``root``; existing cases are kept (resumable)."""
    root = Path(root)
    ids = []
    for index in tqdm(range(start, start + n), desc="phantoms", disable=not progress):
        recipe = cohort_case(index, seed)
        case_id = recipe.pop("case_id")
        ids.append(case_id)
        folder = root / case_id
        if all((folder / f"{case_id}{s}.nii.gz").exists() for s in ("__CT", "__PT", "")):
            continue
        write_case(make_phantom(recipe.pop("seed"), recipe.pop("fov"), case_id=case_id, **recipe), root)
    cohort = read_cohort(root) or {}
    indices = sorted(set(cohort.get("indices", [])) | set(range(start, start + n)))
    write_json({"format": "hntumorseg-phantom-cohort", "synthetic": True,
                "generator": "HNTumorSegLib.phantom.make_phantom", "seed": seed, "indices": indices,
                "cases": len(indices)}, root / COHORT_FILE)
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
    return parser


def run(args: argparse.Namespace) -> int:
    ids = write_cohort(args.out, args.n, args.seed, args.start)
    print(f"{len(ids)} phantom cases in {args.out}")
    return 0
