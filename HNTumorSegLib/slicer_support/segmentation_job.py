"""One background segmentation, from inputs on disk to results on disk, cancellable.

Why: this is everything the Slicer module's Segment / Cancel buttons do that is not MRML. The job
owns a fresh temporary folder; the caller writes the CT and PET there (:meth:`SegmentationJob.write_inputs`),
starts the worker (:mod:`HNTumorSegLib.slicer_support.worker`) as its own process tree, and polls it from a GUI
timer, or calls :meth:`SegmentationJob.run_blocking` from scripts and tests. Cancel kills the
tree and deletes the folder, so nothing of the run is left behind; a failure carries the
worker's one-line message, or its exit status and last stderr lines when it died without one.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

import SimpleITK as sitk

from HNTumorSegLib.slicer_support import worker_protocol as protocol
from HNTumorSegLib.slicer_support.worker_process import WorkerProcess

RUNNING, SUCCEEDED, FAILED, CANCELLED, NOT_STARTED = "running", "succeeded", "failed", "cancelled", "not started"
#: Folder holding HNTumorSegLib, put on the worker's PYTHONPATH (a source checkout or the
#: extension's scripted-modules folder alike).
LIBRARY_PARENT = str(Path(__file__).resolve().parents[2])


class JobFailed(RuntimeError):
    """The worker failed; the message is the one line to show the user."""

    def __init__(self, message: str, kind: str = "internal"):
        super().__init__(message)
        self.kind = kind


@dataclass
class JobResult:
    label_path: Path
    report: dict
    #: The label map as read when the job ended (None: read on demand, as results made by hand are).
    label: Optional[sitk.Image] = None

    def read_label(self) -> sitk.Image:
        """The worker's label map. Read as an input is (:func:`~HNTumorSegLib.imaging.image_io.read_image`):
        a file cut short or damaged since the worker wrote it is one line naming it, where ``sitk.ReadImage``
        raised a RuntimeError of ITK's lines and a C++ source path."""
        if self.label is not None:
            return self.label
        from HNTumorSegLib.imaging.image_io import read_image

        return read_image(self.label_path, "result label")


def worker_command(python: Sequence[str], request_path: str | os.PathLike) -> list[str]:
    """The command line: ``python`` may be one executable or a launcher and its arguments."""
    return [*python, "-m", "HNTumorSegLib.slicer_support.worker", str(request_path)]


#: OpenMP threads that wait for work sleep instead of spinning. Why: the worker always shares the CPU
#: with Slicer itself. Measured on a 2-core CPU with one other busy process (whole-body phantom, the
#: module path from segment() to segments in the scene): 183 s spinning, 40 s passive; idle it costs
#: 19.5 -> 26.4 s (Testing/benchmarks/slicer_path.py). A value the user set is kept.
WORKER_WAIT_POLICY = "PASSIVE"


def worker_environment(base: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The environment with HNTumorSegLib importable, stdout unbuffered and OpenMP waiting passively."""
    env = dict(os.environ if base is None else base)
    paths = [LIBRARY_PARENT] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p and p != LIBRARY_PARENT]
    env["PYTHONPATH"] = os.pathsep.join(paths)
    env["PYTHONUNBUFFERED"] = "1"
    env.setdefault("OMP_WAIT_POLICY", WORKER_WAIT_POLICY)
    return env


class SegmentationJob:
    """A worker run in its own temporary folder: inputs, request, outputs."""

    def __init__(self, *, model: Optional[str] = None, device: str = "auto", tta: bool = False,
                 python: Sequence[str] = (sys.executable,), work_parent: Optional[str] = None,
                 ct_name: Optional[str] = None, pet_name: Optional[str] = None, refine_nodes: bool = False):
        self.folder = Path(tempfile.mkdtemp(prefix="hntumorseg-", dir=work_parent))
        self.ct_path = self.folder / "input" / "ct.nrrd"
        self.pet_path = self.folder / "input" / "pet.nrrd"
        self.output_dir = self.folder / "output"
        self.request = protocol.Request(str(self.ct_path), str(self.pet_path), str(self.output_dir),
                                        model, device, tta, ct_name, pet_name, refine_nodes)
        self.python = list(python)
        self.process: Optional[WorkerProcess] = None
        self.state = NOT_STARTED
        self.stage: Optional[str] = None
        self.percent = 0
        self.status = "Not started"
        self.worker_pid: Optional[int] = None
        self.error: Optional[JobFailed] = None
        self._done_event: Optional[dict] = None
        self._error_event: Optional[dict] = None
        self._result: Optional[JobResult] = None

    # ---------------------------------------------------------------- running
    def write_inputs(self, ct: sitk.Image, pet: sitk.Image) -> None:
        """Write the CT and PET (already in world coordinates) where the worker will read them."""
        self.ct_path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(ct, str(self.ct_path), False)
        sitk.WriteImage(pet, str(self.pet_path), False)

    def start(self) -> "SegmentationJob":
        request_path = self.folder / "request.json"
        request_path.write_text(self.request.to_json(), encoding="utf-8")
        self.process = WorkerProcess(worker_command(self.python, request_path), env=worker_environment(),
                                     cwd=str(self.folder)).start()
        self.state, self.status = RUNNING, "Starting the worker"
        return self

    def poll(self) -> list[dict]:
        """Take new events, update stage / percent / status / state; never blocks."""
        if self.process is None or self.state != RUNNING:
            return []
        events = self.process.poll()
        for event in events:
            self._take(event)
        if self.process.finished:
            for event in self.process.poll():  # anything that arrived with the exit
                events.append(event)
                self._take(event)
            self._conclude(self.process.returncode)
        return events

    def _take(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "started":
            self.worker_pid = event.get("pid")
        elif kind == "stage":
            self.stage = event.get("stage")
            self.percent, self.status = protocol.progress(self.stage)
        elif kind == "done":
            self._done_event = event
        elif kind == "error":
            self._error_event = event

    def _conclude(self, returncode: int) -> None:
        if returncode == protocol.EXIT_OK and self._done_event is not None:
            try:
                self._result = _read_result(self._done_event)
            except JobFailed as exc:  # "done" but no usable result: a failure, not a success without a result
                self.error = exc
                self.state, self.status = FAILED, f"Failed: {exc}"
                return
            self.state, self.percent, self.status = SUCCEEDED, 100, "Done"
            return
        if self._error_event is not None:
            self.error = JobFailed(self._error_event["message"], self._error_event["kind"])
        else:
            cause = self._likely_cause(returncode)
            self.error = JobFailed(f"the segmentation worker {_how_it_stopped(returncode)} before finishing"
                                   + (f": {cause}" if cause else ""))
        self.state, self.status = FAILED, f"Failed: {self.error}"

    def _likely_cause(self, returncode: int) -> str:
        """The last line most likely to say why the worker ended without a result, or "".

        Why this order: after a clean exit the worker believed it had reported, so a malformed event is the
        likeliest cause; after a crash its traceback on stderr is. Other stdout text comes last: stdout carries
        only events, and what libraries print there is noise (and could be a flood).
        """
        stderr = [line.strip() for line in self.process.stderr_tail() if line.strip()]
        stdout = [line.strip() for line in self.process.stdout_tail() if line.strip()]
        problems = self.process.protocol_problems()
        order = (problems, stderr, stdout) if returncode == protocol.EXIT_OK else (stderr, problems, stdout)
        return next((lines[-1] for lines in order if lines), "")

    def run_blocking(self, on_event: Optional[Callable[[dict], None]] = None) -> JobResult:
        """Start (if needed), wait for the end, return the result or raise :class:`JobFailed`."""
        if self.process is None:
            self.start()
        self.process.wait()
        for event in self.poll():
            if on_event:
                on_event(event)
        if self.state != SUCCEEDED:
            raise self.error or JobFailed(f"the job ended in state {self.state}")
        return self.result()

    def result(self) -> JobResult:
        """The label map's path and the report, read when the worker finished."""
        if self.state != SUCCEEDED or self._result is None:
            raise self.error or RuntimeError(f"no result: the job is {self.state}")
        return self._result

    # ---------------------------------------------------------------- ending
    def cancel(self) -> None:
        """Kill the worker's whole process tree and delete everything the job wrote."""
        if self.process is not None:
            self.process.cancel()
        self.state, self.status = CANCELLED, "Cancelled"
        self.cleanup()

    def cleanup(self) -> None:
        """Delete the job's folder (after its results have been read into the scene)."""
        shutil.rmtree(self.folder, ignore_errors=True)

    def stderr_tail(self, lines: int = 20) -> list[str]:
        return self.process.stderr_tail(lines) if self.process else []


def _read_result(done: dict) -> JobResult:
    """The result a "done" event names, or :class:`JobFailed` naming the file and what is wrong with it.

    Why here, before the job is called a success: a report deleted with the job's folder, cut short by a full
    disk or not an object is a run the user cannot load; the module must say "Failed" and why, not "Done" and
    then a traceback when it reads the result.
    """
    label, report_path = Path(done["label"]), Path(done["report"])
    try:
        text = report_path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise JobFailed(f"{report_path}: the worker's report is missing") from None
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise JobFailed(f"{report_path}: cannot read the worker's report ({reason})") from None
    try:
        report = json.loads(text)
    except (json.JSONDecodeError, RecursionError) as exc:
        raise JobFailed(f"{report_path}: the worker's report is not valid JSON ({exc})") from None
    if not isinstance(report, dict):
        raise JobFailed(f"{report_path}: the worker's report must be a JSON object, got {_json_type(report)}")
    if not label.is_file():
        raise JobFailed(f"{label}: the worker's label map is missing")
    from HNTumorSegLib.errors import InputError
    from HNTumorSegLib.imaging.image_io import read_image

    try:  # read now: a label map cut short after "done" (a full disk) is a failed job, not "Done" and then an error
        image = read_image(label, "result label")
    except (InputError, OSError) as exc:
        raise JobFailed(str(exc)) from None
    return JobResult(label, report, image)


def _json_type(value: object) -> str:
    """What a parsed JSON value is, in JSON's words (a list is an array)."""
    return {list: "an array", str: "a string", bool: "true or false", int: "a number", float: "a number",
            type(None): "null"}.get(type(value), type(value).__name__)


def _how_it_stopped(returncode: int) -> str:
    """"stopped with exit status 3", or for a signal its name and the likely cause (SIGKILL: the system's
    out-of-memory killer, or someone's kill -9)."""
    if returncode >= 0:
        return f"stopped with exit status {returncode}"
    try:
        name = signal.Signals(-returncode).name
    except ValueError:
        name = f"signal {-returncode}"
    cause = " (the system may have run out of memory, or it was killed)" if name == "SIGKILL" else ""
    return f"was stopped by {name}{cause}"
