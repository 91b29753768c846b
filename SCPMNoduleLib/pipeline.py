"""Detection over files: a batch of scans to CSV/JSON/markups, and the self-contained demo.

:func:`detect_files` reads each scan, runs a :class:`~SCPMNoduleLib.inference.Detector` and
writes its outputs; a scan that fails is reported and leaves no file behind (its outputs from an
earlier run are removed), and the batch goes on. An operating-system error (a full disk, a folder
that cannot be written) is not the scan's fault and would hit every later scan, so it stops the
batch with one sentence. :func:`run_demo` makes a synthetic phantom, detects on it and compares
with the truth; an error or Ctrl-C removes what it wrote.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from .detection import Detection
from .dicom_export import (
    Algorithm,
    check_referable,
    nodules_from_detections,
    read_sources,
    write_measurement_report,
    write_segmentation,
)
from .errors import UserInputError, os_error
from .evaluation import luna16_hit, squared_distance_mm2
from .export import describe_scan, write_candidates_csv, write_detections_json, write_markups_json
from .inference import DetectionCancelled, Detector
from .io import Findings, Scan, atomic_write, list_scans, load_scan, scan_name, write_annotations, write_candidates
from .lungs import LungFinding
from .plotting import save_detection_slices
from .preprocess import NoLungsError
from .temp_files import atomic_write_image, check_output_folder

__all__ = [
    "ADULT_LUNG_VOLUME_ML",
    "BATCH_CANDIDATES_NAME",
    "DEFAULT_FORMATS",
    "DICOM_FORMATS",
    "DemoResult",
    "FORMATS",
    "OUTPUT_SUFFIXES",
    "SUMMARY_NAME",
    "ScanProgress",
    "ScanResult",
    "detect_files",
    "detect_scan",
    "lung_summary",
    "match_to_truth",
    "parse_formats",
    "run_demo",
]

log = logging.getLogger(__name__)

FORMATS = ("csv", "json", "mrk", "sr", "seg")
DEFAULT_FORMATS = ("csv", "json", "mrk")
DICOM_FORMATS = ("sr", "seg")
"""Outputs that reference the source series, so only for DICOM input (:mod:`~SCPMNoduleLib.dicom_export`)."""
OUTPUT_SUFFIXES = {"csv": ".candidates.csv", "json": ".json", "mrk": ".mrk.json", "sr": ".sr.dcm",
                   "seg": ".seg.dcm"}
SUMMARY_NAME = "detect_summary.json"
BATCH_CANDIDATES_NAME = "candidates.csv"
ADULT_LUNG_VOLUME_ML = (1000, 10000)
"""Both lungs of an adult, from a small woman's residual volume to a tall man's total capacity:
a volume outside it is logged as a warning (a child, a crop, or lungs found wrong)."""

ScanProgress = Callable[[str, float, str], None]


@dataclass
class ScanResult:
    """What happened to one scan of a batch.

    ``error`` is one sentence when the scan failed; ``bad_input`` says whether it was the
    input's fault (:class:`UserInputError`) rather than the program's.
    """

    scan: str
    path: str
    detections: list[Detection] = field(default_factory=list)
    seconds: float = 0.0
    outputs: dict[str, str] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    device: str | None = None
    """Where the network ran (the CPU when memory ran out on the detector's GPU)."""
    precision: dict[str, str] | None = None
    """The autocast type it ran in and why: ``{"precision": "bf16", "precision_reason": "..."}``."""
    lungs: dict | None = None
    """:func:`lung_summary` of the scan, ``None`` when the lungs were not looked for."""
    error: str | None = None
    bad_input: bool = False

    @property
    def ok(self) -> bool:
        return self.error is None


def parse_formats(text: str) -> tuple[str, ...]:
    """``"csv,json"`` -> ``("csv", "json")``; unknown names are bad input."""
    formats = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise UserInputError(f"--formats {text!r}: expected a comma-separated subset of {','.join(FORMATS)}.")
    return formats


def lung_summary(lungs: LungFinding) -> dict:
    """What the reports say of the lungs: ``lung_volume_ml`` (both, from the finder's blocks), each
    lung's volume, and the bounding box of the region the detector looked in, in world LPS mm."""
    return {"lung_volume_ml": round(lungs.volume_ml, 1),
            "lung_volumes_ml": {"right": round(lungs.volumes_ml[0], 1), "left": round(lungs.volumes_ml[1], 1)},
            "lung_box_xyz_mm": {"min": [round(float(v), 2) for v in lungs.box_min_xyz_mm],
                                "max": [round(float(v), 2) for v in lungs.box_max_xyz_mm]}}


def _write_dicom_outputs(outputs: dict[str, str], scan: Scan, detections: list[Detection], model: dict) -> None:
    series = check_referable(scan.dicom, scan.name)
    sources = read_sources(series.files)
    nodules = nodules_from_detections(detections)
    algorithm = Algorithm(str(model.get("name") or "scpm-nodule"), str(model.get("version") or "unknown"))
    if "sr" in outputs:
        write_measurement_report(outputs["sr"], sources, nodules, algorithm)
    if "seg" in outputs:
        if nodules:
            write_segmentation(outputs["seg"], sources, nodules, algorithm)
        else:
            log.info("%s: no detections, so no Segmentation (it needs one segment)", scan.name)
            del outputs["seg"]


def _write_outputs(out_dir: Path, scan: Scan, detections: list[Detection], path: Path, model: dict,
                   formats: Sequence[str], timings: dict[str, float], lungs: dict | None) -> dict[str, str]:
    """Write one scan's files; on failure remove the ones already written and re-raise."""
    name, image = scan.name, scan.image
    outputs = {fmt: str(out_dir / f"{name}{OUTPUT_SUFFIXES[fmt]}") for fmt in formats}
    try:
        if "csv" in outputs:
            write_candidates_csv(outputs["csv"], name, detections)
        if "json" in outputs:
            identity = scan.dicom.identity if scan.dicom is not None else None
            write_detections_json(outputs["json"], detections,
                                  scan={**describe_scan(image, path, identity), **(lungs or {})},
                                  model=model, timings=timings)
        if "mrk" in outputs:
            write_markups_json(outputs["mrk"], detections, name=f"{name} nodules")
        if set(DICOM_FORMATS) & set(outputs):
            _write_dicom_outputs(outputs, scan, detections, model)
    except BaseException:
        _remove(outputs.values())  # OSError suppressed: the error that brought us here is the one to tell
        raise
    return outputs


def _remove(paths: Iterable[str | os.PathLike]) -> list[str]:
    """Remove the files that exist among ``paths``; the ones removed. Errors are ignored: callers
    clean up on their way out of another error."""
    removed = []
    for path in paths:
        with contextlib.suppress(OSError):
            os.unlink(path)
            removed.append(str(path))
    return removed


def _model_summary(detector: Detector, device: str, precision: dict[str, str] | None = None) -> dict:
    """The ``model`` record of the reports; ``precision``: what one scan ran in and why (the
    batch summary has it per scan); ``candidate_classifier``: the second stage that re-ranked the
    candidates, ``None`` without one."""
    classifier = detector.candidate_classifier
    return {"name": detector.info.get("name"), "version": detector.info.get("version"),
            "trained": detector.trained, "device": device, **(precision or {}),
            "inference": asdict(detector.config), "preprocess": detector.preprocess.to_dict(),
            "candidate_classifier": asdict(classifier.config) if classifier is not None else None}


def detect_scan(path: Path, out_dir: Path, detector: Detector, formats: Sequence[str],
                progress: ScanProgress | None = None, series_uid: str | None = None,
                name: str | None = None) -> ScanResult:
    """Detect on one scan and write its outputs; failures become the result's ``error``, and
    remove the scan's outputs of an earlier run (they would pass for this run's).

    ``series_uid`` picks the series of a DICOM folder that holds several. DICOM outputs (``sr``,
    ``seg``) are checked to be possible (a DICOM series with its UIDs) before detection. ``name``
    is :func:`~SCPMNoduleLib.io.scan_name`'s, when the caller has it already (a DICOM folder's
    headers are then not read once more for it).

    Raises:
        UserInputError: an operating-system error (a full disk, no permission in ``out_dir``),
            which is not this scan's fault; the scan's outputs are removed first.
    """
    name = name or scan_name(path, series_uid)
    outputs = [out_dir / f"{name}{suffix}" for suffix in OUTPUT_SUFFIXES.values()]
    report = progress or (lambda scan, fraction, stage: None)
    result = ScanResult(scan=name, path=str(path))
    start = time.perf_counter()
    try:
        report(name, 0.0, "read")
        scan = load_scan(path, series_uid)
        if set(DICOM_FORMATS) & set(formats):
            check_referable(scan.dicom, path)
        result.timings_s["read"] = time.perf_counter() - start
        detection = detector.detect(scan.image, progress=lambda f, s: report(name, 0.05 + 0.9 * f, s))
        result.detections, result.device = list(detection.detections), detection.device
        result.precision = {"precision": detection.precision, "precision_reason": detection.precision_reason}
        result.lungs = lung_summary(detection.lungs) if detection.lungs is not None else None
        low, high = ADULT_LUNG_VOLUME_ML
        if detection.lungs is not None and not low <= detection.lungs.volume_ml <= high:
            log.warning("%s: lung volume %.0f mL is outside the adult range (%d-%d mL); check the lungs found",
                        path, detection.lungs.volume_ml, *ADULT_LUNG_VOLUME_ML)
        result.timings_s.update(detection.timings_s)
        report(name, 0.95, "write")
        write_start = time.perf_counter()
        result.outputs = _write_outputs(out_dir, scan, result.detections, path,
                                        _model_summary(detector, detection.device, result.precision), formats,
                                        result.timings_s, result.lungs)
        result.timings_s["write"] = time.perf_counter() - write_start
        report(name, 1.0, "write")
    except NoLungsError as error:  # the one input error found after reading, so without the file's name
        result.error, result.bad_input = f"{path}: {error}", True
    except UserInputError as error:
        result.error, result.bad_input = str(error), True
    except (DetectionCancelled, KeyboardInterrupt):
        raise
    except OSError as error:  # raised in an except clause, so not caught by the one below
        _remove(outputs)
        raise os_error(error) from None
    except Exception as error:  # one scan's crash must not stop the batch
        log.exception("detection failed on %s", path)
        result.error = f"{path}: detection failed ({type(error).__name__}: {error})."
    if not result.ok:
        stale = _remove(outputs)
        if stale:
            log.warning("%s: removed %s, the outputs of an earlier run (this run failed)", name, ", ".join(stale))
    result.seconds = time.perf_counter() - start
    return result


def detect_files(inputs: Sequence[str | os.PathLike], out_dir: str | os.PathLike, detector: Detector,
                 formats: Sequence[str] = DEFAULT_FORMATS, progress: ScanProgress | None = None,
                 on_result: Callable[[ScanResult], None] | None = None,
                 series_uid: str | None = None) -> list[ScanResult]:
    """Detect on every scan of ``inputs`` (files, folders of scans, DICOM folders).

    Per scan ``<name>.candidates.csv``, ``<name>.json`` and ``<name>.mrk.json`` (as ``formats``
    asks) go into ``out_dir``; when at least one scan succeeded, also ``detect_summary.json``
    (every scan's outcome) and, with ``csv``, ``candidates.csv`` holding all scans' candidates
    (LUNA16's evaluation input). A scan that fails leaves no file. A DICOM series is named by its
    SeriesInstanceUID (``series_uid`` picks one in a folder of several); ``sr`` and ``seg`` write its
    TID 1500 report and Segmentation (``<name>.sr.dcm``, ``<name>.seg.dcm``), and are refused before
    any work when an input is not a DICOM folder. ``out_dir`` is checked before any scan is read
    (:func:`~SCPMNoduleLib.temp_files.check_output_folder`).

    Raises:
        UserInputError: no scans, two scans of one name, an output folder that cannot be
            written, or an operating-system error while writing (a full disk): the batch stops;
            the scans done keep their files, and no batch file is left half there.
    """
    out_dir = check_output_folder(out_dir, None)
    paths = list_scans(inputs)
    if not paths:
        raise UserInputError(f"{', '.join(map(str, inputs))}: no scans found.")
    if set(DICOM_FORMATS) & set(formats):
        for path in paths:
            if not path.is_dir():
                check_referable(None, path)
    names = [scan_name(p, series_uid) for p in paths]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise UserInputError(f"several scans are named {duplicates[0]}; their outputs would overwrite each other.")
    results = []
    for path, name in zip(paths, names):
        result = detect_scan(path, out_dir, detector, formats, progress, series_uid, name)
        results.append(result)
        if on_result is not None:
            on_result(result)
    if any(r.ok for r in results):
        _write_batch_files(out_dir, results, detector, formats)
    return results


def _write_batch_files(out_dir: Path, results: list[ScanResult], detector: Detector,
                       formats: Sequence[str]) -> None:
    """``candidates.csv`` (with ``csv``), then ``detect_summary.json``: both, or (after an error or
    Ctrl-C) neither, so no summary describes a candidates file that is not there."""
    paths = [out_dir / BATCH_CANDIDATES_NAME, out_dir / SUMMARY_NAME]
    try:
        if "csv" in formats:
            write_candidates(paths[0], Findings.concat(
                [Findings.from_detections(r.scan, r.detections) for r in results if r.ok]))
        with atomic_write(paths[1], encoding="utf-8") as handle:
            json.dump(_batch_summary(results, detector), handle, indent=1)
    except BaseException as error:
        _remove(paths)
        if isinstance(error, OSError):
            raise os_error(error, action="write") from None
        raise


def _batch_summary(results: list[ScanResult], detector: Detector) -> dict:
    return {"model": _model_summary(detector, str(detector.device)), "scans": [
        {"scan": r.scan, "path": r.path, "ok": r.ok, "detections": len(r.detections), "device": r.device,
         **(r.precision or {}), "lungs": r.lungs, "seconds": r.seconds, "timings_s": r.timings_s,
         "outputs": r.outputs, "error": r.error}
        for r in results]}


@dataclass
class DemoResult:
    """The demo's detections, the phantom's truth, which detection hits which nodule, its files."""

    detections: list[Detection]
    truth_xyz_mm: np.ndarray
    truth_diameters_mm: np.ndarray
    hits: np.ndarray
    """``(len(detections),)`` index of the true nodule a detection lies inside, -1 for none."""
    outputs: dict[str, str]
    seconds: float


def match_to_truth(detections: Sequence[Detection], truth_xyz_mm: np.ndarray,
                   truth_diameters_mm: np.ndarray) -> np.ndarray:
    """For each detection the nearest true nodule whose sphere holds its center
    (:func:`~SCPMNoduleLib.evaluation.luna16_hit`), else -1."""
    centers = np.asarray([d.center_xyz_mm for d in detections], dtype=np.float64).reshape(-1, 3)
    if truth_xyz_mm.size == 0:
        return np.full(len(centers), -1)
    distance2 = squared_distance_mm2(centers[:, None, :], truth_xyz_mm[None, :, :])
    inside = luna16_hit(distance2, truth_diameters_mm[None, :])
    return np.where(inside.any(axis=1), np.where(inside, distance2, np.inf).argmin(axis=1), -1)


def run_demo(out_dir: str | os.PathLike, detector: Detector, seed: int = 0, size: str = "small",
             progress: ScanProgress | None = None) -> DemoResult:
    """Make a phantom, detect on it, and write ``demo_phantom.mha``, its truth
    (``demo_truth.csv``), the detections (CSV, JSON, markups) and ``demo_detections.png``.

    ``out_dir`` is checked first; an error or Ctrl-C removes the files this run began to write
    (and ``out_dir``, when this run made it and it is left empty).
    """
    from .phantom import annotation_table, make_phantom

    start = time.perf_counter()
    out_dir = check_output_folder(out_dir, None)
    made_folder = not out_dir.exists()
    scan_path, truth_path, png_path = (out_dir / name for name in (
        "demo_phantom.mha", "demo_truth.csv", "demo_detections.png"))
    try:
        image, nodules = make_phantom(seed, size)
        truth = annotation_table("demo_phantom", [n for n in nodules if n.included])
        truth_xyz, truth_diameters = truth.centers_xyz_mm, truth.diameters_mm
        atomic_write_image(image, scan_path)
        write_annotations(truth_path, truth)
        result = detect_scan(scan_path, out_dir, detector, DEFAULT_FORMATS, progress)
        if not result.ok:
            raise (UserInputError if result.bad_input else RuntimeError)(result.error)
        save_detection_slices(image, result.detections, truth_xyz, truth_diameters, png_path)
    except BaseException as error:
        _remove([scan_path, truth_path, png_path,
                 *(out_dir / f"{scan_name(scan_path)}{suffix}" for suffix in OUTPUT_SUFFIXES.values())])
        if made_folder:
            with contextlib.suppress(OSError):
                out_dir.rmdir()
        if isinstance(error, OSError):
            raise os_error(error, action="write") from None
        raise
    outputs = {"scan": str(scan_path), "truth": str(truth_path), **result.outputs, "png": str(png_path)}
    return DemoResult(result.detections, truth_xyz, truth_diameters,
                      match_to_truth(result.detections, truth_xyz, truth_diameters), outputs,
                      time.perf_counter() - start)
