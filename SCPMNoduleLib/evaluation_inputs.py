"""The evaluation's inputs: LUNA16 tables given as files, :class:`~SCPMNoduleLib.io.Findings` or
pandas-like DataFrames, and the series list, each checked for what the FROC needs (finite
coordinates, diameters that are positive or LUNA16's -1, probabilities, unique series uids).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Sequence
from typing import Any

import numpy as np

from .errors import UserInputError
from .io import ANNOTATION_COLUMNS, CANDIDATE_COLUMNS, Findings, read_annotations, read_candidates, read_seriesuids

__all__ = ["TableLike", "as_findings", "as_seriesuids"]

log = logging.getLogger(__name__)

TableLike = str | os.PathLike | Findings | Any
"""A LUNA16 table: a CSV path, :class:`~SCPMNoduleLib.io.Findings`, or a pandas-like DataFrame."""


def _findings_from_frame(frame: Any, columns: Sequence[str], name: str) -> Findings:
    """A pandas-like DataFrame (``.columns``, ``frame[col]``) in LUNA16 columns -> Findings."""
    missing = [c for c in columns if c not in list(frame.columns)]
    if missing:
        raise UserInputError(f"{name}: the table lacks the columns {', '.join(missing)}.")
    try:
        centers = np.stack([np.asarray(frame[c], np.float64) for c in ("coordX", "coordY", "coordZ")], 1)
        extra = {c: np.asarray(frame[c], np.float64) for c in ("diameter_mm", "probability")
                 if c in list(frame.columns)}
    except (TypeError, ValueError) as error:
        raise UserInputError(f"{name}: a coordinate, diameter or probability is not a number ({error}).") from None
    uids = np.asarray(frame["seriesuid"]).astype(str)
    return Findings.from_columns(uids, centers.reshape(len(uids), 3), extra.get("diameter_mm"),
                                 extra.get("probability"))


def as_findings(table: TableLike, candidates: bool, name: str) -> Findings:
    """Path, Findings or DataFrame -> Findings, with the values the evaluation needs checked."""
    columns = CANDIDATE_COLUMNS if candidates else ANNOTATION_COLUMNS
    if isinstance(table, Findings):
        findings = table
    elif hasattr(table, "columns"):
        findings = _findings_from_frame(table, columns, name)
    else:
        name = str(table)
        findings = read_candidates(table) if candidates else read_annotations(table)
    value = findings.probabilities if candidates else findings.diameters_mm
    if not (np.isfinite(findings.centers_xyz_mm).all() and np.isfinite(value).all()):
        what = "probability" if candidates else "diameter_mm"
        raise UserInputError(f"{name}: a coordinate or {what} is missing, NaN or infinite.")
    if candidates:
        _warn_probabilities_outside_unit(findings, name)
    else:
        _check_diameters(findings, name)
    return findings


def _first_column(frame: Any) -> list:
    """The first column of a pandas-like DataFrame (``.columns``, ``frame[col]``), as a list."""
    return list(np.asarray(frame[list(frame.columns)[0]]))


def _check_diameters(findings: Findings, name: str) -> None:
    """Refuse a diameter that is neither positive nor LUNA16's -1 ("not measured", in
    annotations_excluded.csv): another negative or a zero is a typo or a sign error, and a sphere of
    that size would silently get the 10 mm default or never be hit."""
    bad = (findings.diameters_mm <= 0.0) & (findings.diameters_mm != -1.0)
    if bad.any():
        row = int(np.argmax(bad))
        raise UserInputError(f"{name}: seriesuid {findings.seriesuids[row]} has diameter_mm "
                             f"{findings.diameters_mm[row]:g}; a diameter is positive, or -1 for "
                             "'not measured' as in LUNA16's annotations_excluded.csv.")


def _warn_probabilities_outside_unit(findings: Findings, name: str) -> None:
    """Warn about, but accept, candidate scores outside [0, 1]: the FROC uses only their order,
    so scores such as logits give the right curve (the official LUNA16 script accepts them too),
    but the thresholds written are then not probabilities, and such values often mean that
    another column (a diameter) was taken for the probability."""
    outside = (findings.probabilities < 0.0) | (findings.probabilities > 1.0)
    if outside.any():
        log.warning("%s: %d of %d candidate probabilities lie outside [0, 1] (from %g to %g); the FROC uses only "
                    "their order, so the curve is right but its thresholds are not probabilities; check that the "
                    "probability column holds probabilities", name, int(outside.sum()), len(findings),
                    float(findings.probabilities.min()), float(findings.probabilities.max()))


def as_seriesuids(seriesuids: str | os.PathLike | Iterable[str] | Any) -> np.ndarray:
    if isinstance(seriesuids, (str, os.PathLike)):
        name, listed = str(seriesuids), read_seriesuids(seriesuids)
    elif hasattr(seriesuids, "columns"):
        name, listed = "series table", _first_column(seriesuids)
    else:
        name, listed = "series list", list(seriesuids)
    uids = np.asarray([str(uid).strip() for uid in listed], dtype=str)
    if len(uids) == 0:
        raise UserInputError(f"{name}: the series list names no scan.")
    unique, counts = np.unique(uids, return_counts=True)
    if (counts > 1).any():
        raise UserInputError(f"{name}: seriesuid {unique[counts > 1][0]} is listed more than once.")
    return uids
