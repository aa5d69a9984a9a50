"""Slicer scene geometry (RAS, IJK-to-RAS, parent transforms) to SimpleITK (LPS) and back."""

from __future__ import annotations

import numpy as np
import pytest

from HNTumorSegLib.errors import InputError
from HNTumorSegLib.imaging.geometry import Geometry
from HNTumorSegLib.pipeline.preprocess import preprocess
from HNTumorSegLib.slicer_support.scene_geometry import (RAS_TO_LPS, analysis_window_box, geometry_from_ijk_to_ras, grid_box,
                                                         ijk_to_ras_from_geometry, image_from_volume_array, world_ijk_to_ras)

from conftest import tiny_ct_pet


def rotation(axis, degrees):
    a = np.radians(degrees)
    c, s = np.cos(a), np.sin(a)
    i, j = [k for k in range(3) if k != axis]
    r = np.eye(3)
    r[i, i], r[i, j], r[j, i], r[j, j] = c, -s, s, c
    return r


def ijk_to_ras(spacing=(0.9, 0.8, 3.0), origin=(120.0, -80.0, -300.0), rot=np.eye(3)):
    m = np.eye(4)
    m[:3, :3] = rot @ np.diag(spacing)
    m[:3, 3] = origin
    return m


def ras_of_index(m, ijk):
    return (m @ np.array([*ijk, 1.0]))[:3]


def test_voxels_land_where_slicer_shows_them():
    # An axial CT as Slicer loads it: IJK-to-RAS with flipped x and y (LPS storage), rotated a little.
    m = ijk_to_ras(rot=rotation(2, 7.0) @ np.diag([-1.0, -1.0, 1.0]))
    array = np.arange(4 * 5 * 6, dtype=np.int16).reshape(4, 5, 6)  # (k, j, i)
    image = image_from_volume_array(array, m)
    assert image.GetSize() == (6, 5, 4)
    for ijk in [(0, 0, 0), (5, 4, 3), (2, 3, 1)]:
        lps = np.array(image.TransformIndexToPhysicalPoint([int(v) for v in ijk]))
        np.testing.assert_allclose(RAS_TO_LPS @ lps, ras_of_index(m, ijk), atol=1e-9)
        assert image[ijk] == array[ijk[2], ijk[1], ijk[0]]


def test_parent_transform_is_applied_to_world_coordinates():
    m = ijk_to_ras()
    parent = np.eye(4)
    parent[:3, :3] = rotation(0, 20.0) @ rotation(1, -5.0)
    parent[:3, 3] = [10.0, -4.0, 25.0]
    image = image_from_volume_array(np.zeros((3, 4, 5), np.float32), m, parent)
    for ijk in [(0, 0, 0), (4, 3, 2)]:
        lps = np.array(image.TransformIndexToPhysicalPoint(ijk))
        np.testing.assert_allclose(RAS_TO_LPS @ lps, ras_of_index(parent @ m, ijk), atol=1e-9)
    np.testing.assert_allclose(image.GetSpacing(), (0.9, 0.8, 3.0))
    np.testing.assert_allclose(world_ijk_to_ras(m, parent), parent @ m)


def test_a_scaling_transform_changes_the_spacing_not_the_voxels():
    parent = np.diag([2.0, 2.0, 1.0, 1.0])
    image = image_from_volume_array(np.zeros((3, 4, 5), np.float32), ijk_to_ras(), parent)
    np.testing.assert_allclose(image.GetSpacing(), (1.8, 1.6, 3.0))


def test_a_shearing_transform_is_a_clear_error():
    parent = np.eye(4)
    parent[0, 1] = 0.3
    with pytest.raises(InputError, match="PET: its parent transform shears the voxel grid"):
        image_from_volume_array(np.zeros((3, 4, 5), np.float32), ijk_to_ras(), parent, name="PET")
    with pytest.raises(InputError, match="3D scalar volume"):
        image_from_volume_array(np.zeros((4, 5), np.float32), ijk_to_ras(), name="CT")


def test_ijk_to_ras_round_trip():
    m = ijk_to_ras(rot=rotation(1, 33.0) @ rotation(2, -12.0))
    g = geometry_from_ijk_to_ras(m, (7, 8, 9))
    np.testing.assert_allclose(ijk_to_ras_from_geometry(g), m, atol=1e-12)


def test_grid_box_spans_voxel_edges_in_ras():
    g = Geometry((10, 20, 5), (1.0, 2.0, 3.0), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))
    box = grid_box(g)
    assert box.size_mm == (10.0, 40.0, 15.0)
    np.testing.assert_allclose(box.center_ras, [-4.5, -19.0, 6.0])  # LPS (4.5, 19, 6) in RAS
    np.testing.assert_allclose(box.axes_ras, np.diag([-1.0, -1.0, 1.0]))
    np.testing.assert_allclose(box.object_to_world()[:3, 3], box.center_ras)


def test_analysis_window_box_covers_the_window_of_a_real_preprocessing_run():
    ct, pet = tiny_ct_pet()
    provenance = preprocess(ct, pet).provenance
    box = analysis_window_box(provenance)
    assert box.size_mm == (256.0, 256.0, 336.0)
    window = Geometry.from_dict(provenance["window"])
    corners_ras = window.corners() @ RAS_TO_LPS.T
    np.testing.assert_allclose(box.center_ras, corners_ras.mean(axis=0), atol=1e-9)
    # Every window voxel centre lies inside the box, half a voxel from its faces at the extremes.
    local = (corners_ras - box.center_ras) @ np.asarray(box.axes_ras)
    np.testing.assert_allclose(np.abs(local).max(axis=0), np.array(box.size_mm) / 2 - [0.5, 0.5, 1.5], atol=1e-9)
