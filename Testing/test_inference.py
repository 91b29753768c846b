"""Whole-scan detection: tiling, geometry back to world LPS, NMS and cap, checkpoints."""

import json
import math
import threading
from dataclasses import replace

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import torch.nn.functional as F
from torch import nn

from SCPMNoduleLib import models
from SCPMNoduleLib.checkpoint import load_checkpoint, save_checkpoint
from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.inference import DetectionCancelled, Detector, InferenceConfig
from SCPMNoduleLib.io import sha256_of
from SCPMNoduleLib.model import SCPMNet, SCPMNetConfig
from SCPMNoduleLib.preprocess import PreprocessConfig
from SCPMNoduleLib.scan_geometry import ScanGeometry
from SCPMNoduleLib.tiling import plan_tiles

NO_MASK = PreprocessConfig(lung_mask=False)


class BrightCentroid(nn.Module):
    """A hand-made detector: one level of stride 4 whose maps are set by formulas, not training.

    For each grid point j (the 4-voxel block with center p = 4 j + 1.5): the logit is
    20 (max of the block - 0.5), so blocks holding a bright peak score high; the bright weight
    w = relu(v - 0.3) over the 12-voxel window centered on p has the centroid c, giving the
    offset (c - p) / 4; the radius is 1 grid voxel (4 mm at 1 mm spacing). A symmetric blob is
    thus reported at its center.
    """

    strides = (4,)
    size_divisor = 4

    def forward(self, image, patch_origin_zyx=None, scan_shape_zyx=None):
        image = image.contiguous()
        weight = F.relu(image - 0.3)
        axes = [torch.arange(n, dtype=image.dtype).view(*(-1 if a == k else 1 for a in range(3)))
                for k, n in enumerate(image.shape[2:])]

        def pool(x):
            return F.avg_pool3d(x, 12, stride=4, padding=4, count_include_pad=True)

        mass = pool(weight)
        centroid = torch.cat([pool(weight * axis) for axis in axes], dim=1) / mass.clamp_min(1e-9)
        grid = [torch.arange(n // 4, dtype=image.dtype) * 4 + 1.5 for n in image.shape[2:]]
        points = torch.stack(torch.meshgrid(*grid, indexing="ij"))[None]
        offset = torch.where(mass > 1e-9, (centroid - points) / 4, torch.zeros_like(centroid))
        logits = 20 * (F.max_pool3d(image, 4) - 0.5)
        return [{"logits": logits, "radius": torch.ones_like(mass), "offset": offset}]


def _rotation(angle_deg: float) -> np.ndarray:
    a = np.deg2rad(angle_deg)
    rz = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    rx = np.array([[1, 0, 0], [0, np.cos(a), -np.sin(a)], [0, np.sin(a), np.cos(a)]])
    return rz @ rx @ np.diag([-1.0, 1.0, -1.0])


def blob_scan(shape_zyx, spacing, origin, direction, centers_xyz_mm, sigma_mm=2.0) -> sitk.Image:
    """Air (-1000 HU) with Gaussian blobs of +1400 HU at given world points, sampled on the grid."""
    image = sitk.Image([int(n) for n in shape_zyx[::-1]], sitk.sitkFloat32)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    image.SetDirection(tuple(np.asarray(direction).ravel()))
    geometry = ScanGeometry.from_image(image)
    index = np.stack(np.meshgrid(*[np.arange(n) for n in shape_zyx], indexing="ij"), -1)
    world = geometry.index_to_world(index)
    values = np.full(shape_zyx, -1000.0)
    for center in np.asarray(centers_xyz_mm).reshape(-1, 3):
        values += 1400 * np.exp(-((world - center) ** 2).sum(-1) / (2 * sigma_mm**2))
    out = sitk.GetImageFromArray(values.astype(np.float32))
    out.CopyInformation(image)
    return out


@pytest.mark.parametrize(
    "shape_zyx, spacing, direction",
    [((30, 44, 40), (0.8, 0.9, 1.6), _rotation(20)),        # oblique and axis-flipped
     ((9, 11, 10), (1.3, 1.2, 1.4), np.diag([1.0, -1.0, 1.0]))],  # smaller than one tile
)
def test_nodule_is_reported_at_its_world_point(shape_zyx, spacing, direction):
    origin = (-30.0, 40.0, -200.0)
    reference = sitk.Image([int(n) for n in shape_zyx[::-1]], sitk.sitkFloat32)
    reference.SetSpacing(spacing)
    reference.SetOrigin(origin)
    reference.SetDirection(tuple(np.asarray(direction).ravel()))
    geometry = ScanGeometry.from_image(reference)
    truth = geometry.index_to_world((np.asarray(shape_zyx) - 1) / 2 + np.array([0.37, -0.21, 0.44]))
    scan = blob_scan(shape_zyx, spacing, origin, direction, truth)
    detector = Detector(BrightCentroid(), NO_MASK, InferenceConfig(max_tile_voxels=32**3, tile_margin_vox=8))
    detections = detector.detect(scan).detections
    assert len(detections) == 1
    found = np.asarray(detections[0].center_xyz_mm)
    assert np.linalg.norm(found - truth) < 0.5 * min(spacing)
    assert detections[0].diameter_mm == pytest.approx(8.0)
    assert detections[0].probability > 0.5


def test_nms_leaves_one_detection_per_nodule_and_the_cap_applies():
    # 5 x 5 x 6 = 150 blobs 14 mm apart (one 14 mm cell repeated), each covered by several
    # high-scoring grid points
    centers_zyx = np.stack(np.meshgrid(*[np.arange(n) * 14.0 + 6.7 for n in (5, 5, 6)], indexing="ij"), -1)
    centers_xyz = centers_zyx.reshape(-1, 3)[:, ::-1]
    cell = sitk.GetArrayFromImage(blob_scan((14, 14, 14), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3),
                                            [[6.7, 6.7, 6.7]], sigma_mm=1.5))
    scan = sitk.GetImageFromArray(np.tile(cell, (5, 5, 6)))
    detector = Detector(BrightCentroid(), NO_MASK, InferenceConfig(max_detections=1000, top_n=10000))
    found_all = detector.detect(scan).detections
    assert len(found_all) == 150
    distance = np.linalg.norm(np.asarray([d.center_xyz_mm for d in found_all])[:, None] - centers_xyz[None], axis=-1)
    assert np.all(distance.min(axis=1) < 0.5)
    assert sorted(distance.argmin(axis=1)) == list(range(150))  # each blob exactly once
    capped = Detector(BrightCentroid(), NO_MASK, InferenceConfig(top_n=10000)).detect(scan).detections
    assert len(capped) == 100
    probabilities = [d.probability for d in capped]
    assert probabilities == sorted(probabilities, reverse=True)
    assert probabilities[-1] >= sorted(d.probability for d in found_all)[-100]


def test_maps_decoded_with_another_config_are_that_configs_detections():
    # 3 x 3 x 3 blobs 14 mm apart; the maps are computed once and decoded twice (how the
    # post-processing is tuned without re-running the network)
    cell = sitk.GetArrayFromImage(blob_scan((14, 14, 14), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3),
                                            [[6.7, 6.7, 6.7]], sigma_mm=1.5))
    scan = sitk.GetImageFromArray(np.tile(cell, (3, 3, 3)))
    loose = InferenceConfig(max_detections=1000, top_n=10000, nms_distance_ratio=0.0, nms_iou_threshold=1.0)
    detector = Detector(BrightCentroid(), NO_MASK, InferenceConfig(max_detections=5))
    maps, prepared = detector.predict_maps(scan)
    assert len(detector.decode(maps, prepared)) == 5
    undeduplicated = detector.decode(maps, prepared, loose)
    assert tuple(undeduplicated) == Detector(BrightCentroid(), NO_MASK, loose).detect(scan).detections
    assert len(undeduplicated) > 27  # without NMS each blob is reported by several grid points


class LeaningCentroid(BrightCentroid):
    """BrightCentroid that reports every sphere one voxel further along +z, +y and +x."""

    def forward(self, image, patch_origin_zyx=None, scan_shape_zyx=None):
        (level,) = super().forward(image, patch_origin_zyx, scan_shape_zyx)
        return [{**level, "offset": level["offset"] + 0.25}]


@pytest.mark.parametrize("axes", ["", "x", "zy", "zyx"])
def test_mirrored_passes_cancel_a_networks_lean_along_the_mirrored_axes(axes):
    """A mirrored tile's offsets come back with their sign flipped along the mirrored axes, so
    the lean cancels there (and only there); the blob's probability is the unmirrored one."""
    shape_zyx = (36, 40, 44)
    truth_zyx = np.array([17.3, 19.6, 21.2])
    scan = blob_scan(shape_zyx, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), [truth_zyx[::-1]])
    config = InferenceConfig(tile_margin_vox=8, mirror_axes=axes)
    assert len(config.mirror_dims()) == 2 ** len(axes)
    (found,) = Detector(LeaningCentroid(), NO_MASK, config).detect(scan).detections
    lean = np.array([0.0 if axis in axes else 1.0 for axis in "zyx"])
    np.testing.assert_allclose(np.asarray(found.center_xyz_mm)[::-1] - truth_zyx, lean, atol=0.1)
    (plain,) = Detector(BrightCentroid(), NO_MASK, InferenceConfig(tile_margin_vox=8)).detect(scan).detections
    assert found.probability == pytest.approx(plain.probability, abs=1e-6)


def test_mirror_axes_other_than_z_y_x_are_refused():
    with pytest.raises(UserInputError,
                       match=r"^InferenceConfig.mirror_axes: 'xw' is not distinct letters among z, y, x\.$"):
        InferenceConfig(mirror_axes="xw")
    with pytest.raises(UserInputError, match="distinct"):
        InferenceConfig(mirror_axes="xx")


def test_tile_plan_covers_each_voxel_once_with_margins():
    shape, q, margin, budget = (64, 256, 96), 16, 32, 64 * 160 * 96
    tiles = plan_tiles(shape, q, margin, budget)
    assert len(tiles) > 1
    owned = np.zeros(shape, dtype=int)
    for tile in tiles:
        assert math.prod(tile.size) <= budget
        assert all(o % q == 0 and n % q == 0 for o, n in zip(tile.origin, tile.size))
        owned[tuple(slice(a, b) for a, b in zip(tile.own_start, tile.own_stop))] += 1
        for o, n, a, b, length in zip(tile.origin, tile.size, tile.own_start, tile.own_stop, shape):
            assert o <= max(a - margin, 0) and o + n >= min(b + margin, length)
    np.testing.assert_array_equal(owned, 1)


def _smooth_volume(shape_zyx, seed):
    rng = np.random.default_rng(seed)
    noise = torch.from_numpy(rng.normal(0, 1, shape_zyx).astype(np.float32))[None, None]
    smooth = F.avg_pool3d(noise, 5, stride=1, padding=2)[0, 0].numpy()
    return sitk.GetImageFromArray((-600 + 2000 * smooth).astype(np.float32))


@pytest.mark.slow
def test_tiled_detections_match_the_whole_volume():
    torch.manual_seed(0)
    model = SCPMNet(SCPMNetConfig(**{**SCPMNetConfig.tiny().__dict__, "head_init_std": 1.0,
                                     "prior_probability": 0.05}))
    scan = _smooth_volume((32, 384, 32), seed=1)
    # margin 96: the tiny configuration's 99.9% gradient receptive field (see tiling.py)
    whole_config = InferenceConfig(score_threshold=0.5, tile_margin_vox=96, min_side_vox=32)
    tiled_config = replace(whole_config, max_tile_voxels=32 * 320 * 32)
    assert len(plan_tiles((32, 384, 32), 16, 96, tiled_config.max_tile_voxels)) == 3
    assert len(plan_tiles((32, 384, 32), 16, 96, whole_config.max_tile_voxels)) == 1
    whole = Detector(model, NO_MASK, whole_config).detect(scan).detections
    tiled = Detector(model, NO_MASK, tiled_config).detect(scan).detections
    assert len(whole) > 10 and len(tiled) == len(whole)
    a = np.asarray([d.center_xyz_mm for d in whole])
    b = np.asarray([d.center_xyz_mm for d in tiled])
    pairs = np.linalg.norm(a[:, None] - b[None], axis=-1).argmin(axis=1)
    assert sorted(pairs) == list(range(len(whole)))
    np.testing.assert_allclose(b[pairs], a, atol=0.1)  # 1 mm voxels
    p_whole = np.array([d.probability for d in whole])
    p_tiled = np.array([d.probability for d in tiled])[pairs]
    np.testing.assert_allclose(p_tiled, p_whole, atol=0.01)
    assert p_whole.max() - p_whole.min() > 0.1  # the comparison is not between constants


def test_cancel_stops_detection():
    cancel = threading.Event()
    cancel.set()
    scan = blob_scan((12, 12, 12), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), [[5.0, 5.0, 5.0]])
    with pytest.raises(DetectionCancelled):
        Detector(BrightCentroid(), NO_MASK).detect(scan, cancel=cancel)


def test_progress_reports_stages_in_order():
    seen = []
    scan = blob_scan((12, 12, 12), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), [[5.0, 5.0, 5.0]])
    Detector(BrightCentroid(), NO_MASK).detect(scan, progress=lambda f, s: seen.append((f, s)))
    fractions = [f for f, _ in seen]
    assert fractions == sorted(fractions) and fractions[0] == 0.0 and fractions[-1] == 1.0
    assert [s for _, s in seen][0] == "resample" and "forward" in [s for _, s in seen]


def test_checkpoint_round_trip_gives_the_same_outputs(tmp_path):
    torch.manual_seed(3)
    model = SCPMNet(SCPMNetConfig.tiny()).eval()
    preprocess = PreprocessConfig(hu_min=-1000.0)
    save_checkpoint(tmp_path / "m.pt", model, preprocess, {"trained": False})
    loaded, loaded_preprocess, metadata = load_checkpoint(tmp_path / "m.pt")
    assert loaded_preprocess == preprocess and metadata == {"trained": False}
    x = torch.randn(1, 1, 16, 16, 16)
    with torch.inference_mode():
        for a, b in zip(model(x), loaded(x)):
            torch.testing.assert_close(a["logits"], b["logits"], rtol=0, atol=0)


def _checkpoint_dict(**changes):
    model = SCPMNet(SCPMNetConfig.tiny())
    checkpoint = {"format": "scpm-nodule-checkpoint", "version": 1,
                  "model_config": dict(SCPMNetConfig.tiny().__dict__),
                  "preprocess_config": PreprocessConfig().to_dict(), "state_dict": model.state_dict(),
                  "metadata": {}}
    checkpoint.update(changes)
    return checkpoint


@pytest.mark.parametrize("change, message", [
    ({"format": "other"}, "not an SCPM-Net checkpoint"),
    ({"version": 2}, "checkpoint version 2"),
    ({"model_config": {"encoder_channels": [4, 8], "unknown_layer": 3}}, "architecture"),
    ({"model_config": {**SCPMNetConfig.tiny().__dict__, "encoder_channels": (4, 8, 8, 16)}},
     "weights do not match"),
    ({"preprocess_config": {"version": 99}},
     r"x.pt: pre-processing version 99 is not the version 1 this program reads\.$"),
])
def test_foreign_checkpoints_are_refused(tmp_path, change, message):
    torch.save(_checkpoint_dict(**change), tmp_path / "x.pt")
    with pytest.raises(UserInputError, match=message):
        load_checkpoint(tmp_path / "x.pt")


def test_corrupt_checkpoint_is_refused(tmp_path):
    save_checkpoint(tmp_path / "m.pt", SCPMNet(SCPMNetConfig.tiny()), PreprocessConfig())
    data = (tmp_path / "m.pt").read_bytes()
    (tmp_path / "m.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserInputError, match="m.pt: the file is not a readable checkpoint"):
        load_checkpoint(tmp_path / "m.pt")


def test_manifest_names_resolve_and_checksums_are_verified(tmp_path, monkeypatch):
    save_checkpoint(tmp_path / "w.pt", SCPMNet(SCPMNetConfig.tiny()), PreprocessConfig(),
                    {"trained": False})
    manifest = {"format": "scpm-nodule-models", "version": 1, "models": [
        {"name": "mine", "version": "1", "file": "w.pt", "sha256": sha256_of(tmp_path / "w.pt")},
        {"name": "tampered", "version": "1", "file": "w.pt", "sha256": "0" * 64}]}
    (tmp_path / "Models.json").write_text(json.dumps(manifest), encoding="utf-8")
    monkeypatch.setattr(models, "MANIFEST_CANDIDATES", (tmp_path / "Models.json",))
    detector = Detector.from_checkpoint("mine", device="cpu")
    assert detector.info["name"] == "mine" and not detector.trained
    with pytest.raises(UserInputError, match="does not match the manifest"):
        Detector.from_checkpoint("tampered", device="cpu")
    with pytest.raises(UserInputError, match="known: mine, tampered"):
        Detector.from_checkpoint("nothing", device="cpu")


def test_bundled_demo_resolves_and_reports_whether_it_is_trained():
    detector = Detector.from_checkpoint("demo", device="cpu")
    manifest = models.read_manifest()
    entry = next(e for e in manifest["models"] if e["name"] == "demo")
    assert detector.trained == entry["trained"]
    assert isinstance(detector.model, SCPMNet)


class RunsOutOfMemory(BrightCentroid):
    """BrightCentroid that fails like the CUDA allocator on inputs above ``limit`` voxels."""

    def __init__(self, limit: int):
        super().__init__()
        self.limit, self.sizes = limit, []

    def forward(self, image, patch_origin_zyx=None, scan_shape_zyx=None):
        self.sizes.append(image[0, 0].numel())
        if image[0, 0].numel() > self.limit:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().forward(image, patch_origin_zyx, scan_shape_zyx)


def test_out_of_memory_retries_with_smaller_tiles_and_says_so(caplog):
    truth = np.array([[6.2, 40.3, 5.9]])  # x, y, z mm in a 1 mm scan with origin 0
    scan = blob_scan((16, 64, 16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), truth)
    config = InferenceConfig(tile_margin_vox=8, min_side_vox=4)
    model = RunsOutOfMemory(limit=16 * 40 * 16)
    result = Detector(model, NO_MASK, config).detect(scan)
    assert model.sizes[0] == 16 * 64 * 16 and max(model.sizes[-2:]) <= model.limit
    assert result.tile_voxels == model.sizes[-1] <= model.limit and result.device == "cpu"
    assert "out of memory on cpu with tiles of 16384 voxels; retrying with smaller tiles" in caplog.text
    detections = result.detections
    reference = Detector(BrightCentroid(), NO_MASK, config).detect(scan).detections
    assert len(detections) == len(reference) == 1
    np.testing.assert_allclose(detections[0].center_xyz_mm, reference[0].center_xyz_mm, atol=1e-5)
    np.testing.assert_allclose(detections[0].center_xyz_mm, truth[0], atol=0.5)


class OutOfMemoryOffTheCpu(BrightCentroid):
    """BrightCentroid whose memory runs out on every device but the CPU; it records the device of
    each input and each device it is moved to."""

    def __init__(self):
        super().__init__()
        self.inputs, self.moves = [], []

    def _apply(self, fn, recurse=True):
        self.moves.append(fn(torch.zeros(())).device.type)
        return super()._apply(fn, recurse)

    def forward(self, image, patch_origin_zyx=None, scan_shape_zyx=None):
        self.inputs.append(image.device.type)
        if image.device.type != "cpu":
            raise torch.OutOfMemoryError("out of memory (simulated)")
        return super().forward(image, patch_origin_zyx, scan_shape_zyx)


def test_a_fallback_to_the_cpu_is_one_scans_and_its_result_says_so(caplog):
    """Memory running out off the CPU even with the smallest tiles runs that scan on the CPU, and
    the next scan starts on the detector's device again. The ``meta`` device stands in for a GPU:
    tensors go there, and the network runs out of memory there."""
    scan = blob_scan((16, 32, 16), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), [[6.2, 20.3, 5.9]])
    config = InferenceConfig(tile_margin_vox=8, min_side_vox=4)
    model = OutOfMemoryOffTheCpu()
    detector = Detector(model, NO_MASK, config)
    detector.device = torch.device("meta")
    model.moves.clear()
    reference = Detector(BrightCentroid(), NO_MASK, config).detect(scan)
    for _ in range(2):
        model.inputs.clear()
        result = detector.detect(scan)
        assert model.inputs[0] == "meta" and model.inputs[-1] == "cpu"
        assert model.moves == ["cpu", "meta"]  # there for this scan, and back
        model.moves.clear()
        assert result.device == "cpu" and result.precision == "fp32" and detector.device == torch.device("meta")
        assert result.tile_voxels == reference.tile_voxels == 16 * 32 * 16  # the CPU starts from whole tiles
        assert result.detections == reference.detections and len(result.detections) == 1
    assert "out of memory on meta even with the smallest tiles; continuing this scan on the CPU" in caplog.text


def test_results_carry_their_own_timings_and_device():
    scan = blob_scan((12, 12, 12), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), np.eye(3), [[5.0, 5.0, 5.0]])
    detector = Detector(BrightCentroid(), NO_MASK)
    first, second = detector.detect(scan), detector.detect(scan)
    assert list(first.timings_s) == ["resample", "forward", "decode"]
    assert all(value >= 0.0 for value in first.timings_s.values())
    assert first.timings_s is not second.timings_s and first.device == second.device == "cpu"
    with pytest.raises(AttributeError):
        first.device = "cuda"


def test_precisions_other_than_the_known_ones_are_refused():
    with pytest.raises(UserInputError,
                       match=r"^InferenceConfig.precision: 'fp8' is not one of auto, fp32, bf16, fp16\.$"):
        InferenceConfig(precision="fp8")


def test_auto_precision_on_the_cpu_is_fp32():
    torch.manual_seed(0)
    model = SCPMNet(SCPMNetConfig(**{**SCPMNetConfig.tiny().__dict__, "head_init_std": 1.0}))
    scan = _smooth_volume((32, 32, 32), seed=2)
    config = InferenceConfig(score_threshold=0.0, min_side_vox=32)
    auto = Detector(model, NO_MASK, config).detect(scan)
    fp32 = Detector(model, NO_MASK, replace(config, precision="fp32")).detect(scan)
    assert auto.detections == fp32.detections and auto.precision == fp32.precision == "fp32"


def _inside_voxels(image: sitk.Image, detections) -> np.ndarray:
    """Whether each detection's center lies within the scan's own voxels (index -0.5 .. n - 0.5)."""
    geometry = ScanGeometry.from_image(image)
    index = geometry.world_to_index(np.array([d.center_xyz_mm for d in detections]).reshape(-1, 3))
    return np.all((index >= -0.5) & (index <= np.asarray(geometry.shape_zyx) - 0.5), axis=1)


@pytest.mark.parametrize("shape_zyx, spacing_xyz, direction", [
    ((2, 2, 2), (1.0, 1.0, 1.0), np.eye(3)),                       # smaller than a tile: almost all padding
    ((5, 5, 5), (0.7, 0.7, 2.5), np.eye(3)),
    ((40, 40, 40), (1.0, 1.0, 1.0), _rotation(20)),                 # a crop, oblique
    ((3, 120, 110), (0.6, 0.6, 9.0), np.diag([-1.0, -1.0, 1.0])),  # extremely anisotropic, flipped
])
def test_no_detection_outside_the_scan(shape_zyx, spacing_xyz, direction):
    """A random network with no score threshold fires everywhere, the padding included: every
    detection it reports must still lie inside the scan's own voxels."""
    values = np.random.default_rng(0).normal(-300.0, 400.0, shape_zyx).astype(np.float32)
    image = sitk.GetImageFromArray(values)
    image.SetSpacing(spacing_xyz)
    image.SetOrigin((30.0, -60.0, 200.0))
    image.SetDirection(tuple(float(v) for v in np.asarray(direction).ravel()))
    torch.manual_seed(1)
    model = SCPMNet(SCPMNetConfig.tiny())
    config = InferenceConfig(score_threshold=0.0, max_detections=100, top_n=5000)
    found = Detector(model, NO_MASK, config).detect(image).detections
    assert _inside_voxels(image, found).all()
    # without the filter, 100 of 100 detections lie outside the 2^3 and 5^3 scans and 73 of 100 outside the
    # 40^3 one; the scans that hold a stride-4 grid point still report detections
    assert len(found) > 0 or min(shape_zyx) < 4


def _api_inputs():
    ramp = np.arange(6 * 7 * 8, dtype=np.float32).reshape(6, 7, 8)
    return {
        "2-D": (sitk.GetImageFromArray(ramp[0]), "Detector.detect's image: the image is 2-D; a CT scan must be 3-D."),
        "RGB": (sitk.GetImageFromArray(np.stack([ramp] * 3, -1), isVector=True),
                "Detector.detect's image: the image has 3 components per voxel; a CT scan has one."),
        "NaN": (sitk.GetImageFromArray(np.where(ramp == 5, np.nan, ramp)),
                "Detector.detect's image: the image holds NaN or infinite values."),
        "1 voxel": (sitk.GetImageFromArray(ramp[:1, :1, :1]), "Detector.detect's image: the image has a single slice"),
        "numpy array": (ramp, "Detector.detect: expected a SimpleITK image, not a numpy.ndarray;"),
    }


@pytest.mark.parametrize("case", ["2-D", "RGB", "NaN", "1 voxel", "numpy array"])
def test_the_api_checks_its_image_as_the_command_line_does(case):
    image, message = _api_inputs()[case]
    detector = Detector(SCPMNet(SCPMNetConfig.tiny()), NO_MASK)
    with pytest.raises(UserInputError) as raised:
        detector.detect(image)
    assert str(raised.value).startswith(message)
    with pytest.raises(UserInputError, match="Detector.predict_maps"):
        detector.predict_maps(image)
