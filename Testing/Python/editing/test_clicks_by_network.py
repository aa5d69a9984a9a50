"""Adds and redraws drawn by the bundled click model (HNTumorSegLib.editing.click_model), and when they are not."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import SimpleITK as sitk

from HNTumorSegLib.editing import click_model
from HNTumorSegLib.editing.click_model import DEFAULT_CLICK_MODEL, ClickModel, crop_grid, network_inputs
from HNTumorSegLib.editing.clicks import add_lesion, edit_at, redraw_lesion
from HNTumorSegLib.errors import InputError, ModelFileError

SPACING = (0.98, 0.98, 3.0)  # a CT grid: the network sees a 2 mm crop of it
SHAPE = (30, 110, 110)  # z, y, x
NODE_ZYX, NODE_RADII_MM = (15, 55, 55), (9.0, 7.0, 6.0)  # an ellipsoid node: x, y, z semi-axes
HOT_ZYX = (15, 55, 78)  # a hot node beside it (the other structure in the label map)


def grid_image(array, flipped=False):
    img = sitk.GetImageFromArray(array)
    img.SetSpacing(SPACING)
    if flipped:  # the same patient stored with its x and y axes reversed (as some scanners write)
        img.SetDirection((-1, 0, 0, 0, -1, 0, 0, 0, 1))
        img.SetOrigin((SPACING[0] * (SHAPE[2] - 1), SPACING[1] * (SHAPE[1] - 1), 0.0))
    return img


def ellipsoid(centre_zyx, radii_xyz):
    z, y, x = np.indices(SHAPE, dtype=float)
    cz, cy, cx = centre_zyx
    rx, ry, rz = radii_xyz
    return (((x - cx) * SPACING[0] / rx) ** 2 + ((y - cy) * SPACING[1] / ry) ** 2
            + ((z - cz) * SPACING[2] / rz) ** 2) <= 1.0


@pytest.fixture(scope="module")
def node_case():
    """A weak node (SUV 3 over 0.7) blurred as a PET of 7 mm FWHM with noise, a hot GTVp beside it, soft-tissue CT."""
    rng = np.random.default_rng(5)
    node, hot = ellipsoid(NODE_ZYX, NODE_RADII_MM), ellipsoid(HOT_ZYX, (6.0, 6.0, 6.0))
    activity = np.full(SHAPE, 0.7, np.float32)
    activity[node], activity[hot] = 3.0, 9.0
    pet = sitk.GetArrayFromImage(sitk.SmoothingRecursiveGaussian(grid_image(activity), 7.0 / 2.3548))
    pet = pet + rng.normal(0, 0.1, SHAPE).astype(np.float32) * np.sqrt(pet)
    ct = np.where(node | hot, 45.0, 30.0).astype(np.float32) + rng.normal(0, 10, SHAPE).astype(np.float32)
    label = np.where(hot, 1, 0).astype(np.uint8)
    return label, pet.astype(np.float32), ct, node


def images(node_case, flipped=False):
    label, pet, ct, node = node_case
    if flipped:  # index order reversed along x and y: the same physical images
        label, pet, ct = (a[:, ::-1, ::-1].copy() for a in (label, pet, ct))
    return grid_image(label, flipped), grid_image(pet, flipped), grid_image(ct, flipped)


def centre_point(label):
    return label.TransformIndexToPhysicalPoint(tuple(int(v) for v in NODE_ZYX[::-1]))


def dice(a, b):
    return 2 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


def test_the_click_model_draws_a_weak_node_and_leaves_the_other_lesion(node_case):
    label, pet, ct = images(node_case)
    edit = add_lesion(label, pet, centre_point(label), "GTVn", ct=ct, method="network")
    after = sitk.GetArrayFromImage(edit.label)
    assert "click model" in edit.message and edit.structure == "GTVn"
    assert dice(after == 2, node_case[3]) > 0.75
    np.testing.assert_array_equal(after == 1, node_case[0] == 1)  # the GTVp beside it stays as it was


def test_the_click_model_draws_the_same_node_on_a_grid_stored_flipped(node_case):
    plain = add_lesion(*images(node_case)[:2], centre_point(images(node_case)[0]), "GTVn", ct=images(node_case)[2])
    label, pet, ct = images(node_case, flipped=True)
    flipped = add_lesion(label, pet, centre_point(images(node_case)[0]), "GTVn", ct=ct)
    a = sitk.GetArrayFromImage(plain.label)
    b = sitk.GetArrayFromImage(flipped.label)[:, ::-1, ::-1]
    assert dice(a == 2, b == 2) > 0.97  # resampling rounds differently at a few edge voxels


def test_auto_draws_nodes_with_the_network_and_primaries_or_without_ct_by_threshold(node_case):
    label, pet, ct = images(node_case)
    at = centre_point(label)
    assert "click model" in add_lesion(label, pet, at, "GTVn", ct=ct).message
    assert "41%" in add_lesion(label, pet, at, "GTVn").message  # no CT: the threshold
    assert "41%" in add_lesion(label, pet, at, "GTVn", ct=ct, method="threshold").message
    node_label = sitk.GetImageFromArray(np.where(node_case[3], 2, 0).astype(np.uint8))
    node_label.CopyInformation(label)
    as_primary = edit_at(node_label, pet, "relabel", at)
    assert "41%" in redraw_lesion(as_primary.label, pet, at, ct=ct).message  # GTVp: the threshold


def test_network_where_it_cannot_draw_is_a_one_line_error(node_case):
    label, pet, ct = images(node_case)
    at = centre_point(label)
    with pytest.raises(InputError, match="^cannot draw with the click model: it needs the CT$"):
        add_lesion(label, pet, at, "GTVn", method="network")
    with pytest.raises(InputError, match="^cannot draw with the click model: it draws GTVn, not GTVp$"):
        add_lesion(label, pet, at, "GTVp", ct=ct, method="network")
    with pytest.raises(InputError, match="unknown drawing method 'unet'"):
        add_lesion(label, pet, at, "GTVn", ct=ct, method="unet")


def test_without_torch_auto_falls_back_to_the_threshold_and_network_says_why(node_case, monkeypatch):
    label, pet, ct = images(node_case)
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "torch" else real(name, *a))
    assert "41%" in add_lesion(label, pet, centre_point(label), "GTVn", ct=ct).message
    with pytest.raises(InputError, match="torch is not installed"):
        add_lesion(label, pet, centre_point(label), "GTVn", ct=ct, method="network")


def test_a_segmentation_model_or_a_model_of_another_contract_is_refused(tmp_path):
    segmentation = DEFAULT_CLICK_MODEL.with_name("hntumorseg_phantom_psam.json")
    with pytest.raises(ModelFileError, match="not a click model"):
        ClickModel(segmentation)
    meta = json.loads(DEFAULT_CLICK_MODEL.read_text())
    meta["click_model"]["crop_voxels"] = 64
    (tmp_path / "m.json").write_text(json.dumps(meta))
    (tmp_path / "m.safetensors").write_bytes(DEFAULT_CLICK_MODEL.with_suffix(".safetensors").read_bytes())
    with pytest.raises(ModelFileError, match=r"^m.json: a click model of another version \(its crop_voxels differ"):
        ClickModel(tmp_path / "m.json")


def test_the_crop_is_centred_on_the_click_and_inputs_follow_the_contract():
    grid = crop_grid((10.0, -20.0, 30.0))
    centre = grid.TransformIndexToPhysicalPoint([click_model.CROP_VOXELS // 2] * 3)
    assert centre == pytest.approx((10.0, -20.0, 30.0))
    n = click_model.CROP_VOXELS
    ct = np.full((1, n, n, n), 1000.0)
    pet = np.full((1, n, n, n), 1.0)
    pet[0, n // 2, n // 2, n // 2] = 4.0  # the peak near the click scales the PET
    x = network_inputs(ct, pet)
    assert x.shape == (1, 3, n, n, n) and x.dtype == np.float32
    assert x[0, 0].max() == 1.0 and x[0, 1].max() == 1.0 and x[0, 1, 0, 0, 0] == 0.25
    assert x[0, 2, 0, 0, 0] == pytest.approx(np.log(2.0) / 2)


def test_a_click_is_drawn_as_the_mirror_image_of_its_mirror_images_draw():
    """The eight flips averaged: a crop flipped along any axis is drawn as the flip of its drawing (to float
    rounding), which one pass of the network is not (checked, so the test can tell the two apart)."""
    import torch

    network = ClickModel(DEFAULT_CLICK_MODEL).network
    rng = np.random.default_rng(3)
    n = click_model.CROP_VOXELS
    x = network_inputs(rng.normal(40, 60, (1, n, n, n)), rng.gamma(2.0, 1.0, (1, n, n, n)))
    drawn = click_model.lesion_probability(network, x)
    assert drawn.shape == (n, n, n) and drawn.dtype == np.float32 and 0 <= drawn.min() and drawn.max() <= 1
    with torch.inference_mode():
        def one_pass(inputs):
            return torch.softmax(network(torch.from_numpy(np.ascontiguousarray(inputs))), 1)[0, 1].numpy()
        assert np.abs(one_pass(x[..., ::-1])[..., ::-1] - one_pass(x)).max() > 1e-3
    for axis in range(3):
        mirrored = click_model.lesion_probability(network, np.flip(x, axis + 2))
        np.testing.assert_allclose(np.flip(mirrored, axis), drawn, atol=1e-5)


class _ScriptedViews:
    """A stand-in for a click model whose views are scripted: each call of ``probability`` records the point it is
    asked at and answers with the next view, a function of ``distance_to(point_mm)`` over the box's voxels."""

    name = "scripted"

    def __init__(self, *views):
        self.views, self.points = list(views), []

    def probability(self, ct, pet, box, point_mm):
        self.points.append(tuple(point_mm))
        return self.views.pop(0)(lambda p: _distances(box.reference(sitk.sitkUInt8), p)).astype(np.float32)


def _distances(grid, point_mm):
    """Each voxel's distance (mm) from ``point_mm``, (z, y, x), on an axis-aligned ``grid``."""
    z, y, x = np.indices(grid.GetSize()[::-1], dtype=float)
    return np.sqrt(sum((i * s + o - p) ** 2 for i, s, o, p in zip((x, y, z), grid.GetSpacing(), grid.GetOrigin(),
                                                                   point_mm)))


def test_a_click_is_seen_again_from_the_centre_of_its_drawing_and_the_two_views_averaged():
    """The second view is asked at the deepest voxel of what the first drew, and the lesion is where the mean of the
    two is >= 1/2: here more than either view draws alone. Where the mean falls short at the click, the first view's
    drawing stands."""
    from HNTumorSegLib.editing.clicks import _network_region

    label = sitk.Image([40, 40, 40], sitk.sitkUInt8)  # 1 mm voxels: a sphere's deepest voxel is its centre
    label.SetOrigin((-20.0, -20.0, -20.0))
    centre, click = (0.0, 0.0, 0.0), (0.0, 0.0, 4.0)  # the click 4 mm from the centre of what it draws
    def first_view(distance):  # a 6 mm sphere about the centre, 0.2 around it
        return np.where(distance(centre) <= 6.0, 0.9, 0.2)

    model = _ScriptedViews(first_view, lambda distance: np.where(distance(model.points[-1]) <= 10.0, 0.9, 0.0))
    drawn = _network_region(model, label, None, None, click, None)
    assert model.points == [click, centre]
    np.testing.assert_array_equal(drawn, _distances(label, centre) <= 10.0)  # (0.2 + 0.9) / 2 out to 10 mm

    model = _ScriptedViews(first_view, lambda distance: np.zeros_like(distance(centre)))
    drawn = _network_region(model, label, None, None, click, None)
    np.testing.assert_array_equal(drawn, _distances(label, centre) <= 6.0)


def test_a_click_model_of_ones_own_is_the_one_that_draws(node_case, tmp_path):
    """A researcher's click model (here the bundled network with its lesion output lowered: it draws less) draws
    instead of the bundled one, by the file given."""
    import torch

    from HNTumorSegLib.pipeline.model_file import save_model

    label, pet, ct = images(node_case)
    at = centre_point(label)
    bundled = add_lesion(label, pet, at, "GTVn", ct=ct)
    network = ClickModel(DEFAULT_CLICK_MODEL).network
    with torch.no_grad():
        network.head.bias[1] -= 2.0  # the output layer's lesion channel (background, lesion)
    meta = json.loads(DEFAULT_CLICK_MODEL.read_text())
    save_model(network, network.config, tmp_path / "tight", metadata={"click_model": meta["click_model"]})
    own = add_lesion(label, pet, at, "GTVn", ct=ct, click_model=tmp_path / "tight.json")
    assert "tight.json" in own.message and "hntumorseg_phantom_node_clicks" in bundled.message
    assert 0 < own.voxels < bundled.voxels
    with pytest.raises(ModelFileError, match="nothing.json: model config file not found"):
        add_lesion(label, pet, at, "GTVn", ct=ct, click_model=tmp_path / "nothing.json")


def test_refining_the_nodes_redraws_a_too_tight_node_from_its_centre_and_leaves_gtvp(node_case):
    """The segmentation's node drawn too tight (its core only) is redrawn by the click model from its centre; the
    GTVp beside it stays voxel for voxel, and the label map given is not modified."""
    from HNTumorSegLib.editing.node_refinement import refine_nodes

    label, pet, ct = images(node_case)
    node = node_case[3]
    tight = sitk.GetArrayFromImage(label)
    tight[ellipsoid(NODE_ZYX, (4.0, 3.0, 3.0))] = 2  # the network's drawing: the node's hot core
    given = grid_image(tight)
    before = dice(tight == 2, node)
    refined = refine_nodes(given, ct, pet)
    after = sitk.GetArrayFromImage(refined.label)
    assert before < 0.5 and dice(after == 2, node) > 0.75
    np.testing.assert_array_equal(after == 1, tight == 1)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(given), tight)
    (entry,) = refined.nodes
    assert entry["redrawn"] and entry["voxels_before"] == int((tight == 2).sum()) < entry["voxels_after"]
    assert refined.click_model == DEFAULT_CLICK_MODEL.name and refined.label.GetSpacing() == given.GetSpacing()


def test_refining_a_speckled_segmentation_redraws_its_largest_nodes_only(node_case, monkeypatch):
    """A speckled segmentation (thousands of one-voxel "nodes" from an untrained network) is redrawn in bounded
    time: the largest nodes only (the bound made 2 here), the speckles kept as drawn and counted in the report."""
    from HNTumorSegLib.editing import node_refinement

    monkeypatch.setattr(node_refinement, "MOST_NODES_REDRAWN", 2)
    label, pet, ct = images(node_case)
    drawn = sitk.GetArrayFromImage(label)
    drawn[ellipsoid(NODE_ZYX, (4.0, 3.0, 3.0))] = 2  # the real node, drawn too tight
    speckles = [(3, 10 + 8 * k, 10) for k in range(5)]  # one voxel each, far from both lesions
    for zyx in speckles:
        drawn[zyx] = 2
    drawn[5, 100:102, 100] = 2  # a two-voxel speckle: the second largest
    refined = node_refinement.refine_nodes(grid_image(drawn), ct, pet)
    after = sitk.GetArrayFromImage(refined.label)
    assert [entry["voxels_before"] for entry in refined.nodes] == [int((drawn == 2).sum()) - 7, 2]
    assert refined.nodes[0]["redrawn"] and refined.smaller_nodes_kept == 5
    assert refined.report()["smaller_nodes_kept"] == 5
    assert all(after[zyx] == 2 for zyx in speckles)
    assert dice(after[10:21] == 2, node_case[3][10:21]) > 0.75


def test_refining_keeps_a_node_the_click_model_sees_nothing_at_and_refuses_a_model_of_another_structure(
        node_case, tmp_path):
    from HNTumorSegLib.editing.node_refinement import refine_nodes

    label, pet, ct = images(node_case)
    drawn = sitk.GetArrayFromImage(label)
    drawn[15, 50:53, 50:53] = 2  # a node on nothing (flat uptake, flat tissue)
    flat_ct, flat_pet = grid_image(np.full(SHAPE, 30.0, np.float32)), grid_image(np.full(SHAPE, 0.7, np.float32))
    refined = refine_nodes(grid_image(drawn), flat_ct, flat_pet)
    after = sitk.GetArrayFromImage(refined.label)
    assert not refined.nodes[0]["redrawn"] and "why" in refined.nodes[0]
    np.testing.assert_array_equal(after, drawn)
    other = json.loads(DEFAULT_CLICK_MODEL.read_text())
    other["click_model"]["structure"] = "GTVp"
    (tmp_path / "p.json").write_text(json.dumps(other))
    (tmp_path / "p.safetensors").write_bytes(DEFAULT_CLICK_MODEL.with_suffix(".safetensors").read_bytes())
    with pytest.raises(InputError, match="draws GTVp, not GTVn"):
        refine_nodes(grid_image(drawn), ct, pet, click_model=tmp_path / "p.json")
