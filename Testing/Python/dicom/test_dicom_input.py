"""DICOM input: series discovery and selection, volume assembly, SUVbw from the tags.

Fixtures are phantom cases written as CT and PET Image series with pydicom (shuffled file names,
one rescale slope per PET slice, PET in Bq/mL), so every check compares against a known truth.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess

import numpy as np
import pytest
import SimpleITK as sitk

import pydicom

from HNTumorSegLib.cases.inputs import read_case
from HNTumorSegLib.cli import main
from HNTumorSegLib.dicom.series import find_series, read_series
from HNTumorSegLib.errors import InputError
from HNTumorSegLib.phantom import make_phantom
from HNTumorSegLib.phantom.dicom import DicomStudy, PetAcquisition, write_ct_series, write_dicom_case
from HNTumorSegLib.dicom.suv import suv_conversion

#: Hand computation for the default acquisition (75 kg, 370 MBq F-18, START, 60 min uptake):
#: decay 2^(-3600 / 6586.2) = 2^(-0.546597) = 0.684633; dose at scan start 370e6 x 0.684633 =
#: 253.314 MBq; SUVbw factor = 75 000 g / 253.314e6 Bq = 2.96075e-4 SUV per Bq/mL.
HAND_SUV_FACTOR_START = 2.96075e-4
#: ADMIN: no decay, 75 000 / 370e6.
HAND_SUV_FACTOR_ADMIN = 2.02703e-4
#: GE private scan time 10:15, 45 min after injection: decay 2^(-2700 / 6586.2) = 2^(-0.409948) = 0.752650;
#: 370e6 x 0.752651 = 278.481 MBq; 75 000 / 278.481e6 = 2.69319e-4.
HAND_SUV_FACTOR_GE = 2.69319e-4
#: Philips counts with the activity concentration factor 0.25 Bq/mL per count: 0.25 x 2.96075e-4.
HAND_SUV_FACTOR_PHILIPS_ACTIVITY = 7.40188e-5
#: Uptake of exactly 24 h: decay 2^(-86400 / 6586.2) = 2^(-13.118338) = 1.12457e-4; 370e6 x 1.12457e-4 =
#: 41609 Bq; 75 000 / 41609 = 1.80249.
HAND_SUV_FACTOR_24H = 1.80249


@pytest.fixture(scope="module")
def case():
    return make_phantom(11, "head", ct_matrix=128, n_nodes=2)


@pytest.fixture(scope="module")
def dicom_case(case, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dicom") / "study"
    study = write_dicom_case(case, folder)
    return folder, study


@pytest.fixture(scope="module")
def two_ct_folder(case, dicom_case, tmp_path_factory):
    """The study plus a second CT series (another reconstruction) in the same folder."""
    folder = tmp_path_factory.mktemp("dicom") / "two_ct"
    shutil.copytree(dicom_case[0], folder)
    study = DicomStudy(case.case_id)
    uid = write_ct_series(case.ct, folder, study, number=5, description="CT bone kernel", tag="ct_bone")
    return folder, uid


def test_series_are_found_with_modality_description_and_counts(case, dicom_case):
    folder, study = dicom_case
    found = find_series(folder)
    assert [(s.modality, s.uid, s.n_images) for s in found] == [
        ("CT", study.written["ct"], case.ct.GetDepth()), ("PT", study.written["pet"], case.pet.GetDepth())]


def test_a_folder_is_scanned_once_for_ct_and_pet_and_again_when_its_files_change(dicom_case, tmp_path, monkeypatch):
    import HNTumorSegLib.dicom.series as series

    folder = tmp_path / "study"
    shutil.copytree(dicom_case[0], folder)
    reads = []
    original = series._dcmread
    monkeypatch.setattr(series, "_dcmread", lambda *a, **k: reads.append(k) or original(*a, **k))

    def header_reads():
        return sum(1 for options in reads if options.get("specific_tags"))

    first = series.find_series(folder)
    files = sum(s.n_images for s in first)
    assert header_reads() == files
    read_case(folder, folder)  # the CT and the PET of one folder: no second scan
    assert header_reads() == files and series.find_series(folder) == first
    extra = next(folder.iterdir())
    shutil.copy(extra, folder / "copy_of_a_slice")  # a file added: scanned again, and the duplicate is seen
    again = series.find_series(folder)
    assert header_reads() == 2 * files + 1 and sum(s.n_images for s in again) == files + 1
    (folder / "copy_of_a_slice").unlink()
    data = extra.read_bytes()
    extra.write_bytes(data[:-200])  # a file rewritten (cut short): scanned again
    series.find_series(folder)
    assert header_reads() == 3 * files + 1
    with pytest.raises(InputError, match=re.escape(str(extra))):
        read_case(folder, folder)


def test_ct_series_reads_back_exactly_despite_shuffled_files(case, dicom_case):
    volume = read_series(dicom_case[0], "CT")
    names = [p.name for p in volume.files]
    assert names != sorted(names), "fixture should not be in file-name order"
    assert np.array_equal(sitk.GetArrayFromImage(volume.image), sitk.GetArrayFromImage(case.ct))
    assert np.allclose(volume.image.GetOrigin(), case.ct.GetOrigin(), atol=1e-3)
    assert np.allclose(volume.image.GetSpacing(), case.ct.GetSpacing(), atol=1e-4)
    assert np.allclose(volume.image.GetDirection(), case.ct.GetDirection())
    assert len(set(volume.sop_instance_uids)) == case.ct.GetDepth()


def test_pet_is_suv_after_per_slice_rescale_and_conversion(case, dicom_case):
    folder = dicom_case[0]
    inputs = read_case(folder, folder)
    slopes = {s for s, _ in inputs.pet_dicom.rescale}
    assert len(slopes) > 10, "fixture should carry one slope per slice"
    truth = sitk.GetArrayFromImage(case.pet)
    got = sitk.GetArrayFromImage(inputs.pet)
    assert np.abs(got - truth).max() <= 1e-4 * truth.max()
    assert inputs.suv["suv_factor"] == pytest.approx(HAND_SUV_FACTOR_START, rel=1e-5)
    tags = inputs.suv["tags"]
    assert tags["PatientWeight_kg"] == 75 and tags["RadionuclideTotalDose_Bq"] == 370e6
    assert tags["DecayCorrection"] == "START" and tags["uptake_s"] == 3600
    assert "RadiopharmaceuticalStartDateTime" in tags["injection_source"]
    assert "SeriesDate/SeriesTime" in tags["scan_start_source"]


def test_flipped_phantom_keeps_its_geometry(tmp_path):
    case = make_phantom(12, "head", ct_matrix=64, n_nodes=0, flip_xy=True)
    write_dicom_case(case, tmp_path)
    inputs = read_case(tmp_path, tmp_path)
    assert np.allclose(inputs.ct.GetDirection(), case.ct.GetDirection())
    assert np.allclose(inputs.ct.GetOrigin(), case.ct.GetOrigin(), atol=1e-3)
    assert np.array_equal(sitk.GetArrayFromImage(inputs.ct), sitk.GetArrayFromImage(case.ct))


def test_two_ct_series_is_an_error_that_lists_them(two_ct_folder, dicom_case):
    folder, bone_uid = two_ct_folder
    with pytest.raises(InputError) as err:
        read_case(folder, folder)
    message = str(err.value)
    assert "\n" not in message
    assert "2 CT series" in message and "--ct-series" in message
    assert bone_uid in message and dicom_case[1].written["ct"] in message
    assert '"CT bone kernel"' in message and "images" in message


def test_ct_series_option_picks_one(two_ct_folder):
    folder, bone_uid = two_ct_folder
    inputs = read_case(folder, folder, ct_series=bone_uid)
    assert inputs.series["ct"]["series_instance_uid"] == bone_uid
    assert inputs.series["ct"]["description"] == "CT bone kernel"


def test_unknown_or_wrong_modality_uid_is_an_error(two_ct_folder, dicom_case):
    folder, _ = two_ct_folder
    with pytest.raises(InputError, match="no series with UID 1.2.3; found: .*PT"):
        read_case(folder, folder, ct_series="1.2.3")
    with pytest.raises(InputError, match="is PT, not CT"):
        read_case(folder, folder, ct_series=dicom_case[1].written["pet"])


def test_series_option_with_a_file_is_an_error(tmp_path, case):
    sitk.WriteImage(case.ct, str(tmp_path / "ct.nii.gz"))
    with pytest.raises(InputError, match="--ct-series picks a series in a DICOM folder"):
        read_case(tmp_path / "ct.nii.gz", tmp_path / "ct.nii.gz", ct_series="1.2.3")


def test_missing_slice_and_no_series_are_errors(dicom_case, tmp_path):
    folder = tmp_path / "gap"
    shutil.copytree(dicom_case[0], folder)
    volume = read_series(folder, "CT")
    volume.files[len(volume.files) // 2].unlink()
    with pytest.raises(InputError, match="irregular slice spacing"):
        read_series(folder, "CT")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("not DICOM")
    with pytest.raises(InputError, match="no DICOM series"):
        read_series(tmp_path / "empty", "CT")


# ------------------------------------------------------------------------------ series geometry

def _small_ct_series(folder):
    """A CT series of 5 slices of 8 x 8 at 1 x 1 x 2 mm; (series UID, files in slice order)."""
    image = sitk.GetImageFromArray(np.arange(5 * 8 * 8, dtype=np.int16).reshape(5, 8, 8))
    image.SetSpacing((1.0, 1.0, 2.0))
    image.SetOrigin((-4.0, -4.0, 0.0))
    uid = write_ct_series(image, folder, DicomStudy("geometry"), shuffle=False)
    return uid, sorted(folder.iterdir())


@pytest.mark.parametrize("slope, intercept, dtype", [
    (1, -1024, np.int16),     # the usual CT: whole numbers, rescaled exactly in int32
    (2, -3000, np.int16),     # whole numbers again, another pair, per slice below
    (0.5, -1024.25, np.float32),  # a fraction: rescaled in float64, kept as float
    (40, 0, np.float32),      # whole numbers beyond the int16 range: float, still exact
])
def test_ct_rescale_is_exact_for_whole_and_fractional_factors(tmp_path, slope, intercept, dtype):
    uid, files = _small_ct_series(tmp_path)
    stored = [pydicom.dcmread(f).pixel_array.astype(np.float64) for f in files]
    for k, path in enumerate(files):  # every slice its own pair, as scanners may write
        _edit(path, RescaleSlope=slope * (1 + k % 2), RescaleIntercept=intercept - k)
        stored[k] = stored[k] * (slope * (1 + k % 2)) + (intercept - k)
    image = read_series(tmp_path, "CT").image
    got = sitk.GetArrayFromImage(image)
    assert got.dtype == dtype
    assert np.array_equal(got, np.stack(stored).astype(dtype))


def _edit(path, **changes):
    """Rewrite one slice with some attributes changed."""
    ds = pydicom.dcmread(path)
    for key, value in changes.items():
        setattr(ds, key, value)
    ds.save_as(path)


def _duplicated_file(folder, uid, files):
    shutil.copy(files[2], folder / "S2_0002_copy.dcm")  # a second copy of a slice, as a repeated export leaves
    return (f"{folder / 'S2_0002_copy.dcm'}: SOPInstanceUID {pydicom.dcmread(files[2]).SOPInstanceUID} is also "
            f"that of {files[2]}; each slice of series {uid} must be its own SOP instance")


def _two_instances_at_one_position(folder, uid, files):
    shutil.copy(files[2], folder / "S2_0002_again.dcm")  # the slice acquired again: another SOP instance
    _edit(folder / "S2_0002_again.dcm", SOPInstanceUID=pydicom.uid.generate_uid())
    return f"{folder}: series {uid}: two slices share one position"


def _one_sop_instance_uid_for_two_slices(folder, uid, files):
    _edit(files[3], SOPInstanceUID=pydicom.dcmread(files[1]).SOPInstanceUID)
    return f"{files[3]}: SOPInstanceUID {pydicom.dcmread(files[1]).SOPInstanceUID} is also that of {files[1]}"


def _other_frame_of_reference(folder, uid, files):
    first = pydicom.dcmread(files[0]).FrameOfReferenceUID
    _edit(files[3], FrameOfReferenceUID="1.2.3.4.5")
    return f"{files[3]}: FrameOfReferenceUID 1.2.3.4.5 differs from {first} of {files[0].name}"


def _other_study(folder, uid, files):
    first = pydicom.dcmread(files[0]).StudyInstanceUID
    _edit(files[4], StudyInstanceUID="1.2.3.4.6")
    return f"{files[4]}: StudyInstanceUID 1.2.3.4.6 differs from {first} of {files[0].name}"


def _rotated_slice(folder, uid, files):
    _edit(files[3], ImageOrientationPatient=["0.999848", "0.017452", "0", "-0.017452", "0.999848", "0"])  # 1 degree
    return f"{folder}: series {uid}: slices have differing orientations (S2_0003.dcm)"


def _other_pixel_spacing(folder, uid, files):
    _edit(files[3], PixelSpacing=["1.2", "1.2"])
    return f"{folder}: series {uid}: slices have differing pixel spacings (S2_0003.dcm)"


def _other_size(folder, uid, files):
    ds = pydicom.dcmread(files[3])
    _edit(files[3], Rows=4, PixelData=ds.PixelData[:4 * 8 * 2])
    return f"{folder}: series {uid}: slices have differing sizes (S2_0003.dcm)"


def _gantry_tilt(folder, uid, files):
    for k, path in enumerate(files):  # a 14 degree tilt: each 2 mm slice 0.5 mm further along y, axial planes
        x, y, z = (float(v) for v in pydicom.dcmread(path).ImagePositionPatient)
        _edit(path, ImagePositionPatient=[f"{x:.4f}", f"{y + 0.5 * k:.4f}", f"{z:.4f}"], GantryDetectorTilt="14")
    return f"{folder}: series {uid}: slice positions drift off the slice normal (gantry tilt?)"


def _multi_frame(folder, uid, files):
    ds = pydicom.dcmread(files[2])
    _edit(files[2], NumberOfFrames=2, PixelData=ds.PixelData * 2)  # complete 2-frame pixel data
    return f"{files[2]}: multi-frame image (2 frames); only single-frame CT and PET series are read"


def _no_orientation(folder, uid, files):
    ds = pydicom.dcmread(files[3])
    del ds.ImageOrientationPatient
    ds.save_as(files[3])
    return f"{files[3]}: ImageOrientationPatient is missing; cannot place the slice in space"


def _one_slice(folder, uid, files):
    for path in files[1:]:
        path.unlink()
    return f"{folder}: series {uid}: one slice only; a 3D volume is needed"


@pytest.mark.parametrize("damage", [_duplicated_file, _two_instances_at_one_position,
                                    _one_sop_instance_uid_for_two_slices, _other_frame_of_reference, _other_study,
                                    _rotated_slice, _other_pixel_spacing, _other_size,
                                    _gantry_tilt, _multi_frame, _no_orientation, _one_slice],
                         ids=lambda f: f.__name__.strip("_"))
def test_series_geometry_that_is_not_one_grid_is_a_one_line_error(damage, tmp_path, capsys):
    """A series that is not one regular stack of single-frame slices cannot become one volume; guessing
    (dropping a slice, resampling a tilt) would move every contour, so the read stops and says why."""
    folder = tmp_path / "series"
    folder.mkdir()
    uid, files = _small_ct_series(folder)
    assert read_series(folder, "CT").image.GetSize() == (8, 8, 5), "the series must read before the damage"
    needle = damage(folder, uid, files)
    with pytest.raises(InputError, match=re.escape(needle)) as err:
        read_series(folder, "CT")
    assert str(err.value).startswith(needle) and "\n" not in str(err.value)
    code = main(["preprocess", "--ct", str(folder), "--pet", str(folder), "--out", str(tmp_path / "pre")])
    out = capsys.readouterr().err
    assert code == 2
    assert out.count("\n") == 1 and out.startswith(f"hntumorseg: error: {needle}")
    assert not (tmp_path / "pre").exists()


# ------------------------------------------------------------------------------------------- SUV

def _pet_header(**changes):
    """A PET slice header like the fixture's; keyword=None deletes an attribute."""
    ds = pydicom.Dataset()
    ds.Units, ds.DecayCorrection, ds.CorrectedImage = "BQML", "START", ["ATTN", "DECY"]
    ds.PatientWeight = "75"
    ds.SeriesDate, ds.SeriesTime, ds.AcquisitionDate, ds.AcquisitionTime = "20240305", "103000", "20240305", "103000"
    drug = pydicom.Dataset()
    drug.RadionuclideTotalDose, drug.RadionuclideHalfLife = "370000000", "6586.2"
    drug.RadiopharmaceuticalStartDateTime = "20240305093000"
    ds.RadiopharmaceuticalInformationSequence = [drug]
    for key, value in changes.items():
        target = drug if key.startswith("Radio") else ds
        if value is None:
            delattr(target, key)
        else:
            setattr(target, key, value)
    return ds


def test_suv_factor_matches_the_hand_computation():
    assert suv_conversion([_pet_header()], "PET").factor == pytest.approx(HAND_SUV_FACTOR_START, rel=1e-5)
    assert suv_conversion([_pet_header(DecayCorrection="ADMIN")], "PET").factor == \
        pytest.approx(HAND_SUV_FACTOR_ADMIN, rel=1e-5)
    assert PetAcquisition().suv_factor() == pytest.approx(HAND_SUV_FACTOR_START, rel=1e-5)


def test_injection_time_of_day_only_and_midnight():
    h = _pet_header(RadiopharmaceuticalStartDateTime=None)
    h.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartTime = "093000"
    conv = suv_conversion([h], "PET")
    assert conv.factor == pytest.approx(HAND_SUV_FACTOR_START, rel=1e-5)
    assert "RadiopharmaceuticalStartTime" in conv.tags["injection_source"]
    late = _pet_header(RadiopharmaceuticalStartDateTime=None, SeriesTime="003000", AcquisitionTime="003000")
    late.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartTime = "233000"
    conv = suv_conversion([late], "PET")
    assert conv.tags["uptake_s"] == 3600 and "day before" in conv.tags["injection_source"]


def test_a_time_of_day_injection_after_the_scan_is_not_moved_a_whole_day_back():
    """The evening-before rule is for a scan just after midnight; an injection at 11:30 and a scan at 10:30 of the
    same day contradict each other (23 h of uptake would give an SUV factor 4,000 times too large)."""
    h = _pet_header(RadiopharmaceuticalStartDateTime=None)
    h.RadiopharmaceuticalInformationSequence[0].RadiopharmaceuticalStartTime = "113000"
    with pytest.raises(InputError, match=r"radiopharmaceutical start 2024-03-05T11:30:00 .* -60 min apart"):
        suv_conversion([h], "PET")


@pytest.mark.parametrize("changes,needle", [
    ({"SeriesTime": "10:30"}, None),  # ACR-NEMA separators, still allowed on reading: 10:30, not 10:00
    ({"SeriesDate": "2024.03.05", "AcquisitionDate": "2024.03.05"}, None),
    ({"SeriesTime": "10h30"}, "SeriesDate/SeriesTime (0008,0021)/(0008,0031) is '20240305' and '10h30', not a DICOM"),
    ({"RadiopharmaceuticalStartDateTime": "2024-03-05 09:30"}, "RadiopharmaceuticalStartDateTime (0018,1078) is "
                                                               "'2024-03-05 09:30', not a DICOM date and time"),
    ({"AcquisitionTime": "1030000"}, "AcquisitionDate/AcquisitionTime (0008,0022)/(0008,0032) is"),
])
def test_dates_and_times_are_read_strictly(changes, needle):
    """pydicom's parser reads "10:15" as 10:00 without a word; a wrong time is a wrong decay factor. Separators of
    the old ACR-NEMA forms are dropped; anything else that is not a DICOM date/time is a one-line error."""
    if needle is None:
        assert suv_conversion([_pet_header(**changes)], "PET").factor == pytest.approx(HAND_SUV_FACTOR_START,
                                                                                        rel=1e-5)
    else:
        with pytest.raises(InputError, match=re.escape(needle)) as err:
            suv_conversion([_pet_header(**changes)], "PET")
        assert "\n" not in str(err.value)


@pytest.mark.parametrize("changes,uptake_s", [
    ({"TimezoneOffsetFromUTC": "+0100", "RadiopharmaceuticalStartDateTime": "20240305083000+0000"}, 3600),
    ({"TimezoneOffsetFromUTC": "-0500", "RadiopharmaceuticalStartDateTime": "20240305143000+0000"}, 3600),
    ({"TimezoneOffsetFromUTC": "+0100", "RadiopharmaceuticalStartDateTime": "20240305093000+0100"}, 3600),
    ({"RadiopharmaceuticalStartDateTime": "20240305093000+0000"}, 3600),  # local offset unknown: nothing converted
])
def test_an_injection_time_with_a_utc_offset_is_taken_in_the_local_time_of_the_scan(changes, uptake_s):
    """09:30 CET written as 08:30 UTC (+0000) beside series times in CET (TimezoneOffsetFromUTC +0100) was
    read as 08:30 local: 2 h of uptake instead of 1, an SUV 11% too low."""
    conv = suv_conversion([_pet_header(**changes)], "PET")
    assert conv.tags["uptake_s"] == uptake_s
    assert conv.factor == pytest.approx(HAND_SUV_FACTOR_START, rel=1e-5)


def test_a_malformed_timezone_offset_is_a_one_line_error_when_a_time_needs_it():
    with pytest.raises(InputError, match=re.escape("PET: TimezoneOffsetFromUTC (0008,0201) is '+1:00', not an "
                                                   "offset +HHMM or -HHMM")):
        suv_conversion([_pet_header(TimezoneOffsetFromUTC="+1:00",
                                    RadiopharmaceuticalStartDateTime="20240305083000+0000")], "PET")
    assert suv_conversion([_pet_header(TimezoneOffsetFromUTC="+1:00")], "PET").tags["uptake_s"] == 3600


def test_post_processed_series_time_falls_back_to_the_first_acquisition():
    h = _pet_header(SeriesTime="120000")  # series re-created later; acquisition stayed at 10:30
    conv = suv_conversion([h], "PET")
    assert conv.factor == pytest.approx(HAND_SUV_FACTOR_START, rel=1e-5)
    assert "AcquisitionTime" in conv.tags["scan_start_source"]


@pytest.mark.parametrize("changes,needle", [
    ({"PatientWeight": None}, "PatientWeight (0010,1030) is missing"),
    ({"PatientWeight": "0"}, "PatientWeight (0010,1030) is 0 kg, implausible"),
    ({"RadionuclideTotalDose": "370"}, "RadionuclideTotalDose (0018,1074) is 370 Bq, implausible"),
    ({"RadionuclideHalfLife": None}, "RadionuclideHalfLife (0018,1075) is missing"),
    ({"RadiopharmaceuticalStartDateTime": None}, "RadiopharmaceuticalStartTime (0018,1072) is missing"),
    ({"RadiopharmaceuticalStartDateTime": "20240305113000"}, "implausible"),
    ({"Units": None}, "Units (0054,1001) is missing"),
    ({"Units": "PROPCNTS"}, "Units (0054,1001) is 'PROPCNTS'"),
    ({"DecayCorrection": "NONE"}, "DecayCorrection (0054,1102) is 'NONE'"),
    ({"CorrectedImage": ["DECY"]}, "not attenuation-corrected"),
    ({"Units": "CNTS"}, "Philips SUV scale factor (7053,1000) is missing"),
])
def test_missing_or_implausible_tags_are_one_line_errors(changes, needle):
    with pytest.raises(InputError, match=re.escape(needle)) as err:
        suv_conversion([_pet_header(**changes)], "PET")
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("vr,value", [("DT", "20240305101500"), ("TM", "101500")], ids=["datetime", "time-of-day"])
def test_ge_private_scan_time_is_the_scan_start_of_a_post_processed_series(vr, value):
    """A GE series re-created after the scan gets a later series time; GE keeps the true scan start in
    (0009,100D), which beats the first acquisition time (here 10:30, 15 min after it)."""
    h = _pet_header(SeriesTime="120000")
    h.private_block(0x0009, "GEMS_PETD_01", create=True).add_new(0x0D, vr, value)
    conv = suv_conversion([h], "PET")
    assert conv.factor == pytest.approx(HAND_SUV_FACTOR_GE, rel=1e-5)
    assert conv.tags["uptake_s"] == 2700 and "(0009,100D)" in conv.tags["scan_start_source"]
    assert conv.tags["scan_start"] == "2024-03-05T10:15:00"
    plain = _pet_header()  # series time not after the acquisition: the series time stays the scan start
    plain.private_block(0x0009, "GEMS_PETD_01", create=True).add_new(0x0D, vr, value)
    conv = suv_conversion([plain], "PET")
    assert conv.factor == pytest.approx(HAND_SUV_FACTOR_START, rel=1e-5)
    assert "SeriesDate/SeriesTime" in conv.tags["scan_start_source"]


def test_philips_activity_factor_turns_counts_into_bqml_then_suv():
    """Without the SUV scale factor (7053,1000), counts x (7053,1009) are Bq/mL and the BQML rule applies."""
    h = _pet_header(Units="CNTS")
    h.private_block(0x7053, "Philips PET Private Group", create=True).add_new(0x09, "DS", "0.25")
    conv = suv_conversion([h], "PET")
    assert conv.factor == pytest.approx(HAND_SUV_FACTOR_PHILIPS_ACTIVITY, rel=1e-5)
    assert conv.units == "CNTS" and "(7053,1009)" in conv.method
    assert conv.tags["PhilipsActivityConcentrationScaleFactor_7053_1009"] == 0.25
    assert conv.tags["uptake_s"] == 3600
    h = _pet_header(Units="CNTS", PatientWeight=None)  # the BQML tags are still needed
    h.private_block(0x7053, "Philips PET Private Group", create=True).add_new(0x09, "DS", "0.25")
    with pytest.raises(InputError, match=re.escape("PatientWeight (0010,1030) is missing")):
        suv_conversion([h], "PET")


def test_philips_counts_without_the_suv_factor_read_back_as_suv(tmp_path):
    """End to end: a Philips export lacking (7053,1000) in every slice still reads back as the phantom's SUV."""
    case = make_phantom(12, "head", ct_matrix=64, n_nodes=0)
    study = write_dicom_case(case, tmp_path, PetAcquisition(units="CNTS"))
    for path in read_series(tmp_path, "PT").files:
        ds = pydicom.dcmread(path)
        del ds[ds.private_block(0x7053, "Philips PET Private Group").get_tag(0x00)]
        ds.save_as(path)
    inputs = read_case(tmp_path, tmp_path, pet_series=study.written["pet"])
    assert "(7053,1009)" in inputs.suv["method"]
    assert inputs.suv["suv_factor"] == pytest.approx(HAND_SUV_FACTOR_PHILIPS_ACTIVITY, rel=1e-5)
    truth = sitk.GetArrayFromImage(case.pet)
    assert np.abs(sitk.GetArrayFromImage(inputs.pet) - truth).max() <= 1e-4 * truth.max()


def test_philips_suv_factor_must_be_one_positive_value():
    """One factor per series: slices that disagree, or a factor of zero, give no SUV to trust."""
    a, b = _pet_header(Units="CNTS"), _pet_header(Units="CNTS")
    a.private_block(0x7053, "Philips PET Private Group", create=True).add_new(0x00, "DS", "0.0002")
    b.private_block(0x7053, "Philips PET Private Group", create=True).add_new(0x00, "DS", "0.0003")
    with pytest.raises(InputError, match=re.escape("Philips SUV scale factor (7053,1000) differs between slices")):
        suv_conversion([a, b], "PET")
    assert suv_conversion([a, a], "PET").factor == pytest.approx(0.0002)
    zero = _pet_header(Units="CNTS")
    zero.private_block(0x7053, "Philips PET Private Group", create=True).add_new(0x00, "DS", "0")
    with pytest.raises(InputError, match=re.escape("Philips SUV scale factor (7053,1000) is 0, not positive")):
        suv_conversion([zero], "PET")


def test_units_gml_is_taken_as_suv_without_dose_tags():
    """Units GML: the scanner already wrote SUVbw, so weight, dose and decay tags are not needed."""
    h = _pet_header(Units="GML", PatientWeight=None, DecayCorrection=None, RadionuclideTotalDose=None)
    conv = suv_conversion([h], "PET")
    assert conv.factor == 1.0 and conv.units == "GML" and conv.tags == {"Units": "GML"}
    assert conv.to_dict()["suv_factor_unit"] == "SUV per g/mL"


@pytest.mark.parametrize("changes,needle", [
    ({"PatientWeight": "0.9"}, "PatientWeight (0010,1030) is 0.9 kg, implausible (expected 1 to 500 kg)"),
    ({"PatientWeight": "501"}, "PatientWeight (0010,1030) is 501 kg, implausible (expected 1 to 500 kg)"),
    ({"RadionuclideTotalDose": "999999"},
     "RadionuclideTotalDose (0018,1074) is 999999 Bq, implausible (expected 1e+06 to 5e+10 Bq)"),
    ({"RadionuclideTotalDose": "5.1e10"},
     "RadionuclideTotalDose (0018,1074) is 5.1e+10 Bq, implausible (expected 1e+06 to 5e+10 Bq)"),
    ({"RadionuclideHalfLife": "59"}, "RadionuclideHalfLife (0018,1075) is 59 s, implausible (expected 60 to 1e+07 s)"),
    ({"RadionuclideHalfLife": "1.1e7"},
     "RadionuclideHalfLife (0018,1075) is 1.1e+07 s, implausible (expected 60 to 1e+07 s)"),
    ({"RadiopharmaceuticalStartDateTime": "20240305103100"}, "are -1 min apart, implausible"),
    ({"RadiopharmaceuticalStartDateTime": "20240304102900"}, "are 1441 min apart, implausible"),
])
def test_each_plausibility_bound_is_enforced(changes, needle):
    """Just outside each bound (both sides) is refused: such a tag is more likely wrong or in other units."""
    with pytest.raises(InputError, match=re.escape(needle)) as err:
        suv_conversion([_pet_header(**changes)], "PET")
    assert "\n" not in str(err.value)


def test_non_numeric_weight_is_an_error_naming_the_tag():
    """A weight written with its unit is not guessed at."""
    h = _pet_header()
    h.add_new(0x00101030, "LO", "75 kg")  # PatientWeight with a VR that lets the text in
    with pytest.raises(InputError, match=re.escape("PatientWeight (0010,1030) is '75 kg', not a number")):
        suv_conversion([h], "PET")


@pytest.mark.parametrize("changes,factor", [
    ({"PatientWeight": "1", "DecayCorrection": "ADMIN"}, 1000 / 370e6),
    ({"PatientWeight": "500", "DecayCorrection": "ADMIN"}, 500_000 / 370e6),
    ({"RadionuclideTotalDose": "1e6", "DecayCorrection": "ADMIN"}, 75_000 / 1e6),
    ({"RadionuclideTotalDose": "5e10", "DecayCorrection": "ADMIN"}, 75_000 / 5e10),
    ({"RadionuclideHalfLife": "60", "DecayCorrection": "ADMIN"}, HAND_SUV_FACTOR_ADMIN),
    ({"RadionuclideHalfLife": "1e7", "DecayCorrection": "ADMIN"}, HAND_SUV_FACTOR_ADMIN),
    ({"RadiopharmaceuticalStartDateTime": "20240305103000"}, HAND_SUV_FACTOR_ADMIN),  # uptake 0: no decay
    ({"RadiopharmaceuticalStartDateTime": "20240304103000"}, HAND_SUV_FACTOR_24H),
])
def test_values_on_the_plausibility_bounds_are_accepted(changes, factor):
    """The bounds are inclusive: a true 500 kg patient or a 24 h uptake still gets its SUV."""
    assert suv_conversion([_pet_header(**changes)], "PET").factor == pytest.approx(factor, rel=1e-5)


def test_philips_counts_use_the_private_suv_factor(case, tmp_path):
    write_dicom_case(case, tmp_path, PetAcquisition(units="CNTS"))
    inputs = read_case(tmp_path, tmp_path)
    assert inputs.suv["units"] == "CNTS" and "7053,1000" in inputs.suv["method"]
    truth = sitk.GetArrayFromImage(case.pet)
    assert np.abs(sitk.GetArrayFromImage(inputs.pet) - truth).max() <= 1e-4 * truth.max()


def test_pet_units_suv_takes_values_as_they_are(dicom_case):
    folder = dicom_case[0]
    raw = sitk.GetArrayFromImage(read_series(folder, "PT").image)
    inputs = read_case(folder, folder, pet_units="suv")
    assert inputs.suv["suv_factor"] == 1.0 and "--pet-units suv" in inputs.suv["method"]
    assert np.array_equal(sitk.GetArrayFromImage(inputs.pet), raw)


# ------------------------------------------------------------------------------------------- CLI

def test_preprocess_records_suv_factor_and_series_in_provenance(dicom_case, tmp_path, capsys):
    folder, study = dicom_case
    code = main(["preprocess", "--ct", str(folder), "--pet", str(folder), "--out", str(tmp_path / "pre")])
    assert code == 0, capsys.readouterr().err
    prov = json.loads((tmp_path / "pre" / "provenance.json").read_text())
    assert prov["suv"]["suv_factor"] == pytest.approx(HAND_SUV_FACTOR_START, rel=1e-5)
    assert prov["suv"]["tags"]["RadionuclideHalfLife_s"] == 6586.2
    assert prov["input_series"]["ct"]["series_instance_uid"] == study.written["ct"]
    assert prov["input_series"]["pet"]["series_instance_uid"] == study.written["pet"]


def test_cli_ambiguity_is_one_line_with_status_2(two_ct_folder, tmp_path, capsys):
    folder, bone_uid = two_ct_folder
    code = main(["preprocess", "--ct", str(folder), "--pet", str(folder), "--out", str(tmp_path / "pre")])
    err = capsys.readouterr().err
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("hntumorseg: error: ") and bone_uid in err
    assert not (tmp_path / "pre").exists()


def test_fixture_series_are_valid_iods_for_dciodvfy(dicom_case):
    dciodvfy = shutil.which("dciodvfy")
    if dciodvfy is None:
        pytest.skip("dciodvfy (Debian package dicom3tools) is not installed; .ci/run installs it")
    folder = dicom_case[0]
    for modality in ("CT", "PT"):
        path = read_series(folder, modality).files[0]
        out = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True, encoding="utf-8")
        errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{modality}: {errors}"


def _jpeg_lossless_copy(src, dst):
    """Each file of ``src`` with its pixel data re-encoded as JPEG Lossless (process 14, SV1), every other
    element kept (the PET's radiopharmaceutical sequence included). The code stream comes from GDCM
    (SimpleITK's writer, given the stored values with an identity rescale); pydicom cannot decode it."""
    from pydicom.uid import JPEGLosslessSV1

    dst.mkdir(parents=True)
    writer = sitk.ImageFileWriter()
    writer.SetImageIO("GDCMImageIO")
    writer.SetUseCompression(True)
    writer.SetCompressor("JPEG")
    for path in sorted(src.iterdir()):
        ds = pydicom.dcmread(path)
        stored = sitk.GetImageFromArray(ds.pixel_array)
        stored.SetMetaData("0028|1052", "0")
        stored.SetMetaData("0028|1053", "1")
        writer.SetFileName(str(dst / "stream.dcm"))
        writer.Execute(stored)
        encoded = pydicom.dcmread(dst / "stream.dcm")
        assert encoded.file_meta.TransferSyntaxUID == JPEGLosslessSV1
        ds.file_meta.TransferSyntaxUID = JPEGLosslessSV1
        ds.PixelData = encoded.PixelData
        ds["PixelData"].VR = "OB"
        ds["PixelData"].is_undefined_length = True
        ds.save_as(dst / path.name, enforce_file_format=True)
    (dst / "stream.dcm").unlink()


def test_jpeg_lossless_series_read_exactly_as_uncompressed_ones(case, dicom_case, tmp_path):
    """As many PACS export them: pydicom has no decoder for JPEG Lossless here, GDCM (in SimpleITK) decodes it,
    and CT (HU) and PET (SUV, per-slice rescale) come out equal to the uncompressed series."""
    folder, packed_folder = dicom_case[0], tmp_path / "study"
    _jpeg_lossless_copy(folder, packed_folder)
    with pytest.raises(Exception):
        pydicom.dcmread(next(packed_folder.iterdir())).pixel_array  # the fallback is what reads it
    plain, packed = read_case(folder, folder), read_case(packed_folder, packed_folder)
    assert np.array_equal(sitk.GetArrayFromImage(packed.ct), sitk.GetArrayFromImage(plain.ct))
    assert np.array_equal(sitk.GetArrayFromImage(packed.pet), sitk.GetArrayFromImage(plain.pet))
    assert packed.suv["suv_factor"] == plain.suv["suv_factor"]


def test_slices_written_without_the_preamble_are_read_not_dropped(case, dicom_case, tmp_path):
    """A CT slice without the 128-byte preamble and ``DICM`` (its file meta group kept), and a PET slice that
    is a bare data set (no meta group, implicit VR): the series used to lose them without a word."""
    from pydicom.filebase import DicomBytesIO
    from pydicom.filewriter import write_dataset

    folder = tmp_path / "study"
    shutil.copytree(dicom_case[0], folder)
    by_modality = {}
    for path in sorted(folder.iterdir()):
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        by_modality.setdefault(ds.Modality, []).append((float(ds.ImagePositionPatient[2]), path))
    top_ct = max(by_modality["CT"])[1]
    top_ct.write_bytes(top_ct.read_bytes()[132:])
    bare_pet = max(by_modality["PT"])[1]
    stream = DicomBytesIO()
    stream.is_little_endian, stream.is_implicit_VR = True, True
    write_dataset(stream, pydicom.dcmread(bare_pet))
    bare_pet.write_bytes(stream.getvalue())
    plain, stripped = read_case(dicom_case[0], dicom_case[0]), read_case(folder, folder)
    assert stripped.ct.GetSize() == plain.ct.GetSize() and stripped.pet.GetSize() == plain.pet.GetSize()
    assert np.array_equal(sitk.GetArrayFromImage(stripped.ct), sitk.GetArrayFromImage(plain.ct))
    assert np.array_equal(sitk.GetArrayFromImage(stripped.pet), sitk.GetArrayFromImage(plain.pet))


def test_positions_written_to_a_tenth_of_a_millimetre_are_one_grid_and_a_gap_near_the_end_is_not(case, dicom_case,
                                                                                                 tmp_path):
    """The PET's 3.27 mm steps written to 0.1 mm come out as 3.2 and 3.3: one regular grid, placed within
    0.05 mm of the exact one, the same voxels. A slice missing next to the last one is still refused."""
    rounded = tmp_path / "rounded"
    shutil.copytree(dicom_case[0], rounded)
    for path in rounded.iterdir():
        ds = pydicom.dcmread(path)
        ds.ImagePositionPatient = [f"{float(v):.1f}" for v in ds.ImagePositionPatient]
        ds.save_as(path)
    exact, coarse = read_series(dicom_case[0], "PT"), read_series(rounded, "PT")
    assert np.array_equal(sitk.GetArrayFromImage(coarse.image), sitk.GetArrayFromImage(exact.image))
    assert np.allclose(coarse.image.GetOrigin(), exact.image.GetOrigin(), atol=0.05 + 1e-9)
    assert coarse.image.GetSpacing()[2] == pytest.approx(exact.image.GetSpacing()[2], abs=0.1 / 50)
    gap = tmp_path / "gap_near_end"
    shutil.copytree(dicom_case[0], gap)
    files = read_series(gap, "CT").files  # in slice order
    files[-2].unlink()
    with pytest.raises(InputError, match="irregular slice spacing"):
        read_series(gap, "CT")


def test_a_linked_folder_in_the_study_is_read_and_a_link_loop_is_walked_once(dicom_case, tmp_path):
    """A study assembled from links (half its CT slices in a linked folder) lost those slices without a word, and
    the CT read shorter. A link back to a folder above is walked once (no endless walk, no slice twice)."""
    study, elsewhere = tmp_path / "study", tmp_path / "elsewhere"
    shutil.copytree(dicom_case[0], study)
    elsewhere.mkdir()
    files = read_series(study, "CT").files  # in slice order
    for path in files[len(files) // 2:]:
        path.rename(elsewhere / path.name)
    (study / "part2").symlink_to(elsewhere)
    (elsewhere / "back").symlink_to(study)
    volume = read_series(study, "CT")
    assert len(volume.files) == len(files)
    assert np.array_equal(sitk.GetArrayFromImage(volume.image),
                          sitk.GetArrayFromImage(read_series(dicom_case[0], "CT").image))


def test_a_localizer_beside_the_ct_is_not_a_candidate_but_is_listed_when_nothing_else_is(dicom_case, tmp_path):
    """The topogram (ImageType LOCALIZER, modality CT) that most CT exports hold made ``segment`` ask for
    --ct-series; it is passed over, by the rule batch counts series with, and still named when it is all
    there is."""
    from HNTumorSegLib.dicom.series import candidate_series

    folder = tmp_path / "study"
    shutil.copytree(dicom_case[0], folder)
    ct = read_series(folder, "CT")
    scout_uid = pydicom.uid.generate_uid()
    for k, path in enumerate(ct.files[:2]):  # frontal and lateral views, one image each
        ds = pydicom.dcmread(path)
        ds.SeriesInstanceUID, ds.SeriesDescription = scout_uid, "Topogram 0.6 T20s"
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LOCALIZER"]
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = pydicom.uid.generate_uid()
        ds.save_as(folder / f"scout{k}.dcm")
    found = find_series(folder)
    assert [s.uid for s in candidate_series(found, "CT")] == [ct.series.uid]
    assert read_series(folder, "CT").series.uid == ct.series.uid
    assert read_case(folder, folder).series["ct"]["series_instance_uid"] == ct.series.uid
    for path in ct.files:
        path.unlink()
    with pytest.raises(InputError, match=f"no CT series here; found: .*{scout_uid} "
                                         r"\(CT, \"Topogram 0.6 T20s\", 2 images, localizer\)"):
        read_series(folder, "CT")


def test_a_slice_no_decoder_reads_is_one_line_with_the_reason_and_the_transfer_syntax(tmp_path, capfd):
    """A JPEG 2000 stream labelled JPEG Extended: GDCM's libjpeg printed lines of its own to stderr, and the
    error stopped at "... raised by all available plugins:", its reason on the next line. One line now, naming
    the transfer syntax, the reason and the pydicom plugins that might decode it; nothing else on stderr."""
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGExtended12Bit

    folder = tmp_path / "series"
    folder.mkdir()
    uid, files = _small_ct_series(folder)
    ds = pydicom.dcmread(files[2])
    ds.file_meta.TransferSyntaxUID = JPEGExtended12Bit
    ds.BitsStored, ds.HighBit = 12, 11
    ds.PixelData = encapsulate([b"\xff\x4f\xff\x51" + bytes(60)])
    ds["PixelData"].VR = "OB"
    ds.save_as(files[2], enforce_file_format=True)
    capfd.readouterr()
    code = main(["preprocess", "--ct", str(folder), "--pet", str(folder), "--out", str(tmp_path / "pre")])
    err = capfd.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"hntumorseg: error: {files[2]}: cannot decode the pixel data, neither with pydicom nor "
                          f"with GDCM (JPEG Extended (Process 2 and 4) ({JPEGExtended12Bit}): ")
    assert "all available plugins: pillow: " in err and "pylibjpeg" in err
    assert not (tmp_path / "pre").exists()


def test_a_dicomdir_given_as_the_ct_is_named_as_one_and_its_folder_suggested(dicom_case, tmp_path, capsys):
    """The index file of a CD or USB export given as the CT was called an image without its pixels
    (truncated?)."""
    from pydicom.fileset import FileSet

    media = tmp_path / "media"
    fileset = FileSet()
    for path in read_series(dicom_case[0], "CT").files[:3]:
        fileset.add(path)
    fileset.write(media)
    dicomdir = media / "DICOMDIR"
    code = main(["preprocess", "--ct", str(dicomdir), "--pet", str(dicom_case[0]), "--out", str(tmp_path / "pre")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"hntumorseg: error: {dicomdir}: is a DICOMDIR, the index of a DICOM medium, not an image; "
                          f"give the folder that holds the CT series ({media}) instead")
    assert not (tmp_path / "pre").exists()


def test_an_empty_file_without_a_suffix_beside_named_slices_is_ignored_but_not_an_empty_slice(dicom_case, tmp_path):
    """A LOCKFILE or VERSION marker (0 bytes, no suffix) made the whole study unreadable as an interrupted copy.
    It cannot be a DICOM object and is ignored beside slices named *.dcm, and beside slices named without a
    suffix (as on a DICOMDIR medium) when its name is not shaped like theirs; an empty *.dcm, or an empty file
    named like the bare slices, may be a lost slice and is still refused."""
    named, bare = tmp_path / "named", tmp_path / "bare"  # slices named *.dcm, and without a suffix
    named.mkdir()
    shutil.copytree(dicom_case[0], bare)
    for path in dicom_case[0].iterdir():
        shutil.copy(path, named / f"{path.name}.dcm")
    for folder in (named, bare):
        (folder / "LOCKFILE").write_bytes(b"")
    assert read_series(named, "CT").image.GetSize() == read_series(dicom_case[0], "CT").image.GetSize()
    assert read_series(bare, "CT").image.GetSize() == read_series(dicom_case[0], "CT").image.GetSize()
    lost = bare / ("S9" + next(p.name for p in bare.iterdir() if p.name != "LOCKFILE")[2:])  # shaped like a slice
    lost.write_bytes(b"")
    with pytest.raises(InputError, match=re.escape(f"{lost}: file is empty")):
        read_series(bare, "CT")
    (named / "S9_0000.dcm").write_bytes(b"")
    with pytest.raises(InputError, match=re.escape(f"{named / 'S9_0000.dcm'}: file is empty")):
        read_series(named, "CT")
