"""The segmentation worker process and its protocol, run for real (small random-weight model).

The worker is what the Slicer module runs in the background; these tests start it as a real
process and read its stdout as the module does.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from HNTumorSegLib.slicer_support import worker_protocol as protocol
from HNTumorSegLib.imaging.geometry import Geometry
from HNTumorSegLib.slicer_support.segmentation_job import (FAILED, SUCCEEDED, JobFailed, SegmentationJob, worker_command,
                                                           worker_environment)

from conftest import tiny_ct_pet




def run_worker(args, cwd):
    """Run the worker to the end; (exit status, events, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "HNTumorSegLib.slicer_support.worker", *args],
                          capture_output=True, text=True, encoding="utf-8", env=worker_environment(), cwd=cwd)
    events = [protocol.decode(line) for line in proc.stdout.splitlines()]
    assert all(e is not None for e in events), f"non-protocol line on stdout: {proc.stdout!r}"
    return proc.returncode, events, proc.stderr


def test_job_segments_in_a_worker_and_reports_every_stage(small_model, tmp_path):
    ct, pet = tiny_ct_pet()
    job = SegmentationJob(model=str(small_model), device="cpu", work_parent=str(tmp_path))
    job.write_inputs(ct, pet)
    seen = []
    result = job.run_blocking(on_event=seen.append)
    assert job.state == SUCCEEDED and job.percent == 100
    assert [e["event"] for e in seen][0] == "started" and seen[-1]["event"] == "done"
    assert [e["stage"] for e in seen if e["event"] == "stage"] == list(protocol.STAGES)
    assert isinstance(job.worker_pid, int)

    label = result.read_label()
    assert Geometry.of(label) == Geometry.of(ct)
    assert label.GetPixelID() == sitk.sitkUInt8
    assert set(np.unique(sitk.GetArrayViewFromImage(label))) <= {0, 1, 2}
    report = result.report
    assert set(report["structures"]) == {"GTVp", "GTVn"}
    assert report["device"] == "cpu"
    assert report["model"]["file"] == str(small_model)
    assert report["provenance"]["crop"]["x2"] - report["provenance"]["crop"]["x1"] == 256
    assert report["analysis_window"]["size_mm"] == [256.0, 256.0, 336.0]
    assert sorted(p.name for p in job.output_dir.iterdir()) == sorted([protocol.LABEL_FILE, protocol.REPORT_FILE,
                                                                       protocol.UNCERTAINTY_FILE])
    # the uncertainty for the module's overlay: percent on the CT grid, as the report says
    assert report["uncertainty"]["measure"] == "normalised entropy" and report["uncertainty"]["unit"] == "%"
    uncertainty = sitk.ReadImage(report["uncertainty"]["file"])
    assert Geometry.of(uncertainty) == Geometry.of(ct) and uncertainty.GetPixelID() == sitk.sitkUInt8
    assert 0 < sitk.GetArrayViewFromImage(uncertainty).max() <= 100
    assert {row["structure"] for row in report["lesions"]} <= {"GTVp", "GTVn"}
    job.cleanup()
    assert not job.folder.exists()


def test_bad_input_is_one_error_line_and_exit_2(small_model, tmp_path):
    request = protocol.Request(str(tmp_path / "missing_ct.nrrd"), str(tmp_path / "pet.nrrd"),
                               str(tmp_path / "out"), str(small_model), "cpu")
    (tmp_path / "request.json").write_text(request.to_json())
    code, events, _ = run_worker([str(tmp_path / "request.json")], tmp_path)
    assert code == protocol.EXIT_INPUT
    assert events[0]["event"] == "started"
    errors = [e for e in events if e["event"] == "error"]
    assert len(errors) == 1 and errors[0]["kind"] == "input"
    assert "missing_ct.nrrd" in errors[0]["message"] and "not found" in errors[0]["message"]
    assert not any(e["event"] == "done" for e in events)
    assert not (tmp_path / "out").exists()


def test_job_failure_carries_the_workers_message(tmp_path):
    ct, pet = tiny_ct_pet()
    job = SegmentationJob(model=str(tmp_path / "no_such_model.json"), device="cpu", work_parent=str(tmp_path))
    job.write_inputs(ct, pet)
    with pytest.raises(JobFailed) as info:
        job.run_blocking()
    assert job.state == FAILED
    assert info.value.kind == "input"
    assert "no_such_model.json" in str(info.value) and "not found" in str(info.value)
    assert not job.output_dir.exists()


def test_pet_in_bq_per_ml_is_refused_with_the_reason(small_model, tmp_path):
    ct, pet = tiny_ct_pet(pet_scale=5000.0)
    job = SegmentationJob(model=str(small_model), device="cpu", work_parent=str(tmp_path), pet_name="PET 'PT WB'")
    job.write_inputs(ct, pet)
    with pytest.raises(JobFailed) as info:
        job.run_blocking()
    assert info.value.kind == "input"
    assert str(info.value).startswith("PET 'PT WB': PET values up to") and "Bq/mL" in str(info.value)
    assert job.stage == "preprocess"
    assert not job.output_dir.exists()


@pytest.mark.parametrize("content,needle", [
    ("{not json", "not valid JSON"),
    ('{"ct": "a.nrrd", "pet": "b.nrrd"}', "'output_dir' must be a non-empty path string"),
    ('{"ct": "a", "pet": "b", "output_dir": "o", "device": "gpu"}', "'device' must be one of auto, cuda, cpu"),
    ('{"ct": "a", "pet": "b", "output_dir": "o", "colour": 1}', "unknown key(s) colour"),
])
def test_malformed_requests_are_refused_before_any_work(tmp_path, content, needle):
    (tmp_path / "request.json").write_text(content)
    code, events, _ = run_worker([str(tmp_path / "request.json")], tmp_path)
    assert code == protocol.EXIT_INPUT
    assert [e["event"] for e in events] == ["started", "error"]
    assert needle in events[1]["message"] and "request.json" in events[1]["message"]


def test_worker_that_dies_without_a_message_is_reported_with_its_stderr(tmp_path):
    ct, pet = tiny_ct_pet()
    # A "python" that prints to stderr and exits 3 stands in for a crashed interpreter.
    job = SegmentationJob(python=[sys.executable, "-c", "import sys; print('boom: libcuda missing', file=sys.stderr); "
                                  "sys.exit(3)"], work_parent=str(tmp_path))
    job.write_inputs(ct, pet)
    with pytest.raises(JobFailed) as info:
        job.run_blocking()
    assert "exit status 3" in str(info.value) and "boom: libcuda missing" in str(info.value)


def test_probe_reports_what_torch_sees(tmp_path):
    code, events, _ = run_worker(["--probe"], tmp_path)
    assert code == 0
    devices = events[-1]
    assert devices["event"] == "devices"
    assert devices["torch"] == torch.__version__
    assert devices["cuda_available"] == torch.cuda.is_available()
    assert isinstance(devices["gpus"], list)
    bundled = devices["bundled_model"]
    if bundled["path"] is None:
        assert "no trained model is bundled" in bundled["description"]
    else:
        assert bundled["path"].endswith(".json") and "trained on" in bundled["description"]


def test_model_description_is_read_without_torch(small_model, tmp_path):
    from HNTumorSegLib.pipeline.model_info import model_json_path, read_model_description

    text = read_model_description(str(small_model.with_suffix(".safetensors")))
    assert text.startswith("PSAM U-Net 4-8-16-32-64; trained on nothing (random weights, tests).")
    assert "Research use only" in text
    assert model_json_path("a/m.v2.safetensors").name == "m.v2.json"
    assert "not found" in read_model_description(tmp_path / "none.json")
    (tmp_path / "other.json").write_text('{"format": "something"}')
    assert "not an HNTumorSeg model file" in read_model_description(tmp_path / "other.json")


def test_request_round_trip_and_worker_command():
    r = protocol.Request("ct.nrrd", "pet.nrrd", "out", None, "cuda", True, "CT 'a'", None)
    assert protocol.Request.from_dict(json.loads(r.to_json())) == r
    assert worker_command(["PythonSlicer"], "r.json") == ["PythonSlicer", "-m", "HNTumorSegLib.slicer_support.worker", "r.json"]
    env = worker_environment({"PYTHONPATH": "/elsewhere"})
    first, second = env["PYTHONPATH"].split(os.pathsep)[:2]
    assert second == "/elsewhere"
    assert (Path(first) / "HNTumorSegLib" / "slicer_support" / "worker.py").is_file()
    # the worker shares the CPU with Slicer: OpenMP threads sleep while they wait, unless the user chose otherwise
    assert env["OMP_WAIT_POLICY"] == "PASSIVE"
    assert worker_environment({"OMP_WAIT_POLICY": "ACTIVE"})["OMP_WAIT_POLICY"] == "ACTIVE"


def test_decode_ignores_lines_that_are_not_events():
    assert protocol.decode("Warning: something from a library") is None
    assert protocol.decode('{"no_event": 1}') is None
    assert protocol.decode(protocol.encode(protocol.stage("network"))) == {"event": "stage", "stage": "network"}
    assert protocol.error("first line\nsecond", "input")["message"] == "first line"


@pytest.mark.parametrize("cpus, omp, expected", [(2, None, 2), (4, None, 3), (16, None, 15), (1, None, 1),
                                                 (16, "4", 4), (2, "1", 1), (8, "zero", 7)])
def test_the_worker_leaves_slicer_a_cpu_where_there_are_several_and_keeps_omp_num_threads(monkeypatch, cpus, omp,
                                                                                            expected):
    from HNTumorSegLib.pipeline import inference
    from HNTumorSegLib.slicer_support.worker import worker_threads

    monkeypatch.setattr(inference, "available_cpus", lambda: cpus)
    if omp is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", omp)  # "zero" is not a count: ignored
    assert worker_threads() == expected


def test_a_segmenter_uses_the_threads_it_is_given_or_the_users_omp_num_threads(small_model, monkeypatch):
    from HNTumorSegLib.pipeline.inference import Segmenter

    before = torch.get_num_threads()
    try:
        Segmenter(small_model, device="cpu", threads=1)
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        torch.set_num_threads(2)
        Segmenter(small_model, device="cpu")
        assert torch.get_num_threads() == 1  # not overridden with every CPU
    finally:
        torch.set_num_threads(before)


def test_a_job_asked_to_refine_the_nodes_runs_the_refinement_and_reports_it(small_model, tmp_path):
    """The module's "Redraw nodes" reaches the worker (Request.refine_nodes), which refines after the network, as
    `segment --refine-nodes`; a request without it is refused nothing and refines nothing."""
    ct, pet = tiny_ct_pet()
    job = SegmentationJob(model=str(small_model), device="cpu", work_parent=str(tmp_path), refine_nodes=True)
    job.write_inputs(ct, pet)
    report = job.run_blocking().report
    assert report["node_refinement"]["click_model"] == "hntumorseg_phantom_node_clicks.json"
    assert "refine_nodes" in report["timings_s"]
    assert protocol.Request.from_dict(json.loads(job.request.to_json())).refine_nodes is True
    with pytest.raises(Exception, match="'refine_nodes' must be true or false"):
        protocol.Request.from_dict({"ct": "c", "pet": "p", "output_dir": "o", "refine_nodes": "yes"})
    job.cleanup()
