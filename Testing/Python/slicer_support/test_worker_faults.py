"""The background job when the worker's output is not what the protocol promises.

Why: the Slicer module trusts the worker's stdout and result files to decide between "Done" and
"Failed". Native libraries writing to stdout, a deleted or damaged result, a malformed event or a
flood of library output must each end as one clear failure line (or, for harmless noise, as the
success it was), never as a traceback or a "Done" without a result. The stand-in workers here are
a few lines of Python run as the job's interpreter, so each test takes well under a second or two.
"""

from __future__ import annotations

import json
import sys

import pytest

from HNTumorSegLib.slicer_support import worker_protocol as protocol
from HNTumorSegLib.slicer_support.segmentation_job import FAILED, SUCCEEDED, JobFailed, SegmentationJob

#: The real worker's main(), with the pipeline replaced by one that writes stand-in result files and, like a
#: native library, writes to file descriptor 1 without a newline just before the report.
NATIVE_NOISE = b"[native library] flushing cache... "
REAL_WORKER_WITH_NATIVE_NOISE = f"""
import os, sys
from pathlib import Path
from HNTumorSegLib.slicer_support import worker, worker_protocol as protocol

def run_request(request, emit):
    out = Path(request.output_dir)
    out.mkdir(parents=True)
    import numpy as np, SimpleITK as sitk
    sitk.WriteImage(sitk.GetImageFromArray(np.zeros((2, 2, 2), np.uint8)), str(out / protocol.LABEL_FILE))
    os.write(1, {NATIVE_NOISE!r})
    (out / protocol.REPORT_FILE).write_text('{{"structures": {{}}}}')
    emit(protocol.done(str(out / protocol.LABEL_FILE), str(out / protocol.REPORT_FILE)))
    return {{}}

worker.run_request = run_request
worker.exit_now(worker.main([sys.argv[-1]]))
"""

#: Start of every stand-in: the job's folder is the working folder; ``w`` sends one event line.
PRELUDE = ("import json, os, sys, pathlib; out = pathlib.Path('output').resolve(); out.mkdir(exist_ok=True); "
           "w = lambda e: print(json.dumps(e), flush=True); w({'event': 'started', 'pid': os.getpid()}); ")
LABEL = "(out / 'label.nrrd').write_text('stand-in'); "
DONE = "w({'event': 'done', 'label': str(out / 'label.nrrd'), 'report': str(out / 'result.json')})"


def run_stand_in(tmp_path, code: str, prelude: str = PRELUDE) -> SegmentationJob:
    """A job whose worker is ``code``; run to the end, its failure (if any) left on the job."""
    job = SegmentationJob(python=[sys.executable, "-c", prelude + code], work_parent=str(tmp_path))
    try:
        job.run_blocking()
    except JobFailed:
        pass
    return job


def test_native_output_on_stdout_goes_to_stderr_and_the_run_succeeds(tmp_path):
    job = run_stand_in(tmp_path, REAL_WORKER_WITH_NATIVE_NOISE, prelude="")
    assert job.error is None and job.state == SUCCEEDED
    assert job.result().report == {"structures": {}}
    assert any(NATIVE_NOISE.decode().strip() in line for line in job.stderr_tail())
    assert job.process.stdout_tail() == []  # stdout carried events only


@pytest.mark.parametrize("code, needle", [
    (LABEL + DONE, "result.json: the worker's report is missing"),
    (LABEL + "(out / 'result.json').write_text('{\"a\": 1,'); " + DONE,
     "result.json: the worker's report is not valid JSON"),
    (LABEL + "(out / 'result.json').write_text('[1, 2]'); " + DONE,
     "result.json: the worker's report must be a JSON object, got an array"),
    ("(out / 'result.json').write_text('{}'); " + DONE, "label.nrrd: the worker's label map is missing"),
    ("(out / 'result.json').write_bytes(b'\\xff\\xfe{}'); " + LABEL + DONE,
     "result.json: cannot read the worker's report"),
    ("w({'event': 'done', 'label': 'label.nrrd'})", "malformed worker event: 'done' event lacks 'report'"),
])
def test_a_done_without_a_usable_result_is_a_one_line_failure(tmp_path, code, needle):
    job = run_stand_in(tmp_path, code)
    assert job.state == FAILED and job.status.startswith("Failed: ")
    assert isinstance(job.error, JobFailed) and needle in str(job.error)
    assert len(str(job.error).splitlines()) == 1
    with pytest.raises(JobFailed) as info:
        job.result()
    assert info.value is job.error


@pytest.mark.parametrize("stage", [3, None, ["network"], {"name": "network"}])
def test_a_malformed_stage_event_neither_crashes_poll_nor_hides_the_real_error(tmp_path, stage):
    code = (f"w({{'event': 'stage', 'stage': {stage!r}}}); "
            "w({'event': 'error', 'kind': 'input', 'message': 'CT and PET do not overlap'}); sys.exit(2)")
    job = SegmentationJob(python=[sys.executable, "-c", PRELUDE + code], work_parent=str(tmp_path)).start()
    job.process.wait()
    job.poll()  # raised TypeError (unhashable or not a string) before the events were validated
    assert job.state == FAILED and str(job.error) == "CT and PET do not overlap" and job.error.kind == "input"
    assert job.stage is None and job.percent == 0
    assert job.process.protocol_problems() == [
        f"malformed worker event: 'stage' event needs 'stage' as a string, got {json.dumps(stage)}"]


def test_a_flood_of_stdout_lines_does_not_push_the_real_cause_out_of_the_failure(tmp_path):
    code = ("[print('library chatter', i) for i in range(5000)]; "
            "print('RuntimeError: the real cause', file=sys.stderr, flush=True); "
            "[print('more chatter', i, flush=True) for i in range(300)]; sys.exit(1)")
    job = run_stand_in(tmp_path, code)
    assert job.state == FAILED
    assert str(job.error) == ("the segmentation worker stopped with exit status 1 before finishing: "
                              "RuntimeError: the real cause")
    assert job.stderr_tail() == ["RuntimeError: the real cause"]


def test_a_clean_exit_after_a_malformed_event_names_the_event_not_a_stderr_warning(tmp_path):
    code = "print('UserWarning: something harmless', file=sys.stderr, flush=True); w({'event': 'done', 'label': 1})"
    job = run_stand_in(tmp_path, code)
    assert job.state == FAILED
    assert str(job.error).endswith("before finishing: malformed worker event: 'done' event needs 'label' as a "
                                   "string, got 1")


@pytest.mark.parametrize("event, problem", [
    ({"event": "stage", "stage": 3}, "'stage' event needs 'stage' as a string, got 3"),
    ({"event": "stage"}, "'stage' event lacks 'stage'"),
    ({"event": "started", "pid": True}, "'started' event needs 'pid' as an integer, got true"),
    ({"event": "started", "pid": "12"}, "'started' event needs 'pid' as an integer, got \"12\""),
    ({"event": "done", "label": "l", "report": None}, "'done' event needs 'report' as a string, got null"),
    ({"event": "error", "kind": "input", "message": {"a": 1}},
     "'error' event needs 'message' as a string, got {\"a\": 1}"),
    ({"event": "error", "kind": "fatal", "message": "x"},
     "'error' event needs 'kind' as one of input, internal, got \"fatal\""),
    ({"event": "devices", "torch": "2", "cuda_available": 1, "gpus": []},
     "'devices' event needs 'cuda_available' as true or false, got 1"),
    ({"event": 7}, "'event' must be a string, got 7"),
    ({"event": "stage", "stage": ["x" * 100]},  # the value cut to 60 characters: a problem is one short line
     "'stage' event needs 'stage' as a string, got [\"" + "x" * 55 + "..."),
])
def test_decode_refuses_events_whose_fields_are_missing_or_of_the_wrong_type(event, problem):
    line = json.dumps(event)
    assert protocol.decode(line) is None
    assert protocol.parse_line(line) == (None, problem)


def test_decode_accepts_every_event_the_worker_sends_and_tells_text_from_malformed_events():
    for event in (protocol.started(12), protocol.stage("network"), protocol.done("l.nrrd", "r.json"),
                  protocol.error("bad\nsecond line", "input"),
                  {"event": "devices", "torch": "2.4", "cuda_available": False, "gpus": [], "cpu_threads": 2},
                  {"event": "a newer event", "anything": [1]}):
        assert protocol.decode(protocol.encode(event)) == event
    for text in ("plain text", '{"no_event": 1}', "[1, 2]", '{"event": "done", "label": "cut',
                 '{"event": ' + "[" * 100_000):
        assert protocol.parse_line(text) == (None, None)


@pytest.mark.parametrize("keep", [100, 0.5])
def test_a_result_label_cut_short_is_one_line_naming_it(tmp_path, keep):
    """The label map the worker wrote, cut short since (a full disk, a copy): sitk.ReadImage raised ITK's
    multi-line message with a C++ source path."""
    import numpy as np
    import SimpleITK as sitk

    from HNTumorSegLib.errors import InputError
    from HNTumorSegLib.slicer_support.segmentation_job import JobResult

    path = tmp_path / "output" / protocol.LABEL_FILE
    path.parent.mkdir()
    sitk.WriteImage(sitk.GetImageFromArray(np.ones((8, 8, 8), np.uint8)), str(path), False)
    data = path.read_bytes()
    path.write_bytes(data[: keep if isinstance(keep, int) else int(len(data) * keep)])
    with pytest.raises(InputError) as raised:
        JobResult(path, {}).read_label()
    message = str(raised.value)
    assert message.startswith(f"{path}: ") and "\n" not in message and "truncated" in message


def test_a_label_cut_short_after_done_fails_the_job_when_it_ends(tmp_path):
    """A worker that said "done" over a label map cut short (a full disk as it was written): the job said
    "Done" and the module failed only when it read the label; now the job ends failed, naming the file."""
    code = ("import numpy as np, SimpleITK as sitk; path = out / 'label.nrrd'; "
            "sitk.WriteImage(sitk.GetImageFromArray(np.ones((8, 8, 8), np.uint8)), str(path), False); "
            "path.write_bytes(path.read_bytes()[:-100]); (out / 'result.json').write_text('{}'); " + DONE)
    job = run_stand_in(tmp_path, code)
    assert job.state == FAILED and isinstance(job.error, JobFailed)
    message = str(job.error)
    assert "label.nrrd: " in message and "truncated" in message and "\n" not in message


def test_a_finished_job_hands_over_the_label_it_checked(tmp_path):
    """The label map read when the job ended is the one read_label gives (not read a second time)."""
    code = ("import numpy as np, SimpleITK as sitk; path = out / 'label.nrrd'; "
            "sitk.WriteImage(sitk.GetImageFromArray(np.full((4, 5, 6), 2, np.uint8)), str(path), False); "
            "(out / 'result.json').write_text('{}'); " + DONE)
    job = run_stand_in(tmp_path, code)
    assert job.state == SUCCEEDED
    result = job.result()
    result.label_path.unlink()
    assert result.read_label().GetSize() == (6, 5, 4)
