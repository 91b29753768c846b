"""The review's crash-recovery file: a small JSON copy of every nodule, rewritten on each change.

Layout (world positions in LPS mm, as every file this project writes)::

    {"format": "scpm-nodule-review", "version": 1, "volume": name, "seriesuid": uid,
     "nodules": [{"id": "N1", "center_xyz_mm": [x, y, z], "diameter_mm": d,
                  "probability": p, "status": "pending|accepted|rejected|added",
                  "moved": bool, "resized": bool, "note": text}, ...]}

(``note``, ``moved`` and ``resized`` may be missing: files written before notes and corrections
existed, read as no note and no correction.) The file is replaced atomically,
so a crash while writing leaves the previous version. It is kept by subscribing a
:class:`SidecarWriter` to the review's :attr:`~.review.NoduleReview.on_persist` hook
(:func:`attach_sidecar`); its path is recorded on the point list, so that the review of a saved
and reloaded scene goes on writing there (:func:`reattach_sidecar`).

Writes are debounced: an edit is written at once unless the last write was less than
``min_interval_s`` ago; then it waits for :func:`flush_sidecar` (the module calls it from a
timer, and before the scene closes) or the next edit after the interval. An unchanged review is
never rewritten. So dragging a diameter spin box writes a few files, not one per step.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from SCPMNoduleLib.documents import read_document
from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.io import atomic_write, safe_file_name

from .nodules import Nodule, ReviewStatus, ReviewStyle
from .review import NoduleReview
from .volumes import lps_to_ras, series_uid

__all__ = ["SIDECAR_INTERVAL_S", "SidecarWriter", "attach_sidecar", "flush_sidecar", "new_sidecar_path", "read_sidecar",
           "reattach_sidecar", "restore_review", "review_to_dict", "sidecar_path", "write_sidecar"]

SIDECAR_FORMAT = "scpm-nodule-review"
SIDECAR_VERSION = 1
SIDECAR_ATTRIBUTE = "SCPMNodule.SidecarPath"
"""Attribute of the review's point list that records its sidecar path (saved with the scene)."""
SIDECAR_INTERVAL_S = 1.0
"""Default least time between two writes of one review's sidecar (see :class:`SidecarWriter`)."""


def review_to_dict(review: NoduleReview) -> dict:
    volume = review.volume_node
    return {
        "format": SIDECAR_FORMAT,
        "version": SIDECAR_VERSION,
        "volume": volume.GetName() if volume else None,
        "seriesuid": series_uid(volume) if volume else None,
        "nodules": [
            {"id": n.label, "center_xyz_mm": list(n.center_xyz_mm), "diameter_mm": n.diameter_mm,
             "probability": n.probability, "status": n.status.value, "moved": n.moved, "resized": n.resized,
             "note": n.note}
            for n in review.nodules()
        ],
    }


def _sidecar_text(review: NoduleReview) -> str:
    return json.dumps(review_to_dict(review), indent=1)


def write_sidecar(path: str | os.PathLike, review: NoduleReview) -> None:
    """Write the review to ``path`` atomically."""
    with atomic_write(path, encoding="utf-8") as handle:
        handle.write(_sidecar_text(review))


class SidecarWriter:
    """The :attr:`~.review.NoduleReview.on_persist` callback that keeps a review's sidecar.

    Writes the review's recorded sidecar path when the review changed, at most once per
    ``min_interval_s`` (``0``: on every change); :meth:`flush` writes what is still waiting.
    """

    def __init__(self, min_interval_s: float = SIDECAR_INTERVAL_S, clock=time.monotonic):
        self.min_interval_s = float(min_interval_s)
        self._clock = clock
        self._last_text: str | None = None
        self._last_time = -float("inf")
        self._waiting: NoduleReview | None = None

    def __call__(self, review: NoduleReview) -> None:
        if self._clock() - self._last_time >= self.min_interval_s:
            self._write(review)
        else:
            self._waiting = review

    @property
    def waiting(self) -> bool:
        """An edit is not written yet."""
        return self._waiting is not None

    def flush(self) -> None:
        """Write the edit still waiting, if any (and if its review is still in a scene)."""
        review, self._waiting = self._waiting, None
        if review is not None and review.alive:
            self._write(review)

    def _write(self, review: NoduleReview) -> None:
        self._waiting = None
        path = sidecar_path(review)
        if not path:
            return
        text = _sidecar_text(review)
        if text == self._last_text:
            return
        with atomic_write(path, encoding="utf-8") as handle:
            handle.write(text)
        self._last_text, self._last_time = text, self._clock()


def new_sidecar_path(directory: str | os.PathLike, volume_node) -> Path:
    """``<directory>/<seriesuid>-<YYYYmmdd-HHMMSS>.review.json``: a new file per detection run, so
    that a new run never overwrites an old review."""
    name = safe_file_name(series_uid(volume_node), fallback="volume")
    return Path(directory) / f"{name}-{time.strftime('%Y%m%d-%H%M%S')}.review.json"


def sidecar_path(review: NoduleReview) -> str | None:
    """The sidecar file recorded on the review's point list, if any."""
    return review.markups_node.GetAttribute(SIDECAR_ATTRIBUTE) or None


def attach_sidecar(review: NoduleReview, path: str | os.PathLike,
                   min_interval_s: float = SIDECAR_INTERVAL_S) -> NoduleReview:
    """Record ``path`` on the review, write the review there now and after every persisted change."""
    review.markups_node.SetAttribute(SIDECAR_ATTRIBUTE, str(path))
    reattach_sidecar(review, min_interval_s)
    _writer(review)(review)
    return review


def reattach_sidecar(review: NoduleReview, min_interval_s: float = SIDECAR_INTERVAL_S) -> NoduleReview:
    """Write the review to its recorded sidecar (if any) after every persisted change from now on.

    For a review found in a loaded scene: nothing is written until the next change, so entering
    the module does not overwrite a newer sidecar left by a crash before it can be restored.
    """
    if sidecar_path(review) and _writer(review) is None:
        review.on_persist.append(SidecarWriter(min_interval_s))
    return review


def flush_sidecar(review: NoduleReview) -> None:
    """Write the review's sidecar now if an edit is waiting (see :class:`SidecarWriter`)."""
    writer = _writer(review)
    if writer is not None:
        writer.flush()


def _writer(review: NoduleReview) -> SidecarWriter | None:
    return next((c for c in review.on_persist if isinstance(c, SidecarWriter)), None)


def read_sidecar(path: str | os.PathLike) -> list[Nodule]:
    """The nodules recorded in a sidecar file, in Slicer's RAS frame.

    Raises:
        UserInputError: the file is missing, not a review file of this version
            (:func:`~SCPMNoduleLib.documents.read_document`), or holds a malformed nodule entry.
    """
    return _read(path)[1]


def _read(path: str | os.PathLike) -> tuple[str | None, list[Nodule]]:
    """The series UID (None if not recorded) and nodules of a sidecar file."""
    content = read_document(path, SIDECAR_FORMAT, SIDECAR_VERSION, "an SCPMNodule review file")
    try:
        nodules = [
            Nodule(str(n["id"]), tuple(float(v) for v in lps_to_ras(n["center_xyz_mm"])),
                   float(n["diameter_mm"]), float(n["probability"]), ReviewStatus.parse(str(n["status"])),
                   " ".join(str(n.get("note") or "").split()), _flag(n, "moved"), _flag(n, "resized"))
            for n in content["nodules"]
        ]
    except UserInputError as error:
        raise UserInputError(f"{path}: {error}") from None
    except (KeyError, TypeError, ValueError) as error:
        raise UserInputError(f"{path}: a nodule entry is incomplete or malformed ({error!r}).") from None
    uid = content.get("seriesuid")
    return (str(uid) if uid else None), nodules


def _flag(entry: dict, name: str) -> bool:
    """A nodule entry's correction ``name``: false where missing (an older file), else a JSON boolean.

    Raises:
        ValueError: the value is not ``true`` or ``false``.
    """
    value = entry.get(name, False)
    if not isinstance(value, bool):
        raise ValueError(f"'{name}' is {value!r}, not true or false")
    return value


def restore_review(volume_node, path: str | os.PathLike, style: ReviewStyle | None = None,
                   min_interval_s: float = SIDECAR_INTERVAL_S) -> NoduleReview:
    """Rebuild a review of ``volume_node`` from its sidecar file (after a crash); keeps writing there.

    Refused, with nothing added, when the file records another series than the volume's: its
    positions belong to that series' scan.
    """
    uid, nodules = _read(path)
    if uid is not None and uid != series_uid(volume_node):
        raise UserInputError(f"{Path(path).name} is the review of series {uid}, not of '{volume_node.GetName()}' "
                             f"(series {series_uid(volume_node)}): select that series' volume and restore again.")
    return attach_sidecar(NoduleReview.from_nodules(volume_node, nodules, style), path, min_interval_s)
