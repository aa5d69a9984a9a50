"""The ``hntumorseg`` command: segment, batch, rtstruct, edit, preprocess and demo.

User mistakes print one line, ``hntumorseg: error: ...``, and exit with status 2; outputs are
written atomically, so a failed run leaves no half-written file behind.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from HNTumorSegLib import LABELS, __version__
from HNTumorSegLib.cli.guard import run_guarded
from HNTumorSegLib.cli.edit import add_parser as add_edit_parser, join_click_values
from HNTumorSegLib.cli.case_inputs import dicom_input_options, print_measurements, read_dicom_aware_inputs
from HNTumorSegLib.cli.output_paths import model_inputs, refuse_clashes, resolved_path
from HNTumorSegLib.cli.segment_case import (labels_of_another_ct, refuse_report_of_another, run_segmentation,
                                            sidecar_path, uncertainty_path)
from HNTumorSegLib.errors import InputError

#: Phantom seed of ``demo``: outside the seeds of the default training cohort (0..239, see
#: HNTumorSegTraining.phantom_cohort), so the demo shows the bundled model on a case it never saw.
DEMO_SEED = 900_007


def _print_resources(report: dict) -> None:
    """How many networks ran, how long each took, and the peak memory: what an ensemble costs."""
    members = report.get("members") or []
    if members:
        seconds = [m.get("network_seconds") for m in members]
        each = " + ".join("?" if t is None else f"{t:.1f}" for t in seconds)
        kind = f"ensemble of {len(members)} networks" if len(members) > 1 else "1 network"
        print(f"  model: {kind}, network time {each} s{' (one member after the other)' if len(members) > 1 else ''}")
    memory = report.get("memory") or {}
    parts = []
    if memory.get("peak_rss_mib") is not None:
        parts.append(f"{memory['peak_rss_mib']:.0f} MiB resident (process peak)")
    if memory.get("cuda_peak_allocated_mib") is not None:
        parts.append(f"{memory['cuda_peak_allocated_mib']:.0f} MiB allocated on the GPU")
    if parts:
        print(f"  peak memory: {', '.join(parts)}")



def cmd_preprocess(args) -> int:
    from HNTumorSegLib.imaging.image_io import read_image, write_json, write_npy
    from HNTumorSegLib.pipeline.preprocess import preprocess

    out = Path(args.out)
    refuse_clashes([("--out", out)] + [(f"--out's {name}", out / name)
                                       for name in ("input.npy", "label.npy", "provenance.json")],
                   [("--ct", args.ct), ("--pet", args.pet), ("--label", args.label)], folders=["--out"])
    inputs = read_dicom_aware_inputs(args)
    ct, pet = inputs.ct, inputs.pet
    label = read_image(args.label, "label") if args.label else None
    pre = preprocess(ct, pet, label, ct_name=str(args.ct), pet_name=str(args.pet),
                     label_name=str(args.label))
    # An earlier run's provenance.json goes first and the new one is written last, so a run that fails between
    # its writes (a full disk) leaves a folder without one, which is incomplete, not an earlier run's record
    # beside this run's input.npy; an earlier run's label.npy would pass for this input's.
    (out / "provenance.json").unlink(missing_ok=True)
    if pre.label is None:
        (out / "label.npy").unlink(missing_ok=True)
    write_npy(pre.image, out / "input.npy")
    if pre.label is not None:
        write_npy(pre.label, out / "label.npy")
    write_json({**pre.provenance, "inputs": {"ct": str(resolved_path(args.ct)), "pet": str(resolved_path(args.pet))}, **inputs.report(),
                "timings_s": pre.timings}, out / "provenance.json")
    w = pre.provenance["crop"]
    print(f"window x[{w['x1']}:{w['x2']}] y[{w['y1']}:{w['y2']}] z[{w['z1']}:{w['z2']}] "
          f"({pre.provenance['anchor']}-anchored) -> {out / 'input.npy'}")
    return 0


def cmd_segment(args) -> int:
    from HNTumorSegLib.dicom.exports import check_dicom_ct, write_dicom_outputs

    out = Path(args.out)
    outputs = [("--out", out), ("the report of --out", sidecar_path(out)), ("--rtstruct", args.rtstruct),
               ("--dicom-seg", args.dicom_seg), ("--probabilities", args.probabilities)]
    if args.probabilities:
        outputs.append(("the uncertainty map of --probabilities", uncertainty_path(args.probabilities)))
    refuse_clashes(outputs, [("--ct", args.ct), ("--pet", args.pet), *model_inputs(args.model)])
    refuse_report_of_another(out)
    for option, value in (("--rtstruct", args.rtstruct), ("--dicom-seg", args.dicom_seg)):
        if value:
            check_dicom_ct(args.ct, option)
    inputs = read_dicom_aware_inputs(args)

    def exports(label, case):
        return write_dicom_outputs(label, case.ct_dicom, args.rtstruct, args.dicom_seg, label_name=str(out),
                                   split_lesions=args.split_lesions)

    report, _, report_path = run_segmentation(Path(args.ct), Path(args.pet), out, args.model, args.device,
                                              args.tta, inputs=inputs, after_label=exports,
                                              postprocess=not args.no_postprocess, probabilities=args.probabilities,
                                              refine_nodes=args.refine_nodes)
    print(f"wrote {out} and {report_path} in {report['timings_s']['total']:.1f} s on {report['device']}")
    for key in ("rtstruct", "dicom_seg"):
        if key in report:
            print(f"wrote {report[key]['file']}")
    if "probabilities" in report:
        written = report["probabilities"]
        print(f"wrote {written['file']} (GTVp, GTVn probabilities) and {written['uncertainty']['file']} "
              f"({written['uncertainty']['measure']})")
    _print_resources(report)
    print_measurements(report["structures"], report.get("lesions"))
    return 0


def cmd_rtstruct(args) -> int:
    """A label map on a DICOM CT's grid (an edited one, say) to an RT Structure Set."""
    from HNTumorSegLib.cases.inputs import read_ct
    from HNTumorSegLib.dicom.exports import check_dicom_ct
    from HNTumorSegLib.imaging.image_io import read_image
    from HNTumorSegLib.imaging.label_checks import ct_digest
    from HNTumorSegLib.dicom.rtstruct import summary_line, write_rtstruct

    refuse_clashes([("--out", args.out)], [("--ct", args.ct), ("--labels", args.labels)])
    check_dicom_ct(args.ct, "rtstruct")
    ct, ct_dicom = read_ct(args.ct, args.ct_series)
    label = read_image(args.labels, "label")
    problem = labels_of_another_ct(args.labels, ct_digest(ct), args.ct)
    if problem:
        raise InputError(problem)
    summaries = write_rtstruct(label, ct_dicom, args.out, label_name=str(args.labels),
                               roi_generation=args.roi_generation, split_lesions=args.split_lesions)
    print(f"wrote {args.out} (CT series {ct_dicom.series.uid}): {summary_line(summaries)}")
    return 0


def _seed(text: str) -> int:
    """A phantom seed: an integer of 0 or more (numpy's generators take no other)."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if value < 0:
        raise argparse.ArgumentTypeError(f"give an integer of 0 or more, not {text!r}")
    return value


def cmd_demo(args) -> int:
    from HNTumorSegLib.pipeline.inference import Segmenter, default_model_path

    try:
        model = args.model or default_model_path()
    except InputError as exc:
        print(f"hntumorseg demo: cannot run: {exc}. Nothing was written.", file=sys.stderr)
        return 1
    import SimpleITK as sitk

    from HNTumorSegLib.imaging.image_io import write_json
    from HNTumorSegLib.evaluation.metrics import dice
    from HNTumorSegLib.evaluation.overlay import save_overlay
    from HNTumorSegLib.phantom import make_phantom, write_case

    out = Path(args.out)
    # the model and the device first: a demo that cannot run writes nothing (not even its phantom)
    segmenter = Segmenter(str(model), device=args.device, tta=args.tta, postprocess=not args.no_postprocess)
    case = make_phantom(args.seed, args.fov)
    paths = write_case(case, out / "input")
    seg_path = out / f"{case.case_id}_seg.nii.gz"
    report, seg, report_path = run_segmentation(paths["ct"], paths["pet"], seg_path, segmenter, args.device,
                                                args.tta, reference=case.label, postprocess=not args.no_postprocess,
                                                refine_nodes=args.refine_nodes)
    pred = sitk.GetArrayViewFromImage(seg.label)
    truth = sitk.GetArrayViewFromImage(case.label)
    scores = {name: dice(pred, truth, value) for value, name in LABELS.items()}
    report["reference"] = {"label": str(paths["label"]), "dice": scores, "phantom": case.info,
                           "dice_rule": "both empty = 1.0, one empty = 0.0"}
    write_json(report, report_path)
    png = out / f"{case.case_id}_overlay.png"
    save_overlay(seg.preprocessed.image, seg.window_mask, png, reference=seg.preprocessed.label,
                 title=f"{case.case_id} (synthetic phantom): Dice GTVp {scores['GTVp']:.3f}, "
                       f"GTVn {scores['GTVn']:.3f}")
    print(f"phantom case {case.case_id} ({args.fov}) segmented in {report['timings_s']['total']:.1f} s "
          f"on {report['device']}")
    _print_resources(report)
    print_measurements(report["structures"], report.get("lesions"))
    print(f"  Dice against the phantom truth: GTVp {scores['GTVp']:.3f}, GTVn {scores['GTVn']:.3f}")
    print(f"wrote {seg_path}, {report_path}, {png}")
    return 0




def cmd_batch(args) -> int:
    """Every case under --input, resumable and shardable; a summary CSV."""
    from HNTumorSegLib.cli.batch import (FAILED, BatchOptions, find_batch_cases, parse_shard, run_batch, run_batch_parallel, shard,
                                         summary_path)
    from HNTumorSegLib.cli.output_paths import refuse_folder_inside

    spec = parse_shard(args.shard) if args.shard else None
    if args.workers < 1:
        raise InputError(f"--workers {args.workers}: must be 1 or more")
    refuse_folder_inside(Path(args.out), "--out", Path(args.input), "--input")
    cases = find_batch_cases(args.input)
    if spec:
        cases = shard(cases, *spec)
    options = BatchOptions(Path(args.out), args.model, args.device, args.tta, args.pet_units, args.rtstruct,
                           args.dicom_seg, postprocess=not args.no_postprocess, split_lesions=args.split_lesions,
                           refine_nodes=args.refine_nodes)
    summary = summary_path(options.out, spec)
    print(f"{len(cases)} cases{f' (shard {spec[0]}/{spec[1]})' if spec else ''} -> {options.out}", flush=True)
    if args.workers == 1:
        rows = run_batch(cases, options, summary=summary,
                         make_segmenter=options.segmenter)
    else:
        rows = run_batch_parallel(cases, options, summary=summary, workers=args.workers)
    failed = [r for r in rows if r["status"] == FAILED]
    print(f"{len(rows) - len(failed)} done, {len(failed)} failed; summary: {summary}")
    return 1 if failed else 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="hntumorseg", description=__doc__.splitlines()[0])
    p.add_argument("--version", action="version", version=f"hntumorseg {__version__}")
    sub = p.add_subparsers(dest="command", required=True)

    def inputs(sp):
        sp.add_argument("--ct", required=True, type=Path, help="CT in HU: NIfTI/NRRD/MHA file or DICOM folder")
        sp.add_argument("--pet", required=True, type=Path,
                        help="PET registered to the CT: file in SUV, or DICOM folder (converted to SUVbw)")

    def runtime(sp):
        sp.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"],
                        help="auto = CUDA GPU when available, else CPU")
        sp.add_argument("--tta", action="store_true", help="left-right flip test-time augmentation (2x time)")
        sp.add_argument("--no-postprocess", action="store_true",
                        help="keep every connected component (skip the model file's clean-up)")
        sp.add_argument("--refine-nodes", action="store_true",
                        help="redraw every GTVn lesion with the click model from its centre after the network "
                             "(24 unseen phantoms: GTVn Dice 0.588 -> 0.698; about 1 s a node on a CPU)")

    sp = sub.add_parser("preprocess", help="write the network input (input.npy) and provenance.json")
    inputs(sp)
    dicom_input_options(sp)
    sp.add_argument("--label", type=Path, help="optional label map on the CT grid (writes label.npy)")
    sp.add_argument("--out", required=True, type=Path, help="output folder")
    sp.set_defaults(func=cmd_preprocess)

    sp = sub.add_parser("segment", help="segment GTVp and GTVn; writes the label map and a JSON report")
    inputs(sp)
    dicom_input_options(sp)
    sp.add_argument("--out", required=True, type=Path, help="label map to write, e.g. SEG.nii.gz")
    sp.add_argument("--model", help="model .safetensors/.json (default: the bundled model)")
    sp.add_argument("--rtstruct", type=Path, metavar="OUT.dcm",
                    help="also write an RT Structure Set on the CT series (needs a DICOM CT)")
    sp.add_argument("--dicom-seg", type=Path, metavar="OUT.dcm",
                    help="also write a DICOM Segmentation on the CT series (needs a DICOM CT)")
    sp.add_argument("--split-lesions", action="store_true",
                    help="in RTSTRUCT and DICOM SEG, write GTVn node by node: GTVn_1 (the largest) .. GTVn_k")
    sp.add_argument("--probabilities", type=Path, metavar="P.nii.gz",
                    help="also write the GTVp/GTVn probabilities on the CT grid (2 components) and an uncertainty "
                         "map P_uncertainty.nii.gz (entropy; the passes' disagreement with --tta or an ensemble)")
    runtime(sp)
    sp.set_defaults(func=cmd_segment)

    sp = sub.add_parser("rtstruct", help="convert a label map on a DICOM CT's grid into an RTSTRUCT")
    sp.add_argument("--ct", required=True, type=Path, help="the CT's DICOM folder")
    sp.add_argument("--ct-series", metavar="UID", help="SeriesInstanceUID of the CT when the folder holds several")
    sp.add_argument("--labels", required=True, type=Path,
                    help="label map on that CT's grid (1 GTVp, 2 GTVn), e.g. an edited SEG.nii.gz")
    sp.add_argument("--out", required=True, type=Path, help="RTSTRUCT file to write, e.g. RS.dcm")
    sp.add_argument("--roi-generation", default="SEMIAUTOMATIC", choices=["AUTOMATIC", "SEMIAUTOMATIC", "MANUAL"],
                    help="ROI Generation Algorithm recorded per ROI (default SEMIAUTOMATIC: an edited result)")
    sp.add_argument("--split-lesions", action="store_true",
                    help="in RTSTRUCT and DICOM SEG, write GTVn node by node: GTVn_1 (the largest) .. GTVn_k")
    sp.set_defaults(func=cmd_rtstruct)

    sp = sub.add_parser("batch", help="segment every case of a HECKTOR-layout folder or DICOM tree (resumable)")
    sp.add_argument("--input", required=True, type=Path,
                    help="folder of HECKTOR-layout cases (CASE/CASE__CT.nii.gz, CASE__PT.nii.gz) and/or DICOM studies")
    sp.add_argument("--out", required=True, type=Path, help="output folder: OUT/CASE/... and summary.csv")
    sp.add_argument("--workers", type=int, default=1, help="cases run in parallel, each with its own model (default 1)")
    sp.add_argument("--shard", metavar="i/n", help="run only every n-th case from the i-th (1 <= i <= n)")
    sp.add_argument("--model", help="model .safetensors/.json (default: the bundled model)")
    sp.add_argument("--pet-units", default="auto", choices=["auto", "suv"],
                    help="auto: DICOM PET converted to SUVbw from its tags; suv: PET values are SUV already")
    sp.add_argument("--rtstruct", action="store_true", help="also write an RTSTRUCT for each DICOM study")
    sp.add_argument("--dicom-seg", action="store_true", help="also write a DICOM SEG for each DICOM study")
    sp.add_argument("--split-lesions", action="store_true",
                    help="in RTSTRUCT and DICOM SEG, write GTVn node by node: GTVn_1 (the largest) .. GTVn_k")
    runtime(sp)
    sp.set_defaults(func=cmd_batch)

    add_edit_parser(sub)

    sp = sub.add_parser("demo", help="segment a synthetic phantom with the bundled model and score it")
    sp.add_argument("--out", required=True, type=Path, help="output folder")
    sp.add_argument("--seed", type=_seed, default=DEMO_SEED,
                    help=f"phantom seed (default {DEMO_SEED}: not a case the bundled model was trained on)")
    sp.add_argument("--fov", default="head_upper", choices=["head", "head_upper", "whole_body"])
    sp.add_argument("--model", help="model .safetensors/.json (default: the bundled model)")
    runtime(sp)
    sp.set_defaults(func=cmd_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(join_click_values(argv))
    return run_guarded("hntumorseg", args.func, args)


if __name__ == "__main__":
    sys.exit(main())
