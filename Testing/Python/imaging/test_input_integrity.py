"""A truncated or corrupt input is a one-line error, never a silent result.

Each damaged file is made at test time from a good one: small volumes written by SimpleITK (NIfTI,
NRRD, MetaImage, compressed and not), hand-written headers (NIfTI-1 big endian with an extension,
NIfTI-2, NRRD with bzip2, a detached ``.nhdr``), and phantom DICOM series. Each is cut to a third,
cut a few bytes short, has a byte flipped in its compressed body, or is emptied; the library must
name the file and the problem, and the commands must exit 2 with one line and write nothing. Good
files of every format must still read identical voxels.
"""

from __future__ import annotations

import bz2
import csv
import gzip
import shutil
import struct
import threading
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import SimpleITK as sitk

from HNTumorSegLib.cli import main
from HNTumorSegLib.dicom.series import read_series
from HNTumorSegLib.errors import InputError
from HNTumorSegLib.imaging.image_io import read_image
import HNTumorSegLib.imaging.input_integrity as input_integrity
from HNTumorSegLib.imaging.input_integrity import check_dicom_file, check_input_file, checked_while_reading
from HNTumorSegLib.phantom.dicom import DicomStudy, write_ct_series, write_pet_series

from conftest import tiny_ct_pet

import pydicom

#: The test volume: x 40, y 40, z 20 int16 = 64,000 bytes of voxels.
SHAPE_ZYX = (20, 40, 40)
DATA_BYTES = 64_000


def volume_array() -> np.ndarray:
    """Values that compress to about 80 %, so that a cut always lands inside the compressed data."""
    return np.random.default_rng(7).integers(-1000, 1000, SHAPE_ZYX).astype(np.int16)


def volume_image() -> sitk.Image:
    image = sitk.GetImageFromArray(volume_array())
    image.SetSpacing((2.0, 2.0, 3.0))
    image.SetOrigin((-40.0, -40.0, -30.0))
    return image


# ------------------------------------------------------------------------------- file writers

def nifti1_bytes(array: np.ndarray, endian: str = "<", extension: bytes = b"", dims: tuple | None = None) -> bytes:
    """A single-file NIfTI-1 of an int16 z, y, x array; ``extension`` goes between header and data."""
    header = bytearray(348)
    struct.pack_into(endian + "i", header, 0, 348)
    nz, ny, nx = array.shape
    struct.pack_into(endian + "8h", header, 40, *(dims or (3, nx, ny, nz, 1, 1, 1, 1)))
    struct.pack_into(endian + "2h", header, 70, 4, 16)  # DT_INT16
    struct.pack_into(endian + "8f", header, 76, 1, 1, 1, 1, 1, 1, 1, 1)
    vox_offset = 352 + len(extension)
    struct.pack_into(endian + "f", header, 108, vox_offset)
    struct.pack_into(endian + "f", header, 112, 1.0)  # scl_slope
    struct.pack_into(endian + "2h", header, 252, 0, 1)  # qform_code, sform_code
    for row, values in enumerate(((1, 0, 0, 0), (0, 1, 0, 0), (0, 0, 1, 0))):
        struct.pack_into(endian + "4f", header, 280 + 16 * row, *values)
    header[344:348] = b"n+1\0"
    extender = b"\1\0\0\0" if extension else b"\0\0\0\0"
    return bytes(header) + extender + extension + array.astype(endian + "i2").tobytes()


def nifti_extension(endian: str = "<", code: int = 4, text: bytes = b"HNTumorSeg test extension") -> bytes:
    """One header extension: esize (a multiple of 16), ecode, then the text padded with zeros."""
    size = (8 + len(text) + 15) // 16 * 16
    return struct.pack(endian + "2i", size, code) + text.ljust(size - 8, b"\0")


def nifti2_bytes(array: np.ndarray, endian: str = "<") -> bytes:
    """A single-file NIfTI-2 (SimpleITK 2.5 does not read NIfTI-2; the check must still pass it)."""
    header = bytearray(540)
    struct.pack_into(endian + "i", header, 0, 540)
    header[4:12] = b"n+2\0\r\n\x1a\n"
    struct.pack_into(endian + "2h", header, 12, 4, 16)
    nz, ny, nx = array.shape
    struct.pack_into(endian + "8q", header, 16, 3, nx, ny, nz, 1, 1, 1, 1)
    struct.pack_into(endian + "8d", header, 104, 1, 1, 1, 1, 1, 1, 1, 1)
    struct.pack_into(endian + "q", header, 168, 544)
    struct.pack_into(endian + "d", header, 176, 1.0)
    return bytes(header) + b"\0" * 4 + array.astype(endian + "i2").tobytes()


def nrrd_header(encoding: str, extra: str = "", sizes: str = "40 40 20") -> str:
    return (f"NRRD0004\n# hand-written\ntype: short\ndimension: 3\nsizes: {sizes}\nendian: little\n"
            f"encoding: {encoding}\n{extra}")


def write_sitk(suffix: str, compress: bool) -> Callable[[Path], tuple[Path, Path]]:
    def write(folder: Path) -> tuple[Path, Path]:
        path = folder / f"ct{suffix}"
        sitk.WriteImage(volume_image(), str(path), compress)
        data = folder / "ct.raw" if suffix == ".mhd" else folder / "ct.img" if suffix == ".hdr" else path
        return path, data
    return write


def write_nhdr_raw(folder: Path) -> tuple[Path, Path]:
    """Detached raw data after one skipped line and 7 skipped bytes."""
    header = folder / "ct.nhdr"
    header.write_text(nrrd_header("raw", "line skip: 1\nbyte skip: 7\ndata file: ct.raw\n"))
    (folder / "ct.raw").write_bytes(b"a line to skip\n1234567" + volume_array().tobytes())
    return header, folder / "ct.raw"


def write_nhdr_gzip(folder: Path) -> tuple[Path, Path]:
    """Detached gzip data; the byte skip applies to the decompressed stream."""
    header = folder / "ct.nhdr"
    header.write_text(nrrd_header("gzip", "byte skip: 3\ndata file: ct.raw.gz\n"))
    (folder / "ct.raw.gz").write_bytes(gzip.compress(b"xyz" + volume_array().tobytes()))
    return header, folder / "ct.raw.gz"


def write_nrrd_bzip2(folder: Path) -> tuple[Path, Path]:
    path = folder / "ct.nrrd"
    path.write_bytes(nrrd_header("bzip2", "\n").encode() + bz2.compress(volume_array().tobytes()))
    return path, path


def write_nifti1_big_endian(folder: Path) -> tuple[Path, Path]:
    path = folder / "ct.nii"
    path.write_bytes(nifti1_bytes(volume_array(), ">", nifti_extension(">")))
    return path, path


def write_nifti2(folder: Path) -> tuple[Path, Path]:
    path = folder / "ct.nii"
    path.write_bytes(nifti2_bytes(volume_array()))
    return path, path


#: name: (writer, SimpleITK reads it, what a cut to a third says, what a cut of 5 bytes says)
SHORT_RAW = f"bytes short of the {DATA_BYTES:,} the header describes"
FORMATS = {
    "nii.gz": (write_sitk(".nii.gz", True), True, "the gzip stream ends early", "the gzip stream ends early"),
    "nii": (write_sitk(".nii", False), True, SHORT_RAW, f"5 {SHORT_RAW}"),
    "nifti-pair": (write_sitk(".hdr", False), True, SHORT_RAW, f"5 {SHORT_RAW}"),
    "nifti1-big-endian-extension": (write_nifti1_big_endian, True, SHORT_RAW, f"5 {SHORT_RAW}"),
    "nifti2": (write_nifti2, False, SHORT_RAW, f"5 {SHORT_RAW}"),
    "nrrd-raw": (write_sitk(".nrrd", False), True, SHORT_RAW, f"5 {SHORT_RAW}"),
    "nrrd-gzip": (write_sitk(".nrrd", True), True, "the gzip stream ends early", "the gzip stream ends early"),
    "nrrd-bzip2": (write_nrrd_bzip2, False, "the bzip2 stream ends early", "the bzip2 stream ends early"),
    "nhdr-raw": (write_nhdr_raw, True, SHORT_RAW, f"5 {SHORT_RAW}"),
    "nhdr-gzip": (write_nhdr_gzip, True, "the gzip stream ends early", "the gzip stream ends early"),
    "mha-raw": (write_sitk(".mha", False), True, SHORT_RAW, f"5 {SHORT_RAW}"),
    "mha-zlib": (write_sitk(".mha", True), True, "the zlib stream ends early", "the zlib stream ends early"),
    "mhd-raw": (write_sitk(".mhd", False), True, SHORT_RAW, f"5 {SHORT_RAW}"),
}


def make(name: str, folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    return FORMATS[name][0](folder)


def cut(path: Path, keep: int) -> None:
    path.write_bytes(path.read_bytes()[:keep])


def cut_to_a_third(path: Path) -> None:
    cut(path, path.stat().st_size // 3)


def cut_a_few_bytes(path: Path, n: int = 5) -> None:
    cut(path, path.stat().st_size - n)


def flip_byte(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))


def refusal(path: Path, role: str = "CT") -> str:
    """The message of the InputError that reading ``path`` raises; it must start with the path."""
    with pytest.raises(InputError) as caught:
        read_image(path, role)
    message = str(caught.value)
    assert message.startswith(f"{path}: "), message
    assert "\n" not in message
    return message


# ----------------------------------------------------------------------------- good files read

@pytest.mark.parametrize("name", FORMATS)
def test_good_file_passes_and_reads_identical_voxels(name, tmp_path):
    path, _ = make(name, tmp_path)
    check_input_file(path)
    if not FORMATS[name][1]:
        assert "cannot read" in refusal(path)  # SimpleITK's own refusal, not a false alarm of ours
        return
    got = sitk.GetArrayFromImage(read_image(path, "CT"))
    assert np.array_equal(got, volume_array())


def test_multi_member_gzip_and_mislabelled_uncompressed_nifti_read(tmp_path):
    raw = nifti1_bytes(volume_array())
    members = tmp_path / "members.nii.gz"
    members.write_bytes(gzip.compress(raw[:30_000]) + gzip.compress(raw[30_000:]))
    plain = tmp_path / "plain.nii.gz"  # not compressed at all, whatever its name says
    plain.write_bytes(raw)
    for path in (members, plain):
        assert np.array_equal(sitk.GetArrayFromImage(read_image(path, "CT")), volume_array())


# -------------------------------------------------------------------------- damaged files refused

@pytest.mark.parametrize("damage, needle_column", [(cut_to_a_third, 2), (cut_a_few_bytes, 3)])
@pytest.mark.parametrize("name", FORMATS)
def test_file_cut_short_is_refused(name, damage, needle_column, tmp_path):
    path, data = make(name, tmp_path)
    damage(data)
    message = refusal(path)
    assert "is truncated: " in message and FORMATS[name][needle_column] in message, message
    if data != path:
        assert data.name in message


def test_nifti_message_gives_the_numbers(tmp_path):
    path, _ = make("nii", tmp_path)
    cut(path, 352 + 40_000)
    assert refusal(path) == (f"{path}: file is truncated: the image data are 24,000 bytes short of the 64,000 the "
                             "header describes (40 x 40 x 20 voxels of 16 bits from byte 352; a partial copy?)")


@pytest.mark.parametrize("name, offset, needle", [
    ("nii.gz", -8, "the gzip data fail their CRC check"),        # the CRC-32 in the gzip trailer
    ("nrrd-gzip", -8, "the gzip data fail their CRC check"),
    ("mha-zlib", -1, "the zlib data fail their Adler-32 check"),  # the Adler-32 at the end of the zlib stream
    ("nii.gz", None, "file is corrupt: the gzip data"),          # a byte in the middle of the deflate stream
    ("nrrd-gzip", None, "file is corrupt: the gzip data"),
    ("mha-zlib", None, "file is corrupt: the zlib data"),
    ("nrrd-bzip2", None, "file is corrupt: the bzip2 data cannot be decompressed"),
])
def test_flipped_byte_in_compressed_data_is_refused(name, offset, needle, tmp_path):
    path, data = make(name, tmp_path)
    flip_byte(data, data.stat().st_size // 2 if offset is None else offset)
    message = refusal(path)
    assert needle in message and "file is corrupt" in message, message


@pytest.mark.parametrize("name", ["nii.gz", "nii", "nrrd-raw", "mha-zlib", "mhd-raw", "nhdr-raw"])
def test_empty_file_is_refused(name, tmp_path):
    path, data = make(name, tmp_path)
    data.write_bytes(b"")
    message = refusal(path)
    assert "is empty (0 bytes" in message, message


@pytest.mark.parametrize("make_bad, needle", [
    (lambda d: (d / "z.nii").write_bytes(nifti1_bytes(volume_array()[:0], dims=(3, 0, 40, 20, 1, 1, 1, 1))),
     "image has zero voxels (the NIfTI-1 header gives size 0 x 40 x 20)"),
    (lambda d: (d / "z.nii").write_bytes(nifti1_bytes(volume_array(), dims=(9, 40, 40, 20, 1, 1, 1, 1))),
     "the NIfTI-1 header cannot be parsed (dim[0] = 9, not 1 to 7)"),
    (lambda d: (d / "z.nii").write_bytes(nifti1_bytes(volume_array(), dims=(3, 40, -40, 20, 1, 1, 1, 1))),
     "the NIfTI-1 header cannot be parsed (negative image size"),
    (lambda d: (d / "z.nrrd").write_bytes(nrrd_header("raw", "\n", sizes="0 40 20").encode()),
     "image has zero voxels (the NRRD header gives sizes 0 40 20)"),
    (lambda d: (d / "z.nrrd").write_bytes(nrrd_header("raw", "\n", sizes="40 forty 20").encode()),
     "the NRRD header cannot be parsed (sizes: '40 forty 20')"),
    (lambda d: (d / "z.mha").write_text("ObjectType = Image\nNDims = 3\nDimSize = 40 0 20\nElementType = MET_SHORT\n"
                                        "ElementDataFile = LOCAL\n"),
     "image has zero voxels (the MetaImage header gives DimSize 40 0 20)"),
])
def test_zero_voxels_and_unparsable_headers_are_refused(make_bad, needle, tmp_path):
    make_bad(tmp_path)
    path = next(tmp_path.iterdir())
    message = refusal(path)
    assert needle in message, message


@pytest.mark.parametrize("name, keep, needle", [
    ("nrrd-raw", 60, "it ends inside its NRRD header (no blank line ends the header"),
    ("mha-raw", 100, "it ends inside its MetaImage header (no ElementDataFile line"),
    ("nii", 200, "it ends inside its NIfTI header (200 of 348 bytes"),
])
def test_file_cut_inside_its_header_is_refused(name, keep, needle, tmp_path):
    path, _ = make(name, tmp_path)
    cut(path, keep)
    message = refusal(path)
    assert "file is truncated" in message and needle in message, message


def test_missing_detached_data_file_is_refused(tmp_path):
    path, data = make("nhdr-raw", tmp_path)
    data.unlink()
    assert "its data file" in refusal(path) and "does not exist" in refusal(path)


# ------------------------------------------------- the check runs beside the reader, and wins

def test_check_runs_in_another_thread_while_the_file_is_read(tmp_path, monkeypatch):
    path, _ = make("nii.gz", tmp_path)
    seen = {}
    original = input_integrity.check_input_file

    def recording(p):
        seen["thread"] = threading.current_thread().name
        original(p)

    monkeypatch.setattr(input_integrity, "check_input_file", recording)
    assert np.array_equal(sitk.GetArrayFromImage(read_image(path, "CT")), volume_array())
    assert seen["thread"] == "input-file-check" != threading.current_thread().name


def test_damage_found_beside_the_reader_wins_over_its_result_or_its_error(tmp_path):
    path, _ = make("nii.gz", tmp_path)
    cut(path, path.stat().st_size // 3)
    with pytest.raises(InputError, match="file is truncated"):
        with checked_while_reading(path):
            pass  # the block "read" the file without noticing: its result is dropped
    with pytest.raises(InputError, match="file is truncated"):
        with checked_while_reading(path):
            raise RuntimeError("the reader's own complaint")
    good, _ = make("nrrd-gzip", tmp_path)
    with pytest.raises(RuntimeError, match="the reader's own complaint"):  # no damage: the block's error stands
        with checked_while_reading(good):
            raise RuntimeError("the reader's own complaint")


# ------------------------------------------------------------------------------------------ DICOM

@pytest.fixture(scope="module")
def dicom_study(tmp_path_factory) -> dict[str, Path]:
    """The tiny CT and PET as one DICOM study folder, and a CT-only series folder (SimpleITK's reader)."""
    ct, pet = tiny_ct_pet()
    root = tmp_path_factory.mktemp("dicom")
    study = DicomStudy("INTEGRITY-1")
    write_ct_series(ct, root / "study", study)
    write_pet_series(pet, root / "study", study)
    write_ct_series(sitk.GetImageFromArray(volume_array()), root / "ct_only", DicomStudy("INTEGRITY-2"))
    return {"study": root / "study", "ct_only": root / "ct_only"}


def copy_of(folder: Path, tmp_path: Path) -> Path:
    target = tmp_path / folder.name
    shutil.copytree(folder, target)
    return target


def ct_slices(folder: Path) -> list[Path]:
    """The CT slice files of ``folder`` in z order (first = an end slice)."""
    return read_series(folder, "CT").files


def read_series_refusal(folder: Path) -> str:
    with pytest.raises(InputError) as caught:
        read_series(folder, "CT")
    return str(caught.value)


@pytest.mark.parametrize("damage, needle", [
    (cut_to_a_third, "file is truncated: the pixel data are"),
    (cut_a_few_bytes, "file is truncated: the pixel data are 5 bytes short of the 20,000 the header describes"),
])
def test_dicom_slice_cut_short_is_refused(dicom_study, tmp_path, damage, needle):
    folder = copy_of(dicom_study["study"], tmp_path)
    victim = ct_slices(folder)[17]
    damage(victim)
    message = read_series_refusal(folder)
    assert message.startswith(f"{victim}: ") and needle in message, message


def test_dicom_end_slice_cut_inside_its_header_is_refused(dicom_study, tmp_path):
    """pydicom reads such a file as a header without SeriesInstanceUID: it must not silently drop out."""
    folder = copy_of(dicom_study["study"], tmp_path)
    victim = ct_slices(folder)[0]
    cut(victim, 400)
    message = read_series_refusal(folder)
    assert message.startswith(f"{victim}: file is truncated"), message
    assert "beside the files of CT series" in message


def test_dicom_slice_without_pixel_data_is_refused(dicom_study, tmp_path):
    folder = copy_of(dicom_study["study"], tmp_path)
    victim = ct_slices(folder)[5]
    ds = pydicom.dcmread(victim)
    del ds.PixelData
    ds.save_as(victim, enforce_file_format=True)
    message = read_series_refusal(folder)
    assert message.startswith(f"{victim}: holds no pixel data"), message


def test_dicom_pixel_data_shorter_than_rows_times_columns_is_refused(dicom_study, tmp_path):
    folder = copy_of(dicom_study["study"], tmp_path)
    victim = ct_slices(folder)[5]
    ds = pydicom.dcmread(victim)
    ds.PixelData = ds.PixelData[:10_000]
    ds.save_as(victim, enforce_file_format=True)
    message = read_series_refusal(folder)
    assert message.startswith(f"{victim}: the pixel data hold 10,000 bytes, 10,000 short of the 20,000"), message
    assert "100 x 100 x 1 x 16/8 x 1" in message


def test_empty_dicom_slice_is_refused(dicom_study, tmp_path):
    folder = copy_of(dicom_study["study"], tmp_path)
    victim = ct_slices(folder)[-1]
    victim.write_bytes(b"")
    message = read_series_refusal(folder)
    assert message.startswith(f"{victim}: file is empty"), message


def test_folder_of_damaged_dicom_only_names_a_file(dicom_study, tmp_path):
    folder = tmp_path / "lone"
    folder.mkdir()
    victim = folder / "slice.dcm"
    shutil.copy(ct_slices(dicom_study["study"])[0], victim)
    cut(victim, 300)
    message = read_series_refusal(folder)
    assert message.startswith(f"{victim}: file is truncated") and "holds no readable DICOM series" in message


@pytest.mark.parametrize("victim_index, keep", [(3, None), (0, 400)])
def test_simpleitk_dicom_folder_reader_refuses_damaged_slices(dicom_study, tmp_path, victim_index, keep):
    folder = copy_of(dicom_study["ct_only"], tmp_path)
    assert np.array_equal(sitk.GetArrayFromImage(read_image(folder, "CT")), volume_array())  # the good folder
    victim = ct_slices(folder)[victim_index]
    cut_to_a_third(victim) if keep is None else cut(victim, keep)
    with pytest.raises(InputError) as caught:
        read_image(folder, "CT")
    assert str(caught.value).startswith(f"{victim}: file is truncated"), caught.value


def test_compressed_dicom_fragments_are_walked_to_the_end(dicom_study, tmp_path):
    from pydicom.uid import RLELossless

    source = ct_slices(dicom_study["study"])[10]
    ds = pydicom.dcmread(source)
    ds.compress(RLELossless)
    good = tmp_path / "rle.dcm"
    ds.save_as(good, enforce_file_format=True)
    check_dicom_file(good)
    assert np.array_equal(pydicom.dcmread(good).pixel_array, pydicom.dcmread(source).pixel_array)
    cut_a_few_bytes(good, 100)
    with pytest.raises(InputError, match=r"rle\.dcm: file is truncated: the compressed pixel data are 92 bytes "
                                         r"short: fragment 1 of"):
        check_dicom_file(good)


@pytest.mark.parametrize("syntax, needle", [
    ("ImplicitVRLittleEndian", "the pixel data are 5 bytes short of the 20,000 the header describes"),
    ("DeflatedExplicitVRLittleEndian", "the deflate stream ends early"),
    ("ExplicitVRBigEndian", "the pixel data are 5 bytes short of the 8,192 the header describes"),
])
def test_dicom_transfer_syntaxes_are_walked(dicom_study, tmp_path, syntax, needle):
    path = tmp_path / "slice.dcm"
    if syntax == "ExplicitVRBigEndian":  # pydicom does not convert to big endian; it ships an MR that is
        from pydicom.data import get_testdata_file

        source = get_testdata_file("MR_small_bigendian.dcm")
        if source is None:
            pytest.skip("pydicom's test file MR_small_bigendian.dcm is not installed")
        shutil.copy(source, path)
    else:
        ds = pydicom.dcmread(ct_slices(dicom_study["study"])[4])
        ds.file_meta.TransferSyntaxUID = getattr(pydicom.uid, syntax)
        ds.save_as(path, enforce_file_format=True, implicit_vr=syntax.startswith("Implicit"), little_endian=True)
    assert pydicom.dcmread(path).file_meta.TransferSyntaxUID == getattr(pydicom.uid, syntax)
    check_dicom_file(path)
    cut_a_few_bytes(path)
    with pytest.raises(InputError) as caught:
        check_dicom_file(path)
    assert str(caught.value).startswith(f"{path}: file is truncated: {needle}"), caught.value


# -------------------------------------------------------------------------------- command line

def run_cli(argv, capsys) -> tuple[int, str]:
    code = main([str(a) for a in argv])
    return code, capsys.readouterr().err


def assert_one_line_refusal(code: int, err: str, path: Path, *needles: str) -> None:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code == 2 and len(lines) == 1, err
    assert lines[0].startswith(f"hntumorseg: error: {path}: "), lines[0]
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def tiny_pair(folder: Path, suffix: str = ".nii.gz", compress: bool = True) -> dict[str, Path]:
    ct, pet = tiny_ct_pet()
    folder.mkdir(parents=True, exist_ok=True)
    paths = {"ct": folder / f"T-001__CT{suffix}", "pet": folder / f"T-001__PT{suffix}"}
    sitk.WriteImage(ct, str(paths["ct"]), compress)
    sitk.WriteImage(pet, str(paths["pet"]), compress)
    return paths


@pytest.mark.parametrize("suffix, compress, role, damage, needle", [
    (".nii.gz", True, "ct", cut_to_a_third, "the gzip stream ends early"),
    (".nii.gz", True, "pet", lambda p: flip_byte(p, -8), "fail their CRC check"),
    (".nii", False, "pet", cut_a_few_bytes, "the image data are 5 bytes short"),
    (".nrrd", True, "ct", cut_to_a_third, "the gzip stream ends early"),
    (".mha", False, "pet", cut_to_a_third, "bytes short of the 300,000"),
    (".nii.gz", True, "ct", lambda p: p.write_bytes(b""), "file is empty"),
])
def test_preprocess_and_segment_refuse_a_damaged_input_and_write_nothing(
        tmp_path, capsys, small_model, suffix, compress, role, damage, needle):
    paths = tiny_pair(tmp_path / "in", suffix, compress)
    damage(paths[role])
    out = tmp_path / "pre"
    code, err = run_cli(["preprocess", "--ct", paths["ct"], "--pet", paths["pet"], "--out", out], capsys)
    assert_one_line_refusal(code, err, paths[role], needle)
    assert not out.exists()
    seg = tmp_path / "seg" / "seg.nii.gz"
    code, err = run_cli(["segment", "--ct", paths["ct"], "--pet", paths["pet"], "--out", seg,
                         "--model", small_model, "--device", "cpu"], capsys)
    assert_one_line_refusal(code, err, paths[role], needle)
    assert not seg.parent.exists()


def test_preprocess_refuses_a_damaged_label(tmp_path, capsys):
    paths = tiny_pair(tmp_path / "in")
    ct, _ = tiny_ct_pet()
    label = tmp_path / "in" / "label.nii.gz"
    sitk.WriteImage(sitk.Cast(ct > 0, sitk.sitkUInt8), str(label), True)
    cut_a_few_bytes(label, 3)
    out = tmp_path / "pre"
    code, err = run_cli(["preprocess", "--ct", paths["ct"], "--pet", paths["pet"], "--label", label, "--out", out],
                        capsys)
    assert_one_line_refusal(code, err, label, "file is truncated: the gzip stream ends early")
    assert not out.exists()


def test_commands_refuse_a_damaged_dicom_slice_and_write_nothing(dicom_study, tmp_path, capsys, small_model):
    folder = copy_of(dicom_study["study"], tmp_path)
    victim = ct_slices(folder)[20]
    cut_to_a_third(victim)
    out = tmp_path / "out"
    code, err = run_cli(["preprocess", "--ct", folder, "--pet", folder, "--out", out / "pre"], capsys)
    assert_one_line_refusal(code, err, victim, "file is truncated: the pixel data are")
    code, err = run_cli(["segment", "--ct", folder, "--pet", folder, "--out", out / "seg.nii.gz",
                         "--rtstruct", out / "RS.dcm", "--model", small_model, "--device", "cpu"], capsys)
    assert_one_line_refusal(code, err, victim, "file is truncated: the pixel data are")
    assert not out.exists()


def test_rtstruct_refuses_damaged_labels_and_a_damaged_ct_slice(dicom_study, tmp_path, capsys):
    folder = copy_of(dicom_study["study"], tmp_path)
    ct = read_series(folder, "CT").image
    labels = tmp_path / "labels.nii.gz"
    sitk.WriteImage(sitk.Cast(ct > 0, sitk.sitkUInt8), str(labels), True)
    cut_to_a_third(labels)
    rs = tmp_path / "out" / "RS.dcm"
    code, err = run_cli(["rtstruct", "--ct", folder, "--labels", labels, "--out", rs], capsys)
    assert_one_line_refusal(code, err, labels, "the gzip stream ends early")
    victim = ct_slices(folder)[2]
    cut_a_few_bytes(victim)
    code, err = run_cli(["rtstruct", "--ct", folder, "--labels", labels, "--out", rs], capsys)
    assert_one_line_refusal(code, err, victim, "5 bytes short")
    assert not rs.parent.exists()


def test_batch_reports_a_truncated_case_as_failed(tmp_path, capsys, small_model):
    root = tmp_path / "cohort"
    paths = tiny_pair(root / "T-001")
    cut_to_a_third(paths["ct"])
    out = tmp_path / "results"
    code, _ = run_cli(["batch", "--input", root, "--out", out, "--model", small_model, "--device", "cpu"], capsys)
    assert code == 1
    with open(out / "summary.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["status"] for r in rows] == ["failed"]
    assert rows[0]["message"].startswith(f"{paths['ct']}: file is truncated: the gzip stream ends early")
    assert not (out / "T-001").exists()
