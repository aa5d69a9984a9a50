"""SUVbw for a PET that Slicer's DICOM module loaded, from the same tags and code as ``hntumorseg segment``.

Why: clinicians load PET/CT with the DICOM module, which gives the PET in the scanner's units (Bq/mL),
and the network needs SUV (body weight). Refusing that PET and sending the user to another extension
loses them; converting it differently from the command line would give two answers for one study. So
the module looks the node's instance UIDs up in Slicer's DICOM database (the one step that needs the
application), and everything from the files on is here: the headers are read with pydicom and the
factor comes from :func:`HNTumorSegLib.dicom.suv.suv_conversion`, exactly as for ``--pet STUDY/``.

When is the factor applied? Only when the volume's values look like activity concentration
(:func:`~HNTumorSegLib.slicer_support.suv_check.looks_like_activity`, the test the SUV check refuses on).
A volume derived from the DICOM series that is already in SUV (a normalised copy that kept the
``DICOM.instanceUIDs`` attribute) is left as it is.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from HNTumorSegLib.dicom.suv import SuvConversion, suv_conversion
from HNTumorSegLib.errors import InputError
from HNTumorSegLib.slicer_support.suv_check import looks_like_activity

#: What the user can do when the tags do not give SUVbw (ends each error, as --pet-units suv does on the CLI).
SLICER_HINT = ("or convert the PET to SUV first, e.g. with the PET-DICOM extension's SUV normalisation, and "
               "select that volume")


@dataclass(frozen=True)
class DicomPetSuv:
    """The SUVbw conversion of a PET volume loaded from DICOM, and whether its values need it."""

    conversion: SuvConversion
    series_uid: str
    files: int
    applies: bool

    @property
    def factor(self) -> float:
        """What multiplies the volume's values: the conversion's factor, or 1 for a volume already in SUV."""
        return self.conversion.factor if self.applies else 1.0

    def describe(self, name: str) -> str:
        """One line for the panel: the factor and the tags it came from."""
        if not self.applies:
            return f"{name}: values already look like SUV; used as they are (no conversion from the DICOM tags)"
        tags = self.conversion.tags
        parts = []
        for key, label, unit in (("PatientWeight_kg", "weight", " kg"), ("RadionuclideTotalDose_Bq", "dose", " Bq"),
                                 ("RadionuclideHalfLife_s", "half-life", " s"), ("DecayCorrection", "decay correction", ""),
                                 ("uptake_s", "uptake", " s")):
            if key in tags:
                value = tags[key]
                parts.append(f"{label} {value:.6g}{unit}" if isinstance(value, float) else f"{label} {value}{unit}")
        source = f" from {', '.join(parts)}" if parts else ""
        return (f"{name}: converted to SUVbw with factor {self.conversion.factor:.6g} per "
                f"{_unit_word(self.conversion.units)} ({self.conversion.method}){source}")


def _unit_word(units: str) -> str:
    return {"BQML": "Bq/mL", "CNTS": "count unit", "GML": "g/mL"}.get(units, units)


def dicom_pet_suv(files: Sequence[str | os.PathLike], missing: int, values: np.ndarray, name: str,
                  uids: Sequence[str] | None = None) -> DicomPetSuv:
    """The SUVbw conversion of a PET volume from the DICOM files of its instances.

    ``files``: the files Slicer's DICOM database holds for the volume's ``DICOM.instanceUIDs``;
    ``missing``: how many of those UIDs had no file; ``values``: the volume's voxels (to decide whether
    the factor applies); ``name``: how the user knows the volume, for messages; ``uids``: the instance
    UID each file was looked up for: a file that now holds another instance (a later export written over
    a linked import's files) is refused, not read for another patient's weight and dose.
    """
    if missing or not files:
        raise InputError(f"{name}: {missing} of {missing + len(files)} of its DICOM instances are not in the DICOM "
                         f"database, so its SUV cannot be computed from the tags; re-import the study, {SLICER_HINT}")
    keys = []
    for path in files:
        try:
            stat = os.stat(path)
        except OSError as exc:
            raise InputError(f"{name}: cannot read its DICOM file {path}: {exc}") from None
        keys.append((os.fspath(path), stat.st_ino, stat.st_size, stat.st_mtime_ns))
    conversion, uid = _conversion_from_files(tuple(keys), name, tuple(uids) if uids is not None else None)
    return DicomPetSuv(conversion, uid, len(files), looks_like_activity(values))


@functools.lru_cache(maxsize=8)
def _conversion_from_files(files: tuple, name: str, uids: tuple | None = None) -> tuple[SuvConversion, str]:
    """(conversion, series UID) from the headers of ``files``: (path, inode, size, mtime) tuples; ``uids``: the
    SOP instance UID each must hold (None: not checked).

    Cached because the panel checks its inputs again on every change and a PET series is hundreds of
    files; a file that was rewritten has another size or modification time, so it is read again.
    """
    from pydicom import dcmread
    from pydicom.errors import InvalidDicomError

    headers = []
    for path, *_ in files:
        try:
            headers.append(dcmread(path, stop_before_pixels=True))
        except (OSError, InvalidDicomError, ValueError) as exc:
            raise InputError(f"{name}: cannot read its DICOM file {path}: {exc}") from None
    for (path, *_), header, uid in zip(files, headers, uids or ()):
        held = str(header.get("SOPInstanceUID", "") or "")
        if held != uid:
            raise InputError(f"{name}: its DICOM file {path} now holds instance {held or '(none)'}, not {uid} that was "
                             "loaded from it (written over since?); re-import the study and load the PET again")
    modalities = {str(h.get("Modality", "")) for h in headers}
    if modalities != {"PT"}:
        raise InputError(f"{name}: its DICOM files are of modality {', '.join(sorted(modalities))}, not PT (PET)")
    series = {str(h.get("SeriesInstanceUID", "")) for h in headers}
    if len(series) != 1:
        raise InputError(f"{name}: its DICOM files belong to {len(series)} series; select a single PET series")
    uid = series.pop()
    return suv_conversion(headers, f"{name} (DICOM series {uid})", hint=SLICER_HINT,
                          choose_series="in the PET selector"), uid


#: Units (UCUM, as Slicer's PET-DICOM extension codes a volume's VoxelValueUnits) of the SUVs other than SUVbw.
_OTHER_SUV_UNITS = {"{suvlbm}": "SUVlbm (lean body mass)", "{suvibw}": "SUVibw (ideal body weight)",
                    "{suvbsa}": "SUVbsa (body surface area)", "{suvlbmjanma}": "SUVlbm (Janmahasatian)"}


def suv_units_problem(units: str | None, name: str) -> str | None:
    """A message when a volume's coded units say an SUV other than SUVbw (the model was trained on SUVbw:
    SUVlbm is about 0.8 times it, SUVbsa a quarter), else None. ``units``: the code value of the volume's
    VoxelValueUnits (``{SUVlbm}g/ml``), as Slicer's PET-DICOM extension sets it."""
    code = (units or "").strip().lower()
    kind = next((label for key, label in _OTHER_SUV_UNITS.items() if code.startswith(key)), None)
    if kind is None:
        return None
    return (f"{name} is in {kind}, not SUVbw (body weight), which the model was trained on: load the PET series "
            "in Bq/mL (the DICOM module's scalar volume) or as SUVbw, and select that volume")


def dicom_pairing_problem(ct_file: str | os.PathLike, pet_file: str | os.PathLike, ct_name: str,
                          pet_name: str) -> str | None:
    """:func:`~HNTumorSegLib.dicom.series.pairing_problem` of a CT and a PET loaded from DICOM, from one file
    of each: other patients, frames of reference or days are refused, as ``hntumorseg segment`` refuses them."""
    from pydicom import dcmread

    from HNTumorSegLib.dicom.series import pairing_problem

    tags = ["PatientID", "FrameOfReferenceUID", "AcquisitionDate", "SeriesDate", "ContentDate", "StudyDate",
            "AcquisitionDateTime"]
    try:
        ct, pet = (dcmread(path, stop_before_pixels=True, specific_tags=tags) for path in (ct_file, pet_file))
    except Exception:  # noqa: BLE001 - a file that cannot be read is said where its values are needed
        return None
    return pairing_problem(ct, pet, ct_name, pet_name)
