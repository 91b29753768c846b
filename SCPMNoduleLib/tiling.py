"""Covering a padded lung crop with network tiles, and averaging mirrored passes.

Along each axis the crop (sides multiples of the network's ``size_divisor`` ``q``) is cut into
chunks ``[c_i, c_{i+1})`` whose bounds are multiples of ``q``; tile ``i`` spans
``[c_i - m, c_{i+1} + m)`` (clamped into the volume) with the margin ``m`` covering the
network's useful receptive field, and contributes only its chunk (:func:`plan_tiles`). A head
level of stride ``s`` (``s`` divides ``q``) owns grid points ``[c_i / s, c_{i+1} / s)`` of it.

Margin: the network's theoretical receptive field reaches about 230-260 voxels from an output
point, but little of it matters. The gradient receptive field (``model.gradient_receptive_field``
on a 48 x 512 x 48 input, random init) holds 99.9% of the input gradient within 91-100 voxels
of the output point for the tiny and the demo configurations and within 132-139 voxels for the
default (paper-size) one. With the tiny configuration (random, large head weights), tiles with a
64-voxel margin changed probabilities by up to 0.019 and offsets by up to 2.3 voxels against the
whole-volume pass, with a 96-voxel margin by at most 0.0015 and 0.2. The default margin
(``InferenceConfig.tile_margin_vox``) is 128 voxels (a multiple of ``q = 16``); tiles are large
(``InferenceConfig.max_tile_voxels``, 400^3), so a lung crop at 1 mm is a single tile and the
margin costs nothing. Cutting an axis of length ``L`` only shortens its tiles when ``L`` exceeds
a chunk plus ``2 m``, so smaller tiles (to bound memory) cost several times the compute.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .triples import int_triple

__all__ = ["MirroredMaps", "Tile", "average_mirrored_maps", "plan_tiles"]


@dataclass(frozen=True)
class Tile:
    """One tile of the padded crop, all in crop voxels (z, y, x).

    ``origin``/``size``: the tile's input box; ``own_start``/``own_stop``: the chunk it contributes.
    """

    origin: tuple[int, int, int]
    size: tuple[int, int, int]
    own_start: tuple[int, int, int]
    own_stop: tuple[int, int, int]


def _chunk_bounds(length: int, pieces: int, divisor: int) -> list[int]:
    """``pieces + 1`` bounds from 0 to ``length`` (multiples of ``divisor``), near-equal chunks."""
    units = length // divisor
    return [round(units * i / pieces) * divisor for i in range(pieces + 1)]


def _axis_tiles(length: int, pieces: int, margin: int, divisor: int) -> tuple[int, list[tuple[int, int, int]]]:
    """Tile side and ``(origin, own_start, own_stop)`` per tile along one axis."""
    bounds = _chunk_bounds(length, pieces, divisor)
    side = min(length, max(b - a for a, b in zip(bounds, bounds[1:])) + 2 * margin)
    if pieces == 1:
        side = length
    tiles = [(min(max(a - margin, 0), length - side), a, b) for a, b in zip(bounds, bounds[1:])]
    return side, tiles


def plan_tiles(shape_zyx: tuple[int, int, int], divisor: int, margin: int, max_voxels: int) -> list[Tile]:
    """Cover a volume (sides multiples of ``divisor``) with tiles of at most ``max_voxels`` voxels.

    Each axis of length ``L`` is cut into ``k`` near-equal chunks (bounds multiples of
    ``divisor``); its tiles are ``min(L, max chunk + 2 m)`` long (``L`` when ``k = 1``). Of all
    cuts ``(k_z, k_y, k_x)`` whose tiles fit ``max_voxels``, the one computing the fewest voxels
    in all (``k_z k_y k_x`` times the tile's voxels) is taken, then the one with fewer tiles;
    when none fits (``max_voxels`` below the smallest useful tile), the one with the smallest
    tile. Tile origins are multiples of ``divisor``; every tile contains its chunk plus
    ``margin`` voxels on each side that lies inside the volume, so its chunk's outputs see all
    of their receptive field that the volume has. All tiles have the same size.
    """
    margin = math.ceil(margin / divisor) * divisor
    options = [[_axis_tiles(n, k, margin, divisor) for k in range(1, n // divisor + 1)] for n in shape_zyx]
    sides = [np.array([side for side, _ in axis]) for axis in options]
    pieces = [np.arange(1, len(axis) + 1) for axis in options]
    tile_voxels = sides[0][:, None, None] * sides[1][None, :, None] * sides[2][None, None, :]
    count = pieces[0][:, None, None] * pieces[1][None, :, None] * pieces[2][None, None, :]
    fits = tile_voxels <= max_voxels
    if fits.any():
        key = np.where(fits, tile_voxels * count, np.iinfo(np.int64).max)
        best = np.lexsort((count.ravel(), key.ravel()))[0]
    else:
        best = np.lexsort(((tile_voxels * count).ravel(), tile_voxels.ravel()))[0]
    chosen = [options[axis][k] for axis, k in enumerate(np.unravel_index(best, tile_voxels.shape))]
    size = int_triple(side for side, _ in chosen)
    return [Tile((z[0], y[0], x[0]), size, (z[1], y[1], x[1]), (z[2], y[2], x[2]))
            for z in chosen[0][1] for y in chosen[1][1] for x in chosen[2][1]]


MirroredMaps = tuple[tuple[int, ...], list[dict[str, Tensor]]]
"""One mirrored pass: the flipped tensor dims and the network's maps of that flipped input."""


def average_mirrored_maps(passes: Sequence[MirroredMaps]) -> list[dict[str, Tensor]]:
    """Average a network's maps over mirrored copies of its input.

    Each pass is ``(dims, maps)``: the maps of the input flipped along tensor ``dims`` (of
    ``(B, C, z, y, x)``). A tile's side is a multiple of each stride ``s``, so flipping it maps
    grid point ``p = j s + (s - 1) / 2`` to ``L - 1 - p``, another grid point, and a sphere
    centered at ``c`` to ``L - 1 - c``: the maps are flipped back along ``dims`` and the offset
    ``(c - p) / s`` changes sign along those axes; the radius is unchanged. The result holds
    the mean probability (as ``logits = logit(mean sigmoid)``), mean radius and mean offset.
    """
    device = passes[0][1][0]["offset"].device
    signs = [torch.tensor([-1.0 if d in dims else 1.0 for d in (2, 3, 4)], device=device).view(1, 3, 1, 1, 1)
             for dims, _ in passes]
    levels = []
    for level in range(len(passes[0][1])):
        probability = radius = offset = torch.zeros((), device=device)
        for (dims, maps), sign in zip(passes, signs):
            out = maps[level]
            probability = probability + torch.sigmoid(out["logits"].float()).flip(dims)
            radius = radius + out["radius"].float().flip(dims)
            offset = offset + out["offset"].float().flip(dims) * sign
        count = len(passes)
        levels.append({"logits": torch.logit(probability / count, eps=1e-7), "radius": radius / count,
                       "offset": offset / count})
    return levels
