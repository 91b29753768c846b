"""Export a review: LUNA16-style CSV (world LPS mm), Slicer markups JSON, and the table as CSV."""

from __future__ import annotations

import csv
import os
from pathlib import Path

from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.io import atomic_write, safe_file_name

from .nodules import ReviewStatus
from .review import NoduleReview
from .volumes import series_uid

__all__ = ["REVIEW_CSV_COLUMNS", "export_review", "write_markups_json", "write_review_csv", "write_table_csv"]

REVIEW_CSV_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "probability", "status", "note")


def write_review_csv(path: str | os.PathLike, review: NoduleReview, include_rejected: bool = False) -> int:
    """Write ``seriesuid,coordX,coordY,coordZ,diameter_mm,probability,status,note`` (world LPS mm).

    LUNA16's annotation columns first, so LUNA16 tools read the file as annotations; then the
    review status and the reader's note; rejected nodules are left out unless
    ``include_rejected``. Returns the number of rows written.
    """
    uid = series_uid(review.volume_node)
    nodules = [n for n in review.nodules() if include_rejected or n.status != ReviewStatus.REJECTED]
    with atomic_write(path, newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(REVIEW_CSV_COLUMNS)
        for nodule in nodules:
            writer.writerow([uid, *map(repr, nodule.center_xyz_mm), repr(nodule.diameter_mm),
                             repr(nodule.probability), nodule.status.value, nodule.note])
    return len(nodules)


def _write_with_storage_node(storage_node, node, path: Path, what: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    storage_node.SetFileName(str(path))
    if not storage_node.WriteData(node):
        raise UserInputError(f"{path}: could not write the {what}.")


def write_markups_json(path: str | os.PathLike, review: NoduleReview) -> None:
    """Write the point list as a Slicer ``.mrk.json`` file, control points in LPS (Slicer's default)."""
    from slicer import vtkMRMLMarkupsJsonStorageNode, vtkMRMLStorageNode

    storage = vtkMRMLMarkupsJsonStorageNode()
    storage.SetCoordinateSystem(vtkMRMLStorageNode.CoordinateSystemLPS)
    _write_with_storage_node(storage, review.markups_node, Path(path), "nodule point list")


def write_table_csv(path: str | os.PathLike, review: NoduleReview) -> None:
    """Write the review table (ID, R, A, S, Diameter (mm), Probability, Status, Note) as CSV."""
    from slicer import vtkMRMLTableStorageNode

    _write_with_storage_node(vtkMRMLTableStorageNode(), review.table_node, Path(path), "nodule table")


def export_review(review: NoduleReview | None, directory: str | os.PathLike, include_rejected: bool) -> list[str]:
    """Write ``<seriesuid>_nodules.csv``, ``_nodules.mrk.json`` and ``_table.csv`` into ``directory``."""
    if review is None:
        raise UserInputError("There are no nodules to export; detect them first.")
    if str(directory) in ("", ".") or not Path(directory).is_dir():
        raise UserInputError(f"Export folder '{directory}' does not exist; choose one under Export.")
    stem = Path(directory) / safe_file_name(series_uid(review.volume_node), fallback="volume")
    paths = [f"{stem}_nodules.csv", f"{stem}_nodules.mrk.json", f"{stem}_table.csv"]
    write_review_csv(paths[0], review, include_rejected)
    write_markups_json(paths[1], review)
    write_table_csv(paths[2], review)
    return paths
