"""hntumorseg-train phantoms under faults: a killed write, a resumed run with other settings, bad numbers, a
damaged cohort.json. A resumed run must never keep a damaged case, nor mix two cohorts in one root."""

from __future__ import annotations

import functools
import json
import os

import pytest
import SimpleITK as sitk

from HNTumorSegLib.errors import InputError
from HNTumorSegLib.imaging.input_integrity import check_input_file
from HNTumorSegLib.phantom import case_paths, make_phantom, plan_phantom, write_case
from HNTumorSegTraining import phantom_cohort
from HNTumorSegTraining.cli import main


class Killed(Exception):
    """The process dying there (not KeyboardInterrupt, which would stop pytest when a test fails)."""


@pytest.fixture
def small(monkeypatch):
    """Cohort cases on a 64-voxel CT matrix (a tenth of a second each)."""
    monkeypatch.setattr(phantom_cohort, "make_phantom", functools.partial(make_phantom, ct_matrix=64))


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


def test_write_case_killed_while_writing_leaves_no_cut_file(tmp_path, monkeypatch):
    """A writer that dies half-way through the label leaves no label at all (it left a cut one, in place)."""
    real = sitk.WriteImage

    def dies_in_label(image, path, *args, **kwargs):
        real(image, path, *args, **kwargs)
        if "__" not in str(path).rsplit("/", 1)[-1]:  # the label, CASE.nii.gz (or its temporary file)
            with open(path, "r+b") as fh:
                fh.truncate(100)
            raise Killed

    monkeypatch.setattr(sitk, "WriteImage", dies_in_label)
    with pytest.raises(Killed):
        write_case(make_phantom(3, "head", ct_matrix=64), tmp_path)
    paths = case_paths(tmp_path, "PHANTOM-003")
    assert not paths["label"].exists()
    check_input_file(paths["ct"])
    assert sorted(p.name for p in paths["ct"].parent.iterdir()) == ["PHANTOM-003__CT.nii.gz", "PHANTOM-003__PT.nii.gz"]


def test_resume_draws_a_damaged_case_again(tmp_path, small, capsys):
    data = tmp_path / "data"
    phantom_cohort.write_cohort(data, 2, seed=1, progress=False)
    label = case_paths(data, "PHA-001")["label"]
    whole = label.read_bytes()
    label.write_bytes(whole[: len(whole) // 2])  # e.g. left by a run of an earlier version, killed
    leftover = label.parent / ".PHA-001.nii.gz.abc123.nii.gz"
    leftover.write_bytes(b"")  # a killed write's temporary file, old enough not to be a running write's
    os.utime(leftover, (leftover.stat().st_atime - 3600, leftover.stat().st_mtime - 3600))
    kept = case_paths(data, "PHB-001")["ct"].stat().st_mtime_ns
    assert main(["phantoms", "--out", str(data), "--n", "2", "--seed", "1"]) == 0
    assert "PHA-001.nii.gz: file is truncated" in capsys.readouterr().err
    assert label.read_bytes() == whole
    assert sorted(p.name for p in label.parent.iterdir()) == ["PHA-001.nii.gz", "PHA-001__CT.nii.gz",
                                                              "PHA-001__PT.nii.gz"]
    assert case_paths(data, "PHB-001")["ct"].stat().st_mtime_ns == kept  # a whole case is kept
    label.unlink()  # a case killed before its label
    phantom_cohort.write_cohort(data, 2, seed=1, progress=False)
    assert label.read_bytes() == whole


def test_resume_with_another_seed_or_style_is_refused(tmp_path, small, capsys):
    data = tmp_path / "data"
    assert main(["phantoms", "--out", str(data), "--n", "1", "--seed", "5"]) == 0
    capsys.readouterr()
    marker = (data / "cohort.json").read_text()
    assert main(["phantoms", "--out", str(data), "--n", "2", "--seed", "6"]) == 2
    err = _one_error_line(capsys)
    assert "cohort.json" in err and "--seed 5" in err and "--seed 6" in err
    assert main(["phantoms", "--out", str(data), "--n", "1", "--seed", "5", "--style", "digital"]) == 2
    err = _one_error_line(capsys)
    assert "cohort.json" in err and "classic (PHA-001)" in err and "digital (PDG-001)" in err and "--start 1" in err
    assert (data / "cohort.json").read_text() == marker
    assert sorted(p.name for p in data.iterdir()) == ["PHA-001", "cohort.json"]
    # The same settings resume; other styles extend the cohort beyond its indices.
    assert main(["phantoms", "--out", str(data), "--n", "1", "--seed", "5", "--start", "1", "--style", "digital"]) == 0
    assert main(["phantoms", "--out", str(data), "--n", "2", "--seed", "5"]) == 2  # index 1 is digital now
    assert main(["phantoms", "--out", str(data), "--n", "1", "--seed", "5"]) == 0
    assert json.loads((data / "cohort.json").read_text())["case_styles"] == {"PDG-002": "digital",
                                                                            "PHA-001": "classic"}


def test_marker_is_written_before_the_cases(tmp_path, small, monkeypatch):
    """A first run killed part-way has recorded its seed: its resume under another seed is refused too."""
    def killed(recipe, root):
        raise Killed

    monkeypatch.setattr(phantom_cohort, "_write_case", killed)
    with pytest.raises(Killed):
        phantom_cohort.write_cohort(tmp_path, 2, seed=3, progress=False)
    assert phantom_cohort.read_cohort(tmp_path)["seed"] == 3
    with pytest.raises(InputError, match="--seed 3"):
        phantom_cohort.write_cohort(tmp_path, 2, seed=4, progress=False)


@pytest.mark.parametrize("option, value", [("--n", "-3"), ("--n", "0"), ("--seed", "-1"), ("--start", "-2"),
                                           ("--n", "x")])
def test_bad_numbers_name_the_option(tmp_path, capsys, option, value):
    with pytest.raises(SystemExit) as exc:
        main(["phantoms", "--out", str(tmp_path / "x"), option, value])
    assert exc.value.code == 2
    assert f"argument {option}: give an integer of" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_indices_beyond_one_seed_are_refused(tmp_path, capsys):
    """Case i of seed s is phantom seed s * 100000 + i: index 100000 + i of seed 0 was case i of seed 1."""
    assert main(["phantoms", "--out", str(tmp_path / "x"), "--start", "99999", "--n", "2"]) == 2
    err = _one_error_line(capsys)
    assert "--start 99999 --n 2" in err and "below 100000" in err and "seed s + 1" in err
    assert not (tmp_path / "x").exists()
    phantom_cohort.check_range(1, 0, 99_999)  # the last index of a seed
    with pytest.raises(InputError, match="--n -1"):
        phantom_cohort.write_cohort(tmp_path / "x", -1, progress=False)


@pytest.mark.parametrize("content", ['{"format": "hntumorseg-phantom-coh', "", "[]", '{"format": "other"}',
                                     '{"format": "hntumorseg-phantom-cohort", "seed": -1, "indices": []}'])
def test_damaged_marker_is_an_error_not_replaced(tmp_path, capsys, content):
    (tmp_path / "cohort.json").write_text(content)
    assert main(["phantoms", "--out", str(tmp_path), "--n", "1", "--start", "2"]) == 2
    err = _one_error_line(capsys)
    assert "cohort.json" in err
    assert (tmp_path / "cohort.json").read_text() == content
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cohort.json"]
    with pytest.raises(InputError, match="cohort.json"):
        phantom_cohort.read_cohort(tmp_path)
    assert phantom_cohort.read_cohort(tmp_path / "none") is None


def test_negative_phantom_seed_is_an_input_error():
    """numpy failed with "expected non-negative integer" and a traceback (hntumorseg demo --seed -1)."""
    with pytest.raises(InputError, match="phantom seed -1: give a non-negative integer"):
        plan_phantom(-1, "head")
    with pytest.raises(InputError, match="phantom seed -2"):
        make_phantom(-2, "head", style="digital")
