"""Slicer's slice and 3D views, rendered off screen on ``slicer-core``: the pictures a user sees.

Why: the module's result is judged by eye in Slicer's views, so its pictures (README, Extensions
Index screenshots) must be drawn by Slicer's own drawing code, not redrawn by us. In the application
a view is a Qt widget around a VTK render window whose content comes from MRML *displayable
managers* (segmentations, markups, ...) and, for a slice view, from ``vtkMRMLSliceLogic``'s
resliced image. ``slicer-core`` has all of those without Qt; this file does what the widgets do
(create the view node, register the managers, put the slice image in the background) in an
off-screen window (EGL or OSMesa, no display needed). The same wiring is what ``trame-slicer``
does for web views.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import vtk
from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy

#: Displayable managers of a slice view that draw what the module adds: segments and the ROI.
SLICE_MANAGERS = ("vtkMRMLSegmentationsDisplayableManager2D", "vtkMRMLMarkupsDisplayableManager")
#: Displayable managers of a 3D view: camera and view set-up, segment surfaces, the ROI box.
THREED_MANAGERS = ("vtkMRMLCameraDisplayableManager", "vtkMRMLViewDisplayableManager",
                   "vtkMRMLSegmentationsDisplayableManager3D", "vtkMRMLMarkupsDisplayableManager")


class OffscreenView:
    """One render window with a displayable-manager group, as a Slicer view widget holds.

    A subclass attaches its view logic (:meth:`_attach`) and sets ``node``, the view node it shows.
    """

    def __init__(self, app, factory_class, managers: Sequence[str], size: tuple = (600, 600)):
        self.app = app
        self.slicer = app.slicer
        self.size = tuple(int(s) for s in size)
        self.window = vtk.vtkRenderWindow()
        self.window.SetOffScreenRendering(1)
        self.window.SetSize(*self.size)
        self.renderer = vtk.vtkRenderer()
        self.window.AddRenderer(self.renderer)
        self.interactor = vtk.vtkRenderWindowInteractor()  # some managers expect one, as in a widget
        self.interactor.SetRenderWindow(self.window)
        factory = factory_class.GetInstance()
        factory.SetMRMLApplicationLogic(app.app)
        for manager in managers:
            if not factory.IsDisplayableManagerRegistered(manager):
                factory.RegisterDisplayableManager(manager)
        self.managers = self.slicer.vtkMRMLDisplayableManagerGroup()
        self.managers.Initialize(factory, self.renderer)

    def capture(self) -> np.ndarray:
        """The rendered view as an (rows, columns, 3) uint8 array, top row first (as a PNG shows it)."""
        self.managers.RequestRender()
        self.window.Render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(self.window)
        grab.SetInputBufferTypeToRGB()
        grab.ReadFrontBufferOff()
        grab.Update()
        image = grab.GetOutput()
        columns, rows, _ = image.GetDimensions()
        pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(rows, columns, -1)
        return np.ascontiguousarray(pixels[::-1, :, :3])

    def save_png(self, path: Path) -> np.ndarray:
        """Render and write a PNG; returns the pixels written."""
        pixels = self.capture()
        data = vtk.vtkImageData()
        data.SetDimensions(pixels.shape[1], pixels.shape[0], 1)
        flat = np.ascontiguousarray(pixels[::-1]).reshape(-1, 3)
        array = numpy_to_vtk(flat, deep=True, array_type=vtk.VTK_UNSIGNED_CHAR)
        data.GetPointData().SetScalars(array)
        writer = vtk.vtkPNGWriter()
        writer.SetFileName(str(path))
        writer.SetInputData(data)
        writer.Write()
        return pixels

    def close(self) -> None:
        self.managers.SetMRMLDisplayableNode(None)
        self.window.Finalize()
        # Detached from the scene, so that a later view of the same name starts afresh (as a new layout does).
        self._logics.RemoveItem(self.logic)
        self.logic.SetMRMLScene(None)
        self.app.scene.RemoveNode(self.node)

    def _attach(self, logic, get_logics, set_logics) -> None:
        """The view's logic on the application logic's collection of such logics (the layout creates it) and the scene."""
        if get_logics() is None:
            set_logics(vtk.vtkCollection())
        self.logic, self._logics = logic, get_logics()
        logic.SetMRMLApplicationLogic(self.app.app)
        self._logics.AddItem(logic)
        logic.SetMRMLScene(self.app.scene)


class SliceView(OffscreenView):
    """A slice view (Red: axial, Green: coronal, Yellow: sagittal) showing a volume and the scene's overlays."""

    def __init__(self, app, name: str, orientation: str, size: tuple = (600, 600)):
        slicer = app.slicer
        super().__init__(app, slicer.vtkMRMLSliceViewDisplayableManagerFactory, SLICE_MANAGERS, size)
        self.renderer.GetActiveCamera().ParallelProjectionOn()
        self._attach(slicer.vtkMRMLSliceLogic(), app.app.GetSliceLogics, app.app.SetSliceLogics)
        self.node = self.logic.AddSliceNode(name)
        self.node.SetOrientation(orientation)
        self.managers.SetMRMLDisplayableNode(self.node)
        # The resliced volume image, drawn behind the managers' actors (CTK's light-box manager does this in Slicer).
        mapper = vtk.vtkImageMapper()
        mapper.SetColorWindow(255)
        mapper.SetColorLevel(127.5)
        self._image = vtk.vtkActor2D()
        self._image.SetMapper(mapper)
        self._image.GetProperty().SetDisplayLocationToBackground()
        self.renderer.AddViewProp(self._image)
        self.logic.ResizeSliceNode(*self.size)

    def show(self, background, center_ras: Sequence[float], field_of_view_mm: float,
             foreground=None, foreground_opacity: float = 0.0) -> None:
        """Volumes in the layers, the slice through ``center_ras``, ``field_of_view_mm`` across."""
        composite = self.logic.GetSliceCompositeNode()
        composite.SetBackgroundVolumeID(background.GetID())
        composite.SetForegroundVolumeID(foreground.GetID() if foreground is not None else None)
        composite.SetForegroundOpacity(foreground_opacity)
        self.logic.FitSliceToBackground()
        aspect = self.size[1] / self.size[0]
        self.node.SetFieldOfView(field_of_view_mm, field_of_view_mm * aspect, self.node.GetFieldOfView()[2])
        self.node.JumpSliceByCentering(*center_ras)
        self._image.GetMapper().SetInputConnection(self.logic.GetImageDataConnection())

    def pixel_ras(self) -> np.ndarray:
        """RAS (mm) of every pixel centre, shaped like :meth:`capture` (rows top first, columns, 3)."""
        xy_to_ras = np.array([[self.node.GetXYToRAS().GetElement(r, c) for c in range(4)] for r in range(4)])
        columns, rows = self.size
        x, y = np.meshgrid(np.arange(columns), np.arange(rows)[::-1])
        xy = np.stack([x, y, np.zeros_like(x), np.ones_like(x)], axis=-1).astype(float)
        return (xy @ xy_to_ras.T)[..., :3]


class ThreeDView(OffscreenView):
    """A 3D view with the segments' surfaces, looked at from a patient direction."""

    def __init__(self, app, name: str = "1", size: tuple = (600, 600)):
        slicer = app.slicer
        super().__init__(app, slicer.vtkMRMLThreeDViewDisplayableManagerFactory, THREED_MANAGERS, size)
        self.renderer.SetUseDepthPeeling(True)
        self._attach(slicer.vtkMRMLViewLogic(), app.app.GetViewLogics, app.app.SetViewLogics)
        self.node = self.logic.AddViewNode(name)
        self.managers.SetMRMLDisplayableNode(self.node)

    def look_from(self, direction: str, elevation_deg: float = 0.0, frame: Sequence[float] | None = None) -> None:
        """Camera on the patient's ``direction`` side ("Anterior", "Left", ...), raised by ``elevation_deg``.

        ``frame``: RAS bounds (xmin, xmax, ymin, ymax, zmin, zmax) to fill the view; None frames
        everything shown. The view's box and axis labels are hidden, as in Slicer's "reset focal point".
        """
        self.node.SetBoxVisible(0)
        self.node.SetAxisLabelsVisible(0)
        camera = self.managers.GetDisplayableManagerByClassName("vtkMRMLCameraDisplayableManager").GetCameraNode()
        camera.RotateTo(getattr(camera, direction))
        if frame is None:
            self.renderer.ResetCamera()
        else:
            self.renderer.ResetCamera(list(frame))
        self.renderer.GetActiveCamera().Elevation(elevation_deg)
        self.renderer.GetActiveCamera().OrthogonalizeViewUp()
        self.renderer.ResetCameraClippingRange()
