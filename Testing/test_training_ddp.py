"""DDP on CPU: two Gloo processes started by torchrun, as users start them."""

import subprocess
import sys

import pytest

from Training.cache import build_cache
from Training.state import load_state

from training_helpers import write_tiny_luna16

OVERRIDES = [
    "model.stem_channels=4", "model.encoder_channels=[4,8,8,8]", "model.encoder_blocks=[1,1,1,1]",
    "model.head_channels=8", "model.se_reduction=2", "model.se_context=16",
    "data.patch_size=32", "data.crops_per_scan=2", "data.num_workers=1",
    "optim.batch_size=2", "optim.epochs=2", "optim.lr_schedule=[[0,0.01]]",
    "validation.every_epochs=1", "validation.bootstraps=0", "log_every_steps=1",
]


@pytest.mark.slow
def test_torchrun_with_two_cpu_processes_keeps_weights_identical_and_only_rank0_writes(tmp_path):
    write_tiny_luna16(tmp_path / "data", n_scans=3, subsets=2)
    build_cache(tmp_path / "data", tmp_path / "cache", progress=False)
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "-m", "Training.cli", "fit", "--cache", str(tmp_path / "cache"), "--fold", "1",
               "--out", str(tmp_path / "run"), "--device", "cpu", "--debug-weight-hashes", str(tmp_path / "hashes")]
    for item in OVERRIDES:
        command += ["--set", item]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]

    # 2 training scans x 2 crops = 4 patches per epoch, 1 per process per step: 2 steps per epoch
    hashes = [(tmp_path / "hashes" / f"rank{rank}.txt").read_text(encoding="utf-8").splitlines() for rank in (0, 1)]
    assert [line.split()[0] for line in hashes[0]] == ["1", "2", "3", "4"]
    assert hashes[0] == hashes[1]
    assert len({line.split()[1] for line in hashes[0]}) == 4  # the weights change at every step

    written = sorted(p.relative_to(tmp_path / "run").as_posix() for p in (tmp_path / "run").rglob("*"))
    assert [p for p in written if not p.startswith("validation/")] == [
        "best.pt", "config.json", "last.pt", "train_log.csv", "validation", "validation.csv"]
    log_rows = (tmp_path / "run" / "train_log.csv").read_text(encoding="utf-8").splitlines()[1:]
    assert [row.split(",")[1] for row in log_rows] == ["1", "2", "3", "4"]  # one writer, no duplicates
    assert len((tmp_path / "run" / "validation.csv").read_text(encoding="utf-8").splitlines()) == 1 + 2
    state = load_state(tmp_path / "run" / "last.pt")
    assert state["step"] == 4 and state["epoch"] == 2
    assert "[rank 1] INFO" not in done.stderr + done.stdout
