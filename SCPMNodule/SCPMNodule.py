"""Lung nodule detection (SCPM-Net) for 3D Slicer: detect, review, correct and export nodules.

The four classes Slicer expects: the module description, the Widget (only wiring widgets to
the logic), the Logic (thin, over the Qt-free package :mod:`SCPMNoduleMRML`, which holds all
the work on MRML and is tested outside Slicer), and the self-test.
"""

from __future__ import annotations

import csv
import dataclasses
import importlib.util
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path
from typing import Annotated

import numpy as np
import qt
import SimpleITK as sitk
import slicer
import vtk
from slicer import vtkMRMLScalarVolumeNode
from slicer.parameterNodeWrapper import Choice, WithinRange, parameterNodeWrapper
from slicer.ScriptedLoadableModule import (ScriptedLoadableModule, ScriptedLoadableModuleLogic,
                                           ScriptedLoadableModuleTest, ScriptedLoadableModuleWidget)
from slicer.util import VTKObservationMixin

# Only torch-free modules that need nothing beyond what Slicer ships (numpy, SimpleITK, VTK):
# ensureDependencies installs the rest after this file has loaded (test_slicer_logic checks).
from SCPMNoduleLib.detection import Detection
from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.io import safe_file_name
from SCPMNoduleLib.models import read_manifest
from SCPMNoduleMRML import (DetectionRun, DetectionSettings, NoduleReview, ReviewStatus, ReviewStyle,
                            check_input_volume, detector_requirements, reattach_sidecar, restore_review, series_uid,
                            volume_node_from_image, write_markups_json, write_review_csv, write_table_csv)

PROGRESS_INTERVAL_MS = 200
DETECTION_DEFAULTS = DetectionSettings()
REVIEW_DEFAULTS = ReviewStyle()


class SCPMNodule(ScriptedLoadableModule):
    def __init__(self, parent):
        ScriptedLoadableModule.__init__(self, parent)
        self.parent.title = "Lung Nodule Detection (SCPM-Net)"
        self.parent.categories = ["Chest Imaging"]
        self.parent.dependencies = ["Markups", "Models", "Tables"]
        self.parent.contributors = ["SCPM-Net for Slicer contributors"]
        self.parent.helpText = """
Detects lung nodules in a chest CT with SCPM-Net (sphere representation, center-points matching)
and lets you review them: step through the list, accept, reject, move, resize, add missed
nodules, and export the corrected list (LUNA16-style CSV in world LPS mm, markups JSON, table
CSV). The detector runs in a background process; Cancel stops it. Shortcuts while the module
is shown: Alt+N next, Alt+P previous, Alt+A accept, Alt+R reject.
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


class SCPMNoduleWidget(ScriptedLoadableModuleWidget, VTKObservationMixin):
    def __init__(self, parent=None) -> None:
        ScriptedLoadableModuleWidget.__init__(self, parent)
        VTKObservationMixin.__init__(self)
        self.logic = None
        self._parameterNode = None
        self._parameterNodeGuiTag = None
        self._run = None
        self._current = -1
        self._timer = qt.QTimer()
        self._timer.setInterval(PROGRESS_INTERVAL_MS)
        self._timer.connect("timeout()", self.onTimer)

    def setup(self) -> None:
        ScriptedLoadableModuleWidget.setup(self)
        uiWidget = slicer.util.loadUI(self.resourcePath("UI/SCPMNodule.ui"))
        self.layout.addWidget(uiWidget)
        self.ui = slicer.util.childWidgetVariables(uiWidget)
        uiWidget.setMRMLScene(slicer.mrmlScene)
        self.logic = SCPMNoduleLogic()

        self.ui.modelComboBox.addItems(self.logic.modelNames())
        self.ui.modelComboBox.connect("currentTextChanged(QString)", self.onModelChanged)
        self.ui.checkpointPathLineEdit.connect("currentPathChanged(QString)", self.onCheckpointChosen)
        self.ui.applyButton.connect("clicked(bool)", self.onApplyButton)
        self.ui.previousButton.connect("clicked(bool)", lambda: self.onStep(-1))
        self.ui.nextButton.connect("clicked(bool)", lambda: self.onStep(1))
        self.ui.acceptButton.connect("clicked(bool)", lambda: self.onSetStatus(ReviewStatus.ACCEPTED))
        self.ui.rejectButton.connect("clicked(bool)", lambda: self.onSetStatus(ReviewStatus.REJECTED))
        self.ui.diameterSpinBox.value = REVIEW_DEFAULTS.default_diameter_mm
        self.ui.diameterSpinBox.connect("editingFinished()", self.onDiameterEdited)
        self.ui.addNoduleButton.connect("clicked(bool)", self.onAddNodule)
        self.ui.exportButton.connect("clicked(bool)", self.onExport)
        self.ui.restoreButton.connect("clicked(bool)", self.onRestore)
        self.ui.nodulesTableView.connect("selectionChanged()", self.onTableSelection)
        for button, keys in ((self.ui.nextButton, "Alt+N"), (self.ui.previousButton, "Alt+P"),
                             (self.ui.acceptButton, "Alt+A"), (self.ui.rejectButton, "Alt+R")):
            button.setShortcut(qt.QKeySequence(keys))

        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.StartCloseEvent, self.onSceneStartClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndCloseEvent, self.onSceneEndClose)
        self.addObserver(slicer.mrmlScene, slicer.mrmlScene.EndImportEvent, self.onSceneImported)
        self.initializeParameterNode()

    def cleanup(self) -> None:
        self.removeObservers()
        self._timer.stop()
        if self._run is not None:
            self._run.cancel()
        self.logic.detachReview()

    def enter(self) -> None:
        self.initializeParameterNode()
        self.logic.attachReview(self.onReviewChanged)
        self.updateReviewGui()

    def exit(self) -> None:
        if self._parameterNode:
            self._parameterNode.disconnectGui(self._parameterNodeGuiTag)
            self._parameterNodeGuiTag = None
            self.removeObserver(self._parameterNode, vtk.vtkCommand.ModifiedEvent, self.onParameterNodeModified)

    def onSceneStartClose(self, caller, event) -> None:
        self.logic.detachReview()
        self.setParameterNode(None)

    def onSceneEndClose(self, caller, event) -> None:
        if self.parent.isEntered:
            self.initializeParameterNode()

    def onSceneImported(self, caller, event) -> None:
        self.logic.attachReview(self.onReviewChanged)
        self.updateReviewGui()

    def initializeParameterNode(self) -> None:
        self.setParameterNode(self.logic.getParameterNode())
        if not self._parameterNode.inputVolume:
            self._parameterNode.inputVolume = slicer.mrmlScene.GetFirstNodeByClass("vtkMRMLScalarVolumeNode")

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
        self.logic.setDisplay(self._parameterNode.sphereOpacity, self._parameterNode.hideRejected)

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
            self.logic.ensureDependencies()
            self._run = self.logic.startDetection(self._parameterNode)
            self.ui.progressBar.value = 0
            self.ui.statusLabel.text = "Starting the detector..."
            self._timer.start()
        self.onParameterNodeModified()

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
        with slicer.util.tryWithErrorDisplay("The detection failed; see the log for details."):
            review = self.logic.finishDetection(run, self.onReviewChanged)
            self.ui.progressBar.value = 100
            self.ui.statusLabel.text = f"{len(review)} nodules found. Review them below."
            self.updateReviewGui()
            self._current = -1
            self.selectNodule(0)

    # ------------------------------------------------------------------ review
    def selectNodule(self, index: int) -> None:
        """Make nodule ``index`` the current one: select its row, jump the views, show its diameter."""
        review = self.logic.review
        if review is None or not 0 <= index < len(review):
            return
        self._current = index
        self.ui.nodulesTableView.selectRow(index)
        review.jump_to(index)
        self.ui.diameterSpinBox.value = review.nodule(index).diameter_mm

    def onTableSelection(self) -> None:
        row = self.ui.nodulesTableView.currentIndex().row()
        if row >= 0 and row != self._current:
            self.selectNodule(row)

    def currentNodule(self) -> int:
        if self.logic.review is None or not 0 <= self._current < len(self.logic.review):
            raise UserInputError("Select a nodule in the table first.")
        return self._current

    def onStep(self, step: int) -> None:
        if self.logic.review is not None and len(self.logic.review):
            self.selectNodule(self.logic.review.neighbour(self._current, step))

    def onSetStatus(self, status: ReviewStatus) -> None:
        with slicer.util.tryWithErrorDisplay("Could not change the status."):
            self.logic.review.set_status(self.currentNodule(), status)
            self.onStep(1)

    def onDiameterEdited(self) -> None:
        if self.logic.review is not None and 0 <= self._current < len(self.logic.review):
            with slicer.util.tryWithErrorDisplay("Could not resize the nodule."):
                self.logic.review.set_diameter(self._current, self.ui.diameterSpinBox.value)

    def onAddNodule(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not add a nodule."):
            self.logic.placeMissedNodule(self.ui.diameterSpinBox.value)
            self.ui.statusLabel.text = "Click on the missed nodule in a slice view."

    def onReviewChanged(self) -> None:
        self.updateReviewGui()

    def updateReviewGui(self) -> None:
        """Show the current review's table (the model resets when the table changes: reselect)."""
        review = self.logic.review
        self.ui.nodulesTableView.setMRMLTableNode(review.table_node if review else None)
        if review is None or not 0 <= self._current < len(review):
            self._current = -1
        else:
            self.ui.nodulesTableView.selectRow(self._current)
        for widget in (self.ui.previousButton, self.ui.nextButton, self.ui.acceptButton, self.ui.rejectButton,
                       self.ui.diameterSpinBox, self.ui.addNoduleButton, self.ui.exportButton):
            widget.enabled = review is not None

    # ------------------------------------------------------------------ export / restore
    def onExport(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not export the nodules.", waitCursor=True):
            paths = self.logic.export(self.ui.exportDirectoryButton.directory,
                                      self._parameterNode.includeRejectedInExport)
            self.ui.statusLabel.text = "Exported " + ", ".join(Path(p).name for p in paths)

    def onRestore(self) -> None:
        with slicer.util.tryWithErrorDisplay("Could not restore the review.", waitCursor=True):
            path = qt.QFileDialog.getOpenFileName(self.parent, "Review file to restore",
                                                  str(self.logic.sidecarDirectory()), "Review (*.json)")
            if path:
                self.logic.restore(self._parameterNode.inputVolume, path, self.onReviewChanged)
                self.updateReviewGui()


class SCPMNoduleLogic(ScriptedLoadableModuleLogic):
    """Slicer-side glue over :mod:`SCPMNoduleMRML`: the scene, temp paths, dependency install."""

    def __init__(self) -> None:
        ScriptedLoadableModuleLogic.__init__(self)
        self.review = None

    def getParameterNode(self) -> SCPMNoduleParameterNode:
        return SCPMNoduleParameterNode(super().getParameterNode())

    @staticmethod
    def modelNames() -> list[str]:
        """The models of the extension's ``Models.json`` (read without PyTorch), ``demo`` if it lists none."""
        return [model["name"] for model in read_manifest()["models"]] or ["demo"]

    @staticmethod
    def ensureDependencies() -> None:
        """Install PyTorch through the PyTorch extension, and the other packages, after asking.

        What to install, and which versions, is ``Resources/requirements.txt``.
        """
        requirements = detector_requirements()
        torchVersion = requirements.pop("torch")
        if importlib.util.find_spec("torch") is None:
            try:  # here, not at the top: another extension's module, loaded after this one, or missing
                import PyTorchUtils
            except ModuleNotFoundError:
                raise UserInputError("This module needs the PyTorch extension: install 'PyTorch' from the "
                                     "Extensions Manager and restart Slicer.")
            torchLogic = PyTorchUtils.PyTorchUtilsLogic()
            if not torchLogic.torchInstalled():
                torch = torchLogic.installTorch(askConfirmation=True, torchVersionRequirement=torchVersion)
                if torch is None:
                    raise UserInputError("PyTorch is needed to detect nodules, and it was not installed "
                                         "(declined, or no internet connection).")
        missing = [f"{package}{version}" for package, version in requirements.items()
                   if importlib.util.find_spec(package) is None]
        if missing:
            if not slicer.util.confirmOkCancelDisplay(
                    f"The nodule detector needs these Python packages: {', '.join(missing)}. Install them now?"):
                raise UserInputError(f"The packages {', '.join(missing)} are needed to detect nodules.")
            try:
                slicer.util.pip_install(missing)
            except Exception as error:
                raise UserInputError(f"Could not install {', '.join(missing)} ({error}); are you offline?")

    @staticmethod
    def sidecarDirectory() -> Path:
        return Path(slicer.app.temporaryPath) / "SCPMNodule" / "reviews"

    def sidecarPath(self, volumeNode) -> str:
        """A new crash-recovery file per detection run, so that a new run never overwrites an old review."""
        name = safe_file_name(series_uid(volumeNode), fallback="volume")
        return str(self.sidecarDirectory() / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.review.json")

    def startDetection(self, parameters: SCPMNoduleParameterNode):
        """Check the volume, write it to a temporary file and start the detector in the background."""
        check_input_volume(parameters.inputVolume)
        settings = DetectionSettings(model=parameters.model, device=parameters.device,
                                     threshold=parameters.threshold, max_detections=parameters.maxDetections)
        run = DetectionRun(parameters.inputVolume, settings, python=shutil.which("PythonSlicer") or sys.executable,
                           style=self._style(parameters), sidecar_path=self.sidecarPath(parameters.inputVolume),
                           base_environment=slicer.util.startupEnvironment())
        try:
            run.start()
        except OSError as error:
            run.cleanup()
            raise UserInputError(f"Could not start the detector ({error}).")
        return run

    def finishDetection(self, run, onChange):
        """Turn a finished run into the review shown in the module (replacing the previous one's observers)."""
        review = run.finish()
        self._setReview(review, onChange)
        slicer.util.setSliceViewerLayers(background=run.volume_node, fit=True)
        return review

    def _style(self, parameters: SCPMNoduleParameterNode):
        return ReviewStyle(sphere_opacity=parameters.sphereOpacity)

    def _setReview(self, review, onChange) -> None:
        self.detachReview()
        review.on_change = onChange
        self.review = review

    def attachReview(self, onChange) -> None:
        """Re-attach to the newest review in the scene (after loading a saved scene)."""
        if self.review is not None and self.review.scene is slicer.mrmlScene \
                and slicer.mrmlScene.IsNodePresent(self.review.markups_node):
            return
        self.review = None
        review = NoduleReview.find(slicer.mrmlScene, on_change=onChange)
        if review is not None:
            self._setReview(reattach_sidecar(review), onChange)

    def detachReview(self) -> None:
        if self.review is not None:
            self.review.detach()
            self.review = None

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

    def export(self, directory: str, includeRejected: bool) -> list[str]:
        """Write ``<seriesuid>_nodules.csv``, ``.mrk.json`` and ``_table.csv`` into ``directory``."""
        if self.review is None:
            raise UserInputError("There are no nodules to export; detect them first.")
        if not directory or not os.path.isdir(directory):
            raise UserInputError(f"Export folder '{directory}' does not exist.")
        stem = Path(directory) / safe_file_name(series_uid(self.review.volume_node), fallback="volume")
        paths = [f"{stem}_nodules.csv", f"{stem}_nodules.mrk.json", f"{stem}_table.csv"]
        write_review_csv(paths[0], self.review, includeRejected)
        write_markups_json(paths[1], self.review)
        write_table_csv(paths[2], self.review)
        return paths

    def restore(self, volumeNode, path: str, onChange):
        """Rebuild a review of ``volumeNode`` from a crash-recovery file."""
        check_input_volume(volumeNode)
        review = restore_review(volumeNode, path)
        self._setReview(review, onChange)
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

    def _volume(self):
        array = np.full((48, 64, 64), -800, dtype=np.int16)
        array[20:28, 28:36, 28:36] = 40
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((0.8, 0.8, 1.5))
        return volume_node_from_image(slicer.mrmlScene, image, "1.2.840.test")

    def test_ReviewAndExport(self) -> None:
        volume = self._volume()
        review = NoduleReview.create(volume, [Detection((25.6, 25.6, 36.0), 6.4, 0.9)])
        self.assertEqual(review.markups_node.GetNthControlPointLabel(0), "N1")
        self.assertEqual([round(v, 3) for v in review.center_ras_mm(0)], [-25.6, -25.6, 36.0])
        review.accept(0)
        review.add_nodule((-10.0, -10.0, 20.0), 5.0)
        logic = SCPMNoduleLogic()
        logic._setReview(review, None)
        with tempfile.TemporaryDirectory() as directory:
            csvPath = logic.export(directory, includeRejected=False)[0]
            with open(csvPath, newline="", encoding="utf-8") as handle:
                rows = list(csv.DictReader(handle))
        self.assertEqual([r["status"] for r in rows], ["accepted", "added"])
        self.assertAlmostEqual(float(rows[1]["coordX"]), 10.0)
        self.delayDisplay("Review and export passed")

    def test_DetectInBackground(self) -> None:
        logic = SCPMNoduleLogic()
        logic.ensureDependencies()
        parameters = logic.getParameterNode()
        parameters.inputVolume = self._volume()
        parameters.threshold = 0.0
        parameters.maxDetections = 5
        run = logic.startDetection(parameters)
        run.wait(600)
        review = logic.finishDetection(run, None)
        self.assertLessEqual(len(review), 5)
        self.assertEqual(review.table_node.GetNumberOfRows(), len(review))
        self.delayDisplay("Background detection passed")
