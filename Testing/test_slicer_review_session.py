"""A radiologist's whole session in the Slicer module, on real MRML (slicer-core), no Qt: undo,
notes, the reviewed count, deleting points in the views, one review per volume, restoring the
right series, the scene closing under a running detection, debounced recovery writes, the
lung window. (The module's Widget only wires buttons to these.)"""

from __future__ import annotations

import csv
import json
import subprocess
import sys
from pathlib import Path

import pytest
import slicer
from test_slicer_logic import DETECTIONS, assert_consistent, chest_volume, table_rows

from SCPMNoduleLib.errors import UserInputError

from slicer_scene import make_scene

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "SCPMNodule"))

import SCPMNoduleMRML as logic  # noqa: E402
from SCPMNoduleMRML.review import MOVING_POINT_ATTRIBUTE  # noqa: E402


@pytest.fixture
def mrml():
    return make_scene()


def review_nodes(scene) -> list:
    """Every node this module made (point lists, tables, spheres)."""
    nodes = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    return [n for n in nodes if n.GetAttribute("SCPMNodule.Role")]


def review_folders(scene) -> list[int]:
    hierarchy = slicer.vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(scene)
    children = vtk_id_list()
    hierarchy.GetItemChildren(hierarchy.GetSceneItemID(), children, True)
    return [children.GetId(i) for i in range(children.GetNumberOfIds())
            if hierarchy.GetItemAttribute(children.GetId(i), "SCPMNodule.Role") == "nodule-folder"]


def vtk_id_list():
    import vtk

    return vtk.vtkIdList()


# ---------------------------------------------------------------- defect 9: delete all points


def test_deleting_all_points_in_a_view_removes_every_row_and_sphere(mrml):
    """Slicer's "delete all control points" fires PointRemovedEvent without an index."""
    review = logic.NoduleReview.create(chest_volume(mrml), DETECTIONS)
    spheres = [s.GetID() for s in review.sphere_nodes]
    review.markups_node.RemoveAllControlPoints()
    assert len(review) == 0 and review.sphere_nodes == []
    assert all(mrml.scene.GetNodeByID(i) is None for i in spheres)
    assert review.undo() and [n.label for n in review.nodules()] == ["N1", "N2", "N3"]
    assert_consistent(review)


def test_rows_of_points_removed_without_an_index_are_found_by_label(mrml):
    review = logic.NoduleReview.create(chest_volume(mrml), DETECTIONS)
    review.detach()  # remove a point unobserved, then tell the review as Slicer does: no index
    review.markups_node.RemoveNthControlPoint(1)
    review._observe()
    review.markups_node.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointRemovedEvent)
    assert [n.label for n in review.nodules()] == ["N1", "N3"]
    assert_consistent(review)


# ---------------------------------------------------------------- undo, notes, count


def test_undo_takes_back_each_review_action_last_first(mrml):
    review = logic.NoduleReview.create(chest_volume(mrml), DETECTIONS)
    states = [review.nodules()]

    def then():
        states.append(review.nodules())

    review.accept(0), then()
    review.reject(1), then()
    for diameter in (6.0, 6.5, 7.0):  # a spin box's steps: one action
        review.set_diameter(2, diameter)
    then()
    review.set_note(0, "  part-solid,\n spiculated "), then()
    review.move(1, (1.0, 2.0, 3.0)), then()
    markups = review.markups_node
    markups.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointStartInteractionEvent)
    for step in (1.0, 2.0):  # a drag in a view: one action
        markups.SetNthControlPointPosition(0, step, step, step)
    markups.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)
    then()
    review.add_nodule((4.0, 4.0, 4.0), 5.0), then()
    review.delete(1), then()
    assert [n.label for n in review.nodules()] == ["N1", "N3", "N4"]
    assert review.nodule(0).note == "part-solid, spiculated"

    while states[:-1]:
        states.pop()
        assert review.undo()
        assert review.nodules() == states[-1]
        assert_consistent(review)
    assert not review.can_undo and not review.undo()


def test_an_undo_is_written_to_the_recovery_file(mrml, tmp_path):
    sidecar = tmp_path / "review.json"
    review = logic.attach_sidecar(logic.NoduleReview.create(chest_volume(mrml), DETECTIONS), sidecar, 0)
    review.reject(0)
    review.undo()
    assert json.loads(sidecar.read_text(encoding="utf-8"))["nodules"][0]["status"] == "pending"


def test_a_point_placed_after_a_deletion_gets_a_new_label(mrml):
    review = logic.NoduleReview.create(chest_volume(mrml), DETECTIONS)
    review.delete(0)
    review.add_nodule((0.0, 0.0, 0.0), 4.0)
    labels = [n.label for n in review.nodules()]
    assert labels == ["N2", "N3", "N4"] and len(set(labels)) == len(labels)


def test_reviewed_count_and_notes_reach_every_export(mrml, tmp_path):
    review = logic.NoduleReview.create(chest_volume(mrml), DETECTIONS)
    assert review.reviewed_count() == (0, 3)
    review.accept(0)
    review.reject(2)
    review.add_nodule((0.0, 0.0, 0.0), 4.0)
    assert review.reviewed_count() == (3, 4)
    review.set_note(0, "solid, 8 mm; follow up")
    assert review.markups_node.GetNthControlPointDescription(0).endswith("accepted; solid, 8 mm; follow up")

    logic.write_review_csv(tmp_path / "n.csv", review, include_rejected=True)
    with open(tmp_path / "n.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert list(rows[0]) == list(logic.REVIEW_CSV_COLUMNS)
    assert [(r["status"], r["note"]) for r in rows] == [
        ("accepted", "solid, 8 mm; follow up"), ("pending", ""), ("rejected", ""), ("added", "")]
    logic.write_table_csv(tmp_path / "t.csv", review)
    with open(tmp_path / "t.csv", newline="", encoding="utf-8") as handle:
        assert next(csv.DictReader(handle))["Note"] == "solid, 8 mm; follow up"
    logic.write_sidecar(tmp_path / "r.json", review)
    assert logic.read_sidecar(tmp_path / "r.json") == review.nodules()


def test_a_table_saved_before_notes_existed_gets_an_empty_note_column(mrml, tmp_path):
    review = logic.NoduleReview.create(chest_volume(mrml), DETECTIONS)
    review.detach()
    review.table_node.RemoveColumn(review.table_node.GetColumnIndex("Note"))
    old = logic.NoduleReview.find(mrml.scene)
    assert [n.note for n in old.nodules()] == ["", "", ""]
    old.set_note(1, "calcified")
    assert table_rows(old.table_node)[1]["Note"] == "calcified"
    content = {"format": "scpm-nodule-review", "version": 1, "volume": "v", "seriesuid": "1.2.3.4",
               "nodules": [{"id": "N1", "center_xyz_mm": [1, 2, 3], "diameter_mm": 5, "probability": 0.9,
                            "status": "accepted"}]}
    (tmp_path / "old.json").write_text(json.dumps(content), encoding="utf-8")
    assert logic.read_sidecar(tmp_path / "old.json")[0].note == ""


def test_moving_and_resizing_a_detection_marks_it_and_undo_takes_the_mark_back(mrml):
    review = logic.NoduleReview.create(chest_volume(mrml), DETECTIONS)
    review.move(0, (1.0, 2.0, 3.0))
    markups = review.markups_node
    markups.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointStartInteractionEvent)
    markups.SetNthControlPointPosition(1, 4.0, 5.0, 6.0)  # a drag in a view
    markups.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)
    for diameter in (9.0, 9.5):
        review.set_diameter(1, diameter)
    review.accept(1)
    assert [n.corrections for n in review.nodules()] == [("moved",), ("moved", "resized"), ()]
    rows = table_rows(review.table_node)
    assert [(r["Moved"], r["Resized"]) for r in rows] == [("yes", ""), ("yes", "yes"), ("", "")]
    assert markups.GetNthControlPointDescription(1) == "p=0.61, d=9.5 mm, accepted, moved, resized"
    assert_consistent(review)

    added = review.add_nodule((7.0, 7.0, 7.0), 5.0)  # the reader's own nodule: nothing to correct
    review.move(added, (8.0, 8.0, 8.0))
    review.set_diameter(added, 6.0)
    assert review.nodule(added).corrections == ()

    for _ in range(3):  # the added nodule's resize, move and addition
        assert review.undo()
    assert review.undo() and [n.corrections for n in review.nodules()] == [("moved",), ("moved", "resized"), ()]
    assert review.undo() and [n.corrections for n in review.nodules()] == [("moved",), ("moved",), ()]
    assert review.undo() and [n.corrections for n in review.nodules()] == [("moved",), (), ()]
    assert review.undo() and [n.corrections for n in review.nodules()] == [(), (), ()]
    assert [(r["Moved"], r["Resized"]) for r in table_rows(review.table_node)] == [("", "")] * 3
    assert not review.can_undo
    assert_consistent(review)


def test_corrections_reach_the_recovery_file_and_the_csv_and_older_files_load(mrml, tmp_path):
    review = logic.NoduleReview.create(chest_volume(mrml), DETECTIONS)
    review.move(0, (1.0, 2.0, 3.0))
    review.set_diameter(2, 4.0)
    review.reject(2)
    sidecar = tmp_path / "r.json"
    logic.write_sidecar(sidecar, review)
    entries = json.loads(sidecar.read_text(encoding="utf-8"))["nodules"]
    assert [(e["moved"], e["resized"]) for e in entries] == [(True, False), (False, False), (False, True)]
    assert logic.read_sidecar(sidecar) == review.nodules()
    restored = logic.restore_review(review.volume_node, sidecar)
    assert restored.nodules() == review.nodules()
    assert_consistent(restored)

    logic.write_review_csv(tmp_path / "n.csv", review, include_rejected=True)
    with open(tmp_path / "n.csv", newline="", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [(r["status"], r["moved"], r["resized"]) for r in rows] == [
        ("pending", "1", "0"), ("pending", "0", "0"), ("rejected", "0", "1")]

    for entry in entries:  # a file written before corrections existed
        del entry["moved"], entry["resized"]
    (tmp_path / "old.json").write_text(json.dumps({**json.loads(sidecar.read_text(encoding="utf-8")),
                                                   "nodules": entries}), encoding="utf-8")
    assert [n.corrections for n in logic.read_sidecar(tmp_path / "old.json")] == [(), (), ()]
    entries[0]["moved"] = "yes"
    (tmp_path / "bad.json").write_text(json.dumps({"format": "scpm-nodule-review", "version": 1, "nodules": entries}),
                                       encoding="utf-8")
    with pytest.raises(UserInputError, match="bad.json: a nodule entry is incomplete or malformed .*'moved' is 'yes'"):
        logic.read_sidecar(tmp_path / "bad.json")


def test_a_table_saved_before_corrections_existed_reads_as_uncorrected(mrml):
    review = logic.NoduleReview.create(chest_volume(mrml), DETECTIONS)
    review.detach()
    for column in ("Moved", "Resized"):
        review.table_node.RemoveColumn(review.table_node.GetColumnIndex(column))
    old = logic.NoduleReview.find(mrml.scene)
    assert [n.corrections for n in old.nodules()] == [(), (), ()]
    old.set_diameter(1, 3.0)
    assert table_rows(old.table_node)[1]["Resized"] == "yes" and old.nodule(1).resized
    assert_consistent(old)


# ---------------------------------------------------------------- views: click, jump


def test_grabbing_a_point_in_a_view_selects_its_nodule(mrml):
    """Slicer's markups widget records the grabbed point's index on the node, then fires the event."""
    review = logic.NoduleReview.create(chest_volume(mrml), DETECTIONS)
    selected = []
    review.on_select = selected.append
    review.markups_node.SetAttribute(MOVING_POINT_ATTRIBUTE, "2")
    review.markups_node.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointStartInteractionEvent)
    review.markups_node.InvokeEvent(slicer.vtkMRMLMarkupsNode.PointEndInteractionEvent)
    assert selected == [2] and not review.can_undo, "a click that moves nothing is no action"


def test_the_nodule_under_a_point_of_a_view(mrml):
    review = logic.NoduleReview.create(chest_volume(mrml), DETECTIONS)
    center = review.center_ras_mm(1)
    assert review.nodule_at(center) == 1
    assert review.nodule_at((center[0] + 2.4, center[1], center[2])) == 1  # inside its 5 mm sphere
    assert review.nodule_at((center[0] + 2.6, center[1], center[2])) == -1
    review.reject(1)
    review.set_hide_rejected(True)
    assert review.nodule_at(center) == -1


def test_jumping_to_a_nodule_places_the_crosshair(mrml):
    crosshair = mrml.scene.AddNewNodeByClass("vtkMRMLCrosshairNode")
    review = logic.NoduleReview.create(chest_volume(mrml), DETECTIONS)
    review.jump_to(2)
    assert crosshair.GetCrosshairRAS() == pytest.approx(review.center_ras_mm(2))


# ---------------------------------------------------------------- defect 8: one review per volume


def test_a_new_review_of_a_volume_replaces_the_old_one_and_leaves_other_volumes_alone(mrml):
    first_volume, other_volume = chest_volume(mrml, "1.1"), chest_volume(mrml, "2.2")
    old = logic.NoduleReview.create(first_volume, DETECTIONS)
    other = logic.NoduleReview.create(other_volume, DETECTIONS[:1])
    old_nodes = [n.GetID() for n in (old.markups_node, old.table_node, *old.sphere_nodes)]
    assert len(review_folders(mrml.scene)) == 2
    new = logic.NoduleReview.create(first_volume, DETECTIONS[:2])
    assert logic.remove_reviews(first_volume, keep=new) == 1
    assert all(mrml.scene.GetNodeByID(i) is None for i in old_nodes)
    assert len(review_nodes(mrml.scene)) == 2 + 2 + 2 + 1
    assert len(review_folders(mrml.scene)) == 2
    assert logic.NoduleReview.find(mrml.scene, first_volume).markups_node is new.markups_node
    assert logic.NoduleReview.find(mrml.scene, other_volume).markups_node is other.markups_node
    assert_consistent(new)


# ---------------------------------------------------------------- defect 10: restore the right series


def test_restoring_a_review_onto_another_series_is_refused_and_adds_nothing(mrml, tmp_path):
    sidecar = tmp_path / "review.json"
    logic.attach_sidecar(logic.NoduleReview.create(chest_volume(mrml, "1.2.3.4"), DETECTIONS), sidecar)
    fresh = make_scene()
    wrong = chest_volume(fresh, "9.8.7")
    with pytest.raises(UserInputError, match=r"^review.json is the review of series 1\.2\.3\.4, not of '9\.8\.7' "
                                             r"\(series 9\.8\.7\): select that series' volume and restore again\.$"):
        logic.restore_review(wrong, sidecar)
    assert review_nodes(fresh.scene) == []
    assert len(logic.restore_review(chest_volume(fresh, "1.2.3.4"), sidecar)) == 3


# ---------------------------------------------------------------- defect 7: the scene closes


@pytest.mark.parametrize("how", ["scene closed", "volume removed"])
def test_a_run_finishing_after_its_volume_left_the_scene_adds_nothing(mrml, how):
    volume = chest_volume(mrml)
    review = logic.NoduleReview.create(volume, DETECTIONS)
    run = logic.DetectionRun(volume, logic.DetectionSettings())
    run.process.command = [sys.executable, "-c", "print('{\"event\": \"done\", \"scan\": \"x\", \"outputs\": {}}')"]
    run.start()
    run.wait(30)
    if how == "scene closed":
        mrml.scene.Clear(0)
    else:
        mrml.scene.RemoveNode(volume)
    assert not review.alive or how == "volume removed"
    count = mrml.scene.GetNumberOfNodes()
    with pytest.raises(UserInputError, match=r"^'1\.2\.3\.4' left the scene \(closed or removed\) before its "
                                             r"detection finished; nothing was added\.$"):
        run.finish()
    assert mrml.scene.GetNumberOfNodes() == count and not run.temp_dir.exists()


def test_a_closed_scene_leaves_a_review_that_knows_it_is_gone(mrml, tmp_path):
    review = logic.attach_sidecar(logic.NoduleReview.create(chest_volume(mrml), DETECTIONS), tmp_path / "r.json", 60)
    review.accept(0)
    assert review.alive
    mrml.scene.Clear(0)
    assert not review.alive
    logic.flush_sidecar(review)  # a waiting write of a closed review is dropped, not a crash


# ---------------------------------------------------------------- defect 14: debounced recovery writes


def test_recovery_writes_are_debounced_and_never_repeat_an_unchanged_review(mrml, tmp_path):
    sidecar = tmp_path / "review.json"
    review = logic.attach_sidecar(logic.NoduleReview.create(chest_volume(mrml), DETECTIONS), sidecar, 60)

    def statuses():
        return [n["status"] for n in json.loads(sidecar.read_text(encoding="utf-8"))["nodules"]]

    assert statuses() == ["pending"] * 3, "the first write is at once"
    for diameter in (5.0, 5.5, 6.0):
        review.set_diameter(0, diameter)
    review.accept(1)
    assert statuses() == ["pending"] * 3, "within the interval, edits wait"
    logic.flush_sidecar(review)
    assert statuses() == ["pending", "accepted", "pending"]
    assert json.loads(sidecar.read_text(encoding="utf-8"))["nodules"][0]["diameter_mm"] == 6.0

    other = make_scene()
    quick = logic.attach_sidecar(logic.NoduleReview.create(chest_volume(other), DETECTIONS),
                                 tmp_path / "quick.json", 0)
    quick.accept(0)
    (tmp_path / "quick.json").unlink()
    quick.accept(0)  # no change
    quick.set_opacity(0.2)  # display only
    quick.set_hide_rejected(True)
    assert not (tmp_path / "quick.json").exists()
    quick.reject(0)
    assert (tmp_path / "quick.json").exists()


def test_the_sidecar_writer_writes_once_the_interval_has_passed(mrml, tmp_path):
    now = [0.0]
    review = logic.NoduleReview.create(chest_volume(mrml), DETECTIONS)
    review.markups_node.SetAttribute("SCPMNodule.SidecarPath", str(tmp_path / "r.json"))
    writer = logic.SidecarWriter(1.0, clock=lambda: now[0])
    review.on_persist.append(writer)
    review.accept(0)
    review.accept(1)
    assert writer.waiting and logic.read_sidecar(tmp_path / "r.json")[1].status == "pending"
    now[0] = 1.5
    review.accept(2)
    assert not writer.waiting
    assert [n.status for n in logic.read_sidecar(tmp_path / "r.json")] == ["accepted"] * 3


# ---------------------------------------------------------------- the lung window, Windows, torch


def test_the_reviewed_volume_gets_slicers_lung_window(mrml, tmp_path):
    """Slicer's Volumes logic reads its presets from its share folder; a copy of its CT_LUNG entry."""
    preset = {"$schema": "https://raw.githubusercontent.com/Slicer/Slicer/main/Modules/Loadable/Volumes/Resources/"
                         "Schema/volumes-display-presets-schema-v1.0.0.json#",
              "volumeDisplayPresets": [{"id": "CT_LUNG", "name": "CT-Lung", "window": 1400.0, "level": -500.0,
                                        "color": "vtkMRMLColorTableNodeGrey"}]}
    (tmp_path / "VolumeDisplayPresets.json").write_text(json.dumps(preset), encoding="utf-8")
    volumes = slicer.vtkSlicerVolumesLogic()
    volumes.SetModuleShareDirectory(str(tmp_path))
    volumes.SetMRMLScene(mrml.scene)
    volume = chest_volume(mrml)
    assert logic.apply_lung_window(volume, volumes)
    display = volume.GetDisplayNode()
    assert (display.GetWindow(), display.GetLevel(), display.GetAutoWindowLevel()) == (1400.0, -500.0, 0)


def test_the_detector_starts_without_a_console_window_on_windows(monkeypatch):
    class StartupInfo:
        dwFlags = 0
        wShowWindow = 1

    for name, value in (("STARTUPINFO", StartupInfo), ("STARTF_USESHOWWINDOW", 1),
                        ("CREATE_NEW_PROCESS_GROUP", 0x200), ("CREATE_NO_WINDOW", 0x08000000)):
        monkeypatch.setattr(subprocess, name, value, raising=False)
    options = logic.child_process_options(windows=True)
    assert options["creationflags"] == 0x200 | 0x08000000
    assert options["startupinfo"].dwFlags & 1 and options["startupinfo"].wShowWindow == 0
    assert logic.child_process_options(windows=False) == {"start_new_session": True}


def test_building_the_panel_keeps_torch_out_of_slicers_process():
    """model_names() reads Models.json with json (SCPMNoduleLib.models), as the panel is built."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import SCPMNoduleMRML; "
            "assert SCPMNoduleMRML.model_names() == ['demo'], SCPMNoduleMRML.model_names(); "
            "assert SCPMNoduleMRML.model_version('demo') != 'unknown'; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'torch'))")
    result = subprocess.run([sys.executable, "-c", code, str(REPO / "SCPMNodule")],
                            capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_dependencies_ask_for_the_pytorch_extension_and_never_for_the_export_packages():
    """slicer-core has no PyTorch extension: a missing torch gets its sentence; a missing highdicom
    (DICOM export only, installed by the export) does not stop detection; a missing scipy does."""
    def without(*absent):
        return lambda name: None if name in absent else object()

    with pytest.raises(UserInputError, match="needs the PyTorch extension"):
        logic.ensure_dependencies(find_spec=without("torch"))
    logic.ensure_dependencies(find_spec=without("highdicom", "pydicom"))
    with pytest.raises(UserInputError, match="^Slicer's Python lacks scipy, which Slicer ships"):
        logic.ensure_dependencies(find_spec=without("scipy"))
