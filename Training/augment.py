"""Spatial augmentation that keeps sphere annotations exact.

Every augmentation here is one affine map between the source volume (the cached scan, voxel
coordinates ``s``, z y x) and the output patch (voxel coordinates ``q``):

    q = c_out + M (s - c_src),        M = scale * R * F

with ``c_out = (P - 1) / 2`` the patch center, ``c_src`` the source point that lands there, ``F`` a
signed permutation (flips per axis, and the in-plane y <-> x swap), ``R`` a rotation and ``scale``
an isotropic factor. A sphere (center ``c``, radius ``r``) maps to the sphere
``(c_out + M (c - c_src), scale * r)`` exactly, because ``M / scale`` is orthogonal.

The patch is read from the source by ``scipy.ndimage.affine_transform`` with the inverse map
``s = c_src + M^-1 (q - c_out)`` over only the source box the patch needs (so a memory-mapped
scan is read a patch at a time). Without rotation and scaling ``M`` is a signed permutation and
the patch is an exact integer crop followed by ``numpy`` flips and a transpose (no interpolation).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from SCPMNoduleLib.config_dict import invalid_setting

__all__ = ["AugmentConfig", "extract_patch", "is_signed_permutation", "random_transform", "transform_spheres"]


@dataclass
class AugmentConfig:
    """Random spatial augmentation (probabilities per sample).

    Attributes:
        flip_probability: probability of flipping each axis (z, y, x independently).
        swap_probability: probability of swapping the in-plane axes y and x.
        affine_probability: probability of also rotating and scaling the patch.
        max_rotation_deg: rotation angles about each of the three axes are drawn uniformly in
            ``[-max_rotation_deg, max_rotation_deg]``.
        scale_range: the isotropic scale factor (output size / source size of a structure) is
            drawn log-uniformly in this range.
        interpolation_order: spline order of ``affine_transform`` (1 = trilinear).
    """

    flip_probability: float = 0.5
    swap_probability: float = 0.5
    affine_probability: float = 0.5
    max_rotation_deg: float = 15.0
    scale_range: tuple[float, float] = (0.8, 1.25)
    interpolation_order: int = 1

    def __post_init__(self) -> None:
        """Refuse values the sampler cannot use (:func:`~SCPMNoduleLib.config_dict.invalid_setting`)."""
        for name in ("flip_probability", "swap_probability", "affine_probability"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise invalid_setting(self, name, "is not a probability in [0, 1]")
        if not (math.isfinite(self.max_rotation_deg) and self.max_rotation_deg >= 0):
            raise invalid_setting(self, "max_rotation_deg", "is not a non-negative angle")
        scales = self.scale_range
        if not (len(scales) == 2 and math.isfinite(scales[1]) and 0 < scales[0] <= scales[1]):
            raise invalid_setting(self, "scale_range", "is not two positive, increasing scale factors")
        if not 0 <= self.interpolation_order <= 5:
            raise invalid_setting(self, "interpolation_order", "is not a spline order from 0 to 5")


def _rotation_zyx(angles_rad: np.ndarray) -> np.ndarray:
    """``R_z R_y R_x``: rotations about the z, y and x axes, written in (z, y, x) coordinates."""
    matrices = []
    for axis, angle in enumerate(angles_rad):
        plane = [a for a in range(3) if a != axis]
        rotation = np.eye(3)
        cos, sin = np.cos(angle), np.sin(angle)
        rotation[np.ix_(plane, plane)] = [[cos, -sin], [sin, cos]]
        matrices.append(rotation)
    return matrices[0] @ matrices[1] @ matrices[2]


def random_transform(rng: np.random.Generator, config: AugmentConfig) -> tuple[np.ndarray, float]:
    """Draw ``M = scale * R * F`` (3x3, acting on z y x) and its ``scale``.

    The draws are always made in the same order and number, so a sample's transform depends only
    on its generator's state.
    """
    flips = np.where(rng.random(3) < config.flip_probability, -1.0, 1.0)
    swap = rng.random() < config.swap_probability
    affine = rng.random() < config.affine_probability
    angles = np.deg2rad(rng.uniform(-config.max_rotation_deg, config.max_rotation_deg, size=3))
    log_low, log_high = np.log(config.scale_range)
    scale = float(np.exp(rng.uniform(log_low, log_high)))
    permutation = np.eye(3)[[0, 2, 1]] if swap else np.eye(3)
    matrix = permutation @ np.diag(flips)
    if not affine:
        return matrix, 1.0
    return scale * _rotation_zyx(angles) @ matrix, scale


def _read_box(volume: np.ndarray, start: np.ndarray, stop: np.ndarray, fill: float) -> np.ndarray:
    """``volume[start:stop]`` as float32, padded with ``fill`` where the box leaves the volume."""
    shape = np.asarray(volume.shape)
    out = np.full(tuple(stop - start), fill, dtype=np.float32)
    lo = np.clip(start, 0, shape)
    hi = np.clip(stop, 0, shape)
    if np.all(hi > lo):
        src = tuple(slice(a, b) for a, b in zip(lo, hi))
        dst = tuple(slice(a - s, b - s) for a, b, s in zip(lo, hi, start))
        out[dst] = volume[src]
    return out


def is_signed_permutation(matrix: np.ndarray) -> bool:
    """Whether ``matrix`` only flips and permutes axes (entries in {-1, 0, 1}, one per row)."""
    return bool(np.all(np.isin(matrix, (-1.0, 0.0, 1.0))) and np.all(np.abs(matrix).sum(axis=1) == 1))


def extract_patch(
    volume: np.ndarray,
    center_src_zyx: np.ndarray,
    matrix: np.ndarray,
    patch_size: int,
    fill: float,
    order: int = 1,
) -> np.ndarray:
    """Resample the patch ``q -> c_src + M^-1 (q - c_out)`` from ``volume``.

    Args:
        volume: ``(D, H, W)`` source (a memory map is fine: only the needed box is read).
        center_src_zyx: ``(3,)`` source point ``c_src`` that lands on the patch center. For a
            signed-permutation ``matrix`` it must satisfy ``c_src - (P - 1) / 2`` integer.
        matrix: ``M`` (3x3) from :func:`random_transform`.
        patch_size: ``P``, the patch side.
        fill: value outside the volume.
        order: spline order used when ``matrix`` rotates or scales.

    Returns:
        ``(P, P, P)`` float32 patch.
    """
    center_out = np.full(3, (patch_size - 1) / 2)
    if is_signed_permutation(matrix):
        start = np.rint(center_src_zyx - center_out).astype(np.int64)
        box = _read_box(volume, start, start + patch_size, fill)
        # q = c_out + M (s - c_src): output axis i reads source axis j = argmax|M[i]|, reversed if M[i, j] < 0.
        source_axes = np.abs(matrix).argmax(axis=1)
        patch = np.transpose(box, source_axes)
        flipped = [i for i in range(3) if matrix[i, source_axes[i]] < 0]
        return np.ascontiguousarray(np.flip(patch, axis=tuple(flipped)) if flipped else patch)
    inverse = np.linalg.inv(matrix)
    corners = np.array(np.meshgrid(*[[0.0, patch_size - 1.0]] * 3, indexing="ij")).reshape(3, -1)
    source = center_src_zyx[:, None] + inverse @ (corners - center_out[:, None])
    start = np.floor(source.min(axis=1)).astype(np.int64) - 1
    stop = np.ceil(source.max(axis=1)).astype(np.int64) + 2
    box = _read_box(volume, start, stop, fill)
    offset = center_src_zyx - start - inverse @ center_out
    return ndimage.affine_transform(
        box, inverse, offset=offset, output_shape=(patch_size,) * 3, order=order, mode="grid-constant", cval=fill
    ).astype(np.float32, copy=False)


def transform_spheres(
    centers_src_zyx: np.ndarray,
    radii_src: np.ndarray,
    center_src_zyx: np.ndarray,
    matrix: np.ndarray,
    scale: float,
    patch_size: int,
) -> tuple[np.ndarray, np.ndarray]:
    """Map spheres from source voxels to patch voxels: ``c' = c_out + M (c - c_src)``, ``r' = scale r``.

    Args:
        centers_src_zyx: ``(N, 3)`` centers in source voxels.
        radii_src: ``(N,)`` radii in source voxels.

    Returns:
        ``(N, 3)`` centers and ``(N,)`` radii in patch voxels.
    """
    center_out = (patch_size - 1) / 2
    centers = center_out + (np.asarray(centers_src_zyx, dtype=np.float64) - center_src_zyx) @ matrix.T
    return centers, np.asarray(radii_src, dtype=np.float64) * scale
