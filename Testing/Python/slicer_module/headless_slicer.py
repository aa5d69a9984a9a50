"""A headless Slicer on PyPI's ``slicer-core``: a scene, the application logic and the module logics.

Why: the module's scene logic (``HNTumorSeg/HNTumorSegSceneLogic.py``) must be tested on Slicer's own
MRML, segmentation and file-reading code, not on stand-ins of it. ``slicer-core`` is "every Slicer
module that does not depend on Qt". What the Qt application adds, this fixture does itself:

- each module logic is registered on a ``vtkSlicerApplicationLogic`` as the application does;
- ``slicer.mrmlScene`` and ``slicer.modules.<name>.logic()`` (which ``slicer.util`` calls) are set;
- every new data node gets a subject-hierarchy item (in the application Qt's subject-hierarchy
  plugin handler does it on the scene's NodeAddedEvent).
"""

from __future__ import annotations

import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

MODULE_DIR = Path(__file__).resolve().parents[3] / "HNTumorSeg"

#: Module name (as slicer.modules.<lower-case name>) -> logic class name in slicer-core.
MODULE_LOGICS = {
    "Colors": "vtkSlicerColorLogic",
    "Volumes": "vtkSlicerVolumesLogic",
    "Segmentations": "vtkSlicerSegmentationsModuleLogic",
    "SubjectHierarchy": "vtkSlicerSubjectHierarchyModuleLogic",
    "Tables": "vtkSlicerTablesLogic",
    "Markups": "vtkSlicerMarkupsLogic",
    "Transforms": "vtkSlicerTransformLogic",
}


def import_slicer_core():
    """``slicer`` from slicer-core, or a skip that says why (the wheel exists for CPython 3.11, x86-64 Linux)."""
    return pytest.importorskip(
        "slicer", reason="slicer-core is not installed (pip install -e '.[slicer]'; Kitware publishes it for "
                         "CPython 3.11 on x86-64 Linux only)")


class HeadlessSlicer:
    """One scene with its logics; ``close()`` undoes what was set on the ``slicer`` module."""

    def __init__(self):
        import vtk

        self.slicer = slicer = import_slicer_core()
        self.scene = slicer.vtkMRMLScene()
        self.app = slicer.vtkSlicerApplicationLogic()
        self.app.SetMRMLScene(self.scene)
        self.logics = {}
        for name, class_name in MODULE_LOGICS.items():
            logic = getattr(slicer, class_name)()
            logic.SetMRMLApplicationLogic(self.app)
            logic.SetMRMLScene(self.scene)
            self.app.SetModuleLogic(name, logic)
            self.logics[name] = logic
        self._saved = {k: getattr(slicer, k) for k in ("mrmlScene", "modules") if hasattr(slicer, k)}
        slicer.mrmlScene = self.scene
        slicer.modules = SimpleNamespace(**{name.lower(): SimpleNamespace(logic=(lambda lg=lg: lg))
                                            for name, lg in self.logics.items()})
        sh = self.scene.GetSubjectHierarchyNode()

        @vtk.calldata_type(vtk.VTK_OBJECT)
        def on_node_added(caller, event, node):
            if node.GetHideFromEditors() or not (node.IsA("vtkMRMLDisplayableNode") or node.IsA("vtkMRMLTableNode")):
                return
            if not sh.GetItemByDataNode(node):
                sh.CreateItem(sh.GetSceneItemID(), node)

        self._observer = self.scene.AddObserver(self.scene.NodeAddedEvent, on_node_added)
        self._callback = on_node_added  # keep the callback alive as long as the observer

    @property
    def volumes(self):
        return self.logics["Volumes"]

    def load_volume(self, path: Path, name: str):
        """A scalar volume through Slicer's own reader (``AddArchetypeVolume``), as File > Add Data does."""
        node = self.volumes.AddArchetypeVolume(str(path), name, 0)
        assert node is not None, f"Slicer could not read {path}"
        return node

    def close(self) -> None:
        self.scene.RemoveObserver(self._observer)
        self.scene.Clear(1)
        for key in ("mrmlScene", "modules"):
            if key in self._saved:
                setattr(self.slicer, key, self._saved[key])
            elif hasattr(self.slicer, key):
                delattr(self.slicer, key)


def scene_logic_class():
    """``HNTumorSegSceneLogic`` from the module folder (Slicer puts that folder on sys.path the same way)."""
    import_slicer_core()
    if str(MODULE_DIR) not in sys.path:
        sys.path.insert(0, str(MODULE_DIR))
    from HNTumorSegSceneLogic import HNTumorSegSceneLogic

    return HNTumorSegSceneLogic
