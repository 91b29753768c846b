"""The lung finder on real chest, abdominal and pelvic CT (small derivatives in data/realct) and on
phantoms, whose own lung labels are the reference."""

import csv
import functools
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from SCPMNoduleLib.io import read_scan
from SCPMNoduleLib.lungs import LEFT, RIGHT, find_lungs
from SCPMNoduleLib.phantom import LUNG_LABELS, generate_phantom, phantom_config
from SCPMNoduleLib.preprocess import resampled_geometry
from SCPMNoduleLib.scan_geometry import ScanGeometry

DATA = Path(__file__).parent / "data" / "realct"
CHESTS = ["A0001_5mm_L", "A0001_5mm_B", "A0002_8mm_B70f", "A0002_8mm_B40f"]
BOXES = {"A0001": DATA / "A0001_5mm_L_boxes.csv", "A0002": DATA / "A0002_8mm_B70f_boxes.csv"}


def _find(image: sitk.Image):
    """As ``prepare_scan`` would: on the network's 1 mm grid, blocks of 4."""
    return find_lungs(image, resampled_geometry(image, (1.0, 1.0, 1.0)), block=4)


@functools.cache
def _found_in(name: str):
    """:func:`_find` on a real-CT derivative, once per test session."""
    return _find(read_scan(DATA / f"{name}.nii.gz"))


def _air_reference(image: sitk.Image) -> tuple[np.ndarray, np.ndarray]:
    """An independent extent of the lungs: voxels below -400 HU in 3-D components of at least
    500 mL that do not touch the image's in-plane border (the outside air does); world corners."""
    hu = sitk.GetArrayViewFromImage(image)
    labels, _ = ndimage.label(hu < -400)
    sizes = np.bincount(labels.ravel()) * np.prod(image.GetSpacing()) / 1000.0
    keep = sizes >= 500.0
    keep[np.unique(np.concatenate([labels[:, [0, -1]].ravel(), labels[:, :, [0, -1]].ravel()]))] = False
    keep[0] = False
    where = np.argwhere(keep[labels])
    corners = [image.TransformIndexToPhysicalPoint([int(i) for i in p[::-1]])
               for p in (where.min(axis=0), where.max(axis=0))]
    return np.min(corners, axis=0), np.max(corners, axis=0)


@pytest.mark.parametrize("name", CHESTS)
def test_chest_ct_has_two_adult_lungs_inside_the_box(name):
    image = read_scan(DATA / f"{name}.nii.gz")
    found = _found_in(name)
    assert found.found and found.n_lungs == 2, found.reason
    assert 2000.0 < found.volume_ml < 9000.0
    assert min(found.volumes_ml) > 800.0
    # the right lung is on the patient's right (LPS: smaller x) of the left one
    centers = {side: found.coarse.index_to_world(np.argwhere(found.labels == side).mean(axis=0))
               for side in (RIGHT, LEFT)}
    assert centers[RIGHT][0] < centers[LEFT][0] - 80.0
    # the air reference's in-plane extent and its lowest point (the costophrenic recesses)
    low, high = _air_reference(image)
    assert np.all(low[:2] >= found.box_min_xyz_mm[:2] - 1.0)
    assert np.all(high[:2] <= found.box_max_xyz_mm[:2] + 1.0)
    assert low[2] >= found.box_min_xyz_mm[2] - 1.0
    # the tumour, slice by slice as the collection drew it, lies inside the box
    with open(BOXES[name[:5]]) as file:
        for row in csv.DictReader(file):
            for sign in (-0.5, 0.5):
                point = np.array([float(row["center_x_mm"]) + sign * float(row["width_mm"]),
                                  float(row["center_y_mm"]) + sign * float(row["height_mm"]),
                                  float(row["center_z_mm"])])
                assert np.all(point >= found.box_min_xyz_mm - 1.0)
                assert np.all(point <= found.box_max_xyz_mm + 1.0)


def test_the_two_kernels_of_one_scan_agree():
    volumes = [_found_in(name).volume_ml for name in CHESTS]
    assert volumes[0] == pytest.approx(volumes[1], rel=0.02)
    assert volumes[2] == pytest.approx(volumes[3], rel=0.02)


@pytest.mark.parametrize("name", ["abdomen_6mm", "pelvis_dicom_2mm"])
def test_scans_without_lungs_are_refused_with_a_reason(name):
    found = _found_in(name)
    assert not found.found and found.n_lungs == 0 and found.volume_ml == 0.0
    assert "mL" in found.reason and "body size" in found.reason
    assert not found.region.any()
    assert not found.contains(np.array([[10.0, 10.0, 10.0]])).any()


def _coarse_labels(phantom, found) -> np.ndarray:
    coarse = found.coarse
    return sitk.GetArrayFromImage(sitk.Resample(
        phantom.lung_mask, [int(n) for n in coarse.shape_zyx[::-1]], sitk.Transform(),
        sitk.sitkNearestNeighbor, [float(v) for v in coarse.origin_xyz_mm],
        [float(v) for v in coarse.spacing_xyz_mm], [float(v) for v in coarse.direction.ravel()], 0))


def _check_phantom(phantom, min_dice: float) -> None:
    found = _find(phantom.image)
    assert found.n_lungs == 2, found.reason
    reference = _coarse_labels(phantom, found)
    lungs, truth = found.labels > 0, reference > 0
    dice = 2.0 * np.count_nonzero(lungs & truth) / (np.count_nonzero(lungs) + np.count_nonzero(truth))
    assert dice >= min_dice
    for side, value in ((RIGHT, LUNG_LABELS["right"]), (LEFT, LUNG_LABELS["left"])):
        assert np.mean(found.labels[reference == value] == side) > 0.9
    voxel_ml = np.prod(phantom.image.GetSpacing()) / 1000.0
    label_ml = np.count_nonzero(sitk.GetArrayViewFromImage(phantom.lung_mask)) * voxel_ml
    assert found.volume_ml == pytest.approx(label_ml, rel=0.05)
    assert np.mean(found.region[truth]) > 0.995
    # every labelled block's center (on the grid) is inside the box, in voxels of the grid
    last = np.asarray(resampled_geometry(phantom.image, (1.0, 1.0, 1.0)).shape_zyx) - 1
    points = np.minimum(np.argwhere(truth) * found.block + found.block // 2, last)
    assert np.all(points >= found.box_start_zyx) and np.all(points < found.box_stop_zyx)


@pytest.mark.parametrize("seed", [7, 8, 11])
def test_small_phantoms_lungs_agree_with_their_labels(seed):
    _check_phantom(generate_phantom(seed, phantom_config("small")), min_dice=0.95)


def test_oblique_phantom_lungs_agree_with_their_labels():
    _check_phantom(generate_phantom(9, phantom_config("small", oblique=True)), min_dice=0.95)


@pytest.mark.slow
def test_full_size_phantom_lungs_agree_with_their_labels():
    _check_phantom(generate_phantom(1000, phantom_config("full")), min_dice=0.97)


@pytest.mark.parametrize("size", [5, 40])
def test_a_crop_without_a_chest_has_no_lungs(size):
    image = generate_phantom(7, phantom_config("small")).image
    center = np.asarray(image.GetSize()) // 2
    crop = sitk.RegionOfInterest(image, [size] * 3, [int(c - size // 2) for c in center])
    found = _find(crop)
    assert not found.found and found.reason
    assert np.array_equal(found.box_stop_zyx, resampled_geometry(crop, (1.0, 1.0, 1.0)).shape_zyx)


def test_box_in_voxels_and_world_agree():
    image = read_scan(DATA / "A0002_8mm_B40f.nii.gz")
    geometry = resampled_geometry(image, (1.0, 1.0, 1.0))
    found = find_lungs(image, geometry)
    assert np.allclose(found.box_min_xyz_mm, geometry.index_to_world(found.box_start_zyx))
    assert np.allclose(found.box_max_xyz_mm, geometry.index_to_world(found.box_stop_zyx - 1))
    inside = found.contains(np.argwhere(found.region) * found.block + found.block // 2)
    assert inside.all()


def test_one_lung_is_enough_after_a_pneumonectomy():
    """The left hemithorax filled with fluid (40 HU), as after a pneumonectomy: one lung, the right,
    with its own volume; the scan is a chest CT and is not refused."""
    image = read_scan(DATA / "A0002_8mm_B70f.nii.gz")
    both = _find(image)
    hu = sitk.GetArrayFromImage(image)
    air = np.argwhere(hu < -400)
    world = ScanGeometry.from_image(image).index_to_world(air)
    in_lungs = both.contains(resampled_geometry(image, (1.0, 1.0, 1.0)).world_to_index(world))
    centers_x = [both.coarse.index_to_world(np.argwhere(both.labels == side).mean(axis=0))[0] for side in (RIGHT, LEFT)]
    hu[tuple(air[in_lungs & (world[:, 0] > np.mean(centers_x))].T)] = 40
    filled = sitk.GetImageFromArray(hu)
    filled.CopyInformation(image)
    one = _find(filled)
    assert one.found and one.n_lungs == 1, one.reason
    assert one.volumes_ml[1] == 0.0
    assert one.volumes_ml[0] == pytest.approx(both.volumes_ml[0], rel=0.05)
