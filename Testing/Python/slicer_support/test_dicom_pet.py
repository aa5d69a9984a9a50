"""SUVbw for a PET loaded with Slicer's DICOM module: the same factor, from the same tags, as the CLI.

The module hands over the files its DICOM database holds for the volume's instance UIDs; from there
on it is this library code. The fixtures are phantom PET series written in Bq/mL (and Philips counts)
with known acquisition tags.
"""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

import pydicom

from HNTumorSegLib.cases.inputs import read_pet
from HNTumorSegLib.dicom.series import read_series
from HNTumorSegLib.errors import InputError
from HNTumorSegLib.phantom import make_phantom
from HNTumorSegLib.phantom.dicom import DicomStudy, PetAcquisition, write_pet_series
from HNTumorSegLib.slicer_support.dicom_pet import SLICER_HINT, dicom_pairing_problem, dicom_pet_suv, suv_units_problem
from HNTumorSegLib.slicer_support.suv_check import looks_like_activity


@pytest.fixture(scope="module")
def phantom():
    return make_phantom(11, "head", ct_matrix=128, n_nodes=1)


def pet_series(phantom, folder, acquisition=PetAcquisition()):
    write_pet_series(phantom.pet, folder, DicomStudy(phantom.case_id), acquisition)
    files = sorted(folder.iterdir())
    activity = sitk.GetArrayFromImage(read_series(folder, "PT").image)
    return files, activity


@pytest.mark.parametrize("units", ["BQML", "CNTS"])
def test_factor_equals_the_command_line_and_the_acquisition(phantom, tmp_path, units):
    acquisition = PetAcquisition(units=units)
    files, activity = pet_series(phantom, tmp_path, acquisition)
    suv = dicom_pet_suv(files, 0, activity, "PET 'pt'")
    _, _, cli = read_pet(tmp_path)
    assert suv.applies and suv.factor == cli["suv_factor"] and suv.series_uid and suv.files == len(files)
    if units == "BQML":
        assert suv.factor == pytest.approx(acquisition.suv_factor(), rel=1e-9)
    converted = activity * suv.factor
    np.testing.assert_allclose(converted.max(), sitk.GetArrayFromImage(phantom.pet).max(), rtol=1e-3)
    line = suv.describe("PET 'pt'")
    assert "factor" in line and "\n" not in line
    if units == "BQML":
        assert "weight 75 kg" in line and "decay correction START" in line


def test_values_already_in_suv_are_left_alone(phantom, tmp_path):
    files, _ = pet_series(phantom, tmp_path)
    suv = dicom_pet_suv(files, 0, sitk.GetArrayFromImage(phantom.pet), "PET 'normalised'")
    assert not suv.applies and suv.factor == 1.0 and "already" in suv.describe("PET 'normalised'")
    assert not looks_like_activity(sitk.GetArrayFromImage(phantom.pet))
    assert looks_like_activity(sitk.GetArrayFromImage(phantom.pet) / PetAcquisition().suv_factor())


def test_a_rewritten_file_is_read_again(phantom, tmp_path):
    # The headers are cached (the panel checks its inputs on every change): an edited series must not
    # keep its old factor.
    files, activity = pet_series(phantom, tmp_path)
    before = dicom_pet_suv(files, 0, activity, "PET 'pt'").factor
    assert dicom_pet_suv(files, 0, activity, "PET 'pt'").factor == before
    for path in files:
        ds = pydicom.dcmread(path)
        ds.PatientWeight = "150"
        ds.save_as(path)
    assert dicom_pet_suv(files, 0, activity, "PET 'pt'").factor == pytest.approx(2 * before, rel=1e-9)


def test_a_missing_tag_is_named_with_what_to_do_in_slicer(phantom, tmp_path):
    files, activity = pet_series(phantom, tmp_path)
    for path in files:
        ds = pydicom.dcmread(path)
        del ds.PatientWeight
        ds.save_as(path)
    with pytest.raises(InputError) as err:
        dicom_pet_suv(files, 0, activity, "PET 'pt'")
    message = str(err.value)
    assert "PatientWeight (0010,1030) is missing" in message and SLICER_HINT in message
    assert "--pet-units" not in message and "\n" not in message


def test_instances_missing_from_the_database_and_foreign_files_are_refused(phantom, tmp_path):
    files, activity = pet_series(phantom, tmp_path)
    with pytest.raises(InputError, match=r"3 of \d+ of its DICOM instances are not in the DICOM database"):
        dicom_pet_suv(files[3:], 3, activity, "PET 'pt'")
    ct_like = pydicom.dcmread(files[0])
    ct_like.Modality = "CT"
    ct_like.save_as(files[0])
    with pytest.raises(InputError, match="modality CT, PT, not PT"):
        dicom_pet_suv(files, 0, activity, "PET 'pt'")
    (tmp_path / "junk.dcm").write_bytes(b"not dicom at all")
    with pytest.raises(InputError, match="cannot read its DICOM file .*junk.dcm"):
        dicom_pet_suv([tmp_path / "junk.dcm"], 0, activity, "PET 'pt'")


def test_a_file_that_now_holds_another_instance_is_refused(phantom, tmp_path):
    """A linked import whose files were written over by a later export of another patient (same file names):
    the database still gives those paths for the loaded PET's instance UIDs; their weight and dose are not
    the loaded patient's."""
    files, activity = pet_series(phantom, tmp_path)
    uids = [str(pydicom.dcmread(path, stop_before_pixels=True).SOPInstanceUID) for path in files]
    assert dicom_pet_suv(files, 0, activity, "PET 'pt'", uids).applies
    other = pydicom.dcmread(files[2])
    other.SOPInstanceUID = pydicom.uid.generate_uid()
    other.PatientWeight = "90"
    other.save_as(files[2])
    with pytest.raises(InputError, match=rf"its DICOM file .*{files[2].name} now holds instance .*not {uids[2]}"):
        dicom_pet_suv(files, 0, activity, "PET 'pt'", uids)


@pytest.mark.parametrize("units, refused", [("{SUVbw}g/ml", False), ("{SUVlbm}g/ml", True), ("{SUVbsa}cm2/ml", True),
                                            ("{SUVibw}g/ml", True), ("BQML", False), (None, False)])
def test_an_suv_of_another_normalisation_is_refused(units, refused):
    problem = suv_units_problem(units, "PET 'sul'")
    assert (problem is not None) == refused
    if refused:
        assert problem.startswith("PET 'sul' is in SUV") and "not SUVbw" in problem and "\n" not in problem


def test_a_ct_and_pet_of_other_patients_or_frames_are_refused_as_the_command_line_refuses(phantom, tmp_path):
    from HNTumorSegLib.phantom.dicom import write_ct_series

    files, _ = pet_series(phantom, tmp_path / "pet")
    write_ct_series(phantom.ct, tmp_path / "ct", DicomStudy(phantom.case_id))
    ct_file = sorted((tmp_path / "ct").iterdir())[0]
    assert dicom_pairing_problem(ct_file, files[0], "the CT 'ct'", "PET 'pt'") is None
    write_ct_series(phantom.ct, tmp_path / "other", DicomStudy("SOMEONE-ELSE"))
    other = sorted((tmp_path / "other").iterdir())[0]
    problem = dicom_pairing_problem(other, files[0], "the CT 'ct'", "PET 'pt'")
    assert problem.startswith("PET 'pt' is of PatientID") and "the CT 'ct'" in problem
    write_ct_series(phantom.ct, tmp_path / "frame", DicomStudy(phantom.case_id,
                                                                 frame_of_reference_uid="1.2.826.0.1.3680043.2.1125.99"))
    frame = sorted((tmp_path / "frame").iterdir())[0]
    assert "FrameOfReferenceUID" in dicom_pairing_problem(frame, files[0], "the CT 'ct'", "PET 'pt'")
