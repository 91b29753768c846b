"""Sphere geometry: SIoU against Monte Carlo and hand-computed values, the SIoU++ losses against the
paper's worked example (section 4.4), gradients everywhere, and sphere NMS against a plain greedy
oracle."""

from __future__ import annotations

import math

import pytest
import torch

from SCPMNoduleLib.geometry import (
    angle_score,
    distance_radius_ratio,
    sdiou_loss,
    siou_loss,
    siou_pp_loss,
    sphere_intersection_volume,
    sphere_iou,
    sphere_nms,
)

F64 = torch.float64
CASES = ("disjoint", "partial", "a_in_b", "b_in_a", "identical")


def _pairs(case: str, count: int, generator: torch.Generator) -> tuple[torch.Tensor, ...]:
    """``count`` random sphere pairs (float64) of one kind, each at least 5 % away from the
    kind's boundaries so that finite differences stay inside it."""

    def uniform(low, high):
        return low + (high - low) * torch.rand(count, generator=generator, dtype=F64)

    radius_a, radius_b = uniform(0.5, 5.0), uniform(0.5, 5.0)
    if case == "disjoint":
        distance = (radius_a + radius_b) * uniform(1.05, 2.0)
    elif case == "partial":
        low, high = (radius_a - radius_b).abs(), radius_a + radius_b
        distance = low + (high - low) * uniform(0.05, 0.95)
    elif case == "a_in_b":
        radius_a = radius_b * uniform(0.1, 0.9)
        distance = (radius_b - radius_a) * uniform(0.05, 0.95)
    elif case == "b_in_a":
        radius_b = radius_a * uniform(0.1, 0.9)
        distance = (radius_a - radius_b) * uniform(0.05, 0.95)
    else:
        radius_b, distance = radius_a.clone(), torch.zeros(count, dtype=F64)
    direction = torch.randn(count, 3, generator=generator, dtype=F64)
    direction /= direction.norm(dim=1, keepdim=True)
    center_a = 20.0 * torch.rand(count, 3, generator=generator, dtype=F64) - 10.0
    center_b = center_a + distance[:, None] * direction
    return center_a, radius_a, center_b, radius_b


def _lens_iou(center_a, radius_a, center_b, radius_b) -> float:
    """Plain-Python SIoU with the textbook lens volume pi (s-d)^2 (d^2 + 2ds - 3t^2) / (12d)."""
    d = math.dist(center_a, center_b)
    s, t = radius_a + radius_b, radius_a - radius_b
    if d >= s:
        intersection = 0.0
    elif d <= abs(t):
        intersection = 4.0 / 3.0 * math.pi * min(radius_a, radius_b) ** 3
    else:
        intersection = math.pi * (s - d) ** 2 * (d * d + 2 * d * s - 3 * t * t) / (12 * d)
    union = 4.0 / 3.0 * math.pi * (radius_a**3 + radius_b**3) - intersection
    return intersection / union if union > 0 else 0.0


def _unit_ball_points() -> torch.Tensor:
    """About 34,000 quasi-random points uniform in the unit ball: the 2^16 scrambled Sobol points
    of the cube [-1, 1]^3 that fall inside it (several times more even than pseudo-random ones)."""
    cube = (
        2.0 * torch.quasirandom.SobolEngine(3, scramble=True, seed=0).draw(2**16, dtype=F64) - 1.0
    )
    return cube[(cube * cube).sum(dim=1) <= 1.0]


def _monte_carlo_iou(center_a, radius_a, center_b, radius_b, unit_ball_points) -> torch.Tensor:
    """IoU estimated from points ``x = A + r^a p`` uniform in each sphere A: the fraction f of them
    inside B, ``|A - B + r^a p|^2 <= (r^b)^2``, gives the intersection f V_a."""
    offset = center_a - center_b  # (pairs, 3)
    squared = (
        (offset * offset).sum(dim=1)
        + 2.0 * radius_a * (unit_ball_points @ offset.T)
        + radius_a**2 * (unit_ball_points * unit_ball_points).sum(dim=1, keepdim=True)
    )
    inside_b = (squared <= radius_b**2).to(F64).mean(dim=0)
    volume_a, volume_b = radius_a**3, radius_b**3  # the common factor 4 pi / 3 cancels
    intersection = inside_b * volume_a
    return intersection / (volume_a + volume_b - intersection)


def test_sphere_iou_matches_monte_carlo_in_every_case():
    generator = torch.Generator().manual_seed(1)
    unit_ball_points = _unit_ball_points()
    for case in CASES:
        pairs = _pairs(case, 40, generator)
        error = sphere_iou(*pairs) - _monte_carlo_iou(*pairs, unit_ball_points)
        assert error.abs().max() < 0.01, case


def test_sphere_iou_against_hand_computed_values():
    origin = torch.zeros(3, dtype=F64)

    def at(z):
        return torch.tensor([0.0, 0.0, z], dtype=F64)

    def r(value):
        return torch.tensor(value, dtype=F64)

    # Equal radii r at d = r: lens volume pi (2r - r)^2 (r^2 + 4 r^2) / (12 r) = 5 pi r^3 / 12,
    # union 8 pi r^3 / 3 - 5 pi r^3 / 12 = 27 pi r^3 / 12, SIoU = 5 / 27, for every r.
    for radius in (0.3, 2.0, 7.0):
        assert sphere_iou(origin, r(radius), at(radius), r(radius)).item() == pytest.approx(
            5 / 27, rel=1e-12
        )
        volume = sphere_intersection_volume(origin, r(radius), at(radius), r(radius)).item()
        assert volume == pytest.approx(5 * math.pi * radius**3 / 12, rel=1e-12)
    assert sphere_iou(at(4.0), r(2.5), at(4.0), r(2.5)).item() == 1.0
    assert sphere_iou(origin, r(1.0), at(3.0), r(2.0)).item() == 0.0  # external tangency
    assert sphere_iou(origin, r(1.0), at(3.5), r(2.0)).item() == 0.0
    # Containment either way, internal tangency included: (small / large)^3.
    for d in (0.0, 1.0, 2.0):
        assert sphere_iou(origin, r(1.0), at(d), r(3.0)).item() == pytest.approx(1 / 27, rel=1e-12)
        assert sphere_iou(origin, r(3.0), at(d), r(1.0)).item() == pytest.approx(1 / 27, rel=1e-12)
        volume = sphere_intersection_volume(origin, r(3.0), at(d), r(1.0)).item()
        assert volume == pytest.approx(4 * math.pi / 3, rel=1e-12)


def test_sphere_iou_is_symmetric_and_broadcasts():
    generator = torch.Generator().manual_seed(2)
    pairs = [_pairs(case, 20, generator) for case in CASES]
    center_a, radius_a, center_b, radius_b = (torch.cat(parts) for parts in zip(*pairs))
    forward = sphere_iou(center_a, radius_a, center_b, radius_b)
    torch.testing.assert_close(
        forward, sphere_iou(center_b, radius_b, center_a, radius_a), rtol=1e-12, atol=0
    )
    expected = torch.tensor(
        [
            _lens_iou(*(x[i].tolist() for x in (center_a, radius_a, center_b, radius_b)))
            for i in range(len(radius_a))
        ],
        dtype=F64,
    )
    torch.testing.assert_close(forward, expected, rtol=1e-9, atol=1e-12)

    grid = sphere_iou(
        center_a[:6, None], radius_a[:6, None], center_b[None, :7], radius_b[None, :7]
    )
    assert grid.shape == (6, 7)
    assert grid[4, 2].item() == pytest.approx(
        _lens_iou(
            center_a[4].tolist(), radius_a[4].item(), center_b[2].tolist(), radius_b[2].item()
        ),
        rel=1e-9,
    )


def test_zero_radii_give_defined_values():
    origin = torch.zeros(3)
    one = torch.tensor([1.0, 0.0, 0.0])
    zero, unit = torch.tensor(0.0), torch.tensor(1.0)
    assert sphere_iou(origin, zero, origin, zero).item() == 0.0
    assert sphere_iou(origin, zero, one, zero).item() == 0.0
    assert sphere_iou(origin, zero, origin, unit).item() == 0.0  # a point inside a ball
    assert distance_radius_ratio(origin, zero, origin, zero).item() == 0.0
    assert distance_radius_ratio(origin, zero, one, zero).item() == 1.0


def _siou_pp_paper(center_a, radius_a, center_b, radius_b):
    return siou_pp_loss(center_a, radius_a, center_b, radius_b, mode="paper")


def _siou_pp_continuous(center_a, radius_a, center_b, radius_b):
    return siou_pp_loss(center_a, radius_a, center_b, radius_b, mode="continuous")


LOSSES = (sphere_iou, siou_loss, sdiou_loss, _siou_pp_paper, _siou_pp_continuous)


@pytest.mark.parametrize("function", (sphere_iou, _siou_pp_paper, _siou_pp_continuous))
@pytest.mark.parametrize("case", ("disjoint", "partial", "a_in_b", "b_in_a"))
def test_gradcheck(function, case):
    inputs = tuple(x.requires_grad_() for x in _pairs(case, 6, torch.Generator().manual_seed(3)))
    assert torch.autograd.gradcheck(function, inputs)


def _degenerate_pairs(dtype):
    """(center_a, radius_a, center_b, radius_b) rows at every branch boundary and degeneracy."""
    rows = [
        (0.0, 1.0, 3.0, 2.0),  # external tangency
        (0.0, 1.5, 3.0, 1.5),  # external tangency, section 4.4's radii
        (0.0, 1.0, 2.0, 3.0),  # internal tangency
        (0.0, 2.0, 0.0, 2.0),  # identical spheres (coincident centers)
        (0.0, 1.0, 0.0, 3.0),  # coincident centers, different radii
        (0.0, 1e-12, 0.5, 1.0),  # vanishing radius inside a ball
        (0.0, 1e-12, 1.0, 1.0),  # vanishing radius on a surface
        (0.0, 1e-12, 5.0, 1.0),  # vanishing radius far away
        (0.0, 0.0, 0.5, 1.0),  # zero radius inside a ball
        (0.0, 0.0, 1.0, 1.0),  # zero radius on a surface
        (0.0, 0.0, 2.0, 0.0),  # two points
        (0.0, 0.0, 0.0, 0.0),  # two coincident points
    ]
    table = torch.tensor(rows, dtype=dtype)
    zeros = torch.zeros(len(rows), 2, dtype=dtype)
    center_a = torch.cat([zeros, table[:, :1]], dim=1).requires_grad_()
    center_b = torch.cat([zeros, table[:, 2:3]], dim=1).requires_grad_()
    return (
        center_a,
        table[:, 1].clone().requires_grad_(),
        center_b,
        table[:, 3].clone().requires_grad_(),
    )


@pytest.mark.parametrize("dtype", (torch.float32, F64))
@pytest.mark.parametrize(
    "function", LOSSES + (sphere_intersection_volume, distance_radius_ratio, angle_score)
)
def test_values_and_gradients_are_finite_at_degenerate_pairs(function, dtype):
    inputs = _degenerate_pairs(dtype)
    value = function(*inputs)
    gradients = torch.autograd.grad(value.sum(), inputs)
    assert torch.isfinite(value).all()
    for gradient in gradients:
        assert torch.isfinite(gradient).all()


def _on_z_axis(z: torch.Tensor) -> torch.Tensor:
    return torch.stack([torch.zeros_like(z), torch.zeros_like(z), z], dim=-1)


def test_section_4_4_example_in_both_modes():
    """Both radii 1.5, sphere A at (0, 0, z) moving toward sphere B at the origin (paper 4.4)."""
    # Hand-computed: R_DR = d / (d + 3); in the overlap, d = 1.5 = r gives SIoU = 5/27 (see above),
    # cos phi = (2.25 + 2.25 - 2.25) / 4.5 = 1/2, eta = 1/3, loss 1 + 1/3 - 5/27 + 1/3 = 40/27.
    z = torch.tensor([-8.0, -5.0, -3.0 - 1e-9, -3.0, -3.0 + 1e-9, -1.5, 0.0], dtype=F64)
    paper = [8 / 11, 5 / 8, 1 / 2, 5 / 2, 5 / 2, 40 / 27, 0.0]
    continuous = [2 + 8 / 11, 2 + 5 / 8, 5 / 2, 5 / 2, 5 / 2, 40 / 27, 0.0]
    radius = torch.tensor(1.5, dtype=F64)
    origin = torch.zeros(3, dtype=F64)
    got_paper = siou_pp_loss(_on_z_axis(z), radius, origin, radius, mode="paper")
    got_continuous = siou_pp_loss(_on_z_axis(z), radius, origin, radius)
    torch.testing.assert_close(got_paper, torch.tensor(paper, dtype=F64), rtol=0, atol=1e-4)
    torch.testing.assert_close(
        got_continuous, torch.tensor(continuous, dtype=F64), rtol=0, atol=1e-4
    )
    # Along the whole path the continuous loss pulls A toward B: dL/dz < 0 for every z < 0.
    path = torch.linspace(-8.0, -0.01, 800, dtype=F64).requires_grad_()
    siou_pp_loss(_on_z_axis(path), radius, origin, radius).sum().backward()
    assert (path.grad < 0).all()


@pytest.mark.parametrize("dtype", (torch.float32, F64))
@pytest.mark.parametrize("radii", ((1.0, 2.0), (1.5, 1.5), (4.0, 0.5)))
def test_continuous_mode_is_continuous_at_external_tangency_and_paper_mode_drops_by_2(radii, dtype):
    radius_a, radius_b = (torch.tensor(r, dtype=dtype) for r in radii)
    touching = sum(radii)
    step = 1e-6 if dtype == torch.float32 else 1e-9
    centers = _on_z_axis(torch.tensor([touching - step, touching + step], dtype=dtype))
    origin = torch.zeros(3, dtype=dtype)
    inside, outside = siou_pp_loss(centers, radius_a, origin, radius_b).tolist()
    assert abs(outside - inside) < 1e-3
    inside, outside = siou_pp_loss(centers, radius_a, origin, radius_b, mode="paper").tolist()
    assert inside - outside == pytest.approx(2.0, abs=1e-2 if dtype == torch.float32 else 1e-3)


@pytest.mark.parametrize("radii", ((1.0, 2.0), (1.5, 1.5), (4.0, 0.5), (0.0, 1.0)))
def test_continuous_mode_never_decreases_as_spheres_separate(radii):
    radius_a, radius_b = (torch.tensor(r, dtype=F64) for r in radii)
    direction = torch.tensor([0.48, -0.6, 0.64], dtype=F64)  # unit length, oblique
    distance = torch.linspace(0.0, 4.0 * (sum(radii) + 1.0), 20_001, dtype=F64)
    loss = siou_pp_loss(
        distance[:, None] * direction, radius_a, torch.zeros(3, dtype=F64), radius_b
    )
    assert loss[0].item() == pytest.approx(
        1.0 - sphere_iou(torch.zeros(3), radius_a, torch.zeros(3), radius_b).item()
    )
    assert (loss.diff() >= -1e-12).all()
    assert loss[-1] > 2.5


def test_identical_spheres_have_zero_loss_in_every_form():
    generator = torch.Generator().manual_seed(4)
    pairs = _pairs("identical", 10, generator)
    for function in LOSSES[1:]:
        torch.testing.assert_close(function(*pairs), torch.zeros(10, dtype=F64), rtol=0, atol=1e-12)


def test_disjoint_spheres_losses_follow_equations_11_and_13():
    generator = torch.Generator().manual_seed(5)
    center_a, radius_a, center_b, radius_b = _pairs("disjoint", 10, generator)
    d = (center_a - center_b).norm(dim=1)
    ratio = d / (d + radius_a + radius_b)
    torch.testing.assert_close(
        siou_loss(center_a, radius_a, center_b, radius_b), torch.ones(10, dtype=F64)
    )
    torch.testing.assert_close(sdiou_loss(center_a, radius_a, center_b, radius_b), 1.0 + ratio)
    torch.testing.assert_close(
        angle_score(center_a, radius_a, center_b, radius_b), torch.zeros(10, dtype=F64)
    )


def test_siou_pp_rejects_unknown_mode():
    one = torch.ones(())
    with pytest.raises(ValueError, match="mode"):
        siou_pp_loss(torch.zeros(3), one, torch.zeros(3), one, mode="smooth")


def _greedy_nms_oracle(centers, radii, scores, iou_threshold, distance_ratio_threshold):
    """Textbook greedy NMS, one sphere at a time, in plain Python."""
    order = sorted(range(len(scores)), key=lambda i: -scores[i])
    kept = []
    for j in order:
        if all(
            _lens_iou(centers[i], radii[i], centers[j], radii[j]) <= iou_threshold
            and math.dist(centers[i], centers[j])
            / (math.dist(centers[i], centers[j]) + radii[i] + radii[j])
            >= distance_ratio_threshold
            for i in kept
        ):
            kept.append(j)
    return kept


def _clustered_spheres(generator, clusters=20, per_cluster=10):
    """Spheres in clusters (many overlaps and suppression chains), float64, distinct scores."""
    seeds = 100.0 * torch.rand(clusters, 3, generator=generator, dtype=F64)
    jitter = 3.0 * torch.randn(clusters, per_cluster, 3, generator=generator, dtype=F64)
    centers = (seeds[:, None] + jitter).reshape(-1, 3)
    radii = 1.5 + 6.5 * torch.rand(len(centers), generator=generator, dtype=F64)
    return centers, radii, torch.randperm(len(centers), generator=generator).to(F64)


@pytest.mark.parametrize(
    "iou_threshold, distance_ratio_threshold, block_size",
    ((0.1, 1 / 3, 256), (0.1, 1 / 3, 16), (0.0, 0.0, 7), (0.5, 0.6, 32), (1.0, 0.2, 256)),
)
def test_sphere_nms_matches_plain_greedy_oracle(
    iou_threshold, distance_ratio_threshold, block_size
):
    centers, radii, scores = _clustered_spheres(torch.Generator().manual_seed(6))
    kept = sphere_nms(
        centers, radii, scores, iou_threshold, distance_ratio_threshold, block_size=block_size
    )
    expected = _greedy_nms_oracle(
        centers.tolist(), radii.tolist(), scores.tolist(), iou_threshold, distance_ratio_threshold
    )
    assert kept.dtype == torch.int64
    assert kept.tolist() == expected
    assert 0 < len(expected) < len(scores)


def test_sphere_nms_removes_overlapping_keeps_disjoint_and_sorts_by_score():
    centers = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [40.0, 0.0, 0.0], [0.0, 40.0, 0.0]])
    radii = torch.tensor([5.0, 5.0, 3.0, 2.0])
    # Index 1 outscores index 0, which overlaps it (SIoU 0.74): 0 goes, the disjoint ones stay.
    kept = sphere_nms(centers, radii, torch.tensor([0.6, 0.9, 0.3, 0.8]))
    assert kept.tolist() == [1, 3, 2]
    kept = sphere_nms(centers, radii, torch.tensor([0.9, 0.6, 0.3, 0.8]))
    assert kept.tolist() == [0, 3, 2]


def test_sphere_nms_removes_a_small_sphere_inside_a_large_one_by_distance_ratio():
    centers = torch.tensor([[0.0, 0.0, 0.0], [0.0, 3.0, 0.0]])
    radii = torch.tensor([10.0, 2.0])  # SIoU = (2/10)^3 = 0.008, R_DR = 3 / 15 = 0.2
    scores = torch.tensor([0.9, 0.8])
    assert sphere_nms(centers, radii, scores).tolist() == [0]
    assert sphere_nms(centers, radii, scores, distance_ratio_threshold=0.0).tolist() == [0, 1]


def test_sphere_nms_handles_empty_and_single_inputs():
    empty = sphere_nms(torch.zeros(0, 3), torch.zeros(0), torch.zeros(0))
    assert empty.dtype == torch.int64 and empty.shape == (0,)
    assert sphere_nms(torch.ones(1, 3), torch.ones(1), torch.ones(1)).tolist() == [0]
    # Coincident points (zero radii) suppress each other through R_DR = 0.
    assert sphere_nms(
        torch.zeros(3, 3), torch.zeros(3), torch.tensor([0.1, 0.3, 0.2])
    ).tolist() == [1]


def test_sphere_nms_rejects_bad_arguments():
    with pytest.raises(ValueError, match="centers"):
        sphere_nms(torch.zeros(4, 2), torch.ones(4), torch.ones(4))
    with pytest.raises(ValueError, match="threshold"):
        sphere_nms(torch.zeros(4, 3), torch.ones(4), torch.ones(4), distance_ratio_threshold=1.0)
