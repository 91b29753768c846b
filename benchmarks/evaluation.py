"""Time the LUNA16 FROC evaluation at LUNA16's size.

888 scans, 1186 included nodules and 1300 excluded findings (as many as LUNA16 has), 100
candidates a scan (LUNA16's cap; a quarter of them aimed at findings, the rest scattered in a
300 mm cube), 1000 bootstrap resamples. Prints the wall time of ``evaluate_froc`` on tables in
memory and from the CSV files (reading included), and the resulting CPM with its band.

    python benchmarks/evaluation.py [--scans 888] [--candidates 100] [--bootstraps 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np

from SCPMNoduleLib.evaluation import EvaluationConfig, evaluate_froc
from SCPMNoduleLib.io import Findings, write_annotations, write_candidates, write_seriesuids


def synthetic_study(n_scans: int, per_scan: int, n_nodules: int, n_excluded: int, seed: int):
    """Series list, annotations, excluded findings and candidates like LUNA16's (see the docstring)."""
    rng = np.random.default_rng(seed)
    uids = np.array([f"1.3.6.1.4.1.14519.5.2.1.6279.6001.{i:012d}" for i in range(n_scans)])

    def findings(count: int, diameters: np.ndarray) -> Findings:
        return Findings.from_columns(uids[rng.integers(0, n_scans, count)],
                                     rng.uniform(-150, 150, (count, 3)),
                                     diameters_mm=diameters)

    nodules = findings(n_nodules, rng.uniform(3.0, 30.0, n_nodules))
    unknown_size = rng.random(n_excluded) < 0.5  # LUNA16's excluded findings often have diameter -1
    excluded = findings(n_excluded, np.where(unknown_size, -1.0, rng.uniform(2.0, 10.0, n_excluded)))
    scan = np.repeat(np.arange(n_scans), per_scan)
    centers = rng.uniform(-150, 150, (len(scan), 3))
    aimed = rng.random(len(scan)) < 0.25
    finding_uids = np.concatenate([nodules.seriesuids, excluded.seriesuids])
    finding_centers = np.concatenate([nodules.centers_xyz_mm, excluded.centers_xyz_mm])
    target = rng.integers(0, len(finding_uids), int(aimed.sum()))
    scan[aimed] = np.searchsorted(uids, finding_uids[target])
    centers[aimed] = finding_centers[target] + rng.normal(0.0, 2.0, (int(aimed.sum()), 3))
    probabilities = np.where(aimed, rng.beta(5, 2, len(scan)), rng.beta(1, 6, len(scan)))
    candidates = Findings.from_columns(uids[scan], centers, probabilities=probabilities)
    return uids, nodules, excluded, candidates


def timed(function, repeats: int) -> tuple[float, object]:
    seconds, result = [], None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds), result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=888)
    parser.add_argument("--candidates", type=int, default=100, help="candidates per scan")
    parser.add_argument("--nodules", type=int, default=1186)
    parser.add_argument("--excluded", type=int, default=1300)
    parser.add_argument("--bootstraps", type=int, default=1000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    uids, nodules, excluded, candidates = synthetic_study(args.scans, args.candidates, args.nodules,
                                                          args.excluded, args.seed)
    config = EvaluationConfig(n_bootstraps=args.bootstraps)
    in_memory, result = timed(lambda: evaluate_froc(nodules, excluded, uids, candidates, config),
                              args.repeats)
    without_bootstrap, _ = timed(lambda: evaluate_froc(nodules, excluded, uids, candidates,
                                                       EvaluationConfig(n_bootstraps=0)), args.repeats)
    with tempfile.TemporaryDirectory() as folder:
        names = ("annotations.csv", "excluded.csv", "seriesuids.csv", "candidates.csv")
        paths = [Path(folder) / name for name in names]
        write_annotations(paths[0], nodules)
        write_annotations(paths[1], excluded)
        write_seriesuids(paths[2], uids)
        write_candidates(paths[3], candidates, with_diameter=False)
        from_files, _ = timed(lambda: evaluate_froc(*paths, config), args.repeats)

    b = result.bootstrap
    print(f"evaluate_froc: {args.scans} scans x {args.candidates} candidates, "
          f"{result.counts.n_nodules} nodules, {len(excluded)} excluded findings, "
          f"{args.bootstraps} bootstraps, {os.cpu_count()} CPUs")
    print(f"  in memory: {in_memory:.2f} s (without the bootstrap {without_bootstrap:.2f} s); "
          f"from CSV files: {from_files:.2f} s  (median of {args.repeats})")
    print(f"  CPM {result.cpm:.3f} [{b.cpm_lower:.3f}, {b.cpm_upper:.3f}], "
          f"{result.counts.n_false_positives / args.scans:.1f} FPs/scan at the lowest threshold")


if __name__ == "__main__":
    main()
