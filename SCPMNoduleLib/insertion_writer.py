"""Datasets of nodules inserted into real CT, in LUNA16's layout (:mod:`~SCPMNoduleLib.insertion`
renders and places them), for ``scpm-nodule evaluate`` and ``scpm-train`` as they are."""

from __future__ import annotations

import csv
import logging
import math
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import numpy as np

from .errors import UserInputError
from .insertion import Box, InsertedNodule, InsertionConfig, NoduleRequest, ScanForInsertion, insert_nodules
from .io import Findings, atomic_write, map_in_processes, read_scan, write_annotations, write_seriesuids
from .phantom.scanner import annotation_table
from .phantom.writer import check_dataset_arguments, series_uid
from .temp_files import folder_built_in_place, write_image

__all__ = ["INSERTION_UID_STREAM", "write_inserted_dataset"]

log = logging.getLogger(__name__)

INSERTION_UID_STREAM = 0x1A5E27
"""The :func:`~SCPMNoduleLib.phantom.writer.series_uid` stream of inserted datasets (phantoms use
another, so a phantom and an inserted dataset of one seed never share a uid)."""

_DETAIL_COLUMNS = ("seriesuid", "source", "coordX", "coordY", "coordZ", "diameter_mm", "kind", "margin",
                   "location", "hu", "core_hu", "parenchyma_hu", "noise_hu", "hidden_share")


def _insert_scan(job: tuple) -> list[tuple[str, str, list[InsertedNodule]]]:
    """Every copy of one source scan, written into ``work``; each copy's uid, source and nodules."""
    work, path, index, copies, subsets, count, seed, config, requests, boxes = job
    scan = ScanForInsertion(read_scan(path), str(path), config)
    written = []
    for copy in range(copies):
        uid = series_uid(seed, index * copies + copy, INSERTION_UID_STREAM)
        image, inserted = insert_nodules(scan, count, np.random.default_rng([seed, index, copy]), requests, boxes)
        write_image(image, work / f"subset{index % subsets}" / f"{uid}.mhd")
        written.append((uid, str(path), inserted))
    return written


def write_inserted_dataset(scans: Sequence[str | os.PathLike], out_dir: str | os.PathLike, nodules: int,
                           seed: int, copies: int = 1, subsets: int = 1, config: InsertionConfig | None = None,
                           boxes: Mapping[str, Sequence[Box]] | None = None,
                           requests: Mapping[str, Sequence[NoduleRequest]] | None = None, workers: int = 1,
                           progress: Callable[[int, int], None] | None = None) -> dict[str, list[InsertedNodule]]:
    """Insert nodules into ``copies`` copies of each scan and write them in LUNA16's layout;
    return each new seriesuid's nodules, in order.

    Layout: ``subsetK/<uid>.mhd + .raw`` (every copy of scan i in subset i mod ``subsets``, so
    folds never share a patient), ``annotations.csv`` (the nodules), ``annotations_excluded.csv``
    (each of a scan's ``boxes``, keyed by the scan's path as given, as the sphere through its
    corners), ``seriesuids.csv`` and ``insertions.csv`` (each nodule's source scan, kind, margin,
    location, HU, the parenchyma's level and noise around it, its hidden share). Copy j of scan i
    is drawn from the seed (seed, i, j): the same bytes for the same arguments, whatever
    ``workers``. Built in a temporary folder beside ``out_dir``, renamed onto it at the end
    (:func:`~SCPMNoduleLib.temp_files.folder_built_in_place`).

    Raises:
        UserInputError: ``out_dir`` exists and is not empty, a count is not positive, or a scan
            cannot be read or has no lungs.
    """
    out_dir = Path(out_dir)
    check_dataset_arguments(seed, nodules=(nodules, 0), copies=(copies, 1), subsets=(subsets, 1),
                            workers=(workers, 1))
    if not scans:
        raise UserInputError("no scans given.")
    config = config or InsertionConfig()
    boxes, requests = boxes or {}, requests or {}
    with folder_built_in_place(out_dir) as work:
        for k in range(subsets):
            (work / f"subset{k}").mkdir()
        jobs = [(work, Path(path), i, copies, subsets, nodules, seed, config, tuple(requests.get(str(path), ())),
                 tuple(boxes.get(str(path), ()))) for i, path in enumerate(scans)]
        written: dict[str, list[InsertedNodule]] = {}
        tables, excluded, details = [], [], []
        with map_in_processes(_insert_scan, jobs, workers) as results:
            for done, (path, copies_written) in enumerate(zip(scans, results), 1):
                for uid, source, inserted in copies_written:
                    written[uid] = inserted
                    tables.append(annotation_table(uid, [n.nodule for n in inserted]))
                    spheres = [box.sphere for box in boxes.get(str(path), ())]
                    excluded.append(Findings.from_columns([uid] * len(spheres), np.array([c for c, _ in spheres]),
                                                          [d for _, d in spheres]))
                    details += [(uid, source, *n.nodule.center_xyz_mm, n.nodule.diameter_mm, n.nodule.kind,
                                 n.nodule.margin, n.nodule.location, n.hu, n.core_hu, n.parenchyma_hu, n.noise_hu,
                                 n.hidden_share) for n in inserted]
                if progress is not None:
                    progress(done, len(jobs))
        write_annotations(work / "annotations.csv", Findings.concat(tables))
        write_annotations(work / "annotations_excluded.csv", Findings.concat(excluded))
        write_seriesuids(work / "seriesuids.csv", list(written))
        with atomic_write(work / "insertions.csv", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(_DETAIL_COLUMNS)
            writer.writerows([_format(value) for value in row] for row in details)
    log.info("wrote %d scans with %d inserted nodules to %s", len(written),
             sum(map(len, written.values())), out_dir)
    return written


def _format(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4f}" if math.isfinite(value) else ""
    return str(value)
