"""The CT and PET of one case, from image files or DICOM folders, with the PET in SUV.

Why: ``segment``, ``preprocess``, ``rtstruct`` and ``batch`` all take "a CT and a PET" that may be
NIfTI/NRRD files (already in HU and SUV, as HECKTOR ships them) or the scanner's DICOM folders
(a PET in Bq/mL among several series). This is the one place that decides which series is
meant, converts the PET to SUVbw and records what was read, so every command reports the same.
"""

from __future__ import annotations

import functools
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

import SimpleITK as sitk

from HNTumorSegLib.errors import InputError

#: ``--pet-units``: "auto" converts a DICOM PET to SUVbw from its tags (a PET file is taken as
#: SUV); "suv" takes the PET values as SUV as they are.
PET_UNITS = ("auto", "suv")


@dataclass
class CaseInputs:
    ct: sitk.Image
    pet: sitk.Image
    ct_dicom: object = None   # dicom.series.DicomVolume when the CT came from DICOM
    pet_dicom: object = None
    suv: dict | None = None   # SuvConversion.to_dict() of a DICOM PET
    series: dict = field(default_factory=dict)  # {"ct": SeriesInfo.to_dict(), "pet": ...} for DICOM inputs
    seconds: float = 0.0      # time spent reading
    warnings: list = field(default_factory=list)  # one line each: what could not be checked

    @functools.cached_property
    def ct_digest(self) -> str:
        """:func:`~HNTumorSegLib.imaging.label_checks.ct_digest` of the CT, computed once (``edit`` compares it
        with a label map's report, then records it)."""
        from HNTumorSegLib.imaging.label_checks import ct_digest

        return ct_digest(self.ct)

    def report(self) -> dict:
        """What the JSON report and provenance.json record about the inputs: the CT's digest (``edit`` and
        ``rtstruct`` tie a label map to its CT by it), the DICOM series read and the SUV conversion."""
        out: dict = {"ct_digest": self.ct_digest}
        if self.series:
            out["input_series"] = self.series
        if self.suv is not None:
            out["suv"] = self.suv
        if self.warnings:
            out["input_warnings"] = list(self.warnings)
        return out


def _is_dicom_folder(path: Path) -> bool:
    return path.is_dir()


def _read_image_file(path: Path, role: str, series_uid: str | None, flag: str):
    """The image of an input given as a file, or None when ``path`` is a DICOM folder."""
    from HNTumorSegLib.imaging.image_io import read_image

    if not path.exists():
        raise InputError(f"{path}: {role} file not found")
    if _is_dicom_folder(path):
        return None
    _refuse_dicomdir(path, role)
    if series_uid:
        raise InputError(f"{path}: {flag} picks a series in a DICOM folder, but the {role} is a file")
    return read_image(path, role)


def _refuse_dicomdir(path: Path, role: str) -> None:
    """A DICOMDIR (the index of a CD or USB export, SOP class Media Storage Directory Storage) given as the
    image: say so and point to its folder. Why: it holds no pixels, and the image check called it a
    truncated image."""
    from HNTumorSegLib.imaging.input_integrity import looks_like_dicom

    if not looks_like_dicom(path):
        return
    from pydicom.filereader import read_file_meta_info
    from pydicom.uid import MediaStorageDirectoryStorage

    try:
        sop_class = read_file_meta_info(path).get("MediaStorageSOPClassUID")
    except Exception:  # noqa: BLE001 - a damaged file meta group: the image check says what is wrong
        return
    if sop_class == MediaStorageDirectoryStorage:
        raise InputError(f"{path}: is a DICOMDIR, the index of a DICOM medium, not an image; give the folder "
                         f"that holds the {role} series ({path.parent}) instead")


def read_ct(path: str | os.PathLike, series_uid: str | None = None):
    """(CT image, DicomVolume or None): a CT file, or the CT series of a DICOM folder."""
    path = Path(path)
    image = _read_image_file(path, "CT", series_uid, "--ct-series")
    if image is not None:
        return image, None
    from HNTumorSegLib.dicom.series import read_series

    volume = read_series(path, "CT", series_uid, "--ct-series")
    return volume.image, volume


def read_pet(path: str | os.PathLike, series_uid: str | None = None, units: str = "auto"):
    """(PET image in SUV, DicomVolume or None, SUV conversion dict or None)."""
    if units not in PET_UNITS:
        raise InputError(f"--pet-units {units!r} is not one of {', '.join(PET_UNITS)}")
    path = Path(path)
    image = _read_image_file(path, "PET", series_uid, "--pet-series")
    if image is not None:
        return image, None, None
    from HNTumorSegLib.dicom.series import read_series
    from HNTumorSegLib.dicom.suv import already_suv, suv_conversion

    volume = read_series(path, "PT", series_uid, "--pet-series")
    where = f"{path}: PET series {volume.series.uid}"
    conversion = already_suv("--pet-units suv: values taken as SUV") if units == "suv" else \
        suv_conversion(volume.headers, where)
    pet = volume.image
    if conversion.factor != 1.0:
        pet = sitk.Cast(pet, sitk.sitkFloat32) * float(conversion.factor)
    return pet, volume, conversion.to_dict()


def read_case(ct_path: str | os.PathLike, pet_path: str | os.PathLike, *, ct_series: str | None = None,
              pet_series: str | None = None, pet_units: str = "auto") -> CaseInputs:
    """Read CT and PET; DICOM folders are resolved by modality or the given series UIDs.

    Refused (:class:`InputError`): a CT that looks like HU + 1024
    (:func:`~HNTumorSegLib.imaging.image_checks.ct_offset_problem`), a mask or an empty image given as the PET
    (:func:`~HNTumorSegLib.imaging.image_checks.pet_mask_problem`), and a DICOM CT and PET of other patients,
    frames of reference or days (:func:`~HNTumorSegLib.dicom.series.pet_ct_pairing_problem`). A CT or PET
    given as a file carries no such tags: nothing can be compared then.
    """
    from HNTumorSegLib.imaging.image_checks import ct_offset_problem, pet_mask_problem

    t0 = time.perf_counter()
    ct, ct_dicom = read_ct(ct_path, ct_series)
    problem = ct_offset_problem(ct)
    if problem:
        raise InputError(f"{ct_path}: {problem}")
    pet, pet_dicom, suv = read_pet(pet_path, pet_series, pet_units)
    problem = pet_mask_problem(pet)
    if problem:
        raise InputError(f"{pet_path}: {problem}")
    warnings = []
    if ct_dicom is not None and pet_dicom is not None:
        from HNTumorSegLib.dicom.series import pet_ct_pairing_problem

        problem = pet_ct_pairing_problem(ct_dicom, pet_dicom)
        if problem:
            raise InputError(problem)
    elif (ct_dicom is None) != (pet_dicom is None):
        dicom, other = ("CT", "PET") if ct_dicom is not None else ("PET", "CT")
        warnings.append(f"only the {dicom} is DICOM: whether the {other} is of the same patient, frame of "
                        "reference and day cannot be checked")
    series = {}
    if ct_dicom is not None:
        series["ct"] = ct_dicom.series.to_dict()
    if pet_dicom is not None:
        series["pet"] = {**pet_dicom.series.to_dict(), "pet_units": pet_units}
    return CaseInputs(ct, pet, ct_dicom, pet_dicom, suv, series, time.perf_counter() - t0, warnings)
