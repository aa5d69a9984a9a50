"""Slicer's own views, rendered off screen, show the module's segments and window where they are.

The segments are written with the module's scene logic (``writeSegments``) from a phantom's truth,
the analysis window from a provenance record; the pictures come from Slicer's slice logic and
displayable managers (``headless_views``). Every pixel's RAS position is known from the slice
node, so the colour a user sees can be checked against the label underneath it.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import vtk
from scipy import ndimage

from headless_slicer import HeadlessSlicer, import_slicer_core, scene_logic_class
from headless_views import SliceView, ThreeDView

from HNTumorSegLib.dicom.segment_terminology import SEGMENTS
from HNTumorSegLib.imaging.geometry import Geometry
from HNTumorSegLib.phantom import make_phantom, write_case

slicer = import_slicer_core()

ROOT = Path(__file__).resolve().parents[3]
SIZE = (320, 320)
GTVP, GTVN = SEGMENTS[0], SEGMENTS[1]


def tint(pixels: np.ndarray, rgb: tuple) -> np.ndarray:
    """How far each pixel leans towards ``rgb`` away from grey: > 0 means tinted that way."""
    colour = np.asarray(rgb, float) - np.mean(rgb)
    colour /= np.linalg.norm(colour)
    centred = pixels.astype(float) - pixels.astype(float).mean(axis=-1, keepdims=True)
    return centred @ colour


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    """A phantom in a headless scene with its truth as the module's segments and a window around GTVp."""
    case = make_phantom(900_014, "head")
    paths = write_case(case, tmp_path_factory.mktemp("views"))
    app = HeadlessSlicer()
    logic = scene_logic_class()(workerPython=[sys.executable])
    ct = app.load_volume(paths["ct"], "CT")
    label = sitk.GetArrayFromImage(case.label)
    seg = app.scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "result")
    seg.CreateDefaultDisplayNodes()
    logic.writeSegments(seg, label, ct)
    params = logic.getParameterNode()
    # A 256 x 256 x 112 window at 1 x 1 x 3 mm centred on the primary tumour (LPS, as a run records it).
    centre_lps = np.array(case.info["tumour_centre_mm"])
    window = Geometry(size=(256, 256, 112), spacing=(1.0, 1.0, 3.0),
                      origin=tuple(centre_lps - np.array([127.5, 127.5, 55.5 * 3.0])),
                      direction=(1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    logic.showAnalysisWindow({"window": window.to_dict()}, params)
    ct.GetDisplayNode().SetAutoWindowLevel(0)
    ct.GetDisplayNode().SetWindowLevel(400.0, 40.0)
    yield {"app": app, "ct": ct, "seg": seg, "label": label, "roi": params.analysisWindowROI,
           "centre_ras": [-centre_lps[0], -centre_lps[1], centre_lps[2]], "window": window}
    app.close()


def ct_labels_at(ct, label: np.ndarray, ras: np.ndarray) -> np.ndarray:
    """The label under each RAS point (nearest CT voxel; 0 outside the CT)."""
    ras_to_ijk = vtk.vtkMatrix4x4()
    ct.GetRASToIJKMatrix(ras_to_ijk)
    matrix = np.array([[ras_to_ijk.GetElement(r, c) for c in range(4)] for r in range(4)])
    ijk = np.rint(ras @ matrix[:3, :3].T + matrix[:3, 3]).astype(int)
    inside = np.all((ijk >= 0) & (ijk < np.array(label.shape[::-1])), axis=-1)
    out = np.zeros(ras.shape[:-1], label.dtype)
    i, j, k = (ijk[..., n][inside] for n in range(3))
    out[inside] = label[k, j, i]
    return out


@pytest.mark.parametrize("orientation", ["Axial", "Coronal"])
def test_slice_view_colours_each_structure_where_its_voxels_are(scene, orientation):
    scene["roi"].SetDisplayVisibility(0)
    view = SliceView(scene["app"], "Red" if orientation == "Axial" else "Green", orientation, SIZE)
    try:
        view.show(scene["ct"], scene["centre_ras"], 200.0)
        pixels = view.capture()
        under = ct_labels_at(scene["ct"], scene["label"], view.pixel_ras())
    finally:
        view.close()
        scene["roi"].SetDisplayVisibility(1)
    assert pixels.shape == (SIZE[1], SIZE[0], 3) and np.count_nonzero(under == GTVP.label) > 50
    for definition, other in ((GTVP, GTVN), (GTVN, GTVP)):
        inner = ndimage.binary_erosion(under == definition.label, iterations=2)
        if not inner.any():
            assert definition is GTVN, "the primary tumour must be in the slice through its centre"
            continue
        leaning = tint(pixels[inner], definition.color) > 15
        assert leaning.mean() > 0.95, f"{definition.name} drawn elsewhere than its voxels ({orientation})"
        assert (tint(pixels[inner], other.color) < tint(pixels[inner], definition.color)).all()
    # away from both structures the CT is drawn grey: no segment colour leaks
    outside = ~ndimage.binary_dilation(under > 0, iterations=3)
    for definition in SEGMENTS:
        assert (tint(pixels[outside], definition.color) > 15).mean() < 0.001


def test_slice_view_draws_the_analysis_window_on_its_edges(scene):
    view = SliceView(scene["app"], "Red", "Axial", SIZE)
    try:
        view.show(scene["ct"], scene["centre_ras"], 300.0)  # the whole 256 mm window in view
        pixels = view.capture()
        ras = view.pixel_ras()
    finally:
        view.close()
    window = scene["window"]
    low = -(np.array(window.origin[:2]) + np.array(window.size[:2]) * window.spacing[:2] - 0.5)  # RAS of the far LPS edge
    high = -(np.array(window.origin[:2]) - 0.5)
    x_edges, y_edges = sorted((low[0], high[0])), sorted((low[1], high[1]))
    pixel_mm = 300.0 / SIZE[0]
    x, y = ras[..., 0], ras[..., 1]
    along_y = (y > y_edges[0] + 5) & (y < y_edges[1] - 5)
    on_edge = (np.isclose(x, x_edges[0], atol=pixel_mm) | np.isclose(x, x_edges[1], atol=pixel_mm)) & along_y
    # nothing of the ROI inside the box: no name or centre handle drawn over the tumour it is centred near
    inside = (x > x_edges[0] + 4 * pixel_mm) & (x < x_edges[1] - 4 * pixel_mm) & along_y
    colour = np.asarray(scene["roi"].GetDisplayNode().GetSelectedColor()) * 255
    near_colour = np.linalg.norm(pixels.astype(float) - colour, axis=-1) < 60
    assert on_edge.sum() > 100 and near_colour[on_edge].mean() > 0.45  # a line of ~3 px on a band of ~2 px
    assert near_colour[inside].mean() < 0.001


def test_threed_view_shows_both_surfaces_and_hides_them_with_the_segmentation(scene):
    scene["seg"].CreateClosedSurfaceRepresentation()
    scene["roi"].SetDisplayVisibility(0)
    view = ThreeDView(scene["app"], "1", SIZE)
    try:
        view.look_from("Anterior", elevation_deg=30.0)
        shown = view.capture()
        scene["seg"].SetDisplayVisibility(0)
        hidden = view.capture()
    finally:
        scene["seg"].SetDisplayVisibility(1)
        scene["roi"].SetDisplayVisibility(1)
        view.close()
    for definition in SEGMENTS:
        assert (tint(shown, definition.color) > 40).sum() > 100, f"no {definition.name} surface in 3D"
        assert (tint(hidden, definition.color) > 40).sum() == 0


def test_screenshot_script_writes_the_pictures_the_extension_lists(tmp_path):
    sys.path.insert(0, str(ROOT / "Utilities"))
    try:
        import make_screenshots
    finally:
        sys.path.remove(str(ROOT / "Utilities"))
    written = make_screenshots.make_screenshots(tmp_path, size=200)
    assert [p.name for p in written] == list(make_screenshots.SCREENSHOTS)
    for path in written:
        image = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        assert image.shape[:2] == (200, 200) and image.std() > 10  # a picture, not a blank window
    # the committed pictures are these, listed in the extension's metadata and shown in the README
    cmake = (ROOT / "CMakeLists.txt").read_text(encoding="utf-8")
    listed = re.findall(r"Screenshots/([\w.]+\.png)", cmake)
    assert listed == list(make_screenshots.SCREENSHOTS)
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for name in make_screenshots.SCREENSHOTS:
        assert (ROOT / "Screenshots" / name).stat().st_size > 10_000
        assert f"Screenshots/{name}" in readme
