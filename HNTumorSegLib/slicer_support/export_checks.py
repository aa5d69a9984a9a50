"""When the DICOM export buttons work, and what to tell the user when they do not.

Why: a greyed-out button with no reason is an opaque failure. RTSTRUCT export goes through
SlicerRT's DICOM-RT exporter, DICOM SEG through QuantitativeReporting's; both need the CT and the
segmentation in one study of the subject hierarchy (an RTSTRUCT references the CT's slices, and
SlicerRT writes the CT series with it); a DICOM SEG references the slices of a CT that came from DICOM.
"""

from __future__ import annotations

from dataclasses import dataclass

#: DICOM plugin names registered in ``slicer.modules.dicomPlugins`` by the exporting extensions.
RTSTRUCT_PLUGIN, RTSTRUCT_EXTENSION = "DicomRtImportExportPlugin", "SlicerRT"
DICOM_SEG_PLUGIN, DICOM_SEG_EXTENSION = "DICOMSegmentationPlugin", "QuantitativeReporting"


@dataclass(frozen=True)
class ExportState:
    has_segmentation: bool      # an output segmentation exists
    has_content: bool           # at least one of its segments holds voxels
    ct_in_study: bool           # the CT sits under a study in the subject hierarchy
    same_study: bool            # the segmentation sits in the CT's study
    plugins: frozenset = frozenset()  # names of the DICOM plugins Slicer has loaded
    ct_from_dicom: bool = True  # the CT was loaded from DICOM (its slices have SOP instance UIDs)


def _availability(state: ExportState, plugin: str, extension: str, what: str,
                  needs_dicom_ct: bool = False) -> tuple[bool, str]:
    if plugin not in state.plugins:
        return False, f"Needs the {extension} extension (install it from the Extensions Manager, then restart)."
    if not state.has_segmentation:
        return False, "Run Segment first: there is no GTVp/GTVn segmentation to export."
    if not state.has_content:
        return False, "The segmentation is empty: nothing to export."
    if not state.ct_in_study:
        return False, ("The CT is in no DICOM study. Load the CT from DICOM, or in the Data module place it "
                       "under a patient and study (right-click > Create new subject / study), then segment again.")
    if not state.same_study:
        return False, "The segmentation is not in the CT's study: move it there in the Data module."
    if needs_dicom_ct and not state.ct_from_dicom:
        return False, ("A DICOM SEG references the CT's DICOM slices: load the CT from DICOM (or export it to DICOM "
                       "and load it back), then segment again.")
    return True, f"Export GTVp/GTVn as {what} to the chosen folder."


def rtstruct_availability(state: ExportState) -> tuple[bool, str]:
    """(enabled, tooltip) for Export RTSTRUCT."""
    return _availability(state, RTSTRUCT_PLUGIN, RTSTRUCT_EXTENSION, "a DICOM RT Structure Set")


def dicom_seg_availability(state: ExportState) -> tuple[bool, str]:
    """(enabled, tooltip) for Export DICOM SEG."""
    return _availability(state, DICOM_SEG_PLUGIN, DICOM_SEG_EXTENSION, "a DICOM Segmentation object",
                         needs_dicom_ct=True)
