"""The results table: each segment's volume (mL), SUVmax, SUVmean, TLG, then each of its lesions.

Why: the figures come from :func:`HNTumorSegLib.evaluation.metrics.structure_statistics` and
:func:`HNTumorSegLib.evaluation.lesions.lesion_table` (the same numbers the command line writes to
its JSON report); this module only decides the columns, their order and how each value is shown,
so the Slicer table and any text report agree. A lesion's row (``GTVn_2``) follows its segment's
and adds its side, the network's confidence, marked "review" when low, and its centroid: in patient LPS
millimetres, as the command line's reports and ``hntumorseg edit`` give points, and what a double-click on
the row centres the views on (read back from the table, so it holds after the scene is saved and loaded).
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

COLUMNS = ("Segment", "Volume (mL)", "SUVmax", "SUVmean", "TLG (mL x SUV)", "Side", "Confidence",
           "Centroid LPS (mm)")
#: The column of a lesion's centroid, "x, y, z" (see :func:`centroid_of_row`).
CENTROID_COLUMN = COLUMNS.index("Centroid LPS (mm)")
#: Appended to the confidence of a lesion flagged for review.
REVIEW = "review"
#: Shown for a segment with no voxels.
NONE_FOUND = "none found"


def _fmt(value: Optional[float], digits: int) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def _confidence(lesion: Mapping) -> str:
    value = lesion.get("confidence_mean")
    if value is None:
        return ""
    return f"{value:.2f}" + (f" ({REVIEW})" if lesion.get("review") else "")


def table_rows(structures: Mapping[str, Mapping], lesions: Sequence[Mapping] = ()) -> list[list[str]]:
    """A row of strings per structure, in the order given, each followed by its lesions' rows (:data:`COLUMNS`)."""
    rows = []
    for name, s in structures.items():
        if not s.get("voxels"):
            rows.append([name, "0.00", NONE_FOUND, "", "", "", "", ""])
            continue
        rows.append([name, _fmt(s["volume_ml"], 2), _fmt(s["suv_max"], 2), _fmt(s["suv_mean"], 2),
                     _fmt(s["tlg"], 1), "", "", ""])
        for lesion in lesions:
            if lesion["structure"] == name:
                rows.append([lesion["id"], _fmt(lesion["volume_ml"], 2), _fmt(lesion["suv_max"], 2),
                             _fmt(lesion["suv_mean"], 2), _fmt(lesion["tlg"], 1), lesion.get("side") or "",
                             _confidence(lesion), ", ".join(f"{v:.1f}" for v in lesion["centroid_mm"])])
    return rows


def centroid_of_row(cells: Sequence[str]) -> Optional[tuple[float, float, float]]:
    """A lesion row's centroid (LPS, mm) as the table shows it; None for a segment's row or a table without it."""
    if len(cells) <= CENTROID_COLUMN:
        return None
    try:
        values = tuple(float(v) for v in cells[CENTROID_COLUMN].split(","))
    except ValueError:
        return None
    return values if len(values) == 3 else None


def summary_line(structures: Mapping[str, Mapping]) -> str:
    """One line for a status bar: "GTVp 12.3 mL (SUVmax 9.8); GTVn none found"."""
    parts = []
    for name, s in structures.items():
        if s.get("voxels"):
            parts.append(f"{name} {s['volume_ml']:.1f} mL (SUVmax {s['suv_max']:.1f})")
        else:
            parts.append(f"{name} {NONE_FOUND}")
    return "; ".join(parts)
