"""``scpm-train tune``: each post-processing setting scores as the detector configured with it would."""

import json
from dataclasses import replace

import numpy as np
import pytest

from SCPMNoduleLib.checkpoint import save_checkpoint
from SCPMNoduleLib.evaluation import EvaluationConfig, evaluate_froc
from SCPMNoduleLib.inference import InferenceConfig
from SCPMNoduleLib.io import Findings
from SCPMNoduleLib.model import SCPMNet
from SCPMNoduleLib.models import resolve_model
from SCPMNoduleLib.preprocess import PreprocessConfig
from Training.cache import find_luna16_scans
from Training.cli import main
from Training.config import load_config
from Training.heldout import detect_scans
from Training.state import load_deployable
from Training.tune import sweep_postprocessing

from training_helpers import write_tiny_luna16

TINY = ["model.stem_channels=4", "model.encoder_channels=[4,8,8,8]", "model.encoder_blocks=[1,1,1,1]",
        "model.head_channels=8", "model.se_reduction=2", "model.se_context=16"]


@pytest.fixture(scope="module")
def tuning_set(tmp_path_factory):
    """A tiny scan with two nodules and an (untrained, so prolific) tiny detector checkpoint."""
    root = tmp_path_factory.mktemp("tune")
    write_tiny_luna16(root / "data", n_scans=1, subsets=1)
    model = SCPMNet(load_config(None, TINY).model)
    save_checkpoint(root / "tiny.pt", model, PreprocessConfig())
    return root


@pytest.mark.slow
def test_every_setting_scores_as_the_detector_configured_with_it(tuning_set):
    data, checkpoint = tuning_set / "data", tuning_set / "tiny.pt"
    results = sweep_postprocessing(checkpoint, data, distance_ratios=[0.2, 0.5], iou_thresholds=[0.1],
                                   top_ns=[20, 2000], score_threshold=0.0, device="cpu", progress=False)
    assert [(s.nms_distance_ratio, s.nms_iou_threshold, s.top_n) for s, _ in results] == [
        (0.2, 0.1, 20), (0.2, 0.1, 2000), (0.5, 0.1, 20), (0.5, 0.1, 2000)]
    model, preprocess, _, _ = load_deployable(checkpoint)
    scans = find_luna16_scans(data)
    counts = []
    for setting, result in results:
        assert setting == replace(InferenceConfig(score_threshold=0.0), nms_distance_ratio=setting.nms_distance_ratio,
                                  top_n=setting.top_n)
        direct = evaluate_froc(data / "annotations.csv", Findings.empty(), [scan.seriesuid for scan in scans],
                               detect_scans(model, preprocess, scans, "cpu", setting), EvaluationConfig(n_bootstraps=0))
        assert result.counts == direct.counts
        np.testing.assert_array_equal(result.sensitivities, direct.sensitivities)
        counts.append(result.counts.n_candidates)
    assert len(set(counts)) > 1  # the settings do change the candidates


def test_the_command_prints_one_line_per_setting(tuning_set, capsys):
    code = main(["tune", "--checkpoint", str(tuning_set / "tiny.pt"), "--data", str(tuning_set / "data"),
                 "--device", "cpu", "--threshold", "0", "--distance-ratios", "0.25", "0.5", "--top-n", "20"])
    lines = capsys.readouterr().out.splitlines()
    assert code == 0
    assert lines[0] == f"{tuning_set / 'tiny.pt'} on 1 scan(s) of {tuning_set / 'data'}"
    assert lines[1].startswith("distance ratio  SIoU thr.  top-n    CPM   sensitivity at 0.125 0.25 0.5 1 2 4 8")
    assert [line.split()[:3] for line in lines[2:]] == [["0.250", "0.10", "20"], ["0.500", "0.10", "20"]]


def test_evaluate_prints_the_sensitivities_at_the_rates_it_used(tuning_set, tmp_path, capsys):
    code = main(["evaluate", "--checkpoint", str(tuning_set / "tiny.pt"), "--data", str(tuning_set / "data"),
                 "--out", str(tmp_path / "eval"), "--device", "cpu", "--bootstraps", "0"])
    line = capsys.readouterr().out.strip()
    assert code == 0
    assert "(sensitivities at 1/8, 1/4, 1/2, 1, 2, 4, 8 FPs/scan: " in line and line.endswith(f"-> {tmp_path / 'eval'}")


def test_evaluate_takes_a_model_name_as_detect_and_tune_do(tuning_set, tmp_path):
    code = main(["evaluate", "--checkpoint", "demo", "--data", str(tuning_set / "data"),
                 "--out", str(tmp_path / "eval"), "--device", "cpu", "--bootstraps", "0"])
    assert code == 0
    summary = json.loads((tmp_path / "eval" / "froc_summary.json").read_text(encoding="utf-8"))
    assert summary["inputs"]["checkpoint"] == str(resolve_model("demo")[0].resolve())
    assert list(summary["runs"]) == ["demo.pt"]
