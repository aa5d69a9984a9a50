"""A label map on a DICOM CT's grid as a DICOM Segmentation (SEG) object, through highdicom.

Why: RTSTRUCT is what planning systems read; DICOM SEG is what PACS viewers, research archives and
AI pipelines read, voxel for voxel without contour approximation. highdicom builds a valid
Segmentation IOD (references to every CT slice, plane positions, segment descriptions); the
segment codes come from :mod:`~HNTumorSegLib.dicom.segment_terminology` (GTVp: Neoplasm, Primary
SCT 86049000; GTVn: Neoplasm, Secondary SCT 14799000), the same ones the Slicer module writes.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from HNTumorSegLib import __version__
from HNTumorSegLib.dicom.rtstruct import check_label_for_ct
from HNTumorSegLib.dicom.segment_terminology import SEGMENTS, Code, SegmentDefinition, split_nodes


def _code(code: Code):
    from highdicom.sr import CodedConcept

    return CodedConcept(value=code.value, scheme_designator=code.scheme, meaning=code.meaning)


def _descriptions(segments: Sequence[SegmentDefinition]):
    import highdicom as hd
    from pydicom.sr.codedict import codes

    algorithm = hd.AlgorithmIdentificationSequence(name="HNTumorSeg", version=__version__,
                                                   family=codes.cid7162.ArtificialIntelligence)
    out = []
    for number, segment in enumerate(segments, start=1):
        out.append(hd.seg.SegmentDescription(
            segment_number=number, segment_label=segment.name,
            segmented_property_category=_code(segment.category),
            segmented_property_type=_code(segment.type),
            algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
            algorithm_identification=algorithm,
            anatomic_regions=[_code(segment.region)],
            tracking_uid=hd.UID(), tracking_id=segment.name,
            display_color=hd.color.CIELabColor.from_rgb(*segment.color_255),
        ))
    return out


def _source_headers(ct) -> list:
    """The CT's slice headers as highdicom can build a Segmentation from them.

    Why: highdicom reads the Type 2 patient and study attributes and SliceThickness of the source images as
    attributes, so a CT without one (anonymised data; all of them may be absent or empty in a valid CT)
    made it fail with an AttributeError. Copies of such headers get the missing patient and study attributes
    empty, as the RTSTRUCT does (:func:`~HNTumorSegLib.dicom.writing.copy_patient_study`), and a missing or
    empty SliceThickness the spacing between slices (what the Segmentation's Pixel Measures then state).
    The CT's own headers are left as read.
    """
    import copy

    from HNTumorSegLib.dicom.writing import TYPE2_PATIENT_STUDY

    out = []
    for header in ct.headers:
        missing = [keyword for keyword in TYPE2_PATIENT_STUDY if keyword not in header]
        thin = str(header.get("SliceThickness", "") or "").strip() == ""
        if missing or thin:
            header = copy.deepcopy(header)
            for keyword in missing:
                setattr(header, keyword, "")
            if thin:
                header.SliceThickness = f"{ct.image.GetSpacing()[2]:.6g}"
        out.append(header)
    return out


def build_dicom_seg(label: sitk.Image, ct, *, segments: Sequence[SegmentDefinition] = SEGMENTS,
                    label_name: str = "label", split_lesions: bool = False):
    """The Segmentation dataset of ``label`` (values = segment labels) on the DICOM CT ``ct``.

    ``split_lesions``: GTVn as one segment per node, GTVn_1 .. GTVn_k (see :func:`split_nodes`).
    """
    import highdicom as hd

    from HNTumorSegLib.dicom.writing import check_ct_references

    check_label_for_ct(label, ct.image, label_name)
    check_ct_references(ct, "a DICOM SEG")
    array = sitk.GetArrayFromImage(label).astype(np.uint8)
    if split_lesions:
        array, segments = split_nodes(array)
    mapped = np.zeros_like(array)
    for number, segment in enumerate(segments, start=1):
        mapped[array == segment.label] = number
    return hd.seg.Segmentation(
        source_images=_source_headers(ct),
        pixel_array=mapped,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=_descriptions(segments),
        series_instance_uid=hd.UID(),
        series_number=902,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="HNTumorSeg",
        manufacturer_model_name="HNTumorSeg",
        software_versions=f"HNTumorSeg {__version__}",
        device_serial_number="none",
        series_description="HNTumorSeg GTVp/GTVn",
        content_description="GTVp and GTVn; review before clinical use",
        omit_empty_frames=True,
        # UTF-8, as the RTSTRUCT: highdicom would copy the CT's character set, and refuses the standard
        # multi-valued form of ISO 2022 sets ("\ISO 2022 IR 87", an empty first value) with a ValueError
        specific_character_set="ISO_IR 192",
    )


def write_dicom_seg(label: sitk.Image, ct, path: str | os.PathLike, **options) -> Path:
    """Build the Segmentation and write it atomically to ``path``."""
    from HNTumorSegLib.dicom.writing import write_dataset

    return write_dataset(build_dicom_seg(label, ct, **options), Path(path))
