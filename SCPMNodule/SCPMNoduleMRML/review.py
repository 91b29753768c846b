"""The nodules of one scan in the MRML scene, and the radiologist's review of them.

A review is three kinds of node kept consistent, all under the volume's study in the subject
hierarchy:

* one markups point list ``Nodules``: control point ``i`` is nodule ``i`` at its RAS position,
  labelled ``N1, N2, ...``, its description giving probability and diameter; rejected points
  are unselected, so Slicer draws them in the list's (grey) color instead of the selected red;
* one sphere model per nodule (node references ``SCPMNodule.Sphere`` of the point list, in point
  order), colored by probability while pending, by status once reviewed;
* a table node, row ``i`` = nodule ``i``: ID, R, A, S, diameter (mm), probability, status, the
  reader's corrections (moved, resized) and note (its layout: :mod:`.table`).

How these nodes are marked in the scene and found again is :mod:`.scene`'s.

The table is the record of the review (diameter, probability, status); the point list is the
record of the positions. Both are saved with the scene, so a saved and reloaded scene keeps the
review: :meth:`NoduleReview.find` re-attaches to it. Moving a control point (in a view or by
code) moves its sphere and updates its row through an observer on the point list; placing a new
point adds an ``added`` nodule; removing one removes its sphere and row. A detection the reader
moves (in a view or by :meth:`NoduleReview.move`) is marked *moved*, one resized
(:meth:`NoduleReview.set_diameter`) *resized*, in the same edit (undo takes the mark back with
it); a nodule the reader added is not marked, its centre and size being the reader's anyway.
After every change
the review calls its :attr:`NoduleReview.on_persist` callbacks (while a point is dragged in a
view, once, when it is dropped); the crash-recovery file (:mod:`.sidecar`) subscribes there.

Every edit of the review (status, note, resize, move, add, delete) can be undone, last first
(:meth:`NoduleReview.undo`); the history (:mod:`.history`) holds the table as it was before
each edit, a run of resizes (or note edits) of one nodule counting as one edit. Display choices (opacity, hiding
rejected nodules) are not edits: they are neither undone nor written to the recovery file.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import vtk

from SCPMNoduleLib.detection import Detection
from SCPMNoduleLib.errors import UserInputError

from .hierarchy import file_beside, place_in_folder, remove_with_folder
from .history import EditHistory
from .nodules import Nodule, ReviewStatus, ReviewStyle, describe, nodule_color, sphere_polydata
from .scene import (
    HIDE_REJECTED_ATTRIBUTE,
    OPACITY_ATTRIBUTE,
    ROLE_ATTRIBUTE,
    SPHERE_REFERENCE,
    TABLE_REFERENCE,
    VOLUME_REFERENCE,
    nodes_by_class,
    review_point_lists,
)
from .table import (
    DIAMETER_COLUMN,
    FLAG,
    MOVED_COLUMN,
    NOTE_COLUMN,
    RAS_COLUMNS,
    RESIZED_COLUMN,
    STATUS_COLUMN,
    NoduleTable,
)
from .volumes import lps_to_ras

__all__ = ["NoduleReview", "remove_reviews"]

MOVING_POINT_ATTRIBUTE = "Markups.MovingMarkupIndex"
"""Slicer's markups widget sets it to the index of the point grabbed in a view, then invokes
``PointStartInteractionEvent`` (which carries no index)."""


class NoduleReview:
    """The nodules of one volume in a scene: create, edit, and keep the three records in step.

    Build one with :meth:`create` (from detections) or :meth:`find` (re-attach after a scene was
    loaded); edit it with :meth:`set_status`, :meth:`set_note`, :meth:`set_diameter`,
    :meth:`move`, :meth:`add_nodule` and :meth:`delete`, or by moving, placing and deleting
    points in the views; :meth:`undo` takes the last edit back; call :meth:`detach` when done.
    ``on_change`` (if given) is called with no arguments after every change, also while a point
    is dragged (for the GUI). :attr:`on_persist` is the list of callbacks called with the review
    after every edit, a drag counting once, at the drop: whoever keeps a copy of the review (the
    crash-recovery file) appends itself there. ``on_select`` (if given) is called with the
    index of a point the reader grabs in a view.
    """

    def __init__(self, markups_node, style: ReviewStyle | None = None,
                 on_change: Callable[[], None] | None = None):
        if markups_node is None or markups_node.GetAttribute(ROLE_ATTRIBUTE) != "nodules":
            raise UserInputError("The node given is not a nodule list made by SCPMNodule.")
        self.markups_node = markups_node
        self.style = style or ReviewStyle()
        self.on_change = on_change
        self.on_persist: list[Callable[[NoduleReview], None]] = []
        self.on_select: Callable[[int], None] | None = None
        self._observer_tags: list[int] = []
        self._dragging = False
        self._drag_snapshot: list[Nodule] | None = None
        self._history = EditHistory()
        if self.table_node is not None:  # a table saved by an older version lacks the later columns
            self._table.add_missing_columns()
        self._observe()

    # ------------------------------------------------------------------ building
    @classmethod
    def create(cls, volume_node, detections: Sequence[Detection], style: ReviewStyle | None = None,
               name: str = "Nodules") -> NoduleReview:
        """Add the nodes of a new review of ``volume_node`` holding ``detections`` (world LPS)."""
        nodules = [
            Nodule(f"N{i + 1}", tuple(lps_to_ras(np.asarray(d.center_xyz_mm))), float(d.diameter_mm),
                   float(d.probability), ReviewStatus.PENDING)
            for i, d in enumerate(detections)
        ]
        return cls.from_nodules(volume_node, nodules, style, name)

    @classmethod
    def from_nodules(cls, volume_node, nodules: Sequence[Nodule], style: ReviewStyle | None = None,
                     name: str = "Nodules") -> NoduleReview:
        """Add the nodes of a review of ``volume_node`` holding ``nodules`` as given."""
        style = style or ReviewStyle()
        scene = volume_node.GetScene()
        markups = scene.AddNewNodeByClass("vtkMRMLMarkupsFiducialNode", scene.GenerateUniqueName(name))
        markups.SetAttribute(ROLE_ATTRIBUTE, "nodules")
        markups.SetAttribute(OPACITY_ATTRIBUTE, repr(style.sphere_opacity))
        markups.SetAttribute(HIDE_REJECTED_ATTRIBUTE, "false")
        markups.CreateDefaultDisplayNodes()
        display = markups.GetDisplayNode()
        display.SetSelectedColor(*style.high_probability_color)
        display.SetColor(*style.rejected_color)
        display.SetPointLabelsVisibility(True)
        markups.SetNodeReferenceID(VOLUME_REFERENCE, volume_node.GetID())
        table = scene.AddNewNodeByClass("vtkMRMLTableNode", scene.GenerateUniqueName(f"{name} table"))
        table.SetAttribute(ROLE_ATTRIBUTE, "nodule-table")
        NoduleTable(table).add_missing_columns()
        table.SetUseColumnTitleAsColumnHeader(True)
        table.SetLocked(True)
        markups.SetNodeReferenceID(TABLE_REFERENCE, table.GetID())
        review = cls(markups, style)
        with review._quiet():
            for nodule in nodules:
                index = markups.AddControlPoint(vtk.vtkVector3d(*nodule.center_ras_mm), nodule.label)
                review._table.append(nodule)
                review._append_sphere(index)
                review._show_status(index)
        place_in_folder(volume_node, (markups, table, *review.sphere_nodes), f"{markups.GetName()} (SCPM-Net)",
                        ROLE_ATTRIBUTE)
        transform_id = volume_node.GetTransformNodeID()
        for node in (markups, *review.sphere_nodes):
            node.SetAndObserveTransformNodeID(transform_id)
        review._changed()
        return review

    @classmethod
    def find(cls, scene, volume_node=None, style: ReviewStyle | None = None,
             on_change: Callable[[], None] | None = None) -> NoduleReview | None:
        """Re-attach to the newest review in ``scene`` (of ``volume_node``, if given), or None."""
        found = review_point_lists(scene, volume_node)
        return cls(found[-1], style, on_change) if found else None

    # ------------------------------------------------------------------ records
    @property
    def scene(self):
        return self.markups_node.GetScene()

    @property
    def alive(self) -> bool:
        """The review's point list is still in a scene (not removed, the scene not closed)."""
        scene = self.scene
        return scene is not None and bool(scene.IsNodePresent(self.markups_node)) and self.table_node is not None

    @property
    def table_node(self):
        return self.markups_node.GetNodeReference(TABLE_REFERENCE)

    @property
    def _table(self) -> NoduleTable:
        return NoduleTable(self.table_node)

    @property
    def volume_node(self):
        return self.markups_node.GetNodeReference(VOLUME_REFERENCE)

    @property
    def sphere_nodes(self) -> list:
        return [self.markups_node.GetNthNodeReference(SPHERE_REFERENCE, i)
                for i in range(self.markups_node.GetNumberOfNodeReferences(SPHERE_REFERENCE))]

    def __len__(self) -> int:
        """The number of nodules: rows of the table (a point still being placed is not one yet)."""
        return self.table_node.GetNumberOfRows()

    def center_ras_mm(self, index: int) -> tuple[float, float, float]:
        position = [0.0, 0.0, 0.0]
        self.markups_node.GetNthControlPointPosition(index, position)
        return tuple(position)

    def nodule(self, index: int) -> Nodule:
        self._check_index(index)
        return self._table.row(index, self.center_ras_mm(index))

    def nodules(self) -> list[Nodule]:
        return [self.nodule(i) for i in range(len(self))]

    def reviewed_count(self) -> tuple[int, int]:
        """``(n, m)``: ``n`` of the ``m`` nodules are no longer pending (accepted, rejected or added)."""
        statuses = [n.status for n in self.nodules()]
        return sum(status != ReviewStatus.PENDING for status in statuses), len(statuses)

    def nodule_at(self, world_ras_mm: Sequence[float]) -> int:
        """The shown nodule whose sphere holds the world point (the nearest centre), or -1."""
        best, best_distance = -1, math.inf
        for index, nodule in enumerate(self.nodules()):
            if self.hide_rejected and nodule.status == ReviewStatus.REJECTED:
                continue
            distance = float(np.linalg.norm(np.subtract(self._world_center(index), world_ras_mm)))
            if distance <= nodule.diameter_mm / 2.0 and distance < best_distance:
                best, best_distance = index, distance
        return best

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self):
            raise UserInputError(f"There is no nodule {index + 1}; the list has {len(self)}.")

    # ------------------------------------------------------------------ edits
    def set_status(self, index: int, status: ReviewStatus | str) -> None:
        """Mark nodule ``index`` pending, accepted, rejected or added (a member or its text)."""
        self._check_index(index)
        status = ReviewStatus.parse(status)
        self._record()
        self._table.set_values(index, {STATUS_COLUMN: status.value})
        self._show_status(index)
        self._changed()

    def set_note(self, index: int, note: str) -> None:
        """Record the reader's note on nodule ``index`` (one line; exported with the nodule)."""
        self._check_index(index)
        note = " ".join(str(note).split())
        if note == self._table.value(index, NOTE_COLUMN):
            return
        self._record(("note", index))
        self._table.set_values(index, {NOTE_COLUMN: note})
        self._describe(index)
        self._changed()

    def accept(self, index: int) -> None:
        self.set_status(index, ReviewStatus.ACCEPTED)

    def reject(self, index: int) -> None:
        self.set_status(index, ReviewStatus.REJECTED)

    def set_diameter(self, index: int, diameter_mm: float) -> None:
        """Resize nodule ``index``: its sphere, its row and its description (a detection is marked
        resized)."""
        self._check_index(index)
        if not (math.isfinite(diameter_mm) and diameter_mm > 0):
            raise UserInputError(f"Diameter {diameter_mm} mm is not a positive number of millimetres.")
        if float(diameter_mm) == self._table.value(index, DIAMETER_COLUMN):
            return
        self._record(("diameter", index))
        self._table.set_values(index, {DIAMETER_COLUMN: float(diameter_mm), **self._correction(index, RESIZED_COLUMN)})
        self._update_geometry(index)
        self._changed()

    def move(self, index: int, center_ras_mm: Sequence[float]) -> None:
        """Move nodule ``index``; the point-list observer moves the sphere and updates the row (a
        detection is marked moved)."""
        self._check_index(index)
        self.markups_node.SetNthControlPointPosition(index, *map(float, center_ras_mm))

    def add_nodule(self, center_ras_mm: Sequence[float], diameter_mm: float) -> int:
        """Add a nodule the detector missed; returns its index. Its status is ``added``."""
        if not (math.isfinite(diameter_mm) and diameter_mm > 0):
            raise UserInputError(f"Diameter {diameter_mm} mm is not a positive number of millimetres.")
        with self._history.one_edit(self._table.snapshot):
            index = self.markups_node.AddControlPoint(vtk.vtkVector3d(*map(float, center_ras_mm)), "")
            self.set_diameter(index, diameter_mm)
        return index

    def delete(self, index: int) -> None:
        """Delete nodule ``index`` (its point; the point-list observer removes its sphere and row)."""
        self._check_index(index)
        self.markups_node.RemoveNthControlPoint(index)

    @property
    def can_undo(self) -> bool:
        return bool(self._history)

    def undo(self) -> bool:
        """Take back the last edit; False when there is none."""
        nodules = self._history.pop()
        if nodules is None:
            return False
        self._rebuild(nodules)
        self._changed()
        return True

    def set_opacity(self, opacity: float) -> None:
        self.markups_node.SetAttribute(OPACITY_ATTRIBUTE, repr(float(opacity)))
        for sphere in self.sphere_nodes:
            sphere.GetDisplayNode().SetOpacity(float(opacity))
        self._displayed()

    @property
    def opacity(self) -> float:
        return float(self.markups_node.GetAttribute(OPACITY_ATTRIBUTE) or self.style.sphere_opacity)

    def set_hide_rejected(self, hide: bool) -> None:
        self.markups_node.SetAttribute(HIDE_REJECTED_ATTRIBUTE, "true" if hide else "false")
        for index in range(len(self)):
            self._show_status(index)
        self._displayed()

    @property
    def hide_rejected(self) -> bool:
        return self.markups_node.GetAttribute(HIDE_REJECTED_ATTRIBUTE) == "true"

    def neighbour(self, index: int, step: int) -> int:
        """The nodule ``step`` places after ``index`` (cyclic), skipping hidden rejected ones.

        ``index = -1`` with ``step = 1`` gives the first shown nodule; -1 if none is shown.
        """
        count = len(self)
        for offset in range(1, count + 1):
            candidate = (index + step * offset) % count
            if not (self.hide_rejected and self.nodule(candidate).status == ReviewStatus.REJECTED):
                return candidate
        return -1

    def jump_to(self, index: int) -> None:
        """Center every slice view on nodule ``index``, place the crosshair there and point every
        3D camera at it."""
        from slicer import vtkMRMLSliceNode

        self._check_index(index)
        r, a, s = self._world_center(index)
        vtkMRMLSliceNode.JumpAllSlices(self.scene, r, a, s, vtkMRMLSliceNode.CenteredJumpSlice)
        for crosshair in nodes_by_class(self.scene, "vtkMRMLCrosshairNode"):
            crosshair.SetCrosshairRAS(r, a, s)
        for camera in nodes_by_class(self.scene, "vtkMRMLCameraNode"):
            shift = np.array([r, a, s]) - np.array(camera.GetFocalPoint())
            camera.SetPosition(*(np.array(camera.GetPosition()) + shift))
            camera.SetFocalPoint(r, a, s)

    def _world_center(self, index: int) -> tuple[float, float, float]:
        world = [0.0, 0.0, 0.0]
        self.markups_node.GetNthControlPointPositionWorld(index, world)
        return tuple(world)

    def remove(self) -> None:
        """Delete the review's nodes from the scene, and its subject hierarchy folder."""
        self.detach()
        remove_with_folder((self.markups_node, self.table_node, *self.sphere_nodes), ROLE_ATTRIBUTE)

    def detach(self) -> None:
        """Stop observing the point list (the nodes stay in the scene)."""
        for tag in self._observer_tags:
            self.markups_node.RemoveObserver(tag)
        self._observer_tags = []

    # ------------------------------------------------------------------ consistency
    def _append_sphere(self, index: int) -> None:
        scene = self.scene
        label = self.markups_node.GetNthControlPointLabel(index)
        sphere = scene.AddNewNodeByClass("vtkMRMLModelNode", f"{self.markups_node.GetName()} {label}")
        sphere.SetAttribute(ROLE_ATTRIBUTE, "nodule-sphere")
        sphere.CreateDefaultDisplayNodes()
        display = sphere.GetDisplayNode()
        display.SetOpacity(self.opacity)
        display.SetVisibility2D(True)
        sphere.SetAndObserveTransformNodeID(self.markups_node.GetTransformNodeID())
        self.markups_node.AddNodeReferenceID(SPHERE_REFERENCE, sphere.GetID())
        self._update_geometry(index)
        file_beside(self.markups_node, sphere)

    def _update_geometry(self, index: int) -> None:
        nodule = self.nodule(index)
        self.sphere_nodes[index].SetAndObservePolyData(
            sphere_polydata(nodule.center_ras_mm, nodule.diameter_mm, self.style.sphere_resolution))
        self._table.set_values(index, dict(zip(RAS_COLUMNS, map(float, nodule.center_ras_mm))))
        self._describe(index)

    def _describe(self, index: int) -> None:
        self.markups_node.SetNthControlPointDescription(index, describe(self.nodule(index)))

    def _correction(self, index: int, column: str) -> dict[str, str]:
        """The cell that marks a correction (``column``: moved or resized) of nodule ``index``;
        none for a nodule the reader added."""
        return {} if self._table.value(index, STATUS_COLUMN) == ReviewStatus.ADDED.value else {column: FLAG}

    def _show_status(self, index: int) -> None:
        nodule = self.nodule(index)
        display = self.sphere_nodes[index].GetDisplayNode()
        display.SetColor(*nodule_color(nodule.probability, nodule.status, self.style))
        visible = not (self.hide_rejected and nodule.status == ReviewStatus.REJECTED)
        display.SetVisibility(visible)
        self.markups_node.SetNthControlPointVisibility(index, visible)
        self.markups_node.SetNthControlPointSelected(index, nodule.status != ReviewStatus.REJECTED)
        self._describe(index)

    def _changed(self) -> None:
        """Call the :attr:`on_persist` callbacks unless a point is being dragged (then at the drop),
        and tell the listener."""
        if not self._dragging:
            for callback in list(self.on_persist):
                callback(self)
        self._displayed()

    def _displayed(self) -> None:
        """Tell the listener (only: a display choice is not an edit to persist)."""
        if self.on_change is not None:
            self.on_change()

    # ------------------------------------------------------------------ undo
    def _record(self, key: tuple[str, int] | None = None) -> None:
        """Push the state before an edit; an edit with the same ``key`` as the last one joins it."""
        self._history.record(self._table.snapshot, key)

    def _rebuild(self, nodules: Sequence[Nodule]) -> None:
        """Make the point list, spheres and table hold exactly ``nodules``."""
        with self._quiet():
            self.markups_node.RemoveAllControlPoints()
            for sphere in self.sphere_nodes:
                self.scene.RemoveNode(sphere)
            self.markups_node.RemoveNodeReferenceIDs(SPHERE_REFERENCE)
            self._table.clear()
            for nodule in nodules:
                index = self.markups_node.AddControlPoint(vtk.vtkVector3d(*nodule.center_ras_mm), nodule.label)
                self._table.append(nodule)
                self._append_sphere(index)
                self._show_status(index)

    # ------------------------------------------------------------------ observers
    def _observe(self) -> None:
        from slicer import vtkMRMLMarkupsNode

        for event, handler in ((vtkMRMLMarkupsNode.PointModifiedEvent, self._on_point_modified),
                               (vtkMRMLMarkupsNode.PointPositionDefinedEvent, self._on_point_defined),
                               (vtkMRMLMarkupsNode.PointRemovedEvent, self._on_point_removed),
                               (vtkMRMLMarkupsNode.PointStartInteractionEvent, self._on_drag_start),
                               (vtkMRMLMarkupsNode.PointEndInteractionEvent, self._on_drag_end)):
            self._observer_tags.append(self.markups_node.AddObserver(event, handler))

    @contextlib.contextmanager
    def _quiet(self) -> Iterator[None]:
        """A context in which the point-list observers are off (while the review builds itself)."""
        self.detach()
        try:
            yield
        finally:
            self._observe()

    @vtk.calldata_type(vtk.VTK_INT)
    def _on_point_modified(self, caller, event, index) -> None:
        rows = self.table_node.GetNumberOfRows()
        if not 0 <= index < min(rows, len(self.sphere_nodes)):
            return
        if np.allclose(self.center_ras_mm(index), self._table.recorded_center(index), rtol=0, atol=1e-9):
            return
        if not self._dragging:
            self._record()
        elif self._drag_snapshot is not None:  # the first move of a drag: the edit starts here
            self._history.push(self._drag_snapshot)
            self._drag_snapshot = None
        self._table.set_values(index, self._correction(index, MOVED_COLUMN))
        self._update_geometry(index)
        self._changed()

    def _on_drag_start(self, caller, event) -> None:
        self._dragging = True
        self._drag_snapshot = self._table.snapshot()
        grabbed = caller.GetAttribute(MOVING_POINT_ATTRIBUTE)
        if self.on_select is not None and grabbed and grabbed.lstrip("-").isdigit() \
                and 0 <= int(grabbed) < len(self):
            self.on_select(int(grabbed))

    def _on_drag_end(self, caller, event) -> None:
        self._dragging = False
        moved = self._drag_snapshot is None
        self._drag_snapshot = None
        if moved:
            self._changed()

    @vtk.calldata_type(vtk.VTK_INT)
    def _on_point_defined(self, caller, event, index) -> None:
        if index != self.table_node.GetNumberOfRows() or index != len(self.sphere_nodes):
            return
        self._record()
        label = self._next_label()
        self.markups_node.SetNthControlPointLabel(index, label)
        self._table.append(Nodule(label, self.center_ras_mm(index), self.style.default_diameter_mm,
                                self.style.added_probability, ReviewStatus.ADDED))
        self._append_sphere(index)
        self._show_status(index)
        self._changed()

    def _next_label(self) -> str:
        """``N<k>``, one past the highest number in use (so a label is never given twice)."""
        numbers = [int(label[1:]) for label in self._table.labels() if label[:1] == "N" and label[1:].isdigit()]
        return f"N{max(numbers, default=0) + 1}"

    @vtk.calldata_type(vtk.VTK_INT)
    def _on_point_removed(self, caller, event, index=None) -> None:
        """One point removed (``index``), or, without an index (Slicer's "delete all control
        points"), any number: then the rows whose point is gone are found by label."""
        if index is None:
            self._resynchronise()
            return
        if not 0 <= index < self.table_node.GetNumberOfRows():
            return
        self._record()
        self._remove_row(index)
        self._changed()

    def _remove_row(self, index: int) -> None:
        self._table.remove(index)
        sphere = self.sphere_nodes[index]
        self.markups_node.RemoveNthNodeReferenceID(SPHERE_REFERENCE, index)
        self.scene.RemoveNode(sphere)

    def _resynchronise(self) -> None:
        """Drop the rows and spheres of points that are gone, matching rows to points in order by label."""
        labels = [self.markups_node.GetNthControlPointLabel(i)
                  for i in range(self.markups_node.GetNumberOfControlPoints())]
        keep, point = [], 0
        for row, label in enumerate(self._table.labels()):
            if point < len(labels) and label == labels[point]:
                keep.append(row)
                point += 1
        doomed = [row for row in range(self.table_node.GetNumberOfRows()) if row not in keep]
        if not doomed:
            return
        self._record()
        for row in reversed(doomed):
            self._remove_row(row)
        self._changed()


def remove_reviews(volume_node, keep: NoduleReview | None = None) -> int:
    """Remove every review of ``volume_node`` from its scene but ``keep``; returns how many.

    One review per volume: a new detection (or a restored review) replaces the old one, whose
    points would otherwise stay in the views, draggable but untracked, labelled N1, N2... twice.
    """
    doomed = [markups for markups in review_point_lists(volume_node.GetScene(), volume_node)
              if keep is None or markups is not keep.markups_node]
    for markups in doomed:
        NoduleReview(markups).remove()
    return len(doomed)

