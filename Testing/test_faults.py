"""Faults around scpm-nodule's inputs and outputs: one sentence, exit 2, and nothing half-written.

Output folders that are files or read-only, a full disk (a small tmpfs, where the machine lets us
mount one), CSV files that are not text, and signals: Ctrl-C during detection and in the demo,
SIGKILL followed by a run that removes what the killed one left.
"""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fault_helpers import mounted_tmpfs, noise_scan, snapshot

from SCPMNoduleLib import pipeline
from SCPMNoduleLib.cli import main
from SCPMNoduleLib.io import Findings, write_annotations

ROOT = Path(__file__).resolve().parents[1]
FAST = ["--threshold", "0", "--max-detections", "5", "--device", "cpu", "--progress", "none"]




def _one_line(err: str, progress_bar: str | None = None) -> str:
    """The one line of ``err``, once ``progress_bar``'s lines (a tqdm bar's) are left out."""
    lines = [line for line in err.strip().splitlines()
             if line.strip() and not (progress_bar and line.startswith(progress_bar))]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]






def _fill(folder: Path) -> None:
    """Fill the file system of ``folder`` to the last byte."""
    with open(folder / "filler", "wb", buffering=0) as handle:
        with contextlib.suppress(OSError):
            while True:
                handle.write(b"\0" * 4096)


# ------------------------------------------------------------------------- output folders


def _output_cases(tmp_path, checkpoint):
    scan = noise_scan(tmp_path / "s.mha")
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("mine\n")
    model = ["--model", str(checkpoint)]
    return {
        "detect --out a file": (["detect", str(scan), "--out", str(blocker), *model, *FAST],
                                f"--out {blocker}: the output folder is an existing file, not a folder."),
        "detect --out under a file": (["detect", str(scan), "--out", str(blocker / "out"), *model, *FAST],
                                      f"--out {blocker / 'out'}: {blocker} is a file, not a folder."),
        "demo --out a file": (["demo", "--out", str(blocker), "--size", "small", *model, *FAST],
                              f"--out {blocker}: the output folder is an existing file, not a folder."),
        "phantom --out under a file": (["phantom", "--out", str(blocker / "ph"), "--scans", "1"],
                                       f"--out {blocker / 'ph'}: {blocker} is a file, not a folder."),
    }


@pytest.mark.parametrize("case", ["detect --out a file", "detect --out under a file", "demo --out a file",
                                  "phantom --out under a file"])
def test_an_output_that_is_a_file_is_refused_before_any_work(tmp_path, checkpoint, capsys, case):
    argv, message = _output_cases(tmp_path, checkpoint)[case]
    before = sorted(snapshot(tmp_path))
    assert main(argv) == 2
    out, err = capsys.readouterr()
    assert _one_line(err).endswith(f": error: {message}")
    assert out == ""  # no scan was read, no detection ran
    assert sorted(snapshot(tmp_path)) == before and (tmp_path / "blocker.txt").read_text() == "mine\n"


def test_evaluate_refuses_an_output_file_before_it_evaluates(tmp_path, capsys):
    blocker = tmp_path / "blocker.txt"
    blocker.write_text("mine\n")
    missing = str(tmp_path / "absent.csv")  # the output is checked before the inputs are read
    assert main(["evaluate", "--annotations", missing, "--excluded", missing, "--seriesuids", missing,
                 "--candidates", missing, "--out", str(blocker)]) == 2
    assert _one_line(capsys.readouterr().err).endswith(
        f": error: --out {blocker}: the output folder is an existing file, not a folder.")


@pytest.mark.parametrize("command", ["detect", "phantom", "demo"])
def test_a_read_only_output_folder_is_refused_before_any_work(tmp_path, checkpoint, capsys, command):
    scan = noise_scan(tmp_path / "s.mha")
    with mounted_tmpfs(tmp_path / "ro", "size=1m,ro") as read_only:
        out_dir = read_only / command
        argv = {"detect": ["detect", str(scan), "--out", str(out_dir), "--model", str(checkpoint), *FAST],
                "phantom": ["phantom", "--out", str(out_dir), "--scans", "1"],
                "demo": ["demo", "--out", str(out_dir), "--size", "small", "--model", str(checkpoint),
                         *FAST]}[command]
        assert main(argv) == 2
        out, err = capsys.readouterr()
        assert _one_line(err).endswith(
            f": error: --out {out_dir}: no file can be created in {read_only} (the file system is read-only).")
        assert out == "" and sorted(snapshot(read_only)) == []


# ------------------------------------------------------------------------------ full disk


def test_a_full_disk_while_writing_a_scan_stops_the_batch_and_leaves_no_half_file(tmp_path, checkpoint, capsys):
    scans = [noise_scan(tmp_path / "scans" / f"{name}.mha", seed=k) for k, name in enumerate("ab")]
    with mounted_tmpfs(tmp_path / "small", "size=2m") as small:
        out = small / "det"
        out.mkdir()
        (out / "a.json").write_text("an earlier run's report\n")
        _fill(small)
        assert main(["detect", *map(str, scans), "--out", str(out), "--model", str(checkpoint), *FAST]) == 2
        line = _one_line(capsys.readouterr().err)
        assert str(out / "a") in line and "no space left on the device" in line
        assert sorted(snapshot(out)) == []  # neither a temporary, nor a's old report, nor any batch file


def test_a_full_disk_while_writing_the_batch_files_leaves_neither(tmp_path, checkpoint, capsys, monkeypatch):
    scan = noise_scan(tmp_path / "s.mha")
    with mounted_tmpfs(tmp_path / "small", "size=2m") as small:
        out = small / "det"
        real = pipeline.write_candidates

        def then_fill(path, findings, *args, **kwargs):  # candidates.csv is written, then the disk is full
            real(path, findings, *args, **kwargs)
            _fill(small)

        monkeypatch.setattr(pipeline, "write_candidates", then_fill)
        assert main(["detect", str(scan), "--out", str(out), "--model", str(checkpoint), *FAST]) == 2
        line = _one_line(capsys.readouterr().err)
        assert "detect_summary.json" in line and "no space left on the device" in line
        assert sorted(snapshot(out)) == ["s.candidates.csv", "s.json", "s.mrk.json"]


def test_a_full_disk_while_writing_a_phantom_dataset_leaves_nothing(tmp_path, capsys):
    with mounted_tmpfs(tmp_path / "small", "size=2m") as small:
        assert main(["phantom", "--out", str(small / "ph"), "--scans", "2", "--subsets", "1"]) == 2
        line = _one_line(capsys.readouterr().err, progress_bar="phantoms:")
        assert line.endswith(f"{small / 'ph'}: could not write (no space left on the device).")
        assert sorted(snapshot(small)) == []


# ------------------------------------------------------------------- CSV that is not text


@pytest.mark.parametrize("which, content, sentence", [
    ("candidates", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "not UTF-8 text (byte 0x89 at offset 0)"),
    ("annotations", "seriesuid,coordX,coordY,coordZ,diameter_mm\nr\xe9sum\xe9,1,2,3,4\n".encode("latin-1"),
     "not UTF-8 text (byte 0xe9"),
    ("seriesuids", b"\xff\xfe1\x002\x00", "not UTF-8 text (byte 0xff at offset 0)"),
])
def test_evaluate_refuses_a_csv_that_is_not_utf8_text(tmp_path, capsys, which, content, sentence):
    paths = {"annotations": tmp_path / "annotations.csv", "excluded": tmp_path / "excluded.csv",
             "seriesuids": tmp_path / "seriesuids.csv", "candidates": tmp_path / "candidates.csv"}
    write_annotations(paths["annotations"], Findings.from_columns(["1.2"], [[0.0, 0.0, 0.0]], [5.0]))
    write_annotations(paths["excluded"], Findings.empty())
    paths["seriesuids"].write_text("1.2\n")
    paths["candidates"].write_text("seriesuid,coordX,coordY,coordZ,probability\n1.2,0,0,0,0.9\n")
    paths[which].write_bytes(content)
    out = tmp_path / "out"
    assert main(["evaluate", *(f"--{k}={v}" for k, v in paths.items()), "--out", str(out), "--bootstraps", "0"]) == 2
    line = _one_line(capsys.readouterr().err)
    assert f"{paths[which]}: {sentence}" in line and "expected a CSV table" in line
    assert not out.exists()


# ------------------------------------------------------------------------------- signals


def _command(*args: str) -> list[str]:
    return [sys.executable, "-m", "SCPMNoduleLib.cli", *args]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


def _wait_for(predicate, seconds=120.0):
    deadline = time.monotonic() + seconds
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_ctrl_c_during_detection_exits_130_and_leaves_no_file_of_thatnoise_scan(tmp_path, checkpoint):
    scans = [noise_scan(tmp_path / "scans" / f"{name}.mha", shape_zyx=(64, 96, 96), seed=k)
             for k, name in enumerate("ab")]
    out = tmp_path / "out"
    process = subprocess.Popen(_command("detect", *map(str, scans), "--out", str(out), "--model", str(checkpoint),
                                        "--device", "cpu", "--threshold", "0", "--mirror", "zyx",
                                        "--progress", "jsonl"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), text=True)
    for line in process.stdout:  # interrupt scan b while its network runs
        event = json.loads(line)
        if event["event"] == "progress" and event["scan"] == "b" and event["stage"] == "forward":
            process.send_signal(signal.SIGINT)
            break
    rest, err = process.communicate(timeout=120)
    assert process.returncode == 130
    assert _one_line(err) == "scpm-nodule detect: cancelled"
    assert sorted(snapshot(out)) == ["a.candidates.csv", "a.json", "a.mrk.json"]


def test_ctrl_c_in_the_demo_leaves_nothing(tmp_path, checkpoint):
    out = tmp_path / "demo"
    process = subprocess.Popen(_command("demo", "--out", str(out), "--size", "small", "--model", str(checkpoint),
                                        "--device", "cpu", "--mirror", "zyx", "--progress", "jsonl"),
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(), text=True)
    for line in process.stdout:  # the phantom and its truth are written when detection starts
        if json.loads(line)["event"] == "progress":
            assert (out / "demo_phantom.mha").is_file() and (out / "demo_truth.csv").is_file()
            process.send_signal(signal.SIGINT)
            break
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130 and _one_line(err) == "scpm-nodule demo: cancelled"
    assert not out.exists()


def test_a_run_after_sigkill_removes_what_the_killed_run_left(tmp_path, checkpoint):
    out = tmp_path / "out"
    writer = subprocess.Popen([sys.executable, "-c", (
        "import sys, time\nfrom SCPMNoduleLib.io import atomic_write\n"
        f"with atomic_write({str(out / 's.json')!r}) as handle:\n"
        "    handle.write('half'); handle.flush(); print('writing', flush=True); time.sleep(600)\n")],
        stdout=subprocess.PIPE, env=_env(), text=True)
    assert writer.stdout.readline() == "writing\n"
    phantom = subprocess.Popen(_command("phantom", "--out", str(tmp_path / "ph"), "--scans", "3", "--subsets", "1"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    _wait_for(lambda: any((tmp_path / p).is_dir() and p.startswith(".ph.") for p in os.listdir(tmp_path)))
    for process in (writer, phantom):
        process.kill()
        process.wait()
    left = [name for name in os.listdir(out) if name.endswith(".tmp")]
    assert len(left) == 1 and left[0].startswith(f".s.json.{writer.pid}.")
    assert [p for p in os.listdir(tmp_path) if p.startswith(".ph.")]

    scan = noise_scan(tmp_path / "s.mha")
    assert main(["detect", str(scan), "--out", str(out), "--model", str(checkpoint), *FAST]) == 0
    assert sorted(snapshot(out)) == ["candidates.csv", "detect_summary.json", "s.candidates.csv", "s.json",
                                     "s.mrk.json"]
    assert main(["phantom", "--out", str(tmp_path / "ph"), "--scans", "1", "--subsets", "1"]) == 0
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]


def test_a_live_runs_temporary_file_is_left_alone(tmp_path, checkpoint):
    out = tmp_path / "out"
    out.mkdir()
    live = out / f".s.json.{os.getpid()}.abcdefgh.tmp"  # this process is alive
    live.write_text("being written")
    foreign = out / ".notes.txt.tmp"  # not a name of ours
    foreign.write_text("someone else's")
    assert main(["detect", str(noise_scan(tmp_path / "s.mha")), "--out", str(out), "--model", str(checkpoint),
                 *FAST]) == 0
    assert live.exists() and foreign.exists()
