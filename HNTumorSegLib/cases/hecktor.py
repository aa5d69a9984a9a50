"""Finding HECKTOR 2025 Task 1 cases on disk.

Two layouts are accepted, also mixed under one root:

* folders: ``ROOT/CASE/CASE__CT.nii.gz``, ``CASE__PT.nii.gz`` and the label ``CASE.nii.gz``;
* flat (nnU-Net-like): ``ROOT/imagesTr/CASE__CT.nii.gz``, ``ROOT/imagesTr/CASE__PT.nii.gz`` and
  ``ROOT/labelsTr/CASE.nii.gz``.

``.nii`` works wherever ``.nii.gz`` does, and so do NRRD and MetaImage files (``.nrrd``, ``.nhdr``,
``.mha``, ``.mhd``); suffixes, and the role suffixes ``__CT`` / ``__PT``, match in any letter case. Case ids are ``CENTRE-NNN`` or ``CENTRE_NNN``
(``CHUM-001``, ``MDA_123``); the centre drives the centre-proportional split. Why so strict:
a training set that silently loses cases (a PET under a slightly different name, a missing
label) gives a model trained on less than the user thinks, so every image file that does not
become part of a complete case is reported as a :class:`CaseProblem`.

Segmenting needs no centre: with ``any_folder_name`` (``hntumorseg batch``), a folder of any name
(a patient or accession number) is a case too, its id the folder's name, when it holds one CT and
one PET named ``*__CT`` / ``*__PT`` (any prefix) or ``CT`` / ``PT`` or ``PET``, in any letter case; its
centre is "". A folder named like a case id that holds such plain names (``CHUM-001/CT.nii.gz``) is a
case of that id in this mode too.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from HNTumorSegLib.imaging.image_names import image_suffix

#: Case id: centre letters/digits (starting with a letter), '-' or '_', then the case number.
CASE_ID_RE = re.compile(r"^(?P<centre>[A-Za-z][A-Za-z0-9]*)[-_](?P<number>[0-9]+)$")
#: File-name role suffixes of HECKTOR 2025: ``CASE__CT``, ``CASE__PT``; the label is ``CASE``.
ROLE_SUFFIXES = {"__CT": "ct", "__PT": "pet"}
FLAT_IMAGES, FLAT_LABELS = "imagesTr", "labelsTr"
#: File stems (any case) of a CT and a PET in a folder that is not named by a case id.
PLAIN_STEMS = {"CT": "ct", "PT": "pet", "PET": "pet"}


@dataclass(frozen=True)
class Case:
    """One complete case: CT, PET and (for training) label paths."""

    case_id: str
    centre: str
    ct: Path
    pet: Path
    label: Path | None


@dataclass(frozen=True)
class CaseProblem:
    """A case (or a stray image file, named by its file name) that cannot be used, why, and the folder it is in
    (None where its files lie in several)."""

    case_id: str
    reason: str
    where: Path | None = None


def parse_case_id(case_id: str) -> str:
    """The centre of ``case_id`` (the prefix before '-' or '_'); ValueError if it is not an id."""
    m = CASE_ID_RE.match(case_id)
    if m is None:
        raise ValueError(f"{case_id!r} is not a case id of the form CENTRE-NNN or CENTRE_NNN")
    return m.group("centre")


def case_sort_key(case_id: str) -> tuple:
    """Centre, then case number as a number (``MDA-9`` before ``MDA-10``), then the id itself."""
    m = CASE_ID_RE.match(case_id)
    if m is None:
        return (case_id, -1, case_id)
    return (m.group("centre"), int(m.group("number")), case_id)


def _image_stem(path: Path) -> str | None:
    """File name without its image suffix (``.nii.gz``, ``.NRRD``, ...), or None for a file that is not an image."""
    suffix = image_suffix(path)
    return path.name[:-len(suffix)] if suffix else None


def _role_of(stem: str) -> tuple[str, str]:
    """(case id, role) of a file stem: ``X__CT`` -> "ct", ``X__PT`` -> "pet", plain ``X`` -> "label". The role
    suffix matches in any letter case (``X__ct``), as it does in a folder of any name (:func:`_plain_role`)."""
    for suffix, role in ROLE_SUFFIXES.items():
        if stem.upper().endswith(suffix):
            return stem[:-len(suffix)], role
    return stem, "label"


def _image_files(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and _image_stem(p) is not None
                  and not p.name.startswith("."))


class _Collector:
    """Image files per (case id, role), and problems with files that fit no case."""

    def __init__(self) -> None:
        self.files: dict[str, dict[str, list[Path]]] = {}
        self.problems: list[CaseProblem] = []

    def add(self, path: Path, allowed_roles: tuple[str, ...], expected_id: str | None = None) -> None:
        case_id, role = _role_of(_image_stem(path) or "")
        if CASE_ID_RE.match(case_id) is None:
            self.problems.append(CaseProblem(path.name, f"{path}: file name is not CASE__CT, CASE__PT "
                                             "or CASE with a case id CENTRE-NNN or CENTRE_NNN", path.parent))
        elif role not in allowed_roles:
            self.problems.append(CaseProblem(case_id, f"{path}: a {role} file does not belong in "
                                             f"{path.parent.name}/", path.parent))
        elif expected_id is not None and case_id != expected_id:
            self.problems.append(CaseProblem(case_id, f"{path}: file of case {case_id} in the folder of "
                                             f"case {expected_id}", path.parent))
        else:
            self.files.setdefault(case_id, {}).setdefault(role, []).append(path)


def _plain_role(stem: str) -> str | None:
    """"ct"/"pet" of a file in a folder of any name (``*__CT``, ``*__PT``, ``CT``, ``PT``, ``PET``; any
    letter case), else None."""
    for suffix, role in ROLE_SUFFIXES.items():
        if stem.upper().endswith(suffix):
            return role
    return PLAIN_STEMS.get(stem.upper())


def _report_deeper_images(folder: Path, col: _Collector) -> None:
    """Image files in sub-folders of a folder under the root (``ROOT/CENTRE/CASE/``, ``ROOT/CASE/old/``):
    cases are not searched there, and a training set must not lose them without a word."""
    for below in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        for sub, dirs, names in os.walk(below):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                path = Path(sub) / name
                if not name.startswith(".") and _image_stem(path) is not None:
                    col.problems.append(CaseProblem(path.name, f"{path}: image file below {folder.name}/, where no "
                                                    "case is searched: cases are ROOT/CASE/ folders (or "
                                                    f"ROOT/{FLAT_IMAGES}/, ROOT/{FLAT_LABELS}/); move it up",
                                                    path.parent))


def _collect(root: Path, any_folder_name: bool = False) -> _Collector:
    col = _Collector()
    for path in _image_files(root):
        col.problems.append(CaseProblem(path.name, f"{path}: image file directly under the data root; "
                                        f"expected ROOT/CASE/ or ROOT/{FLAT_IMAGES}/, ROOT/{FLAT_LABELS}/", root))
    for name, roles in ((FLAT_IMAGES, ("ct", "pet")), (FLAT_LABELS, ("label",))):
        if (root / name).is_dir():
            for path in _image_files(root / name):
                col.add(path, roles)
    for folder in sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if not any_folder_name:  # (segmenting a folder of any name ignores what it does not use)
            _report_deeper_images(folder, col)
        if folder.name in (FLAT_IMAGES, FLAT_LABELS):
            continue
        files = _image_files(folder)
        if CASE_ID_RE.match(folder.name) is None:
            if files and any_folder_name:
                for path in files:
                    role = _plain_role(_image_stem(path) or "")
                    if role is not None:  # other files (masks, notes) are not the case's business here
                        col.files.setdefault(folder.name, {}).setdefault(role, []).append(path)
                if folder.name not in col.files:
                    col.problems.append(CaseProblem(folder.name, f"{folder}: no CT or PET file (name them *__CT / "
                                                    "*__PT, or CT / PT / PET, as .nii.gz, .nii, .nrrd or .mha)",
                                                    folder))
            elif files:
                col.problems.append(CaseProblem(folder.name, f"{folder}: folder with image files whose name "
                                                "is not a case id (CENTRE-NNN or CENTRE_NNN)", folder))
            continue
        for path in files:
            plain = PLAIN_STEMS.get((_image_stem(path) or "").upper()) if any_folder_name else None
            if plain is not None:  # CHUM-001/CT.nii.gz: a folder of any name that happens to look like an id
                col.files.setdefault(folder.name, {}).setdefault(plain, []).append(path)
            else:
                col.add(path, ("ct", "pet", "label"), expected_id=folder.name)
    return col


def find_cases(root: str | Path, require_label: bool = True,
               any_folder_name: bool = False) -> tuple[list[Case], list[CaseProblem]]:
    """Complete cases under ``root`` and problems with everything else, both sorted by case id.

    A case needs exactly one CT and one PET file, and with ``require_label`` one label file; a
    case lacking one of them, or holding two (``.nii`` beside ``.nii.gz``, or the same case in
    both layouts), is a problem, not a case. Without ``require_label`` a label-less case is a
    case with ``label=None``. ``any_folder_name``: folders not named by a case id are cases too
    (see the module's description).
    """
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{root}: data root is not a folder")
    col = _collect(root, any_folder_name)
    cases: list[Case] = []
    problems = list(col.problems)
    for case_id, roles in col.files.items():
        reasons = []
        for role, what in (("ct", f"CT ({case_id}__CT.nii.gz)"), ("pet", f"PET ({case_id}__PT.nii.gz)"),
                           ("label", f"label ({case_id}.nii.gz)")):
            found = roles.get(role, [])
            if len(found) > 1:
                reasons.append(f"{len(found)} {role} files: {', '.join(str(p) for p in found)}")
            elif not found and (role != "label" or require_label):
                reasons.append(f"no {what}")
        if reasons:
            folders = sorted({str(p.parent) for paths in roles.values() for p in paths})
            where = f"{folders[0]}: " if len(folders) == 1 else ""  # the case's folder, where the file is missing
            problems.append(CaseProblem(case_id, where + "; ".join(reasons),
                                        Path(folders[0]) if len(folders) == 1 else None))
            continue
        label = roles.get("label", [None])[0]
        centre = parse_case_id(case_id) if CASE_ID_RE.match(case_id) else ""
        cases.append(Case(case_id, centre, roles["ct"][0], roles["pet"][0], label))
    cases.sort(key=lambda c: case_sort_key(c.case_id))
    problems.sort(key=lambda p: (case_sort_key(p.case_id), p.reason))
    return cases, problems
