"""Outputs checked before the work, OS errors as one sentence, and export's all-or-nothing replacement
(in process; ``test_training_bad_input.py`` runs the command itself)."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch
from fault_helpers import snapshot

from SCPMNoduleLib.checkpoint import CHECKPOINT_FORMAT, load_torch_file, save_checkpoint
from SCPMNoduleLib.errors import UserInputError, os_error
from SCPMNoduleLib.io import atomic_write
from SCPMNoduleLib.model import SCPMNet, SCPMNetConfig
from SCPMNoduleLib.preprocess import PreprocessConfig
from SCPMNoduleLib.temp_files import check_output_file, check_output_folder
from Training import export
from Training.config import TrainConfig
from Training.state import save_state


@pytest.mark.parametrize("where, message", [
    ("a_file", r"^--out {root}/a_file: the output folder is an existing file, not a folder\.$"),
    ("a_file/run", r"^--out {root}/a_file/run: {root}/a_file is a file, not a folder\.$"),
])
def test_an_output_folder_that_is_a_file_is_refused_and_nothing_is_created(tmp_path, where, message):
    (tmp_path / "a_file").write_text("x", encoding="utf-8")
    with pytest.raises(UserInputError, match=message.format(root=tmp_path)):
        check_output_folder(tmp_path / where)
    with pytest.raises(UserInputError, match=message.format(root=tmp_path).replace("^--out ", "^")):
        check_output_folder(tmp_path / where, None)  # a library call: the sentence starts with the path
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]


def test_a_new_output_folder_is_accepted_without_being_created(tmp_path):
    check_output_folder(tmp_path / "new" / "deeper")
    check_output_file(tmp_path / "new" / "demo.pt")
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(UserInputError, match=r"^--out .*: the output file is an existing folder, not a file\.$"):
        check_output_file(tmp_path)


def test_the_output_checks_remove_what_a_killed_run_left_and_nothing_else(tmp_path):
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()  # a process id that no longer runs
    run = tmp_path / "run"
    run.mkdir()
    stale = [run / f".last.pt.{gone.pid}.abcdefgh.tmp", tmp_path / f".demo.pt.{gone.pid}.ijklmnop.tmp",
             tmp_path / f".run.{gone.pid}.qrstuvwx.tmp"]
    kept = [run / f".last.pt.{os.getpid()}.abcdefgh.tmp",  # a live run's
            tmp_path / f".other.pt.{gone.pid}.ijklmnop.tmp",  # for another file
            run / ".notes.txt.tmp"]  # not a name of ours
    for path in stale + kept:
        path.write_text("x", encoding="utf-8")
    assert check_output_folder(run) == run
    assert check_output_file(tmp_path / "demo.pt") == tmp_path / "demo.pt"
    assert not any(path.exists() for path in stale) and all(path.exists() for path in kept)


@pytest.mark.parametrize("error, path, action, message", [
    (PermissionError(errno.EACCES, "Permission denied", "/x/run/last.pt"), None, "write",
     "/x/run/last.pt: could not write (permission denied)."),
    (OSError(errno.ENOSPC, "No space left on device", "/x/.demo.pt.4242.ab_12c3d.tmp"), None, "write",
     "/x/demo.pt: could not write (no space left on the device)."),  # our temporary file: its target
    (OSError(errno.ENOSPC, "No space left on device", "/x/..demo.pt.1.abcdefgh.tmp.2.ijklmnop.tmp"), None, None,
     "/x/demo.pt: could not write (no space left on the device)."),  # a temporary's; a full disk is a write
    (OSError(errno.EXDEV, "Invalid cross-device link", "/a/.m.json.7.abcdefgh.tmp", None, "/b/m.json"), None, None,
     "/b/m.json: invalid cross-device link."),  # a rename: its target
    (OSError(errno.ENOENT, "No such file or directory", "/x/run/a/b/c.npy"), "/x/run", "read",
     "/x/run: could not read (no such file or folder)."),  # the caller names the file the user knows
])
def test_an_os_error_is_one_sentence_naming_the_file_the_user_knows(error, path, action, message):
    assert str(os_error(error, path, action)) == message


@pytest.mark.parametrize("failing", ["os.fsync", "os.replace"])
def test_atomic_write_names_its_target_when_the_disk_is_full(tmp_path, monkeypatch, failing):
    target = tmp_path / "run" / "summary.json"

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", *args[:1] if failing == "os.replace" else ())

    monkeypatch.setattr(os, failing.split(".")[1], full)
    with pytest.raises(OSError) as raised, atomic_write(target) as handle:
        handle.write("{}")
    assert str(os_error(raised.value)) == f"{target}: could not write (no space left on the device)."
    assert list(target.parent.iterdir()) == []  # the temporary is gone


def test_the_torch_loader_never_repeats_the_advice_to_disable_weights_only(tmp_path):
    torch.save({"format": CHECKPOINT_FORMAT, "array": np.zeros(2)}, tmp_path / "numpy.pt")
    with pytest.raises(UserInputError) as raised:
        load_torch_file(tmp_path / "numpy.pt", "checkpoint")
    assert "weights_only" not in str(raised.value) and "numpy" in str(raised.value)
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(UserInputError, match=r"empty.pt: the file is not a readable checkpoint \(the file is empty\)"):
        load_torch_file(tmp_path / "empty.pt", "checkpoint")


@pytest.fixture
def installed(tmp_path):
    """A training state and an installed model (Resources/demo.pt + Models.json naming it)."""
    config = TrainConfig.from_dict({"model": asdict(SCPMNetConfig.tiny())})
    model = SCPMNet(config.model)
    save_state(tmp_path / "last.pt", {
        "epoch": 1, "step": 2, "fold": None, "best_cpm": -1.0, "best_epoch": -1, "model": model.state_dict(),
        "weight_average": None, "config": config.to_dict(), "preprocess": PreprocessConfig().to_dict(),
        "train_seriesuids": ["a"]})
    resources = tmp_path / "Resources"
    resources.mkdir()
    save_checkpoint(resources / "demo.pt", model, PreprocessConfig(), {"trained": False})
    export.export_model(tmp_path / "last.pt", resources / "demo.pt", name="demo", version="0", training_data="x",
                        manifest=resources / "Models.json")
    return tmp_path


@pytest.mark.parametrize("failing", ["demo.pt", "Models.json"])
def test_a_failed_replacement_puts_every_old_file_back(installed, monkeypatch, failing):
    resources = installed / "Resources"
    before = snapshot(resources)
    real_replace = os.replace

    def replace(source, target, *args, **kwargs):
        if Path(target).name == failing and Path(source).name.startswith(f".{failing}."):
            raise OSError(errno.ENOSPC, "No space left on device", str(source), None, str(target))
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(UserInputError,
                       match=rf"^{resources / failing}: could not write \(no space left on the device\)\.$"):
        export.export_model(installed / "last.pt", resources / "demo.pt", name="demo", version="1",
                            training_data="y", manifest=resources / "Models.json")
    assert snapshot(resources) == before  # no temporary file, no new bytes


def test_a_new_checkpoint_is_removed_when_its_manifest_cannot_be_replaced(installed, monkeypatch):
    resources = installed / "Resources"
    before = snapshot(resources)
    real_replace = os.replace

    def replace(source, target, *args, **kwargs):
        if Path(target).name == "Models.json" and Path(source).name.startswith(".Models.json."):
            raise KeyboardInterrupt
        return real_replace(source, target, *args, **kwargs)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(KeyboardInterrupt):
        export.export_model(installed / "last.pt", resources / "other.pt", name="other", version="1",
                            training_data="y", manifest=resources / "Models.json")
    assert snapshot(resources) == before
    assert [m["name"] for m in json.loads((resources / "Models.json").read_text(encoding="utf-8"))["models"]] == [
        "demo"]
