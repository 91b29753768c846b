"""Render the module's result scene offscreen, for the README: 3D view and an axial slice, as PNG.

The scene is built exactly as the Slicer module builds it, on real MRML (the ``slicer-core``
package): a phantom chest CT becomes a volume node, the detections become the ``Nodules`` point
list, sphere models and table (:class:`SCPMNoduleMRML.NoduleReview`). The 3D picture draws the
lung surface and those sphere models, in their display colours (yellow → red with
probability), with VTK offscreen (EGL/Mesa; no display needed); the slice picture shows the CT
through the most probable nodule with the control points and sphere sections, and the phantom's
true nodules as dashed white circles.

    python Resources/render_scene.py                     # detector run in-process on the phantom
    python Resources/render_scene.py --report out/scan.json   # detections from `scpm-nodule detect`
    python Resources/render_scene.py --reference         # the phantom's true nodules, as "accepted"

``--reference`` is for when no trained checkpoint is at hand (the bundled demo is a placeholder
until it is trained): the pictures then show the phantom's reference nodules, in the accepted
colour, and say so in their captions.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

os.environ.setdefault("VTK_DEFAULT_OPENGL_WINDOW", "vtkEGLRenderWindow")

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import SimpleITK as sitk  # noqa: E402
import vtk  # noqa: E402
from matplotlib.patches import Circle  # noqa: E402
from vtk.util import numpy_support  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SCPMNodule"))

import SCPMNoduleMRML as mrml_logic  # noqa: E402
from SCPMNoduleLib.phantom import generate_phantom, phantom_config  # noqa: E402

log = logging.getLogger("render_scene")


def make_scene():
    """A scene with the application logic and the colour logic (display nodes need colour tables)."""
    import slicer

    scene = slicer.vtkMRMLScene()
    app_logic = slicer.vtkSlicerApplicationLogic()
    app_logic.SetMRMLScene(scene)
    app_logic.GetColorLogic().SetMRMLScene(scene)
    app_logic.GetColorLogic().AddDefaultColorNodes()
    return scene, app_logic


def review_for(volume_node, phantom, args) -> tuple[object, str]:
    """The review to draw, and a caption saying where its nodules come from."""
    if args.reference:
        nodules = [mrml_logic.Nodule(f"N{i + 1}", tuple(mrml_logic.lps_to_ras(np.asarray(n.center_xyz_mm))),
                                     n.diameter_mm, 1.0, mrml_logic.ACCEPTED)
                   for i, n in enumerate(n for n in phantom.nodules if n.included)]
        return mrml_logic.NoduleReview.from_nodules(volume_node, nodules), "reference nodules of the phantom"
    detections, caption = detections_for(phantom.image, args)
    return mrml_logic.NoduleReview.create(volume_node, detections), caption


def detections_for(image: sitk.Image, args) -> tuple[list, str]:
    if args.report:
        from SCPMNoduleLib.export import read_detections_json

        return read_detections_json(args.report), f"detections from {Path(args.report).name}"
    from SCPMNoduleLib.inference import Detector

    detector = Detector.from_checkpoint(args.model, device="cpu")
    found = [d for d in detector.detect(image) if d.probability >= args.threshold][: args.max_detections]
    return found, f"SCPM-Net '{args.model}' model, p >= {args.threshold:g}"


def lung_surface(lung_mask: sitk.Image, scene):
    """The lungs' surface in RAS: flying edges on the mask, mapped by the volume's IJK→RAS."""
    mask_node = mrml_logic.volume_node_from_image(scene, sitk.Cast(lung_mask > 0, sitk.sitkUInt8), "lungs")
    surface = vtk.vtkFlyingEdges3D()
    surface.SetInputData(mask_node.GetImageData())
    surface.SetValue(0, 0.5)
    smooth = vtk.vtkWindowedSincPolyDataFilter()
    smooth.SetInputConnection(surface.GetOutputPort())
    smooth.SetNumberOfIterations(20)
    smooth.SetPassBand(0.05)
    smooth.NormalizeCoordinatesOn()
    transform = vtk.vtkTransform()
    transform.SetMatrix(np.asarray(mrml_logic.volume_ijk_to_ras(mask_node)).ravel().tolist())
    to_ras = vtk.vtkTransformPolyDataFilter()
    to_ras.SetTransform(transform)
    to_ras.SetInputConnection(smooth.GetOutputPort())
    normals = vtk.vtkPolyDataNormals()
    normals.SetInputConnection(to_ras.GetOutputPort())
    normals.AutoOrientNormalsOn()
    normals.Update()
    return normals.GetOutput()


def _actor(polydata, color, opacity):
    mapper = vtk.vtkPolyDataMapper()
    mapper.SetInputData(polydata)
    mapper.ScalarVisibilityOff()
    actor = vtk.vtkActor()
    actor.SetMapper(mapper)
    actor.GetProperty().SetColor(*color)
    actor.GetProperty().SetOpacity(opacity)
    return actor


def render_3d(review, lungs, caption: str, path: Path, size=(900, 700)) -> None:
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(0.08, 0.1, 0.14)
    renderer.SetBackground2(0.32, 0.36, 0.45)
    renderer.GradientBackgroundOn()
    lung_actor = _actor(lungs, (0.8, 0.87, 0.95), 0.3)
    lung_actor.GetProperty().SetAmbient(0.35)
    renderer.AddActor(lung_actor)
    for sphere in review.sphere_nodes:
        display = sphere.GetDisplayNode()
        if display.GetVisibility():
            actor = _actor(sphere.GetPolyData(), display.GetColor(), 0.95)
            actor.GetProperty().SetSpecular(0.3)
            renderer.AddActor(actor)
    style = review.style
    table = vtk.vtkLookupTable()
    table.SetNumberOfTableValues(64)
    table.SetTableRange(0.0, 1.0)
    for i in range(64):
        table.SetTableValue(i, *mrml_logic.probability_color(i / 63, style), 1.0)
    bar = vtk.vtkScalarBarActor()
    bar.SetLookupTable(table)
    bar.SetTitle("probability")
    bar.SetNumberOfLabels(3)
    bar.SetWidth(0.08)
    bar.SetHeight(0.4)
    bar.SetPosition(0.9, 0.08)
    renderer.AddViewProp(bar)
    text = vtk.vtkTextActor()
    text.SetInput(f"{len(review)} nodules ({caption})")
    text.GetTextProperty().SetFontSize(18)
    text.SetPosition(12, 12)
    renderer.AddViewProp(text)
    camera = renderer.GetActiveCamera()
    center = np.array(lungs.GetCenter())
    camera.SetFocalPoint(*center)
    camera.SetPosition(*(center + np.array([0.0, 600.0, 80.0])))  # from the front (anterior), a little above
    camera.SetViewUp(0.0, 0.0, 1.0)
    renderer.ResetCamera()
    camera.Zoom(1.35)
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(1)
    window.SetSize(*size)
    window.SetMultiSamples(4)
    window.AddRenderer(renderer)
    window.Render()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(window)
    grab.Update()
    writer = vtk.vtkPNGWriter()
    writer.SetFileName(str(path))
    writer.SetInputConnection(grab.GetOutputPort())
    writer.Write()


def render_slice(review, volume_node, truth, caption: str, path: Path) -> None:
    """The axial slice through nodule N1 (lung window), control points, sphere sections, truth."""
    ras_to_ijk = np.linalg.inv(mrml_logic.volume_ijk_to_ras(volume_node))
    dims = volume_node.GetImageData().GetDimensions()
    array = numpy_support.vtk_to_numpy(volume_node.GetImageData().GetPointData().GetScalars()).reshape(dims[::-1])
    spacing = volume_node.GetSpacing()
    nodules = review.nodules()
    if nodules:
        focus = nodules[0].center_ras_mm
    elif truth:
        focus = mrml_logic.lps_to_ras(np.asarray(truth[0][0]))
    else:
        focus = (mrml_logic.volume_ijk_to_ras(volume_node) @ [*((np.array(dims) - 1) / 2), 1.0])[:3]
    k0 = int(round((ras_to_ijk @ [*focus, 1.0])[2]))
    k0 = min(max(k0, 0), dims[2] - 1)
    figure, axes = plt.subplots(figsize=(7, 7), dpi=110)
    axes.imshow(array[k0], cmap="gray", vmin=-1350, vmax=150, origin="upper")

    def section(center_ras, diameter_mm):
        i, j, k = (ras_to_ijk @ [*center_ras, 1.0])[:3]
        dz = (k - k0) * spacing[2]
        radius_sq = (diameter_mm / 2) ** 2 - dz**2
        return i, j, (np.sqrt(radius_sq) / spacing[0] if radius_sq > 0 else None)

    for center_xyz_mm, diameter in truth:
        i, j, r = section(mrml_logic.lps_to_ras(np.asarray(center_xyz_mm)), diameter)
        if r:
            axes.add_patch(Circle((i, j), r, fill=False, ls="--", lw=1.2, ec="white"))
    for nodule, sphere in zip(nodules, review.sphere_nodes):
        i, j, r = section(nodule.center_ras_mm, nodule.diameter_mm)
        if r:
            color = sphere.GetDisplayNode().GetColor()
            axes.add_patch(Circle((i, j), r, fill=False, lw=2, ec=color))
            axes.plot(i, j, "+", color=color, ms=8, mew=2)
            axes.annotate(f"{nodule.label} p={nodule.probability:.2f}", (i + r + 2, j), color=color, fontsize=9)
    axes.set_title(f"{volume_node.GetName()}, slice k={k0}: {caption} (solid), true nodules (dashed)",
                   fontsize=9)
    axes.axis("off")
    figure.tight_layout()
    figure.savefig(path)
    plt.close(figure)


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
    scene, _app_logic = make_scene()
    volume = mrml_logic.volume_node_from_image(scene, phantom.image, f"phantom-{args.seed}")
    review, caption = review_for(volume, phantom, args)
    truth = [(n.center_xyz_mm, n.diameter_mm) for n in phantom.nodules if n.included]
    args.out.mkdir(parents=True, exist_ok=True)
    render_3d(review, lung_surface(phantom.lung_mask, scene), caption, args.out / "nodules_3d.png")
    render_slice(review, volume, truth, caption, args.out / "nodules_slice.png")
    log.info("%d nodules drawn (%s), %d true nodules; wrote %s", len(review), caption, len(truth), args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
