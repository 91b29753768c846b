"""The training state file: header, format sniffing, and the network held-out evaluation loads."""

from pathlib import Path

import pytest
import torch

from SCPMNoduleLib.checkpoint import CHECKPOINT_FORMAT, save_checkpoint
from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.model import SCPMNet
from SCPMNoduleLib.preprocess import PreprocessConfig
from Training.config import load_config
from Training.state import STATE_FORMAT, STATE_VERSION, file_format, load_deployable, load_state, save_state

TINY = ["model.stem_channels=4", "model.encoder_channels=[4,8,8,8]", "model.encoder_blocks=[1,1,1,1]",
        "model.head_channels=8", "model.se_reduction=2", "model.se_context=16"]


@pytest.fixture()
def saved(tmp_path):
    """A training state and a detector checkpoint of the same tiny network."""
    config = load_config(None, TINY)
    model = SCPMNet(config.model)
    preprocess = PreprocessConfig()
    state_path, checkpoint_path = tmp_path / "last.pt", tmp_path / "detector.pt"
    save_state(state_path, {"config": config.to_dict(), "model": model.state_dict(), "weight_average": None,
                            "preprocess": preprocess.to_dict(), "epoch": 3, "step": 30, "fold": 0,
                            "train_seriesuids": ["a", "b"], "best_epoch": 2, "best_cpm": 0.5})
    save_checkpoint(checkpoint_path, model, preprocess)
    return model, state_path, checkpoint_path


def test_a_state_is_written_under_the_format_header(saved):
    _, state_path, _ = saved
    state = load_state(state_path)
    assert list(state)[:3] == ["format", "version", "library_version"]
    assert (state["format"], state["version"]) == (STATE_FORMAT, STATE_VERSION)


def test_file_format_names_states_and_checkpoints_and_nothing_else(saved, tmp_path):
    _, state_path, checkpoint_path = saved
    assert file_format(state_path) == STATE_FORMAT
    assert file_format(checkpoint_path) == CHECKPOINT_FORMAT
    (tmp_path / "notes.pt").write_text("not a torch file", encoding="utf-8")
    torch.save([1, 2, 3], tmp_path / "list.pt")
    assert file_format(tmp_path / "notes.pt") is None
    assert file_format(tmp_path / "list.pt") is None
    assert file_format(tmp_path / "absent.pt") is None


def test_held_out_evaluation_loads_the_same_network_from_a_state_or_a_checkpoint(saved, tmp_path):
    model, state_path, checkpoint_path = saved
    for path, training in ((state_path, {"epochs": 3, "steps": 30, "fold": 0, "train_scans": 2, "best_epoch": 2,
                                         "validation_cpm": 0.5}), (checkpoint_path, None)):
        loaded, preprocess, record, _ = load_deployable(path)
        assert preprocess == PreprocessConfig()
        assert (record and {k: v for k, v in record.items() if k != "config"}) == training
        for (name, expected), (_, got) in zip(model.state_dict().items(), loaded.state_dict().items(), strict=True):
            assert torch.equal(expected, got), name
    (tmp_path / "notes.pt").write_text("not a torch file", encoding="utf-8")
    with pytest.raises(UserInputError, match="not a readable training checkpoint"):
        load_deployable(tmp_path / "notes.pt")
    with pytest.raises(UserInputError, match="not found"):
        load_deployable(tmp_path / "absent.pt")


def test_a_state_of_another_format_or_version_is_refused_in_one_sentence(saved, tmp_path):
    _, _, checkpoint_path = saved
    with pytest.raises(UserInputError,
                       match=r"not a scpm-train training checkpoint \(its format is 'scpm-nodule-checkpoint'"):
        load_state(checkpoint_path)
    torch.save({"format": STATE_FORMAT, "version": STATE_VERSION + 1}, tmp_path / "future.pt")
    with pytest.raises(UserInputError, match=rf"future.pt: {STATE_FORMAT} version {STATE_VERSION + 1} is not the "
                                             rf"version {STATE_VERSION} this program reads\.$"):
        load_state(tmp_path / "future.pt")


def test_a_checkpoint_without_pad_hu_loads_with_the_padding_it_was_trained_with(tmp_path):
    """Checkpoints exported before ``PreprocessConfig.pad_hu`` (the detector's setting then; demo 1.3.0)
    hold no such key and get the default, -1200 HU, which they were trained and tuned with."""
    shipped = torch.load(Path(__file__).resolve().parents[1] / "Resources" / "demo.pt", map_location="cpu",
                         weights_only=True)
    del shipped["preprocess_config"]["pad_hu"]
    old = tmp_path / "old.pt"
    torch.save(shipped, old)
    _, preprocess, _, _ = load_deployable(old)
    assert preprocess.pad_hu == -1200.0
    assert preprocess == PreprocessConfig()
