"""The nodules of one scan in the MRML scene, and the radiologist's review of them.

A review is three kinds of node kept consistent, all under the volume's study in the subject
hierarchy:

* one markups point list ``Nodules``: control point ``i`` is nodule ``i`` at its RAS position,
  labelled ``N1, N2, ...``, its description giving probability and diameter; rejected points
  are unselected, so Slicer draws them in the list's (grey) color instead of the selected red;
* one sphere model per nodule (node references ``SCPMNodule.Sphere`` of the point list, in point
  order), colored by probability while pending, by status once reviewed;
* a table node, row ``i`` = nodule ``i``: ID, R, A, S, diameter (mm), probability, status.

The table is the record of the review (diameter, probability, status); the point list is the
record of the positions. Both are saved with the scene, so a saved and reloaded scene keeps the
review: :meth:`NoduleReview.find` re-attaches to it. Moving a control point (in a view or by
code) moves its sphere and updates its row through an observer on the point list; placing a new
point adds an ``added`` nodule; removing one removes its sphere and row. After every change
the review calls its :attr:`NoduleReview.on_persist` callbacks (while a point is dragged in a
view, once, when it is dropped); the crash-recovery file (:mod:`.sidecar`) subscribes there.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np
import vtk

from SCPMNoduleLib.detection import Detection
from SCPMNoduleLib.errors import UserInputError

from .volumes import lps_to_ras, ras_to_lps

ROLE_ATTRIBUTE = "SCPMNodule.Role"
HIDE_REJECTED_ATTRIBUTE = "SCPMNodule.HideRejected"
OPACITY_ATTRIBUTE = "SCPMNodule.Opacity"
SPHERE_REFERENCE = "SCPMNodule.Sphere"
TABLE_REFERENCE = "SCPMNodule.Table"
VOLUME_REFERENCE = "SCPMNodule.Volume"



class ReviewStatus(str, Enum):
    """Where a nodule stands in the review; the value is the text the table, sidecar and CSV hold.

    A ``str`` mixin rather than :class:`enum.StrEnum`, which needs Python 3.11: Slicer 5.8 ships
    Python 3.9 (newer Slicer 3.12) and the package supports 3.10. A member equals, hashes and
    serialises (``json``, ``csv``, VTK string arrays) as its value, and ``__str__``/``format``
    give the value on every Python version, so files written before the enum keep the same text.
    """

    PENDING = "pending"
    ACCEPTED = "accepted"
    REJECTED = "rejected"
    ADDED = "added"

    def __str__(self) -> str:
        return self.value

    @classmethod
    def parse(cls, text: str) -> ReviewStatus:
        """The status named ``text``; :class:`UserInputError` if there is none."""
        try:
            return cls(text)
        except ValueError:
            raise UserInputError(f"Status '{text}' is not one of {', '.join(s.value for s in cls)}.") from None


ID_COLUMN, DIAMETER_COLUMN, PROBABILITY_COLUMN, STATUS_COLUMN = (
    "ID", "Diameter (mm)", "Probability", "Status")
RAS_COLUMNS = ("R", "A", "S")
TABLE_COLUMNS = (ID_COLUMN, *RAS_COLUMNS, DIAMETER_COLUMN, PROBABILITY_COLUMN, STATUS_COLUMN)


@dataclass(frozen=True)
class ReviewStyle:
    """How nodules look. Colors are RGB in [0, 1].

    A pending nodule's color runs from ``low_probability_color`` (p = 0) to
    ``high_probability_color`` (p = 1) linearly in p; reviewed nodules take their status color.
    """

    sphere_opacity: float = 0.5
    sphere_resolution: int = 24
    low_probability_color: tuple[float, float, float] = (1.0, 1.0, 0.0)
    high_probability_color: tuple[float, float, float] = (1.0, 0.0, 0.0)
    accepted_color: tuple[float, float, float] = (0.1, 0.8, 0.2)
    rejected_color: tuple[float, float, float] = (0.55, 0.55, 0.55)
    added_color: tuple[float, float, float] = (0.2, 0.5, 1.0)
    added_probability: float = 1.0
    """Probability recorded for a nodule the reader added: a reader's finding is taken as certain."""
    default_diameter_mm: float = 6.0
    """Diameter given to a point placed in a view before the reader sets its size."""


@dataclass(frozen=True)
class Nodule:
    """One row of a review, as plain values.

    Why a shape of its own rather than a :class:`~SCPMNoduleLib.detection.Detection`: the centre is
    in Slicer's RAS frame, as the markups and models in the scene hold it, and the row carries
    the reader's review status and label; it is read back from the point list, which is the
    record. :attr:`center_xyz_mm` gives the LPS position that files use.
    """

    label: str
    center_ras_mm: tuple[float, float, float]
    diameter_mm: float
    probability: float
    status: ReviewStatus

    @property
    def center_xyz_mm(self) -> tuple[float, float, float]:
        """World LPS position in mm (ITK / LUNA16)."""
        return tuple(float(v) for v in ras_to_lps(np.asarray(self.center_ras_mm)))


def probability_color(probability: float, style: ReviewStyle) -> tuple[float, float, float]:
    """``low + p · (high - low)``, p clipped to [0, 1]."""
    p = min(max(float(probability), 0.0), 1.0)
    low, high = np.asarray(style.low_probability_color), np.asarray(style.high_probability_color)
    return tuple(float(v) for v in low + p * (high - low))


def nodule_color(probability: float, status: ReviewStatus, style: ReviewStyle) -> tuple[float, float, float]:
    """The sphere color of a nodule: by probability while pending, by status afterwards."""
    return {ReviewStatus.ACCEPTED: style.accepted_color, ReviewStatus.REJECTED: style.rejected_color,
            ReviewStatus.ADDED: style.added_color}.get(status) or probability_color(probability, style)


def describe(probability: float, diameter_mm: float, status: ReviewStatus) -> str:
    """The control point's description, e.g. ``p=0.93, d=6.2 mm, pending``."""
    return f"p={probability:.2f}, d={diameter_mm:.1f} mm, {status}"


def _sphere_polydata(center_ras_mm: Sequence[float], diameter_mm: float, resolution: int):
    source = vtk.vtkSphereSource()
    source.SetCenter(*map(float, center_ras_mm))
    source.SetRadius(float(diameter_mm) / 2.0)
    source.SetThetaResolution(resolution)
    source.SetPhiResolution(resolution)
    source.Update()
    return source.GetOutput()


class NoduleReview:
    """The nodules of one volume in a scene: create, edit, and keep the three records in step.

    Build one with :meth:`create` (from detections) or :meth:`find` (re-attach after a scene was
    loaded); edit it with :meth:`set_status`, :meth:`set_diameter`, :meth:`move` and
    :meth:`add_nodule`, or by moving points in the views; call :meth:`detach` when done.
    ``on_change`` (if given) is called with no arguments after every change, also while a point
    is dragged (for the GUI). :attr:`on_persist` is the list of callbacks called with the review
    after every change it has made to the scene, a drag counting once, at the drop: whoever
    keeps a copy of the review (the crash-recovery file) appends itself there.
    """

    def __init__(self, markups_node, style: ReviewStyle | None = None,
                 on_change: Callable[[], None] | None = None):
        if markups_node is None or markups_node.GetAttribute(ROLE_ATTRIBUTE) != "nodules":
            raise UserInputError("The node given is not a nodule list made by SCPMNodule.")
        self.markups_node = markups_node
        self.style = style or ReviewStyle()
        self.on_change = on_change
        self.on_persist: list[Callable[[NoduleReview], None]] = []
        self._observer_tags: list[int] = []
        self._dragging = False
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
        for column in TABLE_COLUMNS:
            array = vtk.vtkStringArray() if column in (ID_COLUMN, STATUS_COLUMN) else vtk.vtkDoubleArray()
            array.SetName(column)
            table.AddColumn(array)
        table.SetUseColumnTitleAsColumnHeader(True)
        table.SetLocked(True)
        markups.SetNodeReferenceID(TABLE_REFERENCE, table.GetID())
        review = cls(markups, style)
        with review._quiet():
            for nodule in nodules:
                index = markups.AddControlPoint(vtk.vtkVector3d(*nodule.center_ras_mm), nodule.label)
                review._append_row(nodule)
                review._append_sphere(index)
                review._show_status(index)
        review._place_in_hierarchy(volume_node)
        transform_id = volume_node.GetTransformNodeID()
        for node in (markups, *review.sphere_nodes):
            node.SetAndObserveTransformNodeID(transform_id)
        review._changed()
        return review

    @classmethod
    def find(cls, scene, volume_node=None, style: ReviewStyle | None = None,
             on_change: Callable[[], None] | None = None) -> NoduleReview | None:
        """Re-attach to the newest review in ``scene`` (of ``volume_node``, if given), or None."""
        found = None
        for markups in _nodes_by_class(scene, "vtkMRMLMarkupsFiducialNode"):
            if markups.GetAttribute(ROLE_ATTRIBUTE) != "nodules":
                continue
            if volume_node is not None and markups.GetNodeReferenceID(VOLUME_REFERENCE) != volume_node.GetID():
                continue
            found = markups
        return None if found is None else cls(found, style, on_change)

    def _place_in_hierarchy(self, volume_node) -> None:
        """Put the review in a folder under the volume's parent (its study, when loaded from DICOM).

        In Slicer every node gets a subject hierarchy item when it is added; a scene without
        Slicer's GUI does not do that, so missing items are made here.
        """
        from slicer import vtkMRMLSubjectHierarchyNode

        hierarchy = vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(volume_node.GetScene())
        volume_item = hierarchy.GetItemByDataNode(volume_node)
        parent = hierarchy.GetItemParent(volume_item) if volume_item else hierarchy.GetSceneItemID()
        folder = hierarchy.CreateFolderItem(parent, f"{self.markups_node.GetName()} (SCPM-Net)")
        for node in (self.markups_node, self.table_node, *self.sphere_nodes):
            item = hierarchy.GetItemByDataNode(node)
            if item:
                hierarchy.SetItemParent(item, folder)
            else:
                hierarchy.CreateItem(folder, node)

    # ------------------------------------------------------------------ records
    @property
    def scene(self):
        return self.markups_node.GetScene()

    @property
    def table_node(self):
        return self.markups_node.GetNodeReference(TABLE_REFERENCE)

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

    def _column(self, name: str):
        return self.table_node.GetTable().GetColumnByName(name)

    def center_ras_mm(self, index: int) -> tuple[float, float, float]:
        position = [0.0, 0.0, 0.0]
        self.markups_node.GetNthControlPointPosition(index, position)
        return tuple(position)

    def nodule(self, index: int) -> Nodule:
        self._check_index(index)
        return Nodule(
            self._column(ID_COLUMN).GetValue(index), self.center_ras_mm(index),
            self._column(DIAMETER_COLUMN).GetValue(index), self._column(PROBABILITY_COLUMN).GetValue(index),
            ReviewStatus.parse(self._column(STATUS_COLUMN).GetValue(index)),
        )

    def nodules(self) -> list[Nodule]:
        return [self.nodule(i) for i in range(len(self))]

    def _check_index(self, index: int) -> None:
        if not 0 <= index < len(self):
            raise UserInputError(f"There is no nodule {index + 1}; the list has {len(self)}.")

    # ------------------------------------------------------------------ edits
    def set_status(self, index: int, status: ReviewStatus | str) -> None:
        """Mark nodule ``index`` pending, accepted, rejected or added (a member or its text)."""
        self._check_index(index)
        status = ReviewStatus.parse(status)
        self._column(STATUS_COLUMN).SetValue(index, status.value)
        self._table_modified()
        self._show_status(index)
        self._changed()

    def accept(self, index: int) -> None:
        self.set_status(index, ReviewStatus.ACCEPTED)

    def reject(self, index: int) -> None:
        self.set_status(index, ReviewStatus.REJECTED)

    def set_diameter(self, index: int, diameter_mm: float) -> None:
        """Resize nodule ``index``: its sphere, its row and its description."""
        self._check_index(index)
        if not (math.isfinite(diameter_mm) and diameter_mm > 0):
            raise UserInputError(f"Diameter {diameter_mm} mm is not a positive number of millimetres.")
        self._column(DIAMETER_COLUMN).SetValue(index, float(diameter_mm))
        self._table_modified()
        self._update_geometry(index)
        self._changed()

    def move(self, index: int, center_ras_mm: Sequence[float]) -> None:
        """Move nodule ``index``; the point-list observer moves the sphere and updates the row."""
        self._check_index(index)
        self.markups_node.SetNthControlPointPosition(index, *map(float, center_ras_mm))

    def add_nodule(self, center_ras_mm: Sequence[float], diameter_mm: float) -> int:
        """Add a nodule the detector missed; returns its index. Its status is ``added``."""
        if not (math.isfinite(diameter_mm) and diameter_mm > 0):
            raise UserInputError(f"Diameter {diameter_mm} mm is not a positive number of millimetres.")
        index = self.markups_node.AddControlPoint(vtk.vtkVector3d(*map(float, center_ras_mm)), "")
        self.set_diameter(index, diameter_mm)
        return index

    def set_opacity(self, opacity: float) -> None:
        self.markups_node.SetAttribute(OPACITY_ATTRIBUTE, repr(float(opacity)))
        for sphere in self.sphere_nodes:
            sphere.GetDisplayNode().SetOpacity(float(opacity))
        self._changed()

    @property
    def opacity(self) -> float:
        return float(self.markups_node.GetAttribute(OPACITY_ATTRIBUTE) or self.style.sphere_opacity)

    def set_hide_rejected(self, hide: bool) -> None:
        self.markups_node.SetAttribute(HIDE_REJECTED_ATTRIBUTE, "true" if hide else "false")
        for index in range(len(self)):
            self._show_status(index)
        self._changed()

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
        """Center every slice view on nodule ``index`` and point every 3D camera at it."""
        from slicer import vtkMRMLSliceNode

        self._check_index(index)
        r, a, s = self._world_center(index)
        vtkMRMLSliceNode.JumpAllSlices(self.scene, r, a, s, vtkMRMLSliceNode.CenteredJumpSlice)
        for camera in _nodes_by_class(self.scene, "vtkMRMLCameraNode"):
            shift = np.array([r, a, s]) - np.array(camera.GetFocalPoint())
            camera.SetPosition(*(np.array(camera.GetPosition()) + shift))
            camera.SetFocalPoint(r, a, s)

    def _world_center(self, index: int) -> tuple[float, float, float]:
        world = [0.0, 0.0, 0.0]
        self.markups_node.GetNthControlPointPositionWorld(index, world)
        return tuple(world)

    def remove(self) -> None:
        """Delete the review's nodes from the scene."""
        self.detach()
        scene = self.scene
        for node in (*self.sphere_nodes, self.table_node, self.markups_node):
            scene.RemoveNode(node)

    def detach(self) -> None:
        """Stop observing the point list (the nodes stay in the scene)."""
        for tag in self._observer_tags:
            self.markups_node.RemoveObserver(tag)
        self._observer_tags = []

    # ------------------------------------------------------------------ consistency
    def _append_row(self, nodule: Nodule) -> None:
        table = self.table_node.GetTable()
        row = table.InsertNextBlankRow()
        self._column(ID_COLUMN).SetValue(row, nodule.label)
        for name, value in zip(RAS_COLUMNS, nodule.center_ras_mm):
            self._column(name).SetValue(row, float(value))
        self._column(DIAMETER_COLUMN).SetValue(row, nodule.diameter_mm)
        self._column(PROBABILITY_COLUMN).SetValue(row, nodule.probability)
        self._column(STATUS_COLUMN).SetValue(row, ReviewStatus.parse(nodule.status).value)
        self._table_modified()

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
        self._file_beside_markups(sphere)

    def _file_beside_markups(self, node) -> None:
        """Give ``node`` the point list's subject hierarchy parent (once the review has one)."""
        from slicer import vtkMRMLSubjectHierarchyNode

        hierarchy = vtkMRMLSubjectHierarchyNode.GetSubjectHierarchyNode(self.scene)
        markups_item = hierarchy.GetItemByDataNode(self.markups_node)
        if not markups_item:
            return
        parent = hierarchy.GetItemParent(markups_item)
        item = hierarchy.GetItemByDataNode(node)
        if item:
            hierarchy.SetItemParent(item, parent)
        else:
            hierarchy.CreateItem(parent, node)

    def _update_geometry(self, index: int) -> None:
        nodule = self.nodule(index)
        self.sphere_nodes[index].SetAndObservePolyData(
            _sphere_polydata(nodule.center_ras_mm, nodule.diameter_mm, self.style.sphere_resolution))
        for name, value in zip(RAS_COLUMNS, nodule.center_ras_mm):
            self._column(name).SetValue(index, float(value))
        self._table_modified()
        self._describe(index)

    def _describe(self, index: int) -> None:
        nodule = self.nodule(index)
        self.markups_node.SetNthControlPointDescription(
            index, describe(nodule.probability, nodule.diameter_mm, nodule.status))

    def _show_status(self, index: int) -> None:
        nodule = self.nodule(index)
        display = self.sphere_nodes[index].GetDisplayNode()
        display.SetColor(*nodule_color(nodule.probability, nodule.status, self.style))
        visible = not (self.hide_rejected and nodule.status == ReviewStatus.REJECTED)
        display.SetVisibility(visible)
        self.markups_node.SetNthControlPointVisibility(index, visible)
        self.markups_node.SetNthControlPointSelected(index, nodule.status != ReviewStatus.REJECTED)
        self._describe(index)

    def _table_modified(self) -> None:
        self.table_node.GetTable().Modified()
        self.table_node.Modified()

    def _changed(self) -> None:
        """Call the :attr:`on_persist` callbacks unless a point is being dragged (then at the drop),
        and tell the listener."""
        if not self._dragging:
            for callback in list(self.on_persist):
                callback(self)
        if self.on_change is not None:
            self.on_change()

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
        if np.allclose(self.center_ras_mm(index),
                       [self._column(name).GetValue(index) for name in RAS_COLUMNS], rtol=0, atol=1e-9):
            return
        self._update_geometry(index)
        self._changed()

    def _on_drag_start(self, caller, event) -> None:
        self._dragging = True

    def _on_drag_end(self, caller, event) -> None:
        self._dragging = False
        self._changed()

    @vtk.calldata_type(vtk.VTK_INT)
    def _on_point_defined(self, caller, event, index) -> None:
        if index != self.table_node.GetNumberOfRows() or index != len(self.sphere_nodes):
            return
        label = f"N{index + 1}"
        self.markups_node.SetNthControlPointLabel(index, label)
        self._append_row(Nodule(label, self.center_ras_mm(index), self.style.default_diameter_mm,
                                self.style.added_probability, ReviewStatus.ADDED))
        self._append_sphere(index)
        self._show_status(index)
        self._changed()

    @vtk.calldata_type(vtk.VTK_INT)
    def _on_point_removed(self, caller, event, index) -> None:
        if not 0 <= index < self.table_node.GetNumberOfRows():
            return
        self.table_node.RemoveRow(index)
        sphere = self.sphere_nodes[index]
        self.markups_node.RemoveNthNodeReferenceID(SPHERE_REFERENCE, index)
        self.scene.RemoveNode(sphere)
        self._changed()


def _nodes_by_class(scene, class_name: str) -> list:
    collection = scene.GetNodesByClass(class_name)
    return [collection.GetItemAsObject(i) for i in range(collection.GetNumberOfItems())]
