"""Detections out: LUNA16 candidates CSV, a JSON report, and Slicer markups (``.mrk.json``).

Every file is written atomically (temporary file + rename), so a reader never sees half a
file and a failure leaves nothing behind. Points are world LPS millimetres everywhere; the
markups file says so with ``"coordinateSystem": "LPS"`` (Slicer converts to RAS on load).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import SimpleITK as sitk

from .detection import Detection
from .documents import read_document
from .errors import UserInputError
from .io import Findings, atomic_write, write_candidates
from .triples import float_triple

__all__ = [
    "MARKUPS_SCHEMA_URL",
    "REPORT_FORMAT",
    "REPORT_VERSION",
    "describe_scan",
    "markup_description",
    "markup_label",
    "read_detections_json",
    "write_candidates_csv",
    "write_detections_json",
    "write_markups_json",
]

if TYPE_CHECKING:  # pydicom stays unimported until a DICOM series is read
    from .dicom_series import SeriesIdentity

REPORT_FORMAT = "scpm-nodule-detections"
REPORT_VERSION = 1
MARKUPS_SCHEMA_URL = ("https://raw.githubusercontent.com/slicer/slicer/master/Modules/Loadable/"
                      "Markups/Resources/Schema/markups-schema-v1.0.3.json#")


def describe_scan(image: sitk.Image, path: str | os.PathLike | None = None,
                  dicom: SeriesIdentity | None = None) -> dict:
    """The scan's identity and geometry for the JSON report (sizes x, y, z; mm; LPS); for a DICOM
    series also ``"dicom"``: its :class:`~SCPMNoduleLib.dicom_series.SeriesIdentity` (series, study,
    frame of reference and instance UIDs, patient, date, modality, maker, slice thickness, kernel)."""
    described: dict[str, object] = {
        "path": None if path is None else str(path),
        "size_xyz": list(image.GetSize()),
        "spacing_xyz_mm": list(image.GetSpacing()),
        "origin_xyz_mm": list(image.GetOrigin()),
        "direction": list(image.GetDirection()),
    }
    if dicom is not None:
        described["dicom"] = dicom.to_dict()
    return described


def _detection_record(detection: Detection) -> dict:
    return {"center_xyz_mm": [float(v) for v in detection.center_xyz_mm],
            "diameter_mm": float(detection.diameter_mm),
            "probability": float(detection.probability), "level": int(detection.level)}


def _write_json(path: str | os.PathLike, document: Mapping) -> None:
    with atomic_write(path, encoding="utf-8") as handle:
        json.dump(document, handle, indent=1)
        handle.write("\n")


def write_detections_json(
    path: str | os.PathLike,
    detections: Sequence[Detection],
    scan: Mapping | None = None,
    model: Mapping | None = None,
    timings: Mapping[str, float] | None = None,
) -> None:
    """Write the JSON report ``{"format", "version", "scan", "model", "timings_s", "detections"}``."""
    _write_json(path, {
        "format": REPORT_FORMAT, "version": REPORT_VERSION, "scan": dict(scan or {}),
        "model": dict(model or {}), "timings_s": {k: float(v) for k, v in (timings or {}).items()},
        "detections": [_detection_record(d) for d in detections],
    })


def read_detections_json(path: str | os.PathLike) -> list[Detection]:
    """Read the detections of a report written by :func:`write_detections_json`."""
    document = read_document(path, REPORT_FORMAT, REPORT_VERSION, f"a {REPORT_FORMAT} report")
    try:
        return [Detection(float_triple(d["center_xyz_mm"]), float(d["diameter_mm"]),
                          float(d["probability"]), int(d.get("level", 0)))
                for d in document["detections"]]
    except (KeyError, TypeError, ValueError):
        raise UserInputError(f"{path}: a detection lacks center_xyz_mm, diameter_mm or probability.") from None


def write_candidates_csv(path: str | os.PathLike, seriesuid: str, detections: Sequence[Detection]) -> None:
    """LUNA16 candidates ``seriesuid,coordX,coordY,coordZ,probability,diameter_mm``."""
    write_candidates(path, Findings.from_detections(seriesuid, detections))


def markup_label(rank: int) -> str:
    """Label of the ``rank``-th detection (0-based): ``N1``, ``N2``, ..."""
    return f"N{rank + 1}"


def markup_description(detection: Detection) -> str:
    return f"probability {detection.probability:.3f}, diameter {detection.diameter_mm:.1f} mm"


def write_markups_json(path: str | os.PathLike, detections: Sequence[Detection],
                       name: str = "Nodules") -> None:
    """A Slicer point list (markups schema v1.0.3), one control point per detection, in LPS mm.

    Control points are labelled ``N1, N2, ...`` in the given order; each description gives the
    probability and the diameter.
    """
    identity = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    points = [{
        "id": str(rank + 1), "label": markup_label(rank), "description": markup_description(d),
        "associatedNodeID": "", "position": [float(v) for v in d.center_xyz_mm],
        "orientation": identity, "selected": True, "locked": False, "visibility": True,
        "positionStatus": "defined",
    } for rank, d in enumerate(detections)]
    _write_json(path, {"@schema": MARKUPS_SCHEMA_URL, "markups": [{
        "type": "Fiducial", "name": name, "coordinateSystem": "LPS", "coordinateUnits": "mm",
        "locked": False, "fixedNumberOfControlPoints": False, "labelFormat": "N%d",
        "lastUsedControlPointNumber": len(points), "controlPoints": points, "measurements": [],
    }]})
