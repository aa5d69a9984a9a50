"""What the Slicer module and its worker process use, computable without Slicer (no ``slicer``/``qt`` import).

Imports ``pipeline``, ``evaluation``, ``dicom``, ``cases``, ``imaging`` and the base modules; never the command line.
"""
