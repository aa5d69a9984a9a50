"""One case through the library, as ``segment``, ``demo`` and ``batch`` run it: read, segment, measure, write.

The label map is written first and the JSON report last, so a report beside a label map means the run
completed (``batch`` resumes on that rule).
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from HNTumorSegLib import LABELS, __version__
from HNTumorSegLib.errors import InputError
from HNTumorSegLib.cli.output_paths import resolved_path
from HNTumorSegLib.imaging.image_names import IMAGE_SUFFIXES, image_name_problem, image_suffix
from HNTumorSegLib.pipeline.model_info import model_summary


def _split_image_name(out: Path) -> tuple[str, str]:
    suffix = image_suffix(out)
    if suffix is None:
        raise InputError(f"{out}: output must end in one of {', '.join(IMAGE_SUFFIXES)} (any letter case)")
    problem = image_name_problem(out)
    if problem:
        raise InputError(f"{out}: {problem}")
    return out.name[: -len(suffix)], out.name[-len(suffix):]


def sidecar_path(out: Path) -> Path:
    """SEG.nii.gz -> SEG.json (the report beside the label map)."""
    return out.with_name(_split_image_name(out)[0] + ".json")


def report_or_none(path: Path) -> dict | None:
    """The JSON report at ``path``, or None where there is none, it cannot be read or it is not a JSON object:
    whoever looks at an earlier report (the checks here, ``batch`` on resume) takes those alike as no report
    of ours."""
    import json

    try:
        report = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return report if isinstance(report, dict) else None


def refuse_report_of_another(out: Path) -> None:
    """An InputError when ``out``'s report (:func:`sidecar_path`) is that of another label map still beside it:
    ``SEG.nrrd`` written next to ``SEG.nii.gz`` replaced ``SEG.json``, and ``SEG.nii.gz`` lost its report (model,
    provenance, measurements). Reports name their label map in ``output``; compared by name in the report's folder,
    as a relative path was typed from wherever the command ran."""
    report = sidecar_path(out)
    written_for = (report_or_none(report) or {}).get("output")  # none there, or not ours: nothing to keep
    if not isinstance(written_for, str) or not written_for:
        return
    other = report.with_name(Path(written_for).name)
    if other.name != out.name and other.is_file():
        raise InputError(f"{out}: its report {report.name} is the report of {other.name} beside it; "
                         f"give --out another name (e.g. {_split_image_name(out)[0]}_2{_split_image_name(out)[1]})")


def labels_of_another_ct(labels: Path, digest: str, ct_name) -> str | None:
    """A message when the report beside ``labels`` (``SEG.json``, written by ``segment``, ``batch`` or ``edit``
    with the label map) records another digest than ``digest``, the given CT's
    (:func:`~HNTumorSegLib.imaging.label_checks.ct_digest`), else None (no report, a report of another
    label map, or one written before reports held the digest: nothing to compare).

    Why: the grid check passes a label map of another case on the same grid; ``edit`` then drew every click
    from the wrong patient's PET, and ``rtstruct`` wrote one patient's contours into a structure set that
    references another's CT. Compared by the CT's voxels, not its path: a CT moved, renamed or saved in
    another format is the same CT."""
    report = sidecar_path(labels)
    recorded = report_or_none(report)
    if recorded is None or Path(str(recorded.get("output", ""))).name != Path(labels).name:
        return None
    recorded_digest, inputs = recorded.get("ct_digest"), recorded.get("inputs")
    if not isinstance(recorded_digest, str) or recorded_digest == digest:
        return None
    drawn_on = inputs.get("ct") if isinstance(inputs, dict) else None
    return (f"{labels}: drawn on another CT than {ct_name} (same grid, other voxels: {report.name} records the CT "
            f"it was made from{f', {drawn_on}' if drawn_on else ''}); give the CT it was drawn on")


def uncertainty_path(probabilities: Path) -> Path:
    """P.nii.gz -> P_uncertainty.nii.gz (the uncertainty map beside the probabilities)."""
    stem, suffix = _split_image_name(probabilities)
    return probabilities.with_name(f"{stem}_uncertainty{suffix}")


def write_probabilities(seg, path: Path) -> dict:
    """The GTVp and GTVn probabilities on the CT grid (a 2-component float image) and the uncertainty map beside it.

    Both come from the window the network saw (0 outside it), resampled linearly onto the CT grid.
    """
    import SimpleITK as sitk

    from HNTumorSegLib.imaging.image_io import write_image
    from HNTumorSegLib.pipeline.restore import restore_values

    images = seg.probability_images()
    uncertainty = seg.uncertainty()
    if not images or uncertainty is None:
        raise InputError(f"{path}: this model run kept no probabilities to write")
    on_ct = [restore_values(images[name], seg.provenance) for name in LABELS.values()]
    write_image(sitk.Compose(*on_ct), path)
    values, measure = uncertainty
    uncertainty_file = write_image(restore_values(seg.window_image(values), seg.provenance), uncertainty_path(path))
    return {"file": str(path), "components": list(LABELS.values()),
            "uncertainty": {"file": str(uncertainty_file), "measure": measure}}


def _model_summary(loaded) -> dict:
    return model_summary(loaded.meta, loaded.paths.json)


def run_segmentation(ct_path: Path, pet_path: Path, out: Path, model: str | None, device: str, tta: bool,
                     reference=None, extra: dict | None = None, inputs=None, after_label=None,
                     verbose: bool = True, postprocess: bool = True, probabilities: Path | None = None,
                     refine_nodes: bool = False):
    """Shared by ``segment`` and ``demo``: read, segment, measure, write label map + JSON report.

    ``inputs``: a :class:`~HNTumorSegLib.cases.inputs.CaseInputs` already read (DICOM series chosen,
    PET in SUV); when None, ``ct_path`` and ``pet_path`` are read with the defaults. ``after_label``
    (label image, inputs) -> dict writes further outputs after the label map and before the report
    (written last: its presence means the run is complete); its dict goes into the report.
    ``model`` may be a loaded :class:`~HNTumorSegLib.pipeline.inference.Segmenter` (``batch`` loads it once);
    ``verbose`` prints the stages; ``probabilities``: also write the class probabilities and the
    uncertainty map there (:func:`write_probabilities`); ``refine_nodes``: every GTVn lesion redrawn by the click
    model from its centre after the network (:mod:`HNTumorSegLib.editing.node_refinement`), recorded in the report.
    """
    from HNTumorSegLib.cases.inputs import read_case
    from HNTumorSegLib.imaging.image_io import write_image, write_json
    from HNTumorSegLib.pipeline.inference import Segmenter
    from HNTumorSegLib.evaluation.lesions import measurements

    report_path = sidecar_path(out)
    if probabilities is not None:
        uncertainty_path(probabilities)  # a bad name fails before the model runs
    t_start = time.perf_counter()
    t0 = time.perf_counter()
    segmenter = model if isinstance(model, Segmenter) else Segmenter(model, device=device, tta=tta,
                                                                     postprocess=postprocess)
    timings = {"load_model": time.perf_counter() - t0}
    read_before = inputs.seconds if inputs is not None else 0.0  # read by the caller, before t_start
    inputs = inputs or read_case(ct_path, pet_path)
    ct, pet = inputs.ct, inputs.pet
    timings["read_inputs"] = inputs.seconds
    seg = segmenter.segment(ct, pet, reference=reference, ct_name=str(ct_path), pet_name=str(pet_path),
                            progress=(lambda stage: print(f"  {stage} ...", flush=True)) if verbose else None)
    timings.update(seg.timings)
    refined = None
    if refine_nodes:
        from HNTumorSegLib.editing.node_refinement import refine_nodes as redraw_every_node

        if verbose:
            print("  refine nodes ...", flush=True)
        refined = redraw_every_node(seg.label, ct, pet)
        seg.label = refined.label
        timings["refine_nodes"] = refined.seconds
    for line in (seg.provenance or {}).get("warnings", []):  # the run goes on; the report keeps them (provenance)
        print(f"hntumorseg: warning: {line}", file=sys.stderr)
    t0 = time.perf_counter()
    measured = measurements(seg.label, pet, ct, seg.probability_images())
    timings["statistics"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_image(seg.label, out)
    # An earlier run's report beside this run's label map would say they belong together (the report, written
    # last, marks a complete run; batch takes such a case as done): it goes until this run's report replaces it.
    report_path.unlink(missing_ok=True)
    more = after_label(seg.label, inputs) if after_label else {}
    if probabilities is not None:
        more["probabilities"] = write_probabilities(seg, probabilities)
    timings["write"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start + read_before
    report = {
        "software": f"HNTumorSeg {__version__}",
        "inputs": {"ct": str(resolved_path(ct_path)), "pet": str(resolved_path(pet_path))},  # from any folder
        "output": str(out),
        "labels": {str(k): v for k, v in LABELS.items()},
        "model": _model_summary(segmenter.loaded),
        "device": str(segmenter.device),
        "tta": tta,
        "postprocess_applied": segmenter.postprocess is not None,
        "node_refinement": refined.report() if refined else None,
        **measured,
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "members": seg.members,
        "memory": seg.memory,
        "provenance": seg.provenance,
        **inputs.report(),
        **more,
        **(extra or {}),
    }
    write_json(report, report_path)
    return report, seg, report_path
