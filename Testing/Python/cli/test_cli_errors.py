"""Every user mistake gives one line naming the file, exit status 2, no traceback, nothing written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from HNTumorSegLib.cli import main

from conftest import full_disk_at, tiny_ct_pet


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code, err, *needles):
    assert code == 2
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("hntumorseg: error: ")
    assert "Traceback" not in err
    for needle in needles:
        assert needle.lower() in lines[0].lower(), (needle, lines[0])


def preprocess_args(ct, pet, out):
    return ["preprocess", "--ct", ct, "--pet", pet, "--out", out]


def test_preprocess_ok(tiny_files, tmp_path, capsys):
    out = tmp_path / "pre"
    code, stdout, err = run_cli(preprocess_args(tiny_files["ct"], tiny_files["pet"], out), capsys)
    assert code == 0, err
    arr = np.load(out / "input.npy")
    assert arr.shape == (2, 112, 256, 256) and arr.dtype == np.float32
    assert (out / "provenance.json").exists()
    assert sorted(p.name for p in out.iterdir()) == ["input.npy", "provenance.json"]


def test_preprocess_without_a_label_leaves_no_earlier_label_beside_its_input(tiny_files, tmp_path, capsys):
    out = tmp_path / "pre"
    out.mkdir()
    np.save(out / "label.npy", np.ones((112, 256, 256), np.uint8))  # an earlier run's, with --label
    code, _, err = run_cli(preprocess_args(tiny_files["ct"], tiny_files["pet"], out), capsys)
    assert code == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["input.npy", "provenance.json"]


def test_a_rerun_that_fails_between_its_writes_leaves_no_earlier_provenance(tiny_files, tmp_path, capsys,
                                                                            monkeypatch):
    """A rerun over an earlier complete output that failed at its second write (label.npy, a full disk) left the
    earlier provenance.json, which described the earlier PET, beside the new input.npy: provenance.json is what
    says a folder is complete, so it goes first and comes back last."""
    import json

    from HNTumorSegLib.imaging import image_io

    ct, pet = tiny_ct_pet()
    label = sitk.GetImageFromArray(np.zeros(sitk.GetArrayViewFromImage(ct).shape, np.uint8))
    label.CopyInformation(ct)
    files = {"label": tmp_path / "label.nii.gz", "pet3": tmp_path / "pet3.nii.gz"}
    sitk.WriteImage(label, str(files["label"]))
    sitk.WriteImage(pet * 3, str(files["pet3"]))
    out = tmp_path / "pre"
    argv = preprocess_args(tiny_files["ct"], tiny_files["pet"], out) + ["--label", files["label"]]
    assert run_cli(argv, capsys)[0] == 0
    assert json.loads((out / "provenance.json").read_text())["inputs"]["pet"] == str(Path(tiny_files["pet"]).resolve())
    earlier_input = (out / "input.npy").read_bytes()
    monkeypatch.setattr(image_io, "write_npy", full_disk_at("label.npy", image_io.write_npy))
    argv = preprocess_args(tiny_files["ct"], files["pet3"], out) + ["--label", files["label"]]
    code, _, err = run_cli(argv, capsys)
    assert_one_line_error(code, err, str(out / "label.npy"), "No space left on device")
    assert (out / "input.npy").read_bytes() != earlier_input  # the new input was written ...
    assert not (out / "provenance.json").exists()  # ... and no record of the earlier run describes it


def test_an_output_under_a_file_is_refused_before_the_run(tiny_files, tmp_path, capsys):
    blocker = tmp_path / "afile"
    blocker.write_text("not a folder")
    code, _, err = run_cli(["segment", "--ct", tiny_files["ct"], "--pet", tiny_files["pet"],
                            "--out", blocker / "seg.nii.gz"], capsys)
    assert_one_line_error(code, err, f"{blocker} is a file, not a folder")
    code, _, err = run_cli(preprocess_args(tiny_files["ct"], tiny_files["pet"], blocker), capsys)
    assert_one_line_error(code, err, f"{blocker} is a file, not a folder")


def test_missing_file(tiny_files, tmp_path, capsys):
    missing = tmp_path / "nope__PT.nii.gz"
    out = tmp_path / "pre"
    code, _, err = run_cli(preprocess_args(tiny_files["ct"], missing, out), capsys)
    assert_one_line_error(code, err, str(missing), "not found")
    assert not out.exists() or not any(out.iterdir())


def test_unreadable_file(tiny_files, tmp_path, capsys):
    bad = tmp_path / "garbage__CT.nii.gz"
    bad.write_bytes(b"this is not an image" * 10)
    code, _, err = run_cli(preprocess_args(bad, tiny_files["pet"], tmp_path / "o"), capsys)
    assert_one_line_error(code, err, str(bad), "cannot read")


def test_not_3d(tiny_files, tmp_path, capsys):
    flat = tmp_path / "flat__CT.nii.gz"
    sitk.WriteImage(sitk.Image([64, 64], sitk.sitkInt16), str(flat))
    code, _, err = run_cli(preprocess_args(flat, tiny_files["pet"], tmp_path / "o"), capsys)
    assert_one_line_error(code, err, str(flat), "2D")


def test_no_overlap(tiny_files, tmp_path, capsys):
    _, pet = tiny_ct_pet()
    pet.SetOrigin((5000.0, 0.0, 0.0))
    far = tmp_path / "far__PT.nii.gz"
    sitk.WriteImage(pet, str(far))
    code, _, err = run_cli(preprocess_args(tiny_files["ct"], far, tmp_path / "o"), capsys)
    assert_one_line_error(code, err, str(far), "does not overlap")


def test_no_uptake_above_tau(tiny_files, tmp_path, capsys):
    _, pet = tiny_ct_pet(pet_scale=0.05)  # max SUV 0.4 < 0.5
    cold = tmp_path / "cold__PT.nii.gz"
    sitk.WriteImage(pet, str(cold))
    code, _, err = run_cli(preprocess_args(tiny_files["ct"], cold, tmp_path / "o"), capsys)
    assert_one_line_error(code, err, str(cold), "SUV", "Bq/mL")


def test_bq_per_ml(tiny_files, tmp_path, capsys):
    _, pet = tiny_ct_pet(pet_scale=5000.0)
    bq = tmp_path / "bq__PT.nii.gz"
    sitk.WriteImage(pet, str(bq))
    code, _, err = run_cli(preprocess_args(tiny_files["ct"], bq, tmp_path / "o"), capsys)
    assert_one_line_error(code, err, str(bq), "Bq/mL", "SUV")


def test_nan_voxels(tiny_files, tmp_path, capsys):
    _, pet = tiny_ct_pet()
    arr = sitk.GetArrayFromImage(pet)
    arr[3, 4, 5] = np.nan
    arr[3, 4, 6] = np.inf
    nan_img = sitk.GetImageFromArray(arr)
    nan_img.CopyInformation(pet)
    path = tmp_path / "nan__PT.mha"  # (the NIfTI reader turns NaN into 0 itself)
    sitk.WriteImage(nan_img, str(path))
    code, _, err = run_cli(preprocess_args(tiny_files["ct"], path, tmp_path / "o"), capsys)
    assert_one_line_error(code, err, str(path), "2 NaN or infinite")


def test_label_off_grid(tiny_files, tmp_path, capsys):
    lab = sitk.Image([10, 10, 10], sitk.sitkUInt8)
    path = tmp_path / "lab.nii.gz"
    sitk.WriteImage(lab, str(path))
    code, _, err = run_cli(preprocess_args(tiny_files["ct"], tiny_files["pet"], tmp_path / "o")
                           + ["--label", path], capsys)
    assert_one_line_error(code, err, str(path), "not on the CT grid")


def test_bad_output_suffix(tiny_files, tmp_path, capsys):
    code, _, err = run_cli(["segment", "--ct", tiny_files["ct"], "--pet", tiny_files["pet"],
                            "--out", tmp_path / "seg.txt", "--model", tmp_path / "m.json"], capsys)
    assert code == 2 and "Traceback" not in err


def test_console_script_prints_no_traceback(tiny_files, tmp_path):
    missing = tmp_path / "missing.nii.gz"
    proc = subprocess.run([sys.executable, "-m", "HNTumorSegLib.cli", "preprocess", "--ct", str(missing),
                           "--pet", str(tiny_files["pet"]), "--out", str(tmp_path / "o")],
                          capture_output=True, text=True, encoding="utf-8", timeout=120)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert proc.stderr.strip() == f"hntumorseg: error: {missing}: CT file not found"


def test_unwritable_output_is_one_line(tiny_files, tmp_path, capsys):
    blocker = tmp_path / "file"
    blocker.write_text("a file where a folder is needed")
    code, _, err = run_cli(preprocess_args(tiny_files["ct"], tiny_files["pet"], blocker / "sub"), capsys)
    assert_one_line_error(code, err, str(blocker))


def test_sigterm_during_a_write_cleans_up_and_is_one_line(tmp_path):
    """SIGTERM (kill, timeout, a scheduler's time limit) ended the process on the spot: an edit killed while
    writing left hidden temporaries beside its output. It now unwinds as Ctrl-C does: status 143, one line."""
    import subprocess
    import sys
    import textwrap

    script = tmp_path / "term.py"
    script.write_text(textwrap.dedent(f"""
        import os, signal
        from HNTumorSegLib.cli.guard import run_guarded
        from HNTumorSegLib.imaging.image_io import atomic_path

        def command(args):
            with atomic_path({str(tmp_path / "out" / "seg.nii.gz")!r}) as tmp:
                tmp.write_bytes(b"half an image")
                os.kill(os.getpid(), signal.SIGTERM)
                raise AssertionError("SIGTERM did not stop the command")

        raise SystemExit(run_guarded("hntumorseg", command, None))
    """))
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert done.returncode == 143, done.stderr
    assert done.stderr.strip() == "hntumorseg: terminated"
    assert list((tmp_path / "out").iterdir()) == []  # no temporary, no output


def test_segment_to_an_output_whose_report_is_that_of_another_label_map_is_refused(tiny_files, tmp_path, capsys):
    import json

    (tmp_path / "seg.nii.gz").write_bytes(b"an earlier label map")
    (tmp_path / "seg.json").write_text(json.dumps({"output": "elsewhere/seg.nii.gz"}))
    code, _, err = run_cli(["segment", "--ct", str(tiny_files["ct"]), "--pet", str(tiny_files["pet"]),
                            "--out", str(tmp_path / "seg.nrrd")], capsys)
    assert_one_line_error(code, err, "seg.json is the report of seg.nii.gz")
    assert not (tmp_path / "seg.nrrd").exists()


def test_a_stop_lost_in_a_del_is_raised_again_at_the_next_step_without_its_trace(capsys):
    """A SIGTERM that arrives while Python runs a ``__del__`` (torch's loader shuts its workers down in one at each
    epoch's end) was raised there, printed as "Exception ignored" and dropped: the training went on to its end."""
    import os
    import signal

    from HNTumorSegLib.cli.guard import raise_pending_stop, run_guarded

    class StoppedWhileDeleted:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)

    steps = []

    def command(args):
        for step in range(3):
            raise_pending_stop()
            steps.append(step)
            StoppedWhileDeleted()  # deleted at once: the stop is raised inside __del__
        return 0

    assert run_guarded("prog", command, None) == 143
    assert steps == [0] and capsys.readouterr().err == "prog: terminated\n"
