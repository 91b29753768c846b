"""What the second stage costs: seconds to re-score a scan's candidates against the rest of detection.

For each scan (full-size phantoms by default, or files given with ``--scans``), the demo detector
runs once (:meth:`~SCPMNoduleLib.inference.Detector.predict_maps`: resampling, lung crop and the
network, timed once); then :meth:`~SCPMNoduleLib.inference.Detector.first_stage` (decode + NMS) and
:meth:`~SCPMNoduleLib.inference.Detector.rescore` (patches cut from the crop, the classifier's
forward pass, the log-odds combination) are each timed ``--repeats`` times and the fastest run is
printed.

    python benchmarks/candidate_classifier.py [--model demo] [--seeds 1000 1001] [--scans a.nii.gz ...]
                                              [--threads 2] [--repeats 5]
"""

from __future__ import annotations

import argparse
import time
from functools import partial
from pathlib import Path

import torch


def _best_seconds(function, repeats: int) -> float:
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        best = min(best, time.perf_counter() - start)
    return best


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="demo")
    parser.add_argument("--seeds", type=int, nargs="*", default=[1000, 1001])
    parser.add_argument("--scans", nargs="*", default=[], help="image files to time instead of phantoms")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    from SCPMNoduleLib.inference import Detector, InferenceConfig
    from SCPMNoduleLib.io import read_scan
    from SCPMNoduleLib.phantom import make_phantom

    detector = Detector.from_checkpoint(args.model, device="cpu", config=InferenceConfig(score_threshold=0.01))
    classifier = detector.candidate_classifier
    if classifier is None:
        raise SystemExit(f"{args.model}: this checkpoint has no candidate classifier")
    images = [(Path(path).name, read_scan(path)) for path in args.scans]
    if not args.scans:
        images = [(f"phantom {seed}", make_phantom(seed, "full")[0]) for seed in args.seeds]
    print(f"{args.model}: classifier {classifier.config}, {args.threads} thread(s), best of {args.repeats}")
    for name, image in images:
        start = time.perf_counter()
        maps, prepared = detector.predict_maps(image)  # the network runs once per scan
        network_s = time.perf_counter() - start
        candidates = detector.first_stage(maps, prepared)
        first_s = _best_seconds(partial(detector.first_stage, maps, prepared), args.repeats)
        rescore_s = _best_seconds(partial(detector.rescore, prepared, candidates), args.repeats)
        print(f"{name}: {len(candidates.scores)} candidates; resampling + network {network_s:.2f} s, decode + NMS "
              f"{first_s:.3f} s, re-scoring {rescore_s:.3f} s ({1000 * rescore_s / len(candidates.scores):.1f} ms "
              f"per candidate, {100 * rescore_s / network_s:.0f} % of resampling + network)")


if __name__ == "__main__":
    main()
