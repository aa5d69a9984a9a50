"""Correcting a result in one click each: add, remove or relabel the lesion at a point.

Imports ``evaluation``, ``pipeline``, ``imaging`` and the base modules; never the Slicer support or the command line.
"""
