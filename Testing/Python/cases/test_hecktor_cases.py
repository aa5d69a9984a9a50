"""Finding HECKTOR 2025 Task 1 cases on disk (``HNTumorSegLib.cases.hecktor``), as batch and training see them.

Both layouts (case folders, nnU-Net-like ``imagesTr``/``labelsTr``), both id styles, numeric order, and
every file that does not become part of a complete case reported rather than skipped.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from HNTumorSegLib.cases.hecktor import find_cases, parse_case_id


def _touch(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"")
    return path


def test_find_cases_both_layouts_and_id_styles(tmp_path):
    for cid, ext in (("CHUM-001", ".nii.gz"), ("MDA_123", ".nii")):
        for name in (f"{cid}__CT", f"{cid}__PT", cid):
            _touch(tmp_path / cid / f"{name}{ext}")
    for cid in ("HGJ-010", "USZ_002"):
        _touch(tmp_path / "imagesTr" / f"{cid}__CT.nii.gz")
        _touch(tmp_path / "imagesTr" / f"{cid}__PT.nii.gz")
        _touch(tmp_path / "labelsTr" / f"{cid}.nii.gz")
    (tmp_path / "README.txt").write_text("not an image")
    cases, problems = find_cases(tmp_path)
    assert problems == []
    assert [c.case_id for c in cases] == ["CHUM-001", "HGJ-010", "MDA_123", "USZ_002"]
    assert [c.centre for c in cases] == ["CHUM", "HGJ", "MDA", "USZ"]
    mda = cases[2]
    assert mda.ct == tmp_path / "MDA_123" / "MDA_123__CT.nii"
    assert mda.pet == tmp_path / "MDA_123" / "MDA_123__PT.nii"
    assert mda.label == tmp_path / "MDA_123" / "MDA_123.nii"
    hgj = cases[1]
    assert hgj.ct.parent.name == "imagesTr" and hgj.label == tmp_path / "labelsTr" / "HGJ-010.nii.gz"


def test_case_ids_sort_numerically_and_parse_centres(tmp_path):
    for cid in ("MDA-10", "MDA-9", "CHUP_002"):
        for name in (f"{cid}__CT", f"{cid}__PT", cid):
            _touch(tmp_path / cid / f"{name}.nii.gz")
    cases, _ = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["CHUP_002", "MDA-9", "MDA-10"]
    assert parse_case_id("CHUM-001") == "CHUM" and parse_case_id("MDA_123") == "MDA"
    for bad in ("CHUM001", "CHUM-", "-001", "CHUM-00a"):
        with pytest.raises(ValueError, match="not a case id"):
            parse_case_id(bad)


def test_incomplete_cases_are_reported_not_skipped(tmp_path):
    _touch(tmp_path / "CHUM-001" / "CHUM-001__CT.nii.gz")                  # no PET
    _touch(tmp_path / "CHUM-001" / "CHUM-001.nii.gz")
    for name in ("CHUM-002__CT.nii.gz", "CHUM-002__PT.nii.gz"):              # no label
        _touch(tmp_path / "CHUM-002" / name)
    for name in ("CHUM-003__CT.nii.gz", "CHUM-003__CT.nii", "CHUM-003__PT.nii.gz", "CHUM-003.nii.gz"):
        _touch(tmp_path / "CHUM-003" / name)                               # two CTs
    for name in ("HGJ-001__CT.nii.gz", "HGJ-001__PT.nii.gz"):                # flat, no labelsTr
        _touch(tmp_path / "imagesTr" / name)
    _touch(tmp_path / "imagesTr" / "HGJ-002.nii.gz")                         # label among images
    _touch(tmp_path / "stray__CT.nii.gz")                                    # at the root
    _touch(tmp_path / "patients" / "x__CT.nii.gz")                           # folder not a case id
    _touch(tmp_path / "CHUM-004" / "CHUM-005__CT.nii.gz")                     # another case's file
    _touch(tmp_path / "CHUM-006" / "CHUM-006__SEG.nii.gz")                    # unknown role
    for name in ("CHUS-001__CT.nii.gz", "CHUS-001__PT.nii.gz", "CHUS-001.nii.gz"):
        _touch(tmp_path / "CHUS-001" / name)                               # the one good case
    cases, problems = find_cases(tmp_path)
    assert [c.case_id for c in cases] == ["CHUS-001"]
    reasons = {p.case_id: p.reason for p in problems}
    assert "no PET" in reasons["CHUM-001"]
    assert "no label" in reasons["CHUM-002"]
    assert "2 ct files" in reasons["CHUM-003"]
    assert "no label" in reasons["HGJ-001"]
    assert "does not belong in imagesTr" in reasons["HGJ-002"]
    assert "directly under the data root" in reasons["stray__CT.nii.gz"]
    assert "not a case id" in reasons["patients"]
    assert "folder of case CHUM-004" in reasons["CHUM-005"]
    assert "CASE__CT, CASE__PT or CASE" in reasons["CHUM-006__SEG.nii.gz"]

    cases, problems = find_cases(tmp_path, require_label=False)
    by_id = {c.case_id: c for c in cases}
    assert by_id["CHUM-002"].label is None and by_id["HGJ-001"].label is None
    assert "CHUM-002" not in {p.case_id for p in problems}


def test_same_case_in_both_layouts_is_a_problem(tmp_path):
    for name in ("MDA-001__CT.nii.gz", "MDA-001__PT.nii.gz", "MDA-001.nii.gz"):
        _touch(tmp_path / "MDA-001" / name)
    _touch(tmp_path / "imagesTr" / "MDA-001__CT.nii.gz")
    cases, problems = find_cases(tmp_path)
    assert cases == [] and "2 ct files" in problems[0].reason


def test_the_case_finder_knows_every_image_format_the_reader_and_writer_know(tmp_path):
    """One list of suffixes (``imaging.image_names``) for all three: a case in each format and letter case is found."""
    from HNTumorSegLib.cases.hecktor import find_cases
    from HNTumorSegLib.imaging.image_names import IMAGE_SUFFIXES

    for k, suffix in enumerate(IMAGE_SUFFIXES):
        folder = tmp_path / f"USZ-{k:03d}"
        folder.mkdir()
        for stem in (f"USZ-{k:03d}__CT", f"USZ-{k:03d}__PT", f"USZ-{k:03d}"):
            (folder / (stem + (suffix.upper() if k % 2 else suffix))).write_bytes(b"x")
    cases, problems = find_cases(tmp_path)
    assert [c.case_id for c in cases] == [f"USZ-{k:03d}" for k in range(len(IMAGE_SUFFIXES))] and not problems
