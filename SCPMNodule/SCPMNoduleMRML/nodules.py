"""The plain values of a review: a nodule's status, its row, how nodules look.

No MRML here (VTK data objects at most): :mod:`.review` keeps these values in the scene (the
table layout is :mod:`.table`'s), :mod:`.sidecar` and :mod:`.exports` write them to files.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from enum import Enum

import numpy as np
import vtk

from SCPMNoduleLib.errors import UserInputError

from .volumes import ras_to_lps

__all__ = ["Nodule", "ReviewStatus", "ReviewStyle", "describe", "nodule_color", "probability_color", "sphere_polydata"]


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

    Why a shape of its own rather than a :class:`~SCPMNoduleLib.detection.Detection`: the center is
    in Slicer's RAS frame, as the markups and models in the scene hold it, and the row carries
    the reader's review status, note, corrections and label; it is read back from the point list,
    which is the record. :attr:`center_xyz_mm` gives the LPS position that files use.
    """

    label: str
    center_ras_mm: tuple[float, float, float]
    diameter_mm: float
    probability: float
    status: ReviewStatus
    note: str = ""
    """The reader's free-text note on this nodule."""
    moved: bool = False
    """The reader moved this detection (its centre is the reader's, not the detector's)."""
    resized: bool = False
    """The reader changed this detection's diameter (the diameter is the reader's)."""

    @property
    def corrections(self) -> tuple[str, ...]:
        """``("moved", "resized")``, either or neither: the reader's corrections of this detection."""
        return tuple(name for name, done in (("moved", self.moved), ("resized", self.resized)) if done)

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


def describe(nodule: Nodule) -> str:
    """The control point's description, e.g. ``p=0.93, d=6.2 mm, accepted, moved; spiculated``."""
    text = ", ".join((f"p={nodule.probability:.2f}", f"d={nodule.diameter_mm:.1f} mm", nodule.status.value,
                      *nodule.corrections))
    return f"{text}; {nodule.note}" if nodule.note else text


def sphere_polydata(center_ras_mm: Sequence[float], diameter_mm: float, resolution: int):
    """A sphere mesh (``vtkPolyData``) of the given centre and diameter."""
    source = vtk.vtkSphereSource()
    source.SetCenter(*map(float, center_ras_mm))
    source.SetRadius(float(diameter_mm) / 2.0)
    source.SetThetaResolution(resolution)
    source.SetPhiResolution(resolution)
    source.Update()
    return source.GetOutput()

