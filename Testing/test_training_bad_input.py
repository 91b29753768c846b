"""``scpm-train`` on bad input and faults (issue 21): exit status 2, one sentence naming the file and
what is wrong, no traceback, and nothing new or destroyed on disk; Ctrl-C and a full disk during
``export`` leave the old checkpoint and manifest as they were.

Every case runs the real command in a subprocess; the tree it works in is hashed before and after.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from fault_helpers import mounted_tmpfs, snapshot

from Training.cache import build_cache
from Training.config import load_config
from Training.trainer import Trainer

from training_helpers import write_tiny_luna16

pytestmark = pytest.mark.slow  # each case starts scpm-train (2-5 s: importing torch)

REPO = Path(__file__).resolve().parents[1]
TINY = [
    "model.stem_channels=4", "model.encoder_channels=[4,8,8,8]", "model.encoder_blocks=[1,1,1,1]",
    "model.head_channels=8", "model.se_reduction=2", "model.se_context=16", "data.patch_size=32",
    "data.crops_per_scan=2", "data.num_workers=0", "optim.batch_size=2", "optim.epochs=1",
    "optim.lr_schedule=[[0,0.01]]", "validation.every_epochs=0",
]


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """data/ (two tiny scans), cache/, run/last.pt, a shipped-model copy in Resources/, and bad files."""
    root = tmp_path_factory.mktemp("bad_input")
    write_tiny_luna16(root / "data", n_scans=2, subsets=1)
    build_cache(root / "data", root / "cache", progress=False)
    Trainer(load_config(None, TINY), root / "cache", root / "run", device="cpu").fit()
    shutil.copytree(root / "cache", root / "garbage_cache")
    (root / "garbage_cache" / "cache.json").write_text("garbage{", encoding="utf-8")
    shutil.copytree(root / "cache", root / "hollow_cache")
    (root / "hollow_cache" / "cache.json").write_text('{"format": "scpm-train-cache", "version": 1}', encoding="utf-8")
    shutil.copytree(root / "data", root / "unannotated")
    (root / "unannotated" / "annotations.csv").unlink()
    (root / "Resources").mkdir()
    for name in ("demo.pt", "Models.json"):
        shutil.copy(REPO / "Resources" / name, root / "Resources" / name)
    (root / "other").mkdir()
    (root / "other" / "Models.json").write_text('{"format": "something-else", "version": 1}', encoding="utf-8")
    (root / "latin1.json").write_bytes(b'{"optim": {"epochs": 1}, "note": "caf\xe9"}')
    (root / "spacing0.json").write_text('{"spacing_xyz_mm": [0, 0, 0]}', encoding="utf-8")
    (root / "flat_window.json").write_text('{"hu_min": 100, "hu_max": 100}', encoding="utf-8")
    (root / "froc_figures_missing.json").write_text('{"runs": {"a": {"cpm": 0.5}}}', encoding="utf-8")
    (root / "a_file").write_text("not a folder", encoding="utf-8")
    data = (root / "run" / "last.pt").read_bytes()
    (root / "truncated.pt").write_bytes(data[: len(data) // 2])
    torch.save({"payload": _Payload()}, root / "payload.pt")
    return root


class _Payload:
    """An object whose unpickling would run code (``os.getcwd``, harmless): weights_only refuses it."""

    def __reduce__(self):
        return (os.getcwd, ())




def scpm_train(*args, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.run([sys.executable, "-m", "Training.cli", *map(str, args)], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def assert_refused(done: subprocess.CompletedProcess, command: str, message: str) -> None:
    """Exit 2 and exactly one stderr line ``scpm-train COMMAND: error: ...`` matching ``message``."""
    lines = done.stderr.splitlines()
    assert done.returncode == 2, done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"scpm-train {command}: error: "), lines[0]
    assert re.search(message, lines[0]), lines[0]
    assert "Traceback" not in done.stderr and "weights_only" not in done.stderr


FIT = ["fit", "--cache", "cache", "--device", "cpu"] + [item for pair in (("--set", s) for s in TINY) for item in pair]
EXPORT = ["export", "--checkpoint", "run/last.pt", "--training-data", "tiny"]
EVALUATE = ["evaluate", "--checkpoint", "run/last.pt", "--data", "data", "--device", "cpu"]

CASES = {
    # fit: the cache, the config and the output folder
    "garbage cache.json": (["fit", "--cache", "garbage_cache", "--out", "new_run", "--device", "cpu"],
                           r"garbage_cache/cache.json: the file is not valid JSON .*; run scpm-train preprocess"),
    "cache.json without settings": (["fit", "--cache", "hollow_cache", "--out", "new_run", "--device", "cpu"],
                                    r"hollow_cache/cache.json: the cache description lacks its data folders or "
                                    r"preprocess"),
    "NaN weight decay": ([*FIT, "--out", "new_run", "--set", "optim.weight_decay=NaN"],
                         r"config optim.weight_decay: nan is not a finite number of at least 0\.$"),
    "NaN learning rate": ([*FIT, "--out", "new_run", "--set", "optim.lr_schedule=[[0,NaN]]"],
                          r"config optim.lr_schedule: .* learning rate that is negative, NaN or infinite\.$"),
    "negative learning rate": ([*FIT, "--out", "new_run", "--set", "optim.lr_schedule=[[0,0.01],[1,-0.1]]"],
                               r"config optim.lr_schedule: .* learning rate that is negative, NaN or infinite\.$"),
    "non-UTF-8 config": ([*FIT, "--out", "new_run", "--config", "latin1.json"],
                         r"latin1.json: the file is not UTF-8 text\.$"),
    "fit --out is a file": ([*FIT, "--out", "a_file"],
                            r"--out a_file: the output folder is an existing file, not a folder\.$"),
    "fit --out under a file": ([*FIT, "--out", "a_file/run"], r"--out a_file/run: a_file is a file, not a folder\.$"),
    "cv --out is a file": (["cv", "--cache", "cache", "--out", "a_file", "--device", "cpu"],
                           r"--out a_file: the output folder is an existing file"),
    # preprocess: settings that divide by zero, and the cache folder
    "spacing 0": (["preprocess", "--data", "data", "--cache", "new_cache", "--preprocess", "spacing0.json"],
                  r"spacing0.json: PreprocessConfig.spacing_xyz_mm: .* is not three positive spacings\.$"),
    "hu_min = hu_max": (["preprocess", "--data", "data", "--cache", "new_cache", "--preprocess", "flat_window.json"],
                        r"flat_window.json: PreprocessConfig.hu_max: 100.0 is not above hu_min \(100.0\)\.$"),
    "--cache under a file": (["preprocess", "--data", "data", "--cache", "a_file/cache"],
                             r"--cache a_file/cache: a_file is a file, not a folder\.$"),
    # export: everything is checked before anything is written
    "export --froc not UTF-8": ([*EXPORT, "--out", "Resources/demo.pt", "--manifest", "Resources/Models.json",
                                 "--froc", "latin1.json"], r"latin1.json: the file is not UTF-8 text\.$"),
    "export --froc without figures": ([*EXPORT, "--out", "Resources/demo.pt", "--froc", "froc_figures_missing.json"],
                                      r"froc_figures_missing.json: not a froc_summary.json .* lacks cpm"),
    "export into a foreign manifest": ([*EXPORT, "--out", "Resources/demo.pt", "--manifest", "other/Models.json"],
                                       r"other/Models.json: the file is not a model manifest"),
    "export outside the manifest's folder": ([*EXPORT, "--out", "demo.pt", "--manifest", "Resources/Models.json"],
                                             r"demo.pt: a manifest entry's file must lie in Resources or below it\.$"),
    "export --out is a folder": ([*EXPORT, "--out", "Resources"],
                                 r"--out Resources: the output file is an existing folder, not a file\.$"),
    "export --out under a file": ([*EXPORT, "--out", "a_file/demo.pt"], r"--out a_file/demo.pt: a_file is a file"),
    "export a name read as a path": ([*EXPORT, "--out", "Resources/demo.pt", "--name", "./demo"],
                                     r"model name './demo': .* or it would be read as a file\.$"),
    "export a pickled payload": (["export", "--checkpoint", "payload.pt", "--out", "Resources/demo.pt",
                                  "--training-data", "x"],
                                 r"payload.pt: the file is not a readable training checkpoint \(it holds a "
                                 r"posix.getcwd object .* never loaded, because unpickling them could run code\)\.$"),
    "export a truncated state": (["export", "--checkpoint", "truncated.pt", "--out", "Resources/demo.pt",
                                  "--training-data", "x"],
                                 r"truncated.pt: the file is not a readable training checkpoint \(not a file saved "
                                 r"by torch: truncated, damaged or another kind of file\)\.$"),
    # evaluate and tune: arguments and inputs before the first scan is detected
    "evaluate --threshold 5": ([*EVALUATE, "--out", "evaluation", "--threshold", "5"],
                               r"--threshold 5.0: a probability threshold lies in"),
    "evaluate --bootstraps -5": ([*EVALUATE, "--out", "evaluation", "--bootstraps", "-5"],
                                 r"--bootstraps -5: the number of resamples cannot be negative\.$"),
    "evaluate --out is a file": ([*EVALUATE, "--out", "a_file"], r"--out a_file: the output folder is an existing"),
    "evaluate without annotations": (["evaluate", "--checkpoint", "run/last.pt", "--data", "unannotated", "--out",
                                      "evaluation", "--device", "cpu"], r"unannotated/annotations.csv: file not found"),
    "tune --threshold 1": (["tune", "--checkpoint", "run/last.pt", "--data", "data", "--threshold", "1"],
                           r"--threshold 1.0: a probability threshold lies in"),
}


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_one_sentence_exit_2_and_leaves_the_files_as_they_were(root, case):
    args, message = CASES[case]
    before = snapshot(root)
    done = scpm_train(*args, cwd=root)
    assert_refused(done, args[0], message)
    assert snapshot(root) == before


def test_scpm_nodule_and_scpm_train_share_the_threshold_and_bootstrap_checks():
    from SCPMNoduleLib import cli as nodule_cli
    from Training import cli as train_cli

    assert train_cli.check_threshold is nodule_cli.check_threshold
    assert train_cli.check_bootstraps is nodule_cli.check_bootstraps


# ---------------------------------------------------------------------------------- file-system faults




@pytest.fixture
def read_only_folder(tmp_path):
    """A folder no file can be created in: a read-only tmpfs for root (who ignores permission bits),
    mode 0555 for anyone else."""
    folder = tmp_path / "read_only"
    if os.geteuid() != 0:
        folder.mkdir()
        folder.chmod(0o555)
        yield folder
        folder.chmod(0o755)
        return
    with mounted_tmpfs(folder, "ro,size=64k"):
        yield folder


@pytest.mark.parametrize("command", ["fit", "preprocess", "export", "evaluate"])
def test_an_output_folder_that_cannot_be_written_is_refused_before_the_work(root, read_only_folder, command):
    where = read_only_folder / "out"
    args = {"fit": [*FIT, "--out", where], "preprocess": ["preprocess", "--data", "data", "--cache", where],
            "export": [*EXPORT, "--out", where / "demo.pt"], "evaluate": [*EVALUATE, "--out", where]}[command]
    before = snapshot(root)
    done = scpm_train(*args, cwd=root)
    assert_refused(done, command, rf"{re.escape(str(where))}.*: no file can be created in "
                                  rf"{re.escape(str(read_only_folder))} "
                                  r"\((the file system is read-only|permission denied)\)\.$")
    assert snapshot(root) == before and list(read_only_folder.iterdir()) == []


def _installed_model(folder: Path) -> dict[str, str]:
    """A copy of the shipped demo.pt and Models.json in ``folder``; returns their SHA-256s."""
    for name in ("demo.pt", "Models.json"):
        shutil.copy(REPO / "Resources" / name, folder / name)
    return snapshot(folder)


def test_a_full_disk_during_export_leaves_the_old_checkpoint_and_manifest(root, tmp_path):
    """The tmpfs holds the old files but not a second checkpoint beside them."""
    size = sum((REPO / "Resources" / name).stat().st_size for name in ("demo.pt", "Models.json")) + 16384
    with mounted_tmpfs(tmp_path / "small", f"size={size}") as folder:
        before = _installed_model(folder)
        done = scpm_train(*EXPORT, "--out", folder / "demo.pt", "--manifest", folder / "Models.json", cwd=root)
        assert_refused(done, "export", rf"{re.escape(str(folder / 'demo.pt'))}: could not write "
                                       r"\(no space left on the device\)\.$")
        assert snapshot(folder) == before


INTERRUPT_BETWEEN_THE_RENAMES = textwrap.dedent("""
    import os, signal, sys, time
    real_replace = os.replace
    interrupted = []

    def replace(source, target, *args, **kwargs):  # Ctrl-C right after demo.pt took its new file
        real_replace(source, target, *args, **kwargs)
        if os.path.basename(target) == "demo.pt" and not interrupted:
            interrupted.append(True)
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(5)

    os.replace = replace
    from Training.cli import main
    sys.exit(main(sys.argv[1:]))
""")


def test_ctrl_c_between_checkpoint_and_manifest_puts_the_old_checkpoint_back(root, tmp_path):
    """SIGINT at the worst moment (the checkpoint replaced, the manifest not yet): exit 130, one line,
    and the old pair of files, no temporary file left."""
    folder = tmp_path / "Resources"
    folder.mkdir()
    before = _installed_model(folder)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", INTERRUPT_BETWEEN_THE_RENAMES, *map(str, EXPORT), "--out",
                           folder / "demo.pt", "--manifest", folder / "Models.json"], cwd=root, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 130, done.stderr
    assert done.stderr.splitlines() == [
        "scpm-train export: interrupted; the checkpoint and the manifest are as they were"]
    assert snapshot(folder) == before


def test_export_replaces_checkpoint_and_manifest_together(root, tmp_path):
    """The successful export: the manifest's checksum is that of the new checkpoint; nothing else is left."""
    folder = tmp_path / "Resources"
    folder.mkdir()
    before = _installed_model(folder)
    done = scpm_train(*EXPORT, "--out", folder / "demo.pt", "--manifest", folder / "Models.json", cwd=root)
    assert done.returncode == 0, done.stderr
    after = snapshot(folder)
    assert sorted(after) == ["Models.json", "demo.pt"] and after["demo.pt"] != before["demo.pt"]
    assert f'"sha256": "{after["demo.pt"]}"' in (folder / "Models.json").read_text(encoding="utf-8")
