"""The ``hntumorseg-train`` command: phantoms, prepare and fit.

User mistakes print one line, ``hntumorseg-train: error: ...``, and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from HNTumorSegLib.cli import run_guarded
from HNTumorSegLib.errors import InputError

from . import phantom_cohort


def cmd_prepare(args: argparse.Namespace) -> int:
    from .prepare import prepare

    if not Path(args.data).is_dir():
        raise InputError(f"{args.data}: data root not found")
    report = prepare(args.data, args.out, workers=args.workers, progress=not args.no_progress,
                     val_fraction=args.val_fraction, val_counts=args.val_counts, seed=args.seed)
    counts = report.counts
    print(", ".join(f"{k} {v}" for k, v in counts.items()))
    for rejection in report.rejected:
        print(f"  rejected {rejection.case_id} ({rejection.stage}): {'; '.join(rejection.reasons)}")
    c = report.containment
    print(f"window 256 x 256 x 112 keeps all GTVp in {c['all_GTVp_inside']}, all GTVn in {c['all_GTVn_inside']} "
          f"of {c['cases']} cases; report: {Path(args.out) / 'prepare_report.json'}")
    return 0


def cmd_fit(args: argparse.Namespace) -> int:
    from .fit import run_fit

    result = run_fit(args)
    if result.best_metric is not None:
        print(f"best validation mean Dice {result.best_metric:.4f} at epoch {result.best_epoch}")
    return 0


def _val_counts(text: str) -> str | dict[str, int]:
    """``paper`` or ``CENTRE=N,CENTRE=N``."""
    if text == "paper":
        return text
    try:
        return {k.strip(): int(v) for k, v in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"--val-counts must be 'paper' or CENTRE=N,...; got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from .fit import add_fit_arguments

    parser = argparse.ArgumentParser(prog="hntumorseg-train", description="Train HNTumorSeg models on HECKTOR data.")
    sub = parser.add_subparsers(dest="command", required=True)

    sp = sub.add_parser("phantoms", help="write a seeded cohort of synthetic PET/CT phantoms (HECKTOR layout)")
    phantom_cohort.add_arguments(sp)
    sp.set_defaults(func=phantom_cohort.run)

    sp = sub.add_parser("prepare", help="check, preprocess and cache every case; report and split")
    sp.add_argument("--data", required=True, type=Path, help="HECKTOR 2025 Task 1 data root")
    sp.add_argument("--out", required=True, type=Path, help="cache folder")
    sp.add_argument("--workers", type=int, default=1)
    sp.add_argument("--val-fraction", type=float, help="validation fraction (centre-proportional)")
    sp.add_argument("--val-counts", type=_val_counts,
                    help="'paper' (the paper's Table 1 counts) or CENTRE=N,... per centre")
    sp.add_argument("--seed", type=int, default=0)
    sp.add_argument("--no-progress", action="store_true")
    sp.set_defaults(func=cmd_prepare)

    sp = sub.add_parser("fit", help="train a network on a prepared cache")
    add_fit_arguments(sp)
    sp.set_defaults(func=cmd_fit)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded("hntumorseg-train", args.func, args, user_errors=(InputError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
