"""Tuning the detector's post-processing: ``scpm-train tune``.

The network runs once per scan of a LUNA16-layout folder (:meth:`Detector.predict_maps`); the same
maps are then decoded with every combination of NMS distance ratio, NMS SIoU threshold and
per-level top-n (:meth:`Detector.decode`), and each setting's candidates are scored with LUNA16's
FROC (no bootstrap). This is how :class:`~SCPMNoduleLib.inference.InferenceConfig`'s defaults
are chosen. Tune on scans that neither training nor the reported test set uses: the project's
tuning set is ``scpm-nodule phantom --seed 500 --scans 10 --size full``.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from SCPMNoduleLib.evaluation import EvaluationConfig, FROCResult, evaluate_froc
from SCPMNoduleLib.inference import Detector, InferenceConfig
from SCPMNoduleLib.io import Findings, read_annotations, read_scan
from SCPMNoduleLib.models import resolve_model

from .cache import find_luna16_scans
from .heldout import read_excluded
from .state import load_deployable

__all__ = ["DISTANCE_RATIOS", "IOU_THRESHOLDS", "format_sweep", "sweep_postprocessing"]

DISTANCE_RATIOS = (1 / 3, 0.4, 0.5)
"""NMS distance ratios tried by default: those compared when the default (0.5) was chosen."""
IOU_THRESHOLDS = (0.1,)
"""NMS SIoU thresholds tried by default (0.1 and 0.2 made no difference then)."""


def sweep_postprocessing(checkpoint: str | os.PathLike, data_dir: str | os.PathLike, *,
                         distance_ratios: Sequence[float] | None = None,
                         iou_thresholds: Sequence[float] | None = None, top_ns: Sequence[int] | None = None,
                         score_threshold: float = 0.01, device: str = "auto",
                         progress: bool = True) -> list[tuple[InferenceConfig, FROCResult]]:
    """The FROC of every post-processing setting on a folder's scans, the network run once per scan.

    Args:
        checkpoint: a detector checkpoint, a training state (``best.pt``) or a model name of the
            manifest (``demo``).
        data_dir: LUNA16-layout folder with ``annotations.csv`` (and optionally
            ``annotations_excluded.csv``).
        distance_ratios, iou_thresholds, top_ns: the values of ``nms_distance_ratio``,
            ``nms_iou_threshold`` and ``top_n`` to combine; ``None``: :data:`DISTANCE_RATIOS`,
            :data:`IOU_THRESHOLDS` and :class:`InferenceConfig`'s ``top_n``.
        score_threshold: as in validation and ``scpm-train evaluate`` (the FROC needs the low scores).
        device: ``auto``, ``cuda`` or ``cpu``.
        progress: show a progress bar over the scans.

    Returns:
        One ``(setting, FROC)`` per combination, in ``itertools.product`` order of
        (distance ratio, SIoU threshold, top-n).
    """
    data_dir = Path(data_dir)
    scans = find_luna16_scans(data_dir)
    annotations, excluded = read_annotations(data_dir / "annotations.csv"), read_excluded(data_dir)
    model, preprocess, _, _ = load_deployable(resolve_model(checkpoint)[0])
    base = InferenceConfig(score_threshold=score_threshold)
    detector = Detector(model, preprocess, base, device)
    grid = itertools.product(DISTANCE_RATIOS if distance_ratios is None else distance_ratios,
                             IOU_THRESHOLDS if iou_thresholds is None else iou_thresholds,
                             (base.top_n,) if top_ns is None else top_ns)
    settings = [replace(base, nms_distance_ratio=ratio, nms_iou_threshold=iou, top_n=top_n)
                for ratio, iou, top_n in grid]
    tables: list[list[Findings]] = [[] for _ in settings]
    for scan in tqdm(scans, desc="scans", unit="scan", disable=not progress):
        maps, prepared = detector.predict_maps(read_scan(scan.source))
        for table, setting in zip(tables, settings):
            table.append(Findings.from_detections(scan.seriesuid, detector.decode(maps, prepared, setting)))
    uids = [scan.seriesuid for scan in scans]
    return [(setting, evaluate_froc(annotations, excluded, uids, Findings.concat(table),
                                    EvaluationConfig(n_bootstraps=0)))
            for setting, table in zip(settings, tables)]


def format_sweep(results: Sequence[tuple[InferenceConfig, FROCResult]]) -> str:
    """A plain-text table: one line per setting with its CPM and its sensitivity at each FP rate."""
    rates = " ".join(f"{rate:g}" for rate in results[0][1].fp_rates) if results else ""
    lines = [f"distance ratio  SIoU thr.  top-n    CPM   sensitivity at {rates} FPs/scan"]
    for setting, result in results:
        sensitivities = " ".join(f"{value:.3f}" for value in result.sensitivities)
        lines.append(f"{setting.nms_distance_ratio:14.3f}  {setting.nms_iou_threshold:9.2f}  {setting.top_n:5d}  "
                     f"{result.cpm:.3f}   {sensitivities}")
    return "\n".join(lines)
