"""Writing a phantom case to disk with HECKTOR 2025 file names."""

from __future__ import annotations

import os
import pathlib

from HNTumorSegLib.imaging.image_io import write_image

from .generator import PhantomCase


def write_case(case: PhantomCase, root: str | os.PathLike) -> dict[str, pathlib.Path]:
    """Write a case with HECKTOR 2025 names: ROOT/CASE/CASE__CT.nii.gz, CASE__PT.nii.gz, CASE.nii.gz.

    Each file is written atomically (:func:`~HNTumorSegLib.imaging.image_io.write_image`): a process
    killed while writing leaves a file complete or absent, never a cut one that a resumed
    ``hntumorseg-train phantoms`` would take for a finished case (SimpleITK reads a cut ``.nii.gz``
    without complaint). The label is written last.
    """
    paths = case_paths(root, case.case_id)
    for key, img in (("ct", case.ct), ("pet", case.pet), ("label", case.label)):
        write_image(img, paths[key], compress=True)
    return paths


def case_paths(root: str | os.PathLike, case_id: str) -> dict[str, pathlib.Path]:
    """The three files of case ``case_id`` under ``root``, by role (``ct``, ``pet``, ``label``)."""
    folder = pathlib.Path(root) / case_id
    return {"ct": folder / f"{case_id}__CT.nii.gz",
            "pet": folder / f"{case_id}__PT.nii.gz",
            "label": folder / f"{case_id}.nii.gz"}
