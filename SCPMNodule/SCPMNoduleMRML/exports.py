"""Export a review: LUNA16-style CSV (world LPS mm), Slicer markups JSON, the table as CSV, and
for a volume loaded from DICOM a TID 1500 Structured Report and a Segmentation (PACS)."""

from __future__ import annotations

import csv
import os
from collections.abc import Sequence
from pathlib import Path

from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.io import atomic_write, safe_file_name

from .nodules import ReviewStatus
from .review import NoduleReview
from .volumes import series_uid

__all__ = ["REVIEW_CSV_COLUMNS", "export_review", "write_markups_json", "write_review_csv", "write_table_csv"]

REVIEW_CSV_COLUMNS = ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm", "probability", "status", "moved",
                      "resized", "note")


def write_review_csv(path: str | os.PathLike, review: NoduleReview, include_rejected: bool = False) -> int:
    """Write ``seriesuid,coordX,coordY,coordZ,diameter_mm,probability,status,moved,resized,note``
    (world LPS mm).

    LUNA16's annotation columns first, so LUNA16 tools read the file as annotations; then the
    review status, the reader's corrections (``moved``, ``resized``: 1 where the reader moved or
    resized the detection, else 0) and note; rejected nodules are left out unless
    ``include_rejected``. Returns the number of rows written.
    """
    uid = series_uid(review.volume_node)
    nodules = [n for n in review.nodules() if include_rejected or n.status != ReviewStatus.REJECTED]
    with atomic_write(path, newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(REVIEW_CSV_COLUMNS)
        for nodule in nodules:
            writer.writerow([uid, *map(repr, nodule.center_xyz_mm), repr(nodule.diameter_mm),
                             repr(nodule.probability), nodule.status.value, int(nodule.moved), int(nodule.resized),
                             nodule.note])
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
    """Write the review table (ID, R, A, S, Diameter (mm), Probability, Status, Moved, Resized, Note)
    as CSV (``Moved``, ``Resized``: ``yes`` or blank)."""
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


def dicom_instance_uids(volume_node) -> list[str]:
    """The SOPInstanceUIDs of the DICOM files a volume was loaded from (Slicer's DICOM loader
    records them, space-separated, in the volume's ``DICOM.instanceUIDs`` attribute); ``[]`` for a
    volume not loaded from DICOM. The Widget finds their files with
    ``slicer.dicomDatabase.fileForInstance(uid)``."""
    return (volume_node.GetAttribute("DICOM.instanceUIDs") or "").split()


def write_review_dicom(out_dir: str | os.PathLike, review: NoduleReview, source_files: Sequence[str | os.PathLike],
                       algorithm_name: str, algorithm_version: str,
                       include_rejected_in_seg: bool = False) -> dict[str, str]:
    """Write the review as ``<series uid>.sr.dcm`` (TID 1500 SR: every nodule with its centre,
    diameter, probability, review status and corrections, rejected ones included) and ``<series uid>.seg.dcm``
    (one segment per nodule, rejected ones left out unless ``include_rejected_in_seg``), both
    referencing the DICOM series of ``source_files`` (the volume's instances, any order).

    Returns ``{"sr": path, "seg": path}`` (no ``seg`` when no nodule is left for it).

    Raises:
        UserInputError: no source files (the volume was not loaded from DICOM), files that are not
            one evenly spaced series, or a series without UIDs to reference.
    """
    # imported here: highdicom is needed only for this export, and Slicer does not ship it
    from SCPMNoduleLib.dicom_export import (
        Algorithm,
        ReportedNodule,
        check_referable,
        read_sources,
        write_measurement_report,
        write_segmentation,
    )
    from SCPMNoduleLib.dicom_series import series_from_files

    name = review.volume_node.GetName()
    if not source_files:
        raise UserInputError(f"Volume '{name}' was not loaded from DICOM, so there is no series for a DICOM "
                             "report to reference; export CSV or markups instead.")
    series = check_referable(series_from_files(source_files), f"Volume '{name}'")
    sources = read_sources(series.files)
    algorithm = Algorithm(algorithm_name, algorithm_version)
    nodules = [ReportedNodule(n.label, tuple(float(v) for v in n.center_xyz_mm), float(n.diameter_mm),
                              float(n.probability), n.status.value, n.corrections) for n in review.nodules()]
    out_dir = Path(out_dir)
    stem = safe_file_name(series.name)
    segmented = [n for n in nodules if include_rejected_in_seg or n.status != ReviewStatus.REJECTED.value]
    outputs = {"sr": str(out_dir / f"{stem}.sr.dcm")}
    if segmented:
        outputs["seg"] = str(out_dir / f"{stem}.seg.dcm")
    try:
        write_measurement_report(outputs["sr"], sources, nodules, algorithm)
        if segmented:
            write_segmentation(outputs["seg"], sources, segmented, algorithm)
    except BaseException:  # both files or neither
        for path in outputs.values():
            Path(path).unlink(missing_ok=True)
        raise
    return outputs
