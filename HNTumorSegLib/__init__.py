"""HNTumorSegLib: head-and-neck GTVp/GTVn segmentation on PET/CT, outside Slicer.

Pure Python (numpy, SimpleITK, torch). The Slicer module in ``HNTumorSeg/`` is a thin GUI over
this package; the ``hntumorseg`` command-line tool lives in :mod:`HNTumorSegLib.cli`.
"""

__version__ = "0.1.0"

LABELS = {1: "GTVp", 2: "GTVn"}
