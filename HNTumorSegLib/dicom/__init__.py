"""DICOM in and out: series discovery, PET SUV conversion, RTSTRUCT, DICOM SEG, contours, codes.

Imports ``imaging`` and ``pipeline`` (and the base modules); never the Slicer support or the command line.
"""
