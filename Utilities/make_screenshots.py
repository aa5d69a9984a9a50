"""The module's screenshots (README, Slicer Extensions Index), drawn by Slicer's own view code.

What it does, as a clinician would: loads a synthetic PET/CT phantom (one the bundled model never
saw) through Slicer's volume reader, presses Segment (the module's
scene logic, the worker process, the bundled model), and renders what Slicer's views then show:

- ``HNTumorSeg_axial.png`` and ``HNTumorSeg_coronal.png``: the CT (soft-tissue window) with the
  GTVp / GTVn segments as the module leaves them and the 256 x 256 x 112 analysis window (ROI);
- ``HNTumorSeg_3d.png``: the segments' surfaces (Slicer's closed-surface representation) and the
  analysis window, seen from the front and above.

Slices go through the CT voxel plane that shows most of both structures. Needs Slicer's core
libraries (``pip install -e '.[slicer]'``: CPython 3.11, x86-64 Linux) and an off-screen OpenGL
(EGL or OSMesa; no display). Run from anywhere::

    python Utilities/make_screenshots.py            # writes Screenshots/*.png
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "Testing" / "Python" / "slicer_module"))

from HNTumorSegLib import LABELS  # noqa: E402
from HNTumorSegLib.phantom import make_phantom, write_case  # noqa: E402

#: The pictures this script writes, in the order the Extensions Index shows them (CMakeLists.txt lists them).
SCREENSHOTS = ("HNTumorSeg_axial.png", "HNTumorSeg_coronal.png", "HNTumorSeg_3d.png")
#: Phantom seed: outside the training cohort's seeds (0..239) like the demo's, and one whose axial and
#: coronal planes each cut the primary tumour and a node, so that both structures are in the pictures.
SCREENSHOT_SEED = 900_014
#: Margin (mm) around the segments that the 3D view frames: enough to show the neck around them.
FRAME_MARGIN_MM = 40.0
#: CT soft-tissue window (width, level) in HU, the usual one for head-and-neck contouring.
CT_WINDOW = (400.0, 40.0)


def best_plane(label: np.ndarray, axis: int) -> int:
    """Index along ``axis`` (of a z, y, x array) of the plane showing most of both structures.

    Planes holding both GTVp and GTVn win over planes holding one; among those, the larger
    smaller area wins (both well visible), then the larger GTVp area (the primary tumour).
    """
    other = tuple(a for a in range(3) if a != axis)
    areas = np.stack([(label == value).sum(axis=other) for value in LABELS], axis=1)
    key = np.lexsort((areas[:, 0], areas.min(axis=1), (areas > 0).sum(axis=1)))
    return int(key[-1])


def plane_centre_ras(ct_node, label: np.ndarray, axis: int, index: int) -> list:
    """RAS of the segments' centre within the chosen plane (voxel ``index`` along array ``axis``)."""
    import vtk

    planes = [slice(None)] * 3
    planes[axis] = slice(index, index + 1)
    zyx = np.argwhere(label[tuple(planes)] > 0).mean(axis=0)
    zyx[axis] = index
    ijk_to_ras = vtk.vtkMatrix4x4()
    ct_node.GetIJKToRASMatrix(ijk_to_ras)
    return list(ijk_to_ras.MultiplyPoint([zyx[2], zyx[1], zyx[0], 1.0])[:3])


def ras_bounds(ct_node, label: np.ndarray, margin_mm: float) -> list:
    """RAS bounds (xmin, xmax, ymin, ymax, zmin, zmax) of the labelled voxels, widened by ``margin_mm``."""
    import vtk

    ijk_to_ras = vtk.vtkMatrix4x4()
    ct_node.GetIJKToRASMatrix(ijk_to_ras)
    zyx = np.argwhere(label > 0)
    (k0, j0, i0), (k1, j1, i1) = zyx.min(axis=0), zyx.max(axis=0)
    corners = np.array([ijk_to_ras.MultiplyPoint([i, j, k, 1.0])[:3] for k in (k0, k1) for j in (j0, j1)
                        for i in (i0, i1)])
    low, high = corners.min(axis=0) - margin_mm, corners.max(axis=0) + margin_mm
    return [float(v) for pair in zip(low, high) for v in pair]


def make_screenshots(out: Path, seed: int = SCREENSHOT_SEED, size: int = 600) -> list:
    """Segment the phantom in a headless Slicer scene and write the pictures; returns their paths."""
    from headless_slicer import HeadlessSlicer, scene_logic_class
    from headless_views import SliceView, ThreeDView

    out.mkdir(parents=True, exist_ok=True)
    case = make_phantom(seed, "head")
    app = HeadlessSlicer()
    written = []
    with tempfile.TemporaryDirectory(prefix="hntumorseg-screenshots-") as scratch:
        try:
            paths = write_case(case, Path(scratch) / "input")
            ct = app.load_volume(paths["ct"], "CT")
            pet = app.load_volume(paths["pet"], "PET")
            logic = scene_logic_class()(workerPython=[sys.executable])
            params = logic.getParameterNode()
            started = time.perf_counter()
            seg = logic.segment(ct, pet, device="cpu", parameterNode=params)
            print(f"segmented {case.case_id} in the scene in {time.perf_counter() - started:.1f} s")
            ct.GetDisplayNode().SetAutoWindowLevel(0)
            ct.GetDisplayNode().SetWindowLevel(*CT_WINDOW)
            label = logic.segmentLabels(seg, ct)
            roi_size = params.analysisWindowROI.GetSize()
            for name, orientation, axis, width in (("Red", "Axial", 0, max(roi_size[0], roi_size[1])),
                                                   ("Green", "Coronal", 1, max(roi_size[0], roi_size[2]))):
                view = SliceView(app, name, orientation, (size, size))
                index = best_plane(label, axis)
                view.show(ct, plane_centre_ras(ct, label, axis, index), width * 1.1)
                path = out / f"HNTumorSeg_{orientation.lower()}.png"
                view.save_png(path)
                view.close()
                written.append(path)
            seg.CreateClosedSurfaceRepresentation()
            view = ThreeDView(app, "1", (size, size))
            frame = ras_bounds(ct, label, FRAME_MARGIN_MM)
            view.look_from("Anterior", elevation_deg=30.0, frame=frame)
            path = out / "HNTumorSeg_3d.png"
            view.save_png(path)
            written.append(path)
            view.close()
        finally:
            app.close()
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=ROOT / "Screenshots", help="folder for the PNGs")
    parser.add_argument("--seed", type=int, default=SCREENSHOT_SEED, help="phantom seed")
    parser.add_argument("--size", type=int, default=600, help="picture width and height in pixels")
    args = parser.parse_args(argv)
    for path in make_screenshots(args.out, args.seed, args.size):
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
