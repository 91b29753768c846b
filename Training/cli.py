"""The ``scpm-train`` command line: preprocess, fit, cv, evaluate, tune, classifier, export.

Multi-process training is the same command under torchrun:
``torchrun --nproc_per_node N -m Training.cli fit --cache DIR --fold K --out DIR``.
Bad input exits with status 2 and one sentence; only rank 0 prints results.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from SCPMNoduleLib import __version__
from SCPMNoduleLib.cli import check_bootstraps, check_threshold, run_command
from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.models import MODEL_HELP
from SCPMNoduleLib.runtime import PRECISIONS

INTERRUPTED = {
    "preprocess": "interrupted; run it again to finish (the scans cached so far are kept)",
    "fit": "interrupted; continue with --resume",
    "cv": "interrupted; run the same command again to continue (finished epochs and folds are kept)",
    "evaluate": "interrupted",
    "tune": "interrupted",
    "classifier": "interrupted; nothing was written",
    "export": "interrupted; the checkpoint and the manifest are as they were",
}
"""What each command says on Ctrl-C (exit status 130)."""

if TYPE_CHECKING:
    from SCPMNoduleLib.evaluation import FROCResult

__all__ = ["build_parser", "main", "parse_folds"]


def _load_config(args: argparse.Namespace):
    from .config import load_config

    return load_config(args.config, args.set)


def parse_folds(text: str) -> list[int]:
    """``--folds 0,3,7``: the subset numbers, in order.

    Raises:
        UserInputError: an item that is not an integer (``1,,2``, ``a,b``), in one sentence.
    """
    try:
        return [int(item) for item in text.split(",")]
    except ValueError:
        raise UserInputError(f"--folds {text!r}: expected subset numbers separated by commas, e.g. 0,3,7.") from None


def _run_preprocess(args: argparse.Namespace) -> int:
    from SCPMNoduleLib.documents import read_json
    from SCPMNoduleLib.preprocess import PreprocessConfig

    from .cache import build_cache

    config = PreprocessConfig()
    if args.preprocess is not None:
        values = read_json(args.preprocess)  # its errors name the file
        try:
            config = PreprocessConfig.from_dict(values)
        except UserInputError as error:
            raise UserInputError(f"{args.preprocess}: {error}") from None
    summary = build_cache(args.data, args.cache, config, workers=args.workers)
    print(f"{summary['scans']} scans: {summary['built']} cached, {summary['skipped']} already valid -> {args.cache}")
    return 0


def _run_fit(args: argparse.Namespace) -> int:
    from .trainer import Trainer

    trainer = Trainer(_load_config(args), args.cache, args.out, args.fold, args.device, args.debug_weight_hashes)
    summary = trainer.fit(args.resume)
    if trainer.dist.is_main:
        print(json.dumps(summary))
    return 0


def _run_cv(args: argparse.Namespace) -> int:
    from .crossval import cross_validate
    from .distributed import process_rank

    folds = parse_folds(args.folds) if args.folds else None
    result = cross_validate(_load_config(args), args.cache, args.out, folds, args.device)
    if process_rank() == 0:
        print(f"cross-validation CPM {result.cpm:.3f} ({_sensitivities(result)}) -> {args.out}/report")
    return 0


def _run_evaluate(args: argparse.Namespace) -> int:
    from .heldout import evaluate_folder

    result = evaluate_folder(args.checkpoint, args.data, args.out, args.device, check_threshold(args.threshold),
                             check_bootstraps(args.bootstraps), args.mirror, args.precision)
    print(f"CPM {result.cpm:.3f} ({_sensitivities(result)}) -> {args.out}")
    return 0


def _sensitivities(result: FROCResult) -> str:
    """``sensitivities at 1/8, 1/4, ..., 8 FPs/scan: 0.500 0.750 ...``, at the rates the evaluation used."""
    from SCPMNoduleLib.plotting import fp_rate_label

    rates = ", ".join(fp_rate_label(rate) for rate in result.fp_rates)
    return f"sensitivities at {rates} FPs/scan: " + " ".join(f"{s:.3f}" for s in result.sensitivities)


def _run_tune(args: argparse.Namespace) -> int:
    from .tune import format_sweep, sweep_postprocessing

    results = sweep_postprocessing(args.checkpoint, args.data, distance_ratios=args.distance_ratios,
                                   iou_thresholds=args.iou_thresholds, top_ns=args.top_n,
                                   score_threshold=check_threshold(args.threshold), device=args.device)
    print(f"{args.checkpoint} on {results[0][1].counts.n_scans} scan(s) of {args.data}")
    print(format_sweep(results))
    return 0


def _run_classifier(args: argparse.Namespace) -> int:
    from SCPMNoduleLib.candidate_classifier import CandidateClassifierConfig

    from .classifier import ClassifierTrainConfig, train_classifier_checkpoint

    config = CandidateClassifierConfig(weight=args.weight)
    training = ClassifierTrainConfig(steps=args.steps, seed=args.seed)
    record = train_classifier_checkpoint(args.checkpoint, args.data, args.out, config, training, args.device)
    print(f"candidate classifier trained on {record['patches']} patches ({record['nodule_patches']} nodules) "
          f"of {record['scans']} scans -> {args.out}")
    return 0


def _run_export(args: argparse.Namespace) -> int:
    from .export import export_model

    entry = export_model(args.checkpoint, args.out, name=args.name, version=args.model_version,
                         training_data=args.training_data, froc_summary=args.froc, manifest=args.manifest,
                         description=args.description, bf16_evaluation=args.bf16_evaluation)
    print(json.dumps(entry, indent=1))
    return 0


def _add_training_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cache", required=True, help="cache folder made by scpm-train preprocess")
    parser.add_argument("--out", required=True, help="output folder (checkpoints, logs, reports)")
    parser.add_argument("--config", help="training config JSON (any subset of keys; defaults: the paper's)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a config value, e.g. --set optim.epochs=10 --set data.patch_size=64")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="scpm-train", description="Train SCPM-Net on LUNA16-layout data.")
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    pre = commands.add_parser("preprocess", help="resample, window and cache every scan once")
    pre.add_argument("--data", required=True, nargs="+", metavar="DATA",
                     help="LUNA16-layout folder(s): subset0..9/, annotations.csv; several make one training set")
    pre.add_argument("--cache", required=True, help="cache folder to fill (resumable)")
    pre.add_argument("--workers", type=int, default=min(4, os.cpu_count() or 1), help="parallel processes")
    pre.add_argument("--preprocess", help="pre-processing config JSON (default: 1 mm, HU -1200..600, lung crop)")
    pre.set_defaults(run=_run_preprocess)

    fit = commands.add_parser("fit", help="train one fold (under torchrun: on several devices)")
    _add_training_options(fit)
    fit.add_argument("--fold", type=int, help="held-out subset k for validation; omit to train on all scans")
    fit.add_argument("--resume", action="store_true", help="continue from OUT/last.pt")
    fit.add_argument("--debug-weight-hashes", metavar="DIR",
                     help="each process appends a digest of its weights after every step to DIR/rank<r>.txt")
    fit.set_defaults(run=_run_fit)

    cv = commands.add_parser("cv", help="10-fold cross-validation with one pooled held-out FROC")
    _add_training_options(cv)
    cv.add_argument("--folds", help="comma-separated folds to run (default: every subset)")
    cv.set_defaults(run=_run_cv)

    evaluate = commands.add_parser("evaluate", help="detect on a LUNA16-layout folder and compute its FROC")
    evaluate.add_argument("--checkpoint", required=True,
                          help=f"{MODEL_HELP}; a training state (best.pt) too")
    evaluate.add_argument("--data", required=True, help="LUNA16-layout folder of test scans with annotations.csv")
    evaluate.add_argument("--out", required=True, help="folder for candidates.csv and the FROC report")
    evaluate.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    evaluate.add_argument("--threshold", type=float, default=0.01, help="detector probability threshold")
    evaluate.add_argument("--bootstraps", type=int, default=1000, help="bootstrap resamples for the CPM's CI")
    evaluate.add_argument("--mirror", default="", metavar="AXES",
                          help="test-time mirroring along every combination of these axes (e.g. zyx)")
    evaluate.add_argument("--precision", default="fp32", choices=PRECISIONS,
                          help="the network's precision (default fp32: the model's own figures, and the reference "
                               "a bf16 evaluation is compared with at export); recorded in froc_summary.json")
    evaluate.set_defaults(run=_run_evaluate)

    tune = commands.add_parser(
        "tune", help="CPM of a checkpoint under several NMS and top-n settings (network run once per scan)",
        description="Run the network once on every scan of a LUNA16-layout folder, decode the same maps with "
                    "every combination of the settings below, and print each combination's CPM and "
                    "sensitivities. This is how the detector's post-processing defaults are tuned: use scans "
                    "that neither training nor the reported test uses (scpm-nodule phantom --seed 500 "
                    "--scans 10 --size full).")
    tune.add_argument("--checkpoint", default="demo",
                      help=f"{MODEL_HELP}; a training state (best.pt) too (default: demo)")
    tune.add_argument("--data", required=True, help="LUNA16-layout folder of tuning scans with annotations.csv")
    tune.add_argument("--distance-ratios", type=float, nargs="+", metavar="R",
                      help="NMS distance ratios to try (default: 1/3, 0.4 and 0.5)")
    tune.add_argument("--iou-thresholds", type=float, nargs="+", metavar="T",
                      help="NMS SIoU thresholds to try (default: 0.1)")
    tune.add_argument("--top-n", type=int, nargs="+", metavar="N",
                      help="candidates per head level to try (default: the detector's)")
    tune.add_argument("--threshold", type=float, default=0.01,
                      help="detector probability threshold, as in evaluate (the FROC needs the low scores)")
    tune.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    tune.set_defaults(run=_run_tune)

    classifier = commands.add_parser(
        "classifier", help="train a second stage that re-scores a detector's candidates",
        description="Run a trained detector on LUNA16-layout folders of scans it was not trained on, train a "
                    "small 3-D CNN on 1 mm patches around its candidates and the annotated nodules, and write "
                    "the detector's checkpoint again with that classifier in it: the detector then re-ranks "
                    "its candidates by the two opinions combined (SCPMNoduleLib.candidate_classifier).")
    classifier.add_argument("--checkpoint", required=True, help="the detector: best.pt of a run or a checkpoint")
    classifier.add_argument("--data", required=True, nargs="+", metavar="DATA",
                            help="LUNA16-layout folder(s) of scans the detector was not trained on")
    classifier.add_argument("--out", required=True, help="the detector checkpoint with its classifier, to write")
    classifier.add_argument("--weight", type=float, default=0.5,
                            help="the classifier's weight w in the log-odds combination (0: the detector's "
                                 "ranking, 1: the classifier's alone; default 0.5)")
    classifier.add_argument("--steps", type=int, default=3000, help="optimiser steps (default 3000)")
    classifier.add_argument("--seed", type=int, default=0, help="seeds sampling, augmentation and initial weights")
    classifier.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"),
                            help="where the detector runs (the classifier trains on the CPU)")
    classifier.set_defaults(run=_run_classifier)

    export = commands.add_parser("export", help="write a detector checkpoint and its Models.json entry")
    export.add_argument("--checkpoint", required=True,
                        help="best.pt or last.pt of a training run, or an exported checkpoint to re-export "
                             "(same weights, new metrics and version)")
    export.add_argument("--out", required=True, help="detector checkpoint to write, e.g. Resources/demo.pt")
    export.add_argument("--name", default="demo", help="model name in the manifest")
    export.add_argument("--model-version", default="1.0.0", help="version string of the model")
    export.add_argument("--training-data", required=True, help="what the model was trained on, in words")
    export.add_argument("--froc", help="froc_summary.json of its held-out evaluation")
    export.add_argument("--bf16-evaluation", metavar="DIR",
                        help="an evaluate folder of the same checkpoint and data as --froc's, run with --precision "
                             "bf16 (--froc's with fp32): records whether its detections hold in bf16, which lets "
                             "precision auto run bf16 on CPUs with native bf16")
    export.add_argument("--manifest", help="Models.json to add the entry to, e.g. Resources/Models.json")
    export.add_argument("--description", default="", help="intended use and limitations")
    export.set_defaults(run=_run_export)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from .distributed import process_rank, shutdown_distributed

    args = build_parser().parse_args(argv)
    level = logging.DEBUG if args.verbose else logging.INFO
    rank = process_rank()
    prefix = "" if rank == 0 else f"[rank {rank}] "
    logging.basicConfig(level=level if rank == 0 else logging.WARNING,
                        format=f"%(asctime)s {prefix}%(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    try:  # bad input and OS errors (a full disk): one sentence, exit 2, as scpm-nodule's commands
        return run_command("scpm-train", args, interrupted=INTERRUPTED[args.command])
    finally:
        shutdown_distributed()


if __name__ == "__main__":
    sys.exit(main())
