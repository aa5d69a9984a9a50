"""Images on disk and in space: reading and writing with integrity checks, grids, label checks.

Bottom layer: imports only ``HNTumorSegLib.errors`` and ``optional_packages``; everything else may import it.
"""
