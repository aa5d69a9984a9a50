"""HNTumorSegLib: head-and-neck GTVp/GTVn segmentation on PET/CT, outside Slicer.

Pure Python (numpy, SimpleITK, torch); the Slicer module in ``HNTumorSeg/`` is a thin GUI over it.
Subpackages by layer; a module imports only from layers below its own (``Testing/Python/project/
test_layers.py`` holds the order and fails on an upward import or a cycle):

- ``cli``: the ``hntumorseg`` command line (parser and commands, one case's run, batches);
- ``slicer_support``: what the Slicer module and its worker process use;
- ``cases``, ``phantom``: finding and reading cases on disk; synthetic PET/CT phantoms;
- ``dicom``, ``evaluation``: DICOM in and out; metrics and pictures of a result;
- ``pipeline``: CT + PET -> label map on the CT grid (crop, intensities, network run, restore);
- ``imaging``, ``network``: images on disk and in space; the PSAM U-Net;
- ``errors``, ``optional_packages`` and this module's ``LABELS``: used by every layer.

The names most users call are here, loaded on first use so that ``import HNTumorSegLib`` (the
Slicer module does it) stays free of torch::

    from HNTumorSegLib import Segmenter, preprocess, restore
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

LABELS = {1: "GTVp", 2: "GTVn"}

#: Public name -> the module that defines it (imported when the name is first used).
_PUBLIC = {
    "Segmenter": "HNTumorSegLib.pipeline.inference",
    "preprocess": "HNTumorSegLib.pipeline.preprocess",
    "restore": "HNTumorSegLib.pipeline.restore",
}

__all__ = ["LABELS", "__version__", *_PUBLIC]


def __getattr__(name: str):
    """PEP 562: resolve the public names lazily (torch loads only when ``Segmenter`` is asked for)."""
    if name in _PUBLIC:
        return getattr(importlib.import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'HNTumorSegLib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_PUBLIC))
