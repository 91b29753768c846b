"""Whether a checkpoint's detections hold in bf16: the record ``export`` writes for ``precision="auto"``.

Two ``scpm-train evaluate`` folders of the same checkpoint on the same scans, one run with
``--precision fp32`` and one with ``--precision bf16``, are compared (:func:`compare_candidates`,
numpy only, on their ``candidates.csv``) and their CPMs taken from their ``froc_summary.json``.
The result goes into the checkpoint's ``metadata["precision_check"]`` and its manifest entry:

``bf16_holds`` is true when, on every scan, each of the top ``top_k`` detections of either run
has a partner in the other run (its nearest detection on the same scan) no farther than
``tolerance["center_shift_mm"]`` whose probability differs by at most
``tolerance["probability"]``, and the bf16 CPM is at most ``tolerance["cpm_drop"]`` below the fp32
one. Both directions are checked, so that a detection bf16 invents counts as much as one it loses.
The detector reads only ``bf16_holds`` (:attr:`~SCPMNoduleLib.inference.Detector.bf16_holds`);
the figures say by how much it holds.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np

from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.evaluation import read_froc_summary
from SCPMNoduleLib.io import Findings, read_candidates

__all__ = ["TOLERANCE", "TOP_K", "compare_candidates", "precision_check_record"]

TOP_K = 20
"""Detections per scan compared: the ones a reader looks at (LUNA16 counts up to 8 FPs per scan)."""
TOLERANCE = {"center_shift_mm": 0.5, "probability": 0.02, "cpm_drop": 0.01}
"""Half a voxel of the demo's 1 mm grid; twice the probability change measured on the demo; one CPM point."""


def _top_k(table: Findings, uid: str, top_k: int) -> tuple[np.ndarray, np.ndarray]:
    rows = np.flatnonzero(table.seriesuids == uid)
    rows = rows[np.argsort(-table.probabilities[rows], kind="stable")][:top_k]
    return table.centers_xyz_mm[rows], table.probabilities[rows]


def _partners(centers: np.ndarray, probabilities: np.ndarray, other: Findings,
              uid: str) -> tuple[np.ndarray, np.ndarray]:
    """For each of ``centers``, the distance to its nearest detection of ``uid`` in ``other`` and
    the absolute probability difference to it (``inf`` for both when ``other`` has none there)."""
    rows = np.flatnonzero(other.seriesuids == uid)
    if not len(rows):
        infinite = np.full(len(centers), np.inf)
        return infinite, infinite.copy()
    distances = np.linalg.norm(centers[:, None, :] - other.centers_xyz_mm[rows][None, :, :], axis=2)
    nearest = distances.argmin(axis=1)
    return (distances[np.arange(len(centers)), nearest],
            np.abs(probabilities - other.probabilities[rows][nearest]))


def compare_candidates(fp32: Findings, bf16: Findings, cpm_fp32: float, cpm_bf16: float, *,
                       top_k: int = TOP_K, tolerance: dict[str, float] | None = None) -> dict[str, Any]:
    """The precision record of two runs' candidates (module text): ``bf16_holds``, ``top_k``,
    ``max_center_shift_mm`` and ``max_probability_change`` over the detections that found a partner
    within the shift tolerance, ``unpaired`` (top-k detections of either run without one),
    ``cpm`` of both, ``tolerance`` and ``scans`` (scans with a detection in either run)."""
    tolerance = dict(TOLERANCE if tolerance is None else tolerance)
    shifts, changes, unpaired = [], [], 0
    uids = sorted(set(fp32.seriesuids.tolist()) | set(bf16.seriesuids.tolist()))
    for uid in uids:
        for table, other in ((fp32, bf16), (bf16, fp32)):
            distance, change = _partners(*_top_k(table, uid, top_k), other, uid)
            paired = distance <= tolerance["center_shift_mm"]
            unpaired += int((~paired).sum())
            shifts += distance[paired].tolist()
            changes += change[paired].tolist()
    max_shift, max_change = max(shifts, default=0.0), max(changes, default=0.0)
    holds = (unpaired == 0 and max_change <= tolerance["probability"]
             and cpm_bf16 >= cpm_fp32 - tolerance["cpm_drop"])
    return {"bf16_holds": bool(holds), "top_k": top_k, "max_center_shift_mm": round(max_shift, 4),
            "max_probability_change": round(max_change, 4), "unpaired": unpaired,
            "cpm": {"fp32": cpm_fp32, "bf16": cpm_bf16}, "tolerance": tolerance, "scans": len(uids)}


def _evaluation(folder: Path, option: str) -> tuple[dict[str, Any], float, Findings]:
    """An evaluate folder's inputs (with ``n_scans``), CPM and candidates, or one sentence saying
    what is missing (``option`` names the command-line option and what was given)."""
    summary_path, candidates_path = folder / "froc_summary.json", folder / "candidates.csv"
    for path in (summary_path, candidates_path):
        if not path.is_file():
            raise UserInputError(f"{option}: not a scpm-train evaluate folder ({path.name} not found).")
    summary = read_froc_summary(summary_path)
    inputs = {**summary.inputs, "n_scans": summary.metrics["n_scans"]}
    return inputs, summary.metrics["cpm"], read_candidates(candidates_path)


def precision_check_record(froc_summary: str | os.PathLike, bf16_folder: str | os.PathLike,
                           weights_sha256: str) -> dict[str, Any]:
    """The record of two ``scpm-train evaluate`` folders of the checkpoint whose parameters have
    digest ``weights_sha256`` (:func:`~Training.state.parameter_digest`): the folder of
    ``froc_summary`` (``--froc``), run with ``--precision fp32``, and ``bf16_folder``
    (``--bf16-evaluation``), run with ``--precision bf16``.

    Raises:
        UserInputError: in one sentence, a folder that is not an evaluation, one that ran in another
            precision, or two that differ in checkpoint, weights, data, scans or settings.
    """
    folders = {f"--froc {froc_summary}": Path(froc_summary).parent,
               f"--bf16-evaluation {bf16_folder}": Path(bf16_folder)}
    (fp32_inputs, cpm_fp32, fp32), (bf16_inputs, cpm_bf16, bf16) = (
        _evaluation(folder, option) for option, folder in folders.items())
    for option, inputs, precision in zip(folders, (fp32_inputs, bf16_inputs), ("fp32", "bf16")):
        if inputs.get("precision") != precision:
            raise UserInputError(f"{option}: an evaluation run in {inputs.get('precision', 'an unrecorded')} "
                                 f"precision, not {precision} (run scpm-train evaluate --precision {precision}).")
        if inputs.get("weights_sha256") != weights_sha256:
            raise UserInputError(f"{option}: an evaluation of other weights than the checkpoint exported.")
    for key in ("data", "n_scans", "threshold", "mirror_axes"):
        if fp32_inputs.get(key) != bf16_inputs.get(key):
            raise UserInputError(f"--froc and --bf16-evaluation are evaluations of different {key.replace('_', ' ')} "
                                 f"({fp32_inputs.get(key)} and {bf16_inputs.get(key)}); run both on the same.")
    record = compare_candidates(fp32, bf16, cpm_fp32, cpm_bf16)
    return {**record, "scans": int(fp32_inputs["n_scans"]), "evaluation": str(fp32_inputs.get("data")),
            "cpu": str(bf16_inputs.get("device_name", "unknown"))}
