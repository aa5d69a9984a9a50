"""Does this PET look like SUV? A warning before a run, not a refusal after it.

Why: the network was trained on PET in SUV (body weight). A PET loaded from DICOM without SUV
conversion is in Bq/mL (values in the thousands) and would crop and segment nonsense; a PET
that was rescaled or normalised reaches nowhere near the brain's uptake. Preprocessing refuses
the clear cases (:data:`~HNTumorSegLib.pipeline.preprocess.MAX_PLAUSIBLE_SUV_P99`, no voxel above
:data:`~HNTumorSegLib.pipeline.crop.TAU`); this check says so before anything runs, with the fix, and
warns about the doubtful ones.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from HNTumorSegLib.pipeline.crop import TAU
from HNTumorSegLib.pipeline.preprocess import MAX_PLAUSIBLE_SUV_P99

#: A brain (and most head-and-neck tumours) in SUV reaches well above this.
LOW_SUV_MAX = 3.0
#: An SUVmax above this happens (bladder), but a PET whose maximum exceeds it deserves a look.
HIGH_SUV_MAX = 150.0
#: Reconstruction noise gives small negative values; below this they are not SUV.
NEGATIVE_SUV = -0.5

OK, WARNING, ERROR = "ok", "warning", "error"
CONVERSION_HINT = ("load the PET with SUV conversion (e.g. the PET-DICOM extension's SUV normalisation) "
                   "or convert it to SUV (body weight) first")


@dataclass(frozen=True)
class SuvCheck:
    """``level`` is "ok", "warning" (ask, then run) or "error" (the run would be refused)."""

    level: str
    message: str = ""


def looks_like_activity(values: np.ndarray) -> bool:
    """True when a PET's values are activity concentration rather than SUV: the 99th percentile of its
    positive finite voxels lies above any plausible SUV (the bound preprocessing refuses on)."""
    values = np.asarray(values)
    positive = values[np.isfinite(values) & (values > 0)]
    return bool(positive.size) and float(np.percentile(positive, 99)) > MAX_PLAUSIBLE_SUV_P99


def check_suv(pet: np.ndarray, name: str = "PET") -> SuvCheck:
    """Judge the voxel values of a PET volume (any shape) as SUV."""
    values = np.asarray(pet)
    if values.size == 0:
        return SuvCheck(ERROR, f"{name}: the PET volume is empty")
    finite = np.isfinite(values)
    if not finite.all():
        return SuvCheck(ERROR, f"{name}: PET has {int((~finite).sum())} NaN or infinite voxels")
    vmax, vmin = float(values.max()), float(values.min())
    if looks_like_activity(values):
        return SuvCheck(ERROR, f"{name}: PET values up to {vmax:.0f} look like Bq/mL, not SUV; {CONVERSION_HINT}")
    if vmax <= TAU:
        return SuvCheck(ERROR, f"{name}: no PET value above SUV {TAU} (maximum {vmax:.3g}); the PET is not "
                               f"in SUV or holds no uptake; {CONVERSION_HINT}")
    problems = []
    if vmax < LOW_SUV_MAX:
        problems.append(f"the highest value is {vmax:.2f}, but a brain in SUV reaches 5 or more")
    if vmax > HIGH_SUV_MAX:
        problems.append(f"the highest value is {vmax:.0f}, unusually high for SUV")
    if vmin < NEGATIVE_SUV:
        problems.append(f"values go down to {vmin:.2f}, and SUV is not negative")
    if problems:
        return SuvCheck(WARNING, f"{name}: this PET may not be in SUV: {'; '.join(problems)}. "
                                 "Results on a PET in other units are meaningless.")
    return SuvCheck(OK)
