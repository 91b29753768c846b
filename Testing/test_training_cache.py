"""The pre-processing cache: right voxels for the annotations, resumable, corrupt files rebuilt."""

import json

import numpy as np
import pytest
from scipy import ndimage

from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.preprocess import PreprocessConfig
from Training.cache import build_cache, load_cache

from training_helpers import LUNG_HU, NODULE_HU, write_tiny_luna16


@pytest.fixture
def cached(tmp_path):
    findings = write_tiny_luna16(tmp_path / "data", n_scans=3)
    summary = build_cache(tmp_path / "data", tmp_path / "cache", progress=False)
    return tmp_path, findings, summary


def test_cache_holds_each_annotation_at_its_nodule(cached):
    tmp_path, findings, summary = cached
    assert summary == {"scans": 3, "built": 3, "skipped": 0}
    scans = load_cache(tmp_path / "cache")
    assert [s.fold for s in scans] == [0, 1, 0]
    config = PreprocessConfig()
    nodule, lung = config.normalize(np.array([NODULE_HU, LUNG_HU]))
    for scan in scans:
        rows = findings.seriesuids == scan.seriesuid
        np.testing.assert_allclose(scan.radii_vox, findings.diameters_mm[rows] / 2)  # 1 mm voxels
        volume = scan.volume().astype(np.float32)
        # the nodule's normalised intensity (within noise) at the center, parenchyma 1.5 radii away
        at_center = ndimage.map_coordinates(volume, scan.centers_zyx_vox.T, order=1)
        np.testing.assert_allclose(at_center, nodule, atol=0.03)
        beside = scan.centers_zyx_vox + np.array([0.0, 0.0, 1.5]) * scan.radii_vox[:, None]
        np.testing.assert_allclose(ndimage.map_coordinates(volume, beside.T, order=1), lung, atol=0.03)
        metadata = json.loads((tmp_path / "cache" / "scans" / f"{scan.seriesuid}.json").read_text(encoding="utf-8"))
        assert metadata["resampled"]["spacing_xyz_mm"] == [1.0, 1.0, 1.0]
        assert metadata["original"]["spacing_xyz_mm"] == [1.25, 1.25, 2.0]


def test_second_run_skips_valid_scans_and_rebuilds_corrupt_or_truncated_ones(cached):
    tmp_path, _, _ = cached
    scans_dir = tmp_path / "cache" / "scans"
    first, second, _ = sorted(scans_dir.glob("*[0-9].npy"))
    original = np.load(first)
    data = bytearray(first.read_bytes())
    data[-100] ^= 0xFF  # same size, one byte changed
    first.write_bytes(bytes(data))
    with pytest.raises(UserInputError, match="checksum"):
        load_cache(tmp_path / "cache")
    second.write_bytes(second.read_bytes()[:-10])  # truncated
    with pytest.raises(UserInputError, match="size"):
        load_cache(tmp_path / "cache", checksum=False)

    summary = build_cache(tmp_path / "data", tmp_path / "cache", workers=2, progress=False)
    assert summary == {"scans": 3, "built": 2, "skipped": 1}
    load_cache(tmp_path / "cache")
    np.testing.assert_array_equal(np.load(first), original)


def test_a_cache_made_before_pad_hu_was_a_preprocessing_field_stays_valid(cached):
    """Files that hold no ``pad_hu`` describe the default, so neither run rebuilds or refuses them."""
    tmp_path, _, _ = cached
    for path in [tmp_path / "cache" / "cache.json", *(tmp_path / "cache" / "scans").glob("*.json")]:
        content = json.loads(path.read_text(encoding="utf-8"))
        del content["preprocess"]["pad_hu"]
        path.write_text(json.dumps(content), encoding="utf-8")
    assert len(load_cache(tmp_path / "cache")) == 3
    assert build_cache(tmp_path / "data", tmp_path / "cache", progress=False) == {"scans": 3, "built": 0, "skipped": 3}
    other = PreprocessConfig(pad_hu=-1000.0)
    assert build_cache(tmp_path / "data", tmp_path / "cache", other, progress=False)["built"] == 3


def test_a_cache_cropped_by_the_retired_lung_mask_is_rebuilt(cached):
    """Scans cached before the lung finder carry ``lung_min_volume_ml``: their crops came from the old
    mask, so the next preprocess rebuilds them although the config reads as the same."""
    tmp_path, _, _ = cached
    for path in [tmp_path / "cache" / "cache.json", *(tmp_path / "cache" / "scans").glob("*.json")]:
        content = json.loads(path.read_text(encoding="utf-8"))
        content["preprocess"]["lung_min_volume_ml"] = 5.0
        path.write_text(json.dumps(content), encoding="utf-8")
    assert build_cache(tmp_path / "data", tmp_path / "cache", progress=False)["built"] == 3


def test_cache_refuses_a_folder_without_luna16_subsets(tmp_path):
    (tmp_path / "data").mkdir()
    with pytest.raises(UserInputError, match="subset"):
        build_cache(tmp_path / "data", tmp_path / "cache", progress=False)


def test_cache_files_of_another_version_or_damaged_name_the_file_and_the_remedy(cached):
    tmp_path, _, _ = cached
    cache = tmp_path / "cache"
    metadata_path = sorted((cache / "scans").glob("*.json"))[0]
    metadata = json.loads(metadata_path.read_text(encoding="utf-8"))
    metadata_path.write_text(json.dumps({**metadata, "version": 0}), encoding="utf-8")
    with pytest.raises(UserInputError) as raised:
        load_cache(cache, checksum=False)
    assert str(raised.value).startswith(
        f"{metadata_path}: scpm-train-cache version 0 is not the version 1 this program reads; "
        "run scpm-train preprocess --data ")
    metadata_path.write_text("{", encoding="utf-8")
    with pytest.raises(UserInputError, match=r"the file is not valid JSON \(.*\); run scpm-train preprocess"):
        load_cache(cache, checksum=False)
    assert build_cache(tmp_path / "data", cache, progress=False)["built"] == 1

    info = json.loads((cache / "cache.json").read_text(encoding="utf-8"))
    (cache / "cache.json").write_text(json.dumps({**info, "format": "other"}), encoding="utf-8")
    with pytest.raises(UserInputError) as raised:
        load_cache(cache)
    assert str(raised.value) == (f"{cache / 'cache.json'}: the file is not a scpm-train cache description (its "
                                 "format is 'other', not 'scpm-train-cache'); run scpm-train preprocess again.")


def test_one_cache_from_several_folders_keeps_each_scans_fold_and_findings(tmp_path):
    first = write_tiny_luna16(tmp_path / "phantoms", n_scans=2, subsets=2, seed=1)
    second = write_tiny_luna16(tmp_path / "inserted", n_scans=1, subsets=1, seed=2)
    summary = build_cache([tmp_path / "phantoms", tmp_path / "inserted"], tmp_path / "cache", progress=False)
    assert summary == {"scans": 3, "built": 3, "skipped": 0}
    scans = {scan.seriesuid: scan for scan in load_cache(tmp_path / "cache")}
    assert {uid: scan.fold for uid, scan in scans.items()} == {
        "1.3.6.1.4.1.14519.5.2.1.1.0": 0, "1.3.6.1.4.1.14519.5.2.1.1.1": 1, "1.3.6.1.4.1.14519.5.2.1.2.0": 0}
    for findings in (first, second):
        for uid in set(findings.seriesuids):
            rows = findings.seriesuids == uid
            np.testing.assert_allclose(scans[uid].annotations.centers_xyz_mm, findings.centers_xyz_mm[rows])
            np.testing.assert_allclose(scans[uid].radii_vox, findings.diameters_mm[rows] / 2)
    info = json.loads((tmp_path / "cache" / "cache.json").read_text(encoding="utf-8"))
    assert info["data_dirs"] == [str((tmp_path / "phantoms").resolve()), str((tmp_path / "inserted").resolve())]
    # the second folder again, beside the first: its scan is the first folder's too
    write_tiny_luna16(tmp_path / "again", n_scans=1, subsets=1, seed=1)
    with pytest.raises(UserInputError, match=r"again/subset0/1\.3\.6\.1\.4\.1\.14519\.5\.2\.1\.1\.0\.mhd: seriesuid .* "
                                             r"is also .*phantoms/subset0/.*; the folders of one cache must not"):
        build_cache([tmp_path / "phantoms", tmp_path / "again"], tmp_path / "cache2", progress=False)


def test_a_cache_written_with_one_data_dir_still_reads(cached):
    tmp_path, _, _ = cached
    path = tmp_path / "cache" / "cache.json"
    info = json.loads(path.read_text(encoding="utf-8"))
    info["data_dir"] = info.pop("data_dirs")[0]
    path.write_text(json.dumps(info), encoding="utf-8")
    assert len(load_cache(tmp_path / "cache")) == 3
