"""Datasets in LUNA16's layout: scans, lung masks, annotation tables, series uids, previews."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import UserInputError
from ..io import LUNG_MASK_FOLDER, Findings, map_in_processes, write_annotations, write_seriesuids
from ..plotting import save_orthogonal_slices
from ..temp_files import folder_built_in_place, write_image
from .config import PhantomConfig, phantom_config
from .generator import generate_phantom
from .scanner import Nodule, Phantom, annotation_table

__all__ = ["UID_PREFIX", "check_dataset_arguments", "series_uid", "write_luna16_dataset"]

log = logging.getLogger(__name__)

UID_PREFIX = "1.3.6.1.4.1.14519.5.2.1.6279.6001."
"""LIDC-IDRI's series-uid root, which every LUNA16 seriesuid starts with."""


def series_uid(seed: int, index: int, stream: int = 0x5EED) -> str:
    """A LIDC-style series uid, ``1.3.6.1.4.1.14519.5.2.1.6279.6001.`` + 30 digits, from
    (seed, index); another ``stream`` (inserted nodules' datasets) gives other uids for the same
    (seed, index), so datasets of both kinds can be joined."""
    digits = np.random.default_rng([seed, index, stream]).integers(0, 10, 30)
    digits[0] = 1 + digits[0] % 9
    return UID_PREFIX + "".join(map(str, digits))


def _save_preview(phantom: Phantom, path: Path, title: str) -> None:
    """A PNG of the three orthogonal slices through the largest annotated nodule (the largest
    finding if none is annotated, the center of the scan if there is none), its annotation circle
    in each, with the nodule's size, kind, location and margin after ``title``."""
    shown = [n for n in phantom.nodules if n.included] or list(phantom.nodules)
    if not shown:
        save_orthogonal_slices(phantom.image, path, title=title)
        return
    nodule = max(shown, key=lambda n: n.diameter_mm)
    caption = (f"{nodule.diameter_mm:.1f} mm {nodule.kind.replace('_', '-')} nodule, "
               f"{nodule.location}, {nodule.margin}")
    save_orthogonal_slices(phantom.image, path, nodule.center_zyx_vox, nodule.diameter_mm,
                           f"{title}  {caption}" if title else caption)


def _write_scan(job: tuple[Path, int, int, int, PhantomConfig, bool, bool]) -> tuple[str, list[Nodule]]:
    """Draw scan ``index`` of a dataset and write its files into ``work``; its uid and findings."""
    work, seed, index, subsets, config, lung_masks, preview = job
    uid = series_uid(seed, index)
    phantom = generate_phantom((seed, index), config)
    write_image(phantom.image, work / f"subset{index % subsets}" / f"{uid}.mhd")
    if lung_masks:
        write_image(phantom.lung_mask, work / LUNG_MASK_FOLDER / f"{uid}.mhd", True)
    if preview:
        _save_preview(phantom, work / "preview" / f"{uid}.png", uid)
    return uid, phantom.nodules


def check_dataset_arguments(seed: int, **counts: tuple[int, int]) -> None:
    """Refuse a negative seed, or a count below its minimum (``counts``: name=(value, minimum)),
    before a dataset writer starts."""
    for name, (value, minimum) in counts.items():
        if int(value) < minimum:
            raise UserInputError(f"the number of {name} must be at least {minimum}, not {value}.")
    if int(seed) < 0:
        raise UserInputError(f"the seed must be a non-negative integer, not {seed}.")


def write_luna16_dataset(out_dir: str | os.PathLike, n_scans: int, seed: int, subsets: int = 10,
                         size: str = "small", lung_masks: bool = True, preview: bool = False,
                         progress: Callable[[int, int], None] | None = None, workers: int = 1,
                         **options) -> dict[str, list[Nodule]]:
    """Write ``n_scans`` phantoms in LUNA16's layout; return each seriesuid's findings, in order.

    Layout: ``subset0 .. subset{subsets-1}/<uid>.mhd + .raw`` (scan i in subset i mod subsets),
    ``annotations.csv`` and ``annotations_excluded.csv`` (world LPS mm, diameters in mm),
    ``seriesuids.csv``, with ``lung_masks`` also ``seg-lungs-LUNA16/<uid>.mhd + .zraw`` (3 right,
    4 left lung) and with ``preview`` a PNG per scan in ``preview/``. Scan i is drawn from the
    seed (seed, i), so a dataset is the same bytes for the same arguments, whatever ``workers``
    (the number of processes drawing scans at once).

    The dataset is built in a temporary folder beside ``out_dir`` and renamed onto it at the
    end, with the mode the umask gives; an error or interrupt (also one raised by
    ``progress(done, total)``) leaves nothing, and the temporary folders of a run that was killed
    are removed by the next one.

    Raises:
        UserInputError: ``out_dir`` exists and is not empty, a count is not positive, or an
            operating-system error (``out_dir`` cannot be written, a full disk).
    """
    out_dir = Path(out_dir)
    check_dataset_arguments(seed, scans=(n_scans, 1), subsets=(subsets, 1), workers=(workers, 1))
    config = phantom_config(size, **options)
    with folder_built_in_place(out_dir) as work:
        written = _write_dataset(work, n_scans, seed, subsets, config, lung_masks, preview, progress, workers)
    log.info("wrote %d phantom scans to %s", n_scans, out_dir)
    return written


def _write_dataset(work: Path, n_scans: int, seed: int, subsets: int, config: PhantomConfig, lung_masks: bool,
                   preview: bool, progress: Callable[[int, int], None] | None,
                   workers: int) -> dict[str, list[Nodule]]:
    """:func:`write_luna16_dataset`'s work into the folder ``work``, once its arguments are checked."""
    for k in range(subsets):
        (work / f"subset{k}").mkdir()
    for name, wanted in ((LUNG_MASK_FOLDER, lung_masks), ("preview", preview)):
        if wanted:
            (work / name).mkdir()
    written: dict[str, list[Nodule]] = {}
    tables: dict[bool, list[Findings]] = {True: [], False: []}
    jobs = [(work, seed, i, subsets, config, lung_masks, preview) for i in range(n_scans)]
    with map_in_processes(_write_scan, jobs, workers) as results:  # in scan order, so the tables too
        for done, (uid, nodules) in enumerate(results, 1):
            for included in (True, False):
                tables[included].append(annotation_table(uid, [n for n in nodules if n.included == included]))
            written[uid] = nodules
            if progress is not None:
                progress(done, n_scans)
    for included, name in ((True, "annotations.csv"), (False, "annotations_excluded.csv")):
        write_annotations(work / name, Findings.concat(tables[included]))
    write_seriesuids(work / "seriesuids.csv", list(written))
    return written
