"""Truncated or corrupt input files are refused before SimpleITK or pydicom reads them.

Why: the readers do not notice a damaged file. SimpleITK reads a ``.nii.gz`` cut to a third of its
length without an error (zlib's ``gzread`` stops quietly where the data stop) and returns a full-size
volume of which two thirds are wrong; an uncompressed ``.nii`` a few bytes short reads the same way.
pydicom reads a DICOM slice cut short and hands back the part of the pixel data it found, or only the
header elements before the cut. A partial copy from a network share or an interrupted PACS export is an
ordinary event in a hospital, and a result computed from it looks like any other. So every input file
is checked here first, and damage becomes one :class:`~HNTumorSegLib.errors.InputError` line that starts
with the path and says what is wrong, e.g. ``CT.nii.gz: file is truncated: the gzip stream ends early ...``.

The checks use the standard library only (gzip, zlib and bz2 streams, ``struct`` for binary headers) and
stream compressed data through in 1 MiB chunks, so memory stays small whatever the size of the image; the
data are decompressed once more than the reader will (about 0.7 s for a whole-body CT), in a thread beside
the reader where the caller allows (:func:`checked_while_reading`), and the reader's result is then
dropped when the check finds damage.

Checked:

- every file: empty (0 bytes).
- gzip (any file that starts with the gzip magic, e.g. ``.nii.gz``): the stream must reach its end, and
  every member's CRC-32 and length must match (a flipped byte fails one of them, or the deflate stream).
- NIfTI-1 and NIfTI-2, either byte order (``.nii``, ``.nii.gz``, and ``.hdr``/``.img`` pairs, Analyze 7.5
  included): the header parses (dim[0] 1 to 7, no negative size), the image has voxels, and the file holds
  vox_offset + voxels x bytes per voxel (extensions and a vox_offset beyond 352 are allowed for).
- NRRD (``.nrrd`` with attached data, ``.nhdr`` with detached data files, one file, ``LIST`` or a format
  string): the header parses and ends; raw, gzip and bzip2 data hold sizes x type size bytes after
  ``line skip`` and ``byte skip`` (``-1``: data at the end of the file); compressed streams are complete.
- MetaImage (``.mha`` with ``ElementDataFile = LOCAL``, ``.mhd`` with separate, listed or numbered raw files):
  the header parses up to ``ElementDataFile``; the data hold DimSize x channels x element size bytes after
  ``HeaderSize`` (``-1``: at the end); ``CompressedData = True`` zlib (or gzip) streams are complete.
- DICOM (files with the ``DICM`` preamble: slices of a series folder, or one file): the file meta group and
  the data set are walked element by element, in the file's transfer syntax (implicit or explicit VR, either
  byte order): no element, item or sequence may run past the end of the file (undefined lengths are followed
  to their delimiters); native pixel data must hold Rows x Columns x SamplesPerPixel x BitsAllocated / 8 x
  NumberOfFrames bytes; encapsulated (compressed) pixel data must parse fragment by fragment to their
  sequence delimiter, with at least one fragment per frame and a basic offset table that points inside
  them; a deflated transfer syntax's stream must be complete. A slice of a series must hold pixel data.

Not checked (read as the readers read them): values of uncompressed data (no checksum exists: a flipped
byte in a raw ``.nii`` is invisible), the codestreams inside compressed DICOM fragments, ASCII and hex NRRD,
ASCII MetaImage (``BinaryData = False``), unknown NIfTI datatypes, NRRD types and MetaImage element types,
DICOM files without the ``DICM`` preamble or whose element structure is not recognised (an invalid VR, tags
out of order: e.g. trailing padding), the inside of DICOM sequences and items of defined length (only that
they end inside the file), and every other format SimpleITK reads (VTK, GIPL, TIFF, ...): such files are
read as before, and only an empty one is refused.
"""

from __future__ import annotations

import bz2
import os
import re
import struct
import threading
import zlib
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Callable, Iterator

from HNTumorSegLib.errors import InputError

#: Bytes read or decompressed at a time.
CHUNK = 1 << 20
#: Bytes read to recognise a format (a NIfTI-2 header is 540 bytes).
_SNIFF_BYTES = 544
#: Longest text header (NRRD, MetaImage) read before giving up on finding its end, and its longest line.
_MAX_TEXT_HEADER = 4 << 20
_MAX_HEADER_LINE = 64 << 10
#: Names of files that hold a NIfTI header (for a header cut short, which has lost its magic).
NIFTI_NAMES = (".nii", ".nii.gz", ".hdr")

_GZIP_MAGIC = b"\x1f\x8b"
_BZIP2_MAGIC = b"BZh"
_TRUNCATED = "file is truncated"
_CORRUPT = "file is corrupt"
_PARTIAL = "a partial copy?"


class _Damage(Exception):
    """What is wrong with a file, in words; the public functions put the path in front."""


class _Unrecognised(Exception):
    """The structure is not one this module knows: the file is left to the reader, unchecked."""


def check_input_file(path: str | os.PathLike) -> None:
    """Raise :class:`InputError` ``"PATH: what is wrong"`` when an image file is empty, truncated or corrupt.

    A file of a format not checked here (see the module docstring) passes unless it is empty.
    """
    path = Path(path)
    try:
        _check_image_file(path)
    except _Damage as damage:
        raise InputError(f"{path}: {damage}") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read the file ({exc.strerror or exc})") from None


@contextmanager
def checked_while_reading(path: str | os.PathLike) -> Iterator[None]:
    """Run :func:`check_input_file` on ``path`` in a thread beside the block that reads it; on leaving,
    the check's :class:`InputError` wins over whatever the block raised or returned.

    Why: the check decompresses a ``.nii.gz`` once more than the reader does (0.7 s of a 1.5 s read for a
    whole-body CT). zlib and SimpleITK's reader both release the GIL, so on two cores the check costs
    almost nothing beside the read. The reader may see the damaged bytes, but its result is dropped: a
    damaged file is refused exactly as when it was checked first, with the same message.
    """
    found: list[BaseException] = []

    def check() -> None:
        try:
            check_input_file(path)
        except BaseException as exc:  # handed to the reading thread, raised there
            found.append(exc)

    thread = threading.Thread(target=check, name="input-file-check", daemon=True)
    thread.start()
    try:
        yield
    finally:
        thread.join()
        if found:  # raised here, it replaces whatever the block raised
            raise found[0] from None


def check_dicom_file(path: str | os.PathLike, require_pixel_data: bool = True) -> None:
    """Raise :class:`InputError` when a DICOM file is truncated or corrupt (or holds no pixel data).

    Files without the ``DICM`` preamble are not checked.
    """
    problem = dicom_file_problem(path, require_pixel_data)
    if problem:
        raise InputError(f"{path}: {problem}")


def dicom_file_problem(path: str | os.PathLike, require_pixel_data: bool = True) -> str | None:
    """What is wrong with a DICOM file (without the path), or None when it is whole or not DICOM."""
    path = Path(path)
    try:
        size = path.stat().st_size
        if size == 0:
            return _empty_message()
        with open(path, "rb") as fh:
            if not _has_dicom_preamble(fh):
                return None
            _check_dicom(fh, size, require_pixel_data)
    except _Damage as damage:
        return str(damage)
    except OSError as exc:
        return f"cannot read the file ({exc.strerror or exc})"
    return None


def looks_like_dicom(path: str | os.PathLike) -> bool:
    """True when the file has the DICOM preamble (``DICM`` at byte 128)."""
    try:
        with open(path, "rb") as fh:
            return _has_dicom_preamble(fh)
    except OSError:
        return False


def dicom_without_preamble(path: str | os.PathLike) -> bool:
    """True when a file without the preamble starts like a DICOM data set: a file meta group (0002) or the
    identifying group (0008) in little endian, with an explicit VR or a length inside the file. Some
    exports and older archives write slices this way; pydicom reads them only when told to (``force``),
    and without this test a series would silently lose such a slice."""
    try:
        size = os.path.getsize(path)
        with open(path, "rb") as fh:
            if _has_dicom_preamble(fh):
                return False
            head = fh.read(8)
    except OSError:
        return False
    if len(head) < 8 or int.from_bytes(head[:2], "little") not in (0x0002, 0x0008):
        return False
    explicit = head[4:6].isalpha() and head[4:6].isupper()
    return explicit or int.from_bytes(head[4:8], "little") < size


# --------------------------------------------------------------------------------------- dispatch

def _empty_message() -> str:
    return "file is empty (0 bytes; an interrupted copy?)"


def _check_image_file(path: Path) -> None:
    size = path.stat().st_size
    if size == 0:
        raise _Damage(_empty_message())
    with open(path, "rb") as fh:
        head = fh.read(_SNIFF_BYTES)
        fh.seek(0)
        if head.startswith(_GZIP_MAGIC):
            _check_gzip_file(fh, path.name)
        elif head.startswith(b"NRRD000"):
            _check_nrrd(fh, path)
        elif _nifti_layout(head, path.name) is not None:
            _check_nifti_file(head, size, path)
        elif head[128:132] == b"DICM":
            _check_dicom(fh, size, require_pixel_data=True)
        elif path.name.lower().endswith((".mha", ".mhd")):
            _check_metaimage(fh, path)
        elif _is_analyze_image(path):
            _check_analyze_image(path)


def _has_dicom_preamble(fh: BinaryIO) -> bool:
    fh.seek(128)
    found = fh.read(4) == b"DICM"
    fh.seek(0)
    return found


def _short_message(what: str, need: int, have: int, hint: str = _PARTIAL) -> str:
    return f"{_TRUNCATED}: {what} {need - have:,} bytes short of the {need:,} the header describes ({hint})"


# ------------------------------------------------------------------------------------ compression

@dataclass
class _Inflated:
    """What a compressed stream decompressed to: its length, and its first bytes when asked for."""

    size: int = 0
    head: bytearray = field(default_factory=bytearray)

    def add(self, out: bytes, keep: int) -> None:
        self.size += len(out)
        if len(self.head) < keep:
            self.head += out[: keep - len(self.head)]


def _zlib_problem(exc: zlib.error, kind: str) -> _Damage:
    text = str(exc)
    if "incorrect data check" in text:
        checksum = "Adler-32" if kind == "zlib" else "CRC"
        return _Damage(f"{_CORRUPT}: the {kind} data fail their {checksum} check (a damaged copy?)")
    if "incorrect length check" in text:
        return _Damage(f"{_CORRUPT}: the {kind} data fail their length check (a damaged copy?)")
    reason = text.split(":", 1)[-1].strip()
    return _Damage(f"{_CORRUPT}: the {kind} data cannot be decompressed ({reason}; a damaged copy?)")


def _inflate(fh: BinaryIO, wbits: int, kind: str, *, members: bool, keep: int = 0) -> _Inflated:
    """Decompress a zlib/gzip/deflate stream from ``fh``'s position to its end, keeping ``keep`` bytes.

    ``members``: further gzip members may follow (as ``gzip -c a b``); bytes after the last member that
    are not another member are ignored, as zlib's reader does.
    """
    result = _Inflated()
    data = fh.read(CHUNK)
    if not data:
        raise _Damage(f"{_TRUNCATED}: the {kind} data are missing (the file ends where they begin; {_PARTIAL})")
    inflater = zlib.decompressobj(wbits)
    while True:
        try:
            result.add(inflater.decompress(data, CHUNK), keep)
        except zlib.error as exc:
            raise _zlib_problem(exc, kind) from None
        if inflater.eof:
            if not members:
                return result
            rest = _following_bytes(inflater.unused_data, fh, len(_GZIP_MAGIC))
            if not rest.startswith(_GZIP_MAGIC):
                return result
            inflater, data = zlib.decompressobj(wbits), rest
            continue
        data = inflater.unconsumed_tail or fh.read(CHUNK)
        if not data:
            _drain(inflater, result, keep, kind)
            if not inflater.eof:
                raise _Damage(_ends_early(kind, result.size))
            return result


def _ends_early(kind: str, decompressed: int) -> str:
    after = f" after {decompressed:,} decompressed bytes" if decompressed else ""
    return f"{_TRUNCATED}: the {kind} stream ends early ({kind} data cut short{after}; {_PARTIAL})"


def _following_bytes(unused: bytes, fh: BinaryIO, at_least: int) -> bytes:
    """The bytes after a finished stream: enough of them to recognise the magic of another one."""
    return unused + fh.read(CHUNK) if len(unused) < at_least else unused


def _drain(inflater, result: _Inflated, keep: int, kind: str) -> None:
    """Output zlib still holds after the last input (a full output buffer stopped it)."""
    try:
        while not inflater.eof:
            out = inflater.decompress(b"", CHUNK)
            if not out:
                return
            result.add(out, keep)
    except zlib.error as exc:
        raise _zlib_problem(exc, kind) from None


def _bunzip(fh: BinaryIO, keep: int = 0) -> _Inflated:
    """Decompress bzip2 stream(s) from ``fh``'s position to the end."""
    result = _Inflated()
    data = fh.read(CHUNK)
    if not data:
        raise _Damage(f"{_TRUNCATED}: the bzip2 data are missing (the file ends where they begin; {_PARTIAL})")
    decompressor = bz2.BZ2Decompressor()
    while True:
        try:
            result.add(decompressor.decompress(data, CHUNK), keep)
        except (OSError, EOFError, ValueError) as exc:
            raise _Damage(f"{_CORRUPT}: the bzip2 data cannot be decompressed ({exc}; a damaged copy?)") from None
        if decompressor.eof:
            rest = _following_bytes(decompressor.unused_data, fh, len(_BZIP2_MAGIC))
            if not rest.startswith(_BZIP2_MAGIC):
                return result
            decompressor, data = bz2.BZ2Decompressor(), rest
            continue
        if decompressor.needs_input:
            data = fh.read(CHUNK)
            if not data:
                raise _Damage(_ends_early("bzip2", result.size))
        else:
            data = b""


def _gunzip(fh: BinaryIO, keep: int = 0) -> _Inflated:
    return _inflate(fh, 16 + zlib.MAX_WBITS, "gzip", members=True, keep=keep)


# ------------------------------------------------------------------------------------------ gzip

def _check_gzip_file(fh: BinaryIO, name: str) -> None:
    """The whole gzip stream; a NIfTI inside must hold the data its header describes."""
    inflated = _gunzip(fh, keep=_SNIFF_BYTES)
    layout = _nifti_layout(bytes(inflated.head), name.lower().removesuffix(".gz"))
    if layout is not None and layout.single_file:
        layout.check_holds(inflated.size, "the decompressed image data are")


# ----------------------------------------------------------------------------------------- NIfTI

#: Bits per voxel of each NIfTI datatype code.
_NIFTI_DATATYPE_BITS = {1: 1, 2: 8, 4: 16, 8: 32, 16: 32, 32: 64, 64: 64, 128: 24, 256: 8, 512: 16, 768: 32,
                        1024: 64, 1280: 64, 1536: 128, 1792: 128, 2048: 256, 2304: 32}


@dataclass(frozen=True)
class _NiftiLayout:
    """Where a NIfTI/Analyze header says the voxels are, and how many bytes they take."""

    version: str
    single_file: bool
    sizes: tuple[int, ...]
    bits_per_voxel: int
    vox_offset: int

    @property
    def data_bytes(self) -> int:
        voxels = 1
        for n in self.sizes:
            voxels *= n
        return (voxels * self.bits_per_voxel + 7) // 8

    def check_holds(self, available: int, what: str) -> None:
        """``available`` bytes in the file (or stream) that holds the voxels, header included when single."""
        have = max(0, available - self.vox_offset)
        if have < self.data_bytes:
            raise _Damage(_short_message(what, self.data_bytes, have,
                                         f"{' x '.join(map(str, self.sizes))} voxels of {self.bits_per_voxel} bits "
                                         f"from byte {self.vox_offset:,}; {_PARTIAL}"))


def _nifti_layout(head: bytes, name: str) -> _NiftiLayout | None:
    """The layout of a NIfTI-1/-2 header (either byte order), an Analyze ``.hdr``, or None when ``head`` is
    neither. A header that is recognised but cannot be parsed raises."""
    for endian in "<>":
        sizeof_hdr = struct.unpack_from(endian + "i", head)[0] if len(head) >= 4 else 0
        if sizeof_hdr in (348, 540) and len(head) < sizeof_hdr and name.lower().endswith(NIFTI_NAMES):
            raise _Damage(f"{_TRUNCATED}: it ends inside its NIfTI header ({len(head)} of {sizeof_hdr} bytes; "
                          f"{_PARTIAL})")
        if len(head) >= 348 and sizeof_hdr == 348:
            magic = head[344:348]
            if magic not in (b"n+1\0", b"ni1\0") and not name.lower().endswith(".hdr"):
                return None  # 348 at the start and no magic: an Analyze header only as a .hdr file
            version = "NIfTI-1" if magic in (b"n+1\0", b"ni1\0") else "Analyze 7.5"
            dims = struct.unpack_from(endian + "8h", head, 40)
            datatype, bitpix = struct.unpack_from(endian + "2h", head, 70)
            vox_offset = struct.unpack_from(endian + "f", head, 108)[0]
            return _parse_nifti_fields(version, magic == b"n+1\0", dims, datatype, bitpix, vox_offset)
        if len(head) >= 540 and sizeof_hdr == 540 and head[4:7] in (b"n+2", b"ni2"):
            dims = struct.unpack_from(endian + "8q", head, 16)
            datatype, bitpix = struct.unpack_from(endian + "2h", head, 12)
            vox_offset = struct.unpack_from(endian + "q", head, 168)[0]
            return _parse_nifti_fields("NIfTI-2", head[4:7] == b"n+2", dims, datatype, bitpix, vox_offset)
    return None


def _parse_nifti_fields(version: str, single_file: bool, dims: tuple[int, ...], datatype: int, bitpix: int,
                        vox_offset: float) -> _NiftiLayout | None:
    ndim = dims[0]
    if not 1 <= ndim <= 7:
        raise _Damage(f"{_CORRUPT}: the {version} header cannot be parsed (dim[0] = {ndim}, not 1 to 7)")
    sizes = tuple(int(n) for n in dims[1: ndim + 1])
    if any(n < 0 for n in sizes):
        raise _Damage(f"{_CORRUPT}: the {version} header cannot be parsed (negative image size {list(sizes)})")
    if 0 in sizes:
        raise _Damage(f"image has zero voxels (the {version} header gives size {' x '.join(map(str, sizes))})")
    bits = _NIFTI_DATATYPE_BITS.get(datatype) or (bitpix if bitpix > 0 else 0)
    if not bits or vox_offset != vox_offset:  # an unknown datatype, or a NaN offset: the reader decides
        return None
    return _NiftiLayout(version, single_file, sizes, bits, max(0, int(vox_offset)))


def _check_nifti_file(head: bytes, size: int, path: Path) -> None:
    layout = _nifti_layout(head, path.name)
    if layout is None:
        return
    if layout.single_file:
        layout.check_holds(size, "the image data are")
        return
    image = _pair_image_file(path)
    if image is None:
        raise _Damage(f"the {layout.version} header {path.name} has no image file beside it "
                      f"({path.with_suffix('.img').name} not found)")
    _check_pair_image(layout, image)


def _pair_image_file(header: Path) -> Path | None:
    for name in (header.with_suffix(".img"), header.with_suffix(".img.gz"), header.with_suffix(".IMG")):
        if name.is_file():
            return name
    return None


def _check_pair_image(layout: _NiftiLayout, image: Path) -> None:
    try:
        size = image.stat().st_size
        if size == 0:
            raise _Damage(_empty_message())
        with open(image, "rb") as fh:
            if fh.read(2) == _GZIP_MAGIC:
                fh.seek(0)
                size = _gunzip(fh).size
        layout.check_holds(size, "the image data are")
    except _Damage as damage:
        raise _Damage(_about_data_file(str(damage), image.name)) from None


def _is_analyze_image(path: Path) -> bool:
    name = path.name.lower()
    return name.endswith((".img", ".img.gz")) and path.with_name(re.sub(r"\.img(\.gz)?$", ".hdr", path.name,
                                                                        flags=re.I)).is_file()


def _check_analyze_image(path: Path) -> None:
    """An ``.img`` given as the input: its ``.hdr`` says how much it must hold."""
    header = path.with_name(re.sub(r"\.img(\.gz)?$", ".hdr", path.name, flags=re.I))
    with open(header, "rb") as fh:
        head = fh.read(_SNIFF_BYTES)
    layout = _nifti_layout(head, header.name)
    if layout is not None and not layout.single_file:
        _check_pair_image(layout, path)


# ------------------------------------------------------------------------------------------ NRRD

#: Bytes per value of each NRRD type name.
_NRRD_TYPE_BYTES = {
    **dict.fromkeys(("signed char", "int8", "int8_t", "uchar", "unsigned char", "uint8", "uint8_t"), 1),
    **dict.fromkeys(("short", "short int", "signed short", "signed short int", "int16", "int16_t", "ushort",
                     "unsigned short", "unsigned short int", "uint16", "uint16_t"), 2),
    **dict.fromkeys(("int", "signed int", "int32", "int32_t", "uint", "unsigned int", "uint32", "uint32_t",
                     "float"), 4),
    **dict.fromkeys(("longlong", "long long", "long long int", "signed long long", "signed long long int",
                     "int64", "int64_t", "ulonglong", "unsigned long long", "unsigned long long int", "uint64",
                     "uint64_t", "double"), 8),
}
_NRRD_ENCODINGS = {"raw": "raw", "gz": "gzip", "gzip": "gzip", "bz2": "bzip2", "bzip2": "bzip2"}


@dataclass
class _TextHeader:
    """A text header read line by line: its fields, where it ended, and lines after a list marker."""

    fields: dict[str, str]
    end: int              # byte offset just after the header
    complete: bool        # its end marker was found (NRRD: a blank line; MetaImage: ElementDataFile)
    listed: list[str]     # file names after "LIST" (they run to the end of the file)
    last_line_cut: bool = False  # the last header line has no line end (the file may end inside it)


def _read_nrrd_header(fh: BinaryIO) -> _TextHeader:
    # Lines are decoded with os.fsdecode: writers put a data file's name in as the file system's bytes
    # (UTF-8 here), so "Patiént 01.raw.gz" must come back as that name, not as its Latin-1 reading.
    fh.readline(_MAX_HEADER_LINE)  # NRRD000X
    fields: dict[str, str] = {}
    listed: list[str] = []
    in_list = False
    while fh.tell() < _MAX_TEXT_HEADER:
        raw = fh.readline(_MAX_HEADER_LINE)
        if not raw:
            return _TextHeader(fields, fh.tell(), False, listed)
        line = os.fsdecode(raw.rstrip(b"\r\n"))
        if in_list:
            if line.strip():
                listed.append(line.strip())
            continue
        if not line.strip():
            return _TextHeader(fields, fh.tell(), True, listed)
        if line.startswith("#"):
            continue
        colon = line.find(": ")
        if colon < 0 or 0 <= line.find(":=") < colon:  # key:=value pairs, or a line that is not a field
            continue
        name = line[:colon].strip().lower().replace(" ", "")
        fields[name] = line[colon + 2:].strip()
        in_list = name == "datafile" and fields[name].split()[:1] == ["LIST"]
    raise _Damage(f"{_CORRUPT}: the NRRD header does not end within {_MAX_TEXT_HEADER:,} bytes")


def _nrrd_int(fields: dict[str, str], name: str, default: int) -> int:
    text = fields.get(name.replace(" ", ""), "")
    if not text:
        return default
    try:
        return int(text)
    except ValueError:
        raise _Damage(f"{_CORRUPT}: the NRRD header cannot be parsed ({name}: {text!r})") from None


def _nrrd_value_bytes(fields: dict[str, str]) -> int | None:
    kind = " ".join(fields.get("type", "").split()).lower()
    if kind == "block":
        return _nrrd_int(fields, "block size", 0) or None
    return _NRRD_TYPE_BYTES.get(kind)


def _numbered_files(spec: str, folder: Path, kind: str) -> list[Path] | None:
    """``name%03d.raw min max step [subdim]``: the file names, or None when ``spec`` is one file name."""
    words = spec.split()
    if len(words) < 4 or "%" not in words[0]:
        return None
    try:
        first, last, step = (int(w) for w in words[1:4])
        names = [words[0] % i for i in range(first, last + (1 if step > 0 else -1), step)] if step else []
    except (TypeError, ValueError):
        raise _Damage(f"{_CORRUPT}: the {kind} header cannot be parsed (data file list {spec!r})") from None
    return [_beside(folder, name) for name in names]


def _beside(folder: Path, name: str) -> Path:
    path = Path(name)
    return path if path.is_absolute() else folder / path


def _check_nrrd(fh: BinaryIO, path: Path) -> None:
    header = _read_nrrd_header(fh)
    fields = header.fields
    detached = "datafile" in fields
    if not header.complete and not detached:
        raise _Damage(f"{_TRUNCATED}: it ends inside its NRRD header (no blank line ends the header; {_PARTIAL})")
    sizes_text = fields.get("sizes", "")
    try:
        sizes = [int(n) for n in sizes_text.split()]
    except ValueError:
        raise _Damage(f"{_CORRUPT}: the NRRD header cannot be parsed (sizes: {sizes_text!r})") from None
    if not sizes:
        raise _Damage(f"{_CORRUPT}: the NRRD header cannot be parsed (no 'sizes' field)")
    if any(n <= 0 for n in sizes):
        raise _Damage(f"image has zero voxels (the NRRD header gives sizes {sizes_text})")
    value_bytes = _nrrd_value_bytes(fields)
    encoding = _NRRD_ENCODINGS.get(fields.get("encoding", "").lower())
    if value_bytes is None or encoding is None:
        return  # a type or encoding (ascii, hex) not checked here: the reader decides
    total = value_bytes
    for n in sizes:
        total *= n
    files = _data_files(fields.get("datafile"), header, path, "NRRD", "data file:")
    placement = _DataPlacement(encoding, _nrrd_int(fields, "line skip", 0), _nrrd_int(fields, "byte skip", 0),
                               skip_after_decompressing=True)
    for data_file, start in files:
        _check_data_file(path, data_file, start, total // len(files), placement)


def _data_files(spec: str | None, header: _TextHeader, path: Path, kind: str, key: str) -> list[tuple[Path, int]]:
    """(data file, byte where its data begin before skips) of each data file a NRRD or MetaImage header names.

    ``spec`` is the header's data-file field (None or ``LOCAL``: the data follow the header in this file);
    ``LIST`` takes the names from the lines after the header; a format string names numbered files.
    """
    if spec is None or spec.upper() == "LOCAL":
        return [(path, header.end)]
    if spec.split()[:1] == ["LIST"]:
        names = [_beside(path.parent, name) for name in header.listed]
    else:
        names = _numbered_files(spec, path.parent, kind) or [_beside(path.parent, spec)]
    if not names:
        raise _Damage(f"{_CORRUPT}: the {kind} header cannot be parsed ({key} {spec!r} names no file)")
    return [(name, 0) for name in names]


# ------------------------------------------------------------------------------------- data files

@dataclass(frozen=True)
class _DataPlacement:
    """How voxel data sit in a data file: encoding and the skips before them."""

    encoding: str            # raw, gzip, bzip2, zlib
    line_skip: int = 0       # lines skipped before the data (NRRD)
    byte_skip: int = 0       # bytes skipped before the data; -1: the data are the last bytes of the file
    skip_after_decompressing: bool = False  # NRRD skips bytes of the decompressed stream


def _check_data_file(path: Path, data_file: Path, start: int, need: int, placement: _DataPlacement) -> None:
    """``data_file`` (``path`` itself when the data are attached) holds ``need`` bytes of voxels."""
    if not data_file.is_file():
        raise _Damage(f"its data file {data_file} does not exist")
    try:
        _check_data(data_file, start, need, placement)
    except _Damage as damage:
        if data_file == path:
            raise
        raise _Damage(_about_data_file(str(damage), data_file.name)) from None


def _about_data_file(problem: str, name: str) -> str:
    """"file is truncated: ..." of a detached data file -> "its data file NAME is truncated: ..."."""
    if problem.startswith("file "):
        return f"its data file {name} {problem[len('file '):]}"
    return f"its data file {name}: {problem}"


def _check_data(data_file: Path, start: int, need: int, placement: _DataPlacement) -> None:
    size = data_file.stat().st_size
    if size == 0:
        raise _Damage(_empty_message())
    with open(data_file, "rb") as fh:
        fh.seek(start)
        for _ in range(placement.line_skip):
            if not fh.readline():
                raise _Damage(f"{_TRUNCATED}: it ends within the {placement.line_skip} lines the header says to skip "
                              f"({_PARTIAL})")
        if placement.encoding == "raw":
            begin = fh.tell() + max(placement.byte_skip, 0)
            have = size - begin if placement.byte_skip != -1 else size - fh.tell()
            if have < need:
                raise _Damage(_short_message("the image data are", need, max(have, 0)))
            return
        if not placement.skip_after_decompressing and placement.byte_skip > 0:
            fh.seek(placement.byte_skip, os.SEEK_CUR)
        inflated = _decompress(fh, placement.encoding)
        have = inflated.size - (max(placement.byte_skip, 0) if placement.skip_after_decompressing else 0)
        if have < need:
            raise _Damage(_short_message("the decompressed image data are", need, max(have, 0)))


def _decompress(fh: BinaryIO, encoding: str) -> _Inflated:
    if encoding == "gzip":
        return _gunzip(fh)
    if encoding == "bzip2":
        return _bunzip(fh)
    return _inflate(fh, 32 + zlib.MAX_WBITS, "zlib", members=False)  # zlib or gzip header, detected


# ------------------------------------------------------------------------------------- MetaImage

#: Bytes per element of each MetaImage element type (MET_LONG / MET_ULONG at their smallest, 4).
_MET_TYPE_BYTES = {"MET_CHAR": 1, "MET_UCHAR": 1, "MET_SHORT": 2, "MET_USHORT": 2, "MET_INT": 4, "MET_UINT": 4,
                   "MET_LONG": 4, "MET_ULONG": 4, "MET_LONG_LONG": 8, "MET_ULONG_LONG": 8, "MET_FLOAT": 4,
                   "MET_DOUBLE": 8}
_META_KEYS = ("objecttype", "ndims", "dimsize", "elementtype", "elementdatafile")


def _read_metaimage_header(fh: BinaryIO) -> _TextHeader:
    fields: dict[str, str] = {}
    while fh.tell() < _MAX_TEXT_HEADER:
        if fh.tell() > _MAX_HEADER_LINE and not any(k in fields for k in _META_KEYS):
            break  # no MetaImage key in the first 64 KiB: some other format
        raw = fh.readline(_MAX_HEADER_LINE)
        if not raw:
            return _TextHeader(fields, fh.tell(), False, [])
        line = os.fsdecode(raw.rstrip(b"\r\n"))
        key, equals, value = line.partition("=")
        if not equals:
            continue
        fields[key.strip().lower()] = value.strip()
        if key.strip().lower() == "elementdatafile":
            end = fh.tell()
            listed = [os.fsdecode(ln).strip() for ln in fh.read(_MAX_TEXT_HEADER).splitlines()] \
                if value.strip().split()[:1] == ["LIST"] else []
            return _TextHeader(fields, end, True, [name for name in listed if name], not raw.endswith(b"\n"))
    raise _Unrecognised


def text_header_fields(path: str | os.PathLike) -> tuple[str, dict[str, str]] | None:
    """("NRRD" or "MetaImage", the header's fields) of a NRRD or MetaImage file, keys in lower case (NRRD's
    without spaces: ``spacedirections``); None for another format, or a header too damaged to read (then
    :func:`check_input_file` says what is wrong)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            if fh.read(7) == b"NRRD000":
                fh.seek(0)
                return "NRRD", _read_nrrd_header(fh).fields
            if path.name.lower().endswith((".mha", ".mhd")):
                fh.seek(0)
                return "MetaImage", _read_metaimage_header(fh).fields
    except (OSError, _Damage, _Unrecognised):
        return None
    return None


def data_files_of(path: str | os.PathLike) -> list[Path]:
    """The separate data files a NRRD (``.nhdr``) or MetaImage (``.mhd``) header names; [] for a file that
    holds its own data, another format, or a header too damaged to read. Why: writing an output over one
    of them replaces an input's voxels though the header names differ (``CT.mhd`` + ``CT.zraw``)."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            if fh.read(7) == b"NRRD000":
                fh.seek(0)
                header, spec, kind, key = _read_nrrd_header(fh), None, "NRRD", "data file:"
                spec = header.fields.get("datafile")
            elif path.name.lower().endswith(".mhd"):
                fh.seek(0)
                header, kind, key = _read_metaimage_header(fh), "MetaImage", "ElementDataFile"
                spec = header.fields.get("elementdatafile")
            else:
                return []
        return [file for file, _ in _data_files(spec, header, path, kind, key) if file != path]
    except (OSError, _Damage, _Unrecognised):
        return []


def _check_metaimage(fh: BinaryIO, path: Path) -> None:
    try:
        header = _read_metaimage_header(fh)
    except _Unrecognised:
        return
    fields = header.fields
    if not any(k in fields for k in _META_KEYS):
        return  # not a MetaImage header after all
    if not header.complete:
        raise _Damage(f"{_TRUNCATED}: it ends inside its MetaImage header (no ElementDataFile line; {_PARTIAL})")
    try:
        sizes = [int(n) for n in fields.get("dimsize", "").split()]
        channels = int(fields.get("elementnumberofchannels", "1") or 1)
        header_size = int(fields.get("headersize", "0") or 0)
    except ValueError:
        raise _Damage(f"{_CORRUPT}: the MetaImage header cannot be parsed (DimSize {fields.get('dimsize')!r}, "
                      f"ElementNumberOfChannels or HeaderSize)") from None
    if not sizes:
        raise _Damage(f"{_CORRUPT}: the MetaImage header cannot be parsed (no DimSize)")
    if any(n <= 0 for n in sizes):
        raise _Damage(f"image has zero voxels (the MetaImage header gives DimSize {fields['dimsize']})")
    element_bytes = _MET_TYPE_BYTES.get(fields.get("elementtype", "").upper())
    if element_bytes is None or fields.get("binarydata", "True").lower() == "false":
        return  # an element type or ASCII data not checked here: the reader decides
    total = element_bytes * max(channels, 1)
    for n in sizes:
        total *= n
    compressed = fields.get("compresseddata", "False").lower() == "true"
    files = _data_files(fields["elementdatafile"], header, path, "MetaImage", "ElementDataFile")
    if header.last_line_cut and not files[0][0].is_file():
        raise _Damage(f"{_TRUNCATED}: it ends inside its MetaImage header (the ElementDataFile line is cut short: "
                      f"{fields['elementdatafile']!r}; {_PARTIAL})")
    placement = _DataPlacement("zlib" if compressed else "raw", byte_skip=-1 if header_size == -1 else 0)
    for data_file, start in files:
        if header_size > 0:  # bytes before the data; with LOCAL data never later than the header's end
            start = header_size if data_file != path else min(start, header_size)
        _check_data_file(path, data_file, start, total // len(files), placement)


# ----------------------------------------------------------------------------------------- DICOM

_ITEM, _ITEM_END, _SEQUENCE_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_UNDEFINED_LENGTH = 0xFFFFFFFF
_LONG_LENGTH_VRS = frozenset({b"OB", b"OD", b"OF", b"OL", b"OV", b"OW", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT",
                              b"UV"})
_SHORT_LENGTH_VRS = frozenset({b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT",
                               b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US"})
#: Pixel Data, Float Pixel Data, Double Float Pixel Data.
_PIXEL_DATA_TAGS = frozenset({0x7FE00010, 0x7FE00008, 0x7FE00009})
#: Top-level attributes that size the pixel data.
_IMAGE_SIZE_TAGS = {0x00280010: "Rows", 0x00280011: "Columns", 0x00280002: "SamplesPerPixel",
                    0x00280100: "BitsAllocated", 0x00280008: "NumberOfFrames", 0x00280004: "PhotometricInterpretation"}
#: Native photometric interpretations whose two chroma samples are shared by two pixels (2 values a pixel).
_HALF_CHROMA = ("YBR_FULL_422", "YBR_PARTIAL_422")
_IMPLICIT_VR_LITTLE_ENDIAN = "1.2.840.10008.1.2"
_EXPLICIT_VR_BIG_ENDIAN = "1.2.840.10008.1.2.2"
_DEFLATED = ("1.2.840.10008.1.2.1.99", "1.2.840.10008.1.2.8.1")


def _tag_text(tag: int) -> str:
    return f"({tag >> 16:04X},{tag & 0xFFFF:04X})"


@dataclass
class _PixelData:
    tag: int
    length: int | None                 # None: encapsulated (undefined length)
    fragments: int = 0
    fragment_bytes: int = 0            # bytes of the fragment items, item headers included
    offsets: tuple[int, ...] = ()      # basic offset table


@dataclass
class _DicomWalk:
    """Reads the element headers of one DICOM file and records what the pixel data checks need."""

    fh: BinaryIO
    size: int
    little: bool = True
    implicit: bool = False
    image: dict[str, int | str] = field(default_factory=dict)
    pixel_data: _PixelData | None = None

    # -- reading
    def read(self, n: int, what: Callable[[], str]) -> bytes:
        data = self.fh.read(n)
        if len(data) < n:
            raise _Damage(f"{_TRUNCATED}: it ends inside {what()} (after {self.size:,} bytes; {_PARTIAL})")
        return data

    def value_fits(self, tag: int, length: int) -> int:
        """Where the value that starts here begins; it must end inside the file."""
        start = self.fh.tell()
        missing = start + length - self.size
        if missing <= 0:
            return start
        if tag in _PIXEL_DATA_TAGS:
            raise _Damage(f"{_TRUNCATED}: the pixel data are {missing:,} bytes short of the {length:,} the header "
                          f"describes ({_PARTIAL})")
        if tag == _ITEM:
            raise _Damage(f"{_TRUNCATED}: an item of {length:,} bytes at byte {start:,} runs {missing:,} bytes past "
                          f"the end of the file ({_PARTIAL})")
        raise _Damage(f"{_TRUNCATED}: element {_tag_text(tag)} of {length:,} bytes at byte {start:,} runs "
                      f"{missing:,} bytes past the end of the file ({_PARTIAL})")

    def skip(self, tag: int, length: int) -> None:
        self.fh.seek(self.value_fits(tag, length) + length)

    def value(self, tag: int, length: int) -> bytes:
        self.value_fits(tag, length)
        return self.fh.read(length)

    def unpack(self, fmt: str, data: bytes) -> tuple:
        return struct.unpack(("<" if self.little else ">") + fmt, data)

    def element_header(self, end_ok: bool, inside: str = "") -> tuple[int, bytes | None, int] | None:
        """(tag, VR or None, value length); None at a clean end of the file when ``end_ok``.

        ``inside`` names what the element belongs to, for the message when the file ends in its header.
        """
        start = self.fh.tell()
        raw = self.fh.read(4)
        if not raw and end_ok:
            return None
        if len(raw) < 4:
            raise _Damage(f"{_TRUNCATED}: it ends inside an element header at byte {start:,}{inside} ({_PARTIAL})")
        group, element = self.unpack("HH", raw)
        tag = (group << 16) | element

        def what() -> str:
            return f"the header of element {_tag_text(tag)} at byte {start:,}{inside}"

        if group == 0xFFFE or self.implicit:
            return tag, None, self.unpack("I", self.read(4, what))[0]
        vr = self.read(2, what)
        if vr in _LONG_LENGTH_VRS:
            return tag, vr, self.unpack("I", self.read(6, what)[2:])[0]
        if vr in _SHORT_LENGTH_VRS:
            return tag, vr, self.unpack("H", self.read(2, what))[0]
        raise _Unrecognised

    # -- structure
    def dataset(self, top: bool) -> None:
        """Walk elements to the end of the file (``top``) or to an item delimiter (an item's dataset)."""
        last_tag = -1
        while True:
            header = self.element_header(end_ok=top)
            if header is None:
                return
            tag, vr, length = header
            if tag == _ITEM_END and not top:
                return
            if top and tag <= last_tag:
                raise _Unrecognised  # out of order: trailing bytes that are not elements
            last_tag = tag
            if length == _UNDEFINED_LENGTH:
                if top and tag in _PIXEL_DATA_TAGS:
                    self.encapsulated(tag)
                else:
                    self.sequence(as_implicit=vr == b"UN")
            elif top and tag in _IMAGE_SIZE_TAGS:
                self.image[_IMAGE_SIZE_TAGS[tag]] = self.size_value(tag, self.value(tag, length))
            else:
                if top and tag in _PIXEL_DATA_TAGS:
                    self.pixel_data = _PixelData(tag, length)
                self.skip(tag, length)

    def size_value(self, tag: int, data: bytes) -> int | str:
        if tag == 0x00280004:  # PhotometricInterpretation, a code string
            return data.strip(b"\0 ").decode("ascii", "replace")
        if tag == 0x00280008:  # NumberOfFrames, an integer string
            text = data.strip(b"\0 ").split(b"\\")[0]
            return int(text) if text.isdigit() else 1
        return self.unpack("H", data[:2])[0] if len(data) >= 2 else 0

    def nested_header(self, inside: str) -> tuple[int, bytes | None, int]:
        header = self.element_header(end_ok=True, inside=f" of {inside}")
        if header is None:
            raise _Damage(f"{_TRUNCATED}: it ends inside {inside} ({_PARTIAL})")
        return header

    def sequence(self, as_implicit: bool) -> None:
        """Items to the sequence delimiter; an item of undefined length is walked to its delimiter."""
        saved = (self.little, self.implicit)
        if as_implicit:  # an UN of undefined length holds implicit VR little endian items
            self.little, self.implicit = True, True
        while True:
            tag, _, length = self.nested_header("a sequence")
            if tag == _SEQUENCE_END:
                break
            if tag != _ITEM:
                raise _Unrecognised
            if length == _UNDEFINED_LENGTH:
                self.dataset(top=False)
            else:
                self.skip(tag, length)
        self.little, self.implicit = saved

    def encapsulated(self, tag: int) -> None:
        """Compressed pixel data: the basic offset table, then fragments, then the sequence delimiter."""
        pixel = _PixelData(tag, None)
        self.pixel_data = pixel
        table_read = False
        while True:
            item, _, length = self.nested_header(f"the compressed pixel data (after {pixel.fragments} fragments)")
            if item == _SEQUENCE_END:
                return
            if item != _ITEM or length == _UNDEFINED_LENGTH:
                raise _Damage(f"{_CORRUPT}: the compressed pixel data hold element {_tag_text(item)} where a "
                              f"fragment should be (a damaged file?)")
            if not table_read:
                table = self.value(item, length)
                pixel.offsets = self.unpack(f"{length // 4}I", table[: length // 4 * 4])
                table_read = True
                continue
            start = self.fh.tell()
            if start + length > self.size:
                raise _Damage(f"{_TRUNCATED}: the compressed pixel data are {start + length - self.size:,} bytes "
                              f"short: fragment {pixel.fragments + 1} of {length:,} bytes runs past the end of the "
                              f"file ({_PARTIAL})")
            self.fh.seek(start + length)
            pixel.fragments += 1
            pixel.fragment_bytes += 8 + length


def _read_file_meta(walk: _DicomWalk) -> str:
    """Walk the file meta group (explicit VR little endian); returns the transfer syntax UID."""
    walk.fh.seek(132)
    syntax = ""
    while True:
        start = walk.fh.tell()
        if walk.fh.read(2) != b"\x02\x00":
            walk.fh.seek(start)
            return syntax
        walk.fh.seek(start)
        tag, _, length = walk.element_header(end_ok=False)
        if tag == 0x00020010:
            syntax = walk.value(tag, length).strip(b"\0 ").decode("ascii", "replace")
        else:
            walk.skip(tag, length)


def _check_dicom(fh: BinaryIO, size: int, require_pixel_data: bool) -> None:
    walk = _DicomWalk(fh, size)
    complete = True
    try:
        syntax = _read_file_meta(walk)
        if syntax in _DEFLATED:
            _inflate(fh, -zlib.MAX_WBITS, "deflate", members=False)
            return
        walk.little = syntax != _EXPLICIT_VR_BIG_ENDIAN
        walk.implicit = syntax == _IMPLICIT_VR_LITTLE_ENDIAN
        walk.dataset(top=True)
    except _Unrecognised:
        complete = False
    _check_pixel_data(walk, complete, require_pixel_data)


def _check_pixel_data(walk: _DicomWalk, complete: bool, require_pixel_data: bool) -> None:
    pixel = walk.pixel_data
    if pixel is None:
        if require_pixel_data and complete:
            raise _Damage("holds no pixel data (a DICOM image without its pixels: truncated or stripped?)")
        return
    frames = max(int(walk.image.get("NumberOfFrames", 1)), 1)
    if pixel.length is None:
        _check_fragments(pixel, frames)
        return
    rows, columns, bits = (int(walk.image.get(k, 0)) for k in ("Rows", "Columns", "BitsAllocated"))
    samples = int(walk.image.get("SamplesPerPixel", 1)) or 1
    if not (rows and columns and bits):
        return
    if walk.image.get("PhotometricInterpretation") in _HALF_CHROMA:
        samples = 2
    need = (rows * columns * samples * bits * frames + 7) // 8
    if pixel.length < need:
        raise _Damage(f"the pixel data hold {pixel.length:,} bytes, {need - pixel.length:,} short of the {need:,} "
                      f"that Rows x Columns x SamplesPerPixel x BitsAllocated/8 x NumberOfFrames = "
                      f"{rows} x {columns} x {samples} x {bits}/8 x {frames} describe (truncated or damaged file?)")


def _check_fragments(pixel: _PixelData, frames: int) -> None:
    if pixel.fragments < frames:
        raise _Damage(f"{_CORRUPT}: the compressed pixel data hold {pixel.fragments} fragments for {frames} "
                      f"frames (truncated or damaged?)")
    if any(offset >= pixel.fragment_bytes for offset in pixel.offsets):
        raise _Damage(f"{_TRUNCATED}: the basic offset table points past the last fragment of the compressed "
                      f"pixel data ({_PARTIAL})")
