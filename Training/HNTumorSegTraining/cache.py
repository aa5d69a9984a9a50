"""The preprocessed-case cache: ``CACHE/cases/CASE/{image.npy, label.npy, provenance.json}``.

Why a cache: preprocessing (B-spline resampling of a 512 x 512 CT) costs seconds per case, an
epoch must not. Why ``.npy``: training reads them with ``np.load(mmap_mode="r")`` so a worker
touches only the pages it uses. The image is float16 (14.7 MB instead of 29 MB a case; the
normalised values lie in (0, 1), where float16 keeps about 3.5 significant digits).

Each file is written atomically and the provenance last, so a case is finished exactly when all
three files exist and the provenance carries the current preprocessing and cache versions.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from HNTumorSegLib.pipeline.crop import WINDOW_ZYX
from HNTumorSegLib.errors import InputError
from HNTumorSegLib.imaging.image_io import read_json, remove_temporaries, write_json, write_npy
from HNTumorSegLib.pipeline.preprocess import PREPROCESSING_VERSION

#: Changes whenever the files written here would change for the same preprocessing output.
CACHE_FORMAT_VERSION = "1"
IMAGE_DTYPE = np.float16
IMAGE_SHAPE = (2, *WINDOW_ZYX)
LABEL_SHAPE = tuple(WINDOW_ZYX)
CASE_FILES = ("image.npy", "label.npy", "provenance.json")


@dataclass
class CachedCase:
    """A finished case: memory-mapped arrays and the provenance."""

    image: np.ndarray
    label: np.ndarray
    provenance: dict


def case_dir(cache_dir: str | Path, case_id: str) -> Path:
    return Path(cache_dir) / "cases" / case_id


def read_provenance(folder: Path) -> dict | None:
    try:
        return json.loads((folder / "provenance.json").read_text())
    except (OSError, ValueError):
        return None


def is_finished(folder: Path) -> bool:
    """All three files present, versions current, arrays of the expected shape and dtype."""
    if not all((folder / name).is_file() for name in CASE_FILES):
        return False
    prov = read_provenance(folder)
    if (not isinstance(prov, dict) or prov.get("version") != PREPROCESSING_VERSION
            or prov.get("cache", {}).get("format") != CACHE_FORMAT_VERSION):
        return False
    try:
        image = np.load(folder / "image.npy", mmap_mode="r")
        label = np.load(folder / "label.npy", mmap_mode="r")
    except (OSError, ValueError):
        return False
    return (image.shape == IMAGE_SHAPE and image.dtype == IMAGE_DTYPE
            and label.shape == LABEL_SHAPE and label.dtype == np.uint8)


def write_case(folder: Path, image: np.ndarray, label: np.ndarray, provenance: dict) -> None:
    """Write a case atomically, provenance last (it marks the case finished)."""
    image16 = np.asarray(image).astype(IMAGE_DTYPE)
    if image16.shape != IMAGE_SHAPE or label.shape != LABEL_SHAPE:
        raise ValueError(f"cache arrays must be {IMAGE_SHAPE} and {LABEL_SHAPE}, got {image16.shape} "
                         f"and {label.shape}")
    if not np.isfinite(image16).all():
        raise ValueError("image does not fit float16 (values overflow to infinity)")
    (folder / "provenance.json").unlink(missing_ok=True)
    remove_leftovers(folder)
    write_npy(image16, folder / "image.npy")
    write_npy(np.ascontiguousarray(label, dtype=np.uint8), folder / "label.npy")
    provenance = {**provenance, "cache": {"format": CACHE_FORMAT_VERSION, "image_dtype": "float16",
                                          "files": list(CASE_FILES)}}
    write_json(provenance, folder / "provenance.json")


def clear_case(folder: Path) -> None:
    """Remove a case's cache files (a case that is now rejected must not look finished)."""
    for name in CASE_FILES:
        (folder / name).unlink(missing_ok=True)
    remove_leftovers(folder)


#: A temporary file untouched this long has no writer left (a case is written in seconds); a younger one may
#: be another prepare's, running on the same cache now.
LEFTOVER_AGE_S = 600.0


def remove_leftovers(folder: Path) -> None:
    """The temporary files of a prepare killed while it wrote this case (``.image.npy.RANDOM.npy``, see
    image_io.atomic_path): up to 30 MB each, and no later run would look at them again."""
    remove_temporaries(folder, CASE_FILES, min_age_s=LEFTOVER_AGE_S)


def open_case(cache_dir: str | Path, case_id: str) -> CachedCase:
    """A finished case, arrays memory-mapped read-only."""
    folder = case_dir(cache_dir, case_id)
    arrays = []
    for name in ("image.npy", "label.npy"):
        try:
            arrays.append(np.load(folder / name, mmap_mode="r"))
        except (OSError, ValueError) as exc:  # cut short ("mmap length is greater than file size") or damaged
            raise InputError(f"{folder / name}: cannot read the cached array ({str(exc).splitlines()[0]}); "
                             "prepare the cache again") from None
    return CachedCase(arrays[0], arrays[1], read_json(folder / "provenance.json"))
