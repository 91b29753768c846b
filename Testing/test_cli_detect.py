"""The detect and demo commands: outputs that parse, batch behaviour, and bad input."""

import json
import re
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import SimpleITK as sitk
import torch
from fault_helpers import noise_scan

from SCPMNoduleLib.checkpoint import save_checkpoint
from SCPMNoduleLib.cli import main
from SCPMNoduleLib.export import read_detections_json
from SCPMNoduleLib.inference import Detector
from SCPMNoduleLib.io import read_candidates
from SCPMNoduleLib.model import SCPMNet, SCPMNetConfig
from SCPMNoduleLib.preprocess import PreprocessConfig

SCHEMA = json.loads((Path(__file__).parent / "data" / "markups-schema-v1.0.3.json").read_text(encoding="utf-8"))
FAST = ["--threshold", "0", "--max-detections", "5", "--device", "cpu"]


REAL_CT = Path(__file__).parent / "data" / "realct"


@pytest.fixture(scope="module")
def chest_checkpoint(tmp_path_factory):
    """The same network with the default pre-processing, which finds the lungs."""
    path = tmp_path_factory.mktemp("model") / "tiny_lungs.pt"
    torch.manual_seed(0)
    save_checkpoint(path, SCPMNet(SCPMNetConfig.tiny()), PreprocessConfig(), {"trained": True})
    return path




def test_detect_writes_every_format_and_a_batch_summary(tmp_path, checkpoint, capsys):
    scans = tmp_path / "scans"
    scans.mkdir()
    noise_scan(scans / "a.mha", seed=1)
    noise_scan(scans / "b.nii.gz", seed=2)
    out = tmp_path / "out"
    code = main(["detect", str(scans), "--out", str(out), "--model", str(checkpoint),
                 "--progress", "none", *FAST])
    assert code == 0
    printed = capsys.readouterr().out
    assert "a: 5 detections in" in printed and "b: 5 detections in" in printed
    for name in ("a", "b"):
        detections = read_detections_json(out / f"{name}.json")
        assert len(detections) == 5
        table = read_candidates(out / f"{name}.candidates.csv")
        np.testing.assert_allclose(table.centers_xyz_mm, [d.center_xyz_mm for d in detections])
        markups = json.loads((out / f"{name}.mrk.json").read_text(encoding="utf-8"))
        jsonschema.validate(markups, SCHEMA)
        assert markups["markups"][0]["coordinateSystem"] == "LPS"
    batch = read_candidates(out / "candidates.csv")
    assert sorted(set(batch.seriesuids)) == ["a", "b"] and len(batch) == 10
    summary = json.loads((out / "detect_summary.json").read_text(encoding="utf-8"))
    assert [s["ok"] for s in summary["scans"]] == [True, True]


def test_a_failing_scan_does_not_stop_the_batch_and_leaves_no_files(tmp_path, checkpoint, capsys):
    good = noise_scan(tmp_path / "good.mha")
    out = tmp_path / "out"
    code = main(["detect", str(tmp_path / "missing.mhd"), str(good), "--out", str(out),
                 "--model", str(checkpoint), "--progress", "none", *FAST])
    assert code == 2
    assert "missing.mhd: file not found." in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["good.json", "good.candidates.csv", "good.mrk.json", "candidates.csv", "detect_summary.json"])


def test_jsonl_progress_is_one_event_a_line(tmp_path, checkpoint, capsys):
    scan = noise_scan(tmp_path / "s.nrrd")
    code = main(["detect", str(scan), "--out", str(tmp_path / "out"), "--formats", "json",
                 "--model", str(checkpoint), "--progress", "jsonl", *FAST])
    assert code == 0
    events = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    progress = [e for e in events if e["event"] == "progress"]
    assert [e["stage"] for e in progress][0] == "read" and progress[-1]["stage"] == "write"
    assert {"resample", "forward", "decode"} <= {e["stage"] for e in progress}
    fractions = [e["fraction"] for e in progress]
    assert fractions == sorted(fractions) and fractions[-1] == 1.0
    assert events[-1] == {**events[-1], "event": "done", "scan": "s",
                          "outputs": {"json": str(tmp_path / "out" / "s.json")}}


def _bad_inputs(tmp_path):
    def write(name, array, is_vector=False):
        sitk.WriteImage(sitk.GetImageFromArray(array, isVector=is_vector), str(tmp_path / name))
        return tmp_path / name

    (tmp_path / "junk.mha").write_bytes(b"this is no image")
    ramp = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    return {
        "missing": (tmp_path / "absent.mhd", "absent.mhd: file not found."),
        "unreadable": (tmp_path / "junk.mha", "junk.mha: the file could not be read as an image"),
        "2-D": (write("flat.nrrd", ramp[0]), "flat.nrrd: the image is 2-D"),
        "4-D": (write("time.nii", np.stack([ramp, ramp])), "time.nii: the image is 4-D"),
        "empty": (write("blank.mha", np.zeros((4, 5, 6), np.int16)), "blank.mha: the image is empty"),
        "NaN": (write("nan.mha", np.where(ramp == 7, np.nan, ramp)), "nan.mha: the image holds NaN"),
    }


@pytest.mark.parametrize("case", ["missing", "unreadable", "2-D", "4-D", "empty", "NaN"])
def test_bad_scans_give_one_sentence_exit_2_and_no_files(tmp_path, checkpoint, capsys, case):
    path, message = _bad_inputs(tmp_path)[case]
    out = tmp_path / "out"
    code = main(["detect", str(path), "--out", str(out), "--model", str(checkpoint), "--progress", "none", *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and message in err[0]
    assert not out.exists()


def test_bad_checkpoints_give_one_sentence_exit_2_and_no_files(tmp_path, checkpoint, capsys):
    scan = noise_scan(tmp_path / "s.mha")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(checkpoint.read_bytes()[:5000])
    other = tmp_path / "other.pt"
    state = torch.load(checkpoint, weights_only=True)
    state["model_config"] = {**state["model_config"], "head_channels": 12}
    torch.save(state, other)
    for path, message in ((corrupt, "not a readable checkpoint"), (other, "weights do not match")):
        code = main(["detect", str(scan), "--out", str(tmp_path / "out"), "--model", str(path), *FAST])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1 and message in err[0] and str(path) in err[0]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corrupt.pt", "other.pt", "s.mha"]


def test_bad_options_are_refused(tmp_path, checkpoint, capsys):
    scan = noise_scan(tmp_path / "s.mha")
    for options, message in ((["--formats", "csv,xml"], "--formats 'csv,xml'"),
                             (["--threshold", "1.5"], "--threshold 1.5"),
                             (["--mirror", "xq"], "InferenceConfig.mirror_axes: 'xq' is not distinct"),
                             (["--model", "nonexistent"], "nonexistent: not a model name in the manifest")):
        code = main(["detect", str(scan), "--out", str(tmp_path / "out"), "--model", str(checkpoint),
                     *options])
        assert code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.slow
def test_demo_runs_on_a_small_phantom_and_says_what_its_weights_are(tmp_path, capsys):
    code = main(["demo", "--out", str(tmp_path), "--size", "small", "--progress", "none", "--device", "cpu"])
    captured = capsys.readouterr()
    assert code == 0
    if Detector.from_checkpoint("demo", device="cpu").trained:
        assert "trained on" in captured.out and "untrained" not in captured.out + captured.err
        # the trained demo finds the 4.9 mm nodule of this phantom (its 3.1 mm one is beyond it), as its top detection
        assert "T1: (    25.7,    -18.5,   -270.1)    4.9   found by: N1" in captured.out
        assert next(line for line in captured.out.splitlines() if line.strip().startswith("N1:")).endswith("hits T1")
    else:
        assert "untrained" in captured.err and "untrained" in captured.out
    assert "true nodules" in captured.out
    for name in ("demo_phantom.mha", "demo_truth.csv", "demo_phantom.json", "demo_phantom.mrk.json",
                 "demo_phantom.candidates.csv", "demo_detections.png"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "demo_detections.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_scans_without_lungs_are_refused_and_the_chest_ct_of_the_batch_goes_on(tmp_path, chest_checkpoint, capsys):
    out = tmp_path / "out"
    scans = [REAL_CT / "abdomen_6mm.nii.gz", REAL_CT / "pelvis_dicom_2mm.nii.gz", REAL_CT / "A0002_8mm_B70f.nii.gz"]
    code = main(["detect", *map(str, scans), "--out", str(out), "--model", str(chest_checkpoint),
                 "--progress", "none", *FAST])
    captured = capsys.readouterr()
    assert code == 2
    for refused in scans[:2]:
        assert f"{refused}: no lungs found — is this a chest CT?" in captured.err
        assert not list(out.glob(f"{refused.name.split('.')[0]}*"))
    chest = json.loads((out / "A0002_8mm_B70f.json").read_text(encoding="utf-8"))
    assert 2000 < chest["scan"]["lung_volume_ml"] < 9000
    box = chest["scan"]["lung_box_xyz_mm"]
    assert all(low < high for low, high in zip(box["min"], box["max"]))
    line = next(line for line in captured.out.splitlines() if line.startswith("A0002_8mm_B70f:"))
    assert f"lungs {chest['scan']['lung_volume_ml']:.0f} mL" in line
    summary = json.loads((out / "detect_summary.json").read_text(encoding="utf-8"))
    assert [scan["ok"] for scan in summary["scans"]] == [False, False, True]
    assert summary["scans"][2]["lungs"]["lung_volume_ml"] == chest["scan"]["lung_volume_ml"]


def test_no_lung_mask_runs_on_the_whole_volume_and_the_report_says_so(tmp_path, chest_checkpoint, capsys):
    out = tmp_path / "out"
    code = main(["detect", str(REAL_CT / "abdomen_6mm.nii.gz"), "--out", str(out), "--model", str(chest_checkpoint),
                 "--progress", "none", "--no-lung-mask", *FAST])
    assert code == 0
    report = json.loads((out / "abdomen_6mm.json").read_text(encoding="utf-8"))
    assert report["model"]["inference"]["lung_mask"] is False
    assert "lung_volume_ml" not in report["scan"]
    assert "lungs not looked for" in capsys.readouterr().out



def test_precision_is_the_users_choice_and_the_report_says_which_ran(tmp_path, chest_checkpoint, capsys):
    scan = REAL_CT / "A0002_8mm_B70f.nii.gz"
    for precision, reason in (("bf16", "asked for"), ("fp32", "asked for")):
        out = tmp_path / precision
        assert main(["detect", str(scan), "--out", str(out), "--model", str(chest_checkpoint), "--progress", "none",
                     "--precision", precision, *FAST]) == 0
        model = json.loads((out / "A0002_8mm_B70f.json").read_text(encoding="utf-8"))["model"]
        assert (model["precision"], model["precision_reason"], model["inference"]["precision"]) == (
            precision, reason, precision)
    assert main(["detect", str(scan), "--out", str(tmp_path / "bad"), "--model", str(chest_checkpoint),
                 "--precision", "fp8", *FAST]) == 2
    assert "InferenceConfig.precision: 'fp8' is not one of auto, fp32, bf16, fp16." in capsys.readouterr().err
    assert not (tmp_path / "bad").exists()


def test_a_lung_volume_outside_the_adult_range_is_a_warning(tmp_path, chest_checkpoint, caplog):
    from SCPMNoduleLib.phantom import make_phantom

    scan = tmp_path / "miniature.mha"
    sitk.WriteImage(make_phantom(7, "small")[0], str(scan))  # a miniature chest: lungs of about 0.1 L
    with caplog.at_level("WARNING", logger="SCPMNoduleLib.pipeline"):
        code = main(["detect", str(scan), "--out", str(tmp_path / "out"), "--model", str(chest_checkpoint),
                     "--progress", "none", *FAST])
    assert code == 0
    (warning,) = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert warning.startswith(f"{scan}: lung volume ") and "outside the adult range (1000-10000 mL)" in warning


def _damaged_scans(tmp_path):
    """Scans whose files are damaged, each with the clause that says what is wrong."""
    image = sitk.GetImageFromArray(np.random.default_rng(0).normal(-700, 200, (10, 12, 14)).astype(np.int16))
    image.SetSpacing((0.9, 0.9, 1.5))

    def written(name, edit=None):
        path = tmp_path / name
        sitk.WriteImage(image, str(path))
        if edit is not None:
            edit(path)
        return path

    def cut(path):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])

    def header(old, new):
        return lambda path: path.write_text(re.sub(old, new, path.read_text(encoding="latin-1")), encoding="latin-1")

    return {
        "truncated raw": (written("trunc.mhd", lambda p: cut(p.with_suffix(".raw"))),
                          "trunc.mhd: its voxel data is truncated (1680 bytes of the 3360 bytes its header promises)."),
        "missing raw": (written("noraw.mhd", lambda p: p.with_suffix(".raw").unlink()),
                        "noraw.mhd: its voxel data file noraw.raw is missing."),
        "truncated mha": (written("trunc.mha", cut), "trunc.mha: its voxel data is truncated"),
        "truncated nrrd": (written("trunc.nrrd", cut), "trunc.nrrd: its voxel data is truncated"),
        "truncated nii": (written("trunc.nii", cut), "trunc.nii: its voxel data is truncated"),
        "truncated nii.gz": (written("trunc.nii.gz", cut), "trunc.nii.gz: its compressed data ends early"),
        "zero spacing": (written("zero.mhd", header(r"ElementSpacing = .*", "ElementSpacing = 0 0.9 1.5")),
                         "zero.mhd: a voxel spacing is zero ([0, 0.9, 1.5] mm)."),
        "singular direction": (written("flat.mhd", header(r"TransformMatrix = .*",
                                                          "TransformMatrix = 1 0 0 1 0 0 0 0 1")),
                               "flat.mhd: its direction matrix is singular"),
        "skewed direction": (written("skew.mhd", header(r"TransformMatrix = .*",
                                                        "TransformMatrix = 1 0 0 0.5 1 0 0 0 1")),
                             "skew.mhd: the direction matrix is not orthonormal (two voxel axes meet at 63.4 degrees"),
    }


@pytest.mark.parametrize("case", ["truncated raw", "missing raw", "truncated mha", "truncated nrrd", "truncated nii",
                                  "truncated nii.gz", "zero spacing", "singular direction", "skewed direction"])
def test_damaged_scan_files_say_what_is_wrong_and_itk_prints_nothing(tmp_path, checkpoint, capfd, case):
    path, message = _damaged_scans(tmp_path)[case]
    out = tmp_path / "out"
    code = main(["detect", str(path), "--out", str(out), "--model", str(checkpoint), "--progress", "none", *FAST])
    captured = capfd.readouterr()  # the file descriptor: what ITK and MetaIO print bypasses Python
    err = captured.err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and message in err[0] and "Traceback" not in captured.err
    assert not out.exists()


def test_nan_weights_are_refused_when_the_checkpoint_loads(tmp_path, checkpoint, capsys):
    state = torch.load(checkpoint, weights_only=True)
    state["state_dict"] = {k: torch.full_like(v, float("nan")) if v.is_floating_point() else v
                           for k, v in state["state_dict"].items()}
    diverged = tmp_path / "diverged.pt"
    torch.save(state, diverged)
    code = main(["detect", str(noise_scan(tmp_path / "s.mha")), "--out", str(tmp_path / "out"),
                 "--model", str(diverged), *FAST])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert f"{diverged}: the checkpoint's weights hold NaN or infinite values" in err[0]
    assert not (tmp_path / "out").exists()


def test_a_scan_that_now_fails_loses_its_old_outputs(tmp_path, checkpoint, capsys, caplog):
    scan = noise_scan(tmp_path / "s.mha")
    out = tmp_path / "out"
    assert main(["detect", str(scan), "--out", str(out), "--model", str(checkpoint), "--progress", "none", *FAST]) == 0
    scan.write_bytes(b"no longer an image")
    caplog.set_level("WARNING")
    code = main(["detect", str(scan), "--out", str(out), "--model", str(checkpoint), "--progress", "none", *FAST])
    assert code == 2 and "s.mha: the file could not be read as an image" in capsys.readouterr().err
    assert "the outputs of an earlier run" in caplog.text
    assert sorted(p.name for p in out.iterdir()) == ["candidates.csv", "detect_summary.json"]  # the last batch's


def test_a_phantom_folder_is_detected_without_its_lung_masks(tmp_path, checkpoint, capsys):
    for folder in ("subset0", "seg-lungs-LUNA16"):
        (tmp_path / "data" / folder).mkdir(parents=True)
    noise_scan(tmp_path / "data" / "subset0" / "1.2.3.mhd")
    noise_scan(tmp_path / "data" / "seg-lungs-LUNA16" / "1.2.3.mhd")
    noise_scan(tmp_path / "data" / "subset0" / ".1.2.3.mha.99999.abcdefgh.tmp.mha")  # a killed run's temporary
    out = tmp_path / "out"
    assert main(["detect", str(tmp_path / "data"), "--out", str(out), "--model", str(checkpoint),
                 "--progress", "none", *FAST]) == 0
    assert "1 of 1 scans done" in capsys.readouterr().out


def test_scan_names_a_spreadsheet_would_run_are_written_safe_and_read_back(tmp_path, checkpoint, capsys):
    scan = noise_scan(tmp_path / "=HYPERLINK(1).mha")
    out = tmp_path / "out"
    assert main(["detect", str(scan), "--out", str(out), "--model", str(checkpoint), "--progress", "none", *FAST]) == 0
    for name in ("candidates.csv", "=HYPERLINK(1).candidates.csv"):
        rows = (out / name).read_text(encoding="utf-8").splitlines()[1:]
        assert rows and all(row.startswith("'=HYPERLINK(1),") for row in rows)
        assert set(read_candidates(out / name).seriesuids) == {"=HYPERLINK(1)"}
