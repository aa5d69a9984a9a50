"""Finding and reading cases: CT + PET (+ label) pairs on disk, NIfTI or DICOM, as the library and training see them.

Imports ``dicom``, ``imaging`` and the base modules; never the Slicer support or the command line.
"""
