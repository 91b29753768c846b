"""The run's CSV logs: validation columns follow the evaluation's FP rates; resume drops later rows."""

import csv

import numpy as np
import pytest

from SCPMNoduleLib.evaluation import FP_RATES, EvaluationConfig, evaluate_froc
from SCPMNoduleLib.io import Findings
from Training.run_log import RunLog, append_rows, drop_rows_from_epoch, validation_columns


def test_luna16_rates_give_the_seven_named_sensitivity_columns():
    assert validation_columns(FP_RATES) == (
        "epoch", "cpm", "sens_1_8", "sens_1_4", "sens_1_2", "sens_1", "sens_2", "sens_4", "sens_8")


def test_another_rate_list_gives_one_column_per_rate():
    assert validation_columns((0.25, 1 / 3, 0.3, 1.0, 1.5, 16.0)) == (
        "epoch", "cpm", "sens_1_4", "sens_1_3", "sens_0.3", "sens_1", "sens_1.5", "sens_16")


@pytest.mark.parametrize("fp_rates", [(0.5, 2.0), (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)])
def test_validation_rows_hold_every_rate_of_the_evaluation(tmp_path, fp_rates):
    """Fewer and more rates than LUNA16's seven: every sensitivity lands in its own column."""
    uids = ["scan.a", "scan.b"]
    nodules = Findings.from_columns(["scan.a", "scan.b"], [[0, 0, 0], [10, 10, 10]], [8.0, 6.0])
    candidates = Findings.from_columns(["scan.a", "scan.a", "scan.b", "scan.b"],
                                       [[0, 1, 0], [50, 50, 50], [40, 40, 40], [10, 10, 11]], [5, 5, 5, 5],
                                       [0.9, 0.8, 0.7, 0.4])
    result = evaluate_froc(nodules, Findings.empty(), uids, candidates,
                           EvaluationConfig(fp_rates=fp_rates, n_bootstraps=0))
    run_log = RunLog(tmp_path)
    run_log.validation_row(3, 30, result)
    run_log.validation_row(4, 40, result)
    with open(tmp_path / "validation.csv", newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        rows = list(reader)
    assert tuple(reader.fieldnames) == validation_columns(fp_rates)
    assert [row["epoch"] for row in rows] == ["3", "4"]
    written = [float(rows[0][name]) for name in validation_columns(fp_rates)[2:]]
    np.testing.assert_allclose(written, result.sensitivities, rtol=0, atol=0)
    assert float(rows[0]["cpm"]) == result.cpm


def test_resuming_drops_the_rows_of_the_epochs_to_be_run_again(tmp_path):
    path = tmp_path / "train_log.csv"
    append_rows(path, ("epoch", "step"), [{"epoch": e, "step": 2 * e + i} for e in range(4) for i in range(2)])
    drop_rows_from_epoch(path, 2)
    assert path.read_text(encoding="utf-8").splitlines() == ["epoch,step", "0,0", "0,1", "1,2", "1,3"]
    drop_rows_from_epoch(tmp_path / "absent.csv", 0)  # nothing to drop
    assert not (tmp_path / "absent.csv").exists()
