"""A phantom case as the scanner would export it: CT and PET Image series in DICOM.

Why: clinics hand over DICOM, not NIfTI. To test (and to try) the DICOM path without patient
data, a :class:`~HNTumorSegLib.phantom.PhantomCase` is written as a CT series in HU (stored
value + intercept -1024) and a PET series in Bq/mL (or Philips-style counts) with the
radiopharmaceutical tags from which SUVbw is computed, one rescale slope per PET slice, like a
real export. The PET values are the phantom's SUV divided by the SUV factor of the given tags,
so reading the series back with SUV conversion must return the phantom's SUV.
"""

from __future__ import annotations

import datetime as _dt
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from HNTumorSegLib.dicom.writing import file_meta, new_uid, set_equipment, write_dataset

CT_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.2"
PET_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.128"
#: F-18 half-life in seconds (what scanners write in RadionuclideHalfLife).
F18_HALF_LIFE_S = 6586.2
#: Counts to Bq/mL of the Philips-style export (its private activity concentration scale factor).
CNTS_TO_BQML = 0.25
PHILIPS_PRIVATE_CREATOR = "Philips PET Private Group"


@dataclass(frozen=True)
class PetAcquisition:
    """The tags SUVbw comes from. Defaults: 75 kg, 370 MBq F-18 FDG injected one hour before the scan."""

    weight_kg: float = 75.0
    dose_bq: float = 370e6
    half_life_s: float = F18_HALF_LIFE_S
    injection: _dt.datetime = _dt.datetime(2024, 3, 5, 9, 30, 0)
    scan: _dt.datetime = _dt.datetime(2024, 3, 5, 10, 30, 0)
    decay_correction: str = "START"  # or "ADMIN"
    units: str = "BQML"              # or "CNTS" (Philips private SUV scale factor)

    def suv_factor(self) -> float:
        """SUV per Bq/mL: weight (g) over the dose decayed to the reference time of the images."""
        dose = self.dose_bq
        if self.decay_correction == "START":
            dose *= 2.0 ** (-(self.scan - self.injection).total_seconds() / self.half_life_s)
        return self.weight_kg * 1000.0 / dose


@dataclass
class DicomStudy:
    """Identity shared by the series of one phantom study."""

    case_id: str
    patient_name: str = "PHANTOM^HNTUMORSEG"
    study_uid: str = ""
    frame_of_reference_uid: str = ""
    date: str = "20240305"
    written: dict = field(default_factory=dict)

    def __post_init__(self):
        self.study_uid = self.study_uid or new_uid(self.case_id, "study")
        self.frame_of_reference_uid = self.frame_of_reference_uid or new_uid(self.case_id, "frame")


def _base(study: DicomStudy, sop_class: str, sop_uid: str, modality: str, series_uid: str, number: int,
          description: str, time: str):
    from pydicom.dataset import Dataset

    ds = Dataset()
    ds.file_meta = file_meta(sop_class, sop_uid)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, sop_uid
    ds.PatientName, ds.PatientID = study.patient_name, study.case_id
    ds.PatientBirthDate, ds.PatientSex, ds.PatientWeight = "", "O", None
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study.study_uid, study.date, "092000"
    ds.StudyID, ds.AccessionNumber, ds.ReferringPhysicianName = "1", "", ""
    ds.StudyDescription = "HNTumorSeg phantom (synthetic)"
    ds.Modality, ds.SeriesInstanceUID, ds.SeriesNumber = modality, series_uid, number
    ds.SeriesDescription, ds.SeriesDate, ds.SeriesTime = description, study.date, time
    ds.Laterality = None
    ds.FrameOfReferenceUID, ds.PositionReferenceIndicator = study.frame_of_reference_uid, ""
    set_equipment(ds)
    ds.ContentDate, ds.ContentTime = study.date, time
    ds.AcquisitionDate, ds.AcquisitionTime = study.date, time
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    return ds


def _plane(ds, image: sitk.Image, k: int) -> None:
    d = image.GetDirection()
    sx, sy, sz = image.GetSpacing()
    ds.ImageOrientationPatient = [f"{v:.6f}" for v in (d[0], d[3], d[6], d[1], d[4], d[7])]
    pos = image.TransformIndexToPhysicalPoint((0, 0, k))
    ds.ImagePositionPatient = [f"{v:.4f}" for v in pos]
    ds.SliceLocation = f"{pos[2]:.4f}"
    ds.PixelSpacing = [f"{sy:.6f}", f"{sx:.6f}"]  # row spacing, column spacing
    ds.SliceThickness = f"{sz:.4f}"
    ds.Rows, ds.Columns = image.GetSize()[1], image.GetSize()[0]


def _file_names(n: int, shuffle: bool, series_number: int) -> list[str]:
    """Slice k's file name; shuffled names make file order useless for sorting, as in real exports."""
    if not shuffle:
        return [f"S{series_number}_{k:04d}.dcm" for k in range(n)]
    perm = np.random.default_rng(series_number).permutation(n)
    return [f"S{series_number}_{int(p):04d}" for p in perm]  # no suffix either, like many PACS exports


def write_ct_series(image: sitk.Image, folder: str | os.PathLike, study: DicomStudy, *, number: int = 2,
                    description: str = "CT head-neck", shuffle: bool = True, tag: str = "ct") -> str:
    """Write an int16 HU image as a CT Image series (one file per slice); returns the series UID."""
    folder = Path(folder)
    series_uid = new_uid(study.case_id, tag, "series")
    hu = sitk.GetArrayFromImage(image).astype(np.int32)
    stored = np.clip(hu + 1024, 0, 65535).astype(np.uint16)
    n = stored.shape[0]
    names = _file_names(n, shuffle, number)
    for k in range(n):
        uid = new_uid(study.case_id, tag, str(k))
        ds = _base(study, CT_IMAGE_STORAGE, uid, "CT", series_uid, number, description, "100000")
        ds.InstanceNumber = n - k  # numbered from the head down, as many scanners do
        _plane(ds, image, k)
        ds.PixelRepresentation = 0
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = "-1024", "1", "HU"
        ds.KVP, ds.AcquisitionNumber = "120", 1
        ds.PatientPosition = "HFS"
        ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
        write_dataset(ds, folder / names[k])
    study.written[tag] = series_uid
    return series_uid


def write_pet_series(suv: sitk.Image, folder: str | os.PathLike, study: DicomStudy,
                     acquisition: PetAcquisition = PetAcquisition(), *, number: int = 3,
                     description: str = "PET AC", shuffle: bool = True, tag: str = "pet") -> str:
    """Write a PET in SUV as a PET Image series in ``acquisition.units``, one rescale slope per slice."""
    from pydicom.dataset import Dataset

    folder = Path(folder)
    series_uid = new_uid(study.case_id, tag, "series")
    factor = acquisition.suv_factor()
    values = sitk.GetArrayFromImage(suv).astype(np.float64) / factor  # Bq/mL
    if acquisition.units == "CNTS":
        values = values / CNTS_TO_BQML
    n = values.shape[0]
    names = _file_names(n, shuffle, number)
    scan_time = acquisition.scan.strftime("%H%M%S")
    for k in range(n):
        uid = new_uid(study.case_id, tag, str(k))
        ds = _base(study, PET_IMAGE_STORAGE, uid, "PT", series_uid, number, description, scan_time)
        ds.SeriesDate = acquisition.scan.strftime("%Y%m%d")
        ds.AcquisitionDate = ds.SeriesDate
        ds.InstanceNumber = n - k
        _plane(ds, suv, k)
        peak = float(np.abs(values[k]).max())
        slope = peak / 32000.0 if peak > 0 else 1.0  # a different slope on every slice, as scanners write
        ds.PixelRepresentation = 1
        ds.RescaleIntercept, ds.RescaleSlope = "0", f"{slope:.8g}"
        slope = float(ds.RescaleSlope)
        ds.PixelData = np.ascontiguousarray(np.round(values[k] / slope).astype(np.int16)).tobytes()
        ds.PatientWeight = f"{acquisition.weight_kg:g}"
        ds.Units, ds.CountsSource, ds.SeriesType = acquisition.units, "EMISSION", ["WHOLE BODY", "IMAGE"]
        ds.DecayCorrection, ds.CorrectedImage = acquisition.decay_correction, ["ATTN", "DECY", "NORM"]
        ds.NumberOfSlices, ds.ImageIndex = n, k + 1
        ds.CollimatorType = "NONE"
        ds.FrameReferenceTime, ds.ActualFrameDuration, ds.DecayFactor = "0", 180000, "1"
        ds.PatientOrientationCodeSequence, ds.PatientGantryRelationshipCodeSequence = [], []
        drug = Dataset()
        nuclide = Dataset()
        nuclide.CodeValue, nuclide.CodingSchemeDesignator, nuclide.CodeMeaning = "77004003", "SCT", "^18^Fluorine"
        drug.RadionuclideCodeSequence = [nuclide]
        drug.Radiopharmaceutical = "Fluorodeoxyglucose"
        drug.RadiopharmaceuticalStartTime = acquisition.injection.strftime("%H%M%S")
        drug.RadiopharmaceuticalStartDateTime = acquisition.injection.strftime("%Y%m%d%H%M%S")
        drug.RadionuclideTotalDose = f"{acquisition.dose_bq:g}"
        drug.RadionuclideHalfLife = f"{acquisition.half_life_s:g}"
        ds.RadiopharmaceuticalInformationSequence = [drug]
        if acquisition.units == "CNTS":
            block = ds.private_block(0x7053, PHILIPS_PRIVATE_CREATOR, create=True)
            block.add_new(0x00, "DS", f"{factor * CNTS_TO_BQML:.10g}")  # SUV scale factor
            block.add_new(0x09, "DS", f"{CNTS_TO_BQML:g}")  # activity concentration scale factor
        write_dataset(ds, folder / names[k])
    study.written[tag] = series_uid
    return series_uid


def write_dicom_case(case, folder: str | os.PathLike, acquisition: PetAcquisition = PetAcquisition(), *,
                     shuffle: bool = True) -> DicomStudy:
    """Write a phantom's CT and PET into one folder (one study, one frame of reference)."""
    study = DicomStudy(case.case_id)
    write_ct_series(case.ct, folder, study, shuffle=shuffle)
    write_pet_series(case.pet, folder, study, acquisition, shuffle=shuffle)
    return study
