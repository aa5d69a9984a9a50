"""Image file names: which suffixes name an image format, in any letter case, and which names no reader opens.

Why a module of its own: the case finder (``cases.hecktor``), the command line's output checks and the
image writer need the same answer, and the first two must not load SimpleITK to get it.
"""

from __future__ import annotations

import os
from pathlib import Path

#: Image file suffixes HNTumorSeg reads from folders and writes (matched in any letter case), longest
#: first so that ``.nii.gz`` is not taken for a ``.gz``.
IMAGE_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
#: Formats whose header names a separate data file: SimpleITK writes ``NAME.mhd`` + ``NAME.zraw``
#: (or ``.raw``), ``NAME.nhdr`` + ``NAME.raw.gz`` (or ``.raw``).
DETACHED_HEADER_SUFFIXES = (".mhd", ".nhdr")


def image_suffix(path: str | os.PathLike) -> str | None:
    """The image format suffix of ``path`` in lower case (``seg.NII.GZ`` -> ``.nii.gz``), or None."""
    name = Path(path).name.lower()
    return next((s for s in IMAGE_SUFFIXES if name.endswith(s) and len(name) > len(s)), None)


def image_name_problem(path: str | os.PathLike) -> str | None:
    """Why no NIfTI reader would open an image of this name (ITK's and nifti_clib refuse a suffix in
    mixed letter case, ``.Nii.Gz``; all lower or all upper case are fine), or None."""
    suffix = image_suffix(path)
    if suffix in (".nii.gz", ".nii"):
        written = Path(path).name[-len(suffix):]
        if written not in (suffix, suffix.upper()):
            return (f"NIfTI readers refuse a suffix in mixed letter case ({written}): name it {suffix} "
                    f"or {suffix.upper()}")
    return None


def written_data_files(path: str | os.PathLike) -> list[Path]:
    """The separate data files SimpleITK may write beside an output header ``path`` (``A.MHD`` -> ``A.zraw``,
    ``A.raw``; ``A.nhdr`` -> ``A.raw.gz``, ``A.raw``); [] for a format that holds its own data. ``A.mhd`` and
    ``A.MHD`` are two headers but one data file."""
    path = Path(path)
    suffix = image_suffix(path)
    if suffix not in DETACHED_HEADER_SUFFIXES:
        return []
    stem = path.name[: -len(suffix)]
    return [path.with_name(stem + data) for data in ((".zraw", ".raw") if suffix == ".mhd" else (".raw.gz", ".raw"))]
