"""Center-points matching, checked against a brute-force numpy oracle of the documented rules."""

import numpy as np
import pytest
import torch

from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.matching import MatchingConfig, match_center_points, sphere_fraction_inside_patch

PATCH = (64, 64, 64)
STRIDES = (4, 8)


def _points(stride, patch=PATCH):
    """Input-voxel coordinates of a level's points, (P, 3), row-major z y x, from the definition."""
    axes = [np.arange(n // stride) * stride + (stride - 1) / 2 for n in patch]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def _grid_index(stride, patch=PATCH):
    axes = [np.arange(n // stride) for n in patch]
    return np.stack(np.meshgrid(*axes, indexing="ij"), axis=-1).reshape(-1, 3)


def _nearest(center, points, k=7):
    distance = np.linalg.norm(points - center, axis=1)
    return np.argsort(distance, kind="stable")[:k], distance


def _match(centers, radii, config=None, patch=PATCH):
    return match_center_points(
        [torch.tensor(centers, dtype=torch.float64).reshape(-1, 3)],
        [torch.tensor(radii, dtype=torch.float64).reshape(-1)],
        patch,
        STRIDES,
        config,
    )


def _flat(level):
    return (
        level.labels[0].reshape(-1).numpy(),
        level.radius[0].reshape(-1).numpy(),
        level.offset[0].reshape(3, -1).T.numpy(),
        level.nodule_index[0].reshape(-1).numpy(),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_isolated_nodule_gets_exactly_its_k_nearest_points_and_they_decode_to_it(seed):
    rng = np.random.default_rng(seed)
    center = rng.uniform(20, 44, size=3)
    radius = rng.uniform(2, 8)
    targets = _match(center, [radius])
    assert len(targets) == 2
    for stride, level in zip(STRIDES, targets):
        labels, radius_grid, offset, index = _flat(level)
        points = _points(stride)
        nearest, _ = _nearest(center, points)
        np.testing.assert_array_equal(np.flatnonzero(labels == 1), np.sort(nearest))
        assert (index[labels == 1] == 0).all() and (index[labels != 1] == -1).all()
        decoded = points[labels == 1] + stride * offset[labels == 1].astype(np.float64)
        np.testing.assert_allclose(decoded, np.broadcast_to(center, decoded.shape), rtol=0, atol=1e-5)
        np.testing.assert_allclose(stride * radius_grid[labels == 1], radius, rtol=1e-6)
        assert level.labels.dtype == torch.int8 and level.nodule_index.dtype == torch.long
        assert level.offset.shape == (1, 3) + tuple(n // stride for n in PATCH)


def test_ties_at_the_kth_distance_go_to_the_lower_point_index():
    center = np.array([31.5, 31.5, 31.5])  # equidistant from the 8 stride-4 points around it
    labels, _, _, _ = _flat(_match(center, [2.0])[0])
    points = _points(4)
    distance = np.linalg.norm(points - center, axis=1)
    eight = np.flatnonzero(np.isclose(distance, distance.min()))
    assert len(eight) == 8
    np.testing.assert_array_equal(np.flatnonzero(labels == 1), eight[:7])


def _oracle_labels(centers, radii, kept, stride, config, patch=PATCH):
    """The documented rules in plain numpy: positives to the nearest kept claimant, then shells."""
    points, grid = _points(stride, patch), _grid_index(stride, patch)
    labels = np.zeros(len(points), dtype=int)
    owner = np.full(len(points), -1)
    owner_distance = np.full(len(points), np.inf)
    ignored = np.zeros(len(points), dtype=bool)
    for n, (center, radius) in enumerate(zip(centers, radii)):
        nearest, distance = _nearest(center, points, config.top_k)
        for j in nearest:
            chebyshev = np.abs(grid - grid[j]).max(axis=1)
            ignored |= chebyshev <= config.ignore_dilation
        ignored |= distance < config.ignore_radius_factor * radius
        if kept[n]:
            closer = distance[nearest] < owner_distance[nearest]
            owner[nearest[closer]] = n
            owner_distance[nearest[closer]] = distance[nearest[closer]]
    labels[ignored] = -1
    labels[owner >= 0] = 1
    return labels, owner


def test_contested_points_go_to_the_nearer_nodule_and_none_is_positive_twice():
    # 6.4 mm apart: their stride-8 point sets overlap
    centers = np.array([[30.23, 31.17, 29.61], [30.94, 36.42, 33.38]])
    radii = [3.0, 4.0]
    config = MatchingConfig()
    targets = _match(centers, radii)
    overlap_seen = False
    for stride, level in zip(STRIDES, targets):
        labels, _, offset, index = _flat(level)
        points = _points(stride)
        sets = [set(_nearest(c, points)[0].tolist()) for c in centers]
        contested = sets[0] & sets[1]
        overlap_seen |= bool(contested)
        for j in contested:
            distances = np.linalg.norm(centers - points[j], axis=1)
            assert index[j] == int(np.argmin(distances))
        for n in (0, 1):
            for j in sets[n] - contested:
                assert labels[j] == 1 and index[j] == n
        assert np.count_nonzero(labels == 1) == len(sets[0] | sets[1])
        expected_labels, owner = _oracle_labels(centers, radii, [True, True], stride, config)
        np.testing.assert_array_equal(labels, expected_labels)
        np.testing.assert_array_equal(index, owner)
        positive = labels == 1
        decoded = points[positive] + stride * offset[positive].astype(np.float64)
        np.testing.assert_allclose(decoded, centers[index[positive]], atol=1e-5)
    assert overlap_seen, "the test geometry must make the two nodules compete"


@pytest.mark.parametrize(
    "config", [MatchingConfig(), MatchingConfig(top_k=5, ignore_dilation=2, ignore_radius_factor=1.5)]
)
def test_ignore_shell_is_exactly_the_claimed_neighbourhood_plus_the_body(config):
    centers = np.array([[20.3, 22.8, 40.1], [44.6, 41.2, 19.7]])
    radii = [9.0, 3.5]
    targets = _match(centers, radii, config)
    for stride, level in zip(STRIDES, targets):
        labels, _, _, index = _flat(level)
        expected_labels, owner = _oracle_labels(centers, radii, [True, True], stride, config)
        np.testing.assert_array_equal(labels, expected_labels)
        np.testing.assert_array_equal(index, owner)
        assert np.count_nonzero(labels == 1) == 2 * config.top_k
        assert np.count_nonzero(labels == -1) > 0 and np.count_nonzero(labels == 0) > 0


def _cap_fraction_inside(u):
    """Exact volume fraction of a sphere on the inner side of a plane at distance u*r from its center."""
    return 1.0 - (1.0 - u) ** 2 * (2.0 + u) / 4.0


@pytest.mark.parametrize("u", [-0.8, -0.3, 0.0, 0.25, 0.6, 0.95])
def test_visible_fraction_of_a_sphere_cut_by_one_face(u):
    radius = 8.0
    centers = torch.tensor([[-0.5 + u * radius, 30.0, 30.0], [30.0, 63.5 - u * radius, 30.0]], dtype=torch.float64)
    radii = torch.tensor([radius, radius], dtype=torch.float64)
    fraction = sphere_fraction_inside_patch(centers, radii, PATCH)
    np.testing.assert_allclose(fraction.numpy(), _cap_fraction_inside(u), atol=0.01)


@pytest.mark.parametrize("u, kept", [(0.3, True), (-0.3, False)])
def test_nodule_cut_by_the_border_is_kept_or_ignored_by_its_visible_fraction(u, kept):
    radius = 8.0
    center = np.array([-0.5 + u * radius, 31.3, 30.6])  # visible fraction 0.72 (u=0.3) or 0.28 (u=-0.3)
    config = MatchingConfig()
    targets = _match(center, [radius])
    for stride, level in zip(STRIDES, targets):
        labels, _, _, index = _flat(level)
        expected_labels, owner = _oracle_labels(center[None], [radius], [kept], stride, config)
        np.testing.assert_array_equal(labels, expected_labels)
        np.testing.assert_array_equal(index, owner)
        assert np.count_nonzero(labels == 1) == (config.top_k if kept else 0)
        distance = np.linalg.norm(_points(stride) - center, axis=1)
        assert (labels[distance < radius] != 0).all(), "the body of a cut nodule is never negative"


def test_corner_nodule_with_center_inside_follows_the_threshold():
    radius = 10.0
    center = np.full(3, -0.5 + 0.2 * radius)  # center inside, close to a corner of the patch
    rng = np.random.default_rng(0)
    samples = rng.normal(size=(400_000, 3))
    samples *= (rng.uniform(size=(400_000, 1)) ** (1 / 3)) / np.linalg.norm(samples, axis=1, keepdims=True)
    monte_carlo = np.mean(np.all(center + radius * samples >= -0.5, axis=1))
    fraction = sphere_fraction_inside_patch(
        torch.tensor(center[None]), torch.tensor([radius], dtype=torch.float64), PATCH
    ).item()
    assert abs(fraction - monte_carlo) < 0.01 and 0.2 < fraction < 0.35
    for threshold, kept in [(fraction + 0.05, False), (fraction - 0.05, True)]:
        config = MatchingConfig(min_visible_fraction=threshold)
        for stride, level in zip(STRIDES, _match(center, [radius], config)):
            labels, _, _, index = _flat(level)
            expected_labels, owner = _oracle_labels(center[None], [radius], [kept], stride, config)
            np.testing.assert_array_equal(labels, expected_labels)
            np.testing.assert_array_equal(index, owner)


def test_nodule_entirely_outside_the_patch_changes_nothing():
    targets = _match([[-20.0, 30.0, 30.0]], [5.0])
    for level in targets:
        assert (level.labels == 0).all() and (level.nodule_index == -1).all()


def test_batch_keeps_each_patch_separate_and_indexes_nodules_per_patch():
    centers = [
        torch.tensor([[40.2, 20.7, 33.1], [12.3, 50.1, 20.4]]),
        torch.zeros(0, 3),
        torch.tensor([[31.0, 31.0, 31.0]]),
    ]
    radii = [torch.tensor([4.0, 6.0]), torch.zeros(0), torch.tensor([5.0])]
    for level in match_center_points(centers, radii, PATCH, STRIDES):
        assert level.labels.shape[0] == 3
        assert [(level.labels[b] == 1).sum().item() for b in range(3)] == [14, 0, 7]
        assert set(level.nodule_index[0].unique().tolist()) == {-1, 0, 1}
        assert (level.labels[1] == 0).all()
        assert set(level.nodule_index[2].unique().tolist()) == {-1, 0}


def test_ignored_finding_is_an_ignored_region_that_never_becomes_positive():
    """An excluded finding beside a nodule: labels are the oracle's with the finding never kept,
    the nodule keeps exactly the positives it has alone, and no point is matched to the finding."""
    nodule, finding = np.array([30.4, 28.9, 33.2]), np.array([37.6, 35.1, 27.3])
    config = MatchingConfig()
    with_finding = match_center_points(
        [torch.tensor(nodule[None])], [torch.tensor([2.0])], PATCH, STRIDES, config,
        ignored_centers_zyx_vox=[torch.tensor(finding[None])], ignored_radii_vox=[torch.tensor([1.2])],
    )
    alone = _match(nodule, [2.0])
    for stride, level, reference in zip(STRIDES, with_finding, alone):
        labels, radius, offset, index = _flat(level)
        expected_labels, owner = _oracle_labels(np.stack([nodule, finding]), [2.0, 1.2], [True, False], stride, config)
        np.testing.assert_array_equal(labels, expected_labels)
        np.testing.assert_array_equal(index, owner)
        reference_labels, reference_radius, reference_offset, _ = _flat(reference)
        finding_points, _ = _nearest(finding, _points(stride))
        not_the_nodules = finding_points[reference_labels[finding_points] != 1]
        assert len(not_the_nodules) and (labels[not_the_nodules] == -1).all()
        np.testing.assert_array_equal(labels == 1, reference_labels == 1)
        np.testing.assert_array_equal(radius, reference_radius)
        np.testing.assert_array_equal(offset, reference_offset)
        assert np.count_nonzero(reference_labels == -1) < np.count_nonzero(labels == -1)


def test_ignored_findings_without_radii_are_refused():
    with pytest.raises(ValueError, match="both their centers and their radii"):
        match_center_points([torch.zeros(0, 3)], [torch.zeros(0)], PATCH, STRIDES,
                            ignored_centers_zyx_vox=[torch.zeros(1, 3)])
    with pytest.raises(ValueError, match="ignored-finding centers for 2 patches"):
        match_center_points([torch.zeros(0, 3)], [torch.zeros(0)], PATCH, STRIDES,
                            ignored_centers_zyx_vox=[torch.zeros(0, 3)] * 2, ignored_radii_vox=[torch.zeros(0)] * 2)


def test_patch_not_a_multiple_of_the_stride_is_refused():
    with pytest.raises(ValueError, match="multiple of stride"):
        match_center_points([torch.zeros(0, 3)], [torch.zeros(0)], (60, 64, 64), (8,))


@pytest.mark.parametrize("settings, sentence", [
    ({"top_k": 0}, "MatchingConfig.top_k: 0 is not at least 1."),
    ({"visibility_samples": 0}, "MatchingConfig.visibility_samples: 0 is not at least 1."),
    ({"ignore_dilation": -1}, "MatchingConfig.ignore_dilation: -1 is negative."),
    ({"ignore_radius_factor": -0.5}, "MatchingConfig.ignore_radius_factor: -0.5 is not a non-negative number."),
    ({"ignore_radius_factor": float("nan")}, "MatchingConfig.ignore_radius_factor: nan is not a non-negative number."),
    ({"min_visible_fraction": 1.5}, "MatchingConfig.min_visible_fraction: 1.5 is not in [0, 1]."),
])
def test_config_refuses_values_the_rules_cannot_use(settings, sentence):
    with pytest.raises(UserInputError) as raised:
        MatchingConfig(**settings)
    assert str(raised.value) == sentence
    edge = MatchingConfig(top_k=1, ignore_dilation=0, ignore_radius_factor=0.0, min_visible_fraction=0.0)
    assert edge.top_k == 1 and MatchingConfig(min_visible_fraction=1.0).min_visible_fraction == 1.0

