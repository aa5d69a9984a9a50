"""DICOM series on disk: find them, pick the CT or PET one, and assemble a volume with its slice UIDs.

Why not SimpleITK's series reader alone: a scanner export folder holds several series (CT, PET,
scouts, fused or non-attenuation-corrected reconstructions), PET slices carry their own rescale
slope, and an RTSTRUCT or DICOM SEG must name the SOP instance of every CT slice it contours. So
the headers are read with pydicom, series are grouped by SeriesInstanceUID, slices are ordered by
their position along the slice normal (never by file name or instance number), and the voxel
values are stored value x slope + intercept of each slice. pydicom is imported lazily so that
``import HNTumorSegLib`` stays light.

Damaged files: pydicom reads a slice cut short without an error (it returns the pixel data it found,
or the header elements before the cut), so every slice is checked by
:mod:`HNTumorSegLib.imaging.input_integrity` before its pixels are used. A DICOM file whose header cannot be
read at all cannot be put into a series; rather than dropping it (a missing end slice would make the
volume silently shorter), it is recorded with the series whose files share its folder, and reading
such a series is refused.
"""

from __future__ import annotations

import contextlib
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from HNTumorSegLib.errors import InputError
from HNTumorSegLib.imaging.image_checks import DIRECTION_TOLERANCE, memory_problem, spacing_problem
from HNTumorSegLib.imaging.input_integrity import (check_dicom_file, dicom_file_problem, dicom_without_preamble,
                                                   looks_like_dicom)

#: Tags read while listing series (the pixel data is never read then).
_LIST_TAGS = ("SeriesInstanceUID", "Modality", "SeriesDescription", "StudyInstanceUID", "PatientID",
              "FrameOfReferenceUID", "SeriesNumber", "SOPClassUID", "StudyDate", "ImageType")
#: Farthest a slice may lie (mm, along the normal) from the regular grid through the first and last
#: slice. Positions written to 0.1 mm (3.27 mm apart: steps of 3.2 and 3.3) lie within 0.05 of it; a
#: missing slice puts its neighbours half a spacing or more off it.
SLICE_POSITION_ATOL = 0.1
#: Largest in-plane drift (mm) of slice positions off the slice normal (a gantry tilt exceeds it).
IN_PLANE_ATOL = 0.05
#: Files in a folder that are never DICOM instances of a series.
_SKIP_NAMES = {"DICOMDIR"}
#: Suffixes of DICOM files; a file with one of them, none, or a number (a UID as its name) that is empty is
#: a slice whose copy failed (without a suffix: only beside slices named without one, and named like them,
#: see :func:`_bare_slice_name`).
_DICOM_SUFFIXES = {"", ".dcm", ".dicom", ".ima"}
#: What an empty DICOM file is called.
_EMPTY = "file is empty (0 bytes; an interrupted copy?)"
#: Bytes before the end of the DICOM preamble ("DICM" at 128); a .dcm file shorter than this is cut short.
_PREAMBLE_BYTES = 132


def _pydicom():
    try:
        import pydicom
    except ImportError:  # pragma: no cover - pydicom is a dependency; a broken install says so
        raise InputError("reading DICOM needs pydicom: pip install pydicom") from None
    return pydicom


@dataclass(frozen=True)
class SeriesInfo:
    """One series found on disk: what identifies it, and its files (unordered)."""

    uid: str
    modality: str
    description: str
    study_uid: str
    patient_id: str
    study_date: str
    files: tuple[Path, ...]
    #: (file, what is wrong) of damaged DICOM files in the folders of this series' files: files whose
    #: series cannot be told, and which may be slices of this one.
    unreadable: tuple[tuple[Path, str], ...] = ()
    #: ImageType holds LOCALIZER: a scout (topogram) taken to plan the scan, never the CT or PET to read.
    localizer: bool = False

    @property
    def n_images(self) -> int:
        return len(self.files)

    def describe(self) -> str:
        """``UID (PT, "WB 3D AC", 97 images)``: what error messages list."""
        kind = ", localizer" if self.localizer else ""
        return f"{self.uid} ({self.modality or '?'}, \"{self.description}\", {self.n_images} images{kind})"

    def to_dict(self) -> dict:
        return {"series_instance_uid": self.uid, "modality": self.modality, "description": self.description,
                "study_instance_uid": self.study_uid, "images": self.n_images}


def _dcmread(pydicom, path: Path, **options):
    """``pydicom.dcmread``, also for a slice written without the preamble (see
    :func:`~HNTumorSegLib.imaging.input_integrity.dicom_without_preamble`); a data set without a file meta
    group gets the transfer syntax it was read in, which decoding its pixels needs."""
    try:
        return pydicom.dcmread(path, **options)
    except pydicom.errors.InvalidDicomError:
        if not dicom_without_preamble(path):
            raise
    ds = pydicom.dcmread(path, force=True, **options)
    if "TransferSyntaxUID" not in ds.file_meta:
        implicit, little = ds.original_encoding
        ds.file_meta.TransferSyntaxUID = (pydicom.uid.ImplicitVRLittleEndian if implicit else
                                          pydicom.uid.ExplicitVRLittleEndian if little else
                                          pydicom.uid.ExplicitVRBigEndian)
    return ds


def find_series(folder: str | os.PathLike) -> list[SeriesInfo]:
    """Every DICOM series under ``folder`` (recursively), sorted by modality, then description, then UID.

    Files that are not DICOM are ignored; a folder without any DICOM series is an error.
    """
    found, unreadable = _scanned(Path(folder))
    if not found:
        if unreadable:
            damaged = [item for items in unreadable.values() for item in items]
            path, problem = damaged[0]
            raise InputError(f"{path}: {problem}; {folder} holds no readable DICOM series "
                             f"({len(damaged)} damaged DICOM file{'s' if len(damaged) > 1 else ''})")
        raise InputError(f"{folder}: folder holds no DICOM series")
    return list(found)


def find_series_and_damage(folder: str | os.PathLike) -> tuple[list[SeriesInfo], dict[Path, list[tuple[Path, str]]]]:
    """The series under ``folder`` and, by folder, the damaged DICOM files of folders where no series could be
    read (a study whose every slice is damaged would otherwise not be seen at all). InputError when ``folder``
    holds no DICOM file, whole or damaged."""
    found, unreadable = _scanned(Path(folder))
    if not found and not unreadable:
        raise InputError(f"{folder}: folder holds no DICOM series")
    with_series = {f.parent for s in found for f in s.files}
    return list(found), {where: items for where, items in unreadable.items() if where not in with_series}


def _scanned(folder: Path) -> tuple[tuple[SeriesInfo, ...], dict[Path, list[tuple[Path, str]]]]:
    """(series, damaged files by folder) under ``folder``, from the cache while no file changed."""
    if not folder.is_dir():
        raise InputError(f"{folder}: not a folder of DICOM files")
    paths, visited = [], set()
    # Linked folders are followed (a study assembled from links to where its parts lie must read whole),
    # each real folder once: a link to a folder above it would otherwise be walked without end.
    for root, dirs, names in os.walk(folder, followlinks=True):
        real = os.path.realpath(root)
        if real in visited:
            dirs[:] = []
            continue
        visited.add(real)
        dirs.sort()
        paths.extend(Path(root) / name for name in sorted(names) if name not in _SKIP_NAMES and not name.startswith("."))
    signature = tuple(_file_signature(path) for path in paths)
    key = os.path.realpath(folder)
    cached = _FOUND.get(key)
    if cached is not None and cached[0] == signature:
        return cached[1]
    scanned = _scan(folder, paths)
    _FOUND.pop(key, None)
    _FOUND[key] = (signature, scanned)
    while len(_FOUND) > _FOUND_KEPT:
        _FOUND.pop(next(iter(_FOUND)))
    return scanned


#: The last folders scanned by :func:`find_series`, with the name, size and modification time of every file
#: then. Why: a CT and a PET in one folder (the usual export of one study) were scanned twice, 0.55 s of
#: header reading for a whole-body study on a 2-core CPU; a file added, removed or rewritten since makes
#: the folder scanned again.
_FOUND: dict[str, tuple[tuple, tuple]] = {}
_FOUND_KEPT = 4


def _file_signature(path: Path) -> tuple:
    try:
        st = path.stat()
    except OSError:
        return (str(path), None, None)
    return (str(path), st.st_size, st.st_mtime_ns)


def _scan(folder: Path, paths: Sequence[Path]) -> tuple[tuple[SeriesInfo, ...], dict[Path, list[tuple[Path, str]]]]:
    """The series of the files ``paths`` under ``folder``, and the damaged DICOM files by folder."""
    pydicom = _pydicom()
    groups: dict[str, dict] = {}
    unreadable: dict[Path, list[tuple[Path, str]]] = {}  # by folder
    for path in paths:
        try:
            ds = _dcmread(pydicom, path, stop_before_pixels=True, specific_tags=list(_LIST_TAGS))
        except Exception as exc:  # not DICOM, or a DICOM file too damaged to read
            problem = _unreadable_file_problem(path, exc)
            if problem:
                unreadable.setdefault(path.parent, []).append((path, problem))
            continue
        uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not uid:  # not an instance of a series, or a header cut before its SeriesInstanceUID
            problem = dicom_file_problem(path, require_pixel_data=False)
            if problem:
                unreadable.setdefault(path.parent, []).append((path, problem))
            continue
        g = groups.setdefault(uid, {"ds": ds, "files": []})
        g["files"].append(path)
    bare_lengths: dict[Path, set[int]] = {}  # lengths of the slice names without a suffix, by folder
    for f in (f for g in groups.values() for f in g["files"] if not f.suffix):
        bare_lengths.setdefault(f.parent, set()).add(len(f.name))
    for where in list(unreadable):
        unreadable[where] = [(p, problem) for p, problem in unreadable[where]
                             if p.suffix or problem != _EMPTY or _bare_slice_name(p.name, bare_lengths.get(where))]
        if not unreadable[where]:
            del unreadable[where]
    found = [SeriesInfo(uid, str(g["ds"].get("Modality", "") or ""), str(g["ds"].get("SeriesDescription", "") or ""),
                        str(g["ds"].get("StudyInstanceUID", "") or ""), str(g["ds"].get("PatientID", "") or ""),
                        str(g["ds"].get("StudyDate", "") or ""), tuple(g["files"]),
                        _unreadable_beside(g["files"], unreadable), _is_localizer(g["ds"]))
             for uid, g in groups.items()]
    return tuple(sorted(found, key=lambda s: (s.modality, s.description, s.uid))), unreadable


def _bare_slice_name(name: str, slice_name_lengths: set[int] | None) -> bool:
    """Whether an empty file ``name`` without a suffix may be a slice cut to nothing: slices beside it are named
    without a suffix too (as on a DICOMDIR medium), and ``name`` is shaped like theirs, with a digit (slices are
    numbered, or named by a UID or a hash: ``IM000123``, ``S2_0017``, ``EF2A34B1``) and the length of one of them.

    Why: an empty file without a suffix cannot be a DICOM object; a lost slice must still stop the series (a
    missing end slice would silently shorten the volume), but a ``LOCK`` file, a ``LOCKFILE`` or a ``VERSION``
    marker, which PACS exports and DICOMDIR-style dumps leave beside such slices, made the whole study fail.
    """
    return bool(slice_name_lengths) and any(c.isdigit() for c in name) and len(name) in slice_name_lengths


def _is_localizer(ds) -> bool:
    """ImageType (0008,0008) holds LOCALIZER (one value or several)."""
    value = ds.get("ImageType") or []
    return any(str(v).strip().upper() == "LOCALIZER" for v in ([value] if isinstance(value, str) else value))


def _unreadable_file_problem(path: Path, exc: Exception) -> str | None:
    """What is wrong with a file pydicom could not read, when it is a damaged DICOM file (None: not DICOM)."""
    if looks_like_dicom(path):
        problem = dicom_file_problem(path, require_pixel_data=False)
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        return problem or f"file is corrupt: its DICOM header cannot be parsed ({reason})"
    if path.suffix.lower() not in _DICOM_SUFFIXES and not path.suffix[1:].isdigit():
        return None
    size = path.stat().st_size
    if size == 0:
        return _EMPTY
    if size < _PREAMBLE_BYTES and path.suffix.lower() in _DICOM_SUFFIXES - {""}:
        return f"file is truncated: {size} bytes, too short to be a DICOM file (a partial copy?)"
    return None


def _unreadable_beside(files: Sequence[Path], unreadable: dict[Path, list[tuple[Path, str]]]) \
        -> tuple[tuple[Path, str], ...]:
    """The damaged files in the folders holding ``files``."""
    folders = sorted({f.parent for f in files})
    return tuple(item for parent in folders for item in unreadable.get(parent, []))


def _listing(series: Sequence[SeriesInfo]) -> str:
    return "; ".join(s.describe() for s in series) or "none"


def _damaged_note(series: Sequence[SeriesInfo]) -> str:
    """"; 3 damaged DICOM files here, e.g. FILE: what" when the series found have damaged neighbours."""
    damaged = sorted({item for s in series for item in s.unreadable})
    if not damaged:
        return ""
    path, problem = damaged[0]
    return f"; {len(damaged)} damaged DICOM file{'s' if len(damaged) > 1 else ''} here, e.g. {path}: {problem}"


def candidate_series(series: Sequence[SeriesInfo], modality: str) -> list[SeriesInfo]:
    """The series of ``modality`` that may be the CT or PET of a case: all but localizers.

    Why: a CT export often holds the topogram (a localizer series, modality CT) beside the CT; counting it
    made ``segment`` ask for --ct-series and ``batch`` fail the study. ``segment`` (:func:`select_series`) and
    ``batch`` use this one rule, so both take the same series.
    """
    return [s for s in series if s.modality == modality and not s.localizer]


def select_series(series: Sequence[SeriesInfo], folder: str | os.PathLike, modality: str,
                  uid: str | None = None, option: str = "--series") -> SeriesInfo:
    """The one series of ``modality`` that is not a localizer (:func:`candidate_series`), or the one with
    ``uid`` (any); otherwise an error listing what was found, localizers included.

    ``option`` names the command-line option that picks a series explicitly (for the message).
    """
    if uid:
        for s in series:
            if s.uid == uid:
                if s.modality != modality:
                    raise InputError(f"{folder}: series {uid} is {s.modality or 'of unknown modality'}, "
                                     f"not {modality}")
                return s
        raise InputError(f"{folder}: no series with UID {uid}; found: {_listing(series)}{_damaged_note(series)}")
    matches = candidate_series(series, modality)
    if len(matches) == 1:
        return matches[0]
    if not matches:
        raise InputError(f"{folder}: no {modality} series here; found: {_listing(series)}{_damaged_note(series)}")
    raise InputError(f"{folder}: {len(matches)} {modality} series here, pick one with {option} UID: "
                     f"{_listing(matches)}")


@dataclass
class DicomVolume:
    """A series assembled into a 3D image (modality values: slope/intercept applied per slice).

    ``headers[k]`` is the header (without pixel data) of the slice at image index z = k;
    ``sop_instance_uids`` and ``sop_class_uid`` are what RTSTRUCT and DICOM SEG reference.
    """

    series: SeriesInfo
    folder: Path
    image: sitk.Image
    headers: list
    files: list[Path]

    @property
    def sop_instance_uids(self) -> list[str]:
        return [str(h.SOPInstanceUID) for h in self.headers]

    @property
    def sop_class_uid(self) -> str:
        return str(self.headers[0].SOPClassUID)

    @property
    def frame_of_reference_uid(self) -> str:
        return str(self.headers[0].get("FrameOfReferenceUID", "") or "")

    @property
    def rescale(self) -> list[tuple[float, float]]:
        """(slope, intercept) of each slice, in image z order."""
        return [_slope_intercept(h) for h in self.headers]


def _slope_intercept(ds) -> tuple[float, float]:
    slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
    intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
    return slope, intercept


def _required(ds, keyword: str, where: str):
    value = ds.get(keyword)
    if value is None or value == "":
        raise InputError(f"{where}: {keyword} is missing; cannot place the slice in space")
    return value


def load_volume(series: SeriesInfo, folder: str | os.PathLike) -> DicomVolume:
    """Read every slice of ``series`` and stack them along the slice normal.

    Refuses, with one line naming the problem: multi-frame (enhanced) images, slices of differing
    orientation / size / pixel spacing, two slices at one position, irregular slice spacing
    (missing slices), gantry tilt, slices of other studies or frames of reference, and a SOPInstanceUID
    given to two slices.
    """
    pydicom = _pydicom()
    folder = Path(folder)
    where = f"{folder}: series {series.uid}"
    if series.unreadable:
        path, problem = series.unreadable[0]
        raise InputError(f"{path}: {problem} (it lies beside the files of {series.modality or 'the'} series "
                         f"{series.uid}, which may be incomplete)")
    _check_memory(series, where, pydicom)
    slices = []
    for path in series.files:
        check_dicom_file(path, require_pixel_data=True)
        try:
            ds = _dcmread(pydicom, path)
        except Exception as exc:  # the check above passed, so a header pydicom cannot parse
            raise InputError(f"{path}: file is corrupt: its DICOM header cannot be parsed "
                             f"({str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise InputError(f"{path}: multi-frame image ({ds.NumberOfFrames} frames); "
                             "only single-frame CT and PET series are read")
        if "PixelData" not in ds:
            raise InputError(f"{path}: holds no pixel data (series {series.uid}, {series.modality})")
        slices.append((path, ds))
    _check_one_study_and_frame(slices, series)
    first = slices[0][1]
    iop = np.asarray([float(v) for v in _required(first, "ImageOrientationPatient", where)], float)
    row, col = iop[:3], iop[3:]
    normal = np.cross(row, col)
    if not np.all(np.isfinite(iop)) or max(abs(row @ row - 1), abs(col @ col - 1), abs(row @ col)) > DIRECTION_TOLERANCE:
        raise InputError(f"{where}: ImageOrientationPatient {[round(v, 6) for v in iop.tolist()]} is not two "
                         "orthogonal unit vectors (a degenerate or sheared orientation); fix the export")
    ps = [float(v) for v in _required(first, "PixelSpacing", where)]
    problem = spacing_problem(ps[::-1]) if len(ps) == 2 else f"PixelSpacing {ps} is not two values"
    if problem:
        raise InputError(f"{where}: PixelSpacing {problem}")
    rows, cols = int(first.Rows), int(first.Columns)
    positions = []
    for path, ds in slices:
        if not np.allclose([float(v) for v in _required(ds, "ImageOrientationPatient", str(path))], iop, atol=1e-4):
            raise InputError(f"{where}: slices have differing orientations ({path.name})")
        if (int(ds.Rows), int(ds.Columns)) != (rows, cols):
            raise InputError(f"{where}: slices have differing sizes ({path.name})")
        if not np.allclose([float(v) for v in _required(ds, "PixelSpacing", str(path))], ps, atol=1e-5):
            raise InputError(f"{where}: slices have differing pixel spacings ({path.name})")
        positions.append(np.asarray([float(v) for v in _required(ds, "ImagePositionPatient", str(path))], float))
    along = np.asarray([p @ normal for p in positions])
    order = np.argsort(along, kind="stable")
    along = along[order]
    if len(slices) < 2:
        raise InputError(f"{where}: one slice only; a 3D volume is needed")
    steps = np.diff(along)
    if np.any(steps < 1e-3):
        raise InputError(f"{where}: two slices share one position; the folder may hold duplicated files")
    spacing = (along[-1] - along[0]) / (len(along) - 1)
    if np.abs(along - along[0] - spacing * np.arange(len(along))).max() > SLICE_POSITION_ATOL:
        raise InputError(f"{where}: irregular slice spacing ({steps.min():.3f} to {steps.max():.3f} mm); "
                         "slices may be missing")
    p0 = positions[order[0]]
    for k, i in enumerate(order):
        drift = positions[i] - p0 - (along[k] - along[0]) * normal
        if np.linalg.norm(drift) > IN_PLANE_ATOL:
            raise InputError(f"{where}: slice positions drift off the slice normal (gantry tilt?); "
                             "resample the series to an untilted grid first")
    rescale = [_slope_intercept(ds) for _, ds in slices]
    integral = all(s.is_integer() and b.is_integer() for s, b in rescale)
    # A CT whose rescale is in whole numbers (nearly every one: slope 1, intercept -1024) is rescaled in int32,
    # exactly, at half the memory and time of float64; anything else in float64, then cast.
    exact = (series.modality == "CT" and integral
             and all(int(ds.get("BitsAllocated", 16) or 16) <= 16 for _, ds in slices)
             and all(abs(s) * 65536 + abs(b) < 2 ** 31 for s, b in rescale))
    values = np.empty((len(slices), rows, cols), np.int32 if exact else np.float64)
    headers, files = [], []
    for k, i in enumerate(order):
        path, ds = slices[i]
        slope, intercept = rescale[i]
        stored = _pixels(ds, path)
        if exact:
            values[k] = stored.astype(np.int32) * int(slope) + int(intercept)
        else:
            values[k] = stored * slope + intercept
        del ds.PixelData
        headers.append(ds)
        files.append(path)
    if series.modality == "CT" and integral and values.min() >= -32768 and values.max() <= 32767:
        array = values.astype(np.int16)
    else:
        array = values.astype(np.float32)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((ps[1], ps[0], float(spacing)))
    image.SetOrigin(tuple(float(v) for v in p0))
    image.SetDirection(tuple(float(v) for v in np.column_stack([row, col, normal]).ravel()))
    return DicomVolume(series, folder, image, headers, files)


#: UIDs every slice of a series must share: an RTSTRUCT or DICOM SEG cites them once for all the slices.
_SHARED_UIDS = ("StudyInstanceUID", "FrameOfReferenceUID")


def _check_one_study_and_frame(slices: Sequence[tuple[Path, object]], series: SeriesInfo) -> None:
    """Refuse slices of one series that name other studies or frames of reference, or repeat a SOP instance.

    Why: a merged or badly edited export can carry them; the volume would be stacked as one, an RTSTRUCT
    would cite the first slice's study and frame for all, and a DICOM SEG could not be built. A repeated
    SOPInstanceUID (one image copied under two names, or two images given one UID) makes the references of
    an RTSTRUCT or SEG ambiguous. A UID that is missing is left to the checks of what needs it.
    """
    first_path, first = slices[0]
    expected = {keyword: str(first.get(keyword, "") or "") for keyword in _SHARED_UIDS}
    seen: dict[str, Path] = {}
    for path, ds in slices:
        for keyword, value in expected.items():
            other = str(ds.get(keyword, "") or "")
            if value and other and other != value:
                raise InputError(f"{path}: {keyword} {other} differs from {value} of {first_path.name}, a slice of "
                                 f"the same series {series.uid}; a series must be of one study and frame of "
                                 "reference (a merged or edited export?)")
        uid = str(ds.get("SOPInstanceUID", "") or "")
        if uid in seen:
            raise InputError(f"{path}: SOPInstanceUID {uid} is also that of {seen[uid]}; each slice of series "
                             f"{series.uid} must be its own SOP instance (a duplicated or edited file?)")
        if uid:
            seen[uid] = path


#: Bytes a voxel takes, beyond its stored value, while a series is assembled: the stored values are rescaled
#: into float64 (int32 for most CTs: this is the bound), then cast to the volume's type and copied into a
#: SimpleITK image (4 bytes each at most). More
#: than preprocessing needs afterwards (:data:`~HNTumorSegLib.imaging.image_checks.WORKING_COPIES` x 4 bytes).
_ASSEMBLY_BYTES = 8 + 2 * 4


def _check_memory(series: SeriesInfo, where: str, pydicom) -> None:
    """The volume, from the first slice's header and the number of slices, must fit in the memory available."""
    try:
        ds = _dcmread(pydicom, series.files[0], stop_before_pixels=True)
        rows, columns = int(ds.Rows), int(ds.Columns)
        stored = max(1, int(ds.get("BitsAllocated", 16) or 16) // 8) * int(ds.get("SamplesPerPixel", 1) or 1)
    except Exception:  # noqa: BLE001 - a header that cannot say its size: the slice checks say what is wrong
        return
    per_voxel = stored + _ASSEMBLY_BYTES
    size = (columns, rows, series.n_images)
    problem = memory_problem("DICOM " + (series.modality or "image"), size, columns * rows * series.n_images * per_voxel,
                             f"{per_voxel} bytes a voxel while the slices are assembled")
    if problem:
        raise InputError(f"{where}: {problem}")


def _pixels(ds, path: Path) -> np.ndarray:
    """The stored values of one slice, in their stored type; a pixel data element that neither pydicom
    nor GDCM can decode is the file's fault."""
    try:
        return ds.pixel_array
    except Exception as exc:  # pydicom raises ValueError, RuntimeError, NotImplementedError, ... per codec
        # one line: pydicom puts each plugin's reason on a line of its own, after "... all available plugins:"
        reason = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    stored = _stored_by_gdcm(ds, path)
    if stored is None:
        syntax = ds.file_meta.get("TransferSyntaxUID")
        named = f"{syntax.name} ({syntax}): " if syntax and syntax.name != str(syntax) else \
            f"transfer syntax {syntax}: " if syntax else ""
        raise InputError(f"{path}: cannot decode the pixel data, neither with pydicom nor with GDCM ({named}{reason})"
                         f"{_decoder_hint(syntax)}")
    return stored


def _decoder_hint(syntax) -> str:
    """What pydicom says it would decode ``syntax`` with and is not installed (python-gdcm, pylibjpeg and its
    plugins), as the end of an error message; empty when it knows no such plugin."""
    try:
        from pydicom.pixels import get_decoder

        missing = get_decoder(syntax).missing_dependencies
    except Exception:  # noqa: BLE001 - no decoder known for this syntax, or an older pydicom
        return ""
    if not missing:
        return ""
    pip = " (pip install python-gdcm)" if any(m.startswith("gdcm") for m in missing) else ""
    return f"; pydicom plugins not installed that may decode it: {' or '.join(missing)}{pip}"


@contextlib.contextmanager
def _stderr_silenced():
    """File descriptor 2 sent to the null device for the ``with`` block.

    Why: GDCM's JPEG decoder (libjpeg) prints its complaints to the process's stderr, several lines per slice
    before the read fails, which buried the one-line error; the error given instead says what is wrong. A
    process without a usable descriptor 2 is left as it is.
    """
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):
        yield
        return
    try:
        with open(os.devnull, "wb") as null:
            os.dup2(null.fileno(), 2)
        yield
    finally:
        os.dup2(saved, 2)
        os.close(saved)


def _stored_by_gdcm(ds, path: Path) -> np.ndarray | None:
    """The stored values of a slice whose compression pydicom has no decoder for, decoded by the GDCM
    inside SimpleITK; None when GDCM cannot either.

    Why: JPEG Lossless is how many PACS export CT and PET, and pydicom decodes it only with extra
    packages (pylibjpeg-libjpeg, GPL; python-gdcm), which a Slicer extension cannot count on.
    SimpleITK, already here, brings GDCM. GDCM hands back the rescaled values (stored x slope +
    intercept, in the same slope and intercept this module reads); the stored ones, integers, are
    recovered by inverting that and rounding, exactly, and the rescale is applied later as for any slice.
    """
    try:
        with _stderr_silenced():
            values = sitk.GetArrayFromImage(sitk.ReadImage(str(path), imageIO="GDCMImageIO"))
    except RuntimeError:
        return None
    if values.size != int(ds.Rows) * int(ds.Columns):
        return None
    values = values.reshape(int(ds.Rows), int(ds.Columns))
    slope, intercept = _slope_intercept(ds)
    stored = np.rint((values.astype(np.float64) - intercept) / slope)
    signed = int(ds.get("PixelRepresentation", 0) or 0) == 1
    return stored.astype(np.dtype(f"{'i' if signed else 'u'}{max(1, int(ds.BitsAllocated) // 8)}"))


def read_series(folder: str | os.PathLike, modality: str, uid: str | None = None,
                option: str = "--series") -> DicomVolume:
    """Find, select and load the ``modality`` series under ``folder`` in one call."""
    found = find_series(folder)
    return load_volume(select_series(found, folder, modality, uid, option), folder)


#: Most days a PET may lie from its CT: a PET/CT session, or a PET finished after midnight. Further apart,
#: the anatomy (and the tumour) may have changed, and the two are not one acquisition.
MAX_DAYS_APART = 2
#: Where a slice's acquisition date is read, in order of preference.
_DATE_TAGS = ("AcquisitionDate", "SeriesDate", "ContentDate", "StudyDate")


def acquisition_date(volume: DicomVolume) -> tuple[str, object] | None:
    """(tag, date) of the first slice's acquisition date (see :func:`header_acquisition_date`)."""
    return header_acquisition_date(volume.headers[0])


def header_acquisition_date(header) -> tuple[str, object] | None:
    """(tag, date) of a slice header's acquisition date (AcquisitionDate, else SeriesDate, ContentDate,
    StudyDate; AcquisitionDateTime when none of them is given), or None when no valid date is given."""
    import datetime as dt

    for tag in (*_DATE_TAGS, "AcquisitionDateTime"):
        text = str(header.get(tag, "") or "").strip()[:8]
        if len(text) == 8 and text.isdigit():
            try:
                return tag, dt.date(int(text[:4]), int(text[4:6]), int(text[6:]))
            except ValueError:
                continue
    return None


def pet_ct_pairing_problem(ct: DicomVolume, pet: DicomVolume) -> str | None:
    """A message (starting with the PET's folder) when a DICOM CT and PET cannot be one PET/CT study: other
    patients (PatientID), other frames of reference (FrameOfReferenceUID: their coordinates are unrelated),
    or acquired more than :data:`MAX_DAYS_APART` days apart. None when they agree, or a tag is missing."""
    return pairing_problem(ct.headers[0], pet.headers[0], f"the CT ({ct.folder}, series {ct.series.uid})",
                           f"{pet.folder}: PET series {pet.series.uid}")


def pairing_problem(ct_header, pet_header, ct_where: str, pet_where: str) -> str | None:
    """:func:`pet_ct_pairing_problem` from one slice header of each (the Slicer module has no volume of ours):
    the message starts with ``pet_where`` and names the CT as ``ct_where``."""
    pet_id, ct_id = str(pet_header.get("PatientID", "") or ""), str(ct_header.get("PatientID", "") or "")
    if pet_id and ct_id and pet_id != ct_id:
        return (f"{pet_where} is of PatientID {pet_id!r} but {ct_where} of {ct_id!r}; PET and CT must be of one "
                "patient: give the PET and CT of one study")
    pet_frame = str(pet_header.get("FrameOfReferenceUID", "") or "")
    ct_frame = str(ct_header.get("FrameOfReferenceUID", "") or "")
    if pet_frame and ct_frame and pet_frame != ct_frame:
        return (f"{pet_where} has FrameOfReferenceUID {pet_frame} but {ct_where} has "
                f"{ct_frame}: their patient coordinates are unrelated; give the PET and CT of one "
                "PET/CT acquisition, or a PET registered and resampled onto the CT's frame of reference")
    pet_date, ct_date = header_acquisition_date(pet_header), header_acquisition_date(ct_header)
    if pet_date and ct_date:
        days = abs((pet_date[1] - ct_date[1]).days)
        if days > MAX_DAYS_APART:
            return (f"{pet_where} was acquired on {pet_date[1].isoformat()} ({pet_date[0]}) but {ct_where} on "
                    f"{ct_date[1].isoformat()} ({ct_date[0]}), {days} days apart (at most {MAX_DAYS_APART}); give "
                    "the PET and CT of one PET/CT session")
    return None
