"""A voxel grid in world space: the one place that converts voxel indices to world LPS millimetres.

With ``D`` the 3x3 direction matrix, ``s`` the spacing and ``o`` the origin (all x, y, z)::

    world_xyz_mm = o + D · diag(s) · index_xyz

Arrays index ``(z, y, x)``; world points, spacings and origins are ``(x, y, z)``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from .triples import int_triple

__all__ = ["ScanGeometry"]


@dataclass(frozen=True)
class ScanGeometry:
    """A voxel grid in world space: ``world_xyz = origin + direction · diag(spacing) · index_xyz``.

    Attributes:
        shape_zyx: grid size.
        origin_xyz_mm: world position of voxel (0, 0, 0), LPS mm.
        spacing_xyz_mm: voxel size.
        direction: ``(3, 3)`` direction cosines (columns = the x, y, z index axes in world LPS).
    """

    shape_zyx: tuple[int, int, int]
    origin_xyz_mm: np.ndarray
    spacing_xyz_mm: np.ndarray
    direction: np.ndarray

    @classmethod
    def from_image(cls, image: sitk.Image) -> ScanGeometry:
        return cls(int_triple(reversed(image.GetSize())),
                   np.asarray(image.GetOrigin(), dtype=np.float64),
                   np.asarray(image.GetSpacing(), dtype=np.float64),
                   np.asarray(image.GetDirection(), dtype=np.float64).reshape(3, 3))

    @property
    def axial_axis(self) -> int:
        """The array axis (z, y, x order) that runs closest to the patient's head-foot axis."""
        return 2 - int(np.argmax(np.abs(self.direction[2, :])))

    @property
    def index_to_world_matrix(self) -> np.ndarray:
        """``(3, 3)`` matrix ``D · diag(s)`` acting on index_xyz."""
        return self.direction * self.spacing_xyz_mm[None, :]

    def index_to_world(self, index_zyx: np.ndarray) -> np.ndarray:
        """``(..., 3)`` voxel indices (z, y, x), fractional allowed -> ``(..., 3)`` world LPS mm (x, y, z)."""
        index_xyz = np.asarray(index_zyx, dtype=np.float64)[..., ::-1]
        return self.origin_xyz_mm + index_xyz @ self.index_to_world_matrix.T

    def world_to_index(self, world_xyz_mm: np.ndarray) -> np.ndarray:
        """Inverse of :meth:`index_to_world`: ``(..., 3)`` world mm -> ``(..., 3)`` fractional index (z, y, x)."""
        offset = np.asarray(world_xyz_mm, dtype=np.float64) - self.origin_xyz_mm
        index_xyz = np.linalg.solve(self.index_to_world_matrix, offset.reshape(-1, 3).T).T
        return index_xyz[:, ::-1].reshape(offset.shape)

    def coarsened(self, block: int) -> ScanGeometry:
        """The grid of blocks of ``block`` voxels per side: coarse voxel ``c`` stands for the
        continuous index ``b·c + (b - 1)/2`` of this grid (the block's center) and covers its voxels
        ``[b·c, b·c + b)``."""
        return ScanGeometry(int_triple(-(-n // block) for n in self.shape_zyx),
                            self.index_to_world(np.full(3, (block - 1) / 2)), self.spacing_xyz_mm * block,
                            self.direction)

    def world_box(self, start_zyx: np.ndarray, stop_zyx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The world LPS mm ``(min_xyz, max_xyz)`` of the voxel centers of the box ``[start, stop)``:
        the axis-aligned hull of its 8 corner voxels (the box itself when the grid is not oblique)."""
        corners = np.array([[(start_zyx, np.asarray(stop_zyx) - 1)[k][axis] for axis, k in enumerate(bits)]
                            for bits in np.ndindex(2, 2, 2)], dtype=np.float64)
        world = self.index_to_world(corners)
        return world.min(axis=0), world.max(axis=0)

    def contains_world(self, world_xyz_mm: np.ndarray) -> np.ndarray:
        """``(..., 3)`` world LPS mm -> ``(...)`` bool: within this grid's voxels (index
        ``-0.5 .. n - 0.5`` on every axis, the voxels' own extent)."""
        index = self.world_to_index(world_xyz_mm)
        return np.all((index >= -0.5) & (index <= np.asarray(self.shape_zyx) - 0.5), axis=-1)

    def resample(self, image: sitk.Image, start_zyx=(0, 0, 0), shape_zyx: tuple[int, int, int] | None = None,
                 outside_value: float = 0.0, extrapolate: bool = False) -> sitk.Image:
        """Linear resampling of ``image`` onto the box ``[start, start + shape)`` of this grid, float32.

        The box's voxels are exactly the grid's voxels there (its origin is the grid's point at
        ``start``), so resampling a box equals cropping the whole resampled grid. Points outside
        the image get ``outside_value``, or with ``extrapolate`` the nearest image value.
        """
        shape_zyx = self.shape_zyx if shape_zyx is None else shape_zyx
        origin = self.index_to_world(np.asarray(start_zyx, dtype=np.float64))
        return sitk.Resample(
            image, [int(n) for n in shape_zyx[::-1]], sitk.Transform(), sitk.sitkLinear,
            [float(v) for v in origin], [float(v) for v in self.spacing_xyz_mm],
            [float(v) for v in self.direction.ravel()], float(outside_value), sitk.sitkFloat32, extrapolate,
        )

