"""The segmentation worker: ``python -m HNTumorSegLib.slicer_support.worker REQUEST.json``.

Why a separate process: the network takes seconds on a GPU and minutes on a CPU. Run inside
Slicer's GUI process it would freeze the application and could not be stopped; as its own
process (tree) it runs while the user keeps working, and Cancel kills it with everything it
started. It runs the very pipeline of ``hntumorseg segment`` (:class:`~HNTumorSegLib.pipeline.inference.Segmenter`)
and speaks :mod:`~HNTumorSegLib.slicer_support.worker_protocol` on stdout.

``python -m HNTumorSegLib.slicer_support.worker --probe`` prints one ``devices`` event: what torch sees and
which model is bundled. It also proves, before the user presses Segment, that the worker's
Python finds HNTumorSegLib and torch.
"""

from __future__ import annotations

import os
import sys
import time
import traceback
from pathlib import Path
from typing import Callable, TextIO

from HNTumorSegLib import __version__

from HNTumorSegLib.slicer_support import worker_protocol as protocol
from HNTumorSegLib.errors import InputError
from HNTumorSegLib.pipeline.model_info import model_summary

Emit = Callable[[dict], None]


def _model_summary(loaded) -> dict:
    return model_summary(loaded.meta, loaded.paths.json)


def write_uncertainty(seg, path: Path) -> dict | None:
    """The uncertainty map on the CT grid in percent (uint8: small and fast to write; it is for display)."""
    import SimpleITK as sitk

    from HNTumorSegLib.imaging.image_io import write_image
    from HNTumorSegLib.pipeline.restore import restore_values

    uncertainty = seg.uncertainty()
    if uncertainty is None:
        return None
    values, measure = uncertainty
    percent = restore_values(seg.window_image(values), seg.provenance, scale=100.0,  # values: [0, 1]
                             pixel_id=sitk.sitkUInt8)
    return {"file": str(write_image(percent, path)), "measure": measure, "unit": "%"}


#: From this many CPUs on, the worker leaves one to Slicer (its GUI and rendering). Why not below: on 2
#: CPUs one thread made the network 84 % slower (16.6 s against 9.0 s, whole-body window), and the
#: worker's threads wait passively (WORKER_WAIT_POLICY), so they yield to the GUI anyway; from 4 CPUs on
#: one fewer thread costs at most a third of the network's speed. Not measured on more than 2 CPUs.
SPARE_A_CPU_FROM = 4


def worker_threads() -> int:
    """The network's CPU threads in the worker: ``OMP_NUM_THREADS`` when set, else all CPUs, less one from
    :data:`SPARE_A_CPU_FROM` on."""
    from HNTumorSegLib.pipeline.inference import available_cpus, cpu_threads

    return cpu_threads(spare=1 if available_cpus() >= SPARE_A_CPU_FROM else 0)


def run_request(request: protocol.Request, emit: Emit) -> dict:
    """Segment one request; writes the label map, then the report, into ``request.output_dir``."""
    from HNTumorSegLib.imaging.image_io import read_image, write_image, write_json
    from HNTumorSegLib.pipeline.inference import Segmenter
    from HNTumorSegLib.evaluation.lesions import measurements
    from HNTumorSegLib.slicer_support.scene_geometry import analysis_window_box

    out = Path(request.output_dir)
    timings: dict[str, float] = {}
    t0 = time.perf_counter()
    emit(protocol.stage("load_model"))
    segmenter = Segmenter(request.model, device=request.device, tta=request.tta, threads=worker_threads())
    timings["load_model"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    emit(protocol.stage("read_inputs"))
    ct = read_image(request.ct, "CT")
    pet = read_image(request.pet, "PET")
    timings["read_inputs"] = time.perf_counter() - t0

    seg = segmenter.segment(ct, pet, ct_name=request.ct_name or request.ct, pet_name=request.pet_name or request.pet,
                            progress=lambda name: emit(protocol.stage(name)))
    timings.update(seg.timings)
    refined = None
    if request.refine_nodes:  # inside the "restore" stage's share of the bar: a second or a few
        from HNTumorSegLib.editing.node_refinement import refine_nodes

        refined = refine_nodes(seg.label, ct, pet)
        seg.label = refined.label
        timings["refine_nodes"] = refined.seconds

    t0 = time.perf_counter()
    emit(protocol.stage("statistics"))
    measured = measurements(seg.label, pet, ct, seg.probability_images())
    timings["statistics"] = time.perf_counter() - t0

    t0 = time.perf_counter()
    emit(protocol.stage("write"))
    label_path = write_image(seg.label, out / protocol.LABEL_FILE)
    uncertainty = write_uncertainty(seg, out / protocol.UNCERTAINTY_FILE)
    timings["write"] = time.perf_counter() - t0  # the label and uncertainty maps; the report follows
    box = analysis_window_box(seg.provenance)
    report = {
        "software": f"HNTumorSeg {__version__}",
        "inputs": {"ct": request.ct_name or request.ct, "pet": request.pet_name or request.pet},
        "label": str(label_path),
        "model": _model_summary(segmenter.loaded),
        "device": str(segmenter.device),
        "tta": request.tta,
        "node_refinement": refined.report() if refined else None,
        **measured,
        **({"uncertainty": uncertainty} if uncertainty else {}),
        "analysis_window": {"center_ras": box.center_ras, "size_mm": box.size_mm, "axes_ras": box.axes_ras},
        "timings_s": {k: round(v, 3) for k, v in timings.items()},
        "members": seg.members,  # one entry per network (an ensemble has several): name, window, seconds
        "memory": seg.memory,
        "provenance": seg.provenance,
    }
    report_path = write_json(report, out / protocol.REPORT_FILE)  # last: its presence means "complete"
    emit(protocol.done(str(label_path), str(report_path)))
    return report


def probe() -> dict:
    """What torch sees, and the bundled model (path and description, or why there is none)."""
    from HNTumorSegLib.slicer_support.device_info import probe_devices
    from HNTumorSegLib.errors import ModelFileError
    from HNTumorSegLib.pipeline.inference import default_model_path
    from HNTumorSegLib.pipeline.model_info import read_model_description

    found = probe_devices()
    try:
        path = default_model_path()
        found["bundled_model"] = {"path": str(path), "description": read_model_description(path)}
    except ModelFileError as exc:
        found["bundled_model"] = {"path": None, "description": str(exc)}
    return found


def protocol_stream() -> TextIO:
    """A stream on the real stdout for the protocol alone; everything else written to stdout goes to stderr.

    Why at the file-descriptor level: native libraries (ITK, torch, CUDA) write to descriptor 1 directly,
    past ``sys.stdout``; a message without a newline would prefix the next event line ("done") and the
    front-end would report a finished run as failed. So the protocol gets its own duplicate of the real
    stdout, and descriptor 1 (and ``sys.stdout``) become stderr, which front-ends keep for diagnostics.
    """
    sys.stdout.flush()
    wire = os.fdopen(os.dup(1), "w", encoding="utf-8")
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return wire


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    wire = protocol_stream()

    def emit(event: dict) -> None:
        wire.write(protocol.encode(event) + "\n")
        wire.flush()

    emit(protocol.started(os.getpid()))
    if argv == ["--probe"]:
        emit({"event": "devices", **probe()})
        return protocol.EXIT_OK
    if len(argv) != 1 or argv[0].startswith("-"):
        emit(protocol.error("usage: python -m HNTumorSegLib.slicer_support.worker REQUEST.json | --probe", "input"))
        return protocol.EXIT_INPUT
    try:
        run_request(protocol.Request.read(argv[0]), emit)
        return protocol.EXIT_OK
    except InputError as exc:
        emit(protocol.error(str(exc), "input"))
        return protocol.EXIT_INPUT
    except OSError as exc:  # unwritable output folder, full disk: the user's to fix
        where = f"{exc.filename}: " if exc.filename else ""
        emit(protocol.error(f"{where}{exc.strerror or exc}", "input"))
        return protocol.EXIT_INPUT
    except MemoryError:
        emit(protocol.error("out of memory; close other programs or use the other device", "internal"))
        return protocol.EXIT_FAILED
    except Exception as exc:  # a bug or the machine: say what, keep the traceback on stderr
        traceback.print_exc(file=sys.stderr)
        message = f"{type(exc).__name__}: {exc}"
        if "out of memory" in str(exc).lower():
            message = f"{message.splitlines()[0]} (the GPU's memory is too small for this case: choose Device: CPU)"
        emit(protocol.error(message, "internal"))
        return protocol.EXIT_FAILED


def exit_now(code: int) -> None:
    """End the process without the interpreter's teardown, once every result is on disk and every event sent.

    Why: tearing down torch and the arrays of a run took 0.37 s after the last event on a 2-core CPU (the
    module waits for the exit status before it reads the result); nothing the worker wrote depends on it.
    """
    sys.stdout.flush()
    sys.stderr.flush()
    sys.__stdout__.flush()
    os._exit(code)


if __name__ == "__main__":
    exit_now(main())
