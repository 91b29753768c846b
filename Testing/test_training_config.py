"""Training config: the paper's defaults, JSON round trip, overrides, and bad input."""

import json

import pytest
import torch

from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.model import SCPMNet
from SCPMNoduleLib.runtime import autocast_dtype
from Training.cli import main
from Training.config import TrainConfig, load_config, save_config
from Training.trainer import make_optimizer


def test_defaults_are_the_papers_schedule():
    config = TrainConfig()
    assert (config.optim.batch_size, config.optim.epochs, config.optim.momentum, config.optim.weight_decay) == (
        24, 170, 0.9, 1e-4)
    assert [config.lr_at(e) for e in (0, 19, 20, 79, 80, 149, 150, 169)] == [
        1e-4, 1e-4, 1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-4]
    assert (config.matching.top_k, config.loss.siou_weight, config.loss.refocal_threshold) == (7, 2.0, 0.9)
    assert config.data.patch_size == 96


def test_linear_interpolation_ramps_between_the_pairs_and_holds_the_last():
    """Hand-worked: hold 1e-3 for 10 epochs, decay linearly to 0 at epoch 40, then stay at 0."""
    config = load_config(None, ["optim.lr_schedule=[[0, 0.001], [10, 0.001], [40, 0]]",
                                "optim.lr_interpolation=linear"])
    positions = (0, 5.5, 10, 17.5, 25, 39.25, 40, 45)
    expected = (1e-3, 1e-3, 1e-3, 0.75e-3, 0.5e-3, 0.025e-3, 0.0, 0.0)
    assert [config.lr_at(epoch) for epoch in positions] == pytest.approx(expected, abs=1e-15)
    stepped = load_config(None, ["optim.lr_schedule=[[0, 0.001], [10, 0.001], [40, 0]]"])
    assert [stepped.lr_at(epoch) for epoch in positions] == [1e-3] * 6 + [0.0, 0.0]


def test_file_and_overrides_round_trip_through_json(tmp_path):
    path = tmp_path / "run.json"
    path.write_text(json.dumps({"optim": {"epochs": 5}, "model": {"encoder_channels": [8, 8, 8, 8]}}), encoding="utf-8")
    config = load_config(path, ["data.patch_size=64", "optim.lr_schedule=[[0, 0.01], [3, 0.001]]", "amp=off"])
    assert config.optim.epochs == 5 and config.data.patch_size == 64 and config.amp == "off"
    assert config.model.encoder_channels == (8, 8, 8, 8)
    assert config.optim.lr_schedule == ((0, 0.01), (3, 0.001)) and config.lr_at(4) == 0.001
    save_config(config, tmp_path / "saved.json")
    assert load_config(tmp_path / "saved.json") == config


@pytest.mark.parametrize("override, message", [
    ("optim.epoch=5", "unknown key 'epoch'"),
    ("amp=fast", "amp"),
    ("optim.lr_schedule=[[5, 0.01]]", "start at epoch 0"),
    ("data.nodule_fraction=2", "nodule_fraction"),
    ("epochs", "KEY=VALUE"),
    ("optim.optimizer=adam", r"^OptimConfig.optimizer: 'adam' is not one of sgd, adamw\.$"),
    ("optim.lr_interpolation=cosine", r"^OptimConfig.lr_interpolation: 'cosine' is not one of step, linear\.$"),
    ("optim.ema_decay=1", r"optim.ema_decay: 1.0 is not in \[0, 1\)"),
    ("data.ignore_excluded=False", r"data.ignore_excluded: 'False' is not a boolean"),
    ("data.patch_size=64.5", "data.patch_size: 64.5 is not an integer"),
    ("optim.lr_schedule=[[0, \"fast\"]]", "optim.lr_schedule: 'fast' is not a number"),
    ("optim.lr_schedule=[[0, NaN]]", r"optim.lr_schedule: \(\(0, nan\),\) holds a learning rate that is negative, NaN"),
    ("optim.lr_schedule=[[0, 0.01], [5, -1e-3]]", "optim.lr_schedule: .* a learning rate that is negative"),
    ("optim.lr_schedule=[[0, Infinity]]", "optim.lr_schedule: .* NaN or infinite"),
    ("optim.weight_decay=NaN", r"^config optim.weight_decay: nan is not a finite number of at least 0\.$"),
    ("optim.weight_decay=-1", r"^config optim.weight_decay: -1.0 is not a finite number of at least 0\.$"),
    ("optim.momentum=1", r"^config optim.momentum: 1.0 is not in \[0, 1\)\.$"),
    ("optim.max_grad_norm=NaN", "config optim.max_grad_norm: nan"),
    ("data.nodule_size_power=NaN", "config data.nodule_size_power: nan"),
    ("validation.score_threshold=1", r"config validation.score_threshold: 1.0 is not in \[0, 1\)"),
    ("validation.bootstraps=-5", r"^config validation.bootstraps: -5 is not at least 0\.$"),
    ("log_every_steps=0", r"^config log_every_steps: 0 is not at least 1\.$"),
])
def test_bad_values_are_refused_with_their_name(override, message):
    with pytest.raises(UserInputError, match=message):
        load_config(None, [override])


def test_settings_of_the_library_configs_are_checked_by_their_own_rules():
    with pytest.raises(UserInputError, match=r"^MatchingConfig.top_k: 0 is not at least 1\.$"):
        load_config(None, ["matching.top_k=0"])
    with pytest.raises(UserInputError, match=r"^SCPMNetConfig.head_levels: 9 is not between 1 and 2 "):
        load_config(None, ["model.head_levels=9"])


def test_config_files_are_read_with_one_sentence_per_problem(tmp_path):
    with pytest.raises(UserInputError, match=r"run.json: file not found\.$"):
        load_config(tmp_path / "run.json")
    (tmp_path / "run.json").write_text("{'optim': 1}", encoding="utf-8")
    with pytest.raises(UserInputError, match=r"run.json: the file is not valid JSON \(Expecting property name"):
        load_config(tmp_path / "run.json")
    (tmp_path / "run.json").write_text("[1]", encoding="utf-8")
    with pytest.raises(UserInputError, match=r"run.json: expected a JSON object\.$"):
        load_config(tmp_path / "run.json")


def test_a_config_is_checked_when_it_is_made():
    with pytest.raises(UserInputError, match=r"^TrainConfig.amp: 'fast' is not one of auto, fp32, bf16, fp16, off\.$"):
        TrainConfig(amp="fast")


@pytest.mark.parametrize("amp", ["fp32", "off"])
def test_amp_takes_the_runtimes_precisions_and_off_for_configs_written_before(amp):
    config = load_config(None, [f"amp={amp}"])
    assert config.amp == amp
    assert autocast_dtype(torch.device("cpu"), config.amp, training=True) is None


def test_cli_answers_a_missing_cache_with_one_sentence_and_status_2(tmp_path, capsys):
    status = main(["fit", "--cache", str(tmp_path / "nothing"), "--out", str(tmp_path / "run"), "--device", "cpu"])
    assert status == 2
    error = capsys.readouterr().err.strip()
    assert error.startswith("scpm-train fit: error:") and "nothing" in error and error.count("\n") == 0
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("folds", ["1,,2", "a,b", "1;2"])
def test_cv_answers_folds_that_are_not_numbers_with_one_sentence_and_status_2(folds, tmp_path, capsys):
    status = main(["cv", "--cache", str(tmp_path / "nothing"), "--out", str(tmp_path / "cv"), "--folds", folds,
                   "--device", "cpu"])
    assert status == 2
    error = capsys.readouterr().err.strip()
    assert error == (f"scpm-train cv: error: --folds {folds!r}: expected subset numbers separated by commas, "
                     "e.g. 0,3,7.")
    assert not (tmp_path / "cv").exists()


@pytest.mark.parametrize("name, kind", [("sgd", torch.optim.SGD), ("adamw", torch.optim.AdamW)])
def test_optimizer_follows_the_config(name, kind):
    config = load_config(None, [f"optim.optimizer={name}", "optim.weight_decay=0.01",
                                "optim.lr_schedule=[[0, 0.002], [5, 0.001]]"])
    optimizer = make_optimizer(SCPMNet(config.model), config)
    assert type(optimizer) is kind
    group = optimizer.param_groups[0]
    assert (group["lr"], group["weight_decay"]) == (0.002, 0.01)
    assert (group["betas"][0] if name == "adamw" else group["momentum"]) == 0.9
