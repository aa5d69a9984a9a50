"""The ``hntumorseg-train`` command: phantoms, prepare, fit, postprocess, evaluate, compare
and export.

User mistakes print one line, ``hntumorseg-train: error: ...``, and exit with status 2.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Sequence

from HNTumorSegLib.cli.guard import run_guarded
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
    for problem in report.file_problems:
        print(f"  file problem {problem.case_id}: {'; '.join(problem.reasons)}")
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


def cmd_evaluate(args: argparse.Namespace) -> int:
    from .evaluate import confusion_line, evaluate, evaluate_folder, evaluation_dir, markdown_table

    def report(i: int, n: int, result) -> None:
        s = result.scores
        print(f"[{i}/{n}] {result.case_id}: Dice GTVp {s['GTVp']['dice']:.4f} GTVn {s['GTVn']['dice']:.4f}; "
              f"confusion {confusion_line(result.confusion)} ({result.seconds:.1f} s)", flush=True)

    progress = None if args.quiet else report
    if args.out is None:  # a run's own split
        if args.model is not None or args.cache is not None:
            raise InputError("--model and --cache score into a report folder: give --out DIR (and --data FOLDER "
                             "or --cache CACHE)")
        if args.run is None:
            raise InputError("give --run RUN (its own --split), or --model MODEL / --run RUN with --data FOLDER "
                             "--out DIR")
        split = args.split or "val"
        summary = evaluate(args.run, split=split, which=args.weights, data_root=args.data, device=args.device,
                           tta=args.tta, postprocess=not args.no_postprocess, limit=args.limit, progress=progress)
        out = evaluation_dir(args.run, split, args.weights)
    else:  # any folder of labelled cases, or a cache's split
        if args.split is not None and args.cache is None:
            raise InputError("--split chooses among a run's own cases or, with --cache, a cache's; with --out "
                             "and --data alone every case of the folder is scored")
        if args.data is None and args.cache is None:
            raise InputError("--out DIR scores the cases of a folder: give --data FOLDER (or --cache CACHE)")
        if (args.model is None) == (args.run is None):
            raise InputError("give either --model MODEL or --run RUN with --data FOLDER --out DIR")
        summary = evaluate_folder(args.data, args.out, model=args.model, run=args.run, which=args.weights,
                                  device=args.device, tta=args.tta, postprocess=not args.no_postprocess,
                                  limit=args.limit, progress=progress, cache=args.cache,
                                  split=args.split or "val")
        out = args.out
    print(markdown_table(summary), end="")
    members = summary.get("members") or []
    if len(members) > 1:
        print(f"model: ensemble of {len(members)} networks ({', '.join(m['name'] for m in members)})")
    print(f"confusion (pooled, all cases): {confusion_line(summary['overall']['confusion'])}")
    overlap = summary.get("training_cases_in_set") or []
    if overlap:
        print(f"warning: {len(overlap)} of these cases are training cases of the run: not a held-out score",
              file=sys.stderr)
    print(f"reports: {out}")
    return 0


def cmd_postprocess(args: argparse.Namespace) -> int:
    from .postprocess_search import tune_postprocess

    def report(i: int, n: int, case_id: str) -> None:
        print(f"[{i}/{n}] {case_id}", flush=True)

    entry = tune_postprocess(args.run, which=args.weights, cache=args.cache, split=args.split, limit=args.limit,
                             device=args.device, tta=args.tta, criterion=args.criterion, out=args.out,
                             progress=None if args.quiet else report)
    for name, rule in entry["rules"].items():
        dice = entry["chosen_on"]["window_grid_dice"][name]
        if dice.get("not_chosen"):
            print(f"{name}: {dice['not_chosen']}")
            continue
        print(f"{name}: drop components < {rule['min_volume_ml']} mL or peak probability < "
              f"{rule['min_peak_probability']}{', keep the largest only' if rule['largest_only'] else ''}"
              f"{', never all (the strongest stays)' if rule.get('keep_strongest') else ''}; "
              f"mean Dice {dice['mean_dice_before']:.4f} -> {dice['mean_dice_after']:.4f} "
              f"on {entry['chosen_on']['cases']} tuning cases ({dice['cases_improved']} improved, "
              f"{dice['cases_worsened']} worsened)")
    if args.out is None:
        print(f"written into {args.run[0] / args.weights}.json; evaluate again before export")
    else:
        runs = " ".join(f"--run {r}" for r in args.run)
        print(f"written into {args.out}; export {runs} --weights {args.weights} --postprocess-rule {args.out} "
              "--unevaluated, evaluate the model file, then export again with --evaluation")
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from HNTumorSegLib.cli.output_paths import refuse_clashes
    from HNTumorSegLib.imaging.image_io import write_bytes

    from .evaluate import SUMMARY_FILE, evaluation_dir, read_evaluation, read_summary, table3

    summaries = [Path(path) / SUMMARY_FILE if (Path(path) / SUMMARY_FILE).is_file()
                 else evaluation_dir(path, args.split, args.weights) / SUMMARY_FILE for path in args.runs]
    if args.out:  # before anything is written: --out RUN/evaluation/val-best/summary.json is an input
        refuse_clashes([("--out", args.out)], [("a compared evaluation", s) for s in summaries])
    rows = []
    for path, file in zip(args.runs, summaries):
        if (Path(path) / SUMMARY_FILE).is_file():  # an evaluation folder (evaluate --out DIR)
            summary = read_evaluation(path)
        else:
            summary = read_summary(path, args.split, args.weights)
        rows.append((f"{Path(path).name} ({summary.get('model', '?')})", summary))
        try:
            table3(rows[-1:])
        except (KeyError, TypeError) as exc:  # a summary cut short or written by hand
            raise InputError(f"{file}: not a complete evaluation summary (no {exc} entry); evaluate again") from None
    text = table3(rows)
    print(text, end="")
    if args.out:
        write_bytes(text.encode("utf-8"), args.out)
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from .export import export, parse_evaluations

    weights, config = export(args.run, args.out, which=args.weights, split=args.split,
                             require_evaluation=not args.unevaluated, description=args.description,
                             intended_use=args.intended_use, evaluations=parse_evaluations(args.evaluation),
                             postprocess=not args.no_postprocess, postprocess_rule=args.postprocess_rule)
    kind = f"an ensemble of {len(args.run)} networks" if len(args.run) > 1 else "one network"
    print(f"wrote {config} and {weights} ({weights.stat().st_size / 1e6:.1f} MB, {kind})")
    return 0


def _limit(text: str) -> int:
    """``--limit N``: a number of cases, at least 1 (``ids[:0]`` scores nothing, ``ids[:-1]`` drops the last)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a whole number of cases expected, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1 (a number of cases), got {value}")
    return value


def _val_counts(text: str) -> str | dict[str, int]:
    """``paper`` or ``CENTRE=N,CENTRE=N``."""
    if text == "paper":
        return text
    try:
        return {k.strip(): int(v) for k, v in (item.split("=") for item in text.split(","))}
    except ValueError:
        raise argparse.ArgumentTypeError(f"--val-counts must be 'paper' or CENTRE=N,...; got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    from . import click_model
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

    def run_options(sp: argparse.ArgumentParser) -> None:
        sp.add_argument("--split", choices=("val", "train", "all"), default="val")
        sp.add_argument("--weights", choices=("best", "last"), default="best",
                        help="the run's best-validation or last-epoch weights")

    sp = sub.add_parser("evaluate", help="score a model on the native CT grid through the inference path: "
                                          "a run's own split, or any folder of labelled cases")
    sp.add_argument("--run", type=Path, help="run folder made by fit (its --weights)")
    sp.add_argument("--model", type=Path,
                    help="a model file (.json/.safetensors; one network or an ensemble) or a run's weights; "
                         "needs --out DIR and --data FOLDER or --cache CACHE")
    sp.add_argument("--split", choices=("val", "train", "all"), default=None,
                    help="with --run and no --out: which of the run's cases; with --cache: which of the "
                         "cache's (default val)")
    sp.add_argument("--weights", choices=("best", "last"), default="best",
                    help="the run's best-validation or last-epoch weights")
    sp.add_argument("--data", type=Path,
                    help="with --out: the folder of labelled cases to score (HECKTOR layout); "
                         "without: the run's data root, when it moved since prepare")
    sp.add_argument("--out", type=Path, help="report folder for a --data folder (or --cache split) evaluation")
    sp.add_argument("--cache", type=Path,
                    help="with --out: score the cases of this cache's --split (default val), e.g. an ensemble of "
                         "folds on the cases all of them held out; read from the cache's data root or --data")
    sp.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    sp.add_argument("--tta", action="store_true", help="left-right flip test-time augmentation")
    sp.add_argument("--no-postprocess", action="store_true",
                    help="score the raw network output, without the weights' component clean-up")
    sp.add_argument("--limit", type=_limit, help="only the first N cases (smoke runs)")
    sp.add_argument("--quiet", action="store_true", help="no per-case lines")
    sp.set_defaults(func=cmd_evaluate)

    sp = sub.add_parser("postprocess", help="choose the weights' connected-component clean-up on tuning cases")
    sp.add_argument("--run", required=True, type=Path, action="append",
                    help="run folder made by fit; repeat for an ensemble (the rule is chosen on the averaged "
                         "probabilities and needs --out)")
    sp.add_argument("--out", type=Path,
                    help="write the rule to this file (for export --postprocess-rule) instead of into the "
                         "weights' JSON; needed for an ensemble")
    sp.add_argument("--weights", choices=("best", "last"), default="best",
                    help="the run's best-validation or last-epoch weights")
    sp.add_argument("--cache", type=Path,
                    help="prepared cache of tuning cases (default: the run's own cache, --split train)")
    sp.add_argument("--split", choices=("val", "train", "all"), default="train",
                    help="split of --cache to tune on (val/all of the run's own cache are refused)")
    sp.add_argument("--device", default="auto", help="auto (default), cpu, cuda")
    sp.add_argument("--tta", action="store_true", help="left-right flip test-time augmentation")
    sp.add_argument("--criterion", choices=("mean", "sign"), default="mean",
                    help="mean: the best mean Dice; sign: the best mean among rules that improve more cases "
                         "than they worsen (one-sided sign test, p <= 0.05)")
    sp.add_argument("--limit", type=_limit, help="only the first N cases")
    sp.add_argument("--quiet", action="store_true", help="no per-case lines")
    sp.set_defaults(func=cmd_postprocess)

    sp = sub.add_parser("compare", help="the paper's Table 3 (GTVp, GTVn, mean Dice) for evaluated runs")
    sp.add_argument("runs", nargs="+", type=Path,
                    help="run folders, each evaluated on --split, or evaluation folders (evaluate --out DIR)")
    run_options(sp)
    sp.add_argument("--out", type=Path, help="also write the table (Markdown) here")
    sp.set_defaults(func=cmd_compare)

    sp = sub.add_parser("export", help="write a run's weights (or several runs': an ensemble) as an HNTumorSeg "
                                       "model file (safetensors + JSON)")
    sp.add_argument("--run", required=True, type=Path, action="append",
                    help="run folder; repeat for an ensemble of the runs' networks (probabilities averaged)")
    sp.add_argument("--out", required=True, type=Path, help="model path without suffix, e.g. models/NAME")
    run_options(sp)
    sp.add_argument("--evaluation", action="append", default=[], metavar="NAME=DIR",
                    help="an evaluation folder to record as metrics.evaluations.NAME (repeatable: e.g. "
                         "heldout=RUN/evaluation/val-best unseen_style=EVAL_DIR); it must have scored "
                         "exactly the exported weights")
    sp.add_argument("--unevaluated", action="store_true",
                    help="export even though it was not evaluated (metrics: training validation only)")
    sp.add_argument("--no-postprocess", action="store_true",
                    help="export without the component clean-up (e.g. when ensemble members prescribe different ones)")
    sp.add_argument("--postprocess-rule", type=Path, metavar="FILE",
                    help="the clean-up from a rule file (postprocess --out) chosen for exactly these weights, "
                         "instead of the runs' own (an ensemble's rule, chosen on its averaged output)")
    sp.add_argument("--description", help="what the model was trained on (default: from the data root)")
    sp.add_argument("--intended-use", help="the intended-use statement written into the model JSON")
    sp.set_defaults(func=cmd_export)

    sp = sub.add_parser("click-model", help="train the editor's click model (draws a lymph node at a click) on "
                                             "phantoms", description=click_model.DESCRIPTION)
    click_model.add_arguments(sp)
    sp.set_defaults(func=click_model.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_guarded("hntumorseg-train", args.func, args, user_errors=(InputError, ValueError))


if __name__ == "__main__":
    sys.exit(main())
