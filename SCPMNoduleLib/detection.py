"""The detector's result type, kept free of torch so that readers of reports (the Slicer module's
review, the exports) load without the network's dependencies."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Detection:
    """One detected nodule.

    Attributes:
        center_xyz_mm: world position, LPS millimetres (ITK / LUNA16 convention).
        diameter_mm: sphere diameter in millimetres.
        probability: the network's centre probability, in [0, 1].
        level: index of the head level that produced it (0 = finest).
    """

    center_xyz_mm: tuple[float, float, float]
    diameter_mm: float
    probability: float
    level: int = 0
