"""Augmentation keeps sphere annotations on the spheres, and patches are the exact resampling."""

import numpy as np
import pytest
from scipy import ndimage

from SCPMNoduleLib.errors import UserInputError
from Training.augment import AugmentConfig, extract_patch, random_transform, transform_spheres

SHAPE = (60, 70, 80)
CENTERS = np.array([[30.0, 35.0, 40.0], [12.3, 20.7, 61.2], [45.5, 50.0, 15.0], [2.0, 35.0, 40.0]])
RADII = np.array([6.0, 4.0, 5.0, 4.5])  # the last sphere is cut by the volume's z = 0 face


def _spheres_volume() -> np.ndarray:
    """0 background, 1 inside each sphere (voxel centers)."""
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in SHAPE], indexing="ij"), axis=-1).astype(float)
    inside = np.zeros(SHAPE, dtype=bool)
    for center, radius in zip(CENTERS, RADII):
        inside |= np.linalg.norm(grid - center, axis=-1) < radius
    return inside.astype(np.float32)


def _oracle_patch(volume, center_src, matrix, patch, fill):
    """Sample the whole volume at s = c_src + M^-1 (q - c_out) for every patch voxel q."""
    q = np.stack(np.meshgrid(*[np.arange(patch)] * 3, indexing="ij")).reshape(3, -1).astype(float)
    source = center_src[:, None] + np.linalg.inv(matrix) @ (q - (patch - 1) / 2)
    return ndimage.map_coordinates(volume, source, order=1, mode="grid-constant", cval=fill).reshape((patch,) * 3)


@pytest.mark.parametrize("affine_probability", [0.0, 1.0])
def test_patch_is_the_inverse_mapped_resampling_of_the_volume(affine_probability):
    volume = _spheres_volume() * 100.0 + np.random.default_rng(1).normal(size=SHAPE).astype(np.float32)
    config = AugmentConfig(affine_probability=affine_probability, max_rotation_deg=30.0)
    rng = np.random.default_rng(7)
    patch = 24
    for _ in range(6):
        matrix, _scale = random_transform(rng, config)
        # patch origins that are integers (required by the exact path), some crossing the volume's faces
        origin = rng.integers(-10, np.asarray(SHAPE) - patch + 10)
        center_src = origin + (patch - 1) / 2
        got = extract_patch(volume, center_src, matrix, patch, fill=-7.0)
        want = _oracle_patch(volume, center_src, matrix, patch, -7.0)
        np.testing.assert_allclose(got, want, atol=1e-3)


def test_transform_keeps_every_nodule_annotation_on_the_nodule():
    volume = _spheres_volume()
    config = AugmentConfig(flip_probability=0.5, swap_probability=0.5, affine_probability=0.7,
                           max_rotation_deg=30.0, scale_range=(0.7, 1.4))
    rng = np.random.default_rng(0)
    patch = 40
    checked = 0
    for _ in range(12):
        matrix, scale = random_transform(rng, config)
        target = CENTERS[rng.integers(len(CENTERS))] + rng.uniform(-8, 8, size=3)
        center_src = np.rint(target - (patch - 1) / 2) + (patch - 1) / 2
        image = extract_patch(volume, center_src, matrix, patch, fill=0.0)
        centers, radii = transform_spheres(CENTERS, RADII, center_src, matrix, scale, patch)
        np.testing.assert_allclose(radii, RADII * scale)
        directions = rng.normal(size=(16, 3))
        directions /= np.linalg.norm(directions, axis=1, keepdims=True)
        for center, radius in zip(centers, radii):
            inner = center + 0.6 * radius * directions
            outer = center + (1.0 * radius + 2.0) * directions
            in_patch = np.all((inner >= 0) & (inner <= patch - 1), axis=1)
            # only points whose source lies inside the volume carry the sphere's intensity
            inner_src = center_src + (inner - (patch - 1) / 2) @ np.linalg.inv(matrix).T
            in_volume = np.all((inner_src >= 0) & (inner_src <= np.asarray(SHAPE) - 1), axis=1)
            use = in_patch & in_volume
            if not use.any():
                continue
            center_value = ndimage.map_coordinates(image, center[:, None], order=1)[0]
            if in_volume.all() and np.all((center >= 0) & (center <= patch - 1)):
                assert center_value > 0.9
            assert ndimage.map_coordinates(image, inner[use].T, order=1).min() > 0.5
            outer_use = np.all((outer >= 0) & (outer <= patch - 1), axis=1)
            if outer_use.any():
                assert ndimage.map_coordinates(image, outer[outer_use].T, order=1).max() < 0.5
            checked += 1
    assert checked >= 12


def test_no_augmentation_is_the_plain_crop():
    volume = _spheres_volume()
    config = AugmentConfig(flip_probability=0.0, swap_probability=0.0, affine_probability=0.0)
    matrix, scale = random_transform(np.random.default_rng(3), config)
    np.testing.assert_array_equal(matrix, np.eye(3))
    patch = 16
    image = extract_patch(volume, np.array([10.0, 20.0, 30.0]) + 7.5, matrix, patch, fill=0.0)
    np.testing.assert_array_equal(image, volume[10:26, 20:36, 30:46])
    centers, radii = transform_spheres(CENTERS, RADII, np.array([17.5, 27.5, 37.5]), matrix, scale, patch)
    np.testing.assert_allclose(centers, CENTERS - [10, 20, 30])
    np.testing.assert_allclose(radii, RADII)


@pytest.mark.parametrize("settings, sentence", [
    ({"flip_probability": 1.5}, "AugmentConfig.flip_probability: 1.5 is not a probability in [0, 1]."),
    ({"affine_probability": -0.1}, "AugmentConfig.affine_probability: -0.1 is not a probability in [0, 1]."),
    ({"max_rotation_deg": -5.0}, "AugmentConfig.max_rotation_deg: -5.0 is not a non-negative angle."),
    ({"scale_range": (1.25, 0.8)},
     "AugmentConfig.scale_range: (1.25, 0.8) is not two positive, increasing scale factors."),
    ({"scale_range": (0.0, 1.0)},
     "AugmentConfig.scale_range: (0.0, 1.0) is not two positive, increasing scale factors."),
    ({"interpolation_order": 7}, "AugmentConfig.interpolation_order: 7 is not a spline order from 0 to 5."),
])
def test_a_bad_setting_is_refused_with_one_sentence(settings, sentence):
    with pytest.raises(UserInputError) as caught:
        AugmentConfig(**settings)
    assert str(caught.value) == sentence


def test_the_defaults_and_the_extremes_are_accepted():
    AugmentConfig()
    AugmentConfig(flip_probability=0.0, swap_probability=1.0, affine_probability=1.0, max_rotation_deg=0.0,
                  scale_range=(1.0, 1.0), interpolation_order=0)
