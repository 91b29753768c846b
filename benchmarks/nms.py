"""Time sphere NMS on a realistic candidate set on the CPU.

10,000 candidates (the order of a whole scan's top-n before NMS): centers uniform in a 300 mm
cube, radii uniform in 1.5-15 mm, random scores. Prints the median wall time of several runs and the
number of spheres kept. On a machine shared with other busy processes, every multi-threaded
torch operation can wait a scheduler slice for its second thread: compare with ``--threads 1``.

    python benchmarks/nms.py [--candidates 10000] [--repeats 5] [--seed 0] [--threads N]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from SCPMNoduleLib.geometry import sphere_nms


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--candidates", type=int, default=10_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cube-mm", type=float, default=300.0)
    parser.add_argument("--radius-mm", type=float, nargs=2, default=(1.5, 15.0))
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    generator = torch.Generator().manual_seed(args.seed)
    n = args.candidates
    centers = torch.rand(n, 3, generator=generator) * args.cube_mm
    low, high = args.radius_mm
    radii = low + (high - low) * torch.rand(n, generator=generator)
    scores = torch.rand(n, generator=generator)

    sphere_nms(centers, radii, scores)  # warm-up
    seconds = []
    for _ in range(args.repeats):
        start = time.perf_counter()
        kept = sphere_nms(centers, radii, scores)
        seconds.append(time.perf_counter() - start)
    print(
        f"sphere_nms: {n} candidates, {args.cube_mm:g} mm cube, radii {low:g}-{high:g} mm, "
        f"{torch.get_num_threads()} threads"
    )
    print(
        f"  kept {kept.numel()}; median {statistics.median(seconds) * 1e3:.1f} ms, "
        f"min {min(seconds) * 1e3:.1f} ms over {args.repeats} runs"
    )


if __name__ == "__main__":
    main()
