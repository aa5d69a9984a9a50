"""The pipeline: CT + PET in, GTVp/GTVn label map on the CT grid out (crop, intensities, network, restore).

Imports ``imaging`` and ``network`` (and the base modules); never DICOM, the Slicer support or the command line.
"""
