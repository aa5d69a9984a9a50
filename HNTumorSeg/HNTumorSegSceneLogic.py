"""HNTumorSeg's scene logic: what the module does to the MRML scene, without Qt.

Why a file of its own: the panel (Qt, CTK, the scripted-module base classes) runs only inside the
Slicer application, but everything the module does to the scene (reading the volumes in world
coordinates, running the worker, writing named and coded segments under the CT's study, the edit
guard, the results table, the analysis-window ROI) runs on Slicer's own core libraries, which PyPI's
``slicer-core`` provides without an application. ``Testing/Python/slicer_module`` runs it there.
This file imports ``slicer``, ``vtk`` and HNTumorSegLib only; ``HNTumorSeg.py`` puts the template's
``HNTumorSegLogic`` (parameter node, PyTorch installer) on top of :class:`HNTumorSegSceneLogic`.
"""

import importlib.util
import logging
import os
import re
import shutil
import sys
from dataclasses import dataclass
from typing import Any, Optional, Sequence

import slicer
import vtk


def _makeLibraryImportable():
    """The extension installs HNTumorSegLib beside this file; a source checkout keeps it one level up."""
    if importlib.util.find_spec("HNTumorSegLib") is not None:
        return
    checkout = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.path.isdir(os.path.join(checkout, "HNTumorSegLib")):
        sys.path.insert(0, checkout)


_makeLibraryImportable()

# None of these imports torch: the module loads (and offers to install torch) without it.
from HNTumorSegLib.dicom.segment_terminology import SEGMENTS, segment_by_name, split_nodes  # noqa: E402
from HNTumorSegLib.editing.clicks import DEFAULT_FRACTION  # noqa: E402
from HNTumorSegLib.errors import InputError  # noqa: E402
from HNTumorSegLib.imaging.image_checks import ct_offset_problem, pet_mask_problem  # noqa: E402
from HNTumorSegLib.imaging.image_io import shape_problem  # noqa: E402
from HNTumorSegLib.slicer_support.default_inputs import VolumeCandidate, choose_default_inputs  # noqa: E402
from HNTumorSegLib.slicer_support.dicom_pet import (DicomPetSuv, dicom_pairing_problem, dicom_pet_suv,  # noqa: E402
                                                    suv_units_problem)
from HNTumorSegLib.slicer_support.edit_guard import ASK, CREATE, output_policy, segmentation_fingerprint  # noqa: E402
from HNTumorSegLib.slicer_support.export_checks import (ExportState, dicom_seg_availability,  # noqa: E402
                                                        rtstruct_availability)
from HNTumorSegLib.slicer_support.results_table import COLUMNS, centroid_of_row, summary_line, table_rows  # noqa: E402
from HNTumorSegLib.slicer_support.scene_geometry import analysis_window_box, image_from_volume_array  # noqa: E402
from HNTumorSegLib.slicer_support.segmentation_job import (JobFailed, JobResult, SegmentationJob,  # noqa: E402
                                                           worker_environment)
from HNTumorSegLib.slicer_support.suv_check import ERROR, check_suv, looks_like_activity  # noqa: E402

#: Colour table of the uncertainty overlay, and its opacity over the CT.
UNCERTAINTY_COLORS = "vtkMRMLColorTableNodeIron"
UNCERTAINTY_OPACITY = 0.5
#: Uncertainty (%) below this is not drawn, so the overlay marks only where to look.
UNCERTAINTY_SHOWN_FROM = 10.0

#: Segment names of GTVn written node by node.
NODE_SEGMENT = re.compile(r"GTVn_[0-9]+")

#: Node attribute holding the fingerprint of the segments a run wrote (see HNTumorSegLib.slicer_support.edit_guard).
FINGERPRINT_ATTRIBUTE = "HNTumorSeg.Fingerprint"
#: Node attribute: "true" when the run wrote GTVn node by node (GTVn_1 .. GTVn_k), kept by clicks and undo.
SPLIT_ATTRIBUTE = "HNTumorSeg.SplitLesions"
#: Segment tag marking a segment this module wrote (its structure's name): a user's own segment, even one
#: named "GTVn_1", is never counted, replaced or removed.
OWNER_TAG = "HNTumorSeg.Structure"
#: Volume attribute of the module's uncertainty map (never offered as an input).
UNCERTAINTY_ATTRIBUTE = "HNTumorSeg.UncertaintyMeasure"
#: Node reference role from the output segmentation to the CT whose grid its segments were written on: clicks
#: and undo act on that grid only (a reference, not an ID in an attribute, so that it follows a scene import).
CT_REFERENCE_ROLE = "HNTumorSeg.CT"
#: Node attribute: what the run warned of (empty when nothing), shown with the result.
WARNINGS_ATTRIBUTE = "HNTumorSeg.Warnings"


@dataclass
class SceneParameters:
    """What a run reads and records, outside the application (the module uses its parameter node)."""

    outputSegmentation: Any = None
    resultsTable: Any = None
    analysisWindowROI: Any = None
    showAnalysisWindow: bool = True
    uncertaintyVolume: Any = None
    showUncertainty: bool = False
    splitLesions: bool = False


class HNTumorSegSceneLogic:
    """Everything the panel does to the scene, callable from scripts: ``segment(ct, pet)`` runs the whole job.

    ``workerPython``: the command that runs the worker's Python (a list: an executable, or a launcher
    and its arguments). None means Slicer's own ``PythonSlicer``, found through ``slicer.app``; tests
    and scripts outside the application pass their interpreter, ``[sys.executable]``.
    """

    def __init__(self, workerPython: Optional[Sequence[str]] = None) -> None:
        self._workerPython = list(workerPython) if workerPython else None
        #: Per segmentation node ID, (label map before the click, the CT node's ID), the last one on top. A run
        #: into the node empties its stack, and closing the scene empties them all (node IDs are reused then).
        self._undo: dict = {}
        scene = getattr(slicer, "mrmlScene", None)
        if scene is not None:
            scene.AddObserver(slicer.vtkMRMLScene.StartCloseEvent, lambda caller, event: self._undo.clear())

    def getParameterNode(self):
        """Where a run records its outputs; the module's logic returns its MRML parameter node instead."""
        return SceneParameters()

    # ------------------------------------------------------------------ environment
    def workerPython(self) -> list:
        """The worker's Python: the injected command, else Slicer's launcher (which sets up its environment)."""
        if self._workerPython:
            return list(self._workerPython)
        name = "PythonSlicer.exe" if os.name == "nt" else "PythonSlicer"
        found = shutil.which("PythonSlicer") or os.path.join(slicer.app.slicerHome, "bin", name)
        if not os.path.isfile(found):
            raise RuntimeError(f"Slicer's Python launcher (PythonSlicer) was not found in {slicer.app.slicerHome}")
        return [found]

    @staticmethod
    def workerEnvironment() -> dict:
        return worker_environment()

    # ------------------------------------------------------------------ inputs
    def defaultInputs(self):
        """The (CT, PET) nodes the scene's names and DICOM modalities point to."""
        candidates, nodes = [], {}
        sh = slicer.mrmlScene.GetSubjectHierarchyNode()
        for node in slicer.util.getNodesByClass("vtkMRMLScalarVolumeNode"):
            if node.IsA("vtkMRMLLabelMapVolumeNode") or node.IsA("vtkMRMLVectorVolumeNode") \
                    or node.GetHideFromEditors() or node.GetAttribute(UNCERTAINTY_ATTRIBUTE) is not None:
                continue
            item = sh.GetItemByDataNode(node)
            study = sh.GetItemParent(item) if item else 0
            image = node.GetImageData()
            candidates.append(VolumeCandidate(
                node.GetID(), node.GetName(), self.dicomModality(node), str(study) if study else None,
                slices=min(image.GetDimensions()) if image is not None else None,
                localizer="LOCALIZER" in (self.dicomValue(node, "0008,0008") or "").upper(),
                attenuation_corrected=self._attenuationCorrected(node)))
            nodes[node.GetID()] = node
        ct, pet = choose_default_inputs(candidates)
        return nodes.get(ct), nodes.get(pet)

    @staticmethod
    def dicomInstanceUIDs(node) -> list:
        """The SOP instance UIDs Slicer's DICOM module recorded on a node it loaded (empty for other nodes)."""
        return (node.GetAttribute("DICOM.instanceUIDs") or "").split()

    @classmethod
    def dicomModality(cls, node) -> Optional[str]:
        return cls.dicomValue(node, "0008,0060")

    @classmethod
    def dicomValue(cls, node, tag: str) -> Optional[str]:
        """A tag's value ("gggg,eeee") in the first DICOM file of a node Slicer's DICOM module loaded, or None."""
        uids = cls.dicomInstanceUIDs(node)
        database = getattr(slicer, "dicomDatabase", None)
        if not uids or database is None:
            return None
        try:
            return database.fileValue(database.fileForInstance(uids[0]), tag) or None
        except Exception:
            return None

    @classmethod
    def _attenuationCorrected(cls, node) -> Optional[bool]:
        """Whether a PET's CorrectedImage (0028,0051) holds ATTN; None when unknown (not DICOM, tag absent)."""
        corrected = cls.dicomValue(node, "0028,0051")
        return None if not corrected else "ATTN" in corrected.upper()

    def inputProblems(self, ctNode, petNode) -> list:
        """(level, message) pairs the user should see before a run: errors stop it, warnings ask."""
        problems = []
        if ctNode is None or petNode is None:
            return problems
        if ctNode is petNode:
            return [(ERROR, "CT and PET are the same volume: select the PET in the PET selector.")]
        for role, node in (("CT", ctNode), ("PET", petNode)):
            image = node.GetImageData()
            shape = shape_problem(f"{role} '{node.GetName()}'", 3, tuple(image.GetDimensions()),
                                  image.GetNumberOfScalarComponents()) \
                if image is not None else f"{role} '{node.GetName()}' holds no image data"
            if shape:
                return [(ERROR, shape)]
        ctFiles, petFiles = self.dicomFiles(ctNode), self.dicomFiles(petNode)
        if ctFiles and petFiles and ctFiles[0] and petFiles[0]:  # both from DICOM: one patient, frame and session
            paired = dicom_pairing_problem(ctFiles[0][0], petFiles[0][0], f"the CT '{ctNode.GetName()}'",
                                           f"PET '{petNode.GetName()}'")
            if paired:
                return [(ERROR, paired)]
        for role, node in (("CT", ctNode), ("PET", petNode)):
            transform = node.GetParentTransformNode()
            if transform is None:
                continue
            if not transform.IsTransformToWorldLinear():
                problems.append((ERROR, f"{role} '{node.GetName()}' is under the non-linear transform "
                                        f"'{transform.GetName()}': harden it (Data module, right-click > Harden "
                                        "transform) before segmenting."))
            else:
                problems.append(("info", f"{role} '{node.GetName()}' is under the transform "
                                         f"'{transform.GetName()}': it is used where you see it (world coordinates)."))
        shifted = ct_offset_problem(slicer.util.arrayFromVolume(ctNode))
        if shifted:  # the worker reads the CT as given: this is the Slicer path's only check of its units
            problems.append((ERROR, f"CT '{ctNode.GetName()}': {shifted}"))
        otherSuv = self.otherSuvProblem(petNode)
        if otherSuv:
            return problems + [(ERROR, otherSuv)]
        values = slicer.util.arrayFromVolume(petNode)
        mask = pet_mask_problem(values)  # a segmentation's label map picked in the PET selector, say
        if mask:
            return problems + [(ERROR, f"PET '{petNode.GetName()}' {mask}")]
        try:
            suv = self.petSuv(petNode)
        except InputError as exc:  # tags that give no SUV matter only when the values are not SUV already
            if looks_like_activity(values):
                return problems + [(ERROR, str(exc))]
            suv = None
        if suv is not None:
            problems.append(("info", suv.describe(f"PET '{petNode.GetName()}'")))
            values = values * suv.factor
        check = check_suv(values, name=f"PET '{petNode.GetName()}'")
        if check.level != "ok":
            problems.append((check.level, check.message))
        return problems

    @classmethod
    def dicomFiles(cls, node) -> Optional[tuple]:
        """(files of the node's DICOM instances in Slicer's DICOM database, how many UIDs had no file, the UID
        each file was found for); None for a node that did not come from the DICOM module, or without a DICOM
        database."""
        uids = cls.dicomInstanceUIDs(node)
        database = getattr(slicer, "dicomDatabase", None)
        if not uids or database is None:
            return None
        found = [(uid, database.fileForInstance(uid)) for uid in uids]
        found = [(uid, f) for uid, f in found if f]
        return [f for _, f in found], len(uids) - len(found), [uid for uid, _ in found]

    @staticmethod
    def otherSuvProblem(petNode) -> Optional[str]:
        """Why a PET coded as an SUV other than SUVbw (Slicer's PET-DICOM extension sets its VoxelValueUnits)
        cannot be used, or None."""
        units = petNode.GetVoxelValueUnits() if hasattr(petNode, "GetVoxelValueUnits") else None
        return suv_units_problem(units.GetCodeValue() if units is not None else None, f"PET '{petNode.GetName()}'")

    def petSuv(self, petNode) -> Optional[DicomPetSuv]:
        """The SUVbw conversion of a PET loaded with the DICOM module (None for a PET from a file).

        The factor comes from the series' tags through the same code as ``hntumorseg segment --pet STUDY/``;
        InputError names a missing or implausible tag.
        """
        name = f"PET '{petNode.GetName()}'"
        problem = self.otherSuvProblem(petNode)
        if problem:
            raise InputError(problem)
        found = self.dicomFiles(petNode)
        if found is None:
            return None
        files, missing, uids = found
        return dicom_pet_suv(files, missing, slicer.util.arrayFromVolume(petNode), name, uids)

    def petImage(self, petNode):
        """The PET in world coordinates and in SUV: converted from its DICOM tags when it came in Bq/mL."""
        import SimpleITK as sitk

        image = self.worldImage(petNode, "PET")
        suv = self.petSuv(petNode)
        if suv is not None and suv.factor != 1.0:
            image = sitk.Cast(image, sitk.sitkFloat32) * float(suv.factor)  # as the command line does
        return image

    @staticmethod
    def worldImage(volumeNode, role: str):
        """The volume as a SimpleITK image in world coordinates (parent transforms applied)."""
        parentToWorld = None
        transform = volumeNode.GetParentTransformNode()
        if transform is not None:
            if not transform.IsTransformToWorldLinear():
                raise InputError(f"{role} '{volumeNode.GetName()}' is under a non-linear transform; harden it first")
            matrix = vtk.vtkMatrix4x4()
            transform.GetMatrixTransformToWorld(matrix)
            parentToWorld = slicer.util.arrayFromVTKMatrix(matrix)
        ijkToRas = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(ijkToRas)
        return image_from_volume_array(slicer.util.arrayFromVolume(volumeNode), slicer.util.arrayFromVTKMatrix(ijkToRas),
                                       parentToWorld, name=f"{role} '{volumeNode.GetName()}'")

    # ------------------------------------------------------------------ running
    def startJob(self, ctNode, petNode, model=None, device="auto", tta=False, refineNodes=False) -> SegmentationJob:
        """Write the inputs and start the worker; poll the job, or call run_blocking() on it. ``refineNodes``:
        every node the network drew redrawn by the click model (as ``segment --refine-nodes``)."""
        if ctNode is None or petNode is None:
            raise InputError("select a CT and a PET")
        for level, message in self.inputProblems(ctNode, petNode):
            if level == ERROR:
                raise InputError(message)
        job = SegmentationJob(model=model, device=device, tta=tta, python=self.workerPython(),
                              ct_name=f"CT '{ctNode.GetName()}'", pet_name=f"PET '{petNode.GetName()}'",
                              refine_nodes=refineNodes)
        try:
            job.write_inputs(self.worldImage(ctNode, "CT"), self.petImage(petNode))
            job.start()
        except BaseException:
            job.cleanup()
            raise
        return job

    def segment(self, ctNode, petNode, outputNode=None, model=None, device="auto", tta=False,
                whenEdited="new", parameterNode=None, refineNodes=False):
        """Blocking run for scripts and tests; returns the segmentation node.

        ``whenEdited``: "new" (default: keep an edited output, write a new one) or "overwrite".
        """
        if whenEdited not in ("new", "overwrite"):
            raise ValueError(f"whenEdited must be 'new' or 'overwrite' in blocking mode, not {whenEdited!r}")
        params = parameterNode or self.getParameterNode()
        job = self.startJob(ctNode, petNode, model, device, tta, refineNodes)
        try:
            result = job.run_blocking(on_event=lambda e: logging.info(f"HNTumorSeg worker: {e}"))
            return self.applyResult(result, ctNode, petNode, outputNode, whenEdited, params)
        except JobFailed as exc:
            raise RuntimeError(f"segmentation failed: {exc}") from None
        finally:
            job.cleanup()

    # ------------------------------------------------------------------ output
    @classmethod
    def segmentMasks(cls, segmentationNode, ctNode, known: Optional[dict] = None) -> dict:
        """Every segment of a segmentation as a boolean array on the CT grid, by segment name.

        Two segments of one name (a user's "GTVp" beside the module's) are both there: the later ones as
        "NAME [segment ID]". ``known``: segment ID -> mask already on the CT grid (just written), not read again.
        """
        segmentation = segmentationNode.GetSegmentation()
        masks = {}
        for index in range(segmentation.GetNumberOfSegments()):
            segmentId, name = segmentation.GetNthSegmentID(index), segmentation.GetNthSegment(index).GetName()
            mask = (known or {}).get(segmentId)
            masks[name if name not in masks else f"{name} [{segmentId}]"] = \
                mask if mask is not None else cls.segmentMask(segmentationNode, segmentId, ctNode)
        return masks

    @classmethod
    def segmentMask(cls, segmentationNode, segmentId, ctNode):
        """One segment as a boolean array on the CT grid."""
        mask = cls.segmentMaskOnCtGrid(segmentationNode, segmentId, ctNode)
        if mask is None:  # another grid or frame: Slicer resamples it onto the CT's
            mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, ctNode) != 0
        return mask

    @staticmethod
    def segmentMaskOnCtGrid(segmentationNode, segmentId, ctNode):
        """A segment as a boolean array on the CT grid, read from its labelmap in memory; None when that
        labelmap does not lie on the CT's grid (then it needs Slicer's export, which resamples).

        Why: slicer.util's export makes a scene volume of the whole CT grid per segment, 0.5 s each on a
        whole-body CT with a 2-core CPU; every click reads the segments back. What the module wrote, and
        what the Segment Editor paints on it, is the CT's grid (whole voxels apart) in the CT's frame,
        so the voxels can be read as they are. The tests compare this with the export.
        """
        import numpy as np
        from vtk.util import numpy_support

        segmentation = segmentationNode.GetSegmentation()
        if segmentation.GetSourceRepresentationName() != slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName():
            return None  # contours imported from an RTSTRUCT, say: the labelmap is a conversion
        if (segmentationNode.GetTransformNodeID() or "") != (ctNode.GetTransformNodeID() or ""):
            return None
        image = segmentationNode.GetBinaryLabelmapInternalRepresentation(segmentId)
        if image is None:
            return None
        toWorld, ijkToRas = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
        image.GetImageToWorldMatrix(toWorld)
        ctNode.GetIJKToRASMatrix(ijkToRas)
        labelmapGrid, ctGrid = slicer.util.arrayFromVTKMatrix(toWorld), slicer.util.arrayFromVTKMatrix(ijkToRas)
        if not np.allclose(labelmapGrid[:3, :3], ctGrid[:3, :3], rtol=0, atol=1e-9 * np.abs(ctGrid[:3, :3]).max()):
            return None
        offset = np.linalg.solve(labelmapGrid[:3, :3], ctGrid[:3, 3] - labelmapGrid[:3, 3])  # CT voxel 0 in it
        if not np.allclose(offset, np.round(offset), rtol=0, atol=1e-6):
            return None
        offset = np.round(offset).astype(int)
        shape = slicer.util.arrayFromVolume(ctNode).shape  # (K, J, I)
        mask = np.zeros(shape, bool)
        extent = image.GetExtent()
        scalars = image.GetPointData().GetScalars()
        if scalars is None or extent[1] < extent[0] or extent[3] < extent[2] or extent[5] < extent[4]:
            return mask
        values = numpy_support.vtk_to_numpy(scalars).reshape(
            extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
        label = segmentation.GetSegment(segmentId).GetLabelValue()
        ct_lo = [extent[2 * axis] - offset[axis] for axis in range(3)]  # (i, j, k) of the labelmap's first voxel
        src, dst = [], []
        for axis in (2, 1, 0):  # numpy's (k, j, i) order
            lo, hi = max(ct_lo[axis], 0), min(ct_lo[axis] + values.shape[2 - axis], shape[2 - axis])
            if hi <= lo:
                return mask
            src.append(slice(lo - ct_lo[axis], hi - ct_lo[axis]))
            dst.append(slice(lo, hi))
        mask[tuple(dst)] = values[tuple(src)] == label
        return mask

    @classmethod
    def segmentLabels(cls, segmentationNode, ctNode):
        """The module's GTVp/GTVn segments (by owner, not by name: a user's own "GTVp" is not read) as one label
        map on the CT grid (1 = GTVp, 2 = GTVn, as the CLI writes it; GTVn over GTVp where both are)."""
        import numpy as np

        label = np.zeros(slicer.util.arrayFromVolume(ctNode).shape, np.uint8)
        gtvp = segment_by_name("GTVp").label
        owned = sorted(cls.ownedSegments(segmentationNode).items(), key=lambda item: item[1] != "GTVp")
        for segmentId, structure in owned:  # GTVp first
            if structure == "GTVp" or structure == "GTVn" or NODE_SEGMENT.fullmatch(structure):
                label[cls.segmentMask(segmentationNode, segmentId, ctNode)] = \
                    gtvp if structure == "GTVp" else segment_by_name("GTVn").label
        return label

    @staticmethod
    def inScene(node) -> bool:
        """A node that is still in the scene: one the user deleted (while a run went on, say) is written no more."""
        return node is not None and node.GetScene() is not None

    def outputPolicy(self, segmentationNode, ctNode) -> str:
        if not self.inScene(segmentationNode):
            return CREATE
        stored = segmentationNode.GetAttribute(FINGERPRINT_ATTRIBUTE)
        current = segmentation_fingerprint(self.segmentMasks(segmentationNode, ctNode)) if stored else None
        return output_policy(True, stored, current)

    def applyResult(self, result: JobResult, ctNode, petNode, outputNode, whenEdited, params):
        """Put a finished run into the scene: segmentation, table, analysis-window ROI."""
        import SimpleITK as sitk

        label = sitk.GetArrayFromImage(result.read_label())
        if label.shape != slicer.util.arrayFromVolume(ctNode).shape:
            raise RuntimeError(f"the result's grid {label.shape} differs from the CT's; was the CT changed meanwhile?")
        policy = self.outputPolicy(outputNode, ctNode)
        if policy == CREATE or (policy == ASK and whenEdited != "overwrite") or self.frameProblem(outputNode, ctNode):
            # (a segmentation under another transform than the CT's, holding the user's segments: left as it is)
            segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                                  slicer.mrmlScene.GenerateUniqueName(
                                                                      f"{ctNode.GetName()} GTVp-GTVn"))
            segmentationNode.CreateDefaultDisplayNodes()
        else:
            segmentationNode = outputNode
        self.writeSegments(segmentationNode, label, ctNode, split=bool(params.splitLesions))
        self._undo.pop(segmentationNode.GetID(), None)  # the clicks were on the result this run replaced

        structures = result.report["structures"]
        segmentationNode.SetAttribute("HNTumorSeg.Summary", summary_line(structures))
        warnings = (result.report.get("provenance") or {}).get("warnings") or []  # no brain to anchor on, say
        segmentationNode.SetAttribute(WARNINGS_ATTRIBUTE, "; ".join(warnings))
        segmentationNode.SetAttribute("HNTumorSeg.Model", str(result.report["model"]["file"]))
        segmentationNode.SetAttribute("HNTumorSeg.Device", str(result.report["device"]))
        params.outputSegmentation = segmentationNode
        self.loadUncertainty(result, ctNode, params)
        self.fillResultsTable(structures, params, result.report.get("lesions", []))
        self.showAnalysisWindow(result.report["provenance"], params)
        return segmentationNode

    def writeSegments(self, segmentationNode, label, ctNode, split: bool = False) -> None:
        """A run's GTVp and GTVn, named, coloured and coded, on the CT's grid and in the CT's study.

        The fingerprint of what was written marks the segmentation as unedited (the edit guard).
        ``split``: GTVn node by node (GTVn_1 .. GTVn_k).
        """
        values, definitions, segmentIds = self._writeLabel(segmentationNode, label, ctNode, split)
        written = {segmentId: values == definition.label for segmentId, definition in zip(segmentIds, definitions)}
        segmentationNode.SetAttribute(SPLIT_ATTRIBUTE, "true" if split else "false")
        sh = slicer.mrmlScene.GetSubjectHierarchyNode()
        study = sh.GetItemParent(sh.GetItemByDataNode(ctNode))
        if study:
            sh.SetItemParent(sh.GetItemByDataNode(segmentationNode), study)
        # The masks just written, and any other segment (the user's own) as Slicer holds it: what
        # segmentMasks reads back while nothing is edited (the tests check it), without a second export.
        segmentationNode.SetAttribute(FINGERPRINT_ATTRIBUTE, segmentation_fingerprint(
            self.segmentMasks(segmentationNode, ctNode, known=written)))

    @classmethod
    def isSplit(cls, segmentationNode) -> bool:
        """True when the nodes are written one segment each (GTVn_1 .. GTVn_k): as the run that wrote the
        segmentation was asked (kept when clicks leave no node, or undo brings them back), else (a scene of an
        earlier version) when a node segment is there."""
        stored = segmentationNode.GetAttribute(SPLIT_ATTRIBUTE)
        if stored in ("true", "false"):
            return stored == "true"
        return any(NODE_SEGMENT.fullmatch(name) for name in cls.ownedSegments(segmentationNode).values())

    @staticmethod
    def ownedSegments(segmentationNode) -> dict:
        """Segment ID -> structure ("GTVp", "GTVn", "GTVn_k") of the segments this module wrote, tagged
        :data:`OWNER_TAG` (a segment the user renamed is still the module's). A segmentation the module wrote
        with an earlier version (it carries the module's fingerprint, but no tagged segment): GTVp, GTVn and
        GTVn_k by name. Any other segmentation (the user's own, chosen as output) holds none of the module's."""
        segmentation = segmentationNode.GetSegmentation()
        tagged, named = {}, {}
        for index in range(segmentation.GetNumberOfSegments()):
            segment, segmentId = segmentation.GetNthSegment(index), segmentation.GetNthSegmentID(index)
            name, structure = segment.GetName(), vtk.reference("")
            if segment.GetTag(OWNER_TAG, structure):
                tagged[segmentId] = str(structure)
            elif (name in ("GTVp", "GTVn") or NODE_SEGMENT.fullmatch(name)) and name not in named.values():
                named[segmentId] = name  # the first of a name: the one the earlier version wrote
        if tagged or not segmentationNode.GetAttribute(FINGERPRINT_ATTRIBUTE):
            return tagged
        return named

    @staticmethod
    def _writeLabel(segmentationNode, label, ctNode, split: bool = False) -> tuple:
        """A label map on the CT's grid into the GTVp and GTVn segments (created, named, coloured, coded as needed).

        ``split``: GTVn as one segment per node, GTVn_1 (the largest) .. GTVn_k; node segments of an
        earlier write that no longer exist (or GTVn when splitting, and the reverse) are removed.
        Returns the label values written, their segment definitions (value i + 1 is the i-th) and segment IDs.
        The segmentation is put under the CT's transform and refers to the CT (:data:`CT_REFERENCE_ROLE`); a
        segmentation under another transform that holds segments of the user's is refused (they would move).

        Why one import of an image in memory: slicer.util's per-segment helper makes a scene volume of
        the whole CT grid for each segment; on a whole-body CT the two took 1.0 s on a 2-core CPU, the
        one import of the label's bounding box 0.2 s, and the segments hold that box, not the grid.
        """
        import numpy as np
        from vtk.util import numpy_support

        problem = HNTumorSegSceneLogic.frameProblem(segmentationNode, ctNode)
        if problem:
            raise InputError(problem)
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(ctNode)
        segmentationNode.SetAndObserveTransformNodeID(ctNode.GetTransformNodeID())
        segmentationNode.SetNodeReferenceID(CT_REFERENCE_ROLE, ctNode.GetID())
        segmentation = segmentationNode.GetSegmentation()
        binary = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
        if segmentation.GetSourceRepresentationName() != binary:
            # Closed surfaces (an imported RTSTRUCT, say): made voxels first, as the Segment Editor does.
            if segmentation.GetNumberOfSegments() and not segmentation.CreateRepresentation(binary):
                raise InputError(f"segmentation '{segmentationNode.GetName()}' holds "
                                 f"{segmentation.GetSourceRepresentationName()} segments that Slicer cannot turn "
                                 "into a binary labelmap: choose a new output segmentation")
            segmentation.SetSourceRepresentationName(binary)
        values, definitions = split_nodes(label) if split else (label, SEGMENTS)
        wanted = {definition.name for definition in definitions}
        ownedIds = {name: segmentId for segmentId, name in HNTumorSegSceneLogic.ownedSegments(segmentationNode).items()}
        stale = [segmentId for name, segmentId in ownedIds.items()
                 if (name == "GTVn" or NODE_SEGMENT.fullmatch(name)) and name not in wanted]
        tagName = slicer.vtkSegment.GetTerminologyEntryTagName()
        segmentIds, added = vtk.vtkStringArray(), []  # the import gives label value i + 1 to the i-th of these
        for index, definition in enumerate(definitions):
            if definition.label != index + 1:
                raise ValueError(f"segment {definition.name} has label {definition.label}, not {index + 1}")
            segmentId = ownedIds.get(definition.name)
            if not segmentId:
                free = segmentation.GetSegment(definition.name) is None  # a user's segment may hold the name as ID
                segmentId = segmentation.AddEmptySegment(definition.name if free else "", definition.name,
                                                         definition.color)
                added.append(segmentId)
            segment = segmentation.GetSegment(segmentId)
            segment.SetColor(*definition.color)
            segment.SetTag(tagName, definition.terminology_entry())
            segment.SetTag(OWNER_TAG, definition.name)
            segmentIds.InsertNextValue(segmentId)
        box = [np.flatnonzero(np.any(values, axis=axes)) for axes in ((1, 2), (0, 2), (0, 1))]
        (z0, z1), (y0, y1), (x0, x1) = [(int(b[0]), int(b[-1])) if b.size else (0, 0) for b in box]
        part = np.ascontiguousarray(values[z0:z1 + 1, y0:y1 + 1, x0:x1 + 1])
        image = slicer.vtkOrientedImageData()
        image.SetExtent(x0, x1, y0, y1, z0, z1)
        image.GetPointData().SetScalars(numpy_support.numpy_to_vtk(
            part.ravel(), deep=True, array_type=numpy_support.get_vtk_array_type(part.dtype)))
        ijkToRas = vtk.vtkMatrix4x4()
        ctNode.GetIJKToRASMatrix(ijkToRas)  # the CT's grid, in the parent frame the segmentation shares
        image.SetImageToWorldMatrix(ijkToRas)
        if not slicer.vtkSlicerSegmentationsModuleLogic.ImportLabelmapToSegmentationNode(image, segmentationNode,
                                                                                         segmentIds):
            for segmentId in added:  # nothing of this write stays
                segmentation.RemoveSegment(segmentId)
            raise RuntimeError(f"Slicer could not import the label map into '{segmentationNode.GetName()}'")
        for segmentId in stale:  # node segments of an earlier write that this one does not have
            segmentation.RemoveSegment(segmentId)
        return values, definitions, [segmentIds.GetValue(i) for i in range(segmentIds.GetNumberOfValues())]

    @classmethod
    def frameProblem(cls, segmentationNode, ctNode) -> Optional[str]:
        """Why the module's segments cannot be written into this segmentation on this CT's grid, or None.

        Writing puts the segmentation under the CT's transform; under another transform, that would move any
        segment of the user's in it (it would no longer lie where the user drew it).
        """
        if (segmentationNode.GetTransformNodeID() or "") == (ctNode.GetTransformNodeID() or ""):
            return None
        owned = cls.ownedSegments(segmentationNode)
        segmentation = segmentationNode.GetSegmentation()
        if all(segmentation.GetNthSegmentID(i) in owned for i in range(segmentation.GetNumberOfSegments())):
            return None
        transform = segmentationNode.GetParentTransformNode()
        return (f"segmentation '{segmentationNode.GetName()}' lies under "
                f"{f'the transform {transform.GetName()!r}' if transform else 'no transform'} and the CT "
                f"'{ctNode.GetName()}' does not: writing into it would move the other segments it holds; harden its "
                "transform (Data module) or choose another output segmentation")

    @classmethod
    def editProblem(cls, segmentationNode, ctNode, petNode=None) -> Optional[str]:
        """Why a click or an undo on this segmentation cannot act with these inputs, or None (the PET, where a
        click needs it, is checked by the caller)."""
        if segmentationNode is None or ctNode is None:
            return "needs the output segmentation and the CT"
        if ctNode is petNode:
            return "CT and PET are the same volume: select the PET in the PET selector"
        written = segmentationNode.GetNodeReference(CT_REFERENCE_ROLE)
        if written is not None and written is not ctNode:
            return (f"the segments of '{segmentationNode.GetName()}' lie on the grid of CT '{written.GetName()}': "
                    "select it as the CT to correct them")
        return cls.frameProblem(segmentationNode, ctNode)

    # ------------------------------------------------------------------ one-click corrections
    def editAt(self, segmentationNode, ctNode, petNode, pointRas: Sequence[float], action: str,
               structure: Optional[str] = None, params=None, fraction: float = DEFAULT_FRACTION,
               method: str = "auto", clickModel: Optional[str] = None) -> str:
        """One click's correction at a world RAS point: "add" (to ``structure``), "remove", "relabel", "redraw".
        ``method``: how add and redraw draw ("auto": the click model for nodes; see clicks.draw_region);
        ``clickModel``: the click model's .json to draw with (None: the bundled one), as ``edit --click-model``.

        The library's functions do the work (HNTumorSegLib.editing.clicks, as ``hntumorseg edit``);
        the segments are rewritten without a new fingerprint, so the edit guard sees an edited
        result. The previous segments go on an undo stack; with ``params`` the table is updated.
        Returns the status line; a click that cannot act raises InputError and changes nothing.
        """
        import SimpleITK as sitk

        from HNTumorSegLib.editing import clicks

        problem = "needs the output segmentation, the CT and the PET" if petNode is None else \
            self.editProblem(segmentationNode, ctNode, petNode)
        if problem:
            raise InputError(problem)
        before = self.segmentLabels(segmentationNode, ctNode)
        ctImage, petImage = self.worldImage(ctNode, "CT"), self.petImage(petNode)
        labelImage = sitk.GetImageFromArray(before)
        labelImage.CopyInformation(ctImage)  # the segments lie on the CT's grid
        r, a, s = (float(v) for v in pointRas)
        pointLps = (-r, -a, s)  # the library works in patient LPS, the scene in RAS
        edit = clicks.edit_at(labelImage, petImage, action, pointLps, structure, fraction, ct=ctImage, method=method,
                              click_model=clickModel)
        self._writeLabel(segmentationNode, sitk.GetArrayFromImage(edit.label), ctNode, self.isSplit(segmentationNode))
        self._undo.setdefault(segmentationNode.GetID(), []).append((before, ctNode.GetID()))  # once written
        if params is not None:
            self._measureIntoTable(edit.label, ctImage, petImage, segmentationNode, params)
        return edit.message

    def canUndo(self, segmentationNode) -> bool:
        return self.inScene(segmentationNode) and bool(self._undo.get(segmentationNode.GetID()))

    def undoEdit(self, segmentationNode, ctNode, petNode=None, params=None) -> bool:
        """Put back the segments as they were before the last click; False when there is nothing to undo.

        The step must have been made on this CT: a label map of another grid is never written (InputError;
        the steps stay, for when that CT is selected again).
        """
        if not self.canUndo(segmentationNode):
            return False
        steps = self._undo[segmentationNode.GetID()]
        before, ctId = steps[-1]
        if ctNode is None or ctId != ctNode.GetID() or before.shape != slicer.util.arrayFromVolume(ctNode).shape:
            made = slicer.mrmlScene.GetNodeByID(ctId)
            raise InputError(f"the last click on '{segmentationNode.GetName()}' was made on "
                             f"{f'CT {made.GetName()!r}' if made is not None else 'a CT no longer in the scene'}: "
                             "select it as the CT to undo it")
        problem = self.editProblem(segmentationNode, ctNode, petNode)
        if problem:
            raise InputError(problem)
        self._writeLabel(segmentationNode, before, ctNode, self.isSplit(segmentationNode))
        steps.pop()
        if params is not None and petNode is not None:
            self.updateResultsTable(segmentationNode, ctNode, petNode, params)
        return True

    def fillResultsTable(self, structures: dict, params, lesions: Sequence[dict] = ()) -> None:
        """Each segment's row, then its lesions' rows (``lesionAtRow`` maps a row back to its lesion)."""
        table = params.resultsTable
        if not self.inScene(table):
            table = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLTableNode", "HNTumorSeg results")
            params.resultsTable = table
        with slicer.util.NodeModify(table):
            table.RemoveAllColumns()
            for name in COLUMNS:
                table.AddColumn().SetName(name)
            for row in table_rows(structures, lesions):
                index = table.AddEmptyRow()
                for column, text in enumerate(row):
                    table.SetCellText(index, column, text)

    def updateResultsTable(self, segmentationNode, ctNode, petNode, params) -> dict:
        """Recompute the table from the segments as they are now (after editing)."""
        import SimpleITK as sitk

        if segmentationNode is None or ctNode is None or petNode is None:
            raise InputError("needs the output segmentation, the CT and the PET")
        ctImage = self.worldImage(ctNode, "CT")
        labelImage = sitk.GetImageFromArray(self.segmentLabels(segmentationNode, ctNode))
        labelImage.CopyInformation(ctImage)  # the segments lie on the CT's grid
        return self._measureIntoTable(labelImage, ctImage, self.petImage(petNode), segmentationNode, params)

    def _measureIntoTable(self, labelImage, ctImage, petImage, segmentationNode, params) -> dict:
        """Structures and lesions of a label image (world geometry) into the table and the summary attribute.

        Edited contours have no network probabilities: their lesions are listed without a confidence.
        """
        from HNTumorSegLib.evaluation.lesions import measurements

        measured = measurements(labelImage, petImage, ctImage)
        structures = measured["structures"]
        self.fillResultsTable(structures, params, measured["lesions"])
        segmentationNode.SetAttribute("HNTumorSeg.Summary", summary_line(structures))
        return structures

    @staticmethod
    def lesionAtRow(params, row: int) -> Optional[dict]:
        """The lesion shown in the results table's ``row``: its id and centroid (LPS, mm, as the table shows it);
        None for a segment's row or no table. Read from the table itself, which is saved with the scene."""
        table = params.resultsTable
        if table is None or not 0 <= row < table.GetNumberOfRows():
            return None
        cells = [table.GetCellText(row, column) for column in range(table.GetNumberOfColumns())]
        centroid = centroid_of_row(cells)
        return None if centroid is None else {"id": cells[0], "centroid_mm": list(centroid)}

    @staticmethod
    def centreViewsOn(lesion: dict) -> list:
        """Every slice view centred on the lesion's centroid (a double-click on its row); returns the RAS point.

        The centroid is in patient LPS millimetres (the library's and DICOM's convention); the world
        of the scene is RAS. The CT's parent transform, if any, was applied before segmenting, so the
        centroid is already in world coordinates.
        """
        x, y, z = lesion["centroid_mm"]
        ras = [-x, -y, z]
        slicer.vtkMRMLSliceNode.JumpAllSlices(slicer.mrmlScene, *ras, slicer.vtkMRMLSliceNode.CenteredJumpSlice)
        return ras

    def loadUncertainty(self, result: JobResult, ctNode, params) -> None:
        """The run's uncertainty map (percent, on the CT grid) into a volume beside the CT, shown if asked for."""
        import SimpleITK as sitk

        info = result.report.get("uncertainty")
        if not info:
            return
        values = sitk.GetArrayFromImage(sitk.ReadImage(info["file"]))
        volume = params.uncertaintyVolume
        if not self.inScene(volume):
            volume = slicer.vtkMRMLScalarVolumeNode()
            volume.SetName(slicer.mrmlScene.GenerateUniqueName(f"{ctNode.GetName()} uncertainty"))
            volume.SetAttribute(UNCERTAINTY_ATTRIBUTE, "uncertainty")  # marked before it is added: never an input
            slicer.mrmlScene.AddNode(volume)
            params.uncertaintyVolume = volume
        ijkToRas = vtk.vtkMatrix4x4()
        ctNode.GetIJKToRASMatrix(ijkToRas)
        volume.SetIJKToRASMatrix(ijkToRas)
        volume.SetAndObserveTransformNodeID(ctNode.GetTransformNodeID())
        slicer.util.updateVolumeFromArray(volume, values)
        volume.SetAttribute(UNCERTAINTY_ATTRIBUTE, f"{info['measure']} ({info.get('unit', '')})")
        if volume.GetDisplayNode() is None:
            volume.CreateDefaultDisplayNodes()
        display = volume.GetDisplayNode()
        display.SetAndObserveColorNodeID(UNCERTAINTY_COLORS)
        display.SetAutoWindowLevel(0)
        display.SetWindowLevelMinMax(0.0, 100.0)
        display.SetApplyThreshold(1)
        display.SetLowerThreshold(UNCERTAINTY_SHOWN_FROM)  # certain voxels stay clear: the CT shows through
        self.showUncertainty(params)

    @staticmethod
    def showUncertainty(params) -> None:
        """The uncertainty as a colour overlay on every slice view (foreground layer), or not, per the parameter."""
        volume = params.uncertaintyVolume
        if not HNTumorSegSceneLogic.inScene(volume):
            return
        for composite in slicer.util.getNodesByClass("vtkMRMLSliceCompositeNode"):
            if params.showUncertainty:
                composite.SetForegroundVolumeID(volume.GetID())
                composite.SetForegroundOpacity(UNCERTAINTY_OPACITY)
            elif composite.GetForegroundVolumeID() == volume.GetID():
                composite.SetForegroundVolumeID(None)

    def showAnalysisWindow(self, provenance: dict, params) -> None:
        """The 256 x 256 x 112 window the network saw, as a locked markups ROI (world coordinates)."""
        box = analysis_window_box(provenance)
        roi = params.analysisWindowROI
        if not self.inScene(roi):
            roi = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsROINode", "HNTumorSeg analysis window")
            roi.CreateDefaultDisplayNodes()
            params.analysisWindowROI = roi
        with slicer.util.NodeModify(roi):
            roi.SetAndObserveObjectToNodeMatrix(slicer.util.vtkMatrixFromArray(box.object_to_world()))
            roi.SetCenter(*box.center_ras)
            roi.SetSize(*box.size_mm)
            roi.SetLocked(True)
        display = roi.GetDisplayNode()
        if display is not None:
            display.SetHandlesInteractive(False)
            display.SetFillOpacity(0.0)
            # The box alone: its name and centre glyph would sit on the tumour (the window is centred near it).
            display.SetPropertiesLabelVisibility(False)
            display.SetPointLabelsVisibility(False)
            display.SetGlyphType(display.GlyphTypeInvalid)
        roi.SetDisplayVisibility(bool(params.showAnalysisWindow))

    # ------------------------------------------------------------------ export
    def exportState(self, ctNode, segmentationNode) -> ExportState:
        sh = slicer.mrmlScene.GetSubjectHierarchyNode()
        plugins = frozenset(getattr(getattr(slicer, "modules", None), "dicomPlugins", {}).keys())
        ctStudy = segStudy = 0
        if ctNode is not None:
            ctStudy = sh.GetItemParent(sh.GetItemByDataNode(ctNode))
            if ctStudy and sh.GetItemLevel(ctStudy) != slicer.vtkMRMLSubjectHierarchyConstants.GetDICOMLevelStudy():
                ctStudy = 0
        hasContent = False
        if segmentationNode is not None:
            segStudy = sh.GetItemParent(sh.GetItemByDataNode(segmentationNode))
            segmentation = segmentationNode.GetSegmentation()
            for index in range(segmentation.GetNumberOfSegments()):
                bounds = [1.0, -1.0, 1.0, -1.0, 1.0, -1.0]
                segmentation.GetSegment(segmentation.GetNthSegmentID(index)).GetBounds(bounds)
                hasContent = hasContent or bounds[0] <= bounds[1]
        return ExportState(
            has_segmentation=segmentationNode is not None, has_content=hasContent, ct_in_study=bool(ctStudy),
            same_study=bool(ctStudy) and segStudy == ctStudy, plugins=plugins,
            ct_from_dicom=bool(ctNode is not None and self.dicomInstanceUIDs(ctNode)))

    @staticmethod
    def _newFiles(folder: str, before: set) -> list:
        after = {os.path.join(root, name) for root, _, names in os.walk(folder) for name in names}
        return sorted(os.path.relpath(p, folder) for p in after - before)

    def _checkedExport(self, ctNode, segmentationNode, availability):
        enabled, reason = availability(self.exportState(ctNode, segmentationNode))
        if not enabled:
            raise RuntimeError(reason)

    def exportRtstruct(self, segmentationNode, ctNode, folder: str) -> list:
        """CT series and RT Structure Set (GTVp, GTVn) through SlicerRT; returns the new files."""
        self._checkedExport(ctNode, segmentationNode, rtstruct_availability)
        import DicomRtImportExportPlugin

        return self._exportWith(DicomRtImportExportPlugin.DicomRtImportExportPluginClass(), [ctNode, segmentationNode],
                                folder, "SlicerRT", "SlicerRT found nothing to export (are the CT and the "
                                "segmentation in one study?)")

    def exportDicomSeg(self, segmentationNode, ctNode, folder: str) -> list:
        """A DICOM Segmentation object referencing the CT's slices; returns the new files."""
        self._checkedExport(ctNode, segmentationNode, dicom_seg_availability)
        import DICOMSegmentationPlugin

        return self._exportWith(DICOMSegmentationPlugin.DICOMSegmentationPluginClass(), [segmentationNode],
                                folder, "DICOM SEG", "the DICOM SEG exporter found nothing to export")

    def _exportWith(self, exporter, nodes: list, folder: str, what: str, nothing: str) -> list:
        """Run a DICOM plugin's exporter on ``nodes`` into ``folder``; the new files, or RuntimeError."""
        os.makedirs(folder, exist_ok=True)
        before = {os.path.join(r, n) for r, _, names in os.walk(folder) for n in names}
        sh = slicer.mrmlScene.GetSubjectHierarchyNode()
        exportables = [e for node in nodes for e in exporter.examineForExport(sh.GetItemByDataNode(node))]
        if not exportables:
            raise RuntimeError(nothing)
        for exportable in exportables:
            exportable.directory = folder
        message = exporter.export(exportables)
        if message:
            raise RuntimeError(f"{what}: {message}")
        return self._newFiles(folder, before)
