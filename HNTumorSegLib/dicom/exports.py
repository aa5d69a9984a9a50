"""RTSTRUCT and DICOM SEG of one segmentation, for ``segment`` and ``batch``.

Why a module: both outputs reference the CT's DICOM slices, so both need a CT read from DICOM;
the check that says so plainly (before minutes of computing) and the writing of both files,
with what goes into the JSON report, are shared by the commands that offer them.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

NEEDS_DICOM_CT = ("needs the CT as a DICOM folder: an RTSTRUCT or DICOM SEG references the CT's DICOM slices, "
                  "and a {kind} CT has none (segment the DICOM series, or use the Slicer module's export)")


def check_dicom_ct(ct_path: str | os.PathLike, option: str) -> None:
    """A DICOM output asked for with a CT file (NIfTI, NRRD, ...) is a one-line error, before any work."""
    from HNTumorSegLib.errors import InputError

    path = Path(ct_path)
    if path.exists() and not path.is_dir():
        kind = "NIfTI" if path.name.lower().endswith((".nii", ".nii.gz")) else path.suffix.lstrip(".").upper() or "file"
        raise InputError(f"{path}: {option} {NEEDS_DICOM_CT.format(kind=kind)}")


def write_dicom_outputs(label, ct_dicom, rtstruct: Optional[str | os.PathLike] = None,
                        dicom_seg: Optional[str | os.PathLike] = None, label_name: str = "label",
                        split_lesions: bool = False) -> dict:
    """Write the requested outputs; returns what the JSON report records about them.

    ``split_lesions``: GTVn as GTVn_1 .. GTVn_k, one ROI / segment per node.
    """
    from HNTumorSegLib.errors import InputError

    if (rtstruct or dicom_seg) and ct_dicom is None:
        raise InputError(f"{label_name}: --rtstruct/--dicom-seg {NEEDS_DICOM_CT.format(kind='non-DICOM')}")
    report: dict = {}
    if rtstruct:
        from HNTumorSegLib.dicom.rtstruct import write_rtstruct

        summaries = write_rtstruct(label, ct_dicom, rtstruct, label_name=label_name, split_lesions=split_lesions)
        report["rtstruct"] = {"file": str(rtstruct), "referenced_ct_series": ct_dicom.series.uid,
                              "structures": {s.name: {"contours": s.contours, "slices": s.slices, "voxels": s.voxels}
                                             for s in summaries}}
    if dicom_seg:
        from HNTumorSegLib.dicom.seg import write_dicom_seg

        write_dicom_seg(label, ct_dicom, dicom_seg, label_name=label_name, split_lesions=split_lesions)
        report["dicom_seg"] = {"file": str(dicom_seg), "referenced_ct_series": ct_dicom.series.uid}
    return report
