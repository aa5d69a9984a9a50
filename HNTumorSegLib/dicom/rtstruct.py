"""A label map on a DICOM CT's grid as an RT Structure Set that planning systems import.

Why: the treatment-planning system is where a GTV is used, and it reads RTSTRUCT. The structure
set references the CT series it was drawn on (frame of reference, study, series and every slice's
SOP instance, and each contour names its slice), has one ROI per structure (``GTVp``, ``GTVn``:
name, colour, RT ROI interpreted type GTV, the SNOMED CT code of
:mod:`~HNTumorSegLib.dicom.segment_terminology`) and stores closed planar contours per CT slice in
patient coordinates (mm, LPS), traced along the voxel edges by :mod:`~HNTumorSegLib.dicom.contours` so
the planning system's voxels and volume equal ours. Patient and study attributes are copied from
the CT, so the structure set files under the same patient and study.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from HNTumorSegLib.dicom.contours import slice_polygons
from HNTumorSegLib.errors import InputError
from HNTumorSegLib.imaging.geometry import Geometry
from HNTumorSegLib.imaging.label_checks import label_grid_problem, label_values_problem
from HNTumorSegLib.dicom.segment_terminology import SEGMENTS, SegmentDefinition, split_nodes

RT_STRUCTURE_SET_STORAGE = "1.2.840.10008.5.1.4.1.1.481.3"
#: Referenced SOP class of RT Referenced Study Sequence items, as planning systems write it.
STUDY_COMPONENT_SOP_CLASS = "1.2.840.10008.3.1.2.3.1"
ROI_GENERATION = ("AUTOMATIC", "SEMIAUTOMATIC", "MANUAL")
#: Decimals (mm) of contour coordinates: far below a voxel, and short enough for a DS value.
COORDINATE_DECIMALS = 3


@dataclass(frozen=True)
class StructureSummary:
    name: str
    label: int
    voxels: int
    contours: int
    slices: int


def check_label_for_ct(label: sitk.Image, ct: sitk.Image, name: str) -> None:
    """A label map that cannot be contoured on this CT is a one-line error."""
    problem = label_grid_problem(label, ct, name) or label_values_problem(label, name)
    if problem:
        raise InputError(problem)


def _contours(label: np.ndarray, value: int, geom: Geometry) -> list[tuple[int, np.ndarray]]:
    """(slice index, (n, 3) points in mm) of every polygon of ``value``, slice by slice."""
    mask = label == value
    if not mask.any():
        return []
    zs = np.nonzero(mask.any(axis=(1, 2)))[0]
    rows = np.nonzero(mask.any(axis=(0, 2)))[0]
    cols = np.nonzero(mask.any(axis=(0, 1)))[0]
    r0, c0 = int(rows.min()), int(cols.min())
    box = mask[:, r0:int(rows.max()) + 1, c0:int(cols.max()) + 1]
    matrix, origin = geom.matrix, np.asarray(geom.origin, float)
    out = []
    for k in zs.tolist():
        for polygon in slice_polygons(box[k]):
            n = len(polygon.vertices)
            index = np.column_stack([polygon.vertices[:, 0] + c0, polygon.vertices[:, 1] + r0, np.full(n, k)])
            out.append((k, origin + index @ matrix.T))
    return out


def _slice_shifts(ct, geom: Geometry) -> np.ndarray:
    """(slices, 3): per slice, the step along the slice normal from where the regular grid puts it to where
    its own ImagePositionPatient does. Why: a series whose positions are written to 0.1 mm is read as one
    regular grid (within :data:`~HNTumorSegLib.dicom.series.SLICE_POSITION_ATOL`); each contour must still
    lie on the plane of the image it references, as planning systems and validators check."""
    normal = geom.matrix[:, 2] / np.linalg.norm(geom.matrix[:, 2])
    shifts = np.zeros((len(ct.headers), 3))
    for k, header in enumerate(ct.headers):
        position = header.get("ImagePositionPatient")
        if position is None or len(position) != 3:
            continue
        fitted = np.asarray(geom.origin, float) + k * geom.matrix[:, 2]
        shifts[k] = normal * float((np.asarray([float(v) for v in position]) - fitted) @ normal)
    return shifts


def _code_item(code):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.CodeValue, item.CodingSchemeDesignator, item.CodeMeaning = code.value, code.scheme, code.meaning
    return item


def _image_ref(sop_class: str, sop_uid: str):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.ReferencedSOPClassUID, item.ReferencedSOPInstanceUID = sop_class, sop_uid
    return item


def build_rtstruct(label: sitk.Image, ct, *, segments: Sequence[SegmentDefinition] = SEGMENTS,
                   label_name: str = "label", roi_generation: str = "AUTOMATIC",
                   series_description: str = "HNTumorSeg GTVp/GTVn", split_lesions: bool = False):
    """The RT Structure Set dataset of ``label`` on the DICOM CT ``ct`` (a :class:`DicomVolume`).

    Returns (dataset, [StructureSummary]). Every structure gets an ROI; an empty one has no contours.
    ``split_lesions``: GTVn as one ROI per node, GTVn_1 .. GTVn_k (see :func:`split_nodes`).
    """
    from pydicom.dataset import Dataset

    from HNTumorSegLib.dicom.writing import (check_ct_references, copy_patient_study, file_meta, new_uid, now,
                                             set_equipment)

    if roi_generation not in ROI_GENERATION:
        raise InputError(f"ROI generation {roi_generation!r} is not one of {', '.join(ROI_GENERATION)}")
    check_label_for_ct(label, ct.image, label_name)
    check_ct_references(ct, "an RTSTRUCT")
    geom = Geometry.of(ct.image)
    array = sitk.GetArrayViewFromImage(label)
    if split_lesions:
        array, segments = split_nodes(np.asarray(array))
    sop_uids, sop_class = ct.sop_instance_uids, ct.sop_class_uid
    first = ct.headers[0]
    frame = ct.frame_of_reference_uid  # present: check_ct_references
    date, time = now()

    ds = Dataset()
    uid = new_uid()
    ds.file_meta = file_meta(RT_STRUCTURE_SET_STORAGE, uid)
    ds.SpecificCharacterSet = "ISO_IR 192"
    ds.SOPClassUID, ds.SOPInstanceUID = RT_STRUCTURE_SET_STORAGE, uid
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    copy_patient_study(first, ds)
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = "RTSTRUCT", new_uid(), 901
    ds.SeriesDescription, ds.SeriesDate, ds.SeriesTime = series_description, date, time
    ds.OperatorsName = ""
    ds.FrameOfReferenceUID = frame
    ds.PositionReferenceIndicator = first.get("PositionReferenceIndicator", "") or ""
    set_equipment(ds)
    ds.StructureSetLabel = "HNTumorSeg"
    ds.StructureSetName = "GTVp/GTVn"
    ds.StructureSetDescription = "GTVp and GTVn contoured by HNTumorSeg; review before clinical use"
    ds.InstanceNumber = 1
    ds.StructureSetDate, ds.StructureSetTime = date, time

    series_ref = Dataset()
    series_ref.SeriesInstanceUID = ct.series.uid
    series_ref.ContourImageSequence = [_image_ref(sop_class, u) for u in sop_uids]
    study_ref = Dataset()
    study_ref.ReferencedSOPClassUID = STUDY_COMPONENT_SOP_CLASS
    study_ref.ReferencedSOPInstanceUID = str(first.StudyInstanceUID)
    study_ref.RTReferencedSeriesSequence = [series_ref]
    frame_ref = Dataset()
    frame_ref.FrameOfReferenceUID = frame
    frame_ref.RTReferencedStudySequence = [study_ref]
    ds.ReferencedFrameOfReferenceSequence = [frame_ref]

    shifts = _slice_shifts(ct, geom)
    rois, roi_contours, observations, summaries = [], [], [], []
    for number, segment in enumerate(segments, start=1):
        roi = Dataset()
        roi.ROINumber, roi.ReferencedFrameOfReferenceUID = number, frame
        roi.ROIName, roi.ROIDescription = segment.name, segment.description
        roi.ROIGenerationAlgorithm = roi_generation
        rois.append(roi)

        contours = [(k, points + shifts[k]) for k, points in _contours(array, segment.label, geom)]
        roi_contour = Dataset()
        roi_contour.ROIDisplayColor = list(segment.color_255)
        roi_contour.ReferencedROINumber = number
        items = []
        for n, (k, points) in enumerate(contours, start=1):
            item = Dataset()
            item.ContourImageSequence = [_image_ref(sop_class, sop_uids[k])]
            item.ContourGeometricType = "CLOSED_PLANAR"
            item.NumberOfContourPoints = len(points)
            item.ContourNumber = n
            item.ContourData = [f"{v:.{COORDINATE_DECIMALS}f}" for v in points.ravel()]
            items.append(item)
        if items:
            roi_contour.ContourSequence = items
        roi_contours.append(roi_contour)

        observation = Dataset()
        observation.ObservationNumber, observation.ReferencedROINumber = number, number
        observation.ROIObservationLabel = segment.name
        observation.RTROIInterpretedType, observation.ROIInterpreter = "GTV", ""
        observation.RTROIIdentificationCodeSequence = [_code_item(segment.type)]
        observations.append(observation)
        summaries.append(StructureSummary(segment.name, segment.label, int((array == segment.label).sum()),
                                          len(items), len({k for k, _ in contours})))
    ds.StructureSetROISequence = rois
    ds.ROIContourSequence = roi_contours
    ds.RTROIObservationsSequence = observations
    return ds, summaries


def write_rtstruct(label: sitk.Image, ct, path: str | os.PathLike, **options) -> list[StructureSummary]:
    """Build the structure set and write it atomically to ``path``."""
    from HNTumorSegLib.dicom.writing import write_dataset

    ds, summaries = build_rtstruct(label, ct, **options)
    write_dataset(ds, Path(path))
    return summaries


def summary_line(summaries: Sequence[StructureSummary]) -> str:
    return "; ".join(f"{s.name}: {s.contours} contours on {s.slices} slices" if s.contours
                     else f"{s.name}: empty (no contours)" for s in summaries)
