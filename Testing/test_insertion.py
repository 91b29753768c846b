"""Nodules inserted into CT, tested against physics rather than against the renderer itself: the
volume a lesion adds to the written HU, the blur across its edge, the noise inside it, where its
centre lands in world space, and refusals. Scans: a synthetic chest with flat parenchyma (so the
background is known), small phantoms (flipped and oblique), and the real-CT derivatives."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from fault_helpers import snapshot
from scipy import ndimage
from scipy.special import erf

from SCPMNoduleLib.cli import main
from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.insertion import (
    InsertionConfig,
    NoduleRequest,
    ScanForInsertion,
    insert_nodules,
    read_boxes,
)
from SCPMNoduleLib.insertion_writer import write_inserted_dataset
from SCPMNoduleLib.io import read_annotations, read_seriesuids
from SCPMNoduleLib.phantom import generate_phantom, phantom_config
from SCPMNoduleLib.scan_geometry import ScanGeometry

REALCT = Path(__file__).parent / "data" / "realct"
PARENCHYMA_HU = -850.0


def synthetic_chest(spacing_xyz: tuple[float, float, float], noise_hu: float = 0.0, seed: int = 0,
                    direction: tuple[float, ...] = (1, 0, 0, 0, 1, 0, 0, 0, 1)) -> sitk.Image:
    """A body of 40 HU in air with two ellipsoid lungs of flat parenchyma (-850 HU), plus
    correlated noise of ``noise_hu``; 140 × 100 × 70 mm."""
    shape = np.round(np.array([70.0, 100.0, 140.0]) / np.asarray(spacing_xyz)[::-1]).astype(int)
    z, y, x = (((np.arange(n) + 0.5) / n - 0.5) * extent
               for n, extent in zip(shape, (70.0, 100.0, 140.0)))
    z, y, x = z[:, None, None], y[None, :, None], x[None, None, :]
    hu = np.full(shape, -1000.0, np.float32)
    hu[np.broadcast_to((x / 65) ** 2 + (y / 45) ** 2 < 1, shape)] = 40.0
    for side in (-1, 1):
        hu[((x - side * 32) / 22) ** 2 + (y / 32) ** 2 + (z / 30) ** 2 < 1] = PARENCHYMA_HU
    if noise_hu:
        white = ndimage.gaussian_filter(np.random.default_rng(seed).standard_normal(shape), (0, 0.8, 0.8))
        hu += noise_hu * white / white.std()
    image = sitk.GetImageFromArray(np.rint(hu).astype(np.int16))
    image.SetSpacing(spacing_xyz)
    image.SetDirection(direction)
    image.SetOrigin((-70.0, -50.0, -35.0))
    return image


def added_hu(before: sitk.Image, after: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(after).astype(np.float64) - sitk.GetArrayFromImage(before)


def lung_point(image: sitk.Image, offset_vox=(0.3, 0.6, 0.2)) -> tuple[float, float, float]:
    """A world point deep in the right lung, off the voxel centres by ``offset_vox`` (z, y, x)."""
    geometry = ScanGeometry.from_image(image)
    world = np.array([-32.0, 0.0, 0.0])
    index = np.floor(geometry.world_to_index(world)) + np.asarray(offset_vox)
    return tuple(geometry.index_to_world(index))


@pytest.mark.parametrize("slice_mm", [0.7, 5.0])
@pytest.mark.parametrize("diameter", [4.0, 6.0, 12.0, 20.0])
def test_added_volume_matches_the_diameter(slice_mm, diameter):
    image = synthetic_chest((0.7, 0.7, slice_mm))
    scan = ScanForInsertion(image, "chest")
    request = NoduleRequest(diameter, "solid", "smooth", "isolated", lung_point(image), hu=30.0)
    inserted, nodules = insert_nodules(scan, 0, np.random.default_rng(0), [request])
    volume = added_hu(image, inserted).sum() / (30.0 - PARENCHYMA_HU) * np.prod(image.GetSpacing())
    assert volume == pytest.approx(math.pi / 6 * diameter ** 3, rel=0.03)
    assert nodules[0].parenchyma_hu == PARENCHYMA_HU


def test_a_small_nodule_in_a_thick_slice_has_partial_volume_contrast():
    """A 4 mm nodule in 5 mm slices never reaches its own HU: its peak is about 4/5 of it or less."""
    image = synthetic_chest((0.7, 0.7, 5.0))
    scan = ScanForInsertion(image, "chest")
    request = NoduleRequest(4.0, "solid", "smooth", "isolated", lung_point(image, (0.5, 0.5, 0.5)), hu=30.0)
    inserted, _ = insert_nodules(scan, 0, np.random.default_rng(0), [request])
    peak = added_hu(image, inserted).max() / (30.0 - PARENCHYMA_HU)
    assert 0.3 < peak < 0.8


def test_edge_profile_is_the_scanner_blur():
    """Across the edge of a 20 mm solid lesion the added HU is an erf of σ² = psf² + Δx²/12."""
    psf = 0.8
    image = synthetic_chest((0.5, 0.5, 0.5))
    scan = ScanForInsertion(image, "chest", InsertionConfig(psf_sigma_mm=psf))
    center = lung_point(image, (0.0, 0.0, 0.0))
    inserted, _ = insert_nodules(scan, 0, np.random.default_rng(0),
                                 [NoduleRequest(20.0, "solid", "smooth", "isolated", center, hu=30.0)])
    index = np.rint(ScanGeometry.from_image(image).world_to_index(np.asarray(center))).astype(int)
    profile = added_hu(image, inserted)[index[0], index[1], :] / (30.0 - PARENCHYMA_HU)
    x = np.abs((np.arange(len(profile)) - index[2]) * 0.5)
    near = np.abs(x - 10.0) < 3.0
    sigmas = np.arange(0.3, 1.5, 0.005)
    errors = [np.abs(profile[near] - 0.5 * (1 + erf((10.0 - x[near]) / (s * math.sqrt(2))))).max() for s in sigmas]
    assert sigmas[int(np.argmin(errors))] == pytest.approx(math.hypot(psf, 0.5 / math.sqrt(12)), abs=0.03)
    assert min(errors) < 0.02


@pytest.mark.parametrize("kind, hu", [("solid", 30.0), ("ground_glass", -500.0)])
def test_noise_inside_is_the_parenchymas(kind, hu):
    image = synthetic_chest((0.7, 0.7, 0.7), noise_hu=30.0, seed=4)
    scan = ScanForInsertion(image, "chest")
    center = lung_point(image)
    inserted, nodules = insert_nodules(scan, 0, np.random.default_rng(0),
                                       [NoduleRequest(16.0, kind, "smooth", "isolated", center, hu=hu)])
    after = sitk.GetArrayFromImage(inserted).astype(np.float64)
    before = sitk.GetArrayFromImage(image).astype(np.float64)
    geometry = ScanGeometry.from_image(image)
    grid = np.stack(np.meshgrid(*(np.arange(n) for n in after.shape), indexing="ij"), -1)
    distance = np.linalg.norm(geometry.index_to_world(grid) - np.asarray(center), axis=-1)
    inside, shell = distance < 5.0, (distance > 10.0) & (distance < 14.0)
    assert after[inside].mean() == pytest.approx(hu, abs=10.0)
    assert after[inside].std() == pytest.approx(before[shell].std(), rel=0.15)
    assert nodules[0].noise_hu == pytest.approx(30.0, rel=0.15)

    def lag_one(values: np.ndarray, where: np.ndarray) -> float:  # the texture: correlation of x-neighbours
        a, b = values[:, :, :-1][where[:, :, :-1]], values[:, :, 1:][where[:, :, :-1]]
        return float(np.corrcoef(a, b)[0, 1])

    assert lag_one(after, inside) == pytest.approx(lag_one(before, shell), abs=0.08)


def test_ground_glass_keeps_a_vessel_visible_and_a_solid_lesion_hides_it():
    image = synthetic_chest((0.7, 0.7, 0.7))
    hu = sitk.GetArrayFromImage(image)
    geometry = ScanGeometry.from_image(image)
    center = np.asarray(lung_point(image))
    index = np.rint(geometry.world_to_index(center)).astype(int)
    hu[index[0] - 1:index[0] + 2, index[1] - 1:index[1] + 2, :index[2] + 1] = 40  # a vessel along -x to the centre
    vessel = sitk.GetImageFromArray(hu)
    vessel.CopyInformation(image)
    scan = ScanForInsertion(vessel, "chest", InsertionConfig(psf_sigma_mm=0.3))
    for kind, lesion_hu in (("ground_glass", -500.0), ("solid", 30.0)):
        inserted, _ = insert_nodules(scan, 0, np.random.default_rng(0),
                                     [NoduleRequest(14.0, kind, "smooth", "isolated", tuple(center), hu=lesion_hu)])
        after = sitk.GetArrayFromImage(inserted)
        vessel_hu = after[index[0], index[1], index[2] - 4]
        beside_hu = after[index[0] + 4, index[1], index[2] - 4]
        if kind == "ground_glass":
            assert vessel_hu == pytest.approx(40, abs=15) and beside_hu == pytest.approx(lesion_hu, abs=15)
        else:
            assert abs(vessel_hu - beside_hu) < 15


@pytest.mark.parametrize("seed", [3, 11])
def test_centres_land_on_the_annotated_world_point_through_flips_and_obliques(seed):
    phantom = generate_phantom((seed, 0), phantom_config("small", oblique=True))
    direction = np.asarray(phantom.image.GetDirection()).reshape(3, 3)
    assert not np.allclose(direction, np.eye(3))
    config = InsertionConfig(max_hidden_fraction=0.0, kind_weights=(1, 0, 0), margin_weights=(1, 0, 0),
                             location_weights=(1, 0, 0), diameter_mm=(5.0, 9.0))
    scan = ScanForInsertion(phantom.image, "phantom", config)
    inserted, nodules = insert_nodules(scan, 2, np.random.default_rng(seed))
    assert len(nodules) == 2
    added = added_hu(phantom.image, inserted)
    geometry = ScanGeometry.from_image(phantom.image)
    labels, _ = ndimage.label(np.abs(added) > 0.5)
    for nodule in nodules:
        label = labels[tuple(np.rint(nodule.nodule.center_zyx_vox).astype(int))]
        centroid = geometry.index_to_world(np.array(ndimage.center_of_mass(np.where(labels == label, added, 0.0))))
        assert np.linalg.norm(centroid - np.asarray(nodule.nodule.center_xyz_mm)) < 0.3


def test_a_flipped_scan_puts_the_lesion_at_the_same_world_point():
    plain = synthetic_chest((0.7, 0.7, 2.0))
    flipped = sitk.Flip(plain, [True, False, True])
    center = lung_point(plain)
    request = [NoduleRequest(8.0, "solid", "smooth", "isolated", center, hu=30.0)]
    centroids = []
    for image in (plain, flipped):
        inserted, _ = insert_nodules(ScanForInsertion(image, "chest"), 0, np.random.default_rng(0), request)
        index = np.array(ndimage.center_of_mass(added_hu(image, inserted)))
        centroids.append(ScanGeometry.from_image(image).index_to_world(index))
    assert np.linalg.norm(centroids[0] - np.asarray(center)) < 0.1
    assert np.linalg.norm(centroids[1] - np.asarray(center)) < 0.1


def test_a_position_outside_the_lungs_is_refused():
    image = synthetic_chest((1.0, 1.0, 2.0))
    scan = ScanForInsertion(image, "chest")
    with pytest.raises(UserInputError, match=r"^chest: the requested centre \(0\.0, 40\.0, 0\.0\) mm lies outside "
                                             r"the lungs[^.]*\.$"):
        insert_nodules(scan, 0, np.random.default_rng(0), [NoduleRequest(6.0, center_xyz_mm=(0.0, 40.0, 0.0))])


def test_a_scan_without_lungs_is_refused():
    with pytest.raises(UserInputError, match="no lungs found"):
        ScanForInsertion(sitk.ReadImage(str(REALCT / "abdomen_6mm.nii.gz")), "abdomen")


def test_placed_nodules_are_in_the_lungs_clear_of_vessels_and_of_each_other():
    phantom = generate_phantom((5, 0), phantom_config("small"))
    scan = ScanForInsertion(phantom.image, "phantom")
    _, nodules = insert_nodules(scan, 6, np.random.default_rng(2))
    assert len(nodules) >= 4
    mask = sitk.GetArrayFromImage(phantom.lung_mask)
    for n in nodules:
        assert mask[tuple(np.rint(n.nodule.center_zyx_vox).astype(int))] > 0
        assert n.hidden_share <= scan.config.max_hidden_fraction or n.nodule.location == "juxtavascular"
    centres = np.array([n.nodule.center_xyz_mm for n in nodules])
    radii = np.array([n.nodule.diameter_mm / 2 for n in nodules])
    gaps = np.linalg.norm(centres[:, None] - centres[None], axis=-1) - radii[:, None] - radii[None]
    assert gaps[~np.eye(len(nodules), dtype=bool)].min() >= scan.config.gap_mm




def test_dataset_layout_boxes_excluded_and_same_seed_same_bytes(tmp_path):
    scan = REALCT / "A0001_5mm_L.nii.gz"
    boxes = read_boxes(REALCT / "A0001_5mm_L_boxes.csv")
    options = dict(nodules=4, copies=2, subsets=1, boxes={str(scan): boxes})
    written = write_inserted_dataset([scan], tmp_path / "a", seed=3, **options)
    write_inserted_dataset([scan], tmp_path / "b", seed=3, **options)
    write_inserted_dataset([scan], tmp_path / "c", seed=4, **options)
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b")
    assert snapshot(tmp_path / "a") != snapshot(tmp_path / "c")
    uids = read_seriesuids(tmp_path / "a" / "seriesuids.csv")
    assert uids == list(written) and len(uids) == 2
    names = {f"{uid}.{suffix}" for uid in uids for suffix in ("mhd", "raw")}
    assert {p.name for p in (tmp_path / "a" / "subset0").iterdir()} == names
    annotations = read_annotations(tmp_path / "a" / "annotations.csv")
    assert len(annotations) == sum(map(len, written.values())) >= 6
    excluded = read_annotations(tmp_path / "a" / "annotations_excluded.csv")
    assert len(excluded) == 2 * len(boxes)
    for centre, diameter in zip(annotations.centers_xyz_mm, annotations.diameters_mm):
        assert min(box.distance(centre[None])[0] for box in boxes) > diameter / 2
    source = sitk.ReadImage(str(scan))
    copy = sitk.ReadImage(str(tmp_path / "a" / "subset0" / f"{uids[0]}.mhd"))
    assert copy.GetDirection() == source.GetDirection() and copy.GetOrigin() == source.GetOrigin()


def test_insert_command_writes_a_dataset_that_evaluate_reads(tmp_path, capsys):
    scan = REALCT / "A0002_8mm_B70f.nii.gz"
    out = tmp_path / "ins"
    assert main(["insert", str(scan), "--out", str(out), "--nodules", "3", "--seed", "1", "--sizes", "5,12",
                 "--kinds", "solid,ground_glass", "--boxes", f"{scan}={REALCT / 'A0002_8mm_B70f_boxes.csv'}"]) == 0
    assert "nodules" in capsys.readouterr().out
    annotations = read_annotations(out / "annotations.csv")
    assert len(annotations) >= 2 and ((annotations.diameters_mm >= 5) & (annotations.diameters_mm <= 12)).all()
    assert main(["insert", str(REALCT / "abdomen_6mm.nii.gz"), "--out", str(tmp_path / "x"), "--nodules", "2"]) == 2
    assert "no lungs found" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("make, sentence", [
    (lambda: NoduleRequest(kind="calcified"),
     "NoduleRequest.kind: 'calcified' is not one of solid, ground_glass, part_solid."),
    (lambda: NoduleRequest(location="hilar"), "NoduleRequest.location: 'hilar' is not one of isolated, juxtavascular"),
    (lambda: InsertionConfig(diameter_mm=(8.0, 4.0)), "InsertionConfig.diameter_mm: (8.0, 4.0) is not 0 < smallest"),
    (lambda: InsertionConfig(kind_weights=(0.0, 0.0, 0.0)), "InsertionConfig.kind_weights: (0.0, 0.0, 0.0) is not"),
])
def test_requests_and_configs_refuse_what_cannot_be_drawn(make, sentence):
    with pytest.raises(UserInputError) as raised:
        make()
    assert str(raised.value).startswith(sentence)
