"""A training run's record on rank 0: ``train_log.csv``, ``validation.csv`` and TensorBoard events.

Both CSV files are appended to row by row (one row per logging window and per validation); a
resumed run first drops the rows an interrupted run left from the epoch it resumes at, so the
files read as those of an uninterrupted run. TensorBoard is optional: without it the run logs to
the console and the CSV files only.
"""

from __future__ import annotations

import csv
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from SCPMNoduleLib.evaluation import FROCResult
from SCPMNoduleLib.io import atomic_write
from SCPMNoduleLib.losses import LOSS_TERMS

__all__ = ["LOG_COLUMNS", "RunLog", "append_rows", "drop_rows_from_epoch", "validation_columns"]

log = logging.getLogger(__name__)

LOG_COLUMNS = ("epoch", "step", "lr", "total", *LOSS_TERMS, "samples_per_s", "data_wait_share")


def validation_columns(fp_rates: Sequence[float]) -> tuple[str, ...]:
    """``validation.csv``'s columns: epoch, CPM and the sensitivity at each of ``fp_rates``.

    A rate below 1 that is the inverse of a whole number ``n`` is named ``sens_1_<n>``, any other
    ``sens_<rate>``: LUNA16's 1/8 ... 8 FPs per scan give ``sens_1_8`` ... ``sens_8``.
    """
    names = []
    for rate in fp_rates:
        inverse = 1.0 / rate
        whole = rate < 1 and abs(inverse - round(inverse)) < 1e-9
        names.append(f"sens_1_{round(inverse)}" if whole else f"sens_{rate:g}")
    return ("epoch", "cpm", *names)


def append_rows(path: Path, columns: Sequence[str], rows: Sequence[dict[str, Any]]) -> None:
    """Append ``rows`` to the CSV at ``path``, writing the header ``columns`` first if it is new."""
    new = not path.is_file()
    with open(path, "a", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(columns), lineterminator="\n")
        if new:
            writer.writeheader()
        writer.writerows(rows)


def drop_rows_from_epoch(path: Path, epoch: int) -> None:
    """Remove rows of epochs ``>= epoch`` (left by an interrupted run) before resuming at ``epoch``."""
    if not path.is_file():
        return
    with open(path, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns, rows = reader.fieldnames or [], [row for row in reader if int(row["epoch"]) < epoch]
    with atomic_write(path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)


def _open_tensorboard(path: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        log.info("tensorboard is not installed; logging to the console and CSV only")
        return None
    return SummaryWriter(str(path))


class RunLog:
    """The logs of a run in ``out_dir``; only rank 0 should hold one that writes.

    CSV rows are written whenever a row is logged; TensorBoard events only between :meth:`open`
    and :meth:`close`.
    """

    def __init__(self, out_dir: Path) -> None:
        self.out_dir = out_dir
        self.tensorboard: Any = None

    def open(self, epoch: int) -> None:
        """Start (or resume) logging at ``epoch``: drop later rows, open TensorBoard's writer."""
        drop_rows_from_epoch(self.out_dir / "train_log.csv", epoch)
        drop_rows_from_epoch(self.out_dir / "validation.csv", epoch + 1)
        self.tensorboard = _open_tensorboard(self.out_dir / "tensorboard")

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()

    def train_row(self, row: dict[str, Any]) -> None:
        """One logging window: a ``train_log.csv`` row of :data:`LOG_COLUMNS`, and ``train/<column>``
        scalars at ``row["step"]``."""
        append_rows(self.out_dir / "train_log.csv", LOG_COLUMNS, [row])
        if self.tensorboard is not None:
            for name in LOG_COLUMNS[2:]:
                self.tensorboard.add_scalar(f"train/{name}", row[name], row["step"])

    def validation_row(self, epoch: int, step: int, result: FROCResult) -> None:
        """One validation: its CPM and its sensitivity at each of the evaluation's FP rates
        (:func:`validation_columns`) in ``validation.csv``, ``validation/cpm`` at ``step``."""
        columns = validation_columns(result.fp_rates)
        row = {"epoch": epoch, "cpm": result.cpm, **dict(zip(columns[2:], result.sensitivities, strict=True))}
        append_rows(self.out_dir / "validation.csv", columns, [row])
        if self.tensorboard is not None:
            self.tensorboard.add_scalar("validation/cpm", result.cpm, step)
