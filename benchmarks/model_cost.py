"""Cost of the SCPM-Net network: parameters, GFLOPs and forward time per patch, receptive field.

Usage:
    .venv/bin/python benchmarks/model_cost.py                 # default config, 96^3 patch
    .venv/bin/python benchmarks/model_cost.py --config tiny --rf-size 128
    .venv/bin/python benchmarks/model_cost.py --skip-rf --device cuda

Forward time: median and best of ``--repeats`` timed rounds (after one warm-up round; the
variants take turns within a round, so that a load from other processes falls on all alike) of
``model(patch)`` in eval mode under ``torch.inference_mode`` (batch ``--batch``), for float32
(contiguous), float32 channels-last-3d, and bfloat16 autocast (channels-last-3d), the last two
also with the BatchNorms folded into the convolutions (``fuse_batch_norm``). On a CPU without
native bfloat16 convolutions (oneDNN reports none) the bf16 pass falls back to a reference kernel
that is many times slower, so it is skipped unless ``--force-bf16``. At batch 1, PyTorch's CPU
heuristics send convolutions whose N*C*D*H is small (the 12^3 and 6^3 levels of a 96^3 patch) to
its native kernel instead of oneDNN, which is slower there; batch 2 or whole-volume inputs take
oneDNN everywhere.

Receptive field: the batch-norm statistics are first estimated on ``--bn-batches`` random
standard-normal patches (cumulative average), then, in eval mode, the gradient of the center
output logit of each head level w.r.t. a standard-normal input of ``--rf-size``^3 voxels is taken
(``SCPMNoduleLib.model_analysis.gradient_receptive_field``) and the Chebyshev radius (input voxels)
holding 50/90/99/99.9 % of its magnitude is printed. "support" is the radius of the last non-zero
gradient; when it reaches the input border the input was too small to hold the whole
theoretical receptive field.

Tile consistency: the same eval-mode model runs once on a standard-normal volume of
``--rf-size``^3 voxels and once on each centered crop made of a ``--core``^3 core plus a margin of
m voxels on every side (m in ``--margins``, multiples of the size divisor); the largest
difference of the probabilities, logits and radii inside the core between the crop and the whole
volume is printed per head level, the logits' also relative to their standard deviation over the
whole volume (the initial head weights are small, so absolute differences alone look tiny).
That difference is what a tile margin of m costs in accuracy.

Random weights are not a trained model: re-measure on a checkpoint before trusting a margin
tighter than these figures.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time

import torch
from torch import nn

from SCPMNoduleLib.model import (
    SCPMNet,
    SCPMNetConfig,
    fast_bfloat16_available,
    fuse_batch_norm,
)
from SCPMNoduleLib.model_analysis import count_flops, gradient_receptive_field


def time_forward(
    variants: list[tuple[str, nn.Module, torch.Tensor, bool]], repeats: int
) -> dict[str, tuple[float, float]]:
    """Median and best seconds of one forward pass of each (name, model, input, bf16) variant.

    The variants take turns (one pass each per round, after a warm-up round) so that a load
    from other processes on a shared machine falls on all of them alike.
    """
    times: dict[str, list[float]] = {name: [] for name, *_ in variants}
    with torch.inference_mode():
        for round_index in range(repeats + 1):
            for name, model, patch, bf16 in variants:
                with torch.autocast(patch.device.type, torch.bfloat16, enabled=bf16):
                    if patch.device.type == "cuda":
                        torch.cuda.synchronize()
                    start = time.perf_counter()
                    model(patch)
                    if patch.device.type == "cuda":
                        torch.cuda.synchronize()
                if round_index:  # the first round warms up kernels and allocators
                    times[name].append(time.perf_counter() - start)
    return {name: (statistics.median(t), min(t)) for name, t in times.items()}


def estimate_batch_norm_statistics(model: nn.Module, patch_size: int, batches: int) -> None:
    """Replace the initial BN running statistics by averages over random normal patches."""
    for module in model.modules():
        if isinstance(module, nn.BatchNorm3d):
            module.reset_running_stats()
            module.momentum = None  # cumulative moving average
    model.train()
    with torch.no_grad():
        for _ in range(batches):
            model(torch.randn(2, 1, patch_size, patch_size, patch_size))
    model.eval()


def tile_consistency(
    model: nn.Module, volume: torch.Tensor, core: int, margin: int
) -> list[dict[str, float]]:
    """Per level, max |crop - whole| over the centered core of the outputs, for one margin."""
    side = volume.shape[-1]
    crop_side = core + 2 * margin
    origin = (side - crop_side) // 2
    crop = volume[..., origin : origin + crop_side, origin : origin + crop_side, origin : origin + crop_side]
    shape = torch.tensor([volume.shape[2:]])
    with torch.inference_mode():
        whole_out = model(volume)
        crop_out = model(crop, torch.full((1, 3), origin), shape)
    differences = []
    for stride, whole, tile in zip(model.strides, whole_out, crop_out):
        a, b = (origin + margin) // stride, margin // stride
        n = core // stride

        def core_of(t: torch.Tensor, start: int, n: int = n) -> torch.Tensor:
            return t[..., start : start + n, start : start + n, start : start + n]

        differences.append(
            {
                "probability": float(
                    (core_of(torch.sigmoid(tile["logits"]), b) - core_of(torch.sigmoid(whole["logits"]), a))
                    .abs()
                    .max()
                ),
                "logit": float((core_of(tile["logits"], b) - core_of(whole["logits"], a)).abs().max()),
                "radius": float((core_of(tile["radius"], b) - core_of(whole["radius"], a)).abs().max()),
                "logit_spread": float(whole["logits"].std()),
            }
        )
    return differences


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("default", "tiny"), default="default")
    parser.add_argument("--patch", type=int, default=96, help="patch side in voxels")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch", type=int, default=1, help="patches per timed forward pass")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--force-bf16", action="store_true")
    parser.add_argument("--skip-rf", action="store_true")
    parser.add_argument("--rf-size", type=int, default=192, help="input side for the receptive field")
    parser.add_argument("--bn-batches", type=int, default=4)
    parser.add_argument("--core", type=int, default=32, help="core side for tile consistency")
    parser.add_argument("--margins", type=int, nargs="+", default=[16, 32, 48, 64, 80])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    device = torch.device(args.device)
    config = SCPMNetConfig() if args.config == "default" else SCPMNetConfig.tiny()
    model = SCPMNet(config).eval()
    shape = (1, 1, args.patch, args.patch, args.patch)
    cost = count_flops(model, shape)
    print(f"config: {args.config}  strides {model.strides}  size divisor {model.size_divisor}")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, device {device}")
    print(f"parameters: {cost.parameters:,} ({cost.parameters / 1e6:.2f} M)")
    print(f"per {args.patch}^3 patch: {cost.macs / 1e9:.2f} GMAC = {cost.gflops:.1f} GFLOP")

    model = model.to(device)
    patch = torch.randn((args.batch, *shape[1:]), device=device)
    patch_cl = patch.to(memory_format=torch.channels_last_3d)
    model_cl = copy.deepcopy(model).to(memory_format=torch.channels_last_3d)
    fused_cl = fuse_batch_norm(model_cl)
    variants = [
        ("float32 contiguous", model, patch, False),
        ("float32 channels_last_3d", model_cl, patch_cl, False),
        ("  + BatchNorm folded", fused_cl, patch_cl, False),
    ]
    bf16 = fast_bfloat16_available(device) or args.force_bf16
    if bf16:
        variants += [
            ("bf16 autocast channels_last", model_cl, patch_cl, True),
            ("  + BatchNorm folded ", fused_cl, patch_cl, True),
        ]
    timings = time_forward(variants, args.repeats)
    reference = timings["float32 contiguous"][1]
    print(f"forward time per pass of {args.batch} patch(es), {args.repeats} rounds:")
    for name, (median, best) in timings.items():
        print(f"  {name:28s} median {median:.3f} s  best {best:.3f} s  ({reference / best:.2f}x best to best)")
    if not bf16:
        print("  bf16 autocast: skipped, no native bfloat16 convolutions here (--force-bf16)")

    if args.skip_rf:
        return
    model = SCPMNet(config)
    estimate_batch_norm_statistics(model, args.patch, args.bn_batches)
    size = (1, 1, args.rf_size, args.rf_size, args.rf_size)
    quantiles = (0.5, 0.9, 0.99, 0.999)
    print(f"useful receptive field (Chebyshev radius in input voxels, {args.rf_size}^3 input):")
    for level, stride in enumerate(model.strides):
        field = gradient_receptive_field(
            lambda x, level=level: model(x)[level]["logits"], size, stride, quantiles,
            generator=torch.Generator().manual_seed(args.seed),
        )
        shares = "  ".join(f"{100 * q:g}%: {r:g}" for q, r in field.radii.items())
        border = " (reaches the input border)" if field.support >= args.rf_size / 2 - 1 else ""
        print(f"  level {level} (stride {stride}): {shares}  support: {field.support:g}{border}")
    volume = torch.randn(size, generator=torch.Generator().manual_seed(args.seed + 1))
    print(f"tile consistency ({args.core}^3 core of a {args.rf_size}^3 volume), max |crop - whole|:")
    for margin in args.margins:
        if args.core + 2 * margin >= args.rf_size:
            break
        for level, d in enumerate(tile_consistency(model, volume, args.core, margin)):
            print(
                f"  margin {margin:3d}  level {level}: probability {d['probability']:.2e}  "
                f"logit {d['logit']:.2e} ({d['logit'] / d['logit_spread']:.2f} x the logits' std)  "
                f"radius {d['radius']:.2e}"
            )


if __name__ == "__main__":
    main()
