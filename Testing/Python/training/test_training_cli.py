"""The hntumorseg-train command: phantoms -> prepare, and its one-line errors."""

from __future__ import annotations

import json

import numpy as np
import SimpleITK as sitk

from HNTumorSegTraining.cli import main


def test_phantoms_then_prepare(tmp_path, capsys):
    data, cache = tmp_path / "data", tmp_path / "cache"
    assert main(["phantoms", "--out", str(data), "--n", "3", "--seed", "1"]) == 0
    assert sorted(p.name for p in data.iterdir()) == ["PHA-001", "PHB-001", "PHC-001", "cohort.json"]
    assert json.loads((data / "cohort.json").read_text())["synthetic"] is True
    assert main(["prepare", "--data", str(data), "--out", str(cache), "--val-counts", "PHA=1,PHB=0,PHC=0",
                 "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "accepted 3" in out and "keeps all GTVp in 3" in out
    split = json.loads((cache / "split.json").read_text())
    assert split["val"] == ["PHA-001"] and sorted(split["train"]) == ["PHB-001", "PHC-001"]


def test_phantoms_drawn_by_several_workers_are_the_same_cases(tmp_path, capsys):
    """Worker processes change the speed, not the cohort: the same voxels, the same marker."""
    one, two = tmp_path / "one", tmp_path / "two"
    styles = ["--style", "classic,endemic"]
    assert main(["phantoms", "--out", str(one), "--n", "3", "--seed", "5", *styles]) == 0
    assert main(["phantoms", "--out", str(two), "--n", "3", "--seed", "5", "--workers", "2", *styles]) == 0
    assert json.loads((one / "cohort.json").read_text()) == json.loads((two / "cohort.json").read_text())
    files = sorted(p.relative_to(one) for p in one.rglob("*.nii.gz"))
    assert len(files) == 9 and files == sorted(p.relative_to(two) for p in two.rglob("*.nii.gz"))
    for f in files:
        a, b = sitk.ReadImage(str(one / f)), sitk.ReadImage(str(two / f))
        assert a.GetSpacing() == b.GetSpacing() and a.GetOrigin() == b.GetOrigin()
        assert np.array_equal(sitk.GetArrayViewFromImage(a), sitk.GetArrayViewFromImage(b)), f
    capsys.readouterr()  # the progress bars so far
    assert main(["phantoms", "--out", str(tmp_path / "none"), "--n", "1", "--workers", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--workers 0" in err[0]


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["prepare", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("hntumorseg-train: error: ") and "missing" in err[0]
