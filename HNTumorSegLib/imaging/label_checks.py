"""Checks that a label map fits its CT: values within {0, 1, 2} and the CT's exact grid.

Shared by preprocessing (which stops at the first problem) and the training package's case
checks (which list every problem of a case), so both apply the same tolerances.
"""

from __future__ import annotations

import numpy as np
import SimpleITK as sitk

from HNTumorSegLib.imaging.geometry import Geometry

#: Label values allowed: background, GTVp, GTVn.
LABEL_VALUES = (0, 1, 2)
#: Tolerances for "label on the CT grid" (spacing and origin in mm).
SPACING_ATOL, ORIGIN_ATOL, DIRECTION_ATOL = 1e-4, 1e-3, 1e-5


def label_values_problem(label: sitk.Image, name: str) -> str | None:
    """A message when the label holds values outside {0, 1, 2}, else None."""
    a = sitk.GetArrayViewFromImage(label)
    ok = (a == 0) | (a == 1) | (a == 2)
    if ok.all():
        return None
    bad = np.unique(a[~ok])
    shown = ", ".join(f"{v:g}" for v in bad[:5].tolist()) + (", ..." if bad.size > 5 else "")
    return f"{name}: label values {shown} outside {{0, 1, 2}} ({int((~ok).sum())} voxels)"


def label_grid_problem(label: sitk.Image, ct: sitk.Image, name: str, other: str = "CT") -> str | None:
    """A message when the label is not on the grid of ``ct`` (size, spacing, origin, direction), else None.

    ``other`` names that image in the message (the CT; or the reference, when scoring).
    """
    lg, cg = Geometry.of(label), Geometry.of(ct)
    diffs = []
    if lg.size != cg.size:
        diffs.append(f"size {list(lg.size)} vs {other} {list(cg.size)}")
    if not np.allclose(lg.spacing, cg.spacing, rtol=0, atol=SPACING_ATOL):
        diffs.append(f"spacing {[round(v, 5) for v in lg.spacing]} vs {other} {[round(v, 5) for v in cg.spacing]}")
    if not np.allclose(lg.origin, cg.origin, rtol=0, atol=ORIGIN_ATOL):
        diffs.append(f"origin {[round(v, 3) for v in lg.origin]} vs {other} {[round(v, 3) for v in cg.origin]}")
    if not np.allclose(lg.direction, cg.direction, rtol=0, atol=DIRECTION_ATOL):
        diffs.append(f"direction differs from the {other}'s")
    return f"{name}: label is not on the {other} grid ({'; '.join(diffs)})" if diffs else None
