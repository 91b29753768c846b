"""The FROC curve and its bootstrap bands, from a list of scored TP and FP entries.

:mod:`SCPMNoduleLib.evaluation` decides which candidate hits which nodule (LUNA16's rules) and
hands over the result as :class:`FROCEntries`: one entry per detected nodule (a TP, scored with
the best hitting candidate's probability) and one per false-positive candidate, each with its
scan. This module turns those entries into numbers, as LUNA16's ``noduleCADEvaluationLUNA16.py``:

* The curve is scikit-learn's ``roc_curve`` over the TP and FP entries (one point per distinct
  probability; a point whose two neighbours lie equal steps away on one straight line is dropped,
  as ``drop_intermediate`` does; ``(0, 0)`` at threshold ``inf`` in front):
  ``fps = (FP(t) / F) * F / S`` and ``sensitivity = (TP(t) / T) * T / N`` with ``F``, ``T`` the
  totals, ``S`` scans and ``N`` nodules, evaluated in that order so the floats are the official
  script's bit for bit. No entry at all, or no TP, gives sensitivity 0.
* Sensitivities at given FP rates are ``np.interp`` of that curve (where several points share an
  FP rate the last, highest one counts).
* Bootstrap: scans are resampled with replacement; resample ``b`` gives scan ``s`` a weight
  ``w[b, s]`` (how often it was drawn), so with entries sorted by probability the curve of
  resample ``b`` is ``FP_b(t) = sum_e w[b, scan(e)] [e is FP, p_e >= t]`` and likewise ``TP_b``
  and ``N_b``: one sparse product ``W @ A`` (``A``: scans x thresholds) for many resamples at once,
  after merging runs of thresholds that hold only FPs or only TPs (straight stretches of every
  resample's curve, so ``np.interp`` reads the same values off the merged curve).
  A resample without a nodule gives sensitivity 0.
  Bands use the official script's order statistics: the ``floor(a B)``-th and ``floor((1 - a) B)``-th
  of the ``B`` sorted values, ``a = (1 - confidence) / 2``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import scipy.sparse

__all__ = ["BootstrapBands", "FROCCurve", "FROCEntries", "bootstrap_bands", "bootstrap_resamples", "froc_curve"]


@dataclass(frozen=True)
class FROCCurve:
    """The FROC curve, one point per kept probability threshold, ``(0, 0)`` first.

    Attributes:
        fps_per_scan: ``(P,)`` non-decreasing.
        sensitivity: ``(P,)`` non-decreasing, in [0, 1].
        thresholds: ``(P,)`` decreasing; ``inf`` for the first point.
    """

    fps_per_scan: np.ndarray
    sensitivity: np.ndarray
    thresholds: np.ndarray

    def at(self, fp_rates: np.ndarray | Sequence[float]) -> np.ndarray:
        """Sensitivity at ``fp_rates`` by linear interpolation (``np.interp``, as LUNA16)."""
        return np.interp(np.asarray(fp_rates, np.float64), self.fps_per_scan, self.sensitivity)


@dataclass(frozen=True)
class BootstrapBands:
    """Bootstrap over scans.

    Attributes:
        n_resamples, seed, confidence: how it was drawn.
        sensitivities: ``(B, R)`` each resample's sensitivity at the R ``fp_rates``.
        mean, lower, upper: ``(R,)`` mean and band at the ``fp_rates``.
        cpm_mean, cpm_lower, cpm_upper: the same for the CPM of each resample.
        grid_fps_per_scan: ``(Q,)`` log-spaced FP rates; ``grid_mean/lower/upper`` ``(Q,)`` there.
    """

    n_resamples: int
    seed: int
    confidence: float
    sensitivities: np.ndarray
    mean: np.ndarray
    lower: np.ndarray
    upper: np.ndarray
    cpm_mean: float
    cpm_lower: float
    cpm_upper: float
    grid_fps_per_scan: np.ndarray
    grid_mean: np.ndarray
    grid_lower: np.ndarray
    grid_upper: np.ndarray



@dataclass(frozen=True)
class FROCEntries:
    """The FROC list: one entry per detected nodule (TP) and per false-positive candidate.

    Attributes:
        scan: ``(E,)`` int, the entry's scan (index into the series list).
        probability: ``(E,)`` the TP's best hitting probability, or the FP candidate's.
        is_tp: ``(E,)`` bool.
    """

    scan: np.ndarray
    probability: np.ndarray
    is_tp: np.ndarray

    def select(self, mask: np.ndarray) -> FROCEntries:
        """The entries where ``mask`` is true."""
        return FROCEntries(self.scan[mask], self.probability[mask], self.is_tp[mask])


# ----------------------------------------------------------------------------------- the curve


def _descending_thresholds(probability: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Order by decreasing probability and each sorted entry's threshold index (0 = highest)."""
    order = np.argsort(probability, kind="mergesort")[::-1]
    sorted_p = probability[order]
    group = np.concatenate([[0], np.cumsum(np.diff(sorted_p) != 0)]) if len(order) else order
    return order, group


def froc_curve(entries: FROCEntries, n_nodules: int, n_scans: int) -> FROCCurve:
    """scikit-learn's ``roc_curve`` (with ``drop_intermediate``) rescaled to FPs/scan, as LUNA16."""
    order, group = _descending_thresholds(entries.probability)
    if len(order) == 0:
        return FROCCurve(np.zeros(1), np.zeros(1), np.full(1, np.inf))
    last_of_group = np.flatnonzero(np.diff(np.append(group, group[-1] + 1)))
    tps = np.cumsum(entries.is_tp[order].astype(np.float64))[last_of_group]
    fps = (last_of_group + 1) - tps
    thresholds = entries.probability[order][last_of_group]
    if len(fps) > 2:
        keep = np.r_[True, (np.diff(fps, 2) != 0) | (np.diff(tps, 2) != 0), True]
        tps, fps, thresholds = tps[keep], fps[keep], thresholds[keep]
    tps, fps = np.r_[0.0, tps], np.r_[0.0, fps]
    n_fp, n_tp = fps[-1], tps[-1]
    fps_per_scan = fps / n_fp * n_fp / n_scans if n_fp > 0 else np.zeros_like(fps)
    sensitivity = tps / n_tp * n_tp / n_nodules if n_tp > 0 else np.zeros_like(tps)
    return FROCCurve(fps_per_scan, sensitivity, np.r_[np.inf, thresholds])


# ----------------------------------------------------------------------------------- bootstrap


def bootstrap_resamples(n_scans: int, n_resamples: int, seed: int) -> np.ndarray:
    """``(B, S)`` scan indices drawn with replacement; row ``b`` is resample ``b``."""
    return np.random.default_rng(seed).integers(0, n_scans, size=(n_resamples, n_scans))


def _interp_rows(cum_fp: np.ndarray, sensitivity: np.ndarray, fp_counts: np.ndarray) -> np.ndarray:
    """``np.interp`` of each row's curve at FP counts, for all rows at once.

    Args:
        cum_fp: ``(B, P)`` int, non-decreasing along each row, ``cum_fp[:, 0] == 0``.
        sensitivity: ``(B, P)``.
        fp_counts: ``(Q,)`` FP counts (FPs per scan times S) to read the curves at.

    Returns:
        ``(B, Q)``. As ``np.interp``: with ``j`` the last point where ``cum_fp <= k``,
        ``y_j + (k - x_j) (y_{j+1} - y_j) / (x_{j+1} - x_j)``, and ``y_{P-1}`` past the end.
        ``j`` comes from one ``searchsorted`` over the rows laid end to end, each shifted by
        ``row * stride`` so that the concatenation stays sorted.
    """
    n_rows, n_points = cum_fp.shape
    whole = np.floor(fp_counts).astype(np.int64)
    stride = int(max(cum_fp[:, -1].max(), whole.max())) + 1
    shift = np.arange(n_rows, dtype=np.int64)[:, None] * stride
    found = np.searchsorted((cum_fp + shift).ravel(), (whole[None, :] + shift).ravel(), side="right")
    j = found.reshape(n_rows, -1) - 1 - np.arange(n_rows)[:, None] * n_points
    j_next = np.minimum(j + 1, n_points - 1)
    x0, x1 = np.take_along_axis(cum_fp, j, 1), np.take_along_axis(cum_fp, j_next, 1)
    y0, y1 = np.take_along_axis(sensitivity, j, 1), np.take_along_axis(sensitivity, j_next, 1)
    inside = j_next > j
    slope = np.divide(y1 - y0, x1 - x0, out=np.zeros_like(y0), where=inside)
    return y0 + slope * (fp_counts[None, :] - x0)


def _merge_straight_runs(group: np.ndarray, is_tp: np.ndarray) -> np.ndarray:
    """Renumber sorted entries' thresholds so that runs of FP-only or of TP-only thresholds merge.

    A run of thresholds holding only FPs is a horizontal stretch of every resample's curve, one of
    only TPs a vertical one; dropping the points inside such a run leaves ``np.interp`` unchanged
    (on a vertical stretch it reads the top point, which stays). Thresholds holding both stay apart.
    LUNA16's curves have about two such runs per nodule instead of a point per candidate.
    """
    if len(group) == 0:
        return group
    n_groups = int(group[-1]) + 1
    has_tp = np.bincount(group, weights=is_tp, minlength=n_groups) > 0
    has_fp = np.bincount(group, weights=~is_tp, minlength=n_groups) > 0
    kind = np.where(has_tp & has_fp, 0, np.where(has_tp, 1, 2))
    starts = np.r_[True, (kind[1:] != kind[:-1]) | (kind[1:] == 0)]
    return (np.cumsum(starts) - 1)[group]


def _cumulative(matrix: scipy.sparse.csr_matrix, weights: np.ndarray) -> np.ndarray:
    """``(B, G + 1)``: each resample's weighted count of the entries at or above each threshold group.

    ``matrix`` ``(G, S)`` counts entries by threshold group and scan, ``weights`` ``(B, S)`` how
    often each resample drew each scan; column 0 is the zero of the curve's ``(0, 0)`` point.
    """
    counts = np.asarray(matrix @ weights.T).T
    return np.concatenate([np.zeros((len(weights), 1), np.int64), np.cumsum(counts, axis=1)], axis=1)


def _bootstrap_sensitivities(entries: FROCEntries, nodules_per_scan: np.ndarray, fp_rates: np.ndarray,
                             n_resamples: int, seed: int, chunk: int) -> np.ndarray:
    """``(B, Q)`` sensitivity of each resample at ``fp_rates`` (see the module's docstring).

    ``chunk`` resamples are computed together (bounds the memory, not the result).
    """
    n_scans = len(nodules_per_scan)
    order, group = _descending_thresholds(entries.probability)
    group = _merge_straight_runs(group, entries.is_tp[order])
    n_groups = int(group[-1]) + 1 if len(group) else 0
    group_of_entry = np.empty_like(group)
    group_of_entry[order] = group

    def thresholds_by_scan(mask: np.ndarray) -> scipy.sparse.csr_matrix:
        """``(G, S)``: entries of each threshold group and scan selected by ``mask``."""
        ones = np.ones(int(mask.sum()), np.int64)
        return scipy.sparse.csr_matrix((ones, (group_of_entry[mask], entries.scan[mask])),
                                       shape=(n_groups, n_scans))

    tp_matrix, fp_matrix = thresholds_by_scan(entries.is_tp), thresholds_by_scan(~entries.is_tp)
    resamples = bootstrap_resamples(n_scans, n_resamples, seed)
    out = np.empty((n_resamples, len(fp_rates)))
    for start in range(0, n_resamples, chunk):
        drawn = resamples[start:start + chunk]
        rows = len(drawn)
        weights = np.bincount((drawn + np.arange(rows)[:, None] * n_scans).ravel(),
                              minlength=rows * n_scans).reshape(rows, n_scans)
        cum_tp, cum_fp = _cumulative(tp_matrix, weights), _cumulative(fp_matrix, weights)
        n_nodules = (weights @ nodules_per_scan).astype(np.float64)[:, None]
        sensitivity = np.divide(cum_tp, n_nodules, out=np.zeros(cum_tp.shape), where=n_nodules > 0)
        out[start:start + rows] = _interp_rows(cum_fp, sensitivity, fp_rates * n_scans)
    return out


def _order_statistic_band(values: np.ndarray, confidence: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean, lower and upper along axis 0, with the official script's order statistics."""
    ranked = np.sort(values, axis=0)
    n = len(ranked)
    tail = (1.0 - confidence) / 2.0
    low, high = int(math.floor(tail * n)), min(int(math.floor((1.0 - tail) * n)), n - 1)
    return ranked.mean(axis=0), ranked[low], ranked[high]


def bootstrap_bands(entries: FROCEntries, nodules_per_scan: np.ndarray, fp_rates: Sequence[float], *,
                    n_resamples: int, seed: int, confidence: float, band_points: int,
                    chunk: int) -> BootstrapBands:
    """Bootstrap over scans (see the module's docstring) of the curve of ``entries``.

    Args:
        entries: the FROC list of all scans.
        nodules_per_scan: ``(S,)`` included nodules on each scan.
        fp_rates: the R FP-per-scan rates the bands and the CPM are read at.
        n_resamples: ``B``, at least 1.
        seed: seed of the resampling (:func:`bootstrap_resamples`).
        confidence: two-sided coverage of the bands, in (0, 1).
        band_points: FP rates, log-spaced over ``fp_rates``' range, at which the band is also kept.
        chunk: resamples computed together (bounds the memory, not the result).
    """
    rates = np.asarray(fp_rates, np.float64)
    grid = np.geomspace(rates.min(), rates.max(), band_points)
    sens = _bootstrap_sensitivities(entries, nodules_per_scan, np.concatenate([rates, grid]), n_resamples,
                                    seed, chunk)
    at_rates, on_grid = sens[:, :len(rates)], sens[:, len(rates):]
    mean, lower, upper = _order_statistic_band(at_rates, confidence)
    cpm_mean, cpm_lower, cpm_upper = _order_statistic_band(at_rates.mean(axis=1), confidence)
    grid_mean, grid_lower, grid_upper = _order_statistic_band(on_grid, confidence)
    return BootstrapBands(n_resamples, seed, confidence, at_rates, mean, lower, upper, float(cpm_mean),
                          float(cpm_lower), float(cpm_upper), grid, grid_mean, grid_lower, grid_upper)
