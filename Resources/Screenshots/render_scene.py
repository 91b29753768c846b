"""Render the module's result scene offscreen, as Slicer draws it, for the README (PNG).

The scene is built as the Slicer module builds it, on real MRML (the ``slicer-core`` package):
a phantom chest CT becomes a volume node, the detections become the ``Nodules`` point list,
sphere models and table (:class:`SCPMNoduleMRML.NoduleReview`), and the phantom's lungs a
model. The pictures are drawn by Slicer's own displayable managers (models, markups, slice
logic) into offscreen VTK windows (EGL/Mesa; no display needed): a 3D view from the front with
the lungs and the spheres colored by probability, and the axial slice view through nodule N1,
showing the control points and the spheres' outlines.

    python Resources/Screenshots/render_scene.py                         # detector run in-process on the phantom
    python Resources/Screenshots/render_scene.py --report out/scan.json  # detections from `scpm-nodule detect`
    python Resources/Screenshots/render_scene.py --reference             # the phantom's true nodules, as "accepted"

``--reference`` draws the phantom's reference nodules in the accepted color instead of a
model's detections (for a checkpoint-free picture of the review), and the 3D caption says so.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import slicer  # noqa: E402
import vtk  # noqa: E402

REPO = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(REPO / "SCPMNodule"), str(REPO / "Testing")]

import SCPMNoduleMRML as mrml_logic  # noqa: E402
from SCPMNoduleLib.phantom import generate_phantom, phantom_config  # noqa: E402

from slicer_scene import make_scene  # noqa: E402

log = logging.getLogger("render_scene")

THREE_D_MANAGERS = ("vtkMRMLCameraDisplayableManager", "vtkMRMLViewDisplayableManager",
                    "vtkMRMLModelDisplayableManager", "vtkMRMLMarkupsDisplayableManager")
SLICE_MANAGERS = ("vtkMRMLModelSliceDisplayableManager", "vtkMRMLMarkupsDisplayableManager")


class OffscreenView:
    """A render window, its renderer and a displayable manager group bound to one view node."""

    def __init__(self, factory_class, managers: tuple[str, ...], app_logic, size: tuple[int, int]):
        self.window = vtk.vtkRenderWindow()
        self.window.SetOffScreenRendering(1)
        self.window.SetSize(*size)
        self.renderer = vtk.vtkRenderer()
        self.window.AddRenderer(self.renderer)
        self.interactor = vtk.vtkRenderWindowInteractor()
        self.interactor.SetRenderWindow(self.window)
        self.interactor.Initialize()
        factory = factory_class.GetInstance()
        factory.SetMRMLApplicationLogic(app_logic)
        for manager in managers:
            if not factory.IsDisplayableManagerRegistered(manager):
                factory.RegisterDisplayableManager(manager)
        self.managers = slicer.vtkMRMLDisplayableManagerGroup()
        self.managers.SetRenderer(self.renderer)
        self.managers.Initialize(factory, self.renderer)

    def save(self, path: Path) -> None:
        self.window.Render()
        grab = vtk.vtkWindowToImageFilter()
        grab.SetInput(self.window)
        grab.Update()
        writer = vtk.vtkPNGWriter()
        writer.SetFileName(str(path))
        writer.SetInputConnection(grab.GetOutputPort())
        writer.Write()


def review_for(volume_node, phantom, args):
    """The review to draw, and a caption saying where its nodules come from."""
    if args.reference:
        truth = [n for n in phantom.nodules if n.included]
        nodules = [mrml_logic.Nodule(f"N{i + 1}", tuple(mrml_logic.lps_to_ras(np.asarray(n.center_xyz_mm))),
                                     n.diameter_mm, 1.0, mrml_logic.ReviewStatus.ACCEPTED)
                   for i, n in enumerate(truth)]
        return mrml_logic.NoduleReview.from_nodules(volume_node, nodules), "reference nodules of the phantom"
    if args.report:
        from SCPMNoduleLib.export import read_detections_json

        detections, caption = read_detections_json(args.report), f"detections of {Path(args.report).name}"
    else:
        from SCPMNoduleLib.inference import Detector

        detector = Detector.from_checkpoint(args.model, device="cpu")
        detections = [d for d in detector.detect(phantom.image).detections if d.probability >= args.threshold]
        caption = f"SCPM-Net '{args.model}' model, p >= {args.threshold:g}"
    return mrml_logic.NoduleReview.create(volume_node, detections[: args.max_detections]), caption


def add_lungs(scene, lung_mask: sitk.Image):
    """A model node of the lungs' surface (flying edges on the mask, smoothed, mapped to RAS)."""
    mask_node = mrml_logic.volume_node_from_image(scene, sitk.Cast(lung_mask > 0, sitk.sitkUInt8), "lung mask")
    surface = vtk.vtkFlyingEdges3D()
    surface.SetInputData(mask_node.GetImageData())
    surface.SetValue(0, 0.5)
    smooth = vtk.vtkWindowedSincPolyDataFilter()
    smooth.SetInputConnection(surface.GetOutputPort())
    smooth.SetNumberOfIterations(20)
    smooth.SetPassBand(0.05)
    smooth.NormalizeCoordinatesOn()
    transform = vtk.vtkTransform()
    transform.SetMatrix(mrml_logic.volume_ijk_to_ras(mask_node).ravel().tolist())
    to_ras = vtk.vtkTransformPolyDataFilter()
    to_ras.SetTransform(transform)
    to_ras.SetInputConnection(smooth.GetOutputPort())
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputConnection(to_ras.GetOutputPort())
    normals.AutoOrientNormalsOn()
    normals.Update()
    surface_ras = normals.GetOutput()
    surface_ras.GetPointData().SetScalars(None)
    scene.RemoveNode(mask_node)
    lungs = scene.AddNewNodeByClass("vtkMRMLModelNode", "Lungs")
    lungs.SetAndObservePolyData(surface_ras)
    lungs.CreateDefaultDisplayNodes()
    display = lungs.GetDisplayNode()
    display.SetScalarVisibility(False)
    display.SetColor(0.8, 0.87, 0.95)
    display.SetOpacity(0.25)
    display.SetVisibility2D(False)
    return lungs


def render_3d(scene, app_logic, lungs, caption: str, path: Path, size=(900, 700)) -> None:
    view = OffscreenView(slicer.vtkMRMLThreeDViewDisplayableManagerFactory, THREE_D_MANAGERS, app_logic, size)
    view_logic = slicer.vtkMRMLViewLogic()
    view_logic.SetMRMLApplicationLogic(app_logic)
    view_logic.SetMRMLScene(scene)
    app_logic.GetViewLogics().AddItem(view_logic)
    view_node = view_logic.AddViewNode("1")
    view_node.SetBoxVisible(False)
    view_node.SetAxisLabelsVisible(False)
    view.managers.SetMRMLDisplayableNode(view_node)
    camera = view.managers.GetDisplayableManagerByClassName("vtkMRMLCameraDisplayableManager").GetCameraNode()
    center = np.array(lungs.GetPolyData().GetCenter())
    camera.SetFocalPoint(*center)
    camera.SetPosition(*(center + np.array([0.0, 500.0, 60.0])))  # in front of the patient, a little above
    camera.SetViewUp(0.0, 0.0, 1.0)
    view.renderer.ResetCamera()
    view.renderer.GetActiveCamera().Zoom(1.4)
    text = vtk.vtkTextActor()
    text.SetInput(caption)
    text.GetTextProperty().SetFontSize(18)
    text.SetPosition(12, 12)
    view.renderer.AddViewProp(text)
    view.save(path)


def render_slice(scene, app_logic, volume_node, review, path: Path, size=(700, 700)) -> None:
    view = OffscreenView(slicer.vtkMRMLSliceViewDisplayableManagerFactory, SLICE_MANAGERS, app_logic, size)
    view.renderer.GetActiveCamera().ParallelProjectionOn()
    slice_logic = slicer.vtkMRMLSliceLogic()
    slice_logic.SetMRMLApplicationLogic(app_logic)
    slice_logic.SetMRMLScene(scene)
    app_logic.GetSliceLogics().AddItem(slice_logic)
    slice_node = slice_logic.AddSliceNode("Red")
    slice_node.SetOrientation("Axial")
    view.managers.SetMRMLDisplayableNode(slice_node)
    slice_logic.GetSliceCompositeNode().SetBackgroundVolumeID(volume_node.GetID())
    display = volume_node.GetDisplayNode()
    display.AutoWindowLevelOff()
    display.SetWindowLevel(1500, -600)  # lung window
    slice_logic.ResizeSliceNode(*size)
    slice_logic.FitSliceToBackground()
    if len(review):
        slice_node.JumpSliceByOffsetting(*review.center_ras_mm(0))
    image = vtk.vtkImageMapper()
    image.SetColorWindow(255)
    image.SetColorLevel(127.5)
    image.SetInputConnection(slice_logic.GetImageDataConnection())
    actor = vtk.vtkActor2D()
    actor.SetMapper(image)
    actor.GetProperty().SetDisplayLocationToBackground()
    view.renderer.AddViewProp(actor)
    view.save(path)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=3, help="phantom seed")
    parser.add_argument("--size", default="small", choices=("small", "full"))
    parser.add_argument("--report", help="a JSON report of `scpm-nodule detect` for this phantom")
    parser.add_argument("--reference", action="store_true", help="draw the phantom's true nodules")
    parser.add_argument("--model", default="demo")
    parser.add_argument("--threshold", type=float, default=0.3)
    parser.add_argument("--max-detections", type=int, default=20)
    parser.add_argument("--out", type=Path, default=REPO / "Resources" / "Screenshots")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    phantom = generate_phantom(args.seed, phantom_config(args.size))
    slicer_scene = make_scene()
    scene, app_logic = slicer_scene.scene, slicer_scene.app_logic
    volume = mrml_logic.volume_node_from_image(scene, phantom.image, f"phantom-{args.seed}")
    review, caption = review_for(volume, phantom, args)
    lungs = add_lungs(scene, phantom.lung_mask)
    args.out.mkdir(parents=True, exist_ok=True)
    render_3d(scene, app_logic, lungs, f"{len(review)} nodules ({caption})", args.out / "nodules_3d.png")
    render_slice(scene, app_logic, volume, review, args.out / "nodules_slice.png")
    log.info("%d nodules drawn (%s); wrote %s", len(review), caption, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
