"""Quasi-random points (numpy only, so that torch-free modules can use them).

The 3-D Halton sequence with bases 2, 3 and 5: point ``i`` (``i = 1, 2, ...``) has, on the axis
of base ``b``, the radical inverse of ``i``, ``sum_k d_k b^-(k+1)`` for the base-``b`` digits
``i = sum_k d_k b^k``. The points fill the unit cube evenly without lattice planes, and are the
same every call.
"""

from __future__ import annotations

import functools

import numpy as np

__all__ = ["unit_ball_samples"]


@functools.lru_cache(maxsize=4)
def unit_ball_samples(num_samples: int) -> np.ndarray:
    """Points of the 3-D Halton sequence (bases 2, 3, 5) mapped to ``[-1, 1]^3`` that fall in the
    unit ball, ``(Q, 3)`` float64 with ``Q ~ 0.52 * num_samples``: the ``Q`` points estimate the
    share of a ball's volume where a property holds. Quasi-random, so no lattice planes line up
    with voxel or patch faces, and the same every call (computed once and read-only; torch code
    takes a copy, ``torch.from_numpy(unit_ball_samples(n).copy())``)."""
    index = np.arange(1, num_samples + 1, dtype=np.int64)
    coordinates = []
    for base in (2, 3, 5):
        value = np.zeros(num_samples, dtype=np.float64)
        remaining, scale = index.copy(), 1.0 / base
        while (remaining > 0).any():
            value += (remaining % base).astype(np.float64) * scale
            remaining, scale = remaining // base, scale / base
        coordinates.append(value)
    cube = np.stack(coordinates, axis=-1) * 2.0 - 1.0
    ball = cube[(cube * cube).sum(-1) <= 1.0]
    ball.flags.writeable = False
    return ball
