"""End-to-end detection time against one plain forward pass, per stage, with peak memory.

For each phantom (full size by default) written to a temporary ``.mha``, three measurements run
in fresh processes (so that each one's peak RSS is its own):

* ``detect``: the whole ``detect`` path on the file: read, resample + lung crop, tiled forward,
  decode + NMS, write (CSV, JSON, markups);
* ``forward whole``: one plain forward pass of the same network (same weights, memory format
  and precision) over the whole resampled volume padded to the size divisor, timed alone;
* ``forward crop``: the same over the padded lung crop only.

Each measurement is repeated (``--repeats``, round robin, each run in a fresh process) and the
fastest run reported, since other work on the machine only ever adds time. Printed: seconds per
stage, end-to-end seconds, the ratio end-to-end / forward whole (the pipeline's overhead, goal
< 1.15; the lung crop can make it < 1), the ratio to forward crop, tiles used, and peak RSS (plus
peak CUDA memory on a GPU).

    python benchmarks/inference.py [--model demo|paper] [--seeds 0 1] [--size full]
                                   [--max-tile-voxels N] [--margin M] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import SimpleITK as sitk
import torch


def _model(name: str):
    from SCPMNoduleLib.checkpoint import load_checkpoint
    from SCPMNoduleLib.model import SCPMNet, SCPMNetConfig
    from SCPMNoduleLib.models import resolve_model
    from SCPMNoduleLib.preprocess import PreprocessConfig

    if name == "demo":
        model, preprocess, _ = load_checkpoint(resolve_model("demo")[0])
        return model, preprocess
    torch.manual_seed(0)
    return SCPMNet(SCPMNetConfig()), PreprocessConfig()


def _peak_rss_mb() -> float:
    """This process's peak RSS. Linux's ``ru_maxrss`` keeps the parent's peak across fork + exec,
    so the memory map's own high-water mark (VmHWM) is read where there is one."""
    status = Path("/proc/self/status")
    if status.is_file():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _peak_memory() -> dict:
    figures = {"peak_rss_mb": _peak_rss_mb()}
    if torch.cuda.is_available():
        figures["peak_cuda_mb"] = torch.cuda.max_memory_allocated() / 2**20
    return figures


def worker(options: dict) -> dict:
    from SCPMNoduleLib.inference import Detector, InferenceConfig
    from SCPMNoduleLib.io import read_scan
    from SCPMNoduleLib.pipeline import DEFAULT_FORMATS, detect_scan
    from SCPMNoduleLib.preprocess import prepare_scan
    from SCPMNoduleLib.tiling import plan_tiles

    if options["threads"]:
        torch.set_num_threads(options["threads"])
    model, preprocess = _model(options["model"])
    config = InferenceConfig(score_threshold=0.0)
    if options["max_tile_voxels"]:
        config = replace(config, max_tile_voxels=options["max_tile_voxels"])
    if options["margin"] is not None:
        config = replace(config, tile_margin_vox=options["margin"])
    detector = Detector(model, preprocess, config, options["device"])
    path = Path(options["scan"])
    if options["mode"] == "detect":
        results = [detect_scan(path, Path(options["out"]), detector, DEFAULT_FORMATS)
                   for _ in range(options["repeats"])]
        if not results[0].ok:
            raise RuntimeError(results[0].error)
        best = min(results, key=lambda r: r.seconds)
        return {"seconds": best.seconds, "stages": best.timings_s,
                "detections": len(best.detections), **_peak_memory()}
    prepared = prepare_scan(read_scan(path), replace(preprocess, lung_mask=options["mode"] == "forward crop"),
                            align=model.size_divisor)
    volume = detector._pad(prepared).to(detector.device).contiguous(memory_format=torch.channels_last_3d)
    tiles = len(plan_tiles(tuple(volume.shape[2:]), model.size_divisor, config.tile_margin_vox,
                           config.max_tile_voxels))
    origin = torch.tensor([prepared.crop_start_zyx.tolist()], device=detector.device)
    shape = torch.tensor([prepared.geometry.shape_zyx], device=detector.device)
    with torch.inference_mode():
        if detector.device.type == "cuda":
            detector.model(volume[..., :32, :32, :32], origin, shape)  # warm-up
            torch.cuda.synchronize()
        times = []
        for _ in range(options["repeats"]):
            start = time.perf_counter()
            detector.model(volume, origin, shape)
            if detector.device.type == "cuda":
                torch.cuda.synchronize()
            times.append(time.perf_counter() - start)
        seconds = min(times)
    return {"seconds": seconds, "volume": list(volume.shape[2:]), "tiles_if_detect": tiles,
            **_peak_memory()}


def _run(options: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(options)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("demo", "paper"), default="demo",
                        help="demo: the bundled checkpoint's network; paper: the default SCPMNetConfig")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 3])
    parser.add_argument("--size", choices=("small", "full"), default="full")
    parser.add_argument("--max-tile-voxels", type=int, default=0, help="0: the InferenceConfig default")
    parser.add_argument("--margin", type=int, default=None, help="tile margin (default: InferenceConfig's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each measurement, each in a fresh process; the fastest is reported")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    from SCPMNoduleLib.phantom import make_phantom

    print(f"model {args.model}, device {args.device}, torch threads {args.threads or torch.get_num_threads()}, "
          f"max tile voxels {args.max_tile_voxels or 'default'}, margin {args.margin or 'default'}, "
          f"fastest of {args.repeats} runs")
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            image, _ = make_phantom(seed, args.size)
            scan = Path(tmp) / f"phantom_{seed}.mha"
            sitk.WriteImage(image, str(scan))
            base = {"model": args.model, "scan": str(scan), "out": str(Path(tmp) / f"out_{seed}"),
                    "device": args.device, "threads": args.threads,
                    "max_tile_voxels": args.max_tile_voxels, "margin": args.margin, "repeats": 1}
            runs = {mode: [] for mode in ("detect", "forward whole", "forward crop")}
            for _ in range(args.repeats):  # round robin, so that load from elsewhere hits all alike
                for mode, results in runs.items():
                    results.append(_run({**base, "mode": mode}))
            detect, whole, crop = (min(results, key=lambda r: r["seconds"]) for results in runs.values())
            size = "x".join(map(str, image.GetSize()))
            stages = ", ".join(f"{k} {v:.2f}" for k, v in detect["stages"].items())
            print(f"\nphantom seed {seed}: {size} voxels, spacing "
                  f"{', '.join(f'{s:.2f}' for s in image.GetSpacing())} mm")
            print(f"  detect end-to-end   {detect['seconds']:7.2f} s  ({stages}); "
                  f"peak RSS {detect['peak_rss_mb']:.0f} MB; tiles {crop['tiles_if_detect']}")
            print(f"  forward whole {'x'.join(map(str, whole['volume'])):>13} {whole['seconds']:7.2f} s  "
                  f"peak RSS {whole['peak_rss_mb']:.0f} MB")
            print(f"  forward crop  {'x'.join(map(str, crop['volume'])):>13} {crop['seconds']:7.2f} s  "
                  f"peak RSS {crop['peak_rss_mb']:.0f} MB")
            print(f"  ratio end-to-end / forward whole = {detect['seconds'] / whole['seconds']:.2f}; "
                  f"/ forward crop = {detect['seconds'] / crop['seconds']:.2f}")
            if "peak_cuda_mb" in detect:
                print(f"  peak CUDA MB: detect {detect['peak_cuda_mb']:.0f}, whole {whole['peak_cuda_mb']:.0f}")


if __name__ == "__main__":
    main()
