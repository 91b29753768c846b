"""The Slicer module's logic on real MRML (the slicer-core package), no Qt."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import SimpleITK as sitk
import slicer  # slicer-core, from the test extra: a missing install must fail, not skip
import vtk

from SCPMNoduleLib.detection import Detection  # noqa: E402
from SCPMNoduleLib.errors import UserInputError  # noqa: E402
from SCPMNoduleLib.io import read_annotations, safe_file_name  # noqa: E402

from slicer_scene import load_scene, make_scene, save_scene  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SCPMNodule"))

import SCPMNoduleMRML as logic  # noqa: E402

FLIP = np.diag([-1.0, -1.0, 1.0])
MARKUPS_SCHEMA = Path(__file__).parent / "data" / "markups-schema-v1.0.3.json"


def test_review_and_exports_load_without_torch():
    """Slicer's own process reads reports and reviews them; only the background detection needs
    the network, so importing the logic must not pull torch (seconds and a GB in Slicer)."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import SCPMNoduleMRML, SCPMNoduleLib.export, "
            "SCPMNoduleLib.evaluation; print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    result = subprocess.run([sys.executable, "-c", code, str(REPO / "SCPMNodule")],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_module_file_imports_at_load_only_what_slicer_ships():
    """SCPMNodule.py's top-level imports run when Slicer starts, before ensureDependencies can
    install PyTorch, scipy or tqdm: our packages among them must need only numpy, SimpleITK, VTK."""
    import ast

    tree = ast.parse((REPO / "SCPMNodule" / "SCPMNodule.py").read_text(encoding="utf-8"))
    imported = [n.module for n in tree.body if isinstance(n, ast.ImportFrom)] + [
        alias.name for n in tree.body if isinstance(n, ast.Import) for alias in n.names]
    ours = sorted({name for name in imported if name and name.split(".")[0] in ("SCPMNoduleLib", "SCPMNoduleMRML")})
    assert "SCPMNoduleMRML" in ours and "SCPMNoduleLib.errors" in ours
    code = ("import importlib, sys; sys.path.insert(0, sys.argv[1]); "
            "[importlib.import_module(m) for m in sys.argv[2:]]; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'scipy', 'tqdm', 'matplotlib'}))")
    result = subprocess.run([sys.executable, "-c", code, str(REPO / "SCPMNodule"), *ours],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


@pytest.fixture
def mrml():
    return make_scene()


def oblique_flipped_image(size_xyz=(8, 7, 6)) -> sitk.Image:
    """Voxel values 0..N-1 in storage order, so a value names its voxel; oblique, left-handed axes."""
    array = np.arange(np.prod(size_xyz), dtype=np.int16).reshape(size_xyz[::-1])
    image = sitk.GetImageFromArray(array)
    angle = np.deg2rad(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    image.SetDirection((rotation @ np.diag([1.0, -1.0, 1.0])).ravel().tolist())
    image.SetSpacing((0.7, 0.8, 2.5))
    image.SetOrigin((-100.0, 50.0, 20.0))
    return image


def node_array(volume_node) -> np.ndarray:
    from vtk.util import numpy_support

    dims = volume_node.GetImageData().GetDimensions()
    return numpy_support.vtk_to_numpy(volume_node.GetImageData().GetPointData().GetScalars()).reshape(dims[::-1])


def chest_volume(mrml, name="1.2.3.4"):
    image = sitk.Image([40, 40, 30], sitk.sitkInt16)
    image.SetSpacing((0.8, 0.8, 2.0))
    image.SetOrigin((-16.0, -16.0, -30.0))
    return logic.volume_node_from_image(mrml.scene, image, name)


DETECTIONS = [
    Detection((10.0, -5.0, -12.0), 8.0, 0.93, 0),
    Detection((-7.5, 3.0, -20.0), 5.0, 0.61, 1),
    Detection((2.0, 8.0, -4.0), 12.0, 0.35, 0),
]


def sphere_center_and_diameter(model_node):
    bounds = np.array(model_node.GetPolyData().GetBounds()).reshape(3, 2)
    return bounds.mean(axis=1), bounds[:, 1] - bounds[:, 0]


def table_rows(table_node) -> list[dict]:
    table = table_node.GetTable()
    return [{table.GetColumnName(c): table.GetValue(r, c).ToString() for c in range(table.GetNumberOfColumns())}
            for r in range(table.GetNumberOfRows())]


def assert_consistent(review: logic.NoduleReview) -> None:
    """Markups, table and spheres tell the same story, row by row."""
    rows = table_rows(review.table_node)
    spheres = review.sphere_nodes
    assert len(rows) == len(spheres) == len(review)
    for i, row in enumerate(rows):
        center = np.array(review.center_ras_mm(i))
        assert np.allclose([float(row[k]) for k in "RAS"], center)
        sphere_center, extent = sphere_center_and_diameter(spheres[i])
        assert np.allclose(sphere_center, center, atol=1e-6)
        assert np.allclose(extent.max(), float(row["Diameter (mm)"]), rtol=1e-3)
        assert row["ID"] == review.markups_node.GetNthControlPointLabel(i)
        description = review.markups_node.GetNthControlPointDescription(i)
        assert f"d={float(row['Diameter (mm)']):.1f} mm" in description and row["Status"] in description


# ---------------------------------------------------------------- volumes


def test_volume_from_oblique_flipped_image_matches_slicers_reader(mrml, tmp_path):
    image = oblique_flipped_image()
    mine = logic.volume_node_from_image(mrml.scene, image, "mine")
    sitk.WriteImage(image, str(tmp_path / "scan.nrrd"))
    theirs = mrml.logics["Volumes"].AddArchetypeVolume(str(tmp_path / "scan.nrrd"), "theirs", 0)
    assert np.allclose(logic.volume_ijk_to_ras(mine), logic.volume_ijk_to_ras(theirs), atol=1e-9)
    assert np.array_equal(node_array(mine), node_array(theirs))


def test_volume_voxels_sit_at_their_lps_world_points_with_l_and_p_negated(mrml):
    image = oblique_flipped_image()
    node = logic.volume_node_from_image(mrml.scene, image, "scan")
    values = node_array(node)
    k, j, i = np.meshgrid(*[np.arange(n) for n in values.shape], indexing="ij")
    ijk1 = np.stack([i.ravel(), j.ravel(), k.ravel(), np.ones(i.size)])
    ras = (logic.volume_ijk_to_ras(node) @ ijk1)[:3].T
    size_xyz = image.GetSize()
    for value, point_ras in zip(values.ravel(), ras):
        index_xyz = np.unravel_index(int(value), size_xyz[::-1])[::-1]
        lps = image.TransformIndexToPhysicalPoint([int(v) for v in index_xyz])
        assert np.allclose(FLIP @ point_ras, lps, atol=1e-9)


def test_image_from_volume_node_is_the_same_image_in_world_space(mrml):
    image = oblique_flipped_image()
    back = logic.image_from_volume_node(logic.volume_node_from_image(mrml.scene, image, "scan"))
    resampled = sitk.Resample(back, image, sitk.Transform(), sitk.sitkNearestNeighbor, -1)
    assert np.array_equal(sitk.GetArrayFromImage(resampled), sitk.GetArrayFromImage(image))


def test_bad_volumes_are_refused_with_one_sentence_and_leave_the_scene_unchanged(mrml):
    flat = logic.volume_node_from_image(mrml.scene, sitk.Image([16, 16, 1], sitk.sitkInt16), "flat")
    label = mrml.scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    count = mrml.scene.GetNumberOfNodes()
    with pytest.raises(UserInputError, match="No input volume"):
        logic.DetectionRun(None, logic.DetectionSettings())
    with pytest.raises(UserInputError, match="'flat' is 2-D .16 x 16 x 1 voxels"):
        logic.DetectionRun(flat, logic.DetectionSettings())
    with pytest.raises(UserInputError, match="'labels' is not a scalar"):
        logic.DetectionRun(label, logic.DetectionSettings())
    assert mrml.scene.GetNumberOfNodes() == count


# ---------------------------------------------------------------- results in MRML


def test_detections_become_markups_spheres_and_table_in_ras(mrml):
    volume = chest_volume(mrml)
    review = logic.NoduleReview.create(volume, DETECTIONS)
    markups = review.markups_node
    assert markups.GetName() == "Nodules" and len(review) == 3
    for i, detection in enumerate(DETECTIONS):
        x, y, z = detection.center_xyz_mm
        assert np.allclose(review.center_ras_mm(i), (-x, -y, z))
        assert markups.GetNthControlPointLabel(i) == f"N{i + 1}"
        assert markups.GetNthControlPointDescription(i) == (
            f"p={detection.probability:.2f}, d={detection.diameter_mm:.1f} mm, pending")
    rows = table_rows(review.table_node)
    assert [r["ID"] for r in rows] == ["N1", "N2", "N3"]
    assert [float(r["Probability"]) for r in rows] == [0.93, 0.61, 0.35]
    assert [r["Status"] for r in rows] == ["pending"] * 3
    assert_consistent(review)
    colors = [review.sphere_nodes[i].GetDisplayNode().GetColor() for i in range(3)]
    assert np.allclose(colors[0], (1.0, 0.07, 0.0)) and np.allclose(colors[2], (1.0, 0.65, 0.0))
    assert review.sphere_nodes[0].GetDisplayNode().GetOpacity() == 0.5


def test_review_goes_under_the_volumes_study(mrml):
    volume = chest_volume(mrml)
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml.scene)
    patient = hierarchy.CreateSubjectItem(hierarchy.GetSceneItemID(), "Patient")
    study = hierarchy.CreateStudyItem(patient, "CT chest")
    hierarchy.CreateItem(study, volume)
    review = logic.NoduleReview.create(volume, DETECTIONS)
    review.add_nodule((1.0, 1.0, 1.0), 5.0)
    for node in (review.markups_node, review.table_node, *review.sphere_nodes):
        item = hierarchy.GetItemByDataNode(node)
        assert hierarchy.GetItemAncestorAtLevel(item, "Study") == study


def test_volume_transform_is_applied_to_the_review(mrml):
    volume = chest_volume(mrml)
    transform = mrml.scene.AddNewNodeByClass("vtkMRMLLinearTransformNode", "shift")
    matrix = vtk.vtkMatrix4x4()
    matrix.SetElement(0, 3, 10.0)
    transform.SetMatrixTransformToParent(matrix)
    volume.SetAndObserveTransformNodeID(transform.GetID())
    review = logic.NoduleReview.create(volume, DETECTIONS[:1])
    world = [0.0, 0.0, 0.0]
    review.markups_node.GetNthControlPointPositionWorld(0, world)
    assert np.allclose(world, (-10.0 + 10.0, 5.0, -12.0))
    assert review.sphere_nodes[0].GetTransformNodeID() == transform.GetID()


# ---------------------------------------------------------------- review


def test_accept_and_reject_change_status_color_and_optionally_hide(mrml):
    review = logic.NoduleReview.create(chest_volume(mrml), DETECTIONS)
    style = review.style
    review.accept(0)
    review.reject(1)
    assert [n.status for n in review.nodules()] == ["accepted", "rejected", "pending"]
    assert review.sphere_nodes[0].GetDisplayNode().GetColor() == pytest.approx(style.accepted_color)
    assert review.sphere_nodes[1].GetDisplayNode().GetColor() == pytest.approx(style.rejected_color)
    assert review.sphere_nodes[1].GetDisplayNode().GetVisibility() == 1
    assert [review.markups_node.GetNthControlPointSelected(i) for i in range(3)] == [True, False, True]
    review.set_hide_rejected(True)
    assert review.sphere_nodes[1].GetDisplayNode().GetVisibility() == 0
    assert not review.markups_node.GetNthControlPointVisibility(1)
    assert review.markups_node.GetNthControlPointVisibility(0)
    review.set_status(1, "pending")
    assert review.sphere_nodes[1].GetDisplayNode().GetVisibility() == 1
    assert review.markups_node.GetNthControlPointSelected(1)
    assert_consistent(review)
    with pytest.raises(UserInputError, match="'maybe' is not one of"):
        review.set_status(0, "maybe")
    with pytest.raises(UserInputError, match="no nodule 4"):
        review.accept(3)


def test_dragging_a_point_moves_its_sphere_and_row(mrml):
    review = logic.NoduleReview.create(chest_volume(mrml), DETECTIONS)
    review.markups_node.SetNthControlPointPosition(1, 1.0, 2.0, 3.0)
    assert np.allclose(sphere_center_and_diameter(review.sphere_nodes[1])[0], (1.0, 2.0, 3.0))
    assert table_rows(review.table_node)[1]["R"] == "1"
    assert_consistent(review)
    review.move(2, (-4.0, 5.0, -6.0))
    assert review.nodule(2).center_xyz_mm == pytest.approx((4.0, -5.0, -6.0))
    assert_consistent(review)


def test_resizing_changes_sphere_row_and_description(mrml):
    review = logic.NoduleReview.create(chest_volume(mrml), DETECTIONS)
    review.set_diameter(0, 15.0)
    assert sphere_center_and_diameter(review.sphere_nodes[0])[1].max() == pytest.approx(15.0, rel=1e-3)
    assert review.nodule(0).diameter_mm == 15.0
    assert_consistent(review)
    with pytest.raises(UserInputError, match="not a positive number"):
        review.set_diameter(0, -1.0)


def test_adding_missed_nodules_by_code_and_by_placing_a_point(mrml):
    review = logic.NoduleReview.create(chest_volume(mrml), DETECTIONS)
    index = review.add_nodule((3.0, 4.0, 5.0), 7.0)
    assert index == 3
    assert review.nodule(3) == logic.Nodule("N4", (3.0, 4.0, 5.0), 7.0, 1.0, "added")
    placed = review.markups_node.AddControlPoint(vtk.vtkVector3d(6.0, 6.0, 6.0), "")
    assert review.nodule(placed) == logic.Nodule("N5", (6.0, 6.0, 6.0), 6.0, 1.0, "added")
    assert review.sphere_nodes[4].GetDisplayNode().GetColor() == pytest.approx(review.style.added_color)
    assert_consistent(review)


def test_removing_a_point_removes_its_sphere_and_row(mrml):
    review = logic.NoduleReview.create(chest_volume(mrml), DETECTIONS)
    doomed = review.sphere_nodes[1].GetID()
    review.markups_node.RemoveNthControlPoint(1)
    assert [n.label for n in review.nodules()] == ["N1", "N3"]
    assert mrml.scene.GetNodeByID(doomed) is None
    assert_consistent(review)


def test_next_and_previous_cycle_and_skip_hidden_rejected(mrml):
    review = logic.NoduleReview.create(chest_volume(mrml), DETECTIONS)
    assert [review.neighbour(i, 1) for i in (-1, 0, 1, 2)] == [0, 1, 2, 0]
    assert [review.neighbour(i, -1) for i in (0, 1, 2)] == [2, 0, 1]
    review.reject(1)
    assert review.neighbour(0, 1) == 1
    review.set_hide_rejected(True)
    assert (review.neighbour(0, 1), review.neighbour(2, -1)) == (2, 0)
    for i in (0, 2):
        review.reject(i)
    assert review.neighbour(0, 1) == -1


def test_jump_to_centers_slices_and_cameras_on_the_nodule(mrml):
    review = logic.NoduleReview.create(chest_volume(mrml), DETECTIONS)
    slice_node = mrml.scene.AddNewNodeByClass("vtkMRMLSliceNode", "Red")
    slice_node.SetOrientationToAxial()
    camera = mrml.scene.AddNewNodeByClass("vtkMRMLCameraNode", "camera")
    camera.SetPosition(0.0, 500.0, 0.0)
    camera.SetFocalPoint(0.0, 0.0, 0.0)
    review.jump_to(1)
    target = np.array(review.center_ras_mm(1))
    slice_to_ras = np.array([[slice_node.GetSliceToRAS().GetElement(r, c) for c in range(4)] for r in range(4)])
    assert np.allclose(slice_to_ras[:3, 3], target)
    assert np.allclose(camera.GetFocalPoint(), target)
    assert np.allclose(np.array(camera.GetPosition()) - target, (0.0, 500.0, 0.0))


@pytest.mark.parametrize("suffix", [".mrml", ".mrb"])
def test_saved_and_reloaded_scene_keeps_the_review(mrml, tmp_path, suffix):
    volume = chest_volume(mrml)
    review = logic.NoduleReview.create(volume, DETECTIONS)
    review.accept(0)
    review.reject(1)
    review.set_diameter(2, 9.5)
    review.move(2, (1.5, -2.5, -3.5))
    review.add_nodule((4.0, 4.0, -8.0), 4.0)
    review.set_hide_rejected(True)
    review.set_opacity(0.3)
    expected = review.nodules()
    save_scene(mrml.scene, tmp_path / f"scene{suffix}")

    loaded = load_scene(tmp_path / f"scene{suffix}")
    reloaded = logic.NoduleReview.find(loaded.scene)
    assert reloaded is not None and reloaded.volume_node.GetName() == "1.2.3.4"
    got = reloaded.nodules()
    assert [(n.label, n.status) for n in got] == [(n.label, n.status) for n in expected]
    for a, b in zip(got, expected):
        assert a.center_ras_mm == pytest.approx(b.center_ras_mm, abs=1e-4)
        assert a.diameter_mm == pytest.approx(b.diameter_mm) and a.probability == pytest.approx(b.probability)
    assert reloaded.hide_rejected and reloaded.opacity == 0.3
    assert reloaded.sphere_nodes[1].GetDisplayNode().GetVisibility() == 0
    assert_consistent(reloaded)
    reloaded.markups_node.SetNthControlPointPosition(0, 7.0, 7.0, 7.0)
    assert_consistent(reloaded)


def test_sidecar_is_rewritten_on_every_change_and_restores_a_crashed_review(mrml, tmp_path):
    """With no least interval between writes (see the debounce test for the default)."""
    sidecar = tmp_path / "review.json"
    review = logic.attach_sidecar(logic.NoduleReview.create(chest_volume(mrml), DETECTIONS), sidecar, 0)
    assert [n["status"] for n in json.loads(sidecar.read_text(encoding="utf-8"))["nodules"]] == ["pending"] * 3
    review.reject(2)
    assert json.loads(sidecar.read_text(encoding="utf-8"))["nodules"][2]["status"] == "rejected"
    review.markups_node.SetNthControlPointPosition(0, -1.0, -2.0, 3.0)
    first = json.loads(sidecar.read_text(encoding="utf-8"))["nodules"][0]
    assert first["center_xyz_mm"] == pytest.approx([1.0, 2.0, 3.0])
    review.add_nodule((0.0, 0.0, 0.0), 3.0)
    content = json.loads(sidecar.read_text(encoding="utf-8"))
    assert content["seriesuid"] == "1.2.3.4" and len(content["nodules"]) == 4

    fresh = make_scene()
    restored = logic.restore_review(chest_volume(fresh), sidecar, min_interval_s=0)
    assert restored.nodules() == review.nodules()
    assert_consistent(restored)
    restored.accept(0)
    assert json.loads(sidecar.read_text(encoding="utf-8"))["nodules"][0]["status"] == "accepted"


def test_sidecar_is_written_once_when_a_dragged_point_is_dropped(mrml, tmp_path):
    sidecar = tmp_path / "review.json"
    review = logic.attach_sidecar(logic.NoduleReview.create(chest_volume(mrml), DETECTIONS), sidecar, 0)
    markups = review.markups_node
    markups.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointStartInteractionEvent)
    for step in range(1, 4):
        markups.SetNthControlPointPosition(0, float(step), 0.0, 0.0)
        assert sphere_center_and_diameter(review.sphere_nodes[0])[0] == pytest.approx((step, 0.0, 0.0))
        saved = json.loads(sidecar.read_text(encoding="utf-8"))
        assert saved["nodules"][0]["center_xyz_mm"] == [10.0, -5.0, -12.0]
    markups.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)
    saved = json.loads(sidecar.read_text(encoding="utf-8"))
    assert saved["nodules"][0]["center_xyz_mm"] == pytest.approx([-3.0, 0.0, 0.0])


def test_on_persist_callbacks_see_each_change_and_a_review_needs_none(mrml):
    review = logic.NoduleReview.create(chest_volume(mrml), DETECTIONS)
    assert review.on_persist == []
    review.accept(0)
    review.move(1, (1.0, 2.0, 3.0))
    assert [n.status for n in review.nodules()] == ["accepted", "pending", "pending"]
    seen = []
    review.on_persist.append(lambda r: seen.append([n.status for n in r.nodules()]))
    review.reject(2)
    review.set_diameter(0, 4.0)
    assert seen == [["accepted", "pending", "rejected"]] * 2


def test_a_reloaded_review_writes_its_sidecar_once_reattached(mrml, tmp_path):
    sidecar = tmp_path / "review.json"
    review = logic.attach_sidecar(logic.NoduleReview.create(chest_volume(mrml), DETECTIONS), sidecar, 0)
    review.detach()
    save_scene(mrml.scene, tmp_path / "scene.mrml")
    written = sidecar.read_text(encoding="utf-8")

    loaded = load_scene(tmp_path / "scene.mrml")
    reloaded = logic.NoduleReview.find(loaded.scene)
    assert logic.sidecar_path(reloaded) == str(sidecar)
    reloaded.accept(0)
    assert sidecar.read_text(encoding="utf-8") == written, "found, not yet re-attached: nothing written"
    logic.reattach_sidecar(reloaded, 0)
    logic.reattach_sidecar(reloaded, 0)
    assert len(reloaded.on_persist) == 1
    assert sidecar.read_text(encoding="utf-8") == written, "re-attaching alone writes nothing"
    reloaded.reject(1)
    assert [n["status"] for n in json.loads(sidecar.read_text(encoding="utf-8"))["nodules"]] == [
        "accepted", "rejected", "pending"]


def test_corrupt_sidecar_is_refused(tmp_path):
    (tmp_path / "bad.json").write_text('{"format": "something else"}', encoding="utf-8")
    with pytest.raises(UserInputError, match="not an SCPMNodule review file"):
        logic.read_sidecar(tmp_path / "bad.json")
    content = {"format": "scpm-nodule-review", "version": 1, "volume": "v", "seriesuid": "v",
               "nodules": [{"id": "N1", "center_xyz_mm": [0, 0, 0], "diameter_mm": 5.0, "probability": 0.5,
                            "status": "maybe"}]}
    (tmp_path / "status.json").write_text(json.dumps(content), encoding="utf-8")
    with pytest.raises(UserInputError, match="status.json: Status 'maybe' is not one of pending, accepted"):
        logic.read_sidecar(tmp_path / "status.json")


def test_review_status_members_are_the_text_written_to_tables_and_files():
    assert [s.value for s in logic.ReviewStatus] == ["pending", "accepted", "rejected", "added"]
    status = logic.ReviewStatus.ACCEPTED
    assert status == "accepted" and hash(status) == hash("accepted") and {"accepted": 1}[status] == 1
    assert (str(status), f"{status}", json.dumps(status)) == ("accepted", "accepted", '"accepted"')
    assert logic.ReviewStatus.parse("rejected") is logic.ReviewStatus.REJECTED
    assert logic.ReviewStatus.parse(status) is status
    with pytest.raises(UserInputError, match="'Accepted' is not one of"):
        logic.ReviewStatus.parse("Accepted")


# ---------------------------------------------------------------- export


def test_exported_csv_holds_the_corrected_nodules_in_world_lps(mrml, tmp_path):
    review = logic.NoduleReview.create(chest_volume(mrml), DETECTIONS)
    review.accept(0)
    review.reject(1)
    review.move(2, (-1.0, -2.0, 3.0))
    review.set_diameter(2, 10.0)
    review.add_nodule((5.0, -6.0, 7.0), 4.5)
    assert logic.write_review_csv(tmp_path / "nodules.csv", review) == 3
    findings = read_annotations(tmp_path / "nodules.csv")
    assert list(findings.seriesuids) == ["1.2.3.4"] * 3
    assert np.allclose(findings.centers_xyz_mm, [[10.0, -5.0, -12.0], [1.0, 2.0, 3.0], [-5.0, 6.0, 7.0]])
    assert np.allclose(findings.diameters_mm, [8.0, 10.0, 4.5])
    with open(tmp_path / "nodules.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(logic.REVIEW_CSV_COLUMNS)
    assert [r["status"] for r in rows] == ["accepted", "pending", "added"]
    assert [float(r["probability"]) for r in rows] == [0.93, 0.35, 1.0]
    assert logic.write_review_csv(tmp_path / "all.csv", review, include_rejected=True) == 4


def test_series_uid_comes_from_dicom_when_loaded_from_dicom(mrml):
    volume = chest_volume(mrml, name="3: CT chest")
    assert logic.series_uid(volume) == "3: CT chest"
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(mrml.scene)
    item = hierarchy.CreateItem(hierarchy.GetSceneItemID(), volume)
    hierarchy.SetItemUID(item, "DICOM", "1.3.6.1.4.1.14519.5.2.1.6279")
    assert logic.series_uid(volume) == "1.3.6.1.4.1.14519.5.2.1.6279"


def test_markups_json_export_is_lps_and_follows_slicers_schema(mrml, tmp_path):
    review = logic.NoduleReview.create(chest_volume(mrml), DETECTIONS)
    review.set_diameter(0, 11.0)
    logic.write_markups_json(tmp_path / "nodules.mrk.json", review)
    content = json.loads((tmp_path / "nodules.mrk.json").read_text(encoding="utf-8"))
    jsonschema.validate(content, json.loads(MARKUPS_SCHEMA.read_text(encoding="utf-8")))
    markup = content["markups"][0]
    assert markup["coordinateSystem"] == "LPS"
    points = markup["controlPoints"]
    assert [p["label"] for p in points] == ["N1", "N2", "N3"]
    assert np.allclose([p["position"] for p in points], [d.center_xyz_mm for d in DETECTIONS])
    assert points[0]["description"] == "p=0.93, d=11.0 mm, pending, resized"


def test_table_csv_export(mrml, tmp_path):
    review = logic.NoduleReview.create(chest_volume(mrml), DETECTIONS)
    review.reject(0)
    logic.write_table_csv(tmp_path / "table.csv", review)
    with open(tmp_path / "table.csv", newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(logic.TABLE_COLUMNS)
    assert [(r["ID"], r["Status"]) for r in rows] == [("N1", "rejected"), ("N2", "pending"), ("N3", "pending")]
    assert [float(r["R"]) for r in rows] == [-10.0, 7.5, -2.0]


def test_safe_file_name_keeps_uids_and_replaces_what_a_file_system_may_refuse():
    """The names the module writes: the detector's input volume, the sidecar and the exports."""
    assert safe_file_name("1.3.6.1.4.1.14519.5.2.1.6279") == "1.3.6.1.4.1.14519.5.2.1.6279"
    assert safe_file_name("3: CT chest") == "3__CT_chest"
    assert safe_file_name('a/b\\c*?<>|"d') == "a_b_c______d"
    assert safe_file_name("Thorax-CT_1 (2)") == "Thorax-CT_1__2"
    assert safe_file_name("Lungé") == "Lungé"
    assert safe_file_name("..") == safe_file_name("") == "unnamed"
    assert safe_file_name(".hidden_") == "hidden"
    assert safe_file_name(" / ", fallback="volume") == "volume"


# ---------------------------------------------------------------- background process


def test_slicer_installs_the_packages_pyproject_declares():
    """Slicer installs from the module's requirements.txt (torch through the PyTorch extension),
    pip from pyproject.toml: the same packages and versions, but matplotlib, which only the
    library's plots (phantom previews, FROC curves, the demo) import, lazily, and tqdm, which only
    the command line's progress bar imports, never the module's background run (JSON lines)."""
    requirements = logic.detector_requirements()
    block = re.search(r"(?ms)^dependencies = \[(.*?)^\]", (REPO / "pyproject.toml").read_text(encoding="utf-8"))
    declared = dict(re.fullmatch(r"([\w.-]+)(.*)", dependency).groups()
                    for dependency in re.findall(r'"([^"]+)"', block.group(1)))
    assert declared.pop("matplotlib") == ">=3.6" and declared.pop("tqdm") == ">=4.60"
    assert requirements == declared and requirements["torch"] == ">=2.1"
    assert all(importlib.util.find_spec(package) for package in requirements), "a package imports under another name"


def test_requirements_lines_are_parsed(tmp_path):
    (tmp_path / "req.txt").write_text("# comment\n\nnumpy>=1.24,<3  # why\nSimpleITK\n", encoding="utf-8")
    assert logic.detector_requirements(tmp_path / "req.txt") == {"numpy": ">=1.24,<3", "SimpleITK": ""}
    (tmp_path / "url.txt").write_text("git+https://example.org/x.git\n", encoding="utf-8")
    with pytest.raises(UserInputError, match="is not a 'package>=version' line"):
        logic.detector_requirements(tmp_path / "url.txt")


def test_detect_command_is_an_argument_list_per_the_contract(tmp_path):
    settings = logic.DetectionSettings(model="my model.pt", device="cpu", threshold=0.25, max_detections=7)
    command = logic.detect_command(tmp_path / "a b.nrrd", tmp_path / "out", settings, python="py")
    assert command == ["py", "-m", "SCPMNoduleLib.cli", "detect", str(tmp_path / "a b.nrrd"), "--out",
                       str(tmp_path / "out"), "--formats", "json", "--model", "my model.pt", "--device", "cpu",
                       "--threshold", "0.25", "--max-detections", "7", "--progress", "jsonl"]


def test_progress_lines_are_parsed():
    event = logic.parse_progress_line('{"event": "progress", "scan": "a", "fraction": 0.4, "stage": "forward"}\n')
    assert event == logic.ProgressEvent("progress", scan="a", fraction=0.4, stage="forward")
    done = logic.parse_progress_line('{"event": "done", "scan": "a", "outputs": {"json": "/x/a.json"}}')
    assert done.outputs == {"json": "/x/a.json"}
    error = logic.parse_progress_line('{"event": "error", "scan": "a", "message": "a.nrrd is 2-D."}')
    assert (error.event, error.message) == ("error", "a.nrrd is 2-D.")
    assert logic.parse_progress_line("INFO loading model") == logic.ProgressEvent("log", message="INFO loading model")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/stat")
    return not (status.is_file() and status.read_text(encoding="utf-8").split(")")[-1].split()[0] == "Z")


@pytest.mark.skipif(os.name == "nt", reason="process-group check uses POSIX /proc")
def test_cancel_kills_the_whole_process_tree(tmp_path):
    child = (
        "import subprocess, sys, time\n"
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        "print('{\"event\": \"progress\", \"scan\": \"s\", \"fraction\": 0.1, \"stage\": \"read\"}', flush=True)\n"
        "time.sleep(60)\n"
    )
    process = logic.DetectionProcess([sys.executable, "-c", child])
    process.start()
    events = []
    while not events:
        events = process.poll()
    assert events == [logic.ProgressEvent("progress", scan="s", fraction=0.1, stage="read")]
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text(encoding="utf-8").split()
    assert children, "the child should have started a grandchild"
    process.cancel()
    assert process.returncode is not None and not process.running
    process.wait(5)
    deadline = time.monotonic() + 10.0  # SIGKILL is delivered asynchronously; a loaded machine takes a moment
    while any(_pid_alive(int(pid)) for pid in children) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_pid_alive(int(pid)) for pid in children)


def test_a_failing_run_reports_its_error_and_adds_nothing(mrml):
    volume = chest_volume(mrml)
    count = mrml.scene.GetNumberOfNodes()
    run = logic.DetectionRun(volume, logic.DetectionSettings())
    run.process.command = [sys.executable, "-c",
                           "import json,sys; print(json.dumps({'event': 'error', 'scan': 'x', "
                           "'message': 'x.nrrd: the scan is smaller than a patch.'})); sys.exit(2)"]
    run.start()
    run.wait(30)
    with pytest.raises(UserInputError, match=r"^x.nrrd: the scan is smaller than a patch.$"):
        run.finish()
    assert mrml.scene.GetNumberOfNodes() == count
    assert not run.temp_dir.exists()


def test_a_cancelled_run_adds_nothing(mrml):
    volume = chest_volume(mrml)
    count = mrml.scene.GetNumberOfNodes()
    run = logic.DetectionRun(volume, logic.DetectionSettings())
    run.process.command = [sys.executable, "-c", "import time; time.sleep(60)"]
    run.start()
    run.cancel()
    with pytest.raises(UserInputError, match="cancelled"):
        run.finish()
    assert mrml.scene.GetNumberOfNodes() == count


@pytest.mark.slow
def test_background_run_of_the_real_command_line_puts_its_detections_in_the_scene(mrml, tmp_path):
    from dataclasses import replace

    from SCPMNoduleLib.inference import Detector, InferenceConfig
    from SCPMNoduleLib.phantom import generate_phantom, phantom_config

    phantom = generate_phantom(5, phantom_config("small"))
    volume = logic.volume_node_from_image(mrml.scene, phantom.image, "phantom-5")
    settings = logic.DetectionSettings(device="cpu", threshold=0.0, max_detections=5)
    run = logic.DetectionRun(volume, settings, sidecar_path=str(tmp_path / "review.json"))
    run.start()
    fractions = []
    while not run.finished:
        fractions += [e.fraction for e in run.poll() if e.event == "progress"]
        time.sleep(0.05)
    review = run.finish()
    assert fractions == sorted(fractions) and run.fraction == pytest.approx(1.0)
    config = replace(InferenceConfig(), score_threshold=0.0, max_detections=5)
    detector = Detector.from_checkpoint("demo", device="cpu", config=config)
    expected = detector.detect(logic.image_from_volume_node(volume)).detections
    assert len(review) == len(expected) == 5
    for i, detection in enumerate(expected):
        x, y, z = detection.center_xyz_mm
        assert review.center_ras_mm(i) == pytest.approx((-x, -y, z), abs=1e-3)
        assert review.nodule(i).diameter_mm == pytest.approx(detection.diameter_mm, rel=1e-4)
    assert_consistent(review)
    assert logic.read_sidecar(tmp_path / "review.json") == review.nodules()
    assert not run.temp_dir.exists()


@pytest.mark.slow
def test_a_volume_without_lungs_gets_the_detectors_sentence_with_its_own_name(mrml):
    image = sitk.ReadImage(str(Path(__file__).parent / "data" / "realct" / "abdomen_6mm.nii.gz"))
    volume = logic.volume_node_from_image(mrml.scene, image, "Abdomen")
    count = mrml.scene.GetNumberOfNodes()
    run = logic.DetectionRun(volume, logic.DetectionSettings(device="cpu"))
    run.start()
    run.wait(120)
    with pytest.raises(UserInputError, match=r"^Abdomen: no lungs found — is this a chest CT\? \("):
        run.finish()
    assert mrml.scene.GetNumberOfNodes() == count and not run.temp_dir.exists()


@pytest.mark.slow
def test_cancelling_a_real_run_stops_the_detector_and_leaves_the_scene_unchanged(mrml):
    volume = chest_volume(mrml)
    count = mrml.scene.GetNumberOfNodes()
    run = logic.DetectionRun(volume, logic.DetectionSettings(device="cpu"))
    run.start()
    while not any(e.event == "progress" for e in run.poll()):
        assert not run.finished, run.process.stderr_tail
        time.sleep(0.02)
    pid = run.process.pid
    run.cancel()
    assert not _pid_alive(pid)
    with pytest.raises(UserInputError, match="cancelled"):
        run.finish()
    assert mrml.scene.GetNumberOfNodes() == count and not run.temp_dir.exists()
