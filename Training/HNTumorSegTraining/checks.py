"""Per-case sanity checks before preprocessing, reporting every problem of a case at once.

Why not just let :func:`HNTumorSegLib.preprocess.preprocess` fail: it stops at the first
problem, while a user fixing a data set wants the whole list for a case (an unreadable PET *and*
a label on another grid). :func:`load_checked` also hands back the images it read, so that
preparation reads each file once.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from HNTumorSegLib.errors import InputError
from HNTumorSegLib.geometry import Geometry, physical_overlap
from HNTumorSegLib.image_io import read_image

from .cases import Case

#: Label values allowed: background, GTVp, GTVn.
LABEL_VALUES = (0, 1, 2)
#: Tolerances for "label on the CT grid"; the same as preprocess() applies (spacing and origin in mm).
SPACING_ATOL, ORIGIN_ATOL, DIRECTION_ATOL = 1e-4, 1e-3, 1e-5


@dataclass
class CaseImages:
    """The images of a case as read from disk."""

    ct: sitk.Image
    pet: sitk.Image
    label: sitk.Image | None


def label_values_problem(label: sitk.Image, name: str) -> str | None:
    """A message when the label holds values outside {0, 1, 2}, else None."""
    a = sitk.GetArrayViewFromImage(label)
    ok = (a == 0) | (a == 1) | (a == 2)
    if ok.all():
        return None
    bad = np.unique(a[~ok])
    shown = ", ".join(f"{v:g}" for v in bad[:5].tolist()) + (", ..." if bad.size > 5 else "")
    return f"{name}: label values {shown} outside {{0, 1, 2}} ({int((~ok).sum())} voxels)"


def label_grid_problem(label: sitk.Image, ct: sitk.Image, name: str) -> str | None:
    """A message when the label is not on the CT grid (size, spacing, origin, direction), else None."""
    lg, cg = Geometry.of(label), Geometry.of(ct)
    diffs = []
    if lg.size != cg.size:
        diffs.append(f"size {list(lg.size)} vs CT {list(cg.size)}")
    if not np.allclose(lg.spacing, cg.spacing, rtol=0, atol=SPACING_ATOL):
        diffs.append(f"spacing {[round(v, 5) for v in lg.spacing]} vs CT {[round(v, 5) for v in cg.spacing]}")
    if not np.allclose(lg.origin, cg.origin, rtol=0, atol=ORIGIN_ATOL):
        diffs.append(f"origin {[round(v, 3) for v in lg.origin]} vs CT {[round(v, 3) for v in cg.origin]}")
    if not np.allclose(lg.direction, cg.direction, rtol=0, atol=DIRECTION_ATOL):
        diffs.append("direction differs from the CT's")
    return f"{name}: label is not on the CT grid ({'; '.join(diffs)})" if diffs else None


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
