"""Checks that a label map fits its CT: values within {0, 1, 2}, the CT's exact grid, and (where a report
recorded it) the CT's voxels (:func:`ct_digest`).

Shared by preprocessing (which stops at the first problem) and the training package's case
checks (which list every problem of a case), so both apply the same tolerances.
"""

from __future__ import annotations

import hashlib

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
    shown = ", ".join(label_value_text(v) for v in bad[:5]) + (", ..." if bad.size > 5 else "")
    return f"{name}: label values {shown} outside {{0, 1, 2}} ({int((~ok).sum())} voxels)"


def label_value_text(value: np.generic) -> str:
    """A label value as a message shows it: a whole number without decimals (``3``, ``255``, ``-1``), any
    other as the shortest text that reads back as the same value of its type (``1.0000001``, ``nan``).

    Why: ``f"{v:g}"`` keeps 6 significant digits, so a label saved as float 1.0000001 was reported
    as "label values 1 outside {0, 1, 2}", which reads as nonsense and hides the fix (round the label).
    """
    number = value.item()
    if isinstance(number, float) and number.is_integer() and abs(number) < 1e15:
        return str(int(number))
    return str(value)  # numpy's shortest round-trip text for the value's own type (float32 1.0000001)


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


def ct_digest(ct: sitk.Image) -> str:
    """A digest of the CT's voxels that reports record, so that a label map can be tied to the CT it was drawn on.

    Why: a label map of another case on the same grid (cases resampled or cropped to one grid, as challenge data
    often are) passes every grid check, and an edit would then draw from the other patient's PET. The digest is
    of the HU to 0.1 HU (as whole tenths: a CT read from DICOM as float and the same CT saved as int16 NIfTI agree)
    at every 4th row and column of every slice (10 MB of a 512 x 512 x 600 CT: 0.2 s on a 2-core CPU)."""
    tenths = np.rint(sitk.GetArrayViewFromImage(ct)[:, ::4, ::4].astype(np.float64) * 10.0).astype(np.int64)
    return "sha256:" + hashlib.sha256(np.ascontiguousarray(tenths).tobytes()).hexdigest()[:32]
