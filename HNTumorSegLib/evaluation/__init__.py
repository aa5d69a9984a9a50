"""Measuring a label map: Dice, HD95, lesion-wise F1, SUV statistics, and the overlay picture.

Imports ``pipeline``, ``imaging`` and the base modules; never DICOM, the Slicer support or the command line.
"""
