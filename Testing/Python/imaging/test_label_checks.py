"""label_checks: how a label with values outside {0, 1, 2} is reported."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from HNTumorSegLib.imaging.label_checks import label_values_problem


def _label(values, dtype) -> sitk.Image:
    array = np.zeros((4, 4, 4), dtype=dtype)
    array.flat[: len(values)] = values
    return sitk.GetImageFromArray(array)


@pytest.mark.parametrize("values,dtype,shown", [
    ([1.0000001], np.float64, "label values 1.0000001 outside"),
    ([1.0000001], np.float32, "label values 1.0000001 outside"),
    ([2.5, 1.999], np.float32, "label values 1.999, 2.5 outside"),
    ([np.nan], np.float32, "label values nan outside"),
    ([3.0, 255.0], np.float32, "label values 3, 255 outside"),
    ([3, 255], np.uint8, "label values 3, 255 outside"),
    ([-1], np.int16, "label values -1 outside"),
    ([1e30], np.float64, "label values 1e+30 outside"),
])
def test_a_value_that_is_not_a_whole_number_shows_as_one(values, dtype, shown):
    """A float label of 1.0000001 was reported as "label values 1 outside {0, 1, 2}" (f"{v:g}" keeps 6 digits)."""
    problem = label_values_problem(_label(values, dtype), "lab.nrrd")
    assert problem is not None and problem.startswith("lab.nrrd: ") and shown in problem
    assert problem.endswith(f"({len(values)} voxels)")


def test_labels_of_0_1_2_in_any_type_pass():
    for dtype in (np.uint8, np.int16, np.float32, np.float64):
        assert label_values_problem(_label([0, 1, 2], dtype), "lab.nrrd") is None


def test_at_most_five_values_are_shown():
    problem = label_values_problem(_label([3, 4, 5, 6, 7, 8], np.uint8), "lab.nrrd")
    assert "label values 3, 4, 5, 6, 7, ... outside" in problem
