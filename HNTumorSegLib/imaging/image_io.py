"""Reading inputs with clear errors, and writing outputs atomically.

Inputs are anything SimpleITK reads (NIfTI, NRRD, MHA, ...) or a folder holding one DICOM
series. A user mistake becomes one :class:`InputError` line naming the file; a truncated or
corrupt file is refused before SimpleITK reads it (SimpleITK reads a cut ``.nii.gz`` without
complaint; see :mod:`HNTumorSegLib.imaging.input_integrity`), and so is a header that describes no
usable 3D scalar grid or one too large for the memory available (read from the header alone; see
:mod:`HNTumorSegLib.imaging.image_checks`). Outputs are written to a temporary file
beside the target and renamed, so a failure never leaves a half-written file where a finished
one is expected; a failure is an :class:`OSError` naming the output with a one-line reason (the command
line and the Slicer worker report it as the user's to fix), SimpleITK's included.
"""

from __future__ import annotations

import errno
import json
import os
import re
import secrets
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np
import SimpleITK as sitk

from HNTumorSegLib.errors import InputError
from HNTumorSegLib.imaging.image_checks import (direction_problem, image_memory_problem, raw_header_spacing_problem,
                                                spacing_problem, spatial_direction)
from HNTumorSegLib.imaging.image_names import DETACHED_HEADER_SUFFIXES, image_name_problem, image_suffix
from HNTumorSegLib.imaging.input_integrity import (NIFTI_NAMES, check_dicom_file, check_input_file,
                                                   checked_while_reading, looks_like_dicom)


def _sitk_reason(exc: BaseException) -> str:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    # SimpleITK's messages start with a C++ location; the reason is on the last line.
    return lines[-1] if lines else type(exc).__name__


def _read_dicom_folder(folder: Path, role: str) -> sitk.Image:
    try:
        series = sitk.ImageSeriesReader.GetGDCMSeriesIDs(str(folder))
    except RuntimeError as exc:
        raise InputError(f"{folder}: cannot list DICOM series ({_sitk_reason(exc)})") from None
    if not series:
        raise InputError(f"{folder}: folder holds no DICOM series")
    if len(series) > 1:
        raise InputError(f"{folder}: folder holds {len(series)} DICOM series ({', '.join(series)}); "
                         "point to a folder with one series")
    files = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder), series[0])
    _check_dicom_folder_files(folder, files)
    _check_dicom_folder_memory(folder, role, files)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(files)
    return reader.Execute()


def _check_dicom_folder_memory(folder: Path, role: str, files: tuple[str, ...]) -> None:
    """The volume the slices make, from the first slice's header, must fit in the memory available."""
    reader = sitk.ImageFileReader()
    reader.SetFileName(files[0])
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return  # the series reader says what is wrong
    rows_columns = tuple(int(n) for n in reader.GetSize()[:2])
    problem = image_memory_problem(role, (*rows_columns, len(files)), reader.GetPixelID(),
                                   reader.GetNumberOfComponents())
    if problem:
        raise InputError(f"{folder}: {problem}")


def _check_dicom_folder_files(folder: Path, series_files: tuple[str, ...]) -> None:
    """Every slice of the series whole, with its pixel data; and no other DICOM file of the folder damaged.

    The second part matters because GDCM leaves a file whose header it cannot parse out of the series:
    an end slice cut short would otherwise silently make the volume one slice shorter.
    """
    for name in series_files:
        check_dicom_file(name, require_pixel_data=True)
    in_series = {Path(name).resolve() for name in series_files}
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.resolve() not in in_series and looks_like_dicom(path):
            check_dicom_file(path, require_pixel_data=False)


def shape_problem(role: str, dimension: int, size: tuple[int, ...], components: int) -> str | None:
    """What keeps an image of this shape from being a 3D scalar volume (a 4D one of one frame is one)."""
    if dimension == 4 and size[3] == 1:
        dimension, size = 3, size[:3]
    if dimension != 3:
        more = "; extract one frame first" if dimension == 4 else ""
        return f"{role} image is {dimension}D with size {list(size)}; a 3D volume is needed{more}"
    if components != 1:
        return (f"{role} image has {components} components per voxel (an RGB or vector image); a scalar volume "
                "is needed")
    if 0 in size:
        return f"{role} image has zero voxels (size {list(size)})"
    if min(size) < 2:
        return f"{role} image has size {list(size)}; a 3D volume is needed"
    return None


def _geometry_problem(role: str, dimension: int, spacing: tuple[float, ...], direction: tuple[float, ...]) -> str | None:
    problem = spacing_problem(spacing[:3])
    if problem is None and dimension in (3, 4):
        problem = direction_problem(spatial_direction(direction, dimension))
    return f"{role} image {problem}" if problem else None


def _check_header(path: Path, role: str) -> None:
    """Refuse a file whose header describes no usable 3D scalar grid, or one too large for the memory
    available, before its voxels are read."""
    name_problem = image_name_problem(path)
    if name_problem:
        raise InputError(f"{path}: cannot read the {role} image ({name_problem})")
    problem = raw_header_spacing_problem(path)
    if problem:
        raise InputError(f"{path}: {role} image {problem}")
    reader = _file_reader(path)
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        reason = _sitk_reason(exc)
        if "orthonormal" in reason:  # ITK's NIfTI reader, on a sheared or scaled qform/sform
            reason += "; the header describes a sheared or scaled grid: resample the image to an orthogonal grid first"
        raise InputError(f"{path}: cannot read the {role} image ({reason})") from None
    dimension, size = reader.GetDimension(), tuple(int(n) for n in reader.GetSize())
    problem = (shape_problem(role, dimension, size, reader.GetNumberOfComponents())
               or _geometry_problem(role, dimension, tuple(reader.GetSpacing()), tuple(reader.GetDirection()))
               or image_memory_problem(role, size[:3], reader.GetPixelID(), reader.GetNumberOfComponents()))
    if problem:
        raise InputError(f"{path}: {problem}")


def _read_voxels(path: Path, role: str) -> sitk.Image:
    try:
        return _read_dicom_folder(path, role) if path.is_dir() else _file_reader(path).Execute()
    except RuntimeError as exc:
        raise InputError(f"{path}: cannot read the {role} image ({_sitk_reason(exc)})") from None


#: DICOM objects that are no image to read, though a user may take them for one: our own exports among them.
_NOT_IMAGES = {"SEG": "a DICOM SEG", "RTSTRUCT": "an RTSTRUCT"}


def _refuse_dicom_objects(path: Path, role: str) -> None:
    """A DICOM SEG or RTSTRUCT given as an image: say so. Read as images, a SEG's frames gave "label values 255"
    and an RTSTRUCT "no pixel data (truncated or stripped?)"."""
    if not looks_like_dicom(path):
        return
    import pydicom

    try:
        modality = str(pydicom.dcmread(path, stop_before_pixels=True).get("Modality", ""))
    except Exception:  # the image reader says what is wrong with it
        return
    if modality in _NOT_IMAGES:
        wanted = "label map" if "label" in role else f"{role} image"
        raise InputError(f"{path}: {_NOT_IMAGES[modality]}, not a {wanted}: give the image it was made from "
                         "(e.g. the SEG.nii.gz that segment wrote beside it)")


def read_image(path: str | os.PathLike, role: str) -> sitk.Image:
    """Read a 3D scalar volume; ``role`` ("CT", "PET", "label") appears in error messages.

    A file's header is checked before its voxels are read (:func:`_check_header`), and the file for
    damage while they are (:func:`~HNTumorSegLib.imaging.input_integrity.checked_while_reading`); the
    image read is checked again (a DICOM folder has no header to check first).
    """
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: {role} file not found")
    if path.is_dir():
        image = _read_voxels(path, role)
    else:
        _refuse_dicom_objects(path, role)  # before the damage check, which takes an RTSTRUCT for a stripped image
        with checked_while_reading(path):  # damage found by the check wins over the reader's result
            _check_header(path, role)
            image = _read_voxels(path, role)
    if image.GetDimension() == 4 and image.GetSize()[3] == 1:
        image = image[:, :, :, 0]
    problem = (shape_problem(role, image.GetDimension(), tuple(image.GetSize()), image.GetNumberOfComponentsPerPixel())
               or _geometry_problem(role, image.GetDimension(), image.GetSpacing(), image.GetDirection()))
    if problem:
        raise InputError(f"{path}: {problem}")
    if image.GetPixelID() in (sitk.sitkFloat32, sitk.sitkFloat64):
        bad = int(np.count_nonzero(~np.isfinite(sitk.GetArrayViewFromImage(image))))
        if bad:
            raise InputError(f"{path}: {role} image has {bad} NaN or infinite voxels")
    return image


def new_file_mode() -> int:
    """The mode ``open()`` gives a new file (0o666 less the umask). mkstemp makes 0o600 files, and an
    output only its writer can read is of no use to a planning system importing from a shared folder."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


@contextmanager
def atomic_path(target: str | os.PathLike, suffix: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside ``target``; rename it onto ``target`` on success.

    The temporary name is ``.NAME.RANDOM`` plus ``suffix`` (default: the target's own suffixes,
    which writers such as SimpleITK need to pick a file format), NAME cut short where the whole would be longer
    than a file name may be (a valid 245-character output name failed after the whole run).
    """
    target = Path(target)
    _refuse_folder(target)
    suffix = suffix or "".join(target.suffixes[-2:]) or ".tmp"
    made: list[Path] = []  # named before it is created: see new_temporary_file
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        os.close(new_temporary_file(target.parent, temporary_prefix(target.name), suffix, made))
        tmp_path = made[-1]
        yield tmp_path
        with open(tmp_path, "rb") as fh:  # on disk before the rename, so a crash cannot leave a torn file
            os.fsync(fh.fileno())
        os.replace(tmp_path, target)
    except OSError as exc:  # a full disk, no permission: said of the output, not of its hidden temporary name
        raise _of_target(exc, target) from None
    finally:
        for leftover in made:  # gone once renamed onto the target
            if leftover.exists():
                leftover.unlink()


def new_temporary_file(folder: Path, prefix: str, suffix: str, names: list[Path]) -> int:
    """Create an empty file ``folder/PREFIX + 8 random characters + SUFFIX`` (mode as ``open()`` gives,
    :func:`new_file_mode`) and return its open descriptor.

    The name is appended to ``names`` *before* the file is created, so a caller that removes the files of
    ``names`` in a ``finally`` removes it even when Ctrl-C (or SIGTERM, see cli.guard) lands just as it was
    created. Why: with ``tempfile.mkstemp`` the name was known only once mkstemp had returned, and an interrupt
    in between left a 0-byte hidden file beside the output. A name that turns out to be taken is dropped from
    ``names`` (that file is another writer's).
    """
    return _new_temporary(folder, prefix, suffix, names, _create_file)


def new_temporary_folder(folder: Path, prefix: str, names: list[Path]) -> Path:
    """Create an empty folder ``folder/PREFIX + 8 random characters`` (mode 0700) and return its path, named in
    ``names`` before it is created, as :func:`new_temporary_file` (``tempfile.TemporaryDirectory`` left an empty
    hidden folder beside the output when Ctrl-C landed as it was created)."""
    return _new_temporary(folder, prefix, "", names, _create_folder)


def _new_temporary(folder: Path, prefix: str, suffix: str, names: list[Path], create):
    for _ in range(100):
        path = Path(folder) / f"{prefix}{secrets.token_hex(4)}{suffix}"
        names.append(path)
        try:
            return create(path)
        except FileExistsError:
            names.pop()
    raise FileExistsError(errno.EEXIST, "no unused temporary name", str(folder))


def _create_folder(path: Path) -> Path:
    """Create the folder ``path``, which must not exist yet, readable by its owner only (as mkdtemp)."""
    os.mkdir(path, 0o700)
    return path


def _create_file(path: Path) -> int:
    """Create ``path``, which must not exist yet (as mkstemp: never through a link, never another's file)."""
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)
    return os.open(path, flags, new_file_mode())


#: The longest part of an output's name kept in its temporary name: with the dot, the 8 random characters of
#: tempfile and a suffix of up to 40 characters, within the 255 bytes most file systems allow a name.
_TEMP_NAME_KEEP = 200


def temporary_prefix(name: str) -> str:
    """``.NAME.``: how a temporary file or folder beside the output ``name`` begins (NAME cut to fit)."""
    while len(os.fsencode(name)) > _TEMP_NAME_KEEP:
        name = name[:-1]
    return f".{name}."


def _refuse_folder(target: Path) -> None:
    if target.is_dir():
        raise InputError(f"{target}: is a folder; the output must be a file name")


def remove_temporaries(folder: Path, names: Iterable[str], min_age_s: float = 0.0) -> None:
    """Delete what :func:`atomic_path` left in ``folder`` beside the outputs ``names`` when its process was killed
    (``.NAME.RANDOM...``), if untouched for ``min_age_s`` (a younger one may be another process's, writing now)."""
    if not folder.is_dir():
        return
    prefixes = tuple(temporary_prefix(name) for name in names)
    now = time.time()
    for leftover in folder.iterdir():
        if not leftover.name.startswith(prefixes):
            continue
        try:
            if leftover.is_file() and (min_age_s <= 0 or now - leftover.stat().st_mtime >= min_age_s):
                leftover.unlink(missing_ok=True)
        except OSError:
            continue


def _of_target(exc: OSError, target: Path) -> OSError:
    """The same error, naming ``target`` (the user's output path) instead of a temporary file beside it, or
    where it named no file (``os.fsync`` of a full NFS share: a bare "No space left on device")."""
    if exc.filename is None and exc.filename2 is None and exc.errno is not None:
        return OSError(exc.errno, exc.strerror or str(exc), str(target))
    marker = temporary_prefix(target.name)
    for named in (exc.filename, exc.filename2):
        if named is not None and any(part.startswith(marker) for part in Path(os.fsdecode(named)).parts):
            return OSError(exc.errno, exc.strerror or str(exc), str(target))
    return exc


def write_bytes(data: bytes, path: str | os.PathLike) -> Path:
    """Atomically write raw bytes; a leftover from a killed process is named ``.NAME.*.tmp``."""
    with atomic_path(path, suffix=".tmp") as tmp:
        tmp.write_bytes(data)
    return Path(path)


#: ITK picks a reader by the file suffix, and its MetaImage reader knows only lower case: ``X.MHA``
#: is named for it here (the other formats' readers take upper case too).
_IMAGE_IO_OF = {".mha": "MetaImageIO", ".mhd": "MetaImageIO"}


def _file_reader(path: Path) -> sitk.ImageFileReader:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    io = _IMAGE_IO_OF.get(image_suffix(path) or "")
    if io:
        reader.SetImageIO(io)
    return reader


def write_image(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> Path:
    """Write ``image`` atomically: it appears complete under ``path`` or not at all.

    The temporary file carries the format suffix in lower case, because SimpleITK's writers pick
    (and check) the format by it: ``SEG.NII.GZ`` was refused with a traceback after the whole run,
    and ``X.MHA`` came out empty beside a hidden header and data pair. A format with a separate data
    file is written under its final names in a temporary folder beside ``path``, then moved out data
    first and header last, so the header names its own data file and nothing temporary is left.
    """
    path = Path(path)
    problem = image_name_problem(path)
    if problem:
        raise InputError(f"{path}: {problem}")
    suffix = image_suffix(path) or "".join(path.suffixes)
    if suffix in DETACHED_HEADER_SUFFIXES:
        return _write_detached(image, path, suffix, compress)
    with atomic_path(path, suffix=suffix) as tmp:
        _sitk_write(image, tmp, path, compress)
    return path


def _sitk_write(image: sitk.Image, file: Path, target: Path, compress: bool) -> None:
    """``sitk.WriteImage`` to ``file`` (a temporary name of ``target``); a failure is an :class:`OSError` naming
    ``target`` with one line of reason, as a failing ``open()`` would be.

    Why: SimpleITK raises RuntimeError with its C++ source path and several lines of ITK text (the output
    folder removed during a run, a full disk), which the command line and the Slicer worker took for a bug.
    And its NIfTI writer does not fail at all on a full disk: it leaves a cut file and returns (seen on a full
    tmpfs, ``.nii`` and ``.nii.gz``), which was then renamed into place as a finished output. So a NIfTI file
    is checked once written, as an input would be (its data decompressed once more: 0.04 s for a whole-body
    label map; 2.4 s after the 9 s write of a whole-body 2-component probability map). NRRD and MetaImage
    writers raise on a full disk and are not checked.
    """
    try:
        sitk.WriteImage(image, str(file), compress)
    except RuntimeError as exc:
        raise _write_error(target, _sitk_reason(exc), str(exc)) from None
    if image_suffix(file) in NIFTI_NAMES:
        try:
            check_input_file(file)
        except InputError:
            raise _write_error(target, "the file written came out incomplete (a full disk or a quota?)") from None


#: What a write failure says, by errno; the others say :func:`os.strerror`.
_WRITE_REASONS = {errno.ENOENT: "its folder no longer exists (removed during the run?)",
                  errno.ENOSPC: "no space left on the device"}
#: Errors whose C library text ITK passes on in its messages (strerror's words), checked in this order
#: (EDQUOT: not on every platform).
_WRITE_ERRNOS = tuple(code for code in (errno.ENOSPC, getattr(errno, "EDQUOT", None), errno.EROFS, errno.EACCES,
                                        errno.EPERM, errno.ENOENT, errno.EFBIG, errno.EIO) if code is not None)


def _write_error(target: Path, reason: str, sitk_text: str = "") -> OSError:
    """An OSError for an image SimpleITK could not write to ``target``: ``strerror`` one line saying why.

    The errno comes from the words of the C library error in SimpleITK's text; else from the output's folder
    (gone) or its file system (no space left to anyone); else it is EIO and the line is SimpleITK's own last
    line, less its object address and temporary file names.
    """
    code = next((c for c in _WRITE_ERRNOS if os.strerror(c) in sitk_text), None)
    if code is None and not target.parent.is_dir():
        code = errno.ENOENT
    if code is None and _no_space_left(target.parent):
        code = errno.ENOSPC
    if code is not None:
        return OSError(code, f"cannot write: {_WRITE_REASONS.get(code, os.strerror(code))}", str(target))
    reason = re.sub(r"^.*\(0x[0-9a-fA-F]+\):\s*", "", reason)  # "ITK ERROR: NiftiImageIO(0x55..): "
    reason = re.sub(r"\S*" + re.escape(temporary_prefix(target.name)) + r"\S*", target.name, reason)
    return OSError(errno.EIO, f"cannot write: {reason}", str(target))


def _no_space_left(folder: Path) -> bool:
    try:
        return os.statvfs(folder).f_bavail == 0
    except (OSError, AttributeError):  # no folder; no statvfs (Windows)
        return False


def _write_detached(image: sitk.Image, path: Path, suffix: str, compress: bool) -> Path:
    _refuse_folder(path)
    try:
        return _write_detached_files(image, path, suffix, compress)
    except OSError as exc:
        raise _of_target(exc, path) from None


def _write_detached_files(image: sitk.Image, path: Path, suffix: str, compress: bool) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    names: list[Path] = []
    try:
        tmp = new_temporary_folder(path.parent, temporary_prefix(path.name), names)
        header = tmp / (path.name[: -len(suffix)] + suffix)
        _sitk_write(image, header, path, compress)
        written = sorted(tmp.iterdir(), key=lambda f: f == header)  # the header last
        for f in written:
            os.chmod(f, new_file_mode())
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        for f in written:
            os.replace(f, path if f == header else path.parent / f.name)
    finally:
        for folder in names:
            shutil.rmtree(folder, ignore_errors=True)
    return path


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content; InputError naming the file when it cannot be read or is not JSON (a bare
    "Expecting value: line 2 column 1" names nothing a user can find)."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise InputError(f"{path}: not valid JSON ({str(exc).splitlines()[0]}); damaged or cut short?") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read ({exc.strerror or exc})") from None


def write_json(data: dict, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=2, default=_json_default) + "\n")
    return Path(path)


def write_npy(array: np.ndarray, path: str | os.PathLike) -> Path:
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.save(fh, array)
    return Path(path)


def _json_default(obj):
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
