"""The per-segment results table: volume (mL), SUVmax, SUVmean, TLG, as a clinician reads them.

Why: the figures come from :func:`HNTumorSegLib.evaluation.metrics.structure_statistics` (the same numbers
the command line writes to its JSON report); this module only decides the columns, their order
and how each value is shown, so the Slicer table and any text report agree.
"""

from __future__ import annotations

from typing import Mapping, Optional

COLUMNS = ("Segment", "Volume (mL)", "SUVmax", "SUVmean", "TLG (mL x SUV)")
#: Shown for a segment with no voxels.
NONE_FOUND = "none found"


def _fmt(value: Optional[float], digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def table_rows(structures: Mapping[str, Mapping]) -> list[list[str]]:
    """One row of strings per structure, in the order given, matching :data:`COLUMNS`."""
    rows = []
    for name, s in structures.items():
        if not s.get("voxels"):
            rows.append([name, "0.00", NONE_FOUND, "", ""])
            continue
        rows.append([name, _fmt(s["volume_ml"], 2), _fmt(s["suv_max"], 2), _fmt(s["suv_mean"], 2),
                     _fmt(s["tlg"], 1)])
    return rows


def summary_line(structures: Mapping[str, Mapping]) -> str:
    """One line for a status bar: "GTVp 12.3 mL (SUVmax 9.8); GTVn none found"."""
    parts = []
    for name, s in structures.items():
        if s.get("voxels"):
            parts.append(f"{name} {s['volume_ml']:.1f} mL (SUVmax {s['suv_max']:.1f})")
        else:
            parts.append(f"{name} {NONE_FOUND}")
    return "; ".join(parts)
