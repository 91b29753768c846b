"""The ``scpm-nodule`` command line.

Each sub-command is one ``_add_<name>(subparsers)`` function here that declares its arguments
and binds ``run`` to a thin function calling the library; the work itself lives in the
library module named after the idea (``phantom``, ``evaluation``, ``inference``...).

Bad input raises :class:`~SCPMNoduleLib.errors.UserInputError`; ``main`` prints its one
sentence to stderr and exits with status 2, so scripts can tell bad input (2) from a crash (1).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from . import __version__
from .errors import UserInputError

log = logging.getLogger(__name__)

EXIT_BAD_INPUT = 2


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scpm-nodule",
        description="SCPM-Net lung-nodule detection: phantoms, detection, evaluation.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for add_command in _COMMANDS:
        add_command(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    try:
        return int(args.run(args) or 0)
    except UserInputError as error:
        print(f"scpm-nodule {args.command}: error: {error}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"scpm-nodule {args.command}: cancelled", file=sys.stderr)
        return 130


def _add_evaluate(subparsers) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="LUNA16 FROC and CPM of candidates, with bootstrap bands and a plot",
        description="Score candidates against LUNA16 annotations with the challenge's FROC protocol; "
        "print the sensitivities at 1/8..8 FPs/scan and the CPM with their bootstrap bands, and "
        "write froc_curve.csv, froc_summary.json, missed_nodules.csv and froc.png into --out.",
    )
    parser.add_argument("--annotations", required=True, help="annotations.csv (included nodules)")
    parser.add_argument("--excluded", required=True, help="annotations_excluded.csv")
    parser.add_argument("--seriesuids", required=True, help="seriesuids.csv: the scans evaluated")
    parser.add_argument("--candidates", required=True,
                        help="candidates CSV: seriesuid,coordX,coordY,coordZ,probability")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--compare", action="append", default=[], metavar="LABEL=CANDIDATES",
                        help="another candidates file to overlay (repeatable)")
    parser.add_argument("--bootstraps", type=int, default=1000, help="bootstrap resamples (0: none)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the bootstrap")
    parser.set_defaults(run=_run_evaluate)


def _run_evaluate(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .evaluation import EvaluationConfig, evaluate_runs, format_results, write_evaluation

    runs = {Path(args.candidates).stem: args.candidates}
    for item in args.compare:
        label, sep, path = item.partition("=")
        if not sep or not label or not path or label in runs:
            raise UserInputError(f"--compare {item}: expected a new LABEL=CANDIDATES pair.")
        runs[label] = path
    if args.bootstraps < 0:
        raise UserInputError(f"--bootstraps {args.bootstraps}: the number of resamples cannot be negative.")
    config = EvaluationConfig(n_bootstraps=args.bootstraps, seed=args.seed)
    results = evaluate_runs(args.annotations, args.excluded, args.seriesuids, runs, config)
    inputs = {"annotations": args.annotations, "excluded": args.excluded, "seriesuids": args.seriesuids,
              **{f"candidates:{label}": str(path) for label, path in runs.items()}}
    paths = write_evaluation(results, args.out, inputs)
    print(format_results(results))
    print("wrote " + ", ".join(str(path) for path in paths.values()))
    return 0


def _add_phantom(subparsers) -> None:
    parser = subparsers.add_parser(
        "phantom",
        help="write synthetic chest CT phantoms with known nodules in LUNA16's layout",
        description="Write synthetic chest CTs (subsetK/<seriesuid>.mhd/.raw), annotations.csv, "
        "annotations_excluded.csv, seriesuids.csv and seg-lungs-LUNA16 lung masks into a new "
        "folder, the same bytes for the same seed.",
    )
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--scans", type=int, required=True, help="number of scans")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--subsets", type=int, default=10, help="number of subsetK folders (folds)")
    parser.add_argument("--size", choices=("small", "full"), default="small",
                        help="small: about 128x128x96 voxels (tests); full: 512x512x100-300")
    parser.add_argument("--oblique", action="store_true",
                        help="store with axis flips and a small rotation (non-identity direction)")
    parser.add_argument("--no-lung-masks", dest="lung_masks", action="store_false",
                        help="do not write seg-lungs-LUNA16")
    parser.add_argument("--preview", action="store_true",
                        help="also write preview/<seriesuid>.png: three slices through a nodule")
    parser.set_defaults(run=_run_phantom)


def _run_phantom(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .phantom import write_luna16_dataset

    with tqdm(total=args.scans, unit="scan", desc="phantoms") as bar:
        written = write_luna16_dataset(
            args.out, args.scans, args.seed, subsets=args.subsets, size=args.size,
            lung_masks=args.lung_masks, preview=args.preview, oblique=args.oblique,
            progress=lambda done, total: bar.update(done - bar.n))
    findings = [n for nodules in written.values() for n in nodules]
    included = sum(n.included for n in findings)
    print(f"wrote {len(written)} scans with {included} nodules and {len(findings) - included} "
          f"excluded findings to {args.out}")
    return 0


_COMMANDS: list = [_add_evaluate, _add_phantom]

if __name__ == "__main__":
    sys.exit(main())
