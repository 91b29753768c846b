"""Pre-processing: index <-> world maps, resampling in the image's own axes, HU window, lung mask."""

from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk

from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.preprocess import (
    NoLungsError,
    PreprocessConfig,
    prepare_scan,
    resampled_geometry,
)
from SCPMNoduleLib.scan_geometry import ScanGeometry


def _rotation(angle_deg: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(a / 2), -np.sin(a / 2)], [0, np.sin(a / 2), np.cos(a / 2)]])
    return rz @ rx @ np.diag([-1.0, 1.0, -1.0])


def _image(shape_zyx, spacing, origin, direction, values=None) -> sitk.Image:
    image = sitk.GetImageFromArray(np.zeros(shape_zyx, np.float32) if values is None else values)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(np.asarray(direction).ravel()))
    return image


def test_geometry_agrees_with_itk_and_inverts():
    image = _image((7, 9, 11), (0.7, 0.8, 2.5), (-120.0, 33.0, -250.0), _rotation(20))
    geometry = ScanGeometry.from_image(image)
    index_zyx = np.random.default_rng(0).uniform(-2, 12, (50, 3))
    expected = np.array([image.TransformContinuousIndexToPhysicalPoint(tuple(p[::-1])) for p in index_zyx])
    np.testing.assert_allclose(geometry.index_to_world(index_zyx), expected, atol=1e-9)
    np.testing.assert_allclose(geometry.world_to_index(expected), index_zyx, atol=1e-9)
    assert geometry.index_to_world(index_zyx.reshape(5, 10, 3)).shape == (5, 10, 3)


def test_resampling_keeps_the_world_map_exactly_for_a_linear_ramp():
    direction = _rotation(30)
    image = _image((12, 20, 18), (0.7, 0.7, 2.5), (10.0, -5.0, 40.0), direction)
    geometry = ScanGeometry.from_image(image)
    grid = np.stack(np.meshgrid(*[np.arange(n) for n in geometry.shape_zyx], indexing="ij"), -1)
    gradient = np.array([0.5, -1.5, 2.0])
    ramp = (geometry.index_to_world(grid) @ gradient).astype(np.float32)
    image = _image((12, 20, 18), (0.7, 0.7, 2.5), (10.0, -5.0, 40.0), direction, ramp)

    out = resampled_geometry(image, (1.0, 1.0, 1.0)).resample(image)
    assert out.GetSpacing() == (1.0, 1.0, 1.0)
    np.testing.assert_allclose(out.GetOrigin(), image.GetOrigin())
    np.testing.assert_allclose(out.GetDirection(), image.GetDirection())
    # floor((n - 1) * s / s') + 1 per axis (x, y, z)
    assert out.GetSize() == (12, 14, 28)
    out_geometry = ScanGeometry.from_image(out)
    out_grid = np.stack(np.meshgrid(*[np.arange(n) for n in out_geometry.shape_zyx], indexing="ij"), -1)
    expected = out_geometry.index_to_world(out_grid) @ gradient
    np.testing.assert_allclose(sitk.GetArrayViewFromImage(out), expected, atol=1e-3)


def test_hu_window_scales_to_unit_interval():
    config = PreprocessConfig(hu_min=-1000.0, hu_max=400.0)
    values = config.normalize(np.array([-3000.0, -1000.0, -300.0, 400.0, 2000.0]))
    assert values.dtype == np.float32
    np.testing.assert_allclose(values, [0.0, 0.0, 0.5, 1.0, 1.0], atol=1e-7)


def test_config_round_trips_through_json_lists():
    config = PreprocessConfig(spacing_xyz_mm=(1.0, 1.0, 1.5), lung_mask=False)
    as_json = {k: list(v) if isinstance(v, tuple) else v for k, v in config.to_dict().items()}
    assert PreprocessConfig.from_dict(as_json) == config


@pytest.mark.parametrize("settings, sentence", [
    ({"spacing_xyz_mm": (1.0, 0.0, 1.0)},
     "PreprocessConfig.spacing_xyz_mm: (1.0, 0.0, 1.0) is not three positive spacings."),
    ({"spacing_xyz_mm": (1.0, 1.0)}, "PreprocessConfig.spacing_xyz_mm: (1.0, 1.0) is not three positive spacings."),
    ({"hu_min": 600.0}, "PreprocessConfig.hu_max: 600.0 is not above hu_min (600.0)."),
    ({"mask_block": 0}, "PreprocessConfig.mask_block: 0 is not at least 1."),
    ({"mask_dilation_mm": float("nan")}, "PreprocessConfig.mask_dilation_mm: nan is negative."),
    ({"version": 2}, "pre-processing version 2 is not the version 1 this program reads."),
])
def test_config_refuses_settings_no_scan_can_be_prepared_with(settings, sentence):
    with pytest.raises(UserInputError) as raised:
        PreprocessConfig(**settings)
    assert str(raised.value) == sentence
    with pytest.raises(UserInputError, match=r"^PreprocessConfig.mask_block: 0 is not at least 1\.$"):
        PreprocessConfig.from_dict({"mask_block": 0})


def chest_phantom(shape_zyx=(48, 64, 64)) -> tuple[np.ndarray, np.ndarray]:
    """Air around a body (40 HU) with two lungs (-850 HU) and a solid nodule in the left lung.

    Returns the HU array and the nodule center (z, y, x).
    """
    z, y, x = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape_zyx], indexing="ij")
    hu = np.full(shape_zyx, -1000.0)
    body = ((y - 32) / 26) ** 2 + ((x - 32) / 29) ** 2 < 1
    hu[body] = 40.0
    for cx in (19.0, 45.0):
        hu[((z - 24) / 18) ** 2 + ((y - 32) / 16) ** 2 + ((x - cx) / 9) ** 2 < 1] = -850.0
    nodule = np.array([24.0, 30.0, 19.0])
    hu[(z - nodule[0]) ** 2 + (y - nodule[1]) ** 2 + (x - nodule[2]) ** 2 < 4 ** 2] = 40.0
    return hu.astype(np.float32), nodule


def _unit_image(hu):
    return _image(hu.shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), hu)


def test_the_lungs_cover_their_nodules_but_not_the_air_outside():
    hu, nodule = chest_phantom()
    lungs = prepare_scan(_unit_image(hu), PreprocessConfig(mask_dilation_mm=4.0)).lungs
    inside = np.argwhere(hu == -850.0)
    assert lungs is not None and lungs.n_lungs == 2
    assert lungs.contains(inside).all()
    assert lungs.contains(nodule[None]).all()
    assert not lungs.contains(np.array([[24, 2, 2], [24, 62, 32], [2, 32, 32]])).any()
    start, stop = lungs.box_start_zyx, lungs.box_stop_zyx
    assert np.all(start <= inside.min(0)) and np.all(stop > inside.max(0))
    # the box is the lungs' extent grown by at most one block plus the margin (4 + 4 voxels)
    assert np.all(inside.min(0) - start <= 8) and np.all(stop - inside.max(0) <= 9)


def test_a_chest_wall_thinner_than_a_block_still_closes_the_lungs():
    """Lungs (-900 HU) in a box body whose side walls are 3 voxels thick (x = 3..5, 58..60): blocks of
    4 voxels average wall, lung and outside air, yet the lungs must not run into the outside air."""
    hu = np.full((48, 64, 64), -1000.0, np.float32)
    hu[:, 4:60, 3:61] = 40.0
    hu[8:40, 12:52, 6:28] = -900.0
    hu[8:40, 12:52, 36:58] = -900.0
    lungs = prepare_scan(_unit_image(hu), PreprocessConfig(mask_dilation_mm=2.0)).lungs
    assert lungs is not None and lungs.n_lungs == 2
    assert lungs.contains(np.argwhere(hu == -900.0)).all()
    assert not lungs.contains(np.array([[24, 32, 1], [24, 32, 62], [24, 1, 32]])).any()


def test_a_scan_without_lungs_is_refused_unless_the_mask_is_off():
    image = _unit_image(np.full((32, 32, 32), 40.0, np.float32))
    with pytest.raises(NoLungsError, match="^no lungs found — is this a chest CT"):
        prepare_scan(image, PreprocessConfig())
    whole = prepare_scan(image, PreprocessConfig(lung_mask=False))
    assert whole.lungs is None and whole.image.shape == (32, 32, 32)


def test_old_checkpoints_retired_setting_is_read_and_dropped():
    values = {**PreprocessConfig().to_dict(), "lung_min_volume_ml": 5.0}
    assert PreprocessConfig.from_dict(values) == PreprocessConfig()


def test_prepare_scan_crops_to_the_lungs_with_an_aligned_start():
    hu, _ = chest_phantom()
    image = _image(hu.shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), hu)
    prepared = prepare_scan(image, PreprocessConfig(mask_dilation_mm=4.0), align=8)
    assert np.all(prepared.crop_start_zyx % 8 == 0)
    start = prepared.crop_start_zyx
    window = PreprocessConfig().normalize(hu)
    d, h, w = prepared.image.shape
    np.testing.assert_array_equal(prepared.image, window[start[0]:start[0] + d, start[1]:start[1] + h,
                                                          start[2]:start[2] + w])
    assert prepared.image.size < 0.8 * hu.size
    whole = prepare_scan(image, PreprocessConfig(lung_mask=False))
    assert whole.image.shape == hu.shape and whole.lungs is None


def test_the_crop_is_exactly_the_whole_resampled_grid_cropped():
    hu, _ = chest_phantom((40, 56, 56))
    image = _image(hu.shape, (0.8, 0.9, 1.3), (12.0, -40.0, 300.0), _rotation(15), hu)
    config = PreprocessConfig(mask_dilation_mm=3.0)
    prepared = prepare_scan(image, config, align=4)
    assert np.any(prepared.crop_start_zyx > 0)
    whole = prepare_scan(image, replace(config, lung_mask=False)).image
    (z, y, x), (d, h, w) = prepared.crop_start_zyx, prepared.image.shape
    np.testing.assert_array_equal(prepared.image, whole[z:z + d, y:y + h, x:x + w])
    assert prepared.geometry.shape_zyx == whole.shape
