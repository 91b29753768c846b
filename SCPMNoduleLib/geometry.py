"""Sphere geometry: intersection, SIoU, the SIoU++ loss family and sphere NMS (paper 3.3, 3.5).

A sphere is a center ``(..., 3)`` and a radius ``(...)`` (``>= 0``), in any one unit (the model
uses input voxels, which are millimetres after resampling). Every pairwise function broadcasts its
four arguments against each other like ``torch`` operators do, works in float32 and float64, and
returns one value per pair, shape ``(...)``, with no reduction.

Notation for a pair: radii ``a = r^a``, ``b = r^b``, center distance ``d = ||A - B||_2`` (eq. 3),
``s = a + b`` and ``t = a - b``. Three regimes:

* disjoint, ``d >= s`` (external tangency included): the spheres share no volume;
* containment, ``d <= |t|`` (internal tangency and identical spheres included): the smaller
  sphere lies inside the larger one. The paper's cap formula (eq. 4-9) is undefined here (its
  cosines leave [-1, 1]); the intersection is the smaller sphere's volume;
* partial overlap, ``|t| < d < s``: two spherical caps (eq. 7-9).

The three branches meet continuously. Every function is differentiable with finite gradients
everywhere: each branch is evaluated on inputs replaced by harmless values (for example ``d = 1``)
where the branch is not selected, and ``torch.where`` then picks the branch, so an unused branch
never divides by zero. At a branch boundary the gradient is the one-sided derivative of the branch
that owns the boundary.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "SIOU_PP_MODES",
    "angle_score",
    "distance_radius_ratio",
    "sdiou_loss",
    "siou_loss",
    "siou_pp_loss",
    "sphere_intersection_volume",
    "sphere_iou",
    "sphere_nms",
]

SIOU_PP_MODES = ("continuous", "paper")

_ARCCOS_MARGIN_EPS = 16.0
"""The angle score clamps its arccos argument to ``[-1 + m, 1 - m]`` with ``m`` this many machine
epsilons of the dtype: arccos has an infinite slope at +-1, and the clamp bounds the gradient (about
500 in float32) while changing eta by less than 1e-3 (float32) or 1e-7 (float64)."""

_PRUNE_MARGIN = 1.001
"""sphere_nms only tests pairs whose centers are closer than the largest distance at which the
criterion can fire, widened by this factor so that rounding never drops a pair."""


def _distance(center_a: Tensor, center_b: Tensor) -> Tensor:
    """Euclidean distance over the last axis with a finite (zero) gradient at coincident points."""
    diff = center_a - center_b
    squared = (diff * diff).sum(dim=-1)
    positive = squared > 0
    return torch.where(positive, torch.where(positive, squared, 1.0).sqrt(), 0.0)


def _pair(
    center_a: Tensor, radius_a: Tensor, center_b: Tensor, radius_b: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """Radii and center distance of each pair, broadcast to one common shape ``(...)``."""
    return torch.broadcast_tensors(radius_a, radius_b, _distance(center_a, center_b))


def _ball_volume(radius: Tensor) -> Tensor:
    """Volume of a ball, 4/3 pi r^3."""
    return (4.0 * math.pi / 3.0) * radius**3


def _cap_volume(radius: Tensor, height: Tensor) -> Tensor:
    """Volume of a spherical cap of the given height: pi r h^2 - pi h^3 / 3 (the terms of eq. 9)."""
    return math.pi * radius * height**2 - math.pi * height**3 / 3.0


def _intersection(a: Tensor, b: Tensor, d: Tensor) -> Tensor:
    """Volume of the intersection of two balls of radii ``a``, ``b`` whose centers are ``d`` apart.

    Partial overlap: the plane of the intersection circle cuts a cap of height
    ``h_a = a (1 - cos phi^a) = (s - d)(d - t) / (2 d)`` off ball A and
    ``h_b = b (1 - cos phi^b) = (s - d)(d + t) / (2 d)`` off ball B (eq. 4, 5, 7, 8, with the
    cosines written out), and the intersection is the sum of the two caps (eq. 9).
    """
    s, t = a + b, a - b
    disjoint = d >= s
    contained = d <= t.abs()
    partial = ~disjoint & ~contained
    d_partial = torch.where(partial, d, 1.0)
    gap = s - d_partial
    height_a = gap * (d_partial - t) / (2.0 * d_partial)
    height_b = gap * (d_partial + t) / (2.0 * d_partial)
    lens = _cap_volume(a, height_a) + _cap_volume(b, height_b)
    inner = _ball_volume(torch.minimum(a, b))
    return torch.where(contained, inner, torch.where(disjoint, 0.0, lens))


def _iou(a: Tensor, b: Tensor, d: Tensor) -> Tensor:
    """SIoU of the pair (see :func:`sphere_iou`), computed in units of ``a + b``."""
    scale = a + b
    scale = torch.where(scale > 0, scale, 1.0)
    a, b, d = a / scale, b / scale, d / scale
    intersection = _intersection(a, b, d)
    union = _ball_volume(a) + _ball_volume(b) - intersection
    nonempty = union > 0
    return torch.where(nonempty, intersection / torch.where(nonempty, union, 1.0), 0.0)


def _distance_ratio(a: Tensor, b: Tensor, d: Tensor) -> Tensor:
    """R_DR of the pair (see :func:`distance_radius_ratio`)."""
    denominator = d + a + b
    positive = denominator > 0
    return torch.where(positive, d / torch.where(positive, denominator, 1.0), 0.0)


def _angle_score(a: Tensor, b: Tensor, d: Tensor) -> Tensor:
    """eta of the pair (see :func:`angle_score`)."""
    crossing = ((a - b).abs() < d) & (d <= a + b)
    a, b, d = (torch.where(crossing, x, 1.0) for x in (a, b, d))
    margin = _ARCCOS_MARGIN_EPS * torch.finfo(d.dtype).eps
    cos_angle = ((a * a + b * b - d * d) / (2.0 * a * b)).clamp(-1.0 + margin, 1.0 - margin)
    return torch.where(crossing, torch.arccos(cos_angle) / math.pi, 0.0)


def sphere_intersection_volume(
    center_a: Tensor, radius_a: Tensor, center_b: Tensor, radius_b: Tensor
) -> Tensor:
    """Volume shared by two balls, ``|S^a ∩ S^b|`` (eq. 9 extended to every case).

    * ``d >= a + b`` (disjoint or externally tangent): 0;
    * ``d <= |a - b|`` (containment, identical balls): ``4/3 pi min(a, b)^3``;
    * otherwise the two caps of eq. 9, ``pi a h_a^2 - pi h_a^3/3 + pi b h_b^2 - pi h_b^3/3`` with
      ``h_a = (a + b - d)(d - a + b) / (2d)`` and ``h_b = (a + b - d)(d + a - b) / (2d)``.

    Args:
        center_a, center_b: centers, shape ``(..., 3)``.
        radius_a, radius_b: radii ``>= 0``, shape ``(...)``.

    Returns:
        The volume in the cube of the input unit, shape ``(...)`` (the broadcast shape).
    """
    return _intersection(*_pair(center_a, radius_a, center_b, radius_b))


def sphere_iou(center_a: Tensor, radius_a: Tensor, center_b: Tensor, radius_b: Tensor) -> Tensor:
    """Sphere intersection over union, ``SIoU = |S^a ∩ S^b| / |S^a ∪ S^b|`` (eq. 2).

    The union is ``4/3 pi (a^3 + b^3) - |S^a ∩ S^b|`` (eq. 10). SIoU is 1 for identical spheres,
    0 for disjoint or externally tangent ones, ``(min(a, b) / max(a, b))^3`` under containment, and
    symmetric in its two spheres. SIoU is scale-free, so it is computed with all lengths divided by
    ``a + b``: no volume under- or overflows however small or large the radii. When both radii are
    0 the union is empty and SIoU is defined as 0 (two points share no volume), which is also the
    limit along any path with ``d > 0``.

    Args:
        center_a, center_b: centers, shape ``(..., 3)``.
        radius_a, radius_b: radii ``>= 0``, shape ``(...)``.

    Returns:
        SIoU in [0, 1], shape ``(...)``.
    """
    return _iou(*_pair(center_a, radius_a, center_b, radius_b))


def distance_radius_ratio(
    center_a: Tensor, radius_a: Tensor, center_b: Tensor, radius_b: Tensor
) -> Tensor:
    """Distance-radius ratio ``R_DR = d / (d + a + b)`` (eq. 12), in [0, 1).

    0 when the centers coincide (also when both radii are 0 there, where the fraction is 0/0),
    increasing in ``d``, tending to 1 as the spheres move apart.

    Args:
        center_a, center_b: centers, shape ``(..., 3)``.
        radius_a, radius_b: radii ``>= 0``, shape ``(...)``.

    Returns:
        R_DR, shape ``(...)``.
    """
    return _distance_ratio(*_pair(center_a, radius_a, center_b, radius_b))


def angle_score(center_a: Tensor, radius_a: Tensor, center_b: Tensor, radius_b: Tensor) -> Tensor:
    """Angle score ``eta = arccos(cos phi^ab) / pi`` (eq. 14), in [0, 1].

    ``cos phi^ab = (a^2 + b^2 - d^2) / (2 a b)`` (eq. 6) is the cosine of the angle, at a point of
    the intersection circle, between the radii to the two centers. Where the surfaces cross,
    ``|a - b| < d <= a + b``, eta rises from 0 at internal tangency to 1 at external tangency.
    Disjoint spheres have eta = 0 (eq. 14); under containment the cosine leaves [-1, 1] and eta is
    set to 0, its value at internal tangency, so that eta is continuous there.

    Args:
        center_a, center_b: centers, shape ``(..., 3)``.
        radius_a, radius_b: radii ``>= 0``, shape ``(...)``.

    Returns:
        eta, shape ``(...)``.
    """
    return _angle_score(*_pair(center_a, radius_a, center_b, radius_b))


def siou_loss(center_a: Tensor, radius_a: Tensor, center_b: Tensor, radius_b: Tensor) -> Tensor:
    """``L_SIoU = 1 - SIoU`` (eq. 11), per pair, shape ``(...)``; 1 for disjoint spheres."""
    return 1.0 - sphere_iou(center_a, radius_a, center_b, radius_b)


def sdiou_loss(center_a: Tensor, radius_a: Tensor, center_b: Tensor, radius_b: Tensor) -> Tensor:
    """``L_SDIoU = 1 + R_DR - SIoU`` (eq. 13), per pair, shape ``(...)``."""
    a, b, d = _pair(center_a, radius_a, center_b, radius_b)
    return 1.0 + _distance_ratio(a, b, d) - _iou(a, b, d)


def siou_pp_loss(
    center_a: Tensor, radius_a: Tensor, center_b: Tensor, radius_b: Tensor, mode: str = "continuous"
) -> Tensor:
    """The SIoU++ loss (eq. 15), per pair.

    ``L = 1 + R_DR - SIoU + eta`` when ``d <= a + b``; for disjoint spheres, ``d > a + b``:

    * ``mode="paper"``: ``L = R_DR``, eq. 15 as printed. As the spheres separate, the overlapping
      branch tends to ``2 + R_DR`` (SIoU -> 0, eta -> 1), so the loss drops by 2 at external
      tangency and its gradient there pushes a touching prediction away from its target. (The
      paper's Algorithm 1 puts exact tangency in the disjoint branch; eq. 14-15 put it in the
      overlapping one, which is what this follows.)
    * ``mode="continuous"`` (default): ``L = 2 + R_DR``. The loss is then continuous everywhere and
      non-decreasing in ``d`` for fixed radii (R_DR and eta increase with ``d``, SIoU decreases),
      so gradient descent always pulls the prediction toward its target.

    Both modes give 0 for identical spheres and agree wherever the spheres overlap or touch.

    Args:
        center_a, center_b: centers, shape ``(..., 3)``.
        radius_a, radius_b: radii ``>= 0``, shape ``(...)``.
        mode: ``"continuous"`` or ``"paper"``.

    Returns:
        The loss, shape ``(...)``.
    """
    if mode not in SIOU_PP_MODES:
        raise ValueError(f"siou_pp_loss mode must be one of {SIOU_PP_MODES}, not {mode!r}")
    a, b, d = _pair(center_a, radius_a, center_b, radius_b)
    ratio = _distance_ratio(a, b, d)
    overlapping = 1.0 + ratio - _iou(a, b, d) + _angle_score(a, b, d)
    disjoint = ratio + (2.0 if mode == "continuous" else 0.0)
    return torch.where(d > a + b, disjoint, overlapping)


def _candidate_pairs(
    centers: Tensor, radii: Tensor, reach: float, block_size: int
) -> tuple[Tensor, Tensor]:
    """Pairs ``(i, j)``, ``i < j``, with ``||c_i - c_j|| <= reach (r_i + r_j)``: two (E,) tensors.

    Sweep and prune: the spheres are sorted along the axis where the centers spread most, and a
    block of ``block_size`` consecutive spheres is compared (one distance matrix) only with the
    following spheres whose coordinate on that axis is within the largest possible reach of the
    block. Memory is ``O(block_size * window)``, time ``O(N * window)``.
    """
    n = centers.shape[0]
    axis = int((centers.amax(dim=0) - centers.amin(dim=0)).argmax())
    sweep = torch.argsort(centers[:, axis])
    centers, reach_radii = centers[sweep], reach * radii[sweep]
    coordinate = centers[:, axis].contiguous()
    block_radius = (
        torch.nn.functional.pad(reach_radii, (0, -n % block_size)).view(-1, block_size).amax(dim=1)
    )
    block_last = (
        torch.arange(block_size, n + block_size, block_size, device=centers.device).clamp_max(n) - 1
    )
    block_reach = coordinate[block_last] + block_radius + reach_radii.max()
    ends = torch.searchsorted(coordinate, block_reach, right=True).tolist()
    first, second = [], []
    for start, end in zip(range(0, n, block_size), ends):
        stop = min(n, start + block_size)
        distance = torch.cdist(
            centers[start:stop], centers[start:end], compute_mode="donot_use_mm_for_euclid_dist"
        )
        near = distance <= reach_radii[start:stop, None] + reach_radii[None, start:end]
        rows, cols = near.triu_(diagonal=1).nonzero(as_tuple=True)
        first.append(rows + start)
        second.append(cols + start)
    index_a, index_b = sweep[torch.cat(first)], sweep[torch.cat(second)]
    return torch.minimum(index_a, index_b), torch.maximum(index_a, index_b)


def _greedy_keep(n: int, source: Tensor, target: Tensor) -> Tensor:
    """Greedy NMS on a suppression graph: ``keep`` (N,) bool.

    Items are in priority order; an edge ``source < target`` means "if ``source`` is kept,
    ``target`` is removed". Greedy NMS keeps an item iff none of its kept predecessors suppresses
    it. Instead of visiting the items one by one, rounds of whole-tensor updates settle every item
    whose predecessors are all settled: an open item with a kept predecessor is removed, an open
    item whose predecessors are all removed is kept. Each round settles at least the first open
    item: the rounds number about the length of the longest suppression chain (a handful for
    detections; N/2 at worst, for spheres in a row each suppressing only the next), each costing
    ``O(edges)``; edges that can no longer matter are dropped as the rounds go.
    """
    kept = torch.zeros(n, dtype=torch.bool, device=source.device)
    removed = torch.zeros_like(kept)
    while not bool((kept | removed).all()):
        live = ~removed[source] & ~(kept | removed)[target]
        source, target = source[live], target[live]
        removed[target[kept[source]]] = True
        open_ = ~(kept | removed)
        blocked = torch.zeros_like(kept)
        blocked[target[open_[source]]] = True
        kept |= open_ & ~blocked
    return kept


@torch.no_grad()
def sphere_nms(
    centers: Tensor,
    radii: Tensor,
    scores: Tensor,
    iou_threshold: float = 0.1,
    distance_ratio_threshold: float = 1.0 / 3.0,
    block_size: int = 256,
) -> Tensor:
    """Greedy non-maximum suppression of spheres by SIoU and distance-radius ratio (paper 3.5).

    Spheres are visited in descending score (ties: lower index first); each is kept unless a kept
    sphere ``i`` suppresses it, and sphere ``i`` suppresses sphere ``j`` when

        ``SIoU(i, j) > iou_threshold``  or  ``R_DR(i, j) < distance_ratio_threshold``.

    ``R_DR = d / (d + r_i + r_j) < t`` is ``d < t / (1 - t) (r_i + r_j)``: the default ``t = 1/3``
    removes a sphere whose center is closer than the mean of the two radii (for equal spheres: each
    center inside the other), which SIoU alone misses when a small sphere sits inside a large one.
    The default SIoU threshold 0.1 removes two equal spheres whose centers are closer than about
    1.25 radii.

    The criterion is evaluated only on pairs close enough for it to fire (found by sweep and prune
    in blocks, so memory stays bounded for large N), and the greedy order is resolved with
    whole-tensor rounds rather than a Python loop over spheres.

    Args:
        centers: ``(N, 3)`` sphere centers.
        radii: ``(N,)`` radii ``>= 0``, same unit as the centers.
        scores: ``(N,)`` scores; higher is better.
        iou_threshold: SIoU above which the lower-scoring sphere is removed, in [0, 1].
        distance_ratio_threshold: R_DR below which the lower-scoring sphere is removed, in [0, 1).
        block_size: rows per distance block (memory ``~ block_size * N`` at worst).

    Returns:
        ``(K,)`` int64 indices of the kept spheres into the inputs, in descending score order.
    """
    n = radii.numel()
    if centers.shape != (n, 3) or radii.shape != (n,) or scores.shape != (n,):
        raise ValueError(
            f"sphere_nms needs centers (N, 3), radii (N,), scores (N,); got "
            f"{tuple(centers.shape)}, {tuple(radii.shape)}, {tuple(scores.shape)}"
        )
    if not 0.0 <= iou_threshold <= 1.0 or not 0.0 <= distance_ratio_threshold < 1.0:
        raise ValueError(
            f"sphere_nms needs iou_threshold in [0, 1] and distance_ratio_threshold in [0, 1); got "
            f"{iou_threshold} and {distance_ratio_threshold}"
        )
    if block_size < 1:
        raise ValueError(f"sphere_nms needs block_size >= 1, got {block_size}")
    order = torch.sort(scores, descending=True, stable=True).indices
    if n <= 1:
        return order
    centers, radii = centers[order], radii[order]
    reach = _PRUNE_MARGIN * max(1.0, distance_ratio_threshold / (1.0 - distance_ratio_threshold))
    source, target = _candidate_pairs(centers, radii, reach, block_size)
    a, b, d = _pair(centers[source], radii[source], centers[target], radii[target])
    suppresses = (_iou(a, b, d) > iou_threshold) | (
        _distance_ratio(a, b, d) < distance_ratio_threshold
    )
    keep = _greedy_keep(n, source[suppresses], target[suppresses])
    return order[keep.nonzero().squeeze(1)]
