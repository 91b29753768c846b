"""The ``scpm-nodule`` command line.

Each sub-command is one ``_add_<name>(subparsers)`` function here that declares its arguments
and binds ``run`` to a thin function calling the library; the work itself lives in the
library module named after the idea (``phantom``, ``evaluation``, ``inference``...).

Bad input raises :class:`~SCPMNoduleLib.errors.UserInputError`; ``main`` prints its one
sentence to stderr and exits with status 2, so scripts can tell bad input (2) from a crash (1).
An :class:`OSError` that reaches ``main`` (a full disk, a folder that cannot be written) is told
the same way (:func:`~SCPMNoduleLib.errors.os_error`). Output folders are checked before the
work starts.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from collections.abc import Sequence
from typing import TYPE_CHECKING

from . import __version__
from .errors import EXIT_BAD_INPUT, UserInputError, os_error
from .models import MODEL_HELP

if TYPE_CHECKING:
    from tqdm import tqdm

__all__ = ["build_parser", "check_bootstraps", "check_threshold", "main", "run_command"]

log = logging.getLogger(__name__)


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


def run_command(prog: str, args: argparse.Namespace, interrupted: str = "cancelled") -> int:
    """Run a parsed sub-command: bad input or an operating-system error (a full disk, a read-only
    folder) is one sentence on stderr and exit 2, Ctrl-C exit 130.

    Shared by ``scpm-nodule`` and ``scpm-train`` so both answer in the same way.
    """
    try:
        return int(args.run(args) or 0)
    except (UserInputError, OSError) as error:
        sentence = os_error(error) if isinstance(error, OSError) else error
        print(f"{prog} {args.command}: error: {sentence}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except KeyboardInterrupt:
        print(f"{prog} {args.command}: {interrupted}", file=sys.stderr)
        return 130


def check_threshold(value: float) -> float:
    """``--threshold``: a probability threshold in [0, 1) (shared by ``scpm-nodule`` and ``scpm-train``)."""
    if not 0.0 <= value < 1.0:
        raise UserInputError(f"--threshold {value}: a probability threshold lies in [0, 1).")
    return value


def check_bootstraps(value: int) -> int:
    """``--bootstraps``: a number of resamples, 0 or more (shared by ``scpm-nodule`` and ``scpm-train``)."""
    if value < 0:
        raise UserInputError(f"--bootstraps {value}: the number of resamples cannot be negative.")
    return value


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(levelname)s %(name)s: %(message)s",
    )
    return run_command("scpm-nodule", args)


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
    from .temp_files import check_output_folder

    check_output_folder(args.out)
    runs = {Path(args.candidates).stem: args.candidates}
    for item in args.compare:
        label, sep, path = item.partition("=")
        if not sep or not label or not path or label in runs:
            raise UserInputError(f"--compare {item}: expected a new LABEL=CANDIDATES pair.")
        runs[label] = path
    config = EvaluationConfig(n_bootstraps=check_bootstraps(args.bootstraps), seed=args.seed)
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
    parser.add_argument("--workers", type=int, default=1,
                        help="processes drawing scans at once (the same bytes for any number)")
    parser.set_defaults(run=_run_phantom)


def _run_phantom(args: argparse.Namespace) -> int:
    from tqdm import tqdm

    from .phantom import write_luna16_dataset
    from .temp_files import check_output_folder

    check_output_folder(args.out)
    with tqdm(total=args.scans, unit="scan", desc="phantoms") as bar:
        written = write_luna16_dataset(
            args.out, args.scans, args.seed, subsets=args.subsets, size=args.size,
            lung_masks=args.lung_masks, preview=args.preview, oblique=args.oblique, workers=args.workers,
            progress=lambda done, total: bar.update(done - bar.n))
    findings = [n for nodules in written.values() for n in nodules]
    included = sum(n.included for n in findings)
    print(f"wrote {len(written)} scans with {included} nodules and {len(findings) - included} "
          f"excluded findings to {args.out}")
    return 0


def _add_detection_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="demo", help=f"{MODEL_HELP} (default: demo)")
    parser.add_argument("--device", default="auto", help="auto (CUDA when present), cpu or cuda")
    parser.add_argument("--threshold", type=float, default=None,
                        help="report detections with a probability above this (default 0.1)")
    parser.add_argument("--max-detections", type=int, default=None,
                        help="at most this many detections per scan (default 100)")
    parser.add_argument("--progress", choices=("bar", "jsonl", "none"), default="bar",
                        help="bar: a progress bar per scan; jsonl: one JSON event a line on stdout")
    parser.add_argument("--mirror", default="", metavar="AXES",
                        help="test-time augmentation: also run on the scan mirrored along every combination "
                             "of these axes and average (e.g. zyx: 8 passes; default: none)")
    parser.add_argument("--precision", default="auto",
                        help="auto, fp32, bf16 or fp16 (CUDA only). auto: bf16 on a GPU with it, and on a CPU "
                             "with native bf16 when the checkpoint records that its detections hold in bf16; "
                             "fp32 otherwise (the JSON says which ran)")
    parser.add_argument("--no-lung-mask", dest="lung_mask", action="store_false",
                        help="run on the whole volume: no lung finding, no crop, no refusal of scans without "
                             "lungs (research on crops; recorded in the JSON report)")


def _detector(args: argparse.Namespace):
    from dataclasses import replace

    from .inference import Detector, InferenceConfig

    # a bad --mirror or --precision is refused by the config, in its own words (InferenceConfig.precision: ...)
    config = InferenceConfig(mirror_axes=args.mirror, lung_mask=args.lung_mask, precision=args.precision)
    if args.threshold is not None:
        config = replace(config, score_threshold=check_threshold(args.threshold))
    if args.max_detections is not None:
        if args.max_detections < 1:
            raise UserInputError(f"--max-detections {args.max_detections}: must be at least 1.")
        config = replace(config, max_detections=args.max_detections)
    detector = Detector.from_checkpoint(args.model, device=args.device, config=config)
    if not detector.trained:
        print(f"warning: the {detector.info.get('name')} weights are untrained (random); its detections "
              "are meaningless until a trained checkpoint is installed.", file=sys.stderr)
    return detector


class _Reporter:
    """Progress and per-scan lines for ``detect``: a tqdm bar, JSON lines, or nothing."""

    def __init__(self, mode: str) -> None:
        self.mode = mode
        self.bar: tqdm | None = None
        self.scan: str | None = None

    def progress(self, scan: str, fraction: float, stage: str) -> None:
        if self.mode == "jsonl":
            print(json.dumps({"event": "progress", "scan": scan, "fraction": round(fraction, 4),
                              "stage": stage}), flush=True)
        elif self.mode == "bar":
            from tqdm import tqdm

            bar = self.bar
            if bar is None or self.scan != scan:
                self.close()
                bar = self.bar = tqdm(total=100, desc=scan[-32:], unit="%", leave=False)
                self.scan = scan
            bar.set_postfix_str(stage)
            bar.update(round(100 * fraction) - bar.n)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar, self.scan = None, None

    def result(self, result) -> None:
        self.close()
        if self.mode == "jsonl":
            event = ({"event": "done", "scan": result.scan, "outputs": result.outputs,
                      "detections": len(result.detections), "seconds": round(result.seconds, 3),
                      "lung_volume_ml": result.lungs["lung_volume_ml"] if result.lungs else None}
                     if result.ok else {"event": "error", "scan": result.scan, "message": result.error})
            print(json.dumps(event), flush=True)
        elif result.ok:
            lungs = f"; lungs {result.lungs['lung_volume_ml']:.0f} mL" if result.lungs else "; lungs not looked for"
            print(f"{result.scan}: {len(result.detections)} detections in {result.seconds:.1f} s{lungs}")
        else:
            print(f"{result.scan}: error: {result.error}", file=sys.stderr)


def _add_detect(subparsers) -> None:
    parser = subparsers.add_parser(
        "detect",
        help="find nodules in CT scans; write candidates CSV, JSON reports and Slicer markups",
        description="Detect lung nodules in scans (.mhd/.mha/.nrrd/.nii/.nii.gz files, folders of "
        "them, or DICOM series folders). Per scan <name>.candidates.csv, <name>.json and "
        "<name>.mrk.json go into --out, plus detect_summary.json and a batch candidates.csv; "
        "for DICOM input <name> is the SeriesInstanceUID, and --formats sr,seg adds a DICOM "
        "Structured Report (TID 1500) and a Segmentation that reference the series. "
        "A scan that fails is reported and skipped; the exit status is 0 when every scan "
        "succeeded, 2 when a failure was bad input, 1 otherwise.",
    )
    parser.add_argument("inputs", nargs="+", metavar="INPUT", help="scan file, folder of scans, or DICOM folder")
    parser.add_argument("--out", required=True, help="output folder")
    parser.add_argument("--formats", default="csv,json,mrk",
                        help="comma-separated: csv, json, mrk, and for DICOM input sr (TID 1500 Structured "
                             "Report) and seg (Segmentation)")
    parser.add_argument("--series", default=None, metavar="UID",
                        help="in a DICOM folder holding several series, read this SeriesInstanceUID "
                             "(default: the series with most slices; the others are logged)")
    _add_detection_options(parser)
    parser.set_defaults(run=_run_detect)


def _run_detect(args: argparse.Namespace) -> int:
    from .pipeline import detect_files, parse_formats
    from .temp_files import check_output_folder

    formats = parse_formats(args.formats)
    check_output_folder(args.out)
    reporter = _Reporter(args.progress)
    detector = _detector(args)
    try:
        results = detect_files(args.inputs, args.out, detector, formats, reporter.progress, reporter.result,
                               series_uid=args.series)
    finally:
        reporter.close()
    failed = [r for r in results if not r.ok]
    if args.progress != "jsonl":
        where = f"outputs in {args.out}" if len(failed) < len(results) else "nothing written"
        print(f"{len(results) - len(failed)} of {len(results)} scans done; {where}")
    if not failed:
        return 0
    return EXIT_BAD_INPUT if all(r.bad_input for r in failed) else 1


def _add_demo(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="detect nodules in a synthetic phantom and compare with its truth",
        description="Make a synthetic chest CT phantom, run the demo checkpoint on it, print the "
        "detections beside the true nodules, and write the phantom, the detections (CSV, JSON, "
        "markups), the truth and a PNG of slices through the top detections into --out.",
    )
    parser.add_argument("--out", default="scpm_demo", help="output folder (default: scpm_demo)")
    parser.add_argument("--seed", type=int, default=0, help="phantom seed")
    parser.add_argument("--size", choices=("small", "full"), default="full",
                        help="phantom size: full (512x512 slices, an adult chest) or small")
    _add_detection_options(parser)
    parser.set_defaults(run=_run_demo)


def _run_demo(args: argparse.Namespace) -> int:
    from .pipeline import run_demo
    from .temp_files import check_output_folder

    if args.seed < 0:
        raise UserInputError(f"--seed {args.seed}: the seed must be a non-negative integer.")
    check_output_folder(args.out)
    reporter = _Reporter(args.progress)
    detector = _detector(args)
    try:
        result = run_demo(args.out, detector, seed=args.seed, size=args.size, progress=reporter.progress)
    finally:
        reporter.close()
    print(f"phantom seed {args.seed}: {len(result.truth_xyz_mm)} true nodules, "
          f"{len(result.detections)} detections in {result.seconds:.1f} s")
    print("true nodules (x, y, z mm; diameter mm):")
    for number, (center, diameter) in enumerate(zip(result.truth_xyz_mm, result.truth_diameters_mm), 1):
        found = [f"N{k + 1}" for k in range(len(result.detections)) if result.hits[k] == number - 1]
        print(f"  T{number}: ({center[0]:8.1f}, {center[1]:8.1f}, {center[2]:8.1f})  {diameter:5.1f}   "
              f"found by: {', '.join(found) or 'none'}")
    print("detections (x, y, z mm; diameter mm; probability):")
    for rank, (detection, hit) in enumerate(zip(result.detections[:20], result.hits[:20]), 1):
        x, y, z = detection.center_xyz_mm
        verdict = f"hits T{hit + 1}" if hit >= 0 else "false positive"
        print(f"  N{rank}: ({x:8.1f}, {y:8.1f}, {z:8.1f})  {detection.diameter_mm:5.1f}  "
              f"{detection.probability:.3f}  {verdict}")
    if len(result.detections) > 20:
        print(f"  ... {len(result.detections) - 20} more in {result.outputs['csv']}")
    if detector.trained:
        metadata = detector.info.get("metadata", {})
        print(f"model: {detector.info.get('name')} {detector.info.get('version')}, trained on "
              f"{metadata.get('training_data', 'unknown data')}. {metadata.get('description', '')}".rstrip())
    else:
        print("note: the demo weights are untrained, so these detections are random; "
              "see the README for the trained checkpoint.")
    print("wrote " + ", ".join(result.outputs.values()))
    return 0


def _add_insert(subparsers) -> None:
    parser = subparsers.add_parser(
        "insert",
        help="insert synthetic nodules into real chest CTs; write them in LUNA16's layout",
        description="Render synthetic nodules (solid, part-solid, ground-glass; smooth, lobulated or "
        "spiculated) into the lungs of chest CTs with the scanner's partial volume, blur and noise, "
        "and write subsetK/<seriesuid>.mhd, annotations.csv, annotations_excluded.csv, seriesuids.csv "
        "and insertions.csv into a new folder, for scpm-nodule evaluate and scpm-train; the same bytes "
        "for the same seed.",
    )
    parser.add_argument("scans", nargs="+", metavar="SCAN", help="chest CT file, folder of scans, or DICOM folder")
    parser.add_argument("--out", required=True, help="output folder (must not exist or be empty)")
    parser.add_argument("--nodules", type=int, required=True, help="nodules per copy of each scan")
    parser.add_argument("--seed", type=int, default=0, help="random seed")
    parser.add_argument("--copies", type=int, default=1, help="copies of each scan, each with its own nodules")
    parser.add_argument("--subsets", type=int, default=1,
                        help="number of subsetK folders (the copies of one scan share one)")
    parser.add_argument("--sizes", default="3,30", metavar="LOW,HIGH", help="diameters in mm (default 3,30)")
    for name, values in (("kinds", "solid,ground_glass,part_solid"), ("margins", "smooth,lobulated,spiculated"),
                         ("locations", "isolated,juxtavascular,juxtapleural")):
        parser.add_argument(f"--{name}", default=None, metavar=name.upper(),
                            help=f"comma-separated, drawn with equal weights, from {values} "
                                 "(default: all, weighted as the phantoms)")
    parser.add_argument("--boxes", action="append", default=[], metavar="[SCAN=]CSV",
                        help="findings the scan already holds (a *_boxes.csv: world boxes per slice), kept "
                             "free and listed in annotations_excluded.csv; without SCAN= for every scan")
    parser.add_argument("--psf-mm", type=float, default=None, help="scanner in-plane blur σ in mm (default 0.6)")
    parser.add_argument("--max-hidden", type=float, default=None,
                        help="largest share of a nodule that vessels and airways may take (default 0.2)")
    parser.add_argument("--workers", type=int, default=1, help="scans processed at once (same bytes for any)")
    parser.set_defaults(run=_run_insert)


def _run_insert(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from .insertion import InsertionConfig, read_boxes
    from .insertion_writer import write_inserted_dataset
    from .io import list_scans
    from .phantom import NODULE_KINDS, NODULE_LOCATIONS, NODULE_MARGINS

    changes: dict = {}
    try:
        low, high = (float(v) for v in args.sizes.split(","))
    except ValueError:
        raise UserInputError(f"--sizes {args.sizes}: expected LOW,HIGH in mm, e.g. 4,30.") from None
    changes["diameter_mm"] = (low, high)
    for option, names, field_name in ((args.kinds, NODULE_KINDS, "kind_weights"),
                                      (args.margins, NODULE_MARGINS, "margin_weights"),
                                      (args.locations, NODULE_LOCATIONS, "location_weights")):
        if option is not None:
            chosen = option.split(",")
            unknown = set(chosen) - set(names)
            if unknown:
                raise UserInputError(f"{', '.join(sorted(unknown))}: not one of {', '.join(names)}.")
            changes[field_name] = tuple(float(name in chosen) for name in names)
    if args.psf_mm is not None:
        changes["psf_sigma_mm"] = args.psf_mm
    if args.max_hidden is not None:
        changes["max_hidden_fraction"] = args.max_hidden
    scans = list_scans(args.scans)
    boxes: dict[str, list] = {}
    for item in args.boxes:
        scan, sep, table = item.rpartition("=")
        for target in ([scan] if sep else [str(path) for path in scans]):
            boxes.setdefault(target, []).extend(read_boxes(table))
    unknown = set(boxes) - {str(path) for path in scans}
    if unknown:
        raise UserInputError(f"--boxes {', '.join(sorted(unknown))}: not one of the scans given.")
    written = write_inserted_dataset(scans, args.out, args.nodules, args.seed, copies=args.copies,
                                     subsets=args.subsets, config=replace(InsertionConfig(), **changes),
                                     boxes=boxes, workers=args.workers)
    print(f"wrote {len(written)} scans with {sum(map(len, written.values()))} inserted nodules to {args.out}")
    return 0


_COMMANDS: list = [_add_evaluate, _add_phantom, _add_detect, _add_demo, _add_insert]

if __name__ == "__main__":
    sys.exit(main())
