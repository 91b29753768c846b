"""Held-out detection and its FROC: the real detector on the original scans.

Validation, cross-validation and ``scpm-train evaluate`` read each held-out scan from its
original file and run :meth:`SCPMNoduleLib.inference.Detector.detect` on it, the same path users
take (resampling, windowing, lung crop, tiling, decoding, NMS, the 100 cap), so the CPM measured
here is the CPM of the checkpoint a user will run.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Protocol

import torch
import torch.distributed as dist
from torch import nn

from SCPMNoduleLib.checkpoint import bf16_holds
from SCPMNoduleLib.evaluation import EvaluationConfig, FROCResult, evaluate_froc, write_evaluation
from SCPMNoduleLib.inference import Detector, InferenceConfig
from SCPMNoduleLib.io import Findings, read_annotations, read_scan, write_candidates
from SCPMNoduleLib.models import resolve_model
from SCPMNoduleLib.preprocess import PreprocessConfig
from SCPMNoduleLib.runtime import detection_precision, device_name, precision_name, resolve_device
from SCPMNoduleLib.temp_files import check_output_folder

from .cache import find_luna16_scans
from .state import load_deployable, parameter_digest

__all__ = ["Scan", "detect_scans", "detect_sharded", "evaluate_folder", "read_excluded"]

log = logging.getLogger(__name__)


class Scan(Protocol):
    """What detection needs of a scan (a cached or a source scan): its uid and original file."""

    @property
    def seriesuid(self) -> str: ...

    @property
    def source(self) -> Path: ...


def detect_scans(model: nn.Module, preprocess: PreprocessConfig, scans: Sequence[Scan],
                 device: torch.device | str, config: InferenceConfig | None = None) -> Findings:
    """LUNA16 candidates (world mm, probability, diameter) of ``scans`` from their original files.

    The detector gets a copy of ``model`` (inference changes its mode and memory format), so the
    training model is left as it was.
    """
    detector = Detector(copy.deepcopy(model), preprocess, config or InferenceConfig(), device)
    tables = []
    for scan in scans:
        tables.append(Findings.from_detections(scan.seriesuid, detector.detect(read_scan(scan.source)).detections))
        log.debug("%s: %d detections", scan.seriesuid, len(tables[-1]))
    return Findings.concat(tables)


def read_excluded(data_dir: str | os.PathLike) -> Findings:
    """A LUNA16-layout folder's ``annotations_excluded.csv`` (none when the file is absent)."""
    path = Path(data_dir) / "annotations_excluded.csv"
    return read_annotations(path) if path.is_file() else Findings.empty()


def detect_sharded(model: nn.Module, preprocess: PreprocessConfig, scans: Sequence[Scan],
                   device: torch.device | str, rank: int = 0, world_size: int = 1,
                   config: InferenceConfig | None = None) -> Findings:
    """:func:`detect_scans` with the scans dealt out over the DDP processes (``scans[rank::world_size]``).

    Every process returns all candidates (gathered in rank order); with one process it is
    :func:`detect_scans`.
    """
    found = detect_scans(model, preprocess, scans[rank::world_size], device, config)
    if world_size == 1:
        return found
    gathered: list[Findings | None] = [None] * world_size
    dist.all_gather_object(gathered, found)
    return Findings.concat([part for part in gathered if part is not None])


def evaluate_folder(checkpoint: str | os.PathLike, data_dir: str | os.PathLike, out_dir: str | os.PathLike,
                    device: str = "auto", score_threshold: float = 0.01, bootstraps: int = 1000,
                    mirror_axes: str = "", precision: str = "fp32") -> FROCResult:
    """Detect on every scan of a LUNA16-layout folder and evaluate with LUNA16's FROC.

    Writes ``candidates.csv`` and the evaluation (``froc_summary.json``, ``froc_curve.csv``,
    ``froc.png``, ``missed_nodules.csv``) to ``out_dir``; ``froc_summary.json`` is what
    ``scpm-train export --froc`` records as the model's metrics. ``mirror_axes``: test-time
    mirroring (:class:`InferenceConfig`). ``precision``: the network's (:class:`InferenceConfig`);
    fp32 by default, so that the figures export records are the model's own on any machine and the
    reference that a ``--precision bf16`` evaluation is compared with
    (:mod:`~Training.precision_check`). ``auto`` is resolved as the detector would resolve it for
    this checkpoint, and the summary's ``inputs`` record the precision that ran, the weights'
    digest, the threshold and the device. The settings, the output folder, the scans, the
    annotations and the checkpoint are all checked before the first scan is detected.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    config = InferenceConfig(score_threshold=score_threshold, mirror_axes=mirror_axes, precision=precision)
    evaluation = EvaluationConfig(n_bootstraps=bootstraps)
    check_output_folder(out_dir, "--out")
    scans = find_luna16_scans(data_dir)
    annotations, excluded = read_annotations(data_dir / "annotations.csv"), read_excluded(data_dir)
    checkpoint = resolve_model(checkpoint)[0]  # a model name (demo) as detect and tune take it, or a file
    model, preprocess, _, metadata = load_deployable(checkpoint)
    torch_device = resolve_device(str(device))
    dtype, reason = detection_precision(torch_device, precision, bf16_holds=bf16_holds(metadata))
    ran = precision_name(dtype)
    log.info("%s precision (%s)", ran, reason)
    candidates = detect_scans(model, preprocess, scans, device, replace(config, precision=ran))
    result = evaluate_froc(annotations, excluded, [scan.seriesuid for scan in scans], candidates, evaluation)
    write_candidates(out_dir / "candidates.csv", candidates)
    write_evaluation({Path(checkpoint).name: result}, out_dir,
                     inputs={"checkpoint": str(Path(checkpoint).resolve()), "data": str(data_dir.resolve()),
                             "mirror_axes": mirror_axes, "threshold": repr(float(score_threshold)),
                             "precision": ran, "weights_sha256": parameter_digest(model),
                             "device_name": device_name(torch_device)})
    return result
