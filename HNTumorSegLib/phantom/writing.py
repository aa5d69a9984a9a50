"""Writing a phantom case to disk with HECKTOR 2025 file names."""

from __future__ import annotations

import os
import pathlib

import SimpleITK as sitk

from .generator import PhantomCase


def write_case(case: PhantomCase, root: str | os.PathLike) -> dict[str, pathlib.Path]:
    """Write a case with HECKTOR 2025 names: ROOT/CASE/CASE__CT.nii.gz, CASE__PT.nii.gz, CASE.nii.gz."""
    folder = pathlib.Path(root) / case.case_id
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"ct": folder / f"{case.case_id}__CT.nii.gz",
             "pet": folder / f"{case.case_id}__PT.nii.gz",
             "label": folder / f"{case.case_id}.nii.gz"}
    for key, img in (("ct", case.ct), ("pet", case.pet), ("label", case.label)):
        sitk.WriteImage(img, str(paths[key]), useCompression=True)
    return paths
