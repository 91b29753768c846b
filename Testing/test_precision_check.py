"""bf16 by measurement (issue 24): the comparison of two runs' candidates, the record export writes
from an fp32 and a bf16 evaluation, the detector's choice under ``auto``, and the trained demo's
detections in both precisions."""

import json
import shutil
from pathlib import Path

import jsonschema
import numpy as np
import pytest
import torch
from fault_helpers import noise_scan, snapshot

from SCPMNoduleLib.checkpoint import load_checkpoint, save_checkpoint
from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.inference import Detector, InferenceConfig
from SCPMNoduleLib.io import Findings, read_candidates
from SCPMNoduleLib.model import SCPMNet, SCPMNetConfig, network_only
from SCPMNoduleLib.models import resolve_model
from SCPMNoduleLib.phantom import make_phantom
from SCPMNoduleLib.pipeline import detect_scan
from SCPMNoduleLib.preprocess import PreprocessConfig
from SCPMNoduleLib.runtime import native_bf16_cpu
from Training.export import export_model
from Training.heldout import evaluate_folder
from Training.precision_check import TOLERANCE, TOP_K, compare_candidates

from training_helpers import write_tiny_luna16

REPO = Path(__file__).resolve().parents[1]
SCHEMA = json.loads((REPO / "Resources" / "Models.schema.json").read_text(encoding="utf-8"))
NO_NATIVE_BF16 = "no native bf16 on this CPU (no avx512_bf16 or AMX): bf16 is emulated there, tens of times slower"

FP32 = Findings.from_columns(["a", "a", "a", "b"], [[0, 0, 0], [10, 0, 0], [30, 0, 0], [0, 0, 0]],
                             probabilities=[0.9, 0.5, 0.2, 0.8])
"""Scan a: three detections (the third below a top-2 cut), scan b: one."""


def _moved(row: int, by_mm: float = 0.0, probability: float | None = None, drop: bool = False) -> Findings:
    centers, probabilities = FP32.centers_xyz_mm.copy(), FP32.probabilities.copy()
    centers[row, 0] += by_mm
    if probability is not None:
        probabilities[row] = probability
    keep = [i for i in range(len(FP32)) if not (drop and i == row)]
    return Findings.from_columns(FP32.seriesuids[keep], centers[keep], probabilities=probabilities[keep])


@pytest.mark.parametrize("bf16, holds, shift, change, unpaired", [
    (_moved(0, by_mm=0.3), True, 0.3, 0.0, 0),
    (_moved(0, by_mm=-0.5), True, 0.5, 0.0, 0),               # the tolerance itself passes
    (_moved(0, by_mm=0.7), False, 0.0, 0.0, 2),               # unpaired both ways: lost and invented
    (_moved(1, probability=0.51), True, 0.0, 0.01, 0),
    (_moved(1, probability=0.53), False, 0.0, 0.03, 0),
    (_moved(3, drop=True), False, 0.0, 0.0, 1),               # scan b's only detection is missing
    (_moved(2, drop=True), True, 0.0, 0.0, 0),                # beyond the top 2: not compared
])
def test_hand_worked_candidate_tables_give_the_expected_record(bf16, holds, shift, change, unpaired):
    record = compare_candidates(FP32, bf16, 0.8, 0.8, top_k=2)
    assert record == {"bf16_holds": holds, "top_k": 2, "max_center_shift_mm": pytest.approx(shift),
                      "max_probability_change": pytest.approx(change), "unpaired": unpaired,
                      "cpm": {"fp32": 0.8, "bf16": 0.8}, "tolerance": TOLERANCE, "scans": 2}


def test_a_cpm_drop_beyond_the_tolerance_fails_even_with_the_same_detections():
    assert compare_candidates(FP32, FP32, 0.80, 0.795)["bf16_holds"]
    assert compare_candidates(FP32, FP32, 0.80, 0.81)["bf16_holds"]
    record = compare_candidates(FP32, FP32, 0.80, 0.785)
    assert not record["bf16_holds"] and record["unpaired"] == 0 and record["max_center_shift_mm"] == 0.0
    assert compare_candidates(Findings.empty(), Findings.empty(), 0.0, 0.0)["bf16_holds"]  # nothing to lose


@pytest.mark.parametrize("holds", [True, False])
def test_auto_follows_the_checkpoints_record_and_the_report_says_so(checkpoint, tmp_path, holds):
    """A checkpoint whose record says its detections hold runs bf16 under auto on a native bf16 CPU
    (fp32 elsewhere); one whose record says they do not, or that has none, runs fp32. The JSON
    report and the batch summary say which precision ran and why."""
    model, preprocess, metadata = load_checkpoint(checkpoint)
    save_checkpoint(tmp_path / "m.pt", model, preprocess, {**metadata, "precision_check": {"bf16_holds": holds}})
    detector = Detector.from_checkpoint(tmp_path / "m.pt", device="cpu")
    bf16 = holds and native_bf16_cpu()
    assert detector.bf16_holds == holds
    assert detector.precision()[0] == (torch.bfloat16 if bf16 else None)
    assert not Detector.from_checkpoint(checkpoint, device="cpu").bf16_holds  # no record: fp32
    result = detect_scan(noise_scan(tmp_path / "noise.mha"), tmp_path / "out", detector, ("json",))
    assert result.ok, result.error
    report = json.loads((tmp_path / "out" / "noise.json").read_text(encoding="utf-8"))["model"]
    assert report["precision"] == ("bf16" if bf16 else "fp32") and report["inference"]["precision"] == "auto"
    assert report["precision_reason"] == detector.precision()[1] and report["precision_reason"].startswith("auto: ")
    assert result.precision == {"precision": report["precision"], "precision_reason": report["precision_reason"]}


@pytest.fixture(scope="module")
def evaluations(tmp_path_factory):
    """The trained demo's network (``network.pt``) evaluated on two tiny scans in fp32 and in bf16, and on
    two other scans in bf16.

    The network alone, without the demo's candidate classifier: its detections hold in bf16 on these
    scans, which the tests below need. The two-stage demo's do not (its record says so): the second
    stage cuts its patch at the nearest voxel of a center, so a center that bf16 nudges across a voxel
    boundary moves the patch by one voxel and changes its probability by more than 0.02."""
    if not native_bf16_cpu():
        pytest.skip(NO_NATIVE_BF16)
    root = tmp_path_factory.mktemp("precision")
    write_tiny_luna16(root / "data", n_scans=2, subsets=1)
    write_tiny_luna16(root / "other", n_scans=2, subsets=1, seed=1)
    model, preprocess, metadata = load_checkpoint(resolve_model("demo")[0])
    save_checkpoint(root / "network.pt", network_only(model), preprocess, metadata)
    for name, data, precision in (("fp32", "data", "fp32"), ("bf16", "data", "bf16"), ("other", "other", "bf16")):
        evaluate_folder(root / "network.pt", root / data, root / name, "cpu", 0.01, 0, "", precision)
    (root / "Resources").mkdir()
    return root


@pytest.mark.slow
def test_export_records_the_comparison_and_auto_then_runs_bf16(evaluations):
    root, resources = evaluations, evaluations / "Resources"
    entry = export_model(root / "network.pt", resources / "model.pt", name="demo", version="9",
                         training_data="x", froc_summary=root / "fp32" / "froc_summary.json",
                         manifest=resources / "Models.json", bf16_evaluation=root / "bf16")
    summaries = [json.loads((root / name / "froc_summary.json").read_text(encoding="utf-8")) for name in ("fp32",
                                                                                                          "bf16")]
    assert [s["inputs"]["precision"] for s in summaries] == ["fp32", "bf16"]
    cpms = [next(iter(s["runs"].values()))["cpm"] for s in summaries]
    expected = compare_candidates(read_candidates(root / "fp32" / "candidates.csv"),
                                  read_candidates(root / "bf16" / "candidates.csv"), *cpms)
    record = load_checkpoint(resources / "model.pt")[2]["precision_check"]
    assert record == {**expected, "scans": 2, "evaluation": str((root / "data").resolve()),
                      "cpu": summaries[1]["inputs"]["device_name"]}
    assert record["top_k"] == TOP_K and entry["precision_check"] == record
    jsonschema.validate(json.loads((resources / "Models.json").read_text(encoding="utf-8")), SCHEMA)
    # the trained demo's network holds in bf16 on these scans (the tolerances, not its particular figures)
    assert record["bf16_holds"], record
    detector = Detector.from_checkpoint(resources / "model.pt", device="cpu")
    assert detector.precision()[0] == torch.bfloat16
    # and evaluate --precision auto resolves it as the detector does: the bf16 run's candidates again
    evaluate_folder(resources / "model.pt", root / "data", root / "auto", "cpu", 0.01, 0, "", "auto")
    inputs = json.loads((root / "auto" / "froc_summary.json").read_text(encoding="utf-8"))["inputs"]
    assert inputs["precision"] == "bf16"
    assert (root / "auto" / "candidates.csv").read_bytes() == (root / "bf16" / "candidates.csv").read_bytes()
    # re-exporting without --bf16-evaluation keeps the record of the same weights
    export_model(resources / "model.pt", resources / "again.pt", name="again", version="10", training_data="x")
    assert load_checkpoint(resources / "again.pt")[2]["precision_check"] == record


@pytest.mark.slow
def test_mismatched_evaluations_are_refused_in_one_sentence_and_nothing_is_written(evaluations, tmp_path):
    root = evaluations
    fp32 = root / "fp32" / "froc_summary.json"
    state = tmp_path / "tiny.pt"
    save_checkpoint(state, SCPMNet(SCPMNetConfig.tiny()), PreprocessConfig(),
                    {"training": load_checkpoint(resolve_model("demo")[0])[2]["training"]})
    demo = root / "network.pt"
    cases = {
        "other data": (demo, fp32, root / "other", r"^--froc and --bf16-evaluation are evaluations of different "
                                                   r"data \(.*\); run both on the same\.$"),
        "fp32 twice": (demo, fp32, root / "fp32", r"^--bf16-evaluation .*fp32: an evaluation run in fp32 precision, "
                                                  r"not bf16 \(run scpm-train evaluate --precision bf16\)\.$"),
        "other weights": (state, fp32, root / "bf16",
                          r"^--froc .*fp32/froc_summary.json: an evaluation of other weights than the checkpoint "
                          r"exported\.$"),
        "no evaluation": (demo, fp32, tmp_path, r"^--bf16-evaluation .*: not a scpm-train evaluate folder "
                                                r"\(froc_summary.json not found\)\.$"),
        "no --froc": (demo, None, root / "bf16",
                      r"^--bf16-evaluation: needs --froc, the fp32 evaluation it is compared with\.$"),
    }
    shutil.copy(REPO / "Resources" / "Models.json", tmp_path / "Models.json")
    before = snapshot(tmp_path)
    for name, (checkpoint, froc, bf16, message) in cases.items():
        with pytest.raises(UserInputError, match=message):
            export_model(checkpoint, tmp_path / "out.pt", name="demo", version="1", training_data="x",
                         froc_summary=froc, manifest=tmp_path / "Models.json", bf16_evaluation=bf16)
        assert snapshot(tmp_path) == before, name


def test_the_trained_demo_detects_the_same_nodules_in_bf16_and_fp32():
    """On an unseen phantom (seed 1000), bf16 finds the phantom's nodules where fp32 does: each true
    nodule's fp32 detection has a bf16 partner within 0.5 mm whose probability differs by at most
    0.02 (Training.precision_check's tolerances). Whether all top 20 detections hold is what the
    demo's export record says: where it says so, they hold here too; where it does not (demo 1.4.0:
    sphere NMS keeps or drops a low-probability neighbour of a nodule when bf16 nudges its radius;
    1.5.0: its second stage's patch moves by a voxel when bf16 nudges a center across a boundary),
    ``auto`` must not pick bf16."""
    if not native_bf16_cpu():
        pytest.skip(NO_NATIVE_BF16)
    image, nodules = make_phantom(1000, "small")
    found = {}
    for precision in ("fp32", "bf16"):
        detector = Detector.from_checkpoint("demo", device="cpu", config=InferenceConfig(precision=precision))
        result = detector.detect(image)
        assert result.precision == precision and result.precision_reason == "asked for"
        found[precision] = Findings.from_detections("phantom", result.detections)
    truth = [n for n in nodules if n.included]
    assert len(truth) == 2
    for nodule in truth:
        distances = np.linalg.norm(found["fp32"].centers_xyz_mm - np.asarray(nodule.center_xyz_mm), axis=1)
        hit = int(np.argmin(distances))
        assert distances[hit] < nodule.diameter_mm / 2, f"fp32 misses the {nodule.diameter_mm:.1f} mm nodule"
        center, probability = found["fp32"].centers_xyz_mm[hit], found["fp32"].probabilities[hit]
        shifts = np.linalg.norm(found["bf16"].centers_xyz_mm - center, axis=1)
        partner = int(np.argmin(shifts))
        assert shifts[partner] <= TOLERANCE["center_shift_mm"]
        assert abs(found["bf16"].probabilities[partner] - probability) <= TOLERANCE["probability"]
    record = compare_candidates(found["fp32"], found["bf16"], 0.0, 0.0)
    demo = Detector.from_checkpoint("demo", device="cpu")
    if demo.bf16_holds:
        assert record["bf16_holds"] and record["unpaired"] == 0, record
    else:
        assert demo.precision()[0] is None
