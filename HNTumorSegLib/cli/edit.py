"""``hntumorseg edit``: correct a label map with clicks, in the order given on the command line.

    hntumorseg edit --labels SEG.nii.gz --ct CT --pet PET --add X,Y,Z:GTVn --remove X,Y,Z
                    --relabel X,Y,Z[:GTVp] --redraw X,Y,Z --out SEG2.nii.gz

Points are patient coordinates in mm, LPS (as DICOM and SimpleITK; a viewer showing RAS shows x and
y negated). The corrected label map is written atomically, then ``SEG2.json``: each click and what
it did, and the structures and lesions measured on the result (as ``segment`` reports them).
"""

from __future__ import annotations

import argparse
import math
import os
import re
from pathlib import Path

import SimpleITK as sitk

from HNTumorSegLib.errors import InputError

CLICK_OPTIONS = ("--add", "--remove", "--relabel", "--redraw")


def join_click_values(argv: list[str]) -> list[str]:
    """``--remove -35,-10,-12`` as ``--remove=-35,-10,-12``: argparse takes a leading "-" for an option.

    Why: patient coordinates are often negative, and a user should not have to know to write "=".
    """
    out: list[str] = []
    i = 0
    while i < len(argv):
        token = argv[i]
        if _click_option(token) and i + 1 < len(argv) and _point_value(argv[i + 1]):
            out.append(f"{token}={argv[i + 1]}")
            i += 2
            continue
        out.append(token)
        i += 1
    return out


def _click_option(token: str) -> bool:
    """A click option, or a prefix argparse takes for exactly one of them (``--rem``; not ``--re``)."""
    return token in CLICK_OPTIONS or (len(token) > 3 and sum(o.startswith(token) for o in CLICK_OPTIONS) == 1)


def _point_value(token: str) -> bool:
    """"-35,...", "-.5,...", and "-inf,...", "-nan,..." or anything else after a single "-" holding a comma (no option
    does): a point's value, not an option. The last kinds are joined too, so that parse_click names the value and
    what is wrong with it, where argparse said "expected one argument"."""
    if token[:1] != "-" or token[1:2] == "-":
        return False
    return (token[1:2].isdigit() or (token[1:2] == "." and token[2:3].isdigit())
            or token[1:4].lower() in ("inf", "nan") or "," in token)


class _Click(argparse.Action):
    """Collects --add/--remove/--relabel/--redraw into one list, in command-line order."""

    def __call__(self, parser, namespace, values, option_string=None):
        clicks = list(getattr(namespace, "clicks", None) or [])
        clicks.append((self.dest, values))
        namespace.clicks = clicks


def parse_click(action: str, text: str) -> tuple[tuple[float, float, float], str | None]:
    """"X,Y,Z" or "X,Y,Z:GTVn" to a point (mm) and a structure name (None when not given). The point may be in
    parentheses or brackets, as this command's messages and reports print points."""
    where, _, structure = text.partition(":")
    where = where.strip().removeprefix("(").removesuffix(")").removeprefix("[").removesuffix("]")
    structure = structure.strip()  # "X,Y,Z: GTVn", as spaces around the numbers are taken
    expected = f"expected X,Y,Z in mm (LPS){':STRUCTURE' if action in ('add', 'relabel') else ''}"
    values = [v.strip() for v in where.split(",")]
    if len(values) != 3:
        raise InputError(f"--{action} {text}: {expected}")
    for value in values:
        problem = _coordinate_problem(value)
        if problem:
            raise InputError(f"--{action} {text}: {problem}; {expected}")
    point = tuple(float(v) for v in values)
    if action == "add" and not structure:
        raise InputError(f"--add {text}: name the structure to add to, e.g. {where}:GTVn")
    if action in ("remove", "redraw") and structure:
        raise InputError(f"--{action} {text}: takes a point only (X,Y,Z)")
    if structure:
        from HNTumorSegLib.editing.clicks import structure_value

        try:
            structure_value(structure)
        except InputError as exc:
            raise InputError(f"--{action} {text}: {exc}") from None
    return point, structure or None


#: A plain decimal number: optionally signed, with a decimal point and/or an exponent; ASCII digits only.
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


def _coordinate_problem(value: str) -> str | None:
    """What is wrong with one coordinate of a point, or None. Why not float() alone: it takes "1_0" as 10 (a slip of
    the keyboard became a point 9 mm away), and "inf" or "nan", which are no place in the patient."""
    try:
        number = float(value)
    except ValueError:
        number = None
    if number is not None and not math.isfinite(number):  # "inf", "-nan", "1e400"
        return f"coordinate {value!r} is not a finite number"
    if number is None or _DECIMAL.fullmatch(value) is None:
        return f"{value!r} is not a plain decimal number (digits, a decimal point, an exponent)"
    return None


def add_parser(sub) -> None:
    """The ``edit`` sub-command's options."""
    from HNTumorSegLib.cli.case_inputs import dicom_input_options
    from HNTumorSegLib.editing.clicks import DEFAULT_FRACTION, DEFAULT_RADIUS_MM, METHODS

    sp = sub.add_parser("edit", help="correct a label map: add, remove or relabel the lesion at a point (mm, LPS)")
    sp.add_argument("--labels", required=True, type=Path, help="label map on the CT's grid (1 GTVp, 2 GTVn)")
    sp.add_argument("--ct", required=True, type=Path, help="the CT the labels lie on (file or DICOM folder)")
    sp.add_argument("--pet", required=True, type=Path, help="the PET (file or DICOM folder), in SUV or DICOM Bq/mL")
    dicom_input_options(sp)
    for action, helptext in (
            ("add", "X,Y,Z:GTVp|GTVn: add the PET-avid region at the point to that structure"),
            ("remove", "X,Y,Z: remove the lesion at the point"),
            ("relabel", "X,Y,Z[:GTVp|GTVn]: switch the lesion at the point to the other (or the named) structure"),
            ("redraw", "X,Y,Z: replace the lesion at the point by the PET-avid region there (a wrong boundary)")):
        sp.add_argument(f"--{action}", dest=action, action=_Click,
                        metavar="X,Y,Z" + (":S" if action in ("add", "relabel") else ""),
                        help=helptext + " (repeatable; clicks apply in the order given)")
    sp.add_argument("--fraction", type=float, default=DEFAULT_FRACTION,
                    help=f"--add/--redraw: the region is the voxels above background + FRACTION x (SUVmax - background) "
                         f"(default {DEFAULT_FRACTION})")
    sp.add_argument("--no-background", dest="background", action="store_false",
                    help="--add/--redraw: threshold at FRACTION x SUVmax, without subtracting the local background "
                         "(the median SUV just beyond --radius-mm)")
    defaults = ", ".join(f"{radius:g} for {name}" for name, radius in DEFAULT_RADIUS_MM.items())
    sp.add_argument("--radius-mm", type=float, default=None,
                    help=f"--add/--redraw: the region stays within this distance of its peak (default {defaults})")
    sp.add_argument("--method", choices=METHODS, default="auto",
                    help="--add/--redraw: how the lesion is drawn: auto (default: the bundled click model for GTVn, "
                         "the threshold for GTVp), threshold (--fraction, --radius-mm) or network (GTVn only)")
    sp.add_argument("--click-model", type=Path, metavar="MODEL.json",
                    help="--add/--redraw of nodes: draw with this click model (one trained with hntumorseg-train "
                         "click-model) instead of the bundled one")
    sp.add_argument("--out", required=True, type=Path, help="corrected label map to write (may be --labels itself)")
    sp.set_defaults(func=cmd_edit, clicks=[])


def cmd_edit(args) -> int:
    from HNTumorSegLib import __version__
    from HNTumorSegLib.cli.case_inputs import print_measurements, read_dicom_aware_inputs
    from HNTumorSegLib.cli.output_paths import refuse_clashes, refuse_unwritable, resolved_path
    from HNTumorSegLib.cli.segment_case import labels_of_another_ct, refuse_report_of_another, sidecar_path
    from HNTumorSegLib.editing.clicks import DEFAULT_RADIUS_MM, edit_at
    from HNTumorSegLib.evaluation.lesions import measurements
    from HNTumorSegLib.imaging.image_io import read_image, write_image, write_json
    from HNTumorSegLib.imaging.label_checks import label_grid_problem, label_values_problem
    from HNTumorSegLib.pipeline.preprocess import check_pet_units

    if not args.clicks:
        raise InputError("nothing to do: give at least one --add, --remove, --relabel or --redraw")
    clicks = [(action, *parse_click(action, text)) for action, text in args.clicks]
    _check_settings(args)
    click_model = _click_model_path(args)
    _check_network_clicks(args, clicks, click_model)
    report_path = sidecar_path(args.out)
    refuse_clashes([("--out", args.out), ("the report of --out", report_path)],
                   [("--labels", args.labels), ("--ct", args.ct), ("--pet", args.pet)],
                   may_overwrite=[("--out", "--labels")])
    refuse_unwritable([("--out", args.out)])  # its report goes beside it
    refuse_report_of_another(args.out)
    inputs = read_dicom_aware_inputs(args)
    check_pet_units(sitk.GetArrayViewFromImage(inputs.pet), str(args.pet))  # SUVs, TLG and thresholds need SUV
    label = read_image(args.labels, "label")
    problem = (label_values_problem(label, str(args.labels)) or label_grid_problem(label, inputs.ct, str(args.labels))
               or labels_of_another_ct(args.labels, inputs.ct_digest, args.ct))
    if problem:
        raise InputError(problem)
    label = sitk.Cast(label, sitk.sitkUInt8)  # values 0, 1, 2 (checked): a float label map comes out as labels
    done = []
    for number, (action, point, structure) in enumerate(clicks, 1):
        try:
            edit = edit_at(label, inputs.pet, action, point, structure, args.fraction, args.radius_mm, args.background,
                           ct=inputs.ct, method=args.method, click_model=click_model)
        except InputError as exc:
            raise InputError(f"click {number} (--{action}): {exc}; nothing was written") from None
        label = edit.label
        print(f"  {number}. {edit.message}")
        done.append({"action": edit.action, "point_mm": list(edit.point_mm), "structure": edit.structure,
                     "voxels": edit.voxels, "message": edit.message,
                     **({"drawn_by": edit.drawn_by} if edit.drawn_by else {})})
    measured = measurements(label, inputs.pet, inputs.ct)
    # The report goes first and comes back last: an interrupted run leaves a label map without a report
    # (incomplete, as after ``segment``), never beside the report of the map it replaced.
    report_path.unlink(missing_ok=True)
    write_image(label, args.out)
    write_json({"software": f"HNTumorSeg {__version__}",
                # absolute: the report means the same files read from any working directory
                "inputs": {name: str(resolved_path(path)) for name, path in
                           (("labels", args.labels), ("ct", args.ct), ("pet", args.pet))},
                "output": str(args.out), "edits": done,
                "settings": {"fraction": args.fraction,
                             "radius_mm": DEFAULT_RADIUS_MM if args.radius_mm is None else args.radius_mm,
                             "background_corrected": args.background, "method": args.method,
                             # the click model that drew (None: no click drew with one)
                             "click_model": (str(click_model) if click_model else "bundled")
                             if any(d.get("drawn_by", "").startswith("click model") for d in done) else None},
                **measured, **inputs.report()}, report_path)
    print(f"wrote {args.out} and {report_path}")
    print_measurements(measured["structures"], measured["lesions"])
    return 0


def _click_model_path(args) -> Path | None:
    """--click-model resolved and loaded (checked) before any file is read: a file that is not a click model is
    one line naming it, not a failure at the first node click after the inputs were read."""
    if args.click_model is None:
        return None
    if args.method == "threshold":
        raise InputError(f"--click-model {args.click_model} with --method threshold: the threshold draws every "
                         "lesion, the click model would not be used; give one or the other")
    from HNTumorSegLib.editing.click_model import load_click_model

    if args.click_model.is_dir():
        raise InputError(f"--click-model {args.click_model}: a folder; give the click model's .json")
    # absolute, links not followed: the weights' name comes from the name given (a store's links point to blobs)
    path = Path(os.path.abspath(args.click_model))
    load_click_model(str(path))
    return path


def _check_network_clicks(args, clicks: list, click_model: Path | None) -> None:
    """--method network with an add to a structure the click model does not draw: one line before any file is
    read (it was refused at that click, after the inputs had been read and earlier clicks printed)."""
    if args.method != "network" or not any(action == "add" for action, *_ in clicks):
        return
    from HNTumorSegLib import LABELS
    from HNTumorSegLib.editing.click_model import load_click_model
    from HNTumorSegLib.editing.clicks import structure_value

    model = load_click_model() if click_model is None else load_click_model(str(click_model))
    for (action, text), (_, _, structure) in zip(args.clicks, clicks):
        name = LABELS[structure_value(structure)] if action == "add" else model.structure
        if name != model.structure:
            raise InputError(f"--add {text} with --method network: the click model {model.name} draws "
                             f"{model.structure} only; add {name} with --method auto or threshold")


def _check_settings(args) -> None:
    """--fraction and --radius-mm checked before any click or file: the report records them whatever clicks use
    them, and a bad value found at the third click came after two clicks' lines had been printed."""
    from HNTumorSegLib.editing.clicks import check_fraction, radius_for

    check_fraction(args.fraction)
    if args.radius_mm is not None:
        radius_for(1, args.radius_mm)

