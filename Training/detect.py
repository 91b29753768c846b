"""Held-out detection for validation and cross-validation: the real detector on the original scans.

Validation reads each held-out scan from its original file and runs
:meth:`SCPMNoduleLib.inference.Detector.detect` on it, the same path users take (resampling,
windowing, lung crop, tiling, decoding, NMS, the 100 cap), so the CPM measured during training is
the CPM of the checkpoint a user will run.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Sequence

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from SCPMNoduleLib.inference import Detector, InferenceConfig
from SCPMNoduleLib.io import Findings, read_scan
from SCPMNoduleLib.preprocess import PreprocessConfig

from .cache import CachedScan

log = logging.getLogger(__name__)


def concat_findings(parts: Sequence[Findings]) -> Findings:
    """Rows of several :class:`Findings` tables, in order."""
    parts = [part for part in parts if len(part)]
    if not parts:
        return Findings.empty()
    return Findings(*(np.concatenate([getattr(p, name) for p in parts])
                      for name in ("seriesuids", "centers_xyz_mm", "diameters_mm", "probabilities")))


def detect_scans(model: nn.Module, preprocess: PreprocessConfig, scans: Sequence[CachedScan],
                 device: torch.device | str, config: InferenceConfig | None = None) -> Findings:
    """LUNA16 candidates (world mm, probability, diameter) of ``scans`` from their original files.

    The detector gets a copy of ``model`` (inference changes its mode and memory format), so the
    training model is left as it was.
    """
    detector = Detector(copy.deepcopy(model), preprocess, config or InferenceConfig(), device)
    tables = []
    for scan in scans:
        detections = detector.detect(read_scan(scan.source))
        tables.append(Findings.from_columns(
            [scan.seriesuid] * len(detections),
            np.asarray([d.center_xyz_mm for d in detections], dtype=np.float64).reshape(-1, 3),
            [d.diameter_mm for d in detections],
            [d.probability for d in detections],
        ))
        log.debug("%s: %d detections", scan.seriesuid, len(detections))
    return concat_findings(tables)


def detect_sharded(model: nn.Module, preprocess: PreprocessConfig, scans: Sequence[CachedScan],
                   device: torch.device | str, rank: int = 0, world_size: int = 1) -> Findings:
    """:func:`detect_scans` with the scans dealt out over the DDP processes (``scans[rank::world_size]``).

    Every process returns all candidates (gathered in rank order); with one process it is
    :func:`detect_scans`.
    """
    found = detect_scans(model, preprocess, scans[rank::world_size], device)
    if world_size == 1:
        return found
    gathered: list[Findings | None] = [None] * world_size
    dist.all_gather_object(gathered, found)
    return concat_findings(gathered)
