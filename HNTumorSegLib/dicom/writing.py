"""Writing DICOM objects: file meta, this software's identity, and atomic files.

Why one place: every object HNTumorSeg writes (RTSTRUCT, DICOM SEG written by pydicom, the
phantom series used as test fixtures) needs the same Part 10 file meta, the same equipment
identity and the same rule that a failed write leaves no half-written file (see
:mod:`HNTumorSegLib.imaging.image_io`). The patient and study attributes of a derived object are copied
from the images it was derived from, so a planning system files it under the right patient.
"""

from __future__ import annotations

import datetime as _dt
import io
import os
from pathlib import Path

from HNTumorSegLib import __version__
from HNTumorSegLib.errors import InputError
from HNTumorSegLib.imaging.image_io import write_bytes

MANUFACTURER = "HNTumorSeg"
SOFTWARE_VERSION = f"HNTumorSeg {__version__}"
#: Patient and General Study module attributes copied from the source images into derived objects.
PATIENT_STUDY_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "PatientAge",
                          "PatientWeight", "StudyInstanceUID", "StudyDate", "StudyTime", "StudyID",
                          "AccessionNumber", "ReferringPhysicianName", "StudyDescription")
#: Type 2 attributes of those modules: present (possibly empty) in every derived object.
TYPE2_PATIENT_STUDY = ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyDate", "StudyTime", "StudyID",
          "AccessionNumber", "ReferringPhysicianName")


def new_uid(*entropy: str) -> str:
    """A new UID; the same ``entropy`` strings give the same UID (reproducible test fixtures)."""
    from pydicom.uid import generate_uid

    return generate_uid(entropy_srcs=[str(e) for e in entropy] if entropy else None)


def file_meta(sop_class_uid: str, sop_instance_uid: str):
    from pydicom.dataset import FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, PYDICOM_IMPLEMENTATION_UID

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class_uid
    meta.MediaStorageSOPInstanceUID = sop_instance_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"HNTSEG_{__version__}"[:16]
    return meta


#: What an RTSTRUCT or a DICOM SEG must cite of its CT: it names the CT's study, frame of reference, series
#: and each image it was drawn on. Without them a planning system cannot attach the object to its CT.
CT_REFERENCE_KEYWORDS = ("StudyInstanceUID", "FrameOfReferenceUID", "SeriesInstanceUID", "SOPInstanceUID",
                         "SOPClassUID")


def check_ct_references(ct, what: str) -> None:
    """Raise :class:`InputError` naming the first CT slice (and tag) that lacks what ``what`` must reference."""
    for path, header in zip(ct.files, ct.headers):
        for keyword in CT_REFERENCE_KEYWORDS:
            if not str(header.get(keyword, "") or "").strip():
                raise InputError(f"{path}: the CT slice has no {keyword}; {what} must reference it "
                                 f"(CT series {ct.series.uid}): export the CT with its UIDs")


def copy_patient_study(source, target) -> None:
    """Copy the Patient and General Study attributes of ``source`` into ``target``."""
    for keyword in PATIENT_STUDY_KEYWORDS:
        if keyword in source:
            setattr(target, keyword, source.data_element(keyword).value)
        elif keyword in TYPE2_PATIENT_STUDY:
            setattr(target, keyword, "")


def set_equipment(ds) -> None:
    """General Equipment module: this software made the object."""
    ds.Manufacturer = MANUFACTURER
    ds.ManufacturerModelName = "HNTumorSeg"
    ds.SoftwareVersions = SOFTWARE_VERSION


def now() -> tuple[str, str]:
    """(DA, TM) strings of the current local time."""
    t = _dt.datetime.now()
    return t.strftime("%Y%m%d"), t.strftime("%H%M%S")


def encode(ds) -> bytes:
    """A dataset as a Part 10 file (preamble, file meta, explicit VR little endian)."""
    if not hasattr(ds, "file_meta") or "TransferSyntaxUID" not in ds.file_meta:
        ds.file_meta = file_meta(str(ds.SOPClassUID), str(ds.SOPInstanceUID))
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def write_dataset(ds, path: str | os.PathLike) -> Path:
    """Write ``ds`` atomically as a DICOM Part 10 file."""
    return write_bytes(encode(ds), path)
