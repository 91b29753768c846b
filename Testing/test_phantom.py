"""Synthetic chest CT phantoms: anatomy where the annotations say, LUNA16's files, determinism."""

import os
import re
import stat
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from fault_helpers import snapshot
from scipy import ndimage

from SCPMNoduleLib import phantom
from SCPMNoduleLib.cli import main
from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.io import read_annotations, read_seriesuids
from SCPMNoduleLib.phantom.findings import power_law
from SCPMNoduleLib.phantom.generator import draw_anatomy
from SCPMNoduleLib.phantom.raster import Tubes, draw_sphere, draw_tubes
from SCPMNoduleLib.phantom.scanner import annotation_table, noise_gain
from SCPMNoduleLib.quasirandom import unit_ball_samples

UID = re.compile(r"^1\.3\.6\.1\.4\.1\.14519\.5\.2\.1\.6279\.6001\.[1-9]\d{29}$")
HEADER = "seriesuid,coordX,coordY,coordZ,diameter_mm"
SOFT_TISSUE_HU = 40.0


def write(path: Path, oblique: bool, seed: int = 21, scans: int = 2, **options):
    return phantom.write_luna16_dataset(path, scans, seed, subsets=3, oblique=oblique, nodules=(3, 5), **options)


@pytest.fixture(scope="module", params=[False, True], ids=["identity", "oblique"])
def dataset(request, tmp_path_factory):
    root = tmp_path_factory.mktemp("luna") / "phantoms"
    return root, write(root, request.param), request.param


def scan_path(root: Path, uid: str) -> Path:
    (path,) = root.glob(f"subset*/{uid}.mhd")
    return path




def test_annotations_round_trip_to_the_generators_voxel(dataset):
    root, written, oblique = dataset
    table = read_annotations(root / "annotations.csv")
    excluded = read_annotations(root / "annotations_excluded.csv")
    for uid, nodules in written.items():
        image = sitk.ReadImage(str(scan_path(root, uid)))
        direction = np.array(image.GetDirection()).reshape(3, 3)
        assert np.allclose(direction, np.eye(3)) != oblique
        for rows, included in ((table, True), (excluded, False)):
            mine = [n for n in nodules if n.included == included]
            rows = rows.select(rows.seriesuids == uid)
            assert len(rows) == len(mine)
            for center, diameter, nodule in zip(rows.centers_xyz_mm, rows.diameters_mm, mine):
                index_xyz = image.TransformPhysicalPointToContinuousIndex(center.tolist())
                np.testing.assert_allclose(index_xyz[::-1], nodule.center_zyx_vox, atol=1e-6)
                assert diameter == nodule.diameter_mm
    assert len(table) >= 4


def test_nodules_are_inside_a_lung_and_show_their_density(dataset):
    """Mean HU in each annotated sphere, read back from the files, against the median of a lung
    shell 1.5-4 mm outside it: solid nodules far above the parenchyma, ground-glass ones between
    parenchyma and soft tissue."""
    root, written, _ = dataset
    table = read_annotations(root / "annotations.csv")
    seen = {"solid": 0, "ground_glass": 0}
    for uid, nodules in written.items():
        image = sitk.ReadImage(str(scan_path(root, uid)))
        hu = sitk.GetArrayFromImage(image).astype(np.float64)
        lungs = sitk.GetArrayFromImage(sitk.ReadImage(str(root / "seg-lungs-LUNA16" / f"{uid}.mhd")))
        spacing_zyx = np.array(image.GetSpacing())[::-1]
        grid = np.meshgrid(*(np.arange(n) for n in hu.shape), indexing="ij", sparse=True)
        rows = table.select(table.seriesuids == uid)
        kinds = [n.kind for n in nodules if n.included]
        for center, diameter, kind in zip(rows.centers_xyz_mm, rows.diameters_mm, kinds):
            index = np.array(image.TransformPhysicalPointToContinuousIndex(center.tolist()))[::-1]
            assert lungs[tuple(np.rint(index).astype(int))] in phantom.LUNG_LABELS.values()
            distance = np.sqrt(sum(((g - c) * s) ** 2 for g, c, s in zip(grid, index, spacing_zyx)))
            radius = diameter / 2
            inside = hu[distance <= radius].mean()
            shell = np.median(hu[(distance > radius + 1.5) & (distance < radius + 4.0) & (lungs > 0)])
            assert -950 < shell < -700
            if kind == "solid":
                assert inside > shell + 300, (uid, diameter)
                seen["solid"] += 1
            elif kind == "ground_glass":
                assert shell + 75 < inside < SOFT_TISSUE_HU - 200, (uid, diameter)
                seen["ground_glass"] += 1
    assert seen["solid"] >= 1 and seen["ground_glass"] >= 1


def test_files_follow_luna16_layout(dataset):
    root, written, _ = dataset
    uids = read_seriesuids(root / "seriesuids.csv")
    assert uids == list(written)
    assert all(UID.match(uid) for uid in uids)
    assert (root / "seriesuids.csv").read_text(encoding="utf-8") == "".join(f"{uid}\n" for uid in uids)
    for name in ("annotations.csv", "annotations_excluded.csv"):
        lines = (root / name).read_text(encoding="utf-8").splitlines()
        assert lines[0] == HEADER
        assert {line.split(",")[0] for line in lines[1:]} <= set(uids)
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("subset")) == \
        ["subset0", "subset1", "subset2"]
    for i, uid in enumerate(uids):
        header = (root / f"subset{i % 3}" / f"{uid}.mhd").read_text(encoding="utf-8")
        fields = dict(line.split(" = ", 1) for line in header.splitlines())
        assert fields["ElementType"] == "MET_SHORT" and fields["ElementDataFile"] == f"{uid}.raw"
        size = [int(v) for v in fields["DimSize"].split()]
        assert (root / f"subset{i % 3}" / f"{uid}.raw").stat().st_size == 2 * np.prod(size)
        mask = sitk.ReadImage(str(root / "seg-lungs-LUNA16" / f"{uid}.mhd"))
        image = sitk.ReadImage(str(root / f"subset{i % 3}" / f"{uid}.mhd"))
        assert mask.GetSize() == image.GetSize() and mask.GetDirection() == image.GetDirection()
        assert set(np.unique(sitk.GetArrayViewFromImage(mask))) == {0, 3, 4}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path):
    first = write(tmp_path / "a", oblique=True, scans=1)
    again = write(tmp_path / "b", oblique=True, scans=1)
    other = write(tmp_path / "c", oblique=True, scans=1, seed=22)
    assert list(first) == list(again) and list(first) != list(other)
    assert snapshot(tmp_path / "a") == snapshot(tmp_path / "b") != snapshot(tmp_path / "c")


@pytest.mark.slow
def test_parallel_workers_write_the_same_bytes(tmp_path):
    serial = write(tmp_path / "serial", oblique=False, scans=4, preview=True)
    parallel = write(tmp_path / "parallel", oblique=False, scans=4, preview=True, workers=3)
    assert list(serial) == list(parallel) == [phantom.series_uid(21, i) for i in range(4)]
    assert len(list((tmp_path / "parallel" / "preview").iterdir())) == 4
    assert snapshot(tmp_path / "serial") == snapshot(tmp_path / "parallel")


@pytest.mark.parametrize("workers", [1, 2])
def test_interrupted_write_leaves_nothing(tmp_path, workers):
    def stop(done, total):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        phantom.write_luna16_dataset(tmp_path / "out", 2, 0, progress=stop, workers=workers)
    assert list(tmp_path.iterdir()) == []


def test_refuses_a_folder_with_files(tmp_path):
    (tmp_path / "keep.txt").write_text("x", encoding="utf-8")
    with pytest.raises(UserInputError, match="not an empty folder"):
        phantom.write_luna16_dataset(tmp_path, 1, 0)
    with pytest.raises(UserInputError, match="number of workers must be at least 1"):
        phantom.write_luna16_dataset(tmp_path / "new", 1, 0, workers=0)
    with pytest.raises(UserInputError, match="unknown phantom option"):
        phantom.make_phantom(0, color="red")


@pytest.mark.slow
def test_cli_writes_a_dataset_with_previews(tmp_path, capsys):
    out = tmp_path / "data"
    assert main(["phantom", "--out", str(out), "--scans", "2", "--seed", "4", "--subsets", "2",
                 "--preview", "--no-lung-masks"]) == 0
    uids = read_seriesuids(out / "seriesuids.csv")
    assert [len(list((out / f"subset{k}").glob("*.mhd"))) for k in range(2)] == [1, 1]
    assert not (out / "seg-lungs-LUNA16").exists()
    for uid in uids:
        assert (out / "preview" / f"{uid}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "wrote 2 scans" in capsys.readouterr().out
    assert main(["phantom", "--out", str(out), "--scans", "1"]) == 2


def test_power_law_diameters_follow_their_distribution():
    """Quantiles of p(d) ∝ d^-a on [3, 30]: F(d) = (3^(1-a) - d^(1-a)) / (3^(1-a) - 30^(1-a))."""
    rng = np.random.default_rng(0)
    draws = np.array([power_law(rng, 3.0, 30.0, 1.8) for _ in range(20000)])
    for d in (4.0, 6.0, 10.0, 20.0):
        expected = (3.0 ** -0.8 - d ** -0.8) / (3.0 ** -0.8 - 30.0 ** -0.8)
        assert abs((draws <= d).mean() - expected) < 0.01


def test_filtered_noise_has_the_drawn_level():
    """The gain used to scale white noise equals the measured standard deviation after the filter."""
    sigma = (0.5, 0.9, 1.2)
    white = np.random.default_rng(1).standard_normal((64, 64, 64))
    filtered = ndimage.gaussian_filter(white, sigma, truncate=3.0, mode="nearest")[8:-8, 8:-8, 8:-8]
    assert filtered.std() == pytest.approx(noise_gain(sigma, 3.0), rel=0.03)


@pytest.mark.parametrize("radius", [0.3, 1.5, 5.0])
def test_tubes_have_the_volume_of_their_capsule(radius):
    """Painted tissue (sum of covers × voxel volume) of an oblique tube against
    π r² L + 4/3 π r³ (thin tubes are splatted: π r² L only, no caps)."""
    spacing = np.array([1.3, 0.7, 0.7])
    volume = np.zeros((60, 120, 120), np.float32)
    a, b = np.array([20.0, 25.0, 20.0]), np.array([55.0, 55.0, 60.0])
    tube = Tubes.of(a, b, radius, radius)
    draw_tubes(volume, spacing, tube, 1.0, darken=False, splat_below_mm=0.5)
    length = np.linalg.norm(b - a)
    expected = np.pi * radius ** 2 * length + (4 / 3 * np.pi * radius ** 3 if radius >= 0.5 else 0.0)
    assert volume.sum() * spacing.prod() == pytest.approx(expected, rel=0.04)


@pytest.mark.parametrize("radius", [1.0, 2.0, 6.0])
def test_nodules_have_the_volume_of_their_sphere(radius):
    spacing = np.array([1.3, 0.7, 0.7])
    volume = np.zeros((24, 40, 40), np.float32)
    draw_sphere(volume, spacing, np.array([15.1, 14.2, 13.9]), radius, 1.0)
    assert volume.sum() * spacing.prod() == pytest.approx(4 / 3 * np.pi * radius ** 3, rel=0.03)


def _share_inside_capsules(center: np.ndarray, radius: float, tubes) -> float:
    """Monte Carlo share of a ball inside any tapered capsule: a point is inside a capsule when its
    distance to the axis segment is at most the radius interpolated at its projection."""
    points = center + radius * unit_ball_samples(4096)
    inside = np.zeros(len(points), bool)
    for lo in range(0, len(tubes), 1024):
        a, b = tubes.a[lo:lo + 1024], tubes.b[lo:lo + 1024]
        ra, rb = tubes.ra[lo:lo + 1024], tubes.rb[lo:lo + 1024]
        axis = b - a
        to_point = points[:, None, :] - a[None]
        t = np.clip((to_point * axis).sum(-1) / np.maximum((axis * axis).sum(-1), 1e-12), 0.0, 1.0)
        distance = np.linalg.norm(to_point - t[..., None] * axis, axis=-1)
        inside |= (distance <= ra + t * (rb - ra)).any(axis=1)
    return float(inside.mean())


def test_no_finding_is_hidden_in_a_vessel_or_an_airway():
    """Every finding is placed where vessels and airways, as drawn capsules, take at most
    ``max_hidden_fraction`` of its ball (up to the voxel-level estimate the generator uses); with
    the rule off, the same scans put findings inside vessels, so the check can tell."""
    config = phantom.phantom_config("small", nodules=(8, 8))
    worst = {}
    for limit in (config.max_hidden_fraction, 1.0):
        shares = []
        for seed in range(3):
            *_, trees, findings = draw_anatomy(np.random.default_rng(seed),
                                               replace(config, max_hidden_fraction=limit))
            tubes = Tubes.concat([trees.vessels, trees.airways])
            shares += [_share_inside_capsules(f.center_mm, f.radius, tubes) for f in findings]
        assert len(shares) >= 20
        worst[limit] = max(shares)
    assert worst[config.max_hidden_fraction] <= config.max_hidden_fraction + 0.05
    assert worst[1.0] > config.max_hidden_fraction + 0.1


def test_importing_the_generator_does_not_import_torch():
    """The phantom package is numpy only (a fresh interpreter, so no other test's imports count)."""
    code = ("import sys\nimport SCPMNoduleLib.phantom\n"
            "print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('torch.')))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"


def test_the_annotation_table_holds_the_nodules_in_world_mm_in_order():
    nodules = [phantom.Nodule((1.5, -2.0, 3.0), (0.0, 0.0, 0.0), 6.5, "solid", "isolated", "smooth", True),
               phantom.Nodule((-4.0, 5.0, -6.25), (1.0, 2.0, 3.0), 2.0, "calcified", "juxtapleural", "smooth",
                              False)]
    table = annotation_table("1.2.3", nodules)
    assert list(table.seriesuids) == ["1.2.3", "1.2.3"]
    np.testing.assert_array_equal(table.centers_xyz_mm, [[1.5, -2.0, 3.0], [-4.0, 5.0, -6.25]])
    np.testing.assert_array_equal(table.diameters_mm, [6.5, 2.0])
    assert np.isnan(table.probabilities).all(), "the truth has no probability"
    assert len(annotation_table("1.2.3", [])) == 0


def test_the_dataset_folder_gets_the_mode_the_umask_gives(tmp_path):
    previous = os.umask(0o027)
    try:
        phantom.write_luna16_dataset(tmp_path / "out", 1, 0, lung_masks=False)
    finally:
        os.umask(previous)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o750
    assert stat.S_IMODE((tmp_path / "out" / "subset0").stat().st_mode) == 0o750
