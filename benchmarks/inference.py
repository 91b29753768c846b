"""End-to-end detection time against one plain forward pass, per stage, with peak memory.

For each phantom (full size by default) written to a temporary ``.mha``, three measurements run
in fresh processes (so that each one's peak RSS is its own):

* ``detect``: the whole ``detect`` path on the file: read, resample + lung crop, tiled forward,
  decode + NMS, write (CSV, JSON, markups);
* ``forward whole``: one plain forward pass of the same network (same weights, memory format
  and precision) over the whole resampled volume padded to the size divisor, timed alone;
* ``forward crop``: the same over the padded lung crop only.

Each measurement runs in every precision asked for (``--precisions fp32,bf16``: the detector's
``InferenceConfig.precision``, autocast around the plain forward passes too) and is repeated
(``--repeats``, round robin, each run in a fresh process); the fastest run is reported, since
other work on the machine only ever adds time. Printed per precision: seconds per stage,
end-to-end seconds, the ratio end-to-end / forward whole (the pipeline's overhead, goal < 1.15;
the lung crop can make it < 1), the ratio to forward crop, tiles used, and peak RSS (plus peak
CUDA memory on a GPU); then the precisions side by side: end-to-end and crop seconds and the
network's achieved GFLOP/s on the crop against the CPU's peak.

Achieved GFLOP/s: the FLOPs of one forward pass over the padded lung crop
(:func:`~SCPMNoduleLib.model_analysis.count_flops`: the convolutions' multiply-adds, 2 FLOPs
each, which is nearly all of the network's work), divided by the crop's forward time.
The CPU's peak is estimated two ways:

* theoretical: threads (one per core) x clock (``lscpu``'s max MHz, else ``/proc/cpuinfo``'s
  ``cpu MHz``; ``--clock-ghz`` overrides) x FLOPs per cycle per core for the ISA (:func:`_flops_per_cycle`):
  fp32 FMA: 32 on Zen 4 (AMD family 0x19 with AVX-512: two 256-bit FMA pipes, a 512-bit op runs
  as two halves), 64 on Zen 5 and on Intel AVX-512 (two 512-bit FMA units assumed), 32 with
  AVX2+FMA; bf16: twice fp32 with AVX512-BF16 (``vdpbf16ps`` does two products per fp32 lane at
  the FMA rate), 1024 with AMX tiles, and fp32's otherwise (emulated: far slower in practice);
* measured: the best rate of ``torch.mm`` of two 2048 x 2048 matrices in that dtype on the same
  threads (oneDNN/BLAS), the practical ceiling of a dense kernel on this machine.

    python benchmarks/inference.py [--model demo|paper] [--seeds 0 1] [--size full]
                                   [--precisions fp32,bf16] [--max-tile-voxels N] [--margin M]
                                   [--device cpu] [--threads N] [--clock-ghz G]
"""

from __future__ import annotations

import argparse
import json
import os
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


_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _cpu_info() -> dict:
    """Vendor, family, flags, model name and clock (GHz, and where it came from) of this CPU (Linux)."""
    info: dict = {"vendor": "", "family": 0, "flags": set(), "name": "unknown CPU", "ghz": 0.0, "clock_from": "none"}
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        for line in cpuinfo.read_text(encoding="utf-8", errors="replace").splitlines():
            key, _, value = (part.strip() for part in line.partition(":"))
            if key == "vendor_id" and not info["vendor"]:
                info["vendor"] = value
            elif key == "cpu family" and not info["family"]:
                info["family"] = int(value)
            elif key == "flags" and not info["flags"]:
                info["flags"] = set(value.split())
            elif key == "model name" and info["name"] == "unknown CPU":
                info["name"] = value
            elif key == "cpu MHz" and not info["ghz"]:
                info["ghz"], info["clock_from"] = float(value) / 1000, "/proc/cpuinfo cpu MHz (current)"
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
    except OSError:
        lscpu = ""
    for line in lscpu.splitlines():
        if line.startswith("CPU max MHz:"):
            info["ghz"], info["clock_from"] = float(line.split(":")[1]) / 1000, "lscpu CPU max MHz"
    return info


def _flops_per_cycle(info: dict) -> dict[str, tuple[float, str]]:
    """FLOPs per cycle per core for fp32 and bf16, each with the assumption it rests on (module text)."""
    flags, amd = info["flags"], info["vendor"] == "AuthenticAMD"
    if "avx512f" in flags and amd and info["family"] == 0x19:
        fp32 = (32.0, "Zen 4: 2 x 256-bit FMA pipes, AVX-512 as two halves")
    elif "avx512f" in flags:
        fp32 = (64.0, "AVX-512: 2 x 512-bit FMA units")
    elif {"avx2", "fma"} <= flags:
        fp32 = (32.0, "AVX2: 2 x 256-bit FMA units")
    else:
        fp32 = (8.0, "SSE: no FMA")
    if "amx_bf16" in flags:
        bf16 = (1024.0, "AMX tiles")
    elif "avx512_bf16" in flags:
        bf16 = (2 * fp32[0], "AVX512-BF16 dot products: 2 products per fp32 lane at the FMA rate")
    else:
        bf16 = (fp32[0], "no native bf16 (emulated: far below this)")
    return {"fp32": fp32, "bf16": bf16, "fp16": fp32}


def _measured_peak(dtype: torch.dtype, threads: int, size: int = 2048, repeats: int = 5) -> float:
    """GFLOP/s of the fastest of ``repeats`` products of two ``size`` x ``size`` matrices."""
    torch.set_num_threads(threads)
    a, b = torch.randn(size, size).to(dtype), torch.randn(size, size).to(dtype)
    torch.mm(a, b)  # warm-up (oneDNN picks its kernel)
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best / 1e9


def worker(options: dict) -> dict:
    from SCPMNoduleLib.inference import Detector, InferenceConfig
    from SCPMNoduleLib.io import read_scan
    from SCPMNoduleLib.pipeline import DEFAULT_FORMATS, detect_scan
    from SCPMNoduleLib.preprocess import prepare_scan
    from SCPMNoduleLib.runtime import autocast, autocast_dtype
    from SCPMNoduleLib.tiling import plan_tiles

    if options["threads"]:
        torch.set_num_threads(options["threads"])
    model, preprocess = _model(options["model"])
    config = InferenceConfig(score_threshold=0.0, precision=options["precision"])
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
        return {"seconds": best.seconds, "stages": best.timings_s, "detections": len(best.detections),
                "precision": (best.precision or {}).get("precision"), **_peak_memory()}
    prepared = prepare_scan(read_scan(path), replace(preprocess, lung_mask=options["mode"] == "forward crop"),
                            align=model.size_divisor)
    volume = detector._pad(prepared).to(detector.device).contiguous(memory_format=torch.channels_last_3d)
    tiles = len(plan_tiles(tuple(volume.shape[2:]), model.size_divisor, config.tile_margin_vox,
                           config.max_tile_voxels))
    origin = torch.tensor([prepared.crop_start_zyx.tolist()], device=detector.device)
    shape = torch.tensor([prepared.geometry.shape_zyx], device=detector.device)
    dtype = autocast_dtype(detector.device, options["precision"])
    with torch.inference_mode(), autocast(detector.device, dtype):
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
    return {"seconds": seconds, "volume": list(volume.shape[2:]), "tiles_if_detect": tiles, **_peak_memory()}


def _run(options: dict) -> dict:
    done = subprocess.run([sys.executable, __file__, "--worker", json.dumps(options)],
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(done.stderr[-2000:])
    return json.loads(done.stdout.strip().splitlines()[-1])


def _print_runs(precision: str, detect: dict, whole: dict, crop: dict) -> None:
    stages = ", ".join(f"{k} {v:.2f}" for k, v in detect["stages"].items())
    print(f"  [{precision}] detect end-to-end {detect['seconds']:7.2f} s  ({stages}); "
          f"peak RSS {detect['peak_rss_mb']:.0f} MB; tiles {crop['tiles_if_detect']}; ran in {detect['precision']}")
    print(f"  [{precision}] forward whole {'x'.join(map(str, whole['volume'])):>13} {whole['seconds']:7.2f} s  "
          f"peak RSS {whole['peak_rss_mb']:.0f} MB")
    print(f"  [{precision}] forward crop  {'x'.join(map(str, crop['volume'])):>13} {crop['seconds']:7.2f} s  "
          f"peak RSS {crop['peak_rss_mb']:.0f} MB")
    print(f"  [{precision}] ratio end-to-end / forward whole = {detect['seconds'] / whole['seconds']:.2f}; "
          f"/ forward crop = {detect['seconds'] / crop['seconds']:.2f}")
    if "peak_cuda_mb" in detect:
        print(f"  [{precision}] peak CUDA MB: detect {detect['peak_cuda_mb']:.0f}, whole {whole['peak_cuda_mb']:.0f}")


def _print_side_by_side(results: dict[str, tuple[dict, dict, dict]], flops: int,
                        peaks: dict[str, tuple[float, float]]) -> None:
    """Seconds, speed-up against the first precision, GFLOP/s and the share of both peaks."""
    names = list(results)
    first = names[0]
    print(f"  {'':34}" + "".join(f"{name:>12}" for name in names))
    rows = {
        "detect end-to-end (s)": [results[n][0]["seconds"] for n in names],
        "forward crop (s)": [results[n][2]["seconds"] for n in names],
        f"speed-up end-to-end vs {first}": [results[first][0]["seconds"] / results[n][0]["seconds"] for n in names],
        "network GFLOP/s (crop)": [flops / results[n][2]["seconds"] / 1e9 for n in names],
    }
    if peaks:
        rows["theoretical peak GFLOP/s"] = [peaks[n][0] for n in names]
        rows["  % of theoretical"] = [100 * flops / results[n][2]["seconds"] / 1e9 / peaks[n][0] for n in names]
        rows["measured peak GFLOP/s (torch.mm)"] = [peaks[n][1] for n in names]
        rows["  % of measured"] = [100 * flops / results[n][2]["seconds"] / 1e9 / peaks[n][1] for n in names]
    for label, values in rows.items():
        print(f"  {label:34}" + "".join(f"{value:12.2f}" for value in values))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", choices=("demo", "paper"), default="demo",
                        help="demo: the bundled checkpoint's network; paper: the default SCPMNetConfig")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 3])
    parser.add_argument("--size", choices=("small", "full"), default="full")
    parser.add_argument("--precisions", default="fp32,bf16",
                        help="comma-separated precisions to run side by side (fp32, bf16, fp16)")
    parser.add_argument("--max-tile-voxels", type=int, default=0, help="0: the InferenceConfig default")
    parser.add_argument("--margin", type=int, default=None, help="tile margin (default: InferenceConfig's)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--clock-ghz", type=float, default=0.0,
                        help="clock for the theoretical peak (default: lscpu's max MHz, else /proc/cpuinfo's)")
    parser.add_argument("--repeats", type=int, default=3,
                        help="runs of each measurement, each in a fresh process; the fastest is reported")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))))
        return

    from SCPMNoduleLib.model_analysis import count_flops
    from SCPMNoduleLib.phantom import make_phantom

    precisions = [p.strip() for p in args.precisions.split(",") if p.strip()]
    if not precisions or set(precisions) - set(_DTYPES):
        parser.error(f"--precisions {args.precisions!r}: expected a comma-separated subset of fp32,bf16,fp16")
    threads = args.threads or torch.get_num_threads()
    print(f"model {args.model}, device {args.device}, torch threads {threads}, "
          f"max tile voxels {args.max_tile_voxels or 'default'}, margin {args.margin or 'default'}, "
          f"precisions {', '.join(precisions)}, fastest of {args.repeats} runs")
    peaks: dict[str, tuple[float, float]] = {}
    if args.device == "cpu":
        from SCPMNoduleLib.runtime import native_bf16_cpu

        info = _cpu_info()
        ghz, clock_from = (args.clock_ghz, "--clock-ghz") if args.clock_ghz else (info["ghz"], info["clock_from"])
        per_cycle = _flops_per_cycle(info)
        print(f"CPU {info['name']} ({os.cpu_count()} logical CPUs), native bf16: {native_bf16_cpu()}; "
              f"clock {ghz:.2f} GHz from {clock_from}")
        for name in precisions:
            flops_per_cycle, assumption = per_cycle[name]
            theoretical = threads * ghz * flops_per_cycle
            measured = _measured_peak(_DTYPES[name], threads)
            peaks[name] = (theoretical, measured)
            print(f"  {name} peak: theoretical {theoretical:.0f} GFLOP/s = {threads} cores x {ghz:.2f} GHz x "
                  f"{flops_per_cycle:.0f} FLOP/cycle ({assumption}); measured {measured:.0f} GFLOP/s "
                  f"(best torch.mm 2048^2 in {name})")
    network = _model(args.model)[0]  # for counting its FLOPs (on the meta device: nothing computed)
    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            image, _ = make_phantom(seed, args.size)
            scan = Path(tmp) / f"phantom_{seed}.mha"
            sitk.WriteImage(image, str(scan))
            base = {"model": args.model, "scan": str(scan), "out": str(Path(tmp) / f"out_{seed}"),
                    "device": args.device, "threads": args.threads,
                    "max_tile_voxels": args.max_tile_voxels, "margin": args.margin, "repeats": 1}
            runs = {(p, mode): [] for p in precisions for mode in ("detect", "forward whole", "forward crop")}
            for _ in range(args.repeats):  # round robin, so that load from elsewhere hits all alike
                for (precision, mode), found in runs.items():
                    found.append(_run({**base, "mode": mode, "precision": precision}))
            results = {precision: tuple(min(runs[(precision, mode)], key=lambda r: r["seconds"])
                                        for mode in ("detect", "forward whole", "forward crop"))
                       for precision in precisions}
            crop_shape = results[precisions[0]][2]["volume"]
            flops = 2 * count_flops(network, (1, 1, *crop_shape)).macs
            size = "x".join(map(str, image.GetSize()))
            print(f"\nphantom seed {seed}: {size} voxels, spacing "
                  f"{', '.join(f'{s:.2f}' for s in image.GetSpacing())} mm; network on the crop: "
                  f"{flops / 1e9:.1f} GFLOP")
            for precision in precisions:
                _print_runs(precision, *results[precision])
            _print_side_by_side(results, flops, peaks)


if __name__ == "__main__":
    main()
