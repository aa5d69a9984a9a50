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
    with pytest.raises(RuntimeError, match="disk full"):
        image_io.write_image(sitk.Image(2, 2, 2, sitk.sitkUInt8), tmp_path / "seg.mhd")
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
