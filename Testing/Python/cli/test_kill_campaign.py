"""A few trials of the SIGKILL campaign (Testing/benchmarks/kill_campaign.py runs tens): killed at seeded random
moments, ``batch`` and ``segment`` leave no partial output and their reruns equal an uninterrupted run."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "kill_campaign.py"

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="SIGKILL of a process group is POSIX")


def load_campaign():
    spec = importlib.util.spec_from_file_location("kill_campaign", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_killed_runs_leave_no_partial_output_and_reruns_equal_an_uninterrupted_run(tmp_path):
    campaign = load_campaign()
    result = campaign.campaign(trials=4, seed=1, cases=2, root=tmp_path, log=lambda line: None)
    rows = result["rows"]
    assert [r["command"] for r in rows] == ["batch", "segment"] * 2
    assert [r["bad"] for r in rows] == [[]] * len(rows)
    assert all(r["rerun_identical"] for r in rows), rows
    for r in rows:  # a case's own temporary files are removed when batch runs it again
        assert not [name for name in r["leftovers"] if "/" in name], r


def test_the_checks_catch_a_torn_output(tmp_path):
    """The campaign's reader must fail on a torn file, and its comparison on a wrong one."""
    campaign = load_campaign()
    import SimpleITK as sitk

    out = tmp_path / "out"
    out.mkdir()
    image = sitk.Image(8, 8, 8, sitk.sitkUInt8)
    sitk.WriteImage(image, str(out / "seg.nii.gz"))
    reference = campaign.outputs(out)
    data = (out / "seg.nii.gz").read_bytes()
    (out / "seg.nii.gz").write_bytes(data[: len(data) // 2])
    with pytest.raises(Exception):
        campaign.outputs(out)
    image[1, 1, 1] = 2
    sitk.WriteImage(image, str(out / "seg.nii.gz"))
    assert campaign.torn_or_wrong(campaign.outputs(out), reference) == ["seg.nii.gz: differs from the finished run's"]
