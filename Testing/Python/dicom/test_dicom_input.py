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

pydicom = pytest.importorskip("pydicom")

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
        out = subprocess.run([dciodvfy, str(path)], capture_output=True, text=True)
        errors = [line for line in (out.stdout + out.stderr).splitlines() if line.startswith("Error")]
        assert not errors, f"{modality}: {errors}"
