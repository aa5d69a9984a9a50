"""HNTumorSeg: head-and-neck GTVp / GTVn segmentation on PET/CT, as a 3D Slicer module.

A thin layer over HNTumorSegLib: everything that can be computed without Slicer (the worker
process and its protocol, default inputs, SUV check, geometry, statistics, segment codes,
export preconditions) lives there and is tested with pytest. What the module does to the scene is
HNTumorSegSceneLogic.py (no Qt; tested on Slicer's core libraries). This file holds the template's
Module, Widget, Logic and Test classes: the panel, the parameter node and the PyTorch installer.
"""

import logging
import os
import shutil
from typing import Optional

import qt
import slicer
import vtk
from slicer import (vtkMRMLMarkupsROINode, vtkMRMLScalarVolumeNode, vtkMRMLSegmentationNode,
                    vtkMRMLTableNode)
from slicer.parameterNodeWrapper import parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

from HNTumorSegSceneLogic import WARNINGS_ATTRIBUTE, HNTumorSegSceneLogic  # noqa: E402  (also puts HNTumorSegLib on sys.path)

# None of these imports torch: the module loads (and offers to install torch) without it.
from HNTumorSegLib.dicom.segment_terminology import SEGMENTS  # noqa: E402
from HNTumorSegLib.errors import InputError  # noqa: E402
from HNTumorSegLib.pipeline.model_info import read_model_description  # noqa: E402
from HNTumorSegLib.slicer_support.device_info import device_choices, device_summary  # noqa: E402
from HNTumorSegLib.slicer_support.edit_guard import ASK, REPLACE  # noqa: E402
from HNTumorSegLib.slicer_support.export_checks import dicom_seg_availability, rtstruct_availability  # noqa: E402
from HNTumorSegLib.slicer_support.module_requirements import TORCH_REQUIREMENT, find_missing  # noqa: E402
from HNTumorSegLib.slicer_support.results_table import summary_line  # noqa: E402
from HNTumorSegLib.slicer_support.segmentation_job import FAILED, RUNNING, SUCCEEDED  # noqa: E402
from HNTumorSegLib.slicer_support.suv_check import ERROR, WARNING  # noqa: E402
from HNTumorSegLib.slicer_support.worker_process import WorkerProcess  # noqa: E402

#: What to do when the output segmentation was edited since the module wrote it.
WHEN_EDITED = ("ask", "new", "overwrite")
POLL_INTERVAL_MS = 250
#: The one-click buttons: widget name, the click's action, the structure it adds to (None: the lesion's own).
CLICK_BUTTONS = (("addGtvpButton", "add", "GTVp"), ("addGtvnButton", "add", "GTVn"),
                 ("removeLesionButton", "remove", None), ("relabelLesionButton", "relabel", None),
                 ("redrawLesionButton", "redraw", None))


#
# HNTumorSeg
#


class HNTumorSeg(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "HNTumorSeg"
        self.parent.categories = ["Segmentation"]
        self.parent.dependencies = []
        self.parent.contributors = ["HNTumorSeg developers"]
        self.parent.helpText = (
            "Segments the primary tumour (GTVp) and metastatic lymph nodes (GTVn) of head-and-neck cancer "
            "on a PET/CT pair with a PET-guided attention U-Net. Pick the CT and the PET (in SUV), press "
            "Segment, edit the result in Segment Editor, export it as RTSTRUCT or DICOM SEG. "
            "Research use only; the bundled model is trained on synthetic phantoms and is not for clinical use.")
        self.parent.acknowledgementText = (
            "Method: PET-guided brain-peak-cut crop and PSAM U-Net with SE Normalization (HECKTOR 2025).")


#
# Parameter node
#


@parameterNodeWrapper
class HNTumorSegParameterNode:
    """The module's state, saved with the scene.

    inputCT, inputPET: the volumes to segment. outputSegmentation: where GTVp/GTVn go (None: a new
    segmentation on Segment). modelPath: empty for the bundled model. device: auto / cuda / cpu.
    useTTA: left-right flip test-time augmentation. showAnalysisWindow: show the network's window.
    showUncertainty: the network's uncertainty as a colour overlay on the slice views. splitLesions:
    GTVn written node by node (segments GTVn_1 .. GTVn_k). clickThresholdPercent: the share of the local
    SUVmax over the background that Add and Redraw take (41 %, the clinical threshold). clickModelForNodes:
    Add GTVn and Redraw on a node draw with the click model (unchecked: the threshold). clickModelPath: empty
    for the bundled click model, or one's own (``hntumorseg-train click-model``). refineNodes: Segment redraws
    every node the network drew with the bundled click model, from its centre (``segment --refine-nodes``).
    resultsTable, analysisWindowROI, uncertaintyVolume: what the last run produced.
    """

    inputCT: vtkMRMLScalarVolumeNode
    inputPET: vtkMRMLScalarVolumeNode
    outputSegmentation: vtkMRMLSegmentationNode
    modelPath: str = ""
    device: str = "auto"
    useTTA: bool = False
    showAnalysisWindow: bool = True
    resultsTable: vtkMRMLTableNode
    analysisWindowROI: vtkMRMLMarkupsROINode
    uncertaintyVolume: vtkMRMLScalarVolumeNode
    showUncertainty: bool = False
    splitLesions: bool = False
    clickThresholdPercent: float = 41.0
    clickModelForNodes: bool = True
    clickModelPath: str = ""
    refineNodes: bool = False


#
# HNTumorSegWidget
#


class HNTumorSegWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self.job = None
        self.jobContext = None
        self.probe = None
        self.probeResult = None
        self.enabledDevices = set()
        self.pendingClick = None
        self._clickPoints = None
        self.pollTimer = qt.QTimer()
        self.pollTimer.setInterval(POLL_INTERVAL_MS)
        self.pollTimer.connect("timeout()", self.onPoll)

    # ------------------------------------------------------------------ set-up
    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/HNTumorSeg.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = HNTumorSegLogic()

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.NodeAddedEvent, self.onNodeAdded)

        self.fillDeviceComboBox(None)
        self.ui.deviceComboBox.connect("currentIndexChanged(int)", self.onDeviceChanged)
        self.ui.modelPathLineEdit.connect("currentPathChanged(QString)", self.onModelPathChanged)
        self.ui.clickModelPathLineEdit.connect("currentPathChanged(QString)", self.onClickModelPathChanged)
        self.ui.petSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateInputWarnings)
        self.ui.ctSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateInputWarnings)
        self.ui.outputSelector.connect("currentNodeChanged(vtkMRMLNode*)", self.updateButtons)
        self.ui.showWindowCheckBox.connect("toggled(bool)", self.onShowWindowToggled)
        self.ui.showUncertaintyCheckBox.connect("toggled(bool)", self.onShowUncertaintyToggled)
        self.ui.segmentButton.connect("clicked(bool)", self.onSegmentButton)
        self.ui.updateStatisticsButton.connect("clicked(bool)", self.onUpdateStatistics)
        self.ui.editButton.connect("clicked(bool)", self.onEditButton)
        self.ui.resultsTableView.connect("doubleClicked(QModelIndex)", self.onResultsRowDoubleClicked)
        for button, action, structure in CLICK_BUTTONS:
            getattr(self.ui, button).connect("clicked(bool)", lambda _=False, a=action, s=structure: self.armClick(a, s))
        self.ui.undoClickButton.connect("clicked(bool)", self.onUndoClick)
        self.ui.exportRtstructButton.connect("clicked(bool)", self.onExportRtstruct)
        self.ui.exportDicomSegButton.connect("clicked(bool)", self.onExportDicomSeg)
        self.ui.exportDirectoryButton.directory = qt.QDir.homePath()

        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.cancelJob()
        self.stopProbe()
        self.pollTimer.stop()
        self.removeObservers()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.startProbe()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)

    def onSceneStartClose(self, caller, event) -> None:
        self.cancelJob()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    @vtk.calldata_type(vtk.VTK_OBJECT)
    def onNodeAdded(self, caller, event, node) -> None:
        # A volume just loaded (say, a PET/CT study from DICOM) may be the obvious input.
        if isinstance(node, vtkMRMLScalarVolumeNode) and self._parameterNode is not None:
            qt.QTimer.singleShot(0, self.selectDefaultInputs)

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        self.selectDefaultInputs()

    def selectDefaultInputs(self) -> None:
        if self._parameterNode is None or (self._parameterNode.inputCT and self._parameterNode.inputPET):
            return
        ct, pet = self.logic.defaultInputs()
        if not self._parameterNode.inputCT and ct is not None and ct is not self._parameterNode.inputPET:
            self._parameterNode.inputCT = ct
        if not self._parameterNode.inputPET and pet is not None and pet is not self._parameterNode.inputCT:
            self._parameterNode.inputPET = pet

    def setParameterNode(self, inputParameterNode: Optional[HNTumorSegParameterNode]) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.updateButtons)
            self.ui.modelPathLineEdit.currentPath = self._parameterNode.modelPath
            self.ui.clickModelPathLineEdit.currentPath = self._parameterNode.clickModelPath
            self.selectDevice(self._parameterNode.device)
            if self._parameterNode.resultsTable:
                self.ui.resultsTableView.setMRMLTableNode(self._parameterNode.resultsTable)
            self.updateInputWarnings()
            self.updateModelInfo()
        self.updateButtons()

    # ------------------------------------------------------------------ device and model
    def startProbe(self) -> None:
        """Ask a worker process, in the background, which devices torch sees and which model is bundled."""
        if self.probe is not None or self.probeResult is not None:
            return
        if not find_missing().nothing:
            self.ui.deviceInfoLabel.text = ("PyTorch or another Python package is not installed yet; "
                                            "Segment offers to install it.")
            return
        try:
            self.probe = WorkerProcess(self.logic.workerPython() + ["-m", "HNTumorSegLib.slicer_support.worker", "--probe"],
                                       env=self.logic.workerEnvironment()).start()
        except Exception as exc:
            self.ui.deviceInfoLabel.text = f"Cannot start the worker process: {exc}"
            self.probe = None
            return
        self.pollTimer.start()

    def stopProbe(self) -> None:
        if self.probe is not None:
            self.probe.cancel()
            self.probe = None

    def pollProbe(self) -> None:
        if self.probe is None:
            return
        for event in self.probe.poll():
            if event.get("event") == "devices":
                self.probeResult = event
            elif event.get("event") == "error":
                self.ui.deviceInfoLabel.text = f"Device check failed: {event.get('message')}"
        if not self.probe.finished:
            return
        if self.probeResult is None:
            tail = [line for line in self.probe.stderr_tail() if line.strip()]
            self.ui.deviceInfoLabel.text = ("Device check failed: the worker's Python could not start"
                                            + (f" ({tail[-1].strip()})" if tail else ""))
        else:
            self.fillDeviceComboBox(self.probeResult)
            self.ui.deviceInfoLabel.text = device_summary(self.probeResult)
            self.updateModelInfo()
        self.probe = None

    def fillDeviceComboBox(self, probe) -> None:
        current = self._parameterNode.device if self._parameterNode else "auto"
        combo = self.ui.deviceComboBox
        wasBlocked = combo.blockSignals(True)
        combo.clear()
        self.enabledDevices = set()
        for index, choice in enumerate(device_choices(probe)):
            combo.addItem(choice.label, choice.value)
            combo.setItemData(index, choice.tooltip, qt.Qt.ToolTipRole)
            if choice.enabled:
                self.enabledDevices.add(choice.value)
            else:
                combo.setItemData(index, 0, qt.Qt.UserRole - 1)  # greys the item out (Qt item flags)
        combo.blockSignals(wasBlocked)
        shown = self.selectDevice(current)
        if self._parameterNode is not None and shown != current:
            # a device this machine lacks (a scene saved on another): what the panel shows is what runs
            self._parameterNode.device = shown

    def selectDevice(self, value: str) -> str:
        """Show ``value`` in the device box, or "auto" where it is not offered; returns the value shown."""
        combo = self.ui.deviceComboBox
        index = combo.findData(value)
        if index < 0 or value not in self.enabledDevices:
            value, index = "auto", combo.findData("auto")
        wasBlocked = combo.blockSignals(True)
        combo.currentIndex = index
        combo.blockSignals(wasBlocked)
        return value

    def onDeviceChanged(self, index: int) -> None:
        if self._parameterNode is not None and index >= 0:
            self._parameterNode.device = self.ui.deviceComboBox.itemData(index)

    def onModelPathChanged(self, path: str) -> None:
        if self._parameterNode is not None:
            self._parameterNode.modelPath = path.strip()
        self.updateModelInfo()

    def onClickModelPathChanged(self, path: str) -> None:
        if self._parameterNode is not None:
            self._parameterNode.clickModelPath = path.strip()

    def updateModelInfo(self) -> None:
        path = self._parameterNode.modelPath if self._parameterNode else ""
        if path:
            self.ui.modelInfoLabel.text = read_model_description(path)
        elif self.probeResult is not None:
            bundled = self.probeResult.get("bundled_model") or {}
            self.ui.modelInfoLabel.text = f"Bundled model: {bundled.get('description', 'unknown')}"
        else:
            self.ui.modelInfoLabel.text = "Bundled model (details appear once the worker has started)."

    # ------------------------------------------------------------------ inputs
    def updateInputWarnings(self, *unused) -> None:
        if self._parameterNode is None:
            return
        messages = [message for level, message in self.logic.inputProblems(
            self._parameterNode.inputCT, self._parameterNode.inputPET)]
        self.ui.inputWarningLabel.text = "\n".join(messages)
        self.ui.inputWarningLabel.visible = bool(messages)
        self.updateButtons()

    def updateButtons(self, *unused) -> None:
        params = self._parameterNode
        running = self.job is not None
        if running:
            self.ui.segmentButton.text = "Cancel"
            self.ui.segmentButton.toolTip = "Stop the running segmentation; the scene stays as it was."
            self.ui.segmentButton.enabled = True
        else:
            self.ui.segmentButton.text = "Segment"
            ready = bool(params and params.inputCT and params.inputPET)
            self.ui.segmentButton.enabled = ready
            self.ui.segmentButton.toolTip = ("Segment GTVp and GTVn in the background." if ready
                                             else "Select a CT and a PET first.")
        segmentation = params.outputSegmentation if params else None
        for widget in (self.ui.updateStatisticsButton, self.ui.editButton):
            widget.enabled = bool(segmentation) and not running
        canClick = bool(segmentation and params.inputCT and params.inputPET) and not running
        for button, _, _ in CLICK_BUTTONS:
            getattr(self.ui, button).enabled = canClick
        self.ui.undoClickButton.enabled = canClick and self.logic.canUndo(segmentation)
        state = self.logic.exportState(params.inputCT if params else None, segmentation)
        for button, availability in ((self.ui.exportRtstructButton, rtstruct_availability),
                                     (self.ui.exportDicomSegButton, dicom_seg_availability)):
            enabled, tooltip = availability(state)
            button.enabled = enabled and not running
            button.toolTip = tooltip

    # ------------------------------------------------------------------ segment / cancel
    def onSegmentButton(self) -> None:
        if self.job is not None:
            self.cancelJob()
            self.ui.statusLabel.text = "Cancelled: the scene is unchanged."
            return
        params = self._parameterNode
        ct, pet = params.inputCT, params.inputPET
        try:
            if not self.logic.ensurePythonRequirements(askUser=True):
                self.ui.statusLabel.text = "Not started: the required Python packages are not installed."
                return
            self.startProbe()
            for level, message in self.logic.inputProblems(ct, pet):
                if level == ERROR:
                    slicer.util.errorDisplay(message, windowTitle="HNTumorSeg: cannot segment")
                    return
                if level == WARNING and not slicer.util.confirmOkCancelDisplay(
                        f"{message}\n\nSegment anyway?", windowTitle="HNTumorSeg: check the inputs"):
                    return
            whenEdited = self.askWhenEdited(params.outputSegmentation, ct)
            if whenEdited is None:
                return
            self.job = self.logic.startJob(ct, pet, params.modelPath or None, params.device, params.useTTA,
                                           params.refineNodes)
        except (InputError, RuntimeError) as exc:
            slicer.util.errorDisplay(str(exc), windowTitle="HNTumorSeg: cannot segment")
            return
        self.jobContext = {"ct": ct, "pet": pet, "output": params.outputSegmentation, "whenEdited": whenEdited}
        self.ui.progressBar.value = 0
        self.ui.progressBar.visible = True
        self.ui.statusLabel.text = self.job.status
        self.pollTimer.start()
        self.updateButtons()

    def askWhenEdited(self, segmentationNode, ctNode) -> Optional[str]:
        """"overwrite" or "new" (what to do if the output is found edited); None when the user cancels.

        Unedited now: "new", so that edits made while the job runs are kept as well.
        """
        policy = self.logic.outputPolicy(segmentationNode, ctNode)
        if policy != ASK:
            return "new"
        box = qt.QMessageBox(slicer.util.mainWindow())
        box.setWindowTitle("HNTumorSeg: segmentation was edited")
        box.setText(f"'{segmentationNode.GetName()}' was edited after HNTumorSeg wrote it (or was not written by it).")
        box.setInformativeText("Keep it and put the new result in a new segmentation? "
                               "(Overwrite replaces its GTVp and GTVn; other segments stay.)")
        newButton = box.addButton("Create new segmentation", qt.QMessageBox.AcceptRole)
        overwriteButton = box.addButton("Overwrite", qt.QMessageBox.DestructiveRole)
        box.addButton(qt.QMessageBox.Cancel)
        box.setDefaultButton(newButton)
        box.exec_()
        clicked = box.clickedButton()
        if clicked == newButton:
            return "new"
        if clicked == overwriteButton:
            return "overwrite"
        return None

    def onPoll(self) -> None:
        self.pollProbe()
        if self.job is None:
            if self.probe is None:
                self.pollTimer.stop()
            return
        job = self.job
        job.poll()
        self.ui.progressBar.value = job.percent
        self.ui.progressBar.format = f"{job.percent}%  {job.status}"
        self.ui.statusLabel.text = job.status
        if job.state == RUNNING:
            return
        context, self.job, self.jobContext = self.jobContext, None, None
        try:
            if job.state == SUCCEEDED:
                segmentationNode = self.logic.applyResult(job.result(), context["ct"], context["pet"],
                                                          context["output"], context["whenEdited"],
                                                          self._parameterNode)
                warning = segmentationNode.GetAttribute(WARNINGS_ATTRIBUTE)
                self.ui.statusLabel.text = ("Done: " + segmentationNode.GetAttribute("HNTumorSeg.Summary")
                                            + (f". Warning: {warning}" if warning else ""))
                self.ui.resultsTableView.setMRMLTableNode(self._parameterNode.resultsTable)
            elif job.state == FAILED:
                self.ui.statusLabel.text = f"Failed: {job.error}"
                slicer.util.errorDisplay(str(job.error), windowTitle="HNTumorSeg: segmentation failed",
                                         detailedText="\n".join(job.stderr_tail(40)))
        except Exception as exc:
            logging.exception("HNTumorSeg: could not load the result")
            slicer.util.errorDisplay(f"Could not load the result into the scene: {exc}",
                                     windowTitle="HNTumorSeg")
        finally:
            job.cleanup()
            self.ui.progressBar.visible = False
            self.updateButtons()

    def cancelJob(self) -> None:
        if self.job is not None:
            self.job.cancel()
            self.job, self.jobContext = None, None
            self.ui.progressBar.visible = False
            self.updateButtons()

    # ------------------------------------------------------------------ results and export
    def onShowWindowToggled(self, checked: bool) -> None:
        roi = self._parameterNode.analysisWindowROI if self._parameterNode else None
        if roi is not None:
            roi.SetDisplayVisibility(bool(checked))

    def onShowUncertaintyToggled(self, checked: bool) -> None:
        if self._parameterNode is not None:
            self._parameterNode.showUncertainty = bool(checked)
            self.logic.showUncertainty(self._parameterNode)

    def onUpdateStatistics(self) -> None:
        params = self._parameterNode
        try:
            structures = self.logic.updateResultsTable(params.outputSegmentation, params.inputCT, params.inputPET,
                                                       params)
        except (InputError, RuntimeError) as exc:
            slicer.util.errorDisplay(str(exc), windowTitle="HNTumorSeg")
            return
        self.ui.resultsTableView.setMRMLTableNode(params.resultsTable)
        self.ui.statusLabel.text = "Table updated: " + summary_line(structures)

    def onResultsRowDoubleClicked(self, index) -> None:
        """A lesion's row centres every slice view on that lesion; a segment's row does nothing."""
        lesion = self.logic.lesionAtRow(self._parameterNode, index.row())
        if lesion is not None:
            self.logic.centreViewsOn(lesion)

    # ------------------------------------------------------------------ one-click corrections
    def armClick(self, action: str, structure) -> None:
        """The next point placed in a view is where ``action`` acts (Markups place mode, one point)."""
        points = self.clickPointsNode()
        points.RemoveAllControlPoints()
        self.pendingClick = (action, structure)
        slicer.modules.markups.logic().SetActiveList(points)
        slicer.modules.markups.logic().StartPlaceMode(False)
        self.ui.statusLabel.text = f"Click on the lesion in a slice view ({action}{' ' + structure if structure else ''})."

    def clickPointsNode(self):
        """A hidden-from-the-data-tree point list that takes the clicks, observed once."""
        if self._clickPoints is None or self._clickPoints.GetScene() is None:
            points = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", "HNTumorSeg click")
            points.SetHideFromEditors(True)
            points.SetSaveWithScene(False)
            self.addObserver(points, points.PointPositionDefinedEvent, self.onClickPlaced)
            self._clickPoints = points
        return self._clickPoints

    def onClickPlaced(self, caller, event) -> None:
        if caller.GetNumberOfControlPoints() == 0 or self.pendingClick is None:
            return
        pointRas = [0.0, 0.0, 0.0]
        caller.GetNthControlPointPositionWorld(caller.GetNumberOfControlPoints() - 1, pointRas)
        caller.RemoveAllControlPoints()
        action, structure = self.pendingClick
        self.pendingClick = None
        params = self._parameterNode
        try:
            message = self.logic.editAt(params.outputSegmentation, params.inputCT, params.inputPET, pointRas, action,
                                        structure, params=params, fraction=params.clickThresholdPercent / 100.0,
                                        method="auto" if params.clickModelForNodes else "threshold",
                                        clickModel=(params.clickModelPath or None) if params.clickModelForNodes
                                        else None)
        except (InputError, RuntimeError) as exc:  # RuntimeError: Slicer refused the segments (said in one line)
            self.ui.statusLabel.text = f"Nothing changed: {exc}"
            return
        self.ui.resultsTableView.setMRMLTableNode(params.resultsTable)
        self.ui.statusLabel.text = message[0].upper() + message[1:]
        self.updateButtons()

    def onUndoClick(self) -> None:
        params = self._parameterNode
        try:
            if self.logic.undoEdit(params.outputSegmentation, params.inputCT, params.inputPET, params):
                self.ui.resultsTableView.setMRMLTableNode(params.resultsTable)
                self.ui.statusLabel.text = "Last click undone."
        except (InputError, RuntimeError) as exc:  # a step made on another CT, say
            self.ui.statusLabel.text = f"Nothing undone: {exc}"
        self.updateButtons()

    def onEditButton(self) -> None:
        params = self._parameterNode
        slicer.util.selectModule("SegmentEditor")
        editor = slicer.modules.segmenteditor.widgetRepresentation().self().editor
        editor.setSegmentationNode(params.outputSegmentation)
        editor.setSourceVolumeNode(params.inputCT)

    def onExportRtstruct(self) -> None:
        self.export(self.logic.exportRtstruct, "RTSTRUCT")

    def onExportDicomSeg(self) -> None:
        self.export(self.logic.exportDicomSeg, "DICOM SEG")

    def export(self, function, what: str) -> None:
        params = self._parameterNode
        folder = self.ui.exportDirectoryButton.directory
        with slicer.util.tryWithErrorDisplay(f"{what} export failed.", waitCursor=True):
            written = function(params.outputSegmentation, params.inputCT, folder)
            self.ui.statusLabel.text = f"{what}: {len(written)} file(s) written to {folder}"


#
# HNTumorSegLogic
#


class HNTumorSegLogic(ScriptedLoadableModuleLogic, HNTumorSegSceneLogic):
    """The template's logic: the scene logic plus the MRML parameter node and the PyTorch installer."""

    def __init__(self, workerPython=None) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        HNTumorSegSceneLogic.__init__(self, workerPython)

    def getParameterNode(self):
        return HNTumorSegParameterNode(ScriptedLoadableModuleLogic.getParameterNode(self))

    def ensurePythonRequirements(self, askUser: bool = True, selfTest: bool = False) -> bool:
        """Install what the worker needs, after asking; never touches Slicer's numpy or SimpleITK."""
        missing = find_missing(self_test=selfTest)
        if missing.nothing:
            return True
        if missing.bundled:
            raise RuntimeError(f"Slicer's own Python packages are missing ({', '.join(missing.bundled)}): "
                               "reinstall Slicer")
        packaging = getattr(slicer, "packaging", None)
        pipEnsure = getattr(packaging, "pip_ensure", None) if packaging is not None else None
        needsOurQuestion = missing.torch or missing.torch_version or (missing.pip and pipEnsure is None)
        if needsOurQuestion and askUser and not slicer.util.confirmOkCancelDisplay(
                "HNTumorSeg needs these Python packages:\n\n" + missing.describe()
                + "\n\nInstall them now? This needs a network connection and can take several minutes.",
                windowTitle="HNTumorSeg: install Python packages"):
            return False
        if missing.torch or missing.torch_version:
            try:
                import PyTorchUtils
            except ImportError:
                raise RuntimeError("PyTorch is not installed and the PyTorch extension is missing: install the "
                                   "'PyTorch' extension from the Extensions Manager, restart Slicer, press Segment "
                                   "again.") from None
            torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(
                askConfirmation=False, torchVersionRequirement=TORCH_REQUIREMENT)
            if torch is None:
                raise RuntimeError("PyTorch was not installed (installation failed or was cancelled).")
        if missing.pip:
            if pipEnsure is not None:
                pipEnsure(missing.pip, requester="HNTumorSeg")  # asks the user itself
            else:
                slicer.util.pip_install(" ".join(missing.pip))
        remaining = find_missing(self_test=selfTest)
        if not remaining.nothing:
            raise RuntimeError("Still missing after installation:\n" + remaining.describe())
        return True


#
# HNTumorSegTest
#


class HNTumorSegTest(ScriptedLoadableModuleTest):
    """Builds a phantom PET/CT in the scene, segments it in blocking mode and checks the result.

    Needs the bundled model (or HNTUMORSEG_TEST_MODEL pointing at a model file).
    """

    #: Dice floors against the phantom truth for the bundled phantom model (one held-out case).
    MIN_DICE = {"GTVp": 0.80, "GTVn": 0.70}
    PHANTOM_SEED = 9001

    def setUp(self):
        slicer.mrmlScene.Clear()

    def runTest(self):
        self.setUp()
        self.test_SegmentPhantom()

    def pushImage(self, image, name):
        import sitkUtils

        return sitkUtils.PushVolumeToSlicer(image, name=name)

    def test_SegmentPhantom(self):
        import numpy as np
        import SimpleITK as sitk

        logic = HNTumorSegLogic()
        self.assertTrue(logic.ensurePythonRequirements(askUser=False, selfTest=True))
        from HNTumorSegLib.evaluation.metrics import dice
        from HNTumorSegLib.phantom import make_phantom

        self.delayDisplay("Building a phantom PET/CT case")
        case = make_phantom(self.PHANTOM_SEED, "head", n_nodes=2)
        ctNode = self.pushImage(case.ct, f"{case.case_id}__CT")
        petNode = self.pushImage(case.pet, f"{case.case_id}__PT")
        sh = slicer.mrmlScene.GetSubjectHierarchyNode()
        patient = sh.CreateSubjectItem(sh.GetSceneItemID(), "HNTumorSeg phantom patient")
        study = sh.CreateStudyItem(patient, "HNTumorSeg phantom study")
        for node in (ctNode, petNode):
            sh.SetItemParent(sh.GetItemByDataNode(node), study)

        self.assertEqual([node.GetID() for node in logic.defaultInputs()], [ctNode.GetID(), petNode.GetID()])
        self.assertEqual([level for level, _ in logic.inputProblems(ctNode, petNode)], [])

        model = os.environ.get("HNTUMORSEG_TEST_MODEL") or None
        params = logic.getParameterNode()
        self.delayDisplay("Segmenting (blocking mode)")
        segNode = logic.segment(ctNode, petNode, model=model, parameterNode=params)

        # Segments: names, colours, terminology, geometry, study.
        segmentation = segNode.GetSegmentation()
        self.assertEqual(sorted(segmentation.GetSegment(segmentation.GetNthSegmentID(i)).GetName()
                                for i in range(segmentation.GetNumberOfSegments())), ["GTVn", "GTVp"])
        tagName = slicer.vtkSegment.GetTerminologyEntryTagName()
        for definition in SEGMENTS:
            segment = segmentation.GetSegment(segmentation.GetSegmentIdBySegmentName(definition.name))
            np.testing.assert_allclose(segment.GetColor(), definition.color, atol=1e-6)
            tag = vtk.reference("") if hasattr(vtk, "reference") else vtk.mutable("")
            self.assertTrue(segment.GetTag(tagName, tag))
            self.assertEqual(str(tag), definition.terminology_entry())
        self.assertEqual(segNode.GetNodeReferenceID(segNode.GetReferenceImageGeometryReferenceRole()), ctNode.GetID())
        self.assertEqual(sh.GetItemParent(sh.GetItemByDataNode(segNode)), study)
        masks = logic.segmentMasks(segNode, ctNode)
        truth = sitk.GetArrayFromImage(case.label)
        for definition in SEGMENTS:
            self.assertEqual(masks[definition.name].shape, truth.shape)
            score = dice(masks[definition.name].astype(np.uint8), (truth == definition.label).astype(np.uint8), 1)
            self.delayDisplay(f"Dice {definition.name}: {score:.3f}")
            self.assertGreaterEqual(score, self.MIN_DICE[definition.name])

        # Results table and analysis window.
        table = params.resultsTable
        self.assertEqual(table.GetNumberOfRows(), 2)
        self.assertEqual(table.GetCellText(0, 0), "GTVp")
        roi = params.analysisWindowROI
        np.testing.assert_allclose(roi.GetSize(), [256.0, 256.0, 336.0], atol=1e-6)

        # An edited segmentation survives a second run; an unedited one is replaced in place.
        gtvp = segmentation.GetSegmentIdBySegmentName("GTVp")
        edited = masks["GTVp"].astype(np.uint8)
        edited[:, :, : edited.shape[2] // 2] = 0  # erase the patient's right half of GTVp
        slicer.util.updateSegmentBinaryLabelmapFromArray(edited, segNode, gtvp, ctNode)
        before = logic.segmentMasks(segNode, ctNode)
        self.assertEqual(logic.outputPolicy(segNode, ctNode), ASK)
        second = logic.segment(ctNode, petNode, outputNode=segNode, model=model, parameterNode=params)
        self.assertNotEqual(second.GetID(), segNode.GetID())
        after = logic.segmentMasks(segNode, ctNode)
        for name in before:
            np.testing.assert_array_equal(before[name], after[name])
        self.assertEqual(logic.outputPolicy(second, ctNode), REPLACE)
        third = logic.segment(ctNode, petNode, outputNode=second, model=model, parameterNode=params)
        self.assertEqual(third.GetID(), second.GetID())

        # RTSTRUCT through SlicerRT, when it is installed.
        if "DicomRtImportExportPlugin" in getattr(slicer.modules, "dicomPlugins", {}):
            import tempfile

            import pydicom

            folder = tempfile.mkdtemp(prefix="hntumorseg-rtstruct-")
            try:
                written = logic.exportRtstruct(third, ctNode, folder)
                modalities = {pydicom.dcmread(os.path.join(folder, f), stop_before_pixels=True).Modality
                              for f in written}
                self.assertIn("RTSTRUCT", modalities)
                self.delayDisplay(f"RTSTRUCT export wrote {len(written)} files")
            finally:
                shutil.rmtree(folder, ignore_errors=True)
        else:
            self.delayDisplay("SlicerRT is not installed: RTSTRUCT export not tested")
        self.delayDisplay("HNTumorSeg self-test passed")
