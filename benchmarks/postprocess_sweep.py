"""CPM of one checkpoint under several post-processing settings, the network run once per scan.

Runs :meth:`Detector.predict_maps` on every scan of a LUNA16-layout folder once, decodes the same
maps with each combination of NMS distance ratio, NMS SIoU threshold and per-level top-n
(:meth:`Detector.decode`), and prints LUNA16's CPM and the sensitivities at 1/8 ... 8 FPs per
scan for each. This is how ``InferenceConfig``'s defaults are tuned; tune on phantoms that
neither training nor the reported test set uses (the project's tuning set is
``scpm-nodule phantom --seed 500 --scans 10 --size full``).

    python benchmarks/postprocess_sweep.py --checkpoint demo --data phantoms/tune \\
        --distance-ratios 0.333 0.4 0.5 --iou-thresholds 0.1 0.2
"""

from __future__ import annotations

import argparse
import itertools
import logging
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from SCPMNoduleLib.evaluation import EvaluationConfig, evaluate_froc
from SCPMNoduleLib.inference import Detector, InferenceConfig, resolve_model
from SCPMNoduleLib.io import read_scan
from Training.cache import find_luna16_scans
from Training.heldout import concat_findings, findings_of, load_model, read_excluded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", default="demo", help="a checkpoint file, a training state or a model name")
    parser.add_argument("--data", required=True, type=Path, help="LUNA16-layout folder with annotations.csv")
    parser.add_argument("--distance-ratios", type=float, nargs="+", default=[1 / 3, 0.4, 0.5])
    parser.add_argument("--iou-thresholds", type=float, nargs="+", default=[0.1])
    parser.add_argument("--top-n", type=int, nargs="+", default=[InferenceConfig.top_n])
    parser.add_argument("--score-threshold", type=float, default=0.01,
                        help="as in validation and 'scpm-train evaluate' (the FROC needs the low scores)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    model, preprocess = load_model(resolve_model(args.checkpoint)[0])
    base = InferenceConfig(score_threshold=args.score_threshold)
    detector = Detector(model, preprocess, base, args.device)
    settings = [replace(base, nms_distance_ratio=ratio, nms_iou_threshold=iou, top_n=top_n)
                for ratio, iou, top_n in itertools.product(args.distance_ratios, args.iou_thresholds, args.top_n)]
    scans = find_luna16_scans(args.data)
    tables: list[list] = [[] for _ in settings]
    for scan in tqdm(scans, desc="scans", unit="scan"):
        maps, prepared = detector.predict_maps(read_scan(scan.source))
        for table, setting in zip(tables, settings):
            table.append(findings_of(scan.seriesuid, detector.decode(maps, prepared, setting)))

    excluded = read_excluded(args.data)
    uids = [scan.seriesuid for scan in scans]
    print(f"{args.checkpoint} on {len(scans)} scans of {args.data}")
    print("distance ratio  SIoU thr.  top-n    CPM   sensitivity at 1/8 1/4 1/2 1 2 4 8 FPs/scan")
    for setting, table in zip(settings, tables):
        result = evaluate_froc(args.data / "annotations.csv", excluded, uids, concat_findings(table),
                               EvaluationConfig(n_bootstraps=0))
        sensitivities = " ".join(f"{value:.3f}" for value in result.sensitivities)
        print(f"{setting.nms_distance_ratio:14.3f}  {setting.nms_iou_threshold:9.2f}  {setting.top_n:5d}  "
              f"{result.cpm:.3f}   {sensitivities}")


if __name__ == "__main__":
    main()
