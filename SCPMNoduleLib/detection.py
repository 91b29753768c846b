"""The detector's result type, kept free of torch so that readers of reports (the Slicer module's
review, the exports) load without the network's dependencies."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Detection"]


@dataclass(frozen=True)
class Detection:
    """One detected nodule, as the detector returns it for one scan (a list, best first).

    A row object rather than a :class:`~SCPMNoduleLib.io.Findings` table: a scan's result is
    read one nodule at a time (reports, markups, the Slicer review), it carries the head
    ``level``, and it needs no series uid. ``Findings.from_detections`` makes table rows of it.

    Attributes:
        center_xyz_mm: world position, LPS millimetres (ITK / LUNA16 convention).
        diameter_mm: sphere diameter in millimetres.
        probability: the network's center probability, in [0, 1].
        level: index of the head level that produced it (0 = finest).
    """

    center_xyz_mm: tuple[float, float, float]
    diameter_mm: float
    probability: float
    level: int = 0
