"""The sphere "box coder": between spheres in input voxels and a head level's grid targets.

A head level with stride ``s`` (input voxels per output voxel) has, along each axis, output
point ``j`` standing for the input-voxel coordinate

    p(j) = j * s + (s - 1) / 2

(the center of the ``s``-block that max-pooling merged). A sphere with center ``c`` and radius
``r`` (input voxels) is coded at grid point ``j`` as

    offset      = (c - p(j)) / s        (grid voxels, channel order z, y, x)
    radius_grid = r / s                 (grid voxels)

and decoded by the inverse, ``c = p(j) + s * offset``, ``r = s * radius_grid``. This is the
only place that knows the convention; matching, losses and inference go through it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

__all__ = [
    "DecodedSpheres",
    "decode_detections",
    "decode_spheres",
    "encode_spheres",
    "grid_points_zyx_vox",
    "grid_positions_vox",
]


def grid_positions_vox(
    length: int,
    stride: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Input-voxel coordinate ``p(j) = j * s + (s - 1) / 2`` of every output point ``j`` along one axis.

    Returns a ``(length,)`` tensor; exact in float32 for any grid a scan can have (half integers).
    """
    return torch.arange(length, dtype=dtype, device=device) * stride + (stride - 1) / 2


def grid_points_zyx_vox(
    grid_shape_zyx: Sequence[int],
    stride: int,
    *,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
) -> Tensor:
    """Input-voxel coordinates of every output point of a level.

    Args:
        grid_shape_zyx: the level's output shape ``(d, h, w)``.
        stride: input voxels per output voxel.

    Returns:
        ``(d, h, w, 3)`` tensor whose entry ``[k, j, i]`` is ``(p(k), p(j), p(i))`` with
        ``p(j) = j * s + (s - 1) / 2``.
    """
    axes = [grid_positions_vox(n, stride, dtype=dtype, device=device) for n in grid_shape_zyx]
    return torch.stack(torch.meshgrid(*axes, indexing="ij"), dim=-1)


def encode_spheres(
    centers_zyx_vox: Tensor, radii_vox: Tensor, points_zyx_vox: Tensor, stride: int
) -> tuple[Tensor, Tensor]:
    """Code spheres as grid targets relative to grid points (broadcasting over leading dims).

    Args:
        centers_zyx_vox: ``(..., 3)`` sphere centers, input voxels.
        radii_vox: ``(...)`` radii, input voxels.
        points_zyx_vox: ``(..., 3)`` the grid points' input-voxel coordinates ``p(j)``.
        stride: the level's stride ``s``.

    Returns:
        ``offset (..., 3) = (c - p) / s`` and ``radius_grid (...) = r / s``, both grid voxels.
    """
    return (centers_zyx_vox - points_zyx_vox) / stride, radii_vox / stride


def decode_spheres(
    points_zyx_vox: Tensor, offsets_grid: Tensor, radii_grid: Tensor, stride: int
) -> tuple[Tensor, Tensor]:
    """Inverse of :func:`encode_spheres`: ``c = p + s * offset``, ``r = s * radius_grid``.

    Args:
        points_zyx_vox: ``(..., 3)`` grid points' input-voxel coordinates.
        offsets_grid: ``(..., 3)`` offsets, grid voxels.
        radii_grid: ``(...)`` radii, grid voxels.
        stride: the level's stride ``s``.

    Returns:
        ``centers_zyx_vox (..., 3)`` and ``radii_vox (...)``, input voxels.
    """
    return points_zyx_vox + offsets_grid * stride, radii_grid * stride


@dataclass
class DecodedSpheres:
    """Candidate spheres of one patch, highest score first (no NMS applied).

    Why a shape of its own rather than :class:`~SCPMNoduleLib.detection.Detection` rows: these
    are torch tensors on the maps' device, in the input voxels (zyx) of the maps decoded, before
    suppression and before conversion to world millimetres, so that decoding stays batched and
    vectorised where the maps are. The detector then drops centers outside the lung mask, runs
    :func:`~SCPMNoduleLib.geometry.sphere_nms` in mm and turns only the survivors into
    world-space ``Detection`` rows.

    Attributes:
        centers_zyx_vox: ``(N, 3)`` centers in the patch's input voxels.
        radii_vox: ``(N,)`` radii in input voxels.
        scores: ``(N,)`` center probabilities.
        levels: ``(N,)`` long, index of the head level (0 = finest) that produced each one.
    """

    centers_zyx_vox: Tensor
    radii_vox: Tensor
    scores: Tensor
    levels: Tensor


def decode_detections(
    outputs: Sequence[dict[str, Tensor]],
    strides: Sequence[int],
    top_n: int = 100,
    score_threshold: float = 0.0,
) -> list[DecodedSpheres]:
    """Turn the network's maps into candidate spheres, vectorised over points and levels.

    For each level, the ``top_n`` points with the highest probability ``sigmoid(logits)`` are
    taken (``torch.topk`` on the flattened map of each batch item) and decoded with
    :func:`decode_spheres`; the levels' candidates are merged, those with a score not above
    ``score_threshold`` dropped, and the best ``top_n`` of the merged set kept, sorted by
    descending score. Non-maximum suppression is the caller's (``geometry.sphere_nms``).

    Args:
        outputs: the model's output, one dict per level, finest first, with ``"logits"``
            ``(B,1,d,h,w)``, ``"radius"`` ``(B,1,d,h,w)`` and ``"offset"`` ``(B,3,d,h,w)``
            (grid voxels, z y x).
        strides: the levels' strides, same order.
        top_n: candidates kept per level and in the merged result.
        score_threshold: candidates need a probability strictly above it.

    Returns:
        One :class:`DecodedSpheres` per batch item, float32, on the outputs' device.
    """
    if len(outputs) != len(strides):
        raise ValueError(f"got {len(outputs)} output levels but {len(strides)} strides")
    centers, radii, scores, levels = [], [], [], []
    for level, (out, stride) in enumerate(zip(outputs, strides)):
        logits = out["logits"].float()
        batch, _, *grid_shape = logits.shape
        points = grid_points_zyx_vox(grid_shape, stride, device=logits.device).reshape(-1, 3)
        k = min(top_n, points.shape[0])
        top_scores, index = torch.sigmoid(logits.reshape(batch, -1)).topk(k, dim=1)
        offsets = out["offset"].float().reshape(batch, 3, -1).transpose(1, 2)
        offsets = offsets.gather(1, index.unsqueeze(-1).expand(-1, -1, 3))
        radius_grid = out["radius"].float().reshape(batch, -1).gather(1, index)
        center, radius = decode_spheres(points[index], offsets, radius_grid, stride)
        centers.append(center)
        radii.append(radius)
        scores.append(top_scores)
        levels.append(torch.full_like(index, level))
    centers_all = torch.cat(centers, dim=1)
    radii_all, scores_all, levels_all = (torch.cat(t, dim=1) for t in (radii, scores, levels))
    k = min(top_n, scores_all.shape[1])
    merged_scores, order = scores_all.topk(k, dim=1)
    result = []
    for b in range(scores_all.shape[0]):
        keep = order[b][merged_scores[b] > score_threshold]
        result.append(
            DecodedSpheres(
                centers_zyx_vox=centers_all[b, keep],
                radii_vox=radii_all[b, keep],
                scores=scores_all[b, keep],
                levels=levels_all[b, keep],
            )
        )
    return result
