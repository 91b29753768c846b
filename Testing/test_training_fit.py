"""The trainer: exact resume, deterministic data, export to a detector checkpoint."""

import json

import numpy as np
import pytest
import torch

from SCPMNoduleLib.checkpoint import load_checkpoint
from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.inference import Detector
from SCPMNoduleLib.io import sha256_of, write_annotations
from SCPMNoduleLib.matching import MatchingConfig
from SCPMNoduleLib.preprocess import PreprocessConfig
from Training.cache import build_cache, load_cache
from Training.config import load_config
from Training.data import EpochSampler, MatchingCollate, PatchDataset
from Training.export import export_model
from Training.state import load_state, model_from_state
from Training.trainer import Trainer

from training_helpers import NODULE_HU, write_tiny_luna16

TINY = [
    "model.stem_channels=4", "model.encoder_channels=[4,8,8,8]", "model.encoder_blocks=[1,1,1,1]",
    "model.head_channels=8", "model.se_reduction=2", "model.se_context=16",
    "data.patch_size=32", "data.crops_per_scan=2", "optim.batch_size=2", "optim.lr_schedule=[[0,0.01],[1,0.003]]",
    "validation.every_epochs=0", "log_every_steps=1",
]


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    write_tiny_luna16(root / "data", n_scans=2, subsets=1)
    build_cache(root / "data", root / "cache", progress=False)
    return root / "cache"


def _config(*overrides):
    return load_config(None, TINY + list(overrides))


def test_samples_depend_only_on_seed_epoch_and_index(cache):
    config = _config()
    dataset = PatchDataset(load_cache(cache), config.data, config.augment, seed=5)
    first, again = dataset[(3, 1)], dataset[(3, 1)]
    torch.testing.assert_close(first["image"], again["image"], rtol=0, atol=0)
    torch.testing.assert_close(first["centers_zyx_vox"], again["centers_zyx_vox"], rtol=0, atol=0)
    assert not torch.equal(dataset[(4, 1)]["image"], first["image"])
    # two DDP shards of one epoch are disjoint and together cover every sample
    shards = [list(EpochSampler(dataset, 2, rank, seed=5)) for rank in (0, 1)]
    assert {epoch for shard in shards for epoch, _ in shard} == {0}
    assert sorted(i for shard in shards for _, i in shard) == list(range(len(dataset)))


@pytest.mark.parametrize("power", [0.0, 3.0])
def test_nodule_centered_patches_pick_nodules_by_size(cache, power):
    """Each tiny scan has two nodules of 6-10 mm: the share of patches centered on the smaller one
    follows r ** -power (binomial tolerance, 4 standard deviations)."""
    config = _config("data.nodule_fraction=1", "data.jitter_fraction=0", f"data.nodule_size_power={power}")
    dataset = PatchDataset(load_cache(cache), config.data, None, seed=5)
    draws = 600
    for scan in dataset.scans:
        radii = np.asarray(scan.radii_vox, dtype=float)
        share = sum(np.argmin(np.linalg.norm(
            dataset.sample_center(scan, np.random.default_rng([9, i])) - scan.centers_zyx_vox, axis=1))
            == np.argmin(radii) for i in range(draws)) / draws
        expected = radii.max() ** power / (radii.min() ** power + radii.max() ** power)
        assert abs(share - expected) < 4 * np.sqrt(expected * (1 - expected) / draws) + 1e-9


@pytest.mark.parametrize("ignore_excluded", [True, False])
def test_excluded_findings_reach_the_matching_as_ignored_regions(tmp_path, ignore_excluded):
    """Each tiny scan's second nodule is moved to annotations_excluded.csv. A rotated, scaled patch
    centered on it carries it, mapped onto the nodule's bright voxels, to the matching, which
    ignores its nearest points (``ignore_excluded``) or trains them as background (otherwise)."""
    findings = write_tiny_luna16(tmp_path / "data", n_scans=2, subsets=1)
    second = np.arange(len(findings)) % 2 == 1
    write_annotations(tmp_path / "data" / "annotations.csv", findings.select(~second))
    write_annotations(tmp_path / "data" / "annotations_excluded.csv", findings.select(second))
    build_cache(tmp_path / "data", tmp_path / "cache", progress=False)
    config = _config("data.patch_size=32", "augment.affine_probability=1",
                     f"data.ignore_excluded={json.dumps(ignore_excluded)}")
    dataset = PatchDataset(load_cache(tmp_path / "cache"), config.data, config.augment, seed=3)
    dataset.sample_center = lambda scan, rng: scan.excluded_centers_zyx_vox[0]  # aim every patch at it
    nodule = PreprocessConfig().normalize(np.array([NODULE_HU]))[0]
    collate = MatchingCollate((4, 8), 32, MatchingConfig())
    assert len(dataset.scans) == 2
    for index, scan in enumerate(dataset.scans):  # sample ``index`` is cut from scan ``index % 2``
        assert len(scan.radii_vox) == len(scan.excluded_radii_vox) == 1
        sample = dataset[(0, index)]
        assert sample["seriesuid"] == scan.seriesuid
        batch = collate([sample])
        if not ignore_excluded:
            assert len(sample["ignored_radii_vox"]) == 0
            assert all((level.labels == 0).all() for level in batch["targets"])
            continue
        center = sample["ignored_centers_zyx_vox"][0].numpy()
        assert np.abs(center - 15.5).max() < 1.0  # the patch is centered on it, up to snapping
        image = sample["image"][0].numpy()
        assert abs(image[tuple(np.rint(center).astype(int))] - nodule) < 0.05
        for stride, level in zip((4, 8), batch["targets"]):
            labels = level.labels[0]
            assert (labels != 1).all() and (labels == -1).sum() >= 7
            nearest = tuple(np.clip(np.floor(center / stride).astype(int), 0, 32 // stride - 1))
            assert labels[nearest] == -1


AVERAGED = ("optim.lr_interpolation=linear", "optim.ema_decay=0.5")


@pytest.mark.slow
@pytest.mark.parametrize("schedule", [(), AVERAGED], ids=["step", "linear-averaged"])
def test_interrupted_and_resumed_run_gives_the_same_weights_as_an_uninterrupted_one(cache, tmp_path, schedule):
    Trainer(_config("optim.epochs=3", *schedule), cache, tmp_path / "straight", device="cpu").fit()
    # the same run stopped after its first epoch, resumed with DataLoader workers this time
    Trainer(_config("optim.epochs=1", *schedule), cache, tmp_path / "resumed", device="cpu").fit()
    with pytest.raises(UserInputError, match="--resume"):
        Trainer(_config("optim.epochs=3", *schedule), cache, tmp_path / "resumed", device="cpu").fit()
    summary = Trainer(_config("optim.epochs=3", "data.num_workers=2", *schedule), cache, tmp_path / "resumed",
                      device="cpu").fit(resume=True)
    assert summary["epochs"] == 3 and summary["steps"] == 3 * 2

    straight, resumed = load_state(tmp_path / "straight" / "last.pt"), load_state(tmp_path / "resumed" / "last.pt")
    assert straight["step"] == resumed["step"] == 6
    for name, value in straight["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    for key, state in straight["optimizer"]["state"].items():
        assert torch.equal(state["momentum_buffer"], resumed["optimizer"]["state"][key]["momentum_buffer"])
    initial = Trainer(_config("optim.epochs=3"), cache, tmp_path / "fresh", device="cpu").model.state_dict()
    assert not all(torch.equal(value, straight["model"][name]) for name, value in initial.items())
    log = (tmp_path / "resumed" / "train_log.csv").read_text(encoding="utf-8").splitlines()
    assert log[0].startswith("epoch,step,lr,total,classification,radius,offset,siou,samples_per_s,data_wait_share")
    # two steps per epoch; linear: 0.01 at epoch 0, 0.0065 at 0.5, then 0.003 from epoch 1 on
    assert [row.split(",")[:2] for row in log[1:]] == [["0", "1"], ["0", "2"], ["1", "3"], ["1", "4"],
                                                       ["2", "5"], ["2", "6"]]
    rates = [float(row.split(",")[2]) for row in log[1:]]
    assert rates == pytest.approx([0.01, 0.0065 if schedule else 0.01] + [0.003] * 4, rel=1e-12)
    if schedule:  # the average resumes exactly too, and it is what the run deploys
        assert straight["weight_average"]["updates"] == resumed["weight_average"]["updates"] == 6
        averaged = straight["weight_average"]["weights"]
        for name, value in averaged.items():
            assert torch.equal(value, resumed["weight_average"]["weights"][name]), name
        deployed = model_from_state(straight, "last.pt").state_dict()
        assert all(torch.equal(value, averaged[name]) for name, value in deployed.items())
        assert not all(torch.equal(value, straight["model"][name]) for name, value in averaged.items())
        Trainer(_config("optim.epochs=1"), cache, tmp_path / "plain", device="cpu").fit()
        with pytest.raises(UserInputError, match="no weight average"):
            Trainer(_config("optim.epochs=2", *schedule), cache, tmp_path / "plain", device="cpu").fit(resume=True)
    else:
        assert straight["weight_average"] is None


@pytest.mark.slow
def test_export_writes_a_checkpoint_the_detector_loads_and_a_manifest_entry(cache, tmp_path):
    Trainer(_config("optim.epochs=1"), cache, tmp_path / "run", device="cpu").fit()
    summary = tmp_path / "froc_summary.json"
    summary.write_text(json.dumps({"runs": {"held-out": {
        "cpm": 0.5, "fp_rates": [0.125], "sensitivities": [0.5], "counts": {"n_scans": 2, "n_nodules": 4}}}}))
    manifest = tmp_path / "Resources" / "Models.json"
    entry = export_model(tmp_path / "run" / "last.pt", tmp_path / "Resources" / "model.pt", name="tiny",
                         version="0.1", training_data="two tiny test scans", froc_summary=summary,
                         manifest=manifest)
    written = json.loads(manifest.read_text(encoding="utf-8"))["models"]
    assert written == [entry] and entry["file"] == "model.pt" and entry["metrics"]["cpm"] == 0.5
    exported, _, _ = load_checkpoint(tmp_path / "Resources" / "model.pt")
    trained = load_state(tmp_path / "run" / "last.pt")["model"]
    for name, value in exported.state_dict().items():
        assert torch.equal(value.contiguous(), trained[name].contiguous()), name
    detector = Detector.from_checkpoint(tmp_path / "Resources" / "model.pt", device="cpu")
    assert detector.info["metadata"]["training_data"] == "two tiny test scans"
    # exporting again replaces the entry in place
    export_model(tmp_path / "run" / "last.pt", tmp_path / "Resources" / "model.pt", name="tiny", version="0.2",
                 training_data="two tiny test scans", manifest=manifest)
    assert [m["version"] for m in json.loads(manifest.read_text(encoding="utf-8"))["models"]] == ["0.2"]
    assert detector.trained
    # re-exporting the exported checkpoint in place: same weights and training record, new metrics and version
    before, _, before_metadata = load_checkpoint(tmp_path / "Resources" / "model.pt")
    export_model(tmp_path / "Resources" / "model.pt", tmp_path / "Resources" / "model.pt", name="tiny",
                 version="0.3", training_data="two tiny test scans", froc_summary=summary, manifest=manifest)
    after, _, after_metadata = load_checkpoint(tmp_path / "Resources" / "model.pt")
    for name, value in before.state_dict().items():
        assert torch.equal(value, after.state_dict()[name]), name
    assert after_metadata["training"] == before_metadata["training"] and after_metadata["version"] == "0.3"
    (listed,) = json.loads(manifest.read_text(encoding="utf-8"))["models"]
    assert listed["version"] == "0.3" and listed["sha256"] == sha256_of(tmp_path / "Resources" / "model.pt")


@pytest.mark.slow
def test_a_two_stage_detector_exports_with_its_classifier_and_fine_tunes_from_its_network(cache, tmp_path):
    from SCPMNoduleLib.candidate_classifier import CandidateClassifierConfig
    from Training.classifier import ClassifierTrainConfig, train_classifier_checkpoint

    Trainer(_config("optim.epochs=1"), cache, tmp_path / "run", device="cpu").fit()
    classifier = CandidateClassifierConfig(patch_vox=16, channels=(4, 8), weight=0.3)
    record = train_classifier_checkpoint(tmp_path / "run" / "last.pt", [cache.parent / "data"], tmp_path / "two.pt",
                                         classifier, ClassifierTrainConfig(steps=2), device="cpu", progress=False)
    entry = export_model(tmp_path / "two.pt", tmp_path / "Resources" / "two.pt", name="two", version="0.1",
                         training_data="two tiny test scans", manifest=tmp_path / "Resources" / "Models.json")
    assert "candidate classifier on 16^3 patches, channels (4, 8), weight 0.3" in entry["architecture"]
    exported, _, metadata = load_checkpoint(tmp_path / "Resources" / "two.pt")
    assert metadata["candidate_classifier"] == record and exported.config.candidate_classifier == classifier
    source, _, _ = load_checkpoint(tmp_path / "two.pt")
    for name, value in source.state_dict().items():
        assert torch.equal(value, exported.state_dict()[name]), name
    # fine-tuning from it takes the network's weights (its classifier would not fit the tuned network):
    # the same run as one started from the network it was made from
    for start, out in ((tmp_path / "Resources" / "two.pt", "from_two"), (tmp_path / "run" / "last.pt", "from_one")):
        Trainer(_config("optim.epochs=1", f"init_weights={start}"), cache, tmp_path / out, device="cpu").fit()
    from_two, from_one = (load_state(tmp_path / out / "last.pt")["model"] for out in ("from_two", "from_one"))
    assert from_two.keys() == from_one.keys() and not any("candidate_classifier" in name for name in from_two)
    assert all(torch.equal(value, from_one[name]) for name, value in from_two.items())


def test_cross_validation_of_no_fold_is_refused_in_one_sentence(cache, tmp_path):
    from Training.crossval import cross_validate

    with pytest.raises(UserInputError, match=r"no fold to cross-validate: .* subsets \[0\]\.$"):
        cross_validate(_config(), cache, tmp_path / "cv", folds=[], device="cpu")
    with pytest.raises(UserInputError, match=r"folds \[0, 0\]: fold 0 is named twice"):
        cross_validate(_config(), cache, tmp_path / "cv", folds=[0, 0], device="cpu")
    assert not (tmp_path / "cv").exists()


@pytest.mark.slow
def test_cross_validation_pools_every_folds_held_out_candidates_into_one_froc(tmp_path):
    from SCPMNoduleLib.io import read_candidates
    from Training.crossval import cross_validate

    findings = write_tiny_luna16(tmp_path / "data", n_scans=3, subsets=2)
    build_cache(tmp_path / "data", tmp_path / "cache", progress=False)
    config = _config("optim.epochs=1", "validation.bootstraps=0", "validation.score_threshold=0.0")
    result = cross_validate(config, tmp_path / "cache", tmp_path / "cv", device="cpu")
    assert (result.counts.n_scans, result.counts.n_nodules) == (3, len(findings))
    pooled = read_candidates(tmp_path / "cv" / "candidates.csv")
    per_fold = [read_candidates(tmp_path / "cv" / f"fold{k}" / "candidates.csv") for k in (0, 1)]
    # fold k's candidates come from subset k's scans only, and the pool is their union
    for k, fold in enumerate(per_fold):
        assert set(fold.seriesuids) == {uid for i, uid in enumerate(sorted(set(findings.seriesuids))) if i % 2 == k}
    assert len(pooled) == sum(len(fold) for fold in per_fold)
    assert (tmp_path / "cv" / "report" / "froc_summary.json").is_file()


@pytest.mark.slow
def test_evaluate_folder_scores_the_checkpoints_detections_against_the_folders_annotations(cache, tmp_path):
    from SCPMNoduleLib.io import read_annotations, read_candidates
    from Training.heldout import evaluate_folder

    Trainer(_config("optim.epochs=1"), cache, tmp_path / "run", device="cpu").fit()
    data = cache.parent / "data"  # no annotations_excluded.csv: nothing is excluded
    result = evaluate_folder(tmp_path / "run" / "last.pt", data, tmp_path / "eval", device="cpu",
                             score_threshold=0.0, bootstraps=0)
    candidates = read_candidates(tmp_path / "eval" / "candidates.csv")
    nodules = read_annotations(data / "annotations.csv")
    assert (result.counts.n_scans, result.counts.n_nodules, result.counts.n_candidates) == (2, 4, len(candidates))
    assert all(np.sum(candidates.seriesuids == uid) <= 100 for uid in set(nodules.seriesuids))
    # LUNA16's hit rule by brute force: a candidate of the same scan within the nodule's radius
    same_scan = nodules.seriesuids[:, None] == candidates.seriesuids[None, :]
    distance = np.linalg.norm(nodules.centers_xyz_mm[:, None] - candidates.centers_xyz_mm[None], axis=-1)
    hit = np.any(same_scan & (distance <= nodules.diameters_mm[:, None] / 2), axis=1)
    assert hit.sum() == result.counts.n_detected
    summary = json.loads((tmp_path / "eval" / "froc_summary.json").read_text(encoding="utf-8"))
    assert summary["runs"]["last.pt"]["cpm"] == pytest.approx(result.cpm)


@pytest.mark.slow
def test_a_run_can_start_from_another_runs_or_a_checkpoints_weights(cache, tmp_path):
    from Training.state import parameter_digest

    Trainer(_config("optim.epochs=1"), cache, tmp_path / "first", device="cpu").fit()
    first = model_from_state(load_state(tmp_path / "first" / "last.pt"), "last.pt")
    export_model(tmp_path / "first" / "last.pt", tmp_path / "first.pt", name="tiny", version="0.1",
                 training_data="two tiny test scans")
    # at learning rate 0 the parameters stay where the run started: the given weights, not the seed's
    for start in (tmp_path / "first" / "last.pt", tmp_path / "first.pt"):
        out = tmp_path / f"from_{start.stem}"
        Trainer(_config("optim.epochs=1", "seed=5", "optim.lr_schedule=[[0,0.0]]", f"init_weights={start}"),
                cache, out, device="cpu").fit()
        assert parameter_digest(model_from_state(load_state(out / "last.pt"), "last.pt")) == parameter_digest(first)
        assert json.loads((out / "config.json").read_text(encoding="utf-8"))["init_weights"] == str(start)
    seeded = Trainer(_config("seed=5"), cache, tmp_path / "unused", device="cpu").model
    assert parameter_digest(seeded) != parameter_digest(first)
    with pytest.raises(UserInputError, match="first.pt: config init_weights is of another network"):
        Trainer(_config("optim.epochs=1", "model.head_channels=4", f"init_weights={tmp_path / 'first.pt'}"),
                cache, tmp_path / "other", device="cpu").fit()
    assert not (tmp_path / "other" / "last.pt").exists()
