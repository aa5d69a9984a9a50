"""Cancel kills the worker's whole process tree and leaves no file of the run behind.

In Slicer the worker runs under ``PythonSlicer``, a launcher that starts the real interpreter as
its child; a launcher stand-in here does the same, so killing only the direct child would leave
the worker running. Both tests check every process of the tree is gone.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest
import torch

from HNTumorSegLib.pipeline.model_file import save_model
from HNTumorSegLib.network import NetworkConfig, build_network
from HNTumorSegLib.slicer_support.segmentation_job import CANCELLED, SegmentationJob
from HNTumorSegLib.slicer_support.worker_process import WorkerProcess

from conftest import tiny_ct_pet

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="checks processes through /proc or os.kill")

#: Stands in for PythonSlicer: runs its arguments as a child and waits for it.
LAUNCHER = "import subprocess, sys; sys.exit(subprocess.call(sys.argv[1:]))"
#: How long to wait for the kernel to deliver SIGKILL (an upper bound, not a measurement).
GONE_WITHIN_S = 30.0


def is_alive(pid: int) -> bool:
    """Running (a zombie waiting for its parent to reap it counts as gone)."""
    stat = Path(f"/proc/{pid}/stat")
    if stat.parent.parent.joinpath("self").exists():
        try:
            state = stat.read_text().rsplit(")", 1)[1].split()[0]
        except (FileNotFoundError, ProcessLookupError, IndexError):
            return False
        return state not in ("Z", "X")
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


#: The longest a test waits for a worker to reach a point (a hang fails the test, it does not stall CI).
REACH_WITHIN_S = 300.0


def wait_for(reached, what: str, limit: float = REACH_WITHIN_S) -> None:
    """Poll ``reached()`` until it is true; fail the test after ``limit`` seconds."""
    end = time.monotonic() + limit
    while not reached():
        if time.monotonic() > end:
            pytest.fail(f"waited {limit:g} s for {what}")
        time.sleep(0.02)


def wait_until_gone(pids, limit=GONE_WITHIN_S):
    end = time.monotonic() + limit
    while time.monotonic() < end and any(is_alive(p) for p in pids):
        time.sleep(0.05)
    return [p for p in pids if is_alive(p)]


def test_cancel_kills_a_process_and_the_child_it_started(tmp_path):
    # The worker stand-in starts a long-lived child, reports both pids, then waits forever.
    script = ("import json, subprocess, sys, time\n"
              "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(3600)'])\n"
              "print(json.dumps({'event': 'pids', 'parent': __import__('os').getpid(), 'child': child.pid}), flush=True)\n"
              "time.sleep(3600)\n")
    proc = WorkerProcess([sys.executable, "-c", script]).start()
    events = []

    def reported():
        events.extend(proc.poll())
        if proc.returncode is not None and not events:
            pytest.fail(f"stand-in exited early: {proc.stderr_tail()}")
        return bool(events)

    wait_for(reported, "the stand-in's pids")
    pids = [events[0]["parent"], events[0]["child"]]
    assert all(is_alive(p) for p in pids)
    proc.cancel()
    assert wait_until_gone(pids) == []
    assert proc.returncode is not None and proc.finished


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    torch.manual_seed(0)
    cfg = NetworkConfig(channels=(4, 8, 16, 32, 64), psam_channels=(2, 4, 8))
    path = tmp_path_factory.mktemp("model") / "small"
    save_model(build_network(cfg), cfg, path, metadata={"trained_on": "nothing (random weights, tests)"})
    return str(path.with_suffix(".json"))


def test_cancelling_a_real_worker_under_a_launcher_leaves_nothing(small_model, tmp_path):
    ct, pet = tiny_ct_pet()
    job = SegmentationJob(model=small_model, device="cpu", python=[sys.executable, "-c", LAUNCHER, sys.executable],
                          work_parent=str(tmp_path))
    job.write_inputs(ct, pet)
    job.start()
    launcher_pid = job.process.pid
    # Wait until the worker (the launcher's child) is inside the network stage, then cancel.
    def in_network():
        job.poll()
        if job.state != "running":
            pytest.fail(f"worker ended before the network stage: {job.state} {job.error}")
        return job.stage == "network"

    wait_for(in_network, "the worker's network stage")
    worker_pid = job.worker_pid
    assert worker_pid not in (None, launcher_pid)
    assert is_alive(worker_pid) and is_alive(launcher_pid)
    job.cancel()
    assert job.state == CANCELLED
    # Wait for the processes to be gone before looking at the files: a worker that survived the
    # cancel would finish its run and write the results again.
    assert wait_until_gone([launcher_pid, worker_pid]) == []
    assert not job.folder.exists()
    assert list(tmp_path.iterdir()) == []  # no output, no temporary file, no folder
