"""LUNA16's FROC evaluation: inputs, hit matching, per-size breakdown, results and their files.

This reproduces the challenge's own script (``noduleCADEvaluationLUNA16.py``) rule for rule:

* Scans are the rows of the series list; candidates and annotations of other uids are left out.
  A scan without candidates still counts in the FP-per-scan denominator ``S``.
* At most ``max_candidates_per_scan`` (100) candidates a scan: when a scan has more, let ``p*`` be
  its 101st-highest probability; the candidates with ``p > p*`` are kept, so a tie at the cut-off
  drops every tied candidate.
* A candidate at ``c`` hits a finding at ``n`` of diameter ``d`` (``d < 0`` means 10 mm) when
  ``|c - n|^2 < (d / 2)^2`` (strictly; a candidate exactly on the sphere misses).
* Every included nodule gives one FROC entry: a TP scored with the highest probability among the
  candidates hitting it, or a miss that only counts in the number of nodules ``N``. A candidate
  hitting two included nodules counts for both; one hitting an included nodule and an excluded
  finding is a TP. Every candidate that hits any finding (included or excluded) leaves the FP
  list, so extra hits on a nodule and hits on excluded findings are neither TP nor FP.
* The TP and FP entries become the curve, the sensitivities at 1/8 ... 8 FPs per scan (CPM is
  their mean) and the bootstrap bands over scans in :mod:`SCPMNoduleLib.froc`.

Degenerate inputs the official script turns into NaN or a crash give numbers here: no candidate at
all or no TP gives sensitivity 0; a resample without a nodule gives sensitivity 0. Where it would
silently count a scan twice (a uid listed twice) or divide by zero nodules, this raises
:class:`~SCPMNoduleLib.errors.UserInputError`.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .config_dict import invalid_setting
from .documents import read_json
from .errors import UserInputError
from .evaluation_inputs import TableLike, as_findings, as_seriesuids
from .froc import BootstrapBands, FROCCurve, FROCEntries, bootstrap_bands, froc_curve
from .io import (
    Findings,
    atomic_write,
    csv_text,
    write_annotations,
)
from .plotting import fp_rate_label, plot_froc
from .temp_files import check_output_folder

__all__ = [
    "FP_RATES",
    "EvaluationConfig",
    "FROCSummary",
    "FROCCounts",
    "FROCResult",
    "SizeClass",
    "TableLike",
    "evaluate_froc",
    "evaluate_runs",
    "format_results",
    "read_froc_summary",
    "luna16_hit",
    "squared_distance_mm2",
    "write_evaluation",
]

log = logging.getLogger(__name__)

FP_RATES = (0.125, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)


@dataclass(frozen=True)
class EvaluationConfig:
    """Every number the evaluation uses.

    Attributes:
        fp_rates: FPs per scan at which sensitivity is read off; CPM is the mean over them.
        max_candidates_per_scan: LUNA16's cap (100); ``None`` keeps every candidate.
        default_diameter_mm: diameter used for findings whose ``diameter_mm`` is negative.
        n_bootstraps: resamples of the scans; 0 skips the bootstrap.
        seed: seed of the resampling.
        confidence: two-sided coverage of the bands.
        band_points: FP rates, log-spaced over ``fp_rates``' range, at which the band is kept.
        bootstrap_chunk: resamples computed together (bounds the memory, not the result).
        size_edges_mm: ``(a, b)``: size classes ``d < a``, ``a <= d <= b``, ``d > b``.
        size_fp_rates: FP rates of the per-size breakdown.
    """

    fp_rates: tuple[float, ...] = FP_RATES
    max_candidates_per_scan: int | None = 100
    default_diameter_mm: float = 10.0
    n_bootstraps: int = 1000
    seed: int = 0
    confidence: float = 0.95
    band_points: int = 129
    bootstrap_chunk: int = 250
    size_edges_mm: tuple[float, float] = (6.0, 10.0)
    size_fp_rates: tuple[float, ...] = (1.0, 4.0)

    def __post_init__(self) -> None:
        """Refuse numbers the evaluation cannot use (:func:`~SCPMNoduleLib.config_dict.invalid_setting`)."""
        for name in ("fp_rates", "size_fp_rates"):
            rates = getattr(self, name)
            if len(rates) == 0 or not all(math.isfinite(r) and r > 0 for r in rates):
                raise invalid_setting(self, name, "is not a non-empty list of positive FP rates")
        if self.max_candidates_per_scan is not None and not self.max_candidates_per_scan >= 1:
            raise invalid_setting(self, "max_candidates_per_scan", "is not at least 1 (or None)")
        if not (math.isfinite(self.default_diameter_mm) and self.default_diameter_mm > 0):
            raise invalid_setting(self, "default_diameter_mm", "is not a positive diameter")
        if not self.n_bootstraps >= 0:
            raise invalid_setting(self, "n_bootstraps", "is negative")
        if not 0.0 < self.confidence < 1.0:
            raise invalid_setting(self, "confidence", "is not in (0, 1)")
        for name in ("band_points", "bootstrap_chunk"):
            if not getattr(self, name) >= 1:
                raise invalid_setting(self, name, "is not at least 1")
        edges = self.size_edges_mm
        if len(edges) != 2 or not edges[0] <= edges[1]:
            raise invalid_setting(self, "size_edges_mm", "is not two increasing diameters")


@dataclass(frozen=True)
class SizeClass:
    """Sensitivity of the nodules of one size class, on the whole system's FP axis.

    The FP entries are all of them; only the TP entries and the nodule count are the class's,
    so "at 1 FP/scan" is the same operating point as for all nodules.
    """

    label: str
    n_nodules: int
    n_detected: int
    fp_rates: tuple[float, ...]
    sensitivities: np.ndarray


@dataclass(frozen=True)
class FROCCounts:
    """What went where (the official script's ``CADAnalysis.txt``, plus what was left out)."""

    n_scans: int
    n_nodules: int
    n_detected: int
    n_excluded_findings: int
    n_candidates: int
    n_false_positives: int
    n_on_excluded: int
    n_duplicate_hits: int
    n_over_cap: int
    n_unknown_uid: int


@dataclass(frozen=True)
class FROCResult:
    """The LUNA16 evaluation of one candidate set.

    Attributes:
        fp_rates: the R FP-per-scan rates (LUNA16's seven).
        sensitivities: ``(R,)`` sensitivity at each rate.
        cpm: mean of ``sensitivities``.
        curve: the full FROC curve.
        bootstrap: bands, or ``None`` when ``n_bootstraps`` is 0.
        nodules: the included nodules on the listed scans; ``probabilities`` holds the best
            hitting candidate's probability, NaN for a missed nodule.
        nodule_hit: ``(N,)`` bool.
        nearest_candidate_mm: ``(N,)`` distance from each nodule to the nearest kept candidate
            on its scan, hitting or not (``inf`` where the scan has none): for a missed nodule,
            whether the detector put something next to it (a localisation error) or nothing.
        nearest_candidate_probability: ``(N,)`` that candidate's probability (NaN where none).
        by_size: sensitivity per size class.
        counts: the bookkeeping.
    """

    fp_rates: tuple[float, ...]
    sensitivities: np.ndarray
    cpm: float
    curve: FROCCurve
    bootstrap: BootstrapBands | None
    nodules: Findings
    nodule_hit: np.ndarray
    nearest_candidate_mm: np.ndarray
    nearest_candidate_probability: np.ndarray
    by_size: tuple[SizeClass, ...]
    counts: FROCCounts

    @property
    def missed(self) -> Findings:
        """The included nodules no kept candidate hits."""
        return self.nodules.select(~self.nodule_hit)

    def summary(self) -> dict:
        """A JSON-ready dict of the figures (no per-nodule rows, no curve)."""
        out: dict[str, Any] = {
            "fp_rates": list(self.fp_rates),
            "sensitivities": self.sensitivities.tolist(),
            "cpm": self.cpm,
            "counts": vars(self.counts).copy(),
            "by_size": [
                {"size": c.label, "n_nodules": c.n_nodules, "n_detected": c.n_detected,
                 "fp_rates": list(c.fp_rates), "sensitivities": _nan_to_none(c.sensitivities)}
                for c in self.by_size
            ],
        }
        if self.bootstrap is not None:
            b = self.bootstrap
            out["bootstrap"] = {
                "n_resamples": b.n_resamples, "seed": b.seed, "confidence": b.confidence,
                "mean": b.mean.tolist(), "lower": b.lower.tolist(), "upper": b.upper.tolist(),
                "cpm_mean": b.cpm_mean, "cpm_lower": b.cpm_lower, "cpm_upper": b.cpm_upper,
            }
        return out


def _nan_to_none(values: np.ndarray) -> list:
    return [None if math.isnan(v) else float(v) for v in values]


def _scan_index(seriesuids: np.ndarray, query: np.ndarray) -> np.ndarray:
    """``(M,)`` position of each query uid in ``seriesuids``, -1 where it is not listed."""
    sorter = np.argsort(seriesuids)
    position = np.searchsorted(seriesuids, query, sorter=sorter)
    position = np.minimum(position, len(seriesuids) - 1)
    index = sorter[position]
    return np.where(seriesuids[index] == query, index, -1)


# ----------------------------------------------------------------------------------- matching


def _keep_top_per_scan(scan: np.ndarray, probability: np.ndarray, cap: int, n_scans: int) -> np.ndarray:
    """``(C,)`` mask: in a scan with more than ``cap`` candidates keep ``p > p_(cap+1)``."""
    order = np.lexsort((-probability, scan))
    counts = np.bincount(scan, minlength=n_scans)
    starts = np.cumsum(counts) - counts
    over = counts > cap
    threshold = np.full(n_scans, -np.inf)
    threshold[over] = probability[order[starts[over] + cap]]
    return probability > threshold[scan]


def _pairs_in_same_scan(scan_a: np.ndarray, scan_b: np.ndarray,
                        n_scans: int) -> tuple[np.ndarray, np.ndarray]:
    """Every ``(i, j)`` with ``scan_a[i] == scan_b[j]``, built with repeat/cumsum (no loop)."""
    order_b = np.argsort(scan_b, kind="stable")
    counts_b = np.bincount(scan_b, minlength=n_scans)
    starts_b = np.cumsum(counts_b) - counts_b
    per_a = counts_b[scan_a]
    i = np.repeat(np.arange(len(scan_a)), per_a)
    block_start = np.repeat(np.cumsum(per_a) - per_a, per_a)
    j = order_b[np.repeat(starts_b[scan_a], per_a) + np.arange(per_a.sum()) - block_start]
    return i, j


def squared_distance_mm2(a_xyz: np.ndarray, b_xyz: np.ndarray) -> np.ndarray:
    """``(...)`` squared distances of ``(..., 3)`` points (broadcast): ``dx^2 + dy^2 + dz^2`` summed
    in that order, as the official script does."""
    d = np.asarray(a_xyz, np.float64) - np.asarray(b_xyz, np.float64)
    return d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1] + d[..., 2] * d[..., 2]


def luna16_hit(squared_distance: np.ndarray, diameters_mm: np.ndarray) -> np.ndarray:
    """LUNA16's hit rule, elementwise (broadcast): a point at squared distance ``|c - n|^2``
    (:func:`squared_distance_mm2`) from the center of a sphere of diameter ``d`` hits it when
    ``|c - n|^2 < (d / 2)^2``, strictly (a point exactly on the sphere misses)."""
    return squared_distance < (np.asarray(diameters_mm, np.float64) / 2.0) ** 2.0


# ----------------------------------------------------------------------------------- evaluation


def _size_labels(edges: tuple[float, float]) -> tuple[str, str, str]:
    return f"<{edges[0]:g} mm", f"{edges[0]:g}-{edges[1]:g} mm", f">{edges[1]:g} mm"


def _size_class(diameters_mm: np.ndarray, edges: tuple[float, float]) -> np.ndarray:
    """0 for ``d < a``, 1 for ``a <= d <= b``, 2 for ``d > b``."""
    return (diameters_mm >= edges[0]).astype(np.int64) + (diameters_mm > edges[1])


def _on_listed_scans(findings: Findings, uids: np.ndarray) -> tuple[Findings, np.ndarray, int]:
    """The rows whose uid is listed, their scan index, and how many rows were left out."""
    scan = _scan_index(uids, findings.seriesuids)
    listed = scan >= 0
    return findings.select(listed), scan[listed], int((~listed).sum())


@dataclass(frozen=True)
class _Matches:
    """Which candidate hits which finding.

    Attributes:
        best: ``(N,)`` highest probability among the candidates hitting each included nodule
            (``-inf`` where none does).
        n_hits: ``(N,)`` how many candidates hit each included nodule.
        on_included: ``(C,)`` the candidate hits an included nodule.
        on_any: ``(C,)`` the candidate hits an included nodule or an excluded finding.
        nearest_mm: ``(N,)`` distance from each included nodule to the nearest candidate on its
            scan (``inf`` where the scan has none).
        nearest_probability: ``(N,)`` that candidate's probability (NaN where none).
    """

    best: np.ndarray
    n_hits: np.ndarray
    on_included: np.ndarray
    on_any: np.ndarray
    nearest_mm: np.ndarray
    nearest_probability: np.ndarray


def _nearest_candidate(finding: np.ndarray, candidate: np.ndarray, squared_mm2: np.ndarray,
                       probabilities: np.ndarray, n_nodules: int) -> tuple[np.ndarray, np.ndarray]:
    """Per included nodule, distance to and probability of the nearest candidate of its scan.

    ``finding[k]``, ``candidate[k]``: every same-scan pair, with squared distance
    ``squared_mm2[k]``; the included nodules are the findings ``< n_nodules``.
    """
    included = finding < n_nodules
    finding, candidate, squared_mm2 = finding[included], candidate[included], squared_mm2[included]
    order = np.lexsort((squared_mm2, finding))
    first = order[np.unique(finding[order], return_index=True)[1]]
    distance, probability = np.full(n_nodules, np.inf), np.full(n_nodules, np.nan)
    distance[finding[first]] = np.sqrt(squared_mm2[first])
    probability[finding[first]] = probabilities[candidate[first]]
    return distance, probability


def _match(nodules: Findings, nodule_scan: np.ndarray, excluded: Findings, excluded_scan: np.ndarray,
           candidates: Findings, candidate_scan: np.ndarray, n_scans: int,
           default_diameter_mm: float) -> _Matches:
    """Hits (:func:`luna16_hit`) over every (finding, candidate) pair of the same scan."""
    n_nodules = len(nodules)
    finding_scan = np.concatenate([nodule_scan, excluded_scan])
    finding_xyz = np.concatenate([nodules.centers_xyz_mm, excluded.centers_xyz_mm])
    diameters = np.concatenate([nodules.diameters_mm, excluded.diameters_mm])
    diameters = np.where(diameters < 0.0, default_diameter_mm, diameters)
    f, c = _pairs_in_same_scan(finding_scan, candidate_scan, n_scans)
    squared = squared_distance_mm2(finding_xyz[f], candidates.centers_xyz_mm[c])
    nearest = _nearest_candidate(f, c, squared, candidates.probabilities, n_nodules)
    hit = luna16_hit(squared, diameters[f])
    f, c = f[hit], c[hit]
    included = f < n_nodules  # the included nodules come first
    best = np.full(n_nodules, -np.inf)
    np.maximum.at(best, f[included], candidates.probabilities[c[included]])
    on_included, on_any = np.zeros(len(candidates), bool), np.zeros(len(candidates), bool)
    on_included[c[included]] = True
    on_any[c] = True
    return _Matches(best, np.bincount(f[included], minlength=n_nodules), on_included, on_any, *nearest)


def _size_breakdown(entries: FROCEntries, size_of_entry: np.ndarray, size_of_nodule: np.ndarray,
                    nodule_hit: np.ndarray, n_scans: int, config: EvaluationConfig) -> tuple[SizeClass, ...]:
    """Per size class: the class's TP entries with every FP entry, over the class's nodules."""
    classes = []
    for index, label in enumerate(_size_labels(config.size_edges_mm)):
        in_class = size_of_nodule == index
        n_in_class = int(in_class.sum())
        if n_in_class:
            in_curve = ~entries.is_tp | (size_of_entry == index)
            curve = froc_curve(entries.select(in_curve), n_in_class, n_scans)
            sensitivities = curve.at(config.size_fp_rates)
        else:
            sensitivities = np.full(len(config.size_fp_rates), np.nan)
        classes.append(SizeClass(label, n_in_class, int((nodule_hit & in_class).sum()),
                                 tuple(config.size_fp_rates), sensitivities))
    return tuple(classes)


def evaluate_froc(annotations: TableLike, excluded: TableLike, seriesuids: Any, candidates: TableLike,
                  config: EvaluationConfig | None = None) -> FROCResult:
    """Evaluate candidates against LUNA16 annotations exactly as the challenge's script does.

    Args:
        annotations: included nodules (``seriesuid,coordX,coordY,coordZ,diameter_mm``, world mm):
            a CSV path, a :class:`~SCPMNoduleLib.io.Findings` or a pandas DataFrame.
        excluded: findings whose hits are neither TP nor FP (``annotations_excluded.csv``), same forms.
        seriesuids: the scans: LUNA16's ``seriesuids.csv`` path or a sequence of uids.
        candidates: ``seriesuid,coordX,coordY,coordZ,probability``, same forms as ``annotations``.
        config: the numbers; :class:`EvaluationConfig` by default.

    Returns:
        The sensitivities at ``config.fp_rates``, CPM, curve, bootstrap bands, per-nodule outcome,
        per-size breakdown and counts.

    Raises:
        UserInputError: a missing or malformed table, a repeated or empty series list, or no
            included nodule on the listed scans (sensitivity undefined).
    """
    config = config or EvaluationConfig()
    uids = as_seriesuids(seriesuids)
    n_scans = len(uids)
    annotations = as_findings(annotations, False, "annotations table")
    excluded = as_findings(excluded, False, "excluded-findings table")
    candidates = as_findings(candidates, True, "candidates table")
    nodules, nodule_scan, _ = _on_listed_scans(annotations, uids)
    excluded, excluded_scan, _ = _on_listed_scans(excluded, uids)
    found, candidate_scan, n_unknown = _on_listed_scans(candidates, uids)
    if len(nodules) == 0:
        raise UserInputError("annotations table: no included nodule lies on a listed scan, so "
                             "sensitivity is undefined.")
    if n_unknown:
        log.info("%d candidate(s) name a seriesuid that is not in the series list; left out.", n_unknown)
    n_over_cap = 0
    if config.max_candidates_per_scan is not None:
        keep = _keep_top_per_scan(candidate_scan, found.probabilities, config.max_candidates_per_scan,
                                  n_scans)
        n_over_cap = int((~keep).sum())
        found, candidate_scan = found.select(keep), candidate_scan[keep]

    matches = _match(nodules, nodule_scan, excluded, excluded_scan, found, candidate_scan, n_scans,
                     config.default_diameter_mm)
    nodule_hit = matches.n_hits > 0
    false_positive = ~matches.on_any
    n_detected, n_false_positives = int(nodule_hit.sum()), int(false_positive.sum())
    entries = FROCEntries(
        scan=np.concatenate([nodule_scan[nodule_hit], candidate_scan[false_positive]]),
        probability=np.concatenate([matches.best[nodule_hit], found.probabilities[false_positive]]),
        is_tp=np.r_[np.ones(n_detected, bool), np.zeros(n_false_positives, bool)],
    )
    curve = froc_curve(entries, len(nodules), n_scans)
    sensitivities = curve.at(config.fp_rates)

    diameters = np.where(nodules.diameters_mm < 0.0, config.default_diameter_mm, nodules.diameters_mm)
    size_of_nodule = _size_class(diameters, config.size_edges_mm)
    size_of_entry = np.r_[size_of_nodule[nodule_hit], np.full(n_false_positives, -1)]
    by_size = _size_breakdown(entries, size_of_entry, size_of_nodule, nodule_hit, n_scans, config)
    bootstrap = None
    if config.n_bootstraps > 0:
        bootstrap = bootstrap_bands(entries, np.bincount(nodule_scan, minlength=n_scans), config.fp_rates,
                                    n_resamples=config.n_bootstraps, seed=config.seed,
                                    confidence=config.confidence, band_points=config.band_points,
                                    chunk=config.bootstrap_chunk)

    counts = FROCCounts(
        n_scans=n_scans, n_nodules=len(nodules), n_detected=n_detected, n_excluded_findings=len(excluded),
        n_candidates=len(found), n_false_positives=n_false_positives,
        n_on_excluded=int((matches.on_any & ~matches.on_included).sum()),
        n_duplicate_hits=int(np.maximum(matches.n_hits - 1, 0).sum()), n_over_cap=n_over_cap,
        n_unknown_uid=n_unknown,
    )
    outcome = Findings(nodules.seriesuids, nodules.centers_xyz_mm, nodules.diameters_mm,
                       np.where(nodule_hit, matches.best, np.nan))
    return FROCResult(tuple(config.fp_rates), sensitivities, float(sensitivities.mean()), curve, bootstrap,
                      outcome, nodule_hit, matches.nearest_mm, matches.nearest_probability, by_size, counts)


def evaluate_runs(annotations: TableLike, excluded: TableLike, seriesuids: Any,
                  runs: Mapping[str, TableLike],
                  config: EvaluationConfig | None = None) -> dict[str, FROCResult]:
    """:func:`evaluate_froc` for several candidate sets (label -> candidates), tables read once."""
    uids = as_seriesuids(seriesuids)
    included = as_findings(annotations, False, "annotations table")
    excluded = as_findings(excluded, False, "excluded-findings table")
    return {label: evaluate_froc(included, excluded, uids, candidates, config)
            for label, candidates in runs.items()}


# ----------------------------------------------------------------------------------- reporting


def format_results(results: Mapping[str, FROCResult]) -> str:
    """A plain-text table: sensitivity (and band) at each FP rate, CPM, sizes, counts."""
    lines = []
    for label, result in results.items():
        c, b = result.counts, result.bootstrap
        lines.append(f"{label}: {c.n_scans} scans, {c.n_nodules} nodules ({c.n_detected} hit), "
                     f"{c.n_false_positives / c.n_scans:.2f} FPs/scan at the lowest threshold")
        band = f"  {b.confidence:.0%} CI" if b else ""
        lines.append(f"  {'FPs/scan':>8}  sensitivity{band}")
        for i, rate in enumerate(result.fp_rates):
            ci = f"  [{b.lower[i]:.3f}, {b.upper[i]:.3f}]" if b else ""
            lines.append(f"  {fp_rate_label(rate):>8}  {result.sensitivities[i]:11.3f}{ci}")
        ci = f"  [{b.cpm_lower:.3f}, {b.cpm_upper:.3f}]" if b else ""
        lines.append(f"  {'CPM':>8}  {result.cpm:11.3f}{ci}")
        for size in result.by_size:
            values = ", ".join(f"{s:.3f} at {r:g}" for r, s in zip(size.fp_rates, size.sensitivities))
            lines.append(f"  {size.label:>9} ({size.n_nodules} nodules): {values} FPs/scan")
    return "\n".join(lines)


def write_evaluation(results: Mapping[str, FROCResult], out_dir: str | os.PathLike,
                     inputs: Mapping[str, str] | None = None) -> dict[str, Path]:
    """Write the evaluation of ``results`` (first one = the main run) into ``out_dir``, atomically.

    Files: ``froc_curve.csv`` (``run,fps_per_scan,sensitivity,threshold``, every run),
    ``froc_summary.json`` (figures of every run, plus ``inputs``), ``missed_nodules.csv``
    (the main run's missed nodules, as a LUNA16 annotations table with two more columns: the
    distance to the nearest candidate on the scan, ``nearest_candidate_mm``, and its
    ``nearest_candidate_probability``) and ``froc.png``.
    """
    out_dir = check_output_folder(out_dir, None)
    paths = {name: out_dir / name for name in ("froc_curve.csv", "froc_summary.json", "missed_nodules.csv",
                                                "froc.png")}
    with atomic_write(paths["froc_curve.csv"], newline="") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(["run", "fps_per_scan", "sensitivity", "threshold"])
        for label, result in results.items():
            curve = result.curve
            writer.writerows([csv_text(label), repr(float(x)), repr(float(y)), repr(float(t))]
                             for x, y, t in zip(curve.fps_per_scan, curve.sensitivity, curve.thresholds))
    summary = {"inputs": dict(inputs or {}), "runs": {label: r.summary() for label, r in results.items()}}
    with atomic_write(paths["froc_summary.json"]) as handle:
        json.dump(summary, handle, indent=2)
        handle.write("\n")
    main = next(iter(results.values()))
    write_annotations(paths["missed_nodules.csv"], main.missed, {
        "nearest_candidate_mm": main.nearest_candidate_mm[~main.nodule_hit],
        "nearest_candidate_probability": main.nearest_candidate_probability[~main.nodule_hit]})
    plot_froc(results, paths["froc.png"])
    return paths


@dataclass(frozen=True)
class FROCSummary:
    """What :func:`read_froc_summary` reads back from a ``froc_summary.json``.

    Attributes:
        inputs: what the evaluation recorded of its inputs (files, settings; ``scpm-train evaluate``
            adds precision, weights digest, threshold and device).
        metrics: the first run's figures: ``evaluation`` (its label), ``cpm``, ``fp_rates``,
            ``sensitivities``, ``n_scans``, ``n_nodules`` and, with bootstrap bands, ``cpm_95ci``.
    """

    inputs: dict[str, Any]
    metrics: dict[str, Any]


def read_froc_summary(path: str | os.PathLike) -> FROCSummary:
    """The inputs and the first run's figures of a ``froc_summary.json`` (:func:`write_evaluation`).

    Raises:
        UserInputError: the file is missing, not UTF-8, not JSON, lacks a run's figures, or holds
            NaN or infinite ones.
    """
    path = Path(path)
    document = read_json(path)
    try:
        label, run = next(iter(document["runs"].items()))
        metrics: dict[str, Any] = {
            "evaluation": str(label), "cpm": float(run["cpm"]), "fp_rates": [float(v) for v in run["fp_rates"]],
            "sensitivities": [float(v) for v in run["sensitivities"]],
            "n_scans": int(run["counts"]["n_scans"]), "n_nodules": int(run["counts"]["n_nodules"])}
        if "bootstrap" in run:
            metrics["cpm_95ci"] = [float(run["bootstrap"]["cpm_lower"]), float(run["bootstrap"]["cpm_upper"])]
        inputs = dict(document.get("inputs", {}))
    except (KeyError, StopIteration, AttributeError, TypeError, ValueError):
        raise UserInputError(
            f"{path}: not a froc_summary.json written by scpm-nodule evaluate or scpm-train (its first run "
            "lacks cpm, fp_rates, sensitivities or counts, or its inputs are not an object).") from None
    figures = [metrics["cpm"], *metrics["fp_rates"], *metrics["sensitivities"], *metrics.get("cpm_95ci", [])]
    if not all(math.isfinite(value) for value in figures):
        raise UserInputError(f"{path}: the evaluation's figures hold NaN or infinite values.")
    return FROCSummary(inputs, metrics)
