"""Time the phantom generator on one CPU core.

Generates ``--scans`` phantoms of each size (``small``: about 128×128×96 voxels, ``full``:
512×512×100-300) in memory and prints, per size, the seconds per scan (median, min, max), the
voxels per second, and the time to write one scan with its lung mask in LUNA16's layout. Targets:
a small scan under 2 s, a full scan under 20 s, so that training on fresh phantoms is not starved.

    python benchmarks/phantom.py [--scans 3] [--sizes small full]
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import statistics  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402

from SCPMNoduleLib.phantom import generate_phantom, phantom_config, write_luna16_dataset  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=3)
    parser.add_argument("--sizes", nargs="+", default=["small", "full"], choices=["small", "full"])
    args = parser.parse_args()
    for size in args.sizes:
        config = phantom_config(size)
        seconds, voxels = [], []
        for seed in range(args.scans):
            start = time.perf_counter()
            scan = generate_phantom(seed, config)
            seconds.append(time.perf_counter() - start)
            voxels.append(np.prod(scan.image.GetSize()))
            del scan
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            write_luna16_dataset(f"{tmp}/data", 1, 0, subsets=1, size=size)
            written = time.perf_counter() - start
        print(f"{size:5s}: {statistics.median(seconds):6.2f} s per scan (min {min(seconds):.2f}, "
              f"max {max(seconds):.2f}; {np.mean(voxels) / 1e6:.1f} Mvoxels, "
              f"{sum(voxels) / sum(seconds) / 1e6:.1f} Mvoxels/s); generate + write one scan "
              f"with its lung mask: {written:.2f} s")


if __name__ == "__main__":
    main()
