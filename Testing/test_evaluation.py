"""LUNA16 FROC evaluation: hand-worked cases, a plain-loop oracle, the bootstrap, the command."""

import json
import logging
import math

import numpy as np
import pytest

from SCPMNoduleLib.cli import main
from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.evaluation import (
    FP_RATES,
    EvaluationConfig,
    evaluate_froc,
    luna16_hit,
    read_froc_summary,
    squared_distance_mm2,
)
from SCPMNoduleLib.froc import bootstrap_resamples
from SCPMNoduleLib.io import Findings, write_annotations, write_candidates, write_seriesuids
from SCPMNoduleLib.plotting import plot_froc

NO_BOOTSTRAP = EvaluationConfig(n_bootstraps=0)


def nodules(*rows):
    """Findings from ``(uid, x, y, z, diameter_mm)`` rows."""
    if not rows:
        return Findings.empty()
    return Findings.from_columns([r[0] for r in rows], [r[1:4] for r in rows],
                                 diameters_mm=[r[4] for r in rows])


def marks(*rows):
    """Candidates from ``(uid, x, y, z, probability)`` rows."""
    if not rows:
        return Findings.empty()
    return Findings.from_columns([r[0] for r in rows], [r[1:4] for r in rows],
                                 probabilities=[r[4] for r in rows])


def far(uid, probability, x=200.0):
    """A candidate nowhere near any nodule of these tests."""
    return (uid, x, 200.0, 200.0, probability)


# ----------------------------------------------------------------------------- hand-worked cases


def test_candidate_exactly_on_the_radius_misses_and_counts_as_fp():
    # Nodule of 10 mm at the origin: r^2 = 25. (5,0,0) and (3,4,0) are at distance^2 9+16 = 25,
    # not < 25: misses, so FPs. (3,3.9,0): 9 + 15.21 = 24.21 < 25: the hit.
    annotations = nodules(("a", 0, 0, 0, 10.0))
    on_sphere = marks(("a", 5, 0, 0, 0.9), ("a", 3, 4, 0, 0.8))
    result = evaluate_froc(annotations, Findings.empty(), ["a"], on_sphere, NO_BOOTSTRAP)
    assert result.counts.n_detected == 0 and result.counts.n_false_positives == 2
    assert not result.nodule_hit[0] and np.isnan(result.nodules.probabilities[0])
    np.testing.assert_array_equal(result.sensitivities, np.zeros(7))
    inside = marks(("a", 5, 0, 0, 0.9), ("a", 3, 3.9, 0, 0.8))
    result = evaluate_froc(annotations, Findings.empty(), ["a"], inside, NO_BOOTSTRAP)
    assert result.counts.n_detected == 1 and result.counts.n_false_positives == 1
    assert result.nodules.probabilities[0] == 0.8


def test_hit_rule_is_strictly_inside_the_sphere_and_broadcasts():
    # Nodule at the origin, diameter 10 mm (r^2 = 25); points at 4.9, 5 and (3, 4, 0) mm = 5 mm.
    points = np.array([[4.9, 0.0, 0.0], [5.0, 0.0, 0.0], [3.0, 4.0, 0.0]])
    squared = squared_distance_mm2(points, np.zeros(3))
    np.testing.assert_array_equal(squared, [4.9 * 4.9, 25.0, 25.0])
    np.testing.assert_array_equal(luna16_hit(squared, 10.0), [True, False, False])
    # (points, spheres) matrix: the second sphere (diameter 12 mm at x = 1) holds all three.
    matrix = luna16_hit(squared_distance_mm2(points[:, None], np.array([[0, 0, 0], [1, 0, 0]])[None]),
                        np.array([10.0, 12.0])[None])
    np.testing.assert_array_equal(matrix, [[True, True], [False, True], [False, True]])


def test_negative_diameter_means_10_mm():
    # diameter -1 -> 10 mm -> r^2 = 25: (4.9,0,0) hits (24.01 < 25), (5,0,0) does not.
    annotations = nodules(("a", 0, 0, 0, -1.0), ("a", 100, 0, 0, -1.0))
    result = evaluate_froc(annotations, Findings.empty(), ["a"],
                           marks(("a", 4.9, 0, 0, 0.5), ("a", 105, 0, 0, 0.4)), NO_BOOTSTRAP)
    np.testing.assert_array_equal(result.nodule_hit, [True, False])


def test_two_candidates_on_one_nodule_give_one_tp_with_the_higher_probability():
    # Entries: TP 0.9 (the 0.5 duplicate is neither TP nor FP), FP 0.7.
    # Curve (fp, tp): (0,0), (0,1) at 0.9, (1,1) at 0.7; 1 scan, 1 nodule -> sensitivity 1 from
    # 0 FPs/scan on, so 1 at every rate and CPM = 1.
    result = evaluate_froc(nodules(("a", 0, 0, 0, 10.0)), Findings.empty(), ["a"],
                           marks(("a", 1, 0, 0, 0.9), ("a", 0, 1, 0, 0.5), far("a", 0.7)), NO_BOOTSTRAP)
    assert result.counts.n_detected == 1
    assert result.counts.n_false_positives == 1
    assert result.counts.n_duplicate_hits == 1
    assert result.nodules.probabilities[0] == 0.9
    np.testing.assert_array_equal(result.curve.fps_per_scan, [0, 0, 1])
    np.testing.assert_array_equal(result.curve.sensitivity, [0, 1, 1])
    np.testing.assert_array_equal(result.curve.thresholds, [np.inf, 0.9, 0.7])
    assert result.cpm == 1.0


def test_candidate_on_an_excluded_finding_changes_neither_count():
    annotations = nodules(("a", 0, 0, 0, 10.0))
    excluded = nodules(("a", 50, 0, 0, 8.0))
    base = [("a", 1, 0, 0, 0.6), far("a", 0.7)]
    without = evaluate_froc(annotations, excluded, ["a"], marks(*base), NO_BOOTSTRAP)
    # 0.95 at distance 1 from the excluded finding (r^2 = 16): neither TP nor FP.
    with_mark = evaluate_froc(annotations, excluded, ["a"], marks(*base, ("a", 51, 0, 0, 0.95)), NO_BOOTSTRAP)
    for result in (without, with_mark):
        assert (result.counts.n_detected, result.counts.n_false_positives) == (1, 1)
    assert with_mark.counts.n_on_excluded == 1
    np.testing.assert_array_equal(with_mark.curve.fps_per_scan, without.curve.fps_per_scan)
    np.testing.assert_array_equal(with_mark.curve.sensitivity, without.curve.sensitivity)


@pytest.mark.parametrize("excluded_first", [False, True])
def test_candidate_on_an_included_and_an_excluded_finding_is_a_tp(excluded_first):
    # Included at 0, excluded at (3,0,0), both 10 mm; the mark at (1.5,0,0) is 2.25 < 25 from both.
    annotations = nodules(("a", 0, 0, 0, 10.0))
    excluded = nodules(("a", 3, 0, 0, 10.0))
    rows = [("a", 1.5, 0, 0, 0.8), far("a", 0.3)]
    result = evaluate_froc(annotations, excluded, ["a"], marks(*(rows[::-1] if excluded_first else rows)),
                           NO_BOOTSTRAP)
    assert result.counts.n_detected == 1 and result.nodules.probabilities[0] == 0.8
    assert result.counts.n_false_positives == 1 and result.counts.n_on_excluded == 0


def test_candidate_on_two_included_nodules_counts_for_both():
    # Nodules at 0 and (6,0,0), 10 mm each; the mark at (3,0,0) is 9 < 25 from both.
    result = evaluate_froc(nodules(("a", 0, 0, 0, 10.0), ("a", 6, 0, 0, 10.0)), Findings.empty(), ["a"],
                           marks(("a", 3, 0, 0, 0.8)), NO_BOOTSTRAP)
    np.testing.assert_array_equal(result.nodule_hit, [True, True])
    assert result.counts.n_candidates == 1 and result.counts.n_false_positives == 0


def test_nearest_candidate_is_the_closest_of_the_same_scan_hit_or_not():
    # Scan a: a 4 mm nodule (r = 2) at the origin, marks at distance 3 (p 0.6) and 4 (p 0.9): a
    # miss whose nearest mark is the 0.6 one, 3 mm away. Scan b: a 10 mm nodule hit by a mark
    # 1 mm away; the mark on b at a's nodule position is on another scan and does not count for
    # it. Scan c: a nodule on a scan without marks: nothing near it.
    annotations = nodules(("a", 0, 0, 0, 4.0), ("b", 50, 0, 0, 10.0), ("c", 0, 0, 0, 6.0))
    candidates = marks(("a", 3, 0, 0, 0.6), ("a", 0, 4, 0, 0.9), ("b", 51, 0, 0, 0.5), ("b", 0, 0, 0, 0.8))
    result = evaluate_froc(annotations, Findings.empty(), ["a", "b", "c"], candidates, NO_BOOTSTRAP)
    np.testing.assert_array_equal(result.nodule_hit, [False, True, False])
    np.testing.assert_array_equal(result.nearest_candidate_mm, [3.0, 1.0, np.inf])
    np.testing.assert_array_equal(result.nearest_candidate_probability, [0.6, 0.5, np.nan])


def test_seven_sensitivities_worked_by_hand():
    # Scan a: nodules N1 (0,0,0) 10 mm, N2 (50,0,0) 8 mm; scan b: N3 (0,0,0) 6 mm and
    # N4 (100,100,100) diameter -1, never hit. S = 2 scans, N = 4 nodules.
    annotations = nodules(("a", 0, 0, 0, 10.0), ("a", 50, 0, 0, 8.0), ("b", 0, 0, 0, 6.0),
                          ("b", 100, 100, 100, -1.0))
    candidates = marks(("a", 1, 1, 1, 0.9), far("a", 0.8), ("a", 50, 1, 0, 0.6), far("a", 0.5),
                       far("b", 0.95), ("b", 0, 0, 2, 0.4), far("b", 0.3, x=300), far("b", 0.2, x=400))
    result = evaluate_froc(annotations, Findings.empty(), ["a", "b"], candidates, NO_BOOTSTRAP)
    # Entries by probability: .95 FP, .9 TP, .8 FP, .6 TP, .5 FP, .4 TP, .3 FP, .2 FP.
    # Cumulative (fp, tp) at each threshold: (1,0) (1,1) (2,1) (2,2) (3,2) (3,3) (4,3) (5,3).
    # (4,3) is the midpoint of (3,3) and (5,3) with equal steps: dropped (scikit-learn's
    # drop_intermediate). With (0,0) in front, FPs/scan = fp/2 and sensitivity = tp/4:
    np.testing.assert_array_equal(result.curve.fps_per_scan, [0, .5, .5, 1, 1, 1.5, 1.5, 2.5])
    np.testing.assert_array_equal(result.curve.sensitivity, [0, 0, .25, .25, .5, .5, .75, .75])
    np.testing.assert_array_equal(result.curve.thresholds, [np.inf, .95, .9, .8, .6, .5, .4, .2])
    # 1/8, 1/4: between (0,0) and (.5,0) -> 0. 1/2: the last point at .5 -> .25. 1: the last
    # point at 1 -> .5. 2: between (1.5,.75) and (2.5,.75) -> .75. 4, 8: past the end -> .75.
    np.testing.assert_array_equal(result.sensitivities, [0, 0, .25, .5, .75, .75, .75])
    assert result.cpm == pytest.approx(3.0 / 7.0, abs=1e-15)  # (0+0+.25+.5+.75*3) / 7
    assert result.fp_rates == FP_RATES
    # By size: N3 (6 mm) and N4 (-1 -> 10 mm) are 6-10 mm, N1 (10 mm) too; N2 (8 mm) as well.
    # So <6 mm has none (NaN), 6-10 mm all four: the whole curve, .5 at 1 and .75 at 4.
    small, middle, large = result.by_size
    assert small.n_nodules == 0 and np.isnan(small.sensitivities).all()
    assert middle.n_nodules == 4 and middle.n_detected == 3
    np.testing.assert_array_equal(middle.sensitivities, [0.5, 0.75])
    assert large.n_nodules == 0


def test_per_size_classes_share_the_fp_axis():
    # Scan a: small nodule 4 mm at 0 (hit at .9), large 20 mm at (100,0,0) (hit at .5), FPs at .8, .6.
    # All: entries .9 TP, .8 FP, .6 FP, .5 TP; 1 scan; (fp,tp): (0,1) (1,1) (2,1) (2,2) -> (0,1) kept
    # ((1,1) is the midpoint of (0,1),(2,1)): points (0,0),(0,1),(2,1),(2,2) -> at 1: .5, at 4: 1.
    # <6 mm: entries .9 TP, .8 FP, .6 FP -> (0,0),(0,1),(2,1) over 1 nodule -> 1 at 1 and 4.
    # >10 mm: entries .8 FP, .6 FP, .5 TP -> (1,0),(2,0),(2,1) (no midpoint: the steps differ),
    # (0,0) in front: at 1 FP/scan the point (1,0): 0; at 4, past the end: 1.
    annotations = nodules(("a", 0, 0, 0, 4.0), ("a", 100, 0, 0, 20.0))
    candidates = marks(("a", 0, 0, 1, 0.9), far("a", 0.8), far("a", 0.6, x=300), ("a", 100, 5, 0, 0.5))
    result = evaluate_froc(annotations, Findings.empty(), ["a"], candidates, NO_BOOTSTRAP)
    small, middle, large = result.by_size
    assert [c.label for c in result.by_size] == ["<6 mm", "6-10 mm", ">10 mm"]
    np.testing.assert_array_equal(small.sensitivities, [1.0, 1.0])
    np.testing.assert_array_equal(large.sensitivities, [0.0, 1.0])
    assert middle.n_nodules == 0
    np.testing.assert_array_equal(result.curve.at([1.0, 4.0]), [0.5, 1.0])


def test_cap_keeps_100_per_scan_and_drops_every_tie_at_the_cut_off():
    # 98 FPs at .501 ... .598 (distinct), then 5 candidates tied at .4 (ranks 99-103), one of
    # them on the nodule. The 101st-highest is .4, kept are p > .4: 98 marks, all five ties go
    # although only three are past rank 100. The nodule is missed.
    fps = [far("a", 0.5 + 0.001 * (k + 1), x=200 + k) for k in range(98)]
    ties = [("a", 0, 0, 1, 0.4)] + [far("a", 0.4, x=400 + k) for k in range(4)]
    annotations = nodules(("a", 0, 0, 0, 10.0))
    result = evaluate_froc(annotations, Findings.empty(), ["a"], marks(*fps, *ties), NO_BOOTSTRAP)
    assert (result.counts.n_candidates, result.counts.n_over_cap) == (98, 5)
    assert result.counts.n_detected == 0
    # 101 distinct: the 101st (lowest, here the nodule's) goes, 100 stay.
    distinct = fps + [far("a", 0.45, x=500), far("a", 0.44, x=501), ("a", 0, 0, 1, 0.43)]
    result = evaluate_froc(annotations, Findings.empty(), ["a"], marks(*distinct), NO_BOOTSTRAP)
    assert (result.counts.n_candidates, result.counts.n_over_cap, result.counts.n_detected) == (100, 1, 0)
    # Exactly 100, with ties: the cap does not apply.
    hundred = fps + [("a", 0, 0, 1, 0.4), far("a", 0.4, x=600)]
    result = evaluate_froc(annotations, Findings.empty(), ["a"], marks(*hundred), NO_BOOTSTRAP)
    assert (result.counts.n_candidates, result.counts.n_detected) == (100, 1)
    # The cap is per scan: 100 more marks on scan b do not push scan a's out.
    other = [far("b", 0.99, x=200 + k) for k in range(100)]
    result = evaluate_froc(annotations, Findings.empty(), ["a", "b"], marks(*hundred, *other), NO_BOOTSTRAP)
    assert (result.counts.n_candidates, result.counts.n_detected) == (200, 1)


def test_empty_candidate_file_gives_zero_sensitivity(tmp_path):
    path = tmp_path / "candidates.csv"
    write_candidates(path, Findings.empty(), with_diameter=False)
    result = evaluate_froc(nodules(("a", 0, 0, 0, 10.0)), Findings.empty(), ["a", "b"], path,
                           EvaluationConfig(n_bootstraps=20))
    np.testing.assert_array_equal(result.sensitivities, np.zeros(7))
    assert result.cpm == 0.0
    counts = result.counts
    assert (counts.n_candidates, counts.n_false_positives, counts.n_detected) == (0, 0, 0)
    np.testing.assert_array_equal(result.bootstrap.upper, np.zeros(7))
    assert not result.nodule_hit.any()


def test_scan_without_candidates_counts_in_the_fp_denominator():
    # Scan a: nodule hit at .7 between FPs .9, .8 and .6, .5. Scans b, c, d have no candidates;
    # b has a nodule (missed). S = 4, N = 2. Entries .9 F .8 F .7 T .6 F .5 F:
    # (fp,tp) = (1,0) (2,0) (2,1) (3,1) (4,1); (3,1) is a midpoint: dropped.
    # Points (0,0) (1,0) (2,0) (2,1) (4,1) -> FPs/scan /4: 0 .25 .5 .5 1; sensitivity /2: 0 0 0 .5 .5.
    # 1/8, 1/4 -> 0; 1/2 (last point at .5) -> .5; beyond -> .5. (With only scan a in the
    # denominator, 1/2 and 1 would read 0.)
    annotations = nodules(("a", 0, 0, 0, 10.0), ("b", 0, 0, 0, 10.0))
    candidates = marks(far("a", 0.9), far("a", 0.8, x=300), ("a", 1, 0, 0, 0.7), far("a", 0.6, x=400),
                       far("a", 0.5, x=500))
    result = evaluate_froc(annotations, Findings.empty(), ["a", "b", "c", "d"], candidates, NO_BOOTSTRAP)
    np.testing.assert_array_equal(result.curve.fps_per_scan, [0, .25, .5, .5, 1])
    np.testing.assert_array_equal(result.sensitivities, [0, 0, .5, .5, .5, .5, .5])
    alone = evaluate_froc(annotations, Findings.empty(), ["a"], candidates, NO_BOOTSTRAP)
    np.testing.assert_array_equal(alone.sensitivities, [0, 0, 0, 0, 1, 1, 1])


def test_candidates_and_nodules_of_unlisted_scans_are_left_out(caplog):
    annotations = nodules(("a", 0, 0, 0, 10.0), ("zz", 0, 0, 0, 10.0))
    rows = [("a", 1, 0, 0, 0.6), far("a", 0.5)]
    plain = evaluate_froc(annotations, Findings.empty(), ["a"], marks(*rows), NO_BOOTSTRAP)
    with caplog.at_level(logging.INFO, logger="SCPMNoduleLib.evaluation"):
        extra = evaluate_froc(annotations, Findings.empty(), ["a"],
                              marks(*rows, ("zz", 0, 0, 0, 0.99), far("zz", 0.98), far("yy", 0.97)),
                              NO_BOOTSTRAP)
    assert "3 candidate(s)" in caplog.text
    assert extra.counts.n_unknown_uid == 3 and extra.counts.n_nodules == 1
    assert (extra.counts.n_candidates, extra.counts.n_false_positives) == (2, 1)
    np.testing.assert_array_equal(extra.curve.sensitivity, plain.curve.sensitivity)
    np.testing.assert_array_equal(extra.curve.fps_per_scan, plain.curve.fps_per_scan)


def test_pandas_data_frames_are_accepted():
    pd = pytest.importorskip("pandas")
    annotations = pd.DataFrame({"seriesuid": ["a"], "coordX": [0.0], "coordY": [0.0], "coordZ": [0.0],
                                "diameter_mm": [10.0]})
    excluded = annotations.iloc[:0]
    candidates = pd.DataFrame({"seriesuid": ["a", "a"], "coordX": [1.0, 200.0], "coordY": [0.0, 0.0],
                               "coordZ": [0.0, 0.0], "probability": [0.9, 0.7]})
    result = evaluate_froc(annotations, excluded, pd.Series(["a"]), candidates, NO_BOOTSTRAP)
    assert result.counts.n_detected == 1 and result.counts.n_false_positives == 1


# ----------------------------------------------------------------------------- the oracle


def oracle_froc(included, excluded, uids, candidates, cap=100):
    """LUNA16's rules written as plainly as possible: rows are tuples, loops everywhere.

    Returns (fps_per_scan, sensitivity, thresholds, seven sensitivities).
    """
    entries = []  # (probability, 1 for a detected nodule / 0 for a false positive)
    n_nodules = 0
    for uid in uids:
        marks_here = [c for c in candidates if c[0] == uid]
        if len(marks_here) > cap:
            cut = sorted((c[4] for c in marks_here), reverse=True)[cap]
            marks_here = [c for c in marks_here if c[4] > cut]
        findings = ([(n, True) for n in included if n[0] == uid]
                    + [(n, False) for n in excluded if n[0] == uid])
        not_claimed = set(range(len(marks_here)))
        for finding, is_included in findings:
            diameter = finding[4] if finding[4] >= 0 else 10.0
            hits = []
            for k, mark in enumerate(marks_here):
                dx, dy, dz = mark[1] - finding[1], mark[2] - finding[2], mark[3] - finding[3]
                if dx * dx + dy * dy + dz * dz < (diameter / 2) ** 2:
                    hits.append(k)
            not_claimed -= set(hits)
            if is_included:
                n_nodules += 1
                if hits:
                    entries.append((max(marks_here[k][4] for k in hits), 1))
        entries += [(marks_here[k][4], 0) for k in sorted(not_claimed)]

    entries.sort(key=lambda entry: -entry[0])
    points = []  # (fp, tp, threshold) after the last entry of each probability
    fp = tp = 0
    for i, (probability, is_tp) in enumerate(entries):
        tp += is_tp
        fp += 1 - is_tp
        if i == len(entries) - 1 or entries[i + 1][0] != probability:
            points.append((fp, tp, probability))
    if len(points) > 2:  # drop points halfway on a straight line between their neighbours
        kept = [points[0]]
        for before, point, after in zip(points, points[1:], points[2:]):
            if (after[0] - point[0], after[1] - point[1]) != (point[0] - before[0], point[1] - before[1]):
                kept.append(point)
        points = kept + [points[-1]]
    points = [(0, 0, math.inf)] + points
    total_fp, total_tp = points[-1][0], points[-1][1]
    fps = [p[0] / total_fp * total_fp / len(uids) if total_fp else 0.0 for p in points]
    sens = [p[1] / total_tp * total_tp / n_nodules if total_tp else 0.0 for p in points]
    return fps, sens, [p[2] for p in points], np.interp(FP_RATES, fps, sens)


def random_study(seed, n_scans=60):
    """Nodules, excluded findings and candidates on an integer grid (so distances tie the radius)."""
    rng = np.random.default_rng(seed)
    uids = [f"1.3.6.1.{seed}.{i}" for i in range(n_scans)]
    included, excluded, candidates = [], [], []
    diameters = [-1.0, 4.0, 5.0, 6.0, 8.0, 10.0, 14.0, 24.0]
    for index, uid in enumerate(uids):
        here = []
        for table, count in ((included, rng.integers(0, 4)), (excluded, rng.integers(0, 3))):
            for _ in range(count):
                row = (uid, *rng.integers(-40, 40, 3).astype(float), float(rng.choice(diameters)))
                table.append(row)
                here.append(row)
        n_marks = 0 if index < 5 else int(rng.integers(0, 130))
        for _ in range(n_marks):
            if here and rng.random() < 0.35:  # aimed at a finding: mostly a hit, scored higher
                target = here[rng.integers(len(here))]
                xyz = np.asarray(target[1:4]) + rng.integers(-3, 4, 3)
                probability = 0.4 + 0.6 * rng.random()
            else:
                xyz = rng.integers(-40, 40, 3).astype(float)
                probability = 0.9 * rng.random() ** 6
            candidates.append((uid, *map(float, xyz), round(float(probability), 2)))  # 2 digits: ties
    candidates += [("1.2.unlisted", 0.0, 0.0, 0.0, 0.5)] * 3
    return included, excluded, uids, candidates


def test_agrees_with_the_plain_loop_oracle_on_a_random_study():
    included, excluded, uids, candidates = random_study(seed=3)
    result = evaluate_froc(nodules(*included), nodules(*excluded), uids, marks(*candidates), NO_BOOTSTRAP)
    fps, sens, thresholds, seven = oracle_froc(included, excluded, uids, candidates)
    # The study exercises what it should: the cap, misses, excluded hits, double hits.
    assert result.counts.n_over_cap > 0 and result.counts.n_on_excluded > 0
    assert result.counts.n_duplicate_hits > 0 and 0 < result.counts.n_detected < result.counts.n_nodules
    np.testing.assert_array_equal(result.sensitivities, seven)
    np.testing.assert_array_equal(result.curve.fps_per_scan, fps)
    np.testing.assert_array_equal(result.curve.sensitivity, sens)
    np.testing.assert_array_equal(result.curve.thresholds, thresholds)


def test_bootstrap_resamples_agree_with_the_oracle_on_resampled_scans():
    included, excluded, uids, candidates = random_study(seed=5, n_scans=50)
    config = EvaluationConfig(n_bootstraps=40, seed=11, bootstrap_chunk=16)
    result = evaluate_froc(nodules(*included), nodules(*excluded), uids, marks(*candidates), config)
    drawn = bootstrap_resamples(len(uids), 40, 11)
    for b in (0, 17, 39):
        # Resample b as a study of its own: the k-th draw of a scan becomes scan "<uid>#k".
        copies = {}
        names = []
        for scan in drawn[b]:
            copies[scan] = copies.get(scan, 0) + 1
            names.append((uids[scan], f"{uids[scan]}#{copies[scan]}"))

        def rename(rows, names=names):
            return [(new, *row[1:]) for old, new in names for row in rows if row[0] == old]

        *_, seven = oracle_froc(rename(included), rename(excluded), [new for _, new in names],
                                rename(candidates))
        np.testing.assert_allclose(result.bootstrap.sensitivities[b], seven, rtol=0, atol=1e-12)


def test_bootstrap_is_seeded_and_its_band_holds_the_estimate():
    included, excluded, uids, candidates = random_study(seed=7)
    args = (nodules(*included), nodules(*excluded), uids, marks(*candidates))
    first = evaluate_froc(*args, EvaluationConfig(n_bootstraps=200, seed=1))
    again = evaluate_froc(*args, EvaluationConfig(n_bootstraps=200, seed=1, bootstrap_chunk=7))
    other = evaluate_froc(*args, EvaluationConfig(n_bootstraps=200, seed=2))
    np.testing.assert_array_equal(first.bootstrap.sensitivities, again.bootstrap.sensitivities)
    assert not np.array_equal(first.bootstrap.sensitivities, other.bootstrap.sensitivities)
    b = first.bootstrap
    assert np.all(b.lower <= first.sensitivities) and np.all(first.sensitivities <= b.upper)
    assert b.cpm_lower <= first.cpm <= b.cpm_upper
    assert np.all(b.lower < b.upper) and 0.1 < first.sensitivities[0] < first.sensitivities[-1] < 0.9
    # The official order statistics: with 200 values, lower = 6th smallest (index floor(.025*200)=5),
    # upper = index floor(.975*200) = 195.
    ranked = np.sort(b.sensitivities, axis=0)
    np.testing.assert_array_equal(b.lower, ranked[5])
    np.testing.assert_array_equal(b.upper, ranked[195])
    np.testing.assert_array_equal(b.grid_fps_per_scan[[0, -1]], [0.125, 8.0])


# ----------------------------------------------------------------------------- the command


def write_study(directory, seed=3, n_scans=50):
    included, excluded, uids, candidates = random_study(seed, n_scans)
    names = ("annotations", "excluded", "seriesuids", "candidates")
    paths = {name: directory / f"{name}.csv" for name in names}
    write_annotations(paths["annotations"], nodules(*included))
    write_annotations(paths["excluded"], nodules(*excluded))
    write_seriesuids(paths["seriesuids"], uids)
    write_candidates(paths["candidates"], marks(*candidates), with_diameter=False)
    return paths, (included, excluded, uids, candidates)


def evaluate_args(paths, out):
    return ["evaluate", "--annotations", str(paths["annotations"]), "--excluded", str(paths["excluded"]),
            "--seriesuids", str(paths["seriesuids"]), "--candidates", str(paths["candidates"]),
            "--out", str(out)]


def test_command_writes_table_curve_summary_missed_and_plot(tmp_path, capsys):
    paths, (included, excluded, uids, candidates) = write_study(tmp_path)
    weaker = marks(*[c for c in candidates if c[4] < 0.7])
    write_candidates(tmp_path / "weaker.csv", weaker, with_diameter=False)
    out = tmp_path / "out"
    status = main(evaluate_args(paths, out) + ["--compare", f"weaker={tmp_path / 'weaker.csv'}",
                                                "--bootstraps", "50", "--seed", "4"])
    assert status == 0
    printed = capsys.readouterr().out
    assert "CPM" in printed and "weaker" in printed and "95% CI" in printed
    summary = json.loads((out / "froc_summary.json").read_text(encoding="utf-8"))
    fps, sens, thresholds, seven = oracle_froc(included, excluded, uids, candidates)
    main_run = summary["runs"]["candidates"]
    np.testing.assert_array_equal(main_run["sensitivities"], seven)
    assert main_run["bootstrap"]["n_resamples"] == 50 and main_run["bootstrap"]["seed"] == 4
    assert set(summary["runs"]) == {"candidates", "weaker"}
    curve = np.genfromtxt(out / "froc_curve.csv", delimiter=",", names=True, dtype=None, encoding="utf-8")
    mine = curve[curve["run"] == "candidates"]
    np.testing.assert_array_equal(mine["fps_per_scan"], fps)
    np.testing.assert_array_equal(mine["sensitivity"], sens)
    missed = np.genfromtxt(out / "missed_nodules.csv", delimiter=",", names=True, dtype=None, encoding="utf-8")
    assert missed.dtype.names == ("seriesuid", "coordX", "coordY", "coordZ", "diameter_mm",
                                  "nearest_candidate_mm", "nearest_candidate_probability")
    assert len(missed) == main_run["counts"]["n_nodules"] - main_run["counts"]["n_detected"] > 0
    for row in missed:  # a plain loop over the scans that hold no more than the 100 kept candidates
        own = [c for c in candidates if c[0] == row["seriesuid"]]
        if len(own) > 100:
            continue
        distances = [math.dist(c[1:4], (row["coordX"], row["coordY"], row["coordZ"])) for c in own]
        nearest = min(distances, default=math.inf)
        assert row["nearest_candidate_mm"] == pytest.approx(nearest, rel=1e-12)
        radius = (10.0 if row["diameter_mm"] < 0 else row["diameter_mm"]) / 2
        assert nearest >= radius
        if own:
            assert row["nearest_candidate_probability"] == own[int(np.argmin(distances))][4]
    # read back as export and the precision check read it: the main run's figures and the inputs
    read = read_froc_summary(out / "froc_summary.json")
    assert read.metrics["evaluation"] == "candidates" and read.metrics["sensitivities"] == list(seven)
    assert read.metrics["cpm"] == pytest.approx(float(np.mean(seven)))
    assert read.metrics["n_scans"] == main_run["counts"]["n_scans"] and len(read.metrics["cpm_95ci"]) == 2
    assert read.inputs["candidates:weaker"] == str(tmp_path / "weaker.csv")
    assert (out / "froc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert sorted(p.name for p in out.iterdir()) == sorted(
        ["froc.png", "froc_curve.csv", "froc_summary.json", "missed_nodules.csv"])


@pytest.mark.parametrize("problem", ["missing", "header", "compare"])
def test_command_bad_input_exits_2_with_one_sentence_and_no_output(tmp_path, capsys, problem):
    paths, _ = write_study(tmp_path, n_scans=10)
    extra = []
    if problem == "missing":
        paths["candidates"] = tmp_path / "nowhere.csv"
    elif problem == "header":
        paths["annotations"].write_text("seriesuid,x,y,z,diameter_mm\na,1,2,3,4\n", encoding="utf-8")
    else:
        extra = ["--compare", "no-equals-sign"]
    out = tmp_path / "out"
    assert main(evaluate_args(paths, out) + extra) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1 and message.startswith("scpm-nodule evaluate: error:")
    expected = {"missing": "nowhere.csv", "header": "coordX", "compare": "no-equals-sign"}[problem]
    assert expected in message
    assert not out.exists() or not any(out.iterdir())


def test_plot_without_bootstrap_writes_a_png(tmp_path):
    included, excluded, uids, candidates = random_study(seed=2, n_scans=50)
    result = evaluate_froc(nodules(*included), nodules(*excluded), uids, marks(*candidates), NO_BOOTSTRAP)
    plot_froc({"plain": result}, tmp_path / "froc.png")
    assert (tmp_path / "froc.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert [p.name for p in tmp_path.iterdir()] == ["froc.png"]


@pytest.mark.parametrize("settings, sentence", [
    ({"fp_rates": ()}, "EvaluationConfig.fp_rates: () is not a non-empty list of positive FP rates."),
    ({"fp_rates": (0.125, 0.0)},
     "EvaluationConfig.fp_rates: (0.125, 0.0) is not a non-empty list of positive FP rates."),
    ({"size_fp_rates": (-1.0,)},
     "EvaluationConfig.size_fp_rates: (-1.0,) is not a non-empty list of positive FP rates."),
    ({"max_candidates_per_scan": 0}, "EvaluationConfig.max_candidates_per_scan: 0 is not at least 1 (or None)."),
    ({"default_diameter_mm": 0.0}, "EvaluationConfig.default_diameter_mm: 0.0 is not a positive diameter."),
    ({"n_bootstraps": -1}, "EvaluationConfig.n_bootstraps: -1 is negative."),
    ({"confidence": 1.0}, "EvaluationConfig.confidence: 1.0 is not in (0, 1)."),
    ({"band_points": 0}, "EvaluationConfig.band_points: 0 is not at least 1."),
    ({"bootstrap_chunk": 0}, "EvaluationConfig.bootstrap_chunk: 0 is not at least 1."),
    ({"size_edges_mm": (10.0, 6.0)}, "EvaluationConfig.size_edges_mm: (10.0, 6.0) is not two increasing diameters."),
])
def test_config_refuses_numbers_the_evaluation_cannot_use(settings, sentence):
    with pytest.raises(UserInputError) as raised:
        EvaluationConfig(**settings)
    assert str(raised.value) == sentence
    assert EvaluationConfig(max_candidates_per_scan=None, n_bootstraps=0).max_candidates_per_scan is None


@pytest.mark.parametrize("diameter", [-3.0, 0.0])
def test_command_refuses_a_diameter_that_is_neither_positive_nor_minus_one(tmp_path, capsys, diameter):
    paths, _ = write_study(tmp_path, n_scans=10)
    table = nodules(("1.2.9", 0.0, 0.0, 0.0, -1.0), ("1.2.8", 0.0, 0.0, 0.0, diameter))  # -1: LUNA16's "unknown"
    write_annotations(paths["excluded"], table)
    out = tmp_path / "out"
    assert main(evaluate_args(paths, out) + ["--bootstraps", "0"]) == 2
    message = capsys.readouterr().err.strip()
    assert len(message.splitlines()) == 1
    assert (f"{paths['excluded']}: seriesuid 1.2.8 has diameter_mm {diameter:g}; a diameter is positive, or -1"
            in message)
    assert not out.exists()


def test_probabilities_outside_0_1_are_accepted_with_a_warning(tmp_path, capsys, caplog):
    paths, (included, excluded, uids, candidates) = write_study(tmp_path, n_scans=10)
    logits = marks(*[(c[0], *c[1:4], 4.0 * c[4] - 2.0) for c in candidates])  # same order, not probabilities
    write_candidates(paths["candidates"], logits, with_diameter=False)
    caplog.set_level(logging.WARNING)
    assert main(evaluate_args(paths, tmp_path / "out") + ["--bootstraps", "0"]) == 0
    assert f"{paths['candidates']}: " in caplog.text and "outside [0, 1]" in caplog.text
    plain = evaluate_froc(nodules(*included), nodules(*excluded), uids, marks(*candidates), NO_BOOTSTRAP)
    summary = json.loads((tmp_path / "out" / "froc_summary.json").read_text(encoding="utf-8"))
    np.testing.assert_array_equal(summary["runs"]["candidates"]["sensitivities"], plain.sensitivities)
