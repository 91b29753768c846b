"""Time the lung finder (``SCPMNoduleLib.lungs.find_lungs``) as ``prepare_scan`` calls it.

On the five real volumes of ``../shared/realct`` (when present; the derivatives in
``Testing/data/realct`` otherwise) and on ``--phantoms`` full-size phantoms generated in memory
(seeds 1000, 1001, ...), prints per scan the seconds (best of ``--repeats``), the lungs found and
their volume, then the median and worst seconds per scan: on the network's 1 mm grid with the
default blocks of 4 voxels. (The coarse mask it replaced was cheaper, about a third of the time when
both were measured side by side on a loaded machine, and took the colon for lungs.)

    python benchmarks/lung_finder.py [--phantoms 20] [--repeats 3] [--realct ../shared/realct]
"""

from __future__ import annotations

import os

for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_name, "1")

import argparse  # noqa: E402
import functools  # noqa: E402
import statistics  # noqa: E402
from pathlib import Path  # noqa: E402

import SimpleITK as sitk  # noqa: E402
from realct import best_of, real_scans  # noqa: E402

from SCPMNoduleLib.io import read_scan  # noqa: E402
from SCPMNoduleLib.lungs import find_lungs  # noqa: E402
from SCPMNoduleLib.phantom import generate_phantom, phantom_config  # noqa: E402
from SCPMNoduleLib.preprocess import PreprocessConfig, resampled_geometry  # noqa: E402


def _scans(realct: Path, phantoms: int):
    for name, path, _ in real_scans(realct):
        yield name, read_scan(path)
    for i in range(phantoms):
        yield f"phantom full seed {1000 + i}", generate_phantom(1000 + i, phantom_config("full")).image


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--phantoms", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--realct", type=Path, default=Path("../shared/realct"))
    args = parser.parse_args()
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(2)
    config = PreprocessConfig()
    seconds_of: dict[str, list[float]] = {"real": [], "phantom": []}
    for name, image in _scans(args.realct, args.phantoms):
        kind = "phantom" if name.startswith("phantom") else "real"
        geometry = resampled_geometry(image, config.spacing_xyz_mm)
        seconds, found = best_of(functools.partial(find_lungs, image, geometry, config.mask_block,
                                                 config.lung_finder()), args.repeats)
        seconds_of[kind].append(seconds)
        what = (f"{found.n_lungs} lungs, {found.volume_ml:.0f} mL" if found.found
                else f"no lungs ({found.reason})")
        print(f"{name:48s} {seconds:6.3f} s  {what}", flush=True)
    for kind, seconds in seconds_of.items():
        if seconds:
            print(f"{kind:7s}: median {statistics.median(seconds):.3f} s, worst {max(seconds):.3f} s "
                  f"({len(seconds)} scans)")


if __name__ == "__main__":
    main()
