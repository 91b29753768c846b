"""The review's crash-recovery file: a small JSON copy of every nodule, rewritten on each change.

Layout (world positions in LPS mm, as every file this project writes)::

    {"format": "scpm-nodule-review", "version": 1, "volume": name, "seriesuid": uid,
     "nodules": [{"id": "N1", "center_xyz_mm": [x, y, z], "diameter_mm": d,
                  "probability": p, "status": "pending|accepted|rejected|added"}, ...]}

The file is replaced atomically, so a crash while writing leaves the previous version. It is
kept by subscribing to the review's :attr:`~.review.NoduleReview.on_persist` hook
(:func:`attach_sidecar`); its path is recorded on the point list, so that the review of a saved
and reloaded scene goes on writing there (:func:`reattach_sidecar`).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.io import atomic_write

from .nodules import Nodule, ReviewStatus, ReviewStyle
from .review import NoduleReview
from .volumes import lps_to_ras, series_uid

SIDECAR_FORMAT = "scpm-nodule-review"
SIDECAR_VERSION = 1
SIDECAR_ATTRIBUTE = "SCPMNodule.SidecarPath"
"""Attribute of the review's point list that records its sidecar path (saved with the scene)."""


def review_to_dict(review: NoduleReview) -> dict:
    volume = review.volume_node
    return {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "volume": volume.GetName() if volume else None,
        "seriesuid": series_uid(volume) if volume else None,
        "nodules": [
            {"id": n.label, "center_xyz_mm": list(n.center_xyz_mm), "diameter_mm": n.diameter_mm,
             "probability": n.probability, "status": n.status.value}
            for n in review.nodules()
        ],
    }


def write_sidecar(path: str | os.PathLike, review: NoduleReview) -> None:
    """Write the review to ``path`` atomically."""
    with atomic_write(path, encoding="utf-8") as handle:
        json.dump(review_to_dict(review), handle, indent=1)


def sidecar_path(review: NoduleReview) -> str | None:
    """The sidecar file recorded on the review's point list, if any."""
    return review.markups_node.GetAttribute(SIDECAR_ATTRIBUTE) or None


def attach_sidecar(review: NoduleReview, path: str | os.PathLike) -> NoduleReview:
    """Record ``path`` on the review, write the review there now and after every persisted change."""
    review.markups_node.SetAttribute(SIDECAR_ATTRIBUTE, str(path))
    write_sidecar(path, review)
    return reattach_sidecar(review)


def reattach_sidecar(review: NoduleReview) -> NoduleReview:
    """Write the review to its recorded sidecar (if any) after every persisted change from now on.

    For a review found in a loaded scene: nothing is written until the next change, so entering
    the module does not overwrite a newer sidecar left by a crash before it can be restored.
    """
    path = sidecar_path(review)
    if path and _write_recorded_sidecar not in review.on_persist:
        review.on_persist.append(_write_recorded_sidecar)
    return review


def _write_recorded_sidecar(review: NoduleReview) -> None:
    path = sidecar_path(review)
    if path:
        write_sidecar(path, review)


def read_sidecar(path: str | os.PathLike) -> list[Nodule]:
    """The nodules recorded in a sidecar file."""
    path = Path(path)
    try:
        content = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserInputError(f"{path}: file not found.")
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserInputError(f"{path}: not a JSON file ({error}).")
    if not isinstance(content, dict) or content.get("format") != SIDECAR_FORMAT:
        raise UserInputError(f"{path}: not an SCPMNodule review file.")
    if content.get("version") != SIDECAR_VERSION:
        raise UserInputError(f"{path}: review file version {content.get('version')} is not "
                             f"{SIDECAR_VERSION}.")
    try:
        nodules = [
            Nodule(str(n["id"]), tuple(float(v) for v in lps_to_ras(n["center_xyz_mm"])),
                   float(n["diameter_mm"]), float(n["probability"]), ReviewStatus.parse(str(n["status"])))
            for n in content["nodules"]
        ]
    except UserInputError as error:
        raise UserInputError(f"{path}: {error}") from None
    except (KeyError, TypeError, ValueError) as error:
        raise UserInputError(f"{path}: a nodule entry is incomplete or malformed ({error!r}).")
    return nodules


def restore_review(volume_node, path: str | os.PathLike, style: ReviewStyle | None = None) -> NoduleReview:
    """Rebuild a review of ``volume_node`` from its sidecar file (after a crash); keeps writing there."""
    return attach_sidecar(NoduleReview.from_nodules(volume_node, read_sidecar(path), style), path)
