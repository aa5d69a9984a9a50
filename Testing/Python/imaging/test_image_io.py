"""Reading inputs (files and DICOM series folders) and atomic writing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from HNTumorSegLib.errors import InputError
from HNTumorSegLib.imaging.geometry import Geometry
from HNTumorSegLib.imaging.image_io import atomic_path, read_image, write_json

from conftest import tiny_ct_pet


def write_dicom_series(image: sitk.Image, folder: Path, series_uid: str, modality: str = "CT",
                       prefix: str = "slice") -> None:
    """One CT Image file per slice with the position/orientation tags a series reader needs."""
    folder.mkdir(parents=True, exist_ok=True)
    writer = sitk.ImageFileWriter()
    writer.KeepOriginalImageUIDOn()
    direction = image.GetDirection()
    orientation = "\\".join(str(v) for v in (direction[0], direction[3], direction[6],
                                               direction[1], direction[4], direction[7]))
    for k in range(image.GetDepth()):
        s = image[:, :, k]
        for tag, value in (("0008|0060", modality), ("0020|000e", series_uid), ("0020|0037", orientation),
                           ("0020|0032", "\\".join(str(v) for v in image.TransformIndexToPhysicalPoint((0, 0, k)))),
                           ("0020|0013", str(k + 1)), ("0008|0016", "1.2.840.10008.5.1.4.1.1.2"),
                           ("0008|0018", f"{series_uid}.{k + 1}"), ("0028|0030", "\\".join(str(v) for v in image.GetSpacing()[:2])),
                           ("0018|0050", str(image.GetSpacing()[2]))):
            s.SetMetaData(tag, value)
        writer.SetFileName(str(folder / f"{prefix}{k:03d}.dcm"))
        writer.Execute(s)


def test_reads_a_dicom_series_folder(tmp_path):
    ct, _ = tiny_ct_pet()
    write_dicom_series(ct, tmp_path / "ct", "1.2.826.0.1.3680043.2.1125.1")
    got = read_image(tmp_path / "ct", "CT")
    g, want = Geometry.of(got), Geometry.of(ct)
    assert g.size == want.size
    assert np.allclose(g.spacing, want.spacing) and np.allclose(g.origin, want.origin)
    assert np.array_equal(sitk.GetArrayViewFromImage(got), sitk.GetArrayViewFromImage(ct))


def test_folder_with_two_series_is_a_clear_error(tmp_path):
    ct, _ = tiny_ct_pet()
    write_dicom_series(ct[:, :, :5], tmp_path / "mixed", "1.2.826.0.1.3680043.2.1125.1")
    write_dicom_series(ct[:, :, 5:10], tmp_path / "mixed", "1.2.826.0.1.3680043.2.1125.2", prefix="other")
    with pytest.raises(InputError, match="2 DICOM series"):
        read_image(tmp_path / "mixed", "CT")


def test_empty_folder_is_a_clear_error(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no DICOM series"):
        read_image(tmp_path / "empty", "CT")


def test_vector_image_is_refused(tmp_path):
    path = tmp_path / "rgb.mha"
    sitk.WriteImage(sitk.Image([8, 8, 8], sitk.sitkVectorFloat32, 3), str(path))
    with pytest.raises(InputError, match="3 components"):
        read_image(path, "CT")


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out" / "report.json"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    assert not target.exists()
    assert list(target.parent.iterdir()) == []
    write_json({"a": np.float32(1.5), "b": np.arange(2)}, target)
    assert target.read_text().strip().startswith("{") and list(target.parent.iterdir()) == [target]


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600)])
def test_outputs_get_the_mode_a_plain_open_would_give(tmp_path, umask, mode):
    """Not mkstemp's 0600: a planning system importing from a shared folder must be able to read them."""
    import os

    from HNTumorSegLib.imaging.image_io import write_bytes, write_image
    from HNTumorSegLib.pipeline.model_file import save_model
    from HNTumorSegLib.network import NetworkConfig, build_network

    before = os.umask(umask)
    try:
        ct, _ = tiny_ct_pet()
        config = NetworkConfig(channels=(4, 8, 16, 32, 64), psam_channels=(2, 4, 8))
        written = [write_bytes(b"x", tmp_path / "a.bin"), write_json({"a": 1}, tmp_path / "a.json"),
                   write_image(ct, tmp_path / "ct.nii.gz"),
                   *save_model(build_network(config), config, tmp_path / "m")]
    finally:
        os.umask(before)
    assert {oct(p.stat().st_mode & 0o777) for p in written} == {oct(mode)}


@pytest.mark.parametrize("name, files", [
    ("SEG.NII.GZ", ["SEG.NII.GZ"]), ("seg.NII", ["seg.NII"]), ("X.MHA", ["X.MHA"]), ("x.Nrrd", ["x.Nrrd"]),
    ("seg.mhd", ["seg.mhd", "seg.zraw"]), ("SEG.MHD", ["SEG.MHD", "SEG.zraw"]),
    ("p.nhdr", ["p.nhdr", "p.raw.gz"]), ("Patiént 01.NHDR", ["Patiént 01.NHDR", "Patiént 01.raw.gz"]),
])
def test_images_are_written_under_any_letter_case_and_with_their_own_data_file(tmp_path, name, files):
    """A format suffix in any letter case, and formats with a separate data file: the image reads back
    whole (through read_image: ITK alone does not recognise X.MHA), the header names the data file
    beside it, and nothing temporary is left."""
    from HNTumorSegLib.imaging.image_io import write_image

    label = sitk.GetImageFromArray(np.arange(4 * 5 * 6, dtype=np.uint8).reshape(4, 5, 6) % 3)
    label.SetSpacing((0.9, 0.8, 3.0))
    out = tmp_path / "out"
    for _ in range(2):  # the second write replaces the first, leaving nothing behind either
        write_image(label, out / name)
        assert sorted(f.name for f in out.iterdir()) == sorted(files)
        back = read_image(out / name, "label")
        assert np.array_equal(sitk.GetArrayFromImage(back), sitk.GetArrayFromImage(label))
        assert back.GetSpacing() == pytest.approx(label.GetSpacing())
    if len(files) > 1:
        header = (out / name).read_bytes()
        assert files[1].encode() in header and b"/" not in header.split(files[1].encode())[0][-3:]


def test_a_detached_image_that_fails_to_write_leaves_nothing(tmp_path, monkeypatch):
    from HNTumorSegLib.imaging import image_io

    def fail(image, name, compress):
        Path(name).write_text("partial")
        Path(name).with_suffix(".zraw").write_text("partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(image_io.sitk, "WriteImage", fail)
    with pytest.raises(OSError, match="disk full") as raised:
        image_io.write_image(sitk.Image(2, 2, 2, sitk.sitkUInt8), tmp_path / "seg.mhd")
    assert raised.value.filename == str(tmp_path / "seg.mhd")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("name", ["seg.Nii.Gz", "seg.nii.GZ", "seg.Nii"])
def test_a_nifti_name_no_reader_would_open_is_refused_in_one_line(tmp_path, name):
    """NIfTI readers refuse a suffix in mixed letter case: refused before writing, and on reading."""
    from HNTumorSegLib.imaging.image_io import write_image

    with pytest.raises(InputError, match="mixed letter case"):
        write_image(sitk.Image(2, 2, 2, sitk.sitkUInt8), tmp_path / name)
    assert list(tmp_path.iterdir()) == []
    sitk.WriteImage(sitk.Image(2, 2, 2, sitk.sitkUInt8), str(tmp_path / "x.nii.gz"))
    (tmp_path / "x.nii.gz").rename(tmp_path / name)
    with pytest.raises(InputError, match=r"cannot read the CT image \(NIfTI readers refuse"):
        read_image(tmp_path / name, "CT")


def test_a_failed_write_names_the_output_not_its_temporary_file(tmp_path, monkeypatch):
    import errno
    import os

    from HNTumorSegLib.imaging.image_io import write_image, write_json

    def full_disk(src, dst):
        raise OSError(errno.ENOSPC, "No space left on device", str(src), str(dst))

    monkeypatch.setattr(os, "replace", full_disk)
    image = sitk.Image([4, 4, 4], sitk.sitkUInt8)
    for write, target in ((write_image, tmp_path / "seg.nii.gz"), (write_image, tmp_path / "seg.mhd"),
                          (lambda _, path: write_json({"a": 1}, path), tmp_path / "seg.json")):
        with pytest.raises(OSError) as raised:
            write(image, target)
        assert raised.value.filename == str(target) and raised.value.errno == errno.ENOSPC
        assert not target.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # no temporary file left behind


def test_ctrl_c_as_a_detached_header_s_temporary_folder_is_created_leaves_nothing(tmp_path, monkeypatch):
    """``seg.mhd`` is written in a temporary folder beside it: with TemporaryDirectory its name was known only once
    it existed, and Ctrl-C in between left an empty hidden folder in the user's output folder."""
    from HNTumorSegLib.imaging import image_io

    real_create_folder = image_io._create_folder

    def interrupted(path):
        real_create_folder(path)
        raise KeyboardInterrupt

    monkeypatch.setattr(image_io, "_create_folder", interrupted)
    with pytest.raises(KeyboardInterrupt):
        image_io.write_image(sitk.Image([4, 4, 4], sitk.sitkUInt8), tmp_path / "seg.mhd")
    assert list(tmp_path.iterdir()) == []
    monkeypatch.setattr(image_io, "_create_folder", real_create_folder)
    image_io.write_image(sitk.Image([4, 4, 4], sitk.sitkUInt8), tmp_path / "seg.mhd")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["seg.mhd", "seg.zraw"]


def test_an_output_name_of_the_longest_length_a_file_system_allows_is_written(tmp_path):
    """The temporary name (.NAME.RANDOM + suffix) is longer than NAME: for a valid 250-character output name it
    was too long, and the write failed after the whole run. Its leftovers are still found and removed."""
    from HNTumorSegLib.imaging.image_io import remove_temporaries, temporary_prefix, write_image, write_json

    name = "s" * (250 - len(".nii.gz")) + ".nii.gz"
    image = sitk.Image(4, 4, 4, sitk.sitkUInt8)
    written = write_image(image, tmp_path / name)
    assert written.name == name and sitk.ReadImage(str(written)).GetSize() == (4, 4, 4)
    write_json({"a": 1}, tmp_path / ("r" * 250 + ".json"))
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []
    leftover = tmp_path / (temporary_prefix(name) + "abcd1234.nii.gz")
    leftover.write_bytes(b"partial")  # as a killed process leaves it
    assert len(leftover.name) <= 255
    remove_temporaries(tmp_path, [name])
    assert not leftover.exists()


# ----------------------------------------------------------------------------------------------
# write_image: SimpleITK's write failures are one OSError line naming the output
# ----------------------------------------------------------------------------------------------


def _assert_one_line_write_error(raised, target: Path, code: int, words: str) -> None:
    """The OSError the command line and the Slicer worker print as ``FILE: REASON`` (a user's problem, not a bug)."""
    import errno

    exc = raised.value
    assert (exc.errno, exc.filename) == (code, str(target)), errno.errorcode.get(exc.errno)
    assert words in exc.strerror
    assert "\n" not in exc.strerror and "SimpleITK" not in exc.strerror and ".cxx" not in exc.strerror
    assert f".{target.name}." not in exc.strerror  # no temporary file name


@pytest.mark.parametrize("name", ["seg.nii.gz", "seg.nii", "seg.nrrd", "seg.mha", "seg.mhd", "seg.nhdr"])
def test_an_output_folder_removed_during_the_write_is_one_line_naming_the_output(tmp_path, monkeypatch, name):
    """A job folder deleted while the worker wrote into it: SimpleITK's RuntimeError (a C++ source path and
    ITK's lines) was reported as an internal error."""
    import errno
    import shutil

    from HNTumorSegLib.imaging import image_io

    folder = tmp_path / "job" / "output"
    folder.mkdir(parents=True)
    real_write = sitk.WriteImage

    def remove_folder_then_write(image, file, *args):
        shutil.rmtree(folder)
        real_write(image, file, *args)

    monkeypatch.setattr(image_io.sitk, "WriteImage", remove_folder_then_write)
    with pytest.raises(OSError) as raised:
        image_io.write_image(sitk.Image(4, 4, 4, sitk.sitkUInt8), folder / name)
    _assert_one_line_write_error(raised, folder / name, errno.ENOENT, "folder no longer exists")
    assert not folder.exists()


def _full_file_system(monkeypatch) -> None:
    """statvfs of any folder says no block is left (as on the full disk that made the write fail)."""
    import os
    import types

    monkeypatch.setattr(os, "statvfs", lambda path: types.SimpleNamespace(f_bavail=0))


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
@pytest.mark.parametrize("name", ["seg.nrrd", "seg.mha"])
@pytest.mark.parametrize("compress", [True, False])
def test_a_full_disk_is_one_line_naming_the_output(tmp_path, monkeypatch, name, compress):
    """SimpleITK's own failure on a full device (its temporary file made a link to /dev/full): ENOSPC, one line."""
    import errno

    from HNTumorSegLib.imaging import image_io

    _write_onto_dev_full(monkeypatch)
    _full_file_system(monkeypatch)
    image = sitk.GetImageFromArray(np.random.default_rng(0).random((16, 16, 16)))
    with pytest.raises(OSError) as raised:
        image_io.write_image(image, tmp_path / name, compress)
    _assert_one_line_write_error(raised, tmp_path / name, errno.ENOSPC, "no space left")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full (Linux)")
def test_a_write_failure_of_no_known_cause_is_still_one_line(tmp_path, monkeypatch):
    """When neither SimpleITK's text, the folder nor the file system says why: EIO and ITK's last line, cleaned."""
    import errno

    from HNTumorSegLib.imaging import image_io

    _write_onto_dev_full(monkeypatch)
    with pytest.raises(OSError) as raised:
        image_io.write_image(sitk.GetImageFromArray(np.random.default_rng(0).random((16, 16, 16))), tmp_path / "seg.nrrd")
    _assert_one_line_write_error(raised, tmp_path / "seg.nrrd", errno.EIO, "cannot write: [nrrd]")


@pytest.mark.parametrize("name", ["seg.nii.gz", "seg.nii"])
@pytest.mark.parametrize("disk_full", [True, False])
def test_a_nifti_file_cut_short_while_written_does_not_replace_the_output(tmp_path, monkeypatch, name, disk_full):
    """SimpleITK's NIfTI writer does not fail on a full disk: it leaves the file cut short and returns (seen on a
    full tmpfs), and the cut file was renamed into place as a finished output."""
    import errno

    from HNTumorSegLib.imaging import image_io

    image = sitk.GetImageFromArray(np.random.default_rng(0).random((16, 16, 16)))
    target = tmp_path / name
    image_io.write_image(image, target)
    earlier = target.read_bytes()
    real_write = sitk.WriteImage

    def cut_short(image, file, *args):
        real_write(image, file, *args)
        data = Path(file).read_bytes()
        Path(file).write_bytes(data[: len(data) // 3])

    monkeypatch.setattr(image_io.sitk, "WriteImage", cut_short)
    if disk_full:
        _full_file_system(monkeypatch)
    with pytest.raises(OSError) as raised:
        image_io.write_image(image * 2, target)
    if disk_full:
        _assert_one_line_write_error(raised, target, errno.ENOSPC, "no space left")
    else:
        _assert_one_line_write_error(raised, target, errno.EIO, "came out incomplete")
    assert target.read_bytes() == earlier and list(tmp_path.iterdir()) == [target]


def test_a_failing_fsync_names_the_output(tmp_path, monkeypatch):
    """os.fsync's error names no file (a full NFS share reports ENOSPC there): the line said only
    "No space left on device"."""
    import errno
    import os

    from HNTumorSegLib.imaging.image_io import write_image, write_json

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    for write, target in ((lambda p: write_image(sitk.Image(4, 4, 4, sitk.sitkUInt8), p), tmp_path / "seg.nii.gz"),
                          (lambda p: write_image(sitk.Image(4, 4, 4, sitk.sitkUInt8), p), tmp_path / "seg.mhd"),
                          (lambda p: write_json({"a": 1}, p), tmp_path / "seg.json")):
        with pytest.raises(OSError) as raised:
            write(target)
        assert (raised.value.errno, raised.value.filename) == (errno.ENOSPC, str(target))
    assert list(tmp_path.iterdir()) == []


def _write_onto_dev_full(monkeypatch):
    """SimpleITK writes every file onto /dev/full (its temporary name made a link to it): its own ENOSPC failure."""
    from HNTumorSegLib.imaging import image_io

    real_write = sitk.WriteImage

    def onto_a_full_device(image, file, *args):
        Path(file).unlink(missing_ok=True)
        Path(file).symlink_to("/dev/full")
        real_write(image, file, *args)

    monkeypatch.setattr(image_io.sitk, "WriteImage", onto_a_full_device)
