"""Per-case sanity checks before preprocessing, reporting every problem of a case at once.

Why not just let :func:`HNTumorSegLib.pipeline.preprocess.preprocess` fail: it stops at the first
problem, while a user fixing a data set wants the whole list for a case (an unreadable PET *and*
a label on another grid). :func:`load_checked` also hands back the images it read, so that
preparation reads each file once.
"""

from __future__ import annotations

from dataclasses import dataclass

import SimpleITK as sitk

from HNTumorSegLib.errors import InputError
from HNTumorSegLib.imaging.geometry import Geometry, physical_overlap
from HNTumorSegLib.imaging.image_io import read_image
from HNTumorSegLib.imaging.label_checks import label_grid_problem, label_values_problem

from HNTumorSegLib.cases.hecktor import Case



@dataclass
class CaseImages:
    """The images of a case as read from disk."""

    ct: sitk.Image
    pet: sitk.Image
    label: sitk.Image | None


def _read(path, role: str, problems: list[str]) -> sitk.Image | None:
    try:
        return read_image(path, role)
    except InputError as exc:
        problems.append(str(exc))
        return None


def load_checked(case: Case) -> tuple[list[str], CaseImages | None]:
    """Read and check a case: (problems, images), images None unless there is no problem."""
    problems: list[str] = []
    ct = _read(case.ct, "CT", problems)
    pet = _read(case.pet, "PET", problems)
    label = _read(case.label, "label", problems) if case.label is not None else None
    if ct is not None and pet is not None and not physical_overlap(Geometry.of(ct), Geometry.of(pet)):
        problems.append(f"{case.pet}: PET does not overlap the CT {case.ct} in space")
    if label is not None:
        for problem in (label_values_problem(label, str(case.label)),
                        label_grid_problem(label, ct, str(case.label)) if ct is not None else None):
            if problem:
                problems.append(problem)
    if problems or ct is None or pet is None:
        return problems, None
    return problems, CaseImages(ct, pet, label)


def check_case(case: Case) -> list[str]:
    """Problems of a case (empty when it can be preprocessed): readable files, label values in
    {0, 1, 2}, label on the CT grid, PET overlapping the CT in space."""
    return load_checked(case)[0]
