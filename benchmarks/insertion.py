"""Time nodule insertion (``SCPMNoduleLib.insertion``): seconds per scan and per nodule.

On the four real chest CTs of ``../shared/realct`` (when present; the chest derivatives in
``Testing/data/realct`` otherwise), prints per scan the seconds to prepare it (read, find the
lungs, measure the parenchyma: once per scan, shared by its copies), then to place and render
``--nodules`` nodules (sizes 3-30 mm, every kind and margin) into one copy, and the seconds per
nodule; then the medians. Writing the copy (an .mhd of the scan's size) is not counted.

    python benchmarks/insertion.py [--nodules 10] [--repeats 3] [--realct ../shared/realct]
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
from realct import real_scans  # noqa: E402

from SCPMNoduleLib.insertion import ScanForInsertion, insert_nodules, read_boxes  # noqa: E402
from SCPMNoduleLib.io import read_scan  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--nodules", type=int, default=10, help="nodules per scan")
    parser.add_argument("--repeats", type=int, default=3, help="best of this many")
    parser.add_argument("--realct", type=Path, default=Path("../shared/realct"))
    args = parser.parse_args()
    prepare_s, per_scan_s, per_nodule_s = [], [], []
    for name, path, boxes_path in real_scans(args.realct, chests_only=True):
        image, boxes = read_scan(path), read_boxes(boxes_path)
        best_prepare, best_insert, count = float("inf"), float("inf"), 0
        for repeat in range(args.repeats):
            start = time.perf_counter()
            scan = ScanForInsertion(image, name)
            middle = time.perf_counter()
            _, nodules = insert_nodules(scan, args.nodules, np.random.default_rng(repeat), boxes=boxes)
            end = time.perf_counter()
            best_prepare, best_insert = min(best_prepare, middle - start), min(best_insert, end - middle)
            count = len(nodules)
        size = "x".join(map(str, image.GetSize()))
        print(f"{name} ({size}): prepare {best_prepare:.2f} s, {count} nodules in {best_insert:.2f} s, "
              f"{best_insert / max(count, 1):.3f} s per nodule")
        prepare_s.append(best_prepare)
        per_scan_s.append(best_prepare + best_insert)
        per_nodule_s.append(best_insert / max(count, 1))
    print(f"median: {statistics.median(per_scan_s):.2f} s per scan ({args.nodules} nodules, preparation "
          f"{statistics.median(prepare_s):.2f} s of it), {statistics.median(per_nodule_s):.3f} s per nodule")


if __name__ == "__main__":
    main()
