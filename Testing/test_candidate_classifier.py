"""The candidate classifier: patches cut as slicing would, log-odds combined as stated, a network
that learns to tell spheres from tubes, labels by LUNA16's rule, and a two-stage checkpoint that
the detector re-ranks with."""

import dataclasses
import json

import numpy as np
import pytest
import torch

from SCPMNoduleLib.candidate_classifier import (
    CandidateClassifier,
    CandidateClassifierConfig,
    combine_logits,
    crop_patches,
)
from SCPMNoduleLib.checkpoint import load_checkpoint, save_checkpoint
from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.inference import Detector, InferenceConfig
from SCPMNoduleLib.io import read_scan
from SCPMNoduleLib.model import SCPMNet, SCPMNetConfig, fuse_batch_norm, network_only, with_candidate_classifier
from SCPMNoduleLib.models import resolve_model
from SCPMNoduleLib.preprocess import PreprocessConfig
from Training.cache import find_luna16_scans
from Training.classifier import (
    CandidatePatches,
    ClassifierTrainConfig,
    collect_candidate_patches,
    train_candidate_classifier,
)
from Training.cli import main
from Training.config import load_config

from training_helpers import write_tiny_luna16

SMALL = CandidateClassifierConfig(patch_vox=16, channels=(4, 8), weight=0.5)


def test_patches_are_the_cubes_sliced_from_the_padded_volume():
    rng = np.random.default_rng(1)
    volume = rng.normal(size=(20, 25, 30)).astype(np.float32)
    centers = np.array([[10, 12, 15], [0, 0, 0], [19, 24, 29], [3.4, 20.6, 7.2], [5, -0.4, 29.3]])
    side, pad = 8, -3.0
    patches = crop_patches(torch.from_numpy(volume), torch.from_numpy(centers), side, pad).numpy()
    padded = np.pad(volume, side // 2, constant_values=pad)
    assert patches.shape == (len(centers), 1, side, side, side)
    for patch, center in zip(patches, np.rint(centers).astype(int)):
        # voxel c - side//2 of the volume is voxel c of the padded one
        np.testing.assert_array_equal(patch[0], padded[center[0]:center[0] + side, center[1]:center[1] + side,
                                                       center[2]:center[2] + side])
    assert patches[1, 0, 0, 0, 0] == pad and patches[0, 0, side // 2, side // 2, side // 2] == volume[10, 12, 15]


def test_the_two_opinions_combine_in_log_odds():
    detector, classifier = torch.logit(torch.tensor([0.8])), torch.logit(torch.tensor([0.2]))
    assert torch.sigmoid(combine_logits(detector, classifier, 0.0)).item() == pytest.approx(0.8)
    assert torch.sigmoid(combine_logits(detector, classifier, 1.0)).item() == pytest.approx(0.2)
    # odds 4 and 1/4: their geometric mean is 1, probability 0.5
    assert torch.sigmoid(combine_logits(detector, classifier, 0.5)).item() == pytest.approx(0.5)


@pytest.mark.parametrize("values, sentence", [
    ({"patch_vox": 20}, "CandidateClassifierConfig.patch_vox: 20 is not a positive multiple of 16"),
    ({"weight": 1.5}, "CandidateClassifierConfig.weight: 1.5 is not between 0 and 1"),
    ({"channels": ()}, "CandidateClassifierConfig.channels: () is not a non-empty list"),
])
def test_a_bad_classifier_config_is_refused_in_one_sentence(values, sentence):
    with pytest.raises(UserInputError, match=sentence.replace("(", r"\(").replace(")", r"\)")):
        CandidateClassifierConfig(**values)


@pytest.mark.parametrize("values, sentence", [
    ({"steps": 0}, "ClassifierTrainConfig.steps: 0 is not at least 1"),
    ({"positive_fraction": 1.0}, "ClassifierTrainConfig.positive_fraction: 1.0 is not strictly between 0 and 1"),
    ({"weight_decay": -1e-4}, "ClassifierTrainConfig.weight_decay: -0.0001 is negative"),
    ({"jitter_vox": -1}, "ClassifierTrainConfig.jitter_vox: -1 is negative"),
])
def test_a_bad_training_setting_is_refused_in_one_sentence(values, sentence):
    with pytest.raises(UserInputError, match=sentence):
        ClassifierTrainConfig(**values)


def test_fit_refuses_a_config_with_a_classifier():
    with pytest.raises(UserInputError, match="model.candidate_classifier: the candidate classifier is trained"):
        load_config(None, ["model.candidate_classifier={\"patch_vox\": 32}"])


def _sphere_or_tube(rng: np.random.Generator, side: int, sphere: bool) -> np.ndarray:
    """A bright sphere (radius 2-4 voxels) or a tube through the center (radius 1-2, random axis) in noise."""
    grid = np.stack(np.meshgrid(*[np.arange(side) - side / 2 + 0.5] * 3, indexing="ij"), -1)
    grid = grid + rng.uniform(-1, 1, 3)
    if sphere:
        inside = np.linalg.norm(grid, axis=-1) < rng.uniform(2, 4)
    else:
        axis = rng.normal(size=3)
        axis /= np.linalg.norm(axis)
        inside = np.linalg.norm(grid - (grid @ axis)[..., None] * axis, axis=-1) < rng.uniform(1, 2)
    return (inside * 1.0 + rng.normal(0, 0.3, grid.shape[:3])).astype(np.float32)


@pytest.mark.slow
def test_the_classifier_learns_to_tell_small_spheres_from_vessel_like_tubes():
    rng = np.random.default_rng(0)
    jitter, side = 2, SMALL.patch_vox
    labels = rng.random(400) < 0.5
    patches = np.stack([_sphere_or_tube(rng, side + 2 * jitter, bool(s)) for s in labels])
    data = CandidatePatches(torch.from_numpy(patches).half(), torch.from_numpy(labels).float(),
                            np.zeros(len(labels), bool), np.full(len(labels), "x"))
    classifier = train_candidate_classifier(data, SMALL, ClassifierTrainConfig(steps=300, batch_size=16,
                                                                               jitter_vox=jitter), progress=False)
    test_labels = rng.random(200) < 0.5
    test = torch.from_numpy(np.stack([_sphere_or_tube(rng, side, bool(s)) for s in test_labels]))[:, None]
    with torch.no_grad():
        accuracy = ((classifier(test) > 0).numpy() == test_labels).mean()
    assert accuracy >= 0.9


def test_folding_batch_norm_keeps_the_classifiers_logits():
    model = SCPMNet(dataclasses.replace(SCPMNetConfig.tiny(), candidate_classifier=SMALL))
    with torch.no_grad():
        for module in model.candidate_classifier.modules():
            if isinstance(module, torch.nn.BatchNorm3d):
                module.running_mean.uniform_(-1, 1)
                module.running_var.uniform_(0.5, 2)
                module.weight.uniform_(0.5, 1.5)
    patches = torch.randn(5, 1, 16, 16, 16)
    with torch.no_grad():
        plain = model.eval().candidate_classifier(patches)
        fused = fuse_batch_norm(model).candidate_classifier(patches)
    torch.testing.assert_close(fused, plain, rtol=1e-4, atol=1e-4)


@pytest.fixture(scope="module")
def tiny_set(tmp_path_factory):
    """Two tiny scans with nodules of known centers and an untrained (prolific) tiny detector."""
    root = tmp_path_factory.mktemp("classifier")
    write_tiny_luna16(root / "data", n_scans=2, subsets=1)
    torch.manual_seed(0)
    save_checkpoint(root / "tiny.pt", SCPMNet(SCPMNetConfig.tiny()), PreprocessConfig(),
                    {"trained": True, "name": "tiny", "version": "0.0.1"})
    return root


def test_candidates_are_labelled_by_the_luna16_rule_and_every_nodule_is_a_positive(tiny_set):
    # the trained demo, so that some candidates hit nodules and both labels are checked
    model, preprocess, _ = load_checkpoint(resolve_model("demo")[0])
    detector = Detector(model, preprocess, InferenceConfig(score_threshold=0.01))
    data = collect_candidate_patches(detector, [tiny_set / "data"], 12, progress=False)
    from SCPMNoduleLib.io import read_annotations

    nodules = read_annotations(tiny_set / "data" / "annotations.csv")
    scans = find_luna16_scans(tiny_set / "data")
    own = ~data.from_candidates
    assert own.sum() == len(nodules) and data.labels.numpy()[own].all()
    # the center of each nodule's own patch is nodule (+40 HU), far above the lungs' -850 HU
    lung, nodule = (preprocess.normalize(np.float32(hu)) for hu in (-850.0, 40.0))
    centers = data.patches[torch.from_numpy(own)][:, 6, 6, 6].float().numpy()
    assert (centers > (lung + nodule) / 2).all()
    # each candidate's label: within the radius of an annotated nodule of its scan, recomputed here
    for scan in scans:
        maps, prepared = detector.predict_maps(read_scan(scan.source))
        candidates = detector.first_stage(maps, prepared)
        world = prepared.geometry.index_to_world(candidates.centers_zyx_vox)
        mine = nodules.seriesuids == scan.seriesuid
        hits = [any(np.linalg.norm(w - c) < d / 2 for c, d in zip(nodules.centers_xyz_mm[mine],
                                                                 nodules.diameters_mm[mine])) for w in world]
        rows = (data.seriesuids == scan.seriesuid) & ~own
        assert rows.sum() == len(world)  # no excluded findings in this set: every candidate is kept
        np.testing.assert_array_equal(data.labels.numpy()[rows], np.array(hits, np.float32))
        # the rows are the candidates in order: each patch is the crop around its candidate's center
        expected = detector.candidate_patches(prepared, candidates.centers_zyx_vox, 12)[:, 0].half()
        assert torch.equal(data.patches[torch.from_numpy(rows)], expected)
    # both labels occur among the candidates
    candidate_labels = data.labels.numpy()[data.from_candidates]
    assert 0 < data.n_candidate_nodules == int(candidate_labels.sum()) < len(candidate_labels)


def test_a_two_stage_checkpoint_reranks_by_the_combined_opinion(tiny_set, tmp_path):
    model, preprocess, metadata = load_checkpoint(tiny_set / "tiny.pt")
    two_stage = with_candidate_classifier(model, CandidateClassifier(SMALL))
    # the classifier's opinion: the mean of its first channel's pooled features, a real function of the patch
    with torch.no_grad():
        linear = two_stage.candidate_classifier.classify
        linear.weight.zero_()
        linear.weight[0, 0] = 5.0
        linear.bias.fill_(-1.0)
    save_checkpoint(tmp_path / "two.pt", two_stage, preprocess, metadata)
    reloaded, _, _ = load_checkpoint(tmp_path / "two.pt")
    assert reloaded.config.candidate_classifier == SMALL
    network = network_only(reloaded)  # the detector it was made from, weight for weight
    assert network.config == model.config and network.state_dict().keys() == model.state_dict().keys()
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in network.state_dict().items())

    image = read_scan(find_luna16_scans(tiny_set / "data")[0].source)
    first = Detector(model, preprocess, InferenceConfig(score_threshold=0.01))
    second = Detector(reloaded, preprocess, InferenceConfig(score_threshold=0.01))
    maps, prepared = first.predict_maps(image)
    candidates = first.first_stage(maps, prepared)
    with torch.no_grad():
        opinion = second.candidate_classifier(second.candidate_patches(prepared, candidates.centers_zyx_vox, 16))
    expected = torch.sigmoid(0.5 * torch.logit(candidates.scores, eps=1e-6) + 0.5 * opinion.double())
    detections = second.detect(image).detections
    assert len(detections) == len(candidates.scores) > 3
    np.testing.assert_allclose([d.probability for d in detections], np.sort(expected.numpy())[::-1], rtol=1e-5)
    assert [d.probability for d in detections] != sorted(candidates.scores.tolist(), reverse=True)


def test_the_command_writes_a_detector_that_carries_its_classifier(tiny_set, tmp_path, capsys):
    out = tmp_path / "two_stage.pt"
    assert main(["classifier", "--checkpoint", str(tiny_set / "tiny.pt"), "--data", str(tiny_set / "data"),
                 "--out", str(out), "--steps", "2", "--weight", "0.25", "--device", "cpu"]) == 0
    assert f"-> {out}" in capsys.readouterr().out
    detector = Detector.from_checkpoint(out, device="cpu", config=InferenceConfig(score_threshold=0.001))
    assert detector.candidate_classifier is not None and detector.candidate_classifier.config.weight == 0.25
    record = detector.info["metadata"]["candidate_classifier"]
    assert record["scans"] == 2 and record["nodule_patches"] >= 4 and record["training"]["steps"] == 2
    probabilities = [d.probability for d in detector.detect(read_scan(find_luna16_scans(tiny_set / "data")[0].source))
                     .detections]
    assert probabilities == sorted(probabilities, reverse=True) and 0 < min(probabilities) <= max(probabilities) < 1
    # the detect command's report says which second stage ranked its detections
    from SCPMNoduleLib.cli import main as nodule_main

    scan = find_luna16_scans(tiny_set / "data")[0].source
    assert nodule_main(["detect", str(scan), "--out", str(tmp_path / "det"), "--model", str(out), "--device", "cpu",
                        "--formats", "json", "--progress", "none"]) == 0
    report = next(p for p in (tmp_path / "det").glob("*.json") if p.name != "detect_summary.json")
    model = json.loads(report.read_text(encoding="utf-8"))["model"]
    assert model["candidate_classifier"] == {"patch_vox": 32, "channels": [8, 16, 32, 64], "weight": 0.25}


@pytest.mark.parametrize("case", ["missing data", "out is the checkpoint", "out is a folder"])
def test_the_command_refuses_bad_input_and_writes_nothing(tiny_set, tmp_path, capsys, case):
    checkpoint, data, out = tiny_set / "tiny.pt", tiny_set / "data", tmp_path / "out.pt"
    before = checkpoint.read_bytes()
    if case == "missing data":
        data, sentence = tmp_path / "nowhere", "data folder not found"
    elif case == "out is the checkpoint":
        out, sentence = checkpoint, "the same file as --checkpoint"
    else:
        out.mkdir()
        sentence = "the output file is an existing folder"
    code = main(["classifier", "--checkpoint", str(checkpoint), "--data", str(data), "--out", str(out),
                 "--steps", "2", "--device", "cpu"])
    assert code == 2 and sentence in capsys.readouterr().err
    assert checkpoint.read_bytes() == before
    assert out.is_dir() if case == "out is a folder" else (case == "out is the checkpoint" or not out.exists())
