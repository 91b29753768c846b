"""The review's table node, read and written as :class:`~.nodules.Nodule` rows.

Row ``i`` is nodule ``i``: ID, R, A, S, diameter (mm), probability, status, moved, resized, note
(``Moved`` and ``Resized`` hold :data:`FLAG` where the reader corrected the detection, else
nothing). Columns are found by name, so a table saved by an older version, which lacks a later
column (the note, the corrections), still reads once :meth:`NoduleTable.add_missing_columns` gave
it that column, blank: no note, no correction. The R, A, S columns record
where the nodule was at its last recorded change: they lag the point list while a point is being
dragged (:meth:`NoduleTable.snapshot` is the state before the drag).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import vtk

from .nodules import Nodule, ReviewStatus

__all__ = [
    "DIAMETER_COLUMN", "FLAG", "ID_COLUMN", "MOVED_COLUMN", "NOTE_COLUMN", "PROBABILITY_COLUMN", "RAS_COLUMNS",
    "RESIZED_COLUMN", "STATUS_COLUMN", "TABLE_COLUMNS", "TEXT_COLUMNS", "NoduleTable", "column_array",
]

ID_COLUMN, DIAMETER_COLUMN, PROBABILITY_COLUMN, STATUS_COLUMN, NOTE_COLUMN = (
    "ID", "Diameter (mm)", "Probability", "Status", "Note")
MOVED_COLUMN, RESIZED_COLUMN = "Moved", "Resized"
RAS_COLUMNS = ("R", "A", "S")
TABLE_COLUMNS = (ID_COLUMN, *RAS_COLUMNS, DIAMETER_COLUMN, PROBABILITY_COLUMN, STATUS_COLUMN, MOVED_COLUMN,
                 RESIZED_COLUMN, NOTE_COLUMN)
TEXT_COLUMNS = (ID_COLUMN, STATUS_COLUMN, MOVED_COLUMN, RESIZED_COLUMN, NOTE_COLUMN)
"""Columns of text (the others hold numbers). The corrections are text, not a ``vtkBitArray``:
Slicer's table reader cannot read back the bit columns its writer writes."""
FLAG = "yes"
"""A correction's cell: this text where the reader made it, blank where not."""


def column_array(name: str, rows: int):
    """An empty (``rows`` blank values) table column: text for :data:`TEXT_COLUMNS`, else numbers."""
    array = vtk.vtkStringArray() if name in TEXT_COLUMNS else vtk.vtkDoubleArray()
    array.SetName(name)
    array.SetNumberOfValues(rows)
    if rows and name not in TEXT_COLUMNS:
        array.Fill(0.0)
    return array


class NoduleTable:
    """A ``vtkMRMLTableNode`` whose rows are nodules (a view on the node; it holds no state)."""

    def __init__(self, table_node):
        self.node = table_node

    def __len__(self) -> int:
        return self.node.GetNumberOfRows()

    def add_missing_columns(self) -> None:
        """Add the columns of :data:`TABLE_COLUMNS` the table lacks, blank (all of them to a new table)."""
        table = self.node.GetTable()
        for column in TABLE_COLUMNS:
            if table.GetColumnByName(column) is None:
                table.AddColumn(column_array(column, table.GetNumberOfRows()))

    def value(self, index: int, column: str):
        return self.node.GetTable().GetColumnByName(column).GetValue(index)

    def set_values(self, index: int, values: Mapping[str, object]) -> None:
        """Set cells of row ``index`` (column name -> value), then tell the table's observers once."""
        for column, value in values.items():
            self.node.GetTable().GetColumnByName(column).SetValue(index, value)
        self.modified()

    def row(self, index: int, center_ras_mm: Sequence[float]) -> Nodule:
        """Row ``index`` as a nodule at ``center_ras_mm`` (the point list's position, the record)."""
        return Nodule(
            self.value(index, ID_COLUMN), tuple(center_ras_mm), self.value(index, DIAMETER_COLUMN),
            self.value(index, PROBABILITY_COLUMN), ReviewStatus.parse(self.value(index, STATUS_COLUMN)),
            self.value(index, NOTE_COLUMN), self.value(index, MOVED_COLUMN) == FLAG,
            self.value(index, RESIZED_COLUMN) == FLAG,
        )

    def recorded_center(self, index: int) -> tuple[float, float, float]:
        """The R, A, S cells of row ``index``."""
        return tuple(self.value(index, name) for name in RAS_COLUMNS)

    def snapshot(self) -> list[Nodule]:
        """Every row at its recorded centre: the review as the table records it."""
        return [self.row(i, self.recorded_center(i)) for i in range(len(self))]

    def labels(self) -> list[str]:
        return [self.value(i, ID_COLUMN) for i in range(len(self))]

    def append(self, nodule: Nodule) -> None:
        row = self.node.GetTable().InsertNextBlankRow()
        self.set_values(row, {
            ID_COLUMN: nodule.label, **dict(zip(RAS_COLUMNS, map(float, nodule.center_ras_mm))),
            DIAMETER_COLUMN: nodule.diameter_mm, PROBABILITY_COLUMN: nodule.probability,
            STATUS_COLUMN: ReviewStatus.parse(nodule.status).value, MOVED_COLUMN: FLAG if nodule.moved else "",
            RESIZED_COLUMN: FLAG if nodule.resized else "", NOTE_COLUMN: nodule.note})

    def remove(self, index: int) -> None:
        self.node.RemoveRow(index)

    def clear(self) -> None:
        self.node.GetTable().SetNumberOfRows(0)

    def modified(self) -> None:
        """Tell the table's observers (its view) that cells changed."""
        self.node.GetTable().Modified()
        self.node.Modified()
