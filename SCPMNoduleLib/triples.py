"""Three-item tuples typed as such.

``tuple(int(n) for n in shape)`` is a ``tuple[int, ...]`` to a type checker, but grid shapes,
tile sizes and world positions are ``tuple[int, int, int]`` / ``tuple[float, float, float]``:
these helpers build them from any three values and refuse any other count.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import SupportsFloat, SupportsInt

__all__ = ["float_triple", "int_triple"]


def int_triple(values: Iterable[SupportsInt]) -> tuple[int, int, int]:
    """``values`` (exactly three) as a tuple of Python ints; ``ValueError`` for another count."""
    a, b, c = (int(v) for v in values)
    return a, b, c


def float_triple(values: Iterable[SupportsFloat]) -> tuple[float, float, float]:
    """``values`` (exactly three) as a tuple of Python floats; ``ValueError`` for another count."""
    a, b, c = (float(v) for v in values)
    return a, b, c
