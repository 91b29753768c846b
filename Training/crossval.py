"""LUNA16 10-fold cross-validation: fold ``k`` trains on the other subsets and is tested on subset ``k``.

Each fold trains into ``<out>/fold<k>/`` (resumable: a finished fold is not retrained), then its
best checkpoint (``best.pt``, or ``last.pt`` when no validation ran) detects on the fold's
held-out scans; the candidates go to ``<out>/fold<k>/candidates.csv``. The held-out candidates
of all folds are pooled into one candidate file and evaluated as one FROC over all scans, which is
how LUNA16 results (and the paper's CPM) are reported: ``<out>/report/``.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence
from pathlib import Path

from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.evaluation import EvaluationConfig, FROCResult, evaluate_froc, write_evaluation
from SCPMNoduleLib.io import Findings, write_candidates
from SCPMNoduleLib.temp_files import check_output_folder

from .cache import load_cache, read_cache_info
from .config import TrainConfig
from .distributed import process_rank
from .heldout import detect_sharded
from .state import load_state, model_from_state
from .trainer import Trainer

__all__ = ["cross_validate"]

log = logging.getLogger(__name__)


def cross_validate(config: TrainConfig, cache_dir: str | os.PathLike, out_dir: str | os.PathLike,
                   folds: Sequence[int] | None = None, device: str = "auto") -> FROCResult:
    """Train every fold, detect on its held-out subset, and evaluate the pooled candidates.

    Args:
        config: the training config shared by all folds.
        cache_dir: the cache of all subsets.
        out_dir: ``fold<k>/`` per fold and ``report/`` (FROC curve, summary, plot, missed nodules).
        folds: the folds to run (default: every subset in the cache); not empty.
        device: ``auto``, ``cuda`` or ``cpu``.

    Returns:
        The FROC of the pooled held-out candidates (on rank 0; other DDP processes get it too).
    """
    out_dir = Path(out_dir)
    if process_rank() == 0:
        check_output_folder(out_dir, "--out")
    scans = load_cache(cache_dir, checksum=process_rank() == 0)
    subsets = sorted({scan.fold for scan in scans})
    folds = subsets if folds is None else list(folds)
    if not folds:
        raise UserInputError(f"no fold to cross-validate: name at least one of the cache's subsets {subsets}.")
    repeated = sorted({fold for fold in folds if folds.count(fold) > 1})
    if repeated:
        raise UserInputError(f"folds {folds}: fold {repeated[0]} is named twice "
                             "(its held-out scans would be counted twice).")
    held_out = [scan for scan in scans if scan.fold in folds]
    tables = []
    for fold in folds:
        fold_dir = out_dir / f"fold{fold}"
        trainer = Trainer(config, cache_dir, fold_dir, fold, device, verify_checksums=False)
        trainer.fit(resume=True)
        best = fold_dir / "best.pt" if (fold_dir / "best.pt").is_file() else fold_dir / "last.pt"
        model = model_from_state(load_state(best), str(best))
        test = [scan for scan in scans if scan.fold == fold]
        found = detect_sharded(model, trainer.preprocess, test, trainer.device, trainer.dist.rank,
                               trainer.dist.world_size, trainer.inference_config)
        if trainer.dist.is_main:
            write_candidates(fold_dir / "candidates.csv", found)
        log.info("fold %d: %d candidates on %d held-out scans (%s)", fold, len(found), len(test), best.name)
        tables.append(found)
    candidates = Findings.concat(tables)
    annotations = Findings.concat([scan.annotations for scan in held_out])
    excluded = Findings.concat([scan.excluded for scan in held_out])
    uids = [scan.seriesuid for scan in held_out]
    result = evaluate_froc(annotations, excluded, uids, candidates,
                           EvaluationConfig(n_bootstraps=config.validation.bootstraps, seed=config.seed))
    if trainer.dist.is_main:
        write_candidates(out_dir / "candidates.csv", candidates)
        write_evaluation({"cross-validation": result}, out_dir / "report",
                         inputs={"cache": str(Path(cache_dir).resolve()), "folds": ",".join(map(str, folds)),
                                 "data": " ".join(read_cache_info(cache_dir)["data_dirs"])})
    return result
