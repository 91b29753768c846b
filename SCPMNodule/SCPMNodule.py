"""Lung nodule detection (SCPM-Net) for 3D Slicer: detect, review, correct and export nodules.

The four classes Slicer expects: the module description, the Widget (only wiring widgets to
the logic), the Logic (thin, over the Qt-free package :mod:`SCPMNoduleMRML`, which holds all
the work on MRML and is tested outside Slicer), and the self-test.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import shutil
import tempfile
from pathlib import Path
from typing import Annotated

import numpy as np
import qt
import SimpleITK as sitk
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (
    ScriptedLoadableModule,
    ScriptedLoadableModuleLogic,
    ScriptedLoadableModuleTest,
    ScriptedLoadableModuleWidget,
)
from slicer.util import VTKObservationMixin

import SCPMNoduleMRML as mrml

# Only torch-free modules that need nothing beyond what Slicer ships (numpy, SimpleITK, VTK):
# ensureDependencies installs the rest after this file has loaded (test_slicer_logic checks).
from SCPMNoduleLib.detection import Detection
from SCPMNoduleLib.errors import UserInputError

PROGRESS_INTERVAL_MS = 200
RECOVERY_FLUSH_MS = 1100  # after the last edit, write what the (debounced) recovery file still waits for
SHORTCUTS = (("Alt+N", "next"), ("Alt+P", "previous"), ("Alt+A", "accept"), ("Alt+R", "reject"),
             ("Alt+D", "delete"), ("Alt+Z", "undo"))  # while the module is shown; Ctrl+Z is Slicer's Edit > Undo
DETECTION_DEFAULTS = mrml.DetectionSettings()
REVIEW_DEFAULTS = mrml.ReviewStyle()


class SCPMNodule(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Lung Nodule Detection (SCPM-Net)"
        self.parent.categories = ["Chest Imaging Platform"]
        self.parent.dependencies = ["Markups", "Models", "Tables"]
        self.parent.contributors = ["SCPM-Net for Slicer contributors"]
        self.parent.helpText = """
Detects lung nodules in a chest CT with SCPM-Net (sphere representation, center-points matching)
and lets you review them: step through the list, accept, reject, move, resize, add missed
nodules, and export the corrected list (LUNA16-style CSV in world LPS mm, markups JSON, table
CSV) into the export folder. The detector runs in a background process; Cancel stops it.
Shortcuts while the module is shown: Alt+N next, Alt+P previous, Alt+A accept, Alt+R reject,
Alt+D delete, Alt+Z undo the last review action.
"""
        self.parent.acknowledgementText = """
SCPM-Net: Luo X, Song T, Wang G, Chen J, Chen Y, Li K, Metaxas DN, Zhang S. SCPM-Net: An
anchor-free 3D lung nodule detection network using sphere representation and center points
matching. Medical Image Analysis 75 (2022) 102287. This is an independent open implementation.
"""


@parameterNodeWrapper
class SCPMNoduleParameterNode:
    """The module's choices, saved with the scene."""

    inputVolume: vtkMRMLScalarVolumeNode
    model: str = DETECTION_DEFAULTS.model
    device: Annotated[str, Choice(["auto", "cpu", "cuda"])] = DETECTION_DEFAULTS.device
    threshold: Annotated[float, WithinRange(0.0, 0.99)] = DETECTION_DEFAULTS.threshold
    maxDetections: Annotated[int, WithinRange(1, 100)] = DETECTION_DEFAULTS.max_detections
    sphereOpacity: Annotated[float, WithinRange(0.0, 1.0)] = REVIEW_DEFAULTS.sphere_opacity
    hideRejected: bool = False
    includeRejectedInExport: bool = False
    addDiameter: Annotated[float, WithinRange(1.0, 60.0)] = REVIEW_DEFAULTS.default_diameter_mm
    exportDirectory: Path  # Path() until the module sets it to Slicer's default scene folder


class SCPMNoduleWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._current = -1
        self._shownTable = None
        self._updatingGui = False
        self._shortcuts = []
        self._timer = qt.QTimer()
        self._timer.setInterval(PROGRESS_INTERVAL_MS)
        self._timer.connect("timeout()", self.onTimer)
        self._flushTimer = qt.QTimer()
        self._flushTimer.singleShot, self._flushTimer.interval = True, RECOVERY_FLUSH_MS
        self._flushTimer.connect("timeout()", lambda: self.logic.flushRecovery())

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SCPMNodule.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SCPMNoduleLogic()

        self.refreshModelList()
        self.ui.modelComboBox.connect("currentTextChanged(QString)", self.onModelChanged)
        self.ui.checkpointPathLineEdit.connect("currentPathChanged(QString)", self.onCheckpointChosen)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        actions = {"next": lambda: self.onStep(1), "previous": lambda: self.onStep(-1),
                   "accept": lambda: self.onSetStatus(mrml.ReviewStatus.ACCEPTED),
                   "reject": lambda: self.onSetStatus(mrml.ReviewStatus.REJECTED),
                   "delete": self.onDelete, "undo": self.onUndo}
        for name, button in (("next", self.ui.nextButton), ("previous", self.ui.previousButton),
                             ("accept", self.ui.acceptButton), ("reject", self.ui.rejectButton),
                             ("delete", self.ui.deleteButton), ("undo", self.ui.undoButton)):
            button.connect("clicked(bool)", actions[name])
        self.ui.diameterSpinBox.connect("valueChanged(double)", self.onDiameterChanged)
        self.ui.noteLineEdit.connect("editingFinished()", self.onNoteEdited)
        self.ui.addNoduleButton.connect("clicked(bool)", self.onAddNodule)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.exportDicomButton.connect("clicked(bool)", self.onExportDicom)
        self.ui.restoreButton.connect("clicked(bool)", self.onRestore)
        self.ui.nodulesTableView.connect("selectionChanged()", self.onTableSelection)
        mainWindow = slicer.util.mainWindow()
        if mainWindow is not None:  # none with --no-main-window (the self-test)
            for keys, name in SHORTCUTS:
                shortcut = qt.QShortcut(qt.QKeySequence(keys), mainWindow)
                shortcut.setEnabled(False)
                shortcut.connect("activated()", actions[name])
                self._shortcuts.append(shortcut)

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneImported)
        self.initializeParameterNode()
        self.attachReview()  # also after a module reload, when the review is already in the scene

    def cleanup(self) -> None:
        self.removeObservers()
        self._timer.stop()
        self._flushTimer.stop()
        if self._run is not None:
            self._run.cancel()
        for shortcut in self._shortcuts:
            shortcut.setParent(None)
        self._shortcuts = []
        self.logic.detachReview()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.attachReview()
        for shortcut in self._shortcuts:
            shortcut.setEnabled(True)

    def exit(self) -> None:
        for shortcut in self._shortcuts:
            shortcut.setEnabled(False)
        self.logic.flushRecovery()
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        """Stop a running detection (its volume is going) and drop the review from the panel."""
        if self._run is not None:
            self.onApplyButton()  # = Cancel
            self.ui.statusLabel.text = "The scene was closed; the detection was cancelled."
        self._flushTimer.stop()
        self.logic.detachReview()
        self.updateReviewGui()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onSceneImported(self, caller, event) -> None:
        self.attachReview()

    def attachReview(self) -> None:
        volume = self._parameterNode.inputVolume if self._parameterNode else None
        self.logic.attachReview(volume, self.onReviewChanged, self.onNoduleGrabbed)
        self.updateReviewGui()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")
        if str(self._parameterNode.exportDirectory) in ("", "."):
            self._parameterNode.exportDirectory = Path(slicer.app.defaultScenePath)

    def setParameterNode(self, inputParameterNode: SCPMNoduleParameterNode | None) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
        self._parameterNode = inputParameterNode
        if self._parameterNode:
            self._parameterNodeGuiTag = self._parameterNode.connectGui(self.ui)
            self.addObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)
            self.ui.modelComboBox.setCurrentText(self._parameterNode.model)
            self.onParameterNodeModified()

    def onParameterNodeModified(self, caller=None, event=None) -> None:
        if self._parameterNode is None:
            return
        running = self._run is not None
        self.ui.applyButton.text = "Cancel" if running else "Detect nodules"
        self.ui.applyButton.enabled = running or bool(self._parameterNode.inputVolume)
        self.ui.applyButton.toolTip = ("Stop the detection" if running else
                                       "Detect nodules in the input volume" if self.ui.applyButton.enabled
                                       else "Select an input volume")
        review = self.logic.review
        if review is None or review.volume_node is not self._parameterNode.inputVolume:
            self.attachReview()  # the review of the selected volume
        self.logic.setDisplay(self._parameterNode.sphereOpacity, self._parameterNode.hideRejected)

    def refreshModelList(self) -> None:
        current = self.ui.modelComboBox.currentText
        self.ui.modelComboBox.clear()
        self.ui.modelComboBox.addItems(mrml.model_names())
        self.ui.modelComboBox.setCurrentText(current or self.ui.modelComboBox.currentText)

    def onModelChanged(self, text: str) -> None:
        if self._parameterNode and text:
            self._parameterNode.model = text

    def onCheckpointChosen(self, path: str) -> None:
        if path:
            self.ui.modelComboBox.setCurrentText(path)

    # ------------------------------------------------------------------ detection
    def onApplyButton(self) -> None:
        if self._run is not None:
            self._timer.stop()
            self._run.cancel()
            self._run = None
            self.ui.statusLabel.text = "Cancelled; the scene was left as it was."
            self.ui.progressBar.value = 0
            self.onParameterNodeModified()
            return
        with slicer.util.tryWithErrorDisplay("Could not start the detection.", waitCursor=True):
            if not self.confirmReplacing(self._parameterNode.inputVolume):
                return
            mrml.ensure_dependencies()
            self.refreshModelList()
            self._run = self.logic.startDetection(self._parameterNode)
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = "Starting the detector..."
            self._timer.start()
        self.onParameterNodeModified()

    def confirmReplacing(self, volume) -> bool:
        """Ask before a new review replaces the volume's review (whose recovery file is kept)."""
        existing = mrml.NoduleReview.find(slicer.mrmlScene, volume) if volume else None
        reviewed, total = existing.reviewed_count() if existing else (0, 0)
        return existing is None or slicer.util.confirmOkCancelDisplay(
            f"'{volume.GetName()}' already has a review ({reviewed} of {total} nodules reviewed). Replace it? "
            "Its recovery file is kept (Recovery > Restore).")

    def onTimer(self) -> None:
        run = self._run
        for event in run.poll():
            if event.event == "progress":
                self.ui.statusLabel.text = f"Detecting: {event.stage}"
        self.ui.progressBar.value = int(round(100 * run.fraction))
        if not run.finished:
            return
        self._timer.stop()
        self._run = None
        self.onParameterNodeModified()
        self.ui.statusLabel.text = "The detection failed."
        with slicer.util.tryWithErrorDisplay("The detection failed; see the log for details."):
            review = self.logic.finishDetection(run, self.onReviewChanged, self.onNoduleGrabbed)
            self.ui.progressBar.value = 100
            self.ui.statusLabel.text = f"{len(review)} nodules found. Review them below."
            self._current = -1
            self.updateReviewGui()
            self.selectNodule(0)

    # ------------------------------------------------------------------ review
    def selectNodule(self, index: int, jump: bool = True) -> None:
        """Make nodule ``index`` the current one: select its row, show its size and note, jump the views."""
        review = self.logic.review
        if review is None or not 0 <= index < len(review):
            return
        self._current = index
        self._updatingGui = True
        try:
            self.ui.nodulesTableView.selectRow(index)
            nodule = review.nodule(index)
            self.ui.diameterSpinBox.value = nodule.diameter_mm
            self.ui.noteLineEdit.text = nodule.note
        finally:
            self._updatingGui = False
        if jump:
            review.jump_to(index)

    def onNoduleGrabbed(self, index: int) -> None:
        """A point grabbed in a view (or the crosshair placed in a sphere) selects its row."""
        if index != self._current:
            self.selectNodule(index, jump=False)

    def onCrosshairMoved(self, caller, event) -> None:
        index = self.logic.review.nodule_at(caller.GetCrosshairRAS()) if self.logic.review else -1
        if index >= 0:
            self.onNoduleGrabbed(index)

    def onTableSelection(self) -> None:
        row = self.ui.nodulesTableView.currentIndex().row()
        if row >= 0 and row != self._current and not self._updatingGui:
            self.selectNodule(row)

    def currentNodule(self) -> int:
        if self.logic.review is None or not 0 <= self._current < len(self.logic.review):
            raise UserInputError("Select a nodule in the table first.")
        return self._current

    def onStep(self, step: int) -> None:
        if self.logic.review is not None and len(self.logic.review):
            self.selectNodule(self.logic.review.neighbour(self._current, step))

    def onSetStatus(self, status: mrml.ReviewStatus) -> None:
        with slicer.util.tryWithErrorDisplay("Could not change the status."):
            self.logic.review.set_status(self.currentNodule(), status)
            self.onStep(1)

    def onDelete(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not delete the nodule."):
            self.logic.review.delete(self.currentNodule())

    def onUndo(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not undo."):
            self.ui.statusLabel.text = "" if self.logic.review and self.logic.review.undo() else "Nothing to undo."

    def onDiameterChanged(self, value: float) -> None:
        """Resize the selected nodule (not the size of a nodule to add: that has its own box)."""
        if not self._updatingGui and self.logic.review is not None and 0 <= self._current < len(self.logic.review):
            with slicer.util.tryWithErrorDisplay("Could not resize the nodule."):
                self.logic.review.set_diameter(self._current, value)

    def onNoteEdited(self) -> None:
        if self.logic.review is not None and 0 <= self._current < len(self.logic.review):
            with slicer.util.tryWithErrorDisplay("Could not save the note."):
                self.logic.review.set_note(self._current, self.ui.noteLineEdit.text)

    def onAddNodule(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not add a nodule."):
            self.logic.placeMissedNodule(self._parameterNode.addDiameter)
            self.ui.statusLabel.text = "Click on the missed nodule in a slice view."

    def onReviewChanged(self) -> None:
        self.updateReviewGui()
        self._flushTimer.start()  # restarted by each change: fires a while after the last

    def updateReviewGui(self) -> None:
        """Show the review; its table only when it is another one (setting it rebuilds the view)."""
        if self.logic.review is not None and not self.logic.review.alive:
            self.logic.detachReview()
        review = self.logic.review
        table = review.table_node if review else None
        if table is not self._shownTable:
            self._shownTable = table
            self.ui.nodulesTableView.setMRMLTableNode(table)
            self.observeCrosshair()
        if review is None or not 0 <= self._current < len(review):
            self._current = -1
        else:
            self._updatingGui = True
            try:
                self.ui.nodulesTableView.selectRow(self._current)
                self.ui.diameterSpinBox.value = review.nodule(self._current).diameter_mm
            finally:
                self._updatingGui = False
        reviewed, total = review.reviewed_count() if review else (0, 0)
        self.ui.reviewedLabel.text = f"Reviewed {reviewed} of {total}" if review else ""
        for widget in (self.ui.previousButton, self.ui.nextButton, self.ui.acceptButton, self.ui.rejectButton,
                       self.ui.deleteButton, self.ui.diameterSpinBox, self.ui.noteLineEdit, self.ui.addNoduleButton,
                       self.ui.exportButton, self.ui.exportDicomButton):
            widget.enabled = review is not None
        self.ui.undoButton.enabled = review is not None and review.can_undo

    def observeCrosshair(self) -> None:
        crosshair = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLCrosshairNode")
        if crosshair and not self.hasObserver(crosshair, vtk.vtkCommand.ModifiedEvent, self.onCrosshairMoved):
            self.addObserver(crosshair, vtk.vtkCommand.ModifiedEvent, self.onCrosshairMoved)

    # ------------------------------------------------------------------ export / restore
    def onExport(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not export the nodules.", waitCursor=True):
            paths = mrml.export_review(self.logic.review, self._parameterNode.exportDirectory,
                                       self._parameterNode.includeRejectedInExport)
            self.ui.statusLabel.text = "Exported " + ", ".join(Path(p).name for p in paths)

    def onExportDicom(self) -> None:
        """The review as a TID 1500 SR and a SEG referencing the volume's DICOM series (pip-installs
        highdicom, which Slicer does not ship, after asking)."""
        with slicer.util.tryWithErrorDisplay("Could not export DICOM.", waitCursor=True):
            if importlib.util.find_spec("highdicom") is None:
                if not slicer.util.confirmOkCancelDisplay("DICOM export needs the Python package highdicom. "
                                                          "Install it now?"):
                    return
                slicer.util.pip_install("highdicom>=0.28")
            volume, model = self.logic.review.volume_node, self._parameterNode.model
            files = [slicer.dicomDatabase.fileForInstance(uid) for uid in mrml.dicom_instance_uids(volume)]
            outputs = mrml.write_review_dicom(self._parameterNode.exportDirectory, self.logic.review, files,
                                              f"SCPM-Net {model}", mrml.model_version(model))
            self.ui.statusLabel.text = "Exported " + ", ".join(Path(p).name for p in outputs.values())

    def onRestore(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not restore the review.", waitCursor=True):
            path = qt.QFileDialog.getOpenFileName(self.parent, "Review file to restore",
                                                  str(self.logic.sidecarDirectory()), "Review (*.json)")
            if path and self.confirmReplacing(self._parameterNode.inputVolume):
                self.logic.restore(self._parameterNode.inputVolume, path, self.onReviewChanged, self.onNoduleGrabbed)
                self._current = -1
                self.updateReviewGui()


class SCPMNoduleLogic(ScriptedLoadableModuleLogic):
    """Slicer-side glue over :mod:`SCPMNoduleMRML`: the scene, temp paths, dependency install."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.review = None

    def getParameterNode(self) -> SCPMNoduleParameterNode:
        return SCPMNoduleParameterNode(super().getParameterNode())

    @staticmethod
    def sidecarDirectory() -> Path:
        return Path(slicer.app.temporaryPath) / "SCPMNodule" / "reviews"

    def startDetection(self, parameters: SCPMNoduleParameterNode):
        """Check the volume, write it to a temporary file and start the detector in the background."""
        mrml.check_input_volume(parameters.inputVolume)
        settings = mrml.DetectionSettings(model=parameters.model, device=parameters.device,
                                          threshold=parameters.threshold, max_detections=parameters.maxDetections)
        python = shutil.which("PythonSlicer")
        if python is None:  # never the running interpreter: in the GUI that is SlicerApp-real, not a Python
            raise UserInputError("PythonSlicer, Slicer's Python interpreter, was not found on Slicer's path; "
                                 "the detector cannot run. Reinstall Slicer.")
        sidecar = mrml.new_sidecar_path(self.sidecarDirectory(), parameters.inputVolume)
        run = mrml.DetectionRun(parameters.inputVolume, settings, python=python, style=self._style(parameters),
                                sidecar_path=str(sidecar), base_environment=slicer.util.startupEnvironment())
        try:
            run.start()
        except OSError as error:
            run.cleanup()
            raise UserInputError(f"Could not start the detector ({error}).") from error
        return run

    def finishDetection(self, run, onChange, onSelect=None):
        """Turn a finished run into the review shown in the module, replacing the volume's old
        review (only now: a failed run keeps it), in the lung window."""
        self.detachReview()
        review = run.finish()
        mrml.remove_reviews(run.volume_node, keep=review)
        self._setReview(review, onChange, onSelect)
        slicer.util.setSliceViewerLayers(background=run.volume_node, fit=True)
        mrml.apply_lung_window(run.volume_node, slicer.modules.volumes.logic())
        return review

    def _style(self, parameters: SCPMNoduleParameterNode):
        return mrml.ReviewStyle(sphere_opacity=parameters.sphereOpacity)

    def _setReview(self, review, onChange, onSelect=None) -> None:
        self.detachReview()
        review.on_change = onChange
        review.on_select = onSelect
        self.review = review

    def attachReview(self, volumeNode, onChange, onSelect=None) -> None:
        """Attach to the review of ``volumeNode`` in the scene (after loading a saved scene, a
        module reload, or choosing another volume); none if it has none."""
        if self.review is not None and self.review.alive and self.review.volume_node is volumeNode:
            return
        self.detachReview()
        review = mrml.NoduleReview.find(slicer.mrmlScene, volumeNode) if volumeNode is not None else None
        if review is not None:
            self._setReview(mrml.reattach_sidecar(review), onChange, onSelect)

    def detachReview(self) -> None:
        """Write what the recovery file still waits for, then stop observing the review."""
        if self.review is not None:
            self.flushRecovery()
            self.review.detach()
            self.review = None

    def flushRecovery(self) -> None:
        if self.review is not None:
            mrml.flush_sidecar(self.review)

    def setDisplay(self, opacity: float, hideRejected: bool) -> None:
        if self.review is None:
            return
        if abs(self.review.opacity - opacity) > 1e-9:
            self.review.set_opacity(opacity)
        if self.review.hide_rejected != hideRejected:
            self.review.set_hide_rejected(hideRejected)

    def placeMissedNodule(self, diameterMm: float) -> None:
        """Let the user click the missed nodule; the review's observer adds it with this diameter."""
        if self.review is None:
            raise UserInputError("Detect nodules (or restore a review) before adding missed ones.")
        self.review.style = dataclasses.replace(self.review.style, default_diameter_mm=float(diameterMm))
        slicer.modules.markups.logic().SetActiveList(self.review.markups_node)
        interaction = slicer.app.applicationLogic().GetInteractionNode()
        interaction.SetPlaceModePersistence(False)
        interaction.SetCurrentInteractionMode(interaction.Place)

    def restore(self, volumeNode, path: str, onChange, onSelect=None):
        """Rebuild a review of ``volumeNode`` from a crash-recovery file of its series; it
        replaces the volume's review."""
        mrml.check_input_volume(volumeNode)
        self.detachReview()
        review = mrml.restore_review(volumeNode, path)
        mrml.remove_reviews(volumeNode, keep=review)
        self._setReview(review, onChange, onSelect)
        return review


class SCPMNoduleTest(ScriptedLoadableModuleTest):
    """Runs inside Slicer (``slicer_add_python_unittest``); the logic's own tests run under pytest."""

    def setUp(self) -> None:
        slicer.mrmlScene.Clear()

    def runTest(self) -> None:
        self.setUp()
        self.test_ReviewAndExport()
        self.setUp()
        self.test_DetectInBackground()

    def _volume(self, chest: bool = False):
        """A small box, or for detection a miniature chest phantom (the detector refuses a scan without lungs)."""
        if chest:
            from SCPMNoduleLib.phantom import make_phantom  # needs scipy: only after the dependencies are in

            return mrml.volume_node_from_image(slicer.mrmlScene, make_phantom(5, "small")[0], "phantom-5")
        array = np.full((48, 64, 64), -800, dtype=np.int16)
        array[20:28, 28:36, 28:36] = 40
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((0.8, 0.8, 1.5))
        return mrml.volume_node_from_image(slicer.mrmlScene, image, "1.2.840.test")

    def test_ReviewAndExport(self) -> None:
        volume = self._volume()
        review = mrml.NoduleReview.create(volume, [Detection((25.6, 25.6, 36.0), 6.4, 0.9)])
        self.assertEqual(review.markups_node.GetNthControlPointLabel(0), "N1")
        self.assertEqual([round(v, 3) for v in review.center_ras_mm(0)], [-25.6, -25.6, 36.0])
        review.accept(0)
        review.add_nodule((-10.0, -10.0, 20.0), 5.0)
        with tempfile.TemporaryDirectory() as directory:
            csvPath = mrml.export_review(review, Path(directory), include_rejected=False)[0]
            with open(csvPath, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        self.assertEqual([r["status"] for r in rows], ["accepted", "added"])
        self.assertAlmostEqual(float(rows[1]["coordX"]), 10.0)
        self.delayDisplay("Review and export passed")

    def test_DetectInBackground(self) -> None:
        """Skipped where PyTorch is absent: a test never installs it (PyTorchUtils and
        confirmOkCancelDisplay do not ask in testing mode)."""
        if importlib.util.find_spec("torch") is None:
            self.delayDisplay("Background detection skipped: PyTorch is not installed")
            return
        logic = SCPMNoduleLogic()
        parameters = logic.getParameterNode()
        parameters.inputVolume = self._volume(chest=True)
        parameters.threshold = 0.0
        parameters.maxDetections = 5
        run = logic.startDetection(parameters)
        try:
            run.wait(600)
        finally:
            if not run.finished:
                run.cancel()
        review = logic.finishDetection(run, None)
        self.assertLessEqual(len(review), 5)
        self.assertEqual(review.table_node.GetNumberOfRows(), len(review))
        self.delayDisplay("Background detection passed")
