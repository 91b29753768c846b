"""Training throughput: samples per second and the share of step time spent waiting for data.

Writes ``--scans`` phantoms (LUNA16 layout), caches them (``scpm-train preprocess``), then trains
``--epochs`` epochs of ``--steps`` steps each with the real :class:`Training.trainer.Trainer`
(validation off) and prints the figures the trainer logs for each epoch (the first epoch includes
worker start-up and warm-up; read the last one). Also prints the data pipeline alone (patches,
augmentation and matching, no network) in samples per second, i.e. the most the loader can feed.

    python benchmarks/training.py                                   # demo config, 64^3, CPU
    python benchmarks/training.py --config paper --patch 96 --batch 2 --device cuda
    python benchmarks/training.py --workers 0 --steps 4             # data loading in the main process
    python benchmarks/training.py --contiguous                      # without channels-last-3d, to compare

``--config demo`` is ``Training/configs/demo_cpu.json``; ``paper`` the defaults (the paper's network).
"""

from __future__ import annotations

import argparse
import csv
import logging
import shutil
import tempfile
import time
from pathlib import Path

import torch

from SCPMNoduleLib.model import SCPMNet
from SCPMNoduleLib.phantom import write_luna16_dataset
from Training.cache import build_cache, load_cache
from Training.config import load_config
from Training.data import MatchingCollate, PatchDataset
from Training.trainer import Trainer

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "Training" / "configs" / "demo_cpu.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("demo", "paper"), default="demo")
    parser.add_argument("--patch", type=int, default=64)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--steps", type=int, default=6, help="optimiser steps per epoch")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="DataLoader workers")
    parser.add_argument("--scans", type=int, default=4)
    parser.add_argument("--size", choices=("small", "full"), default="small", help="phantom size")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--contiguous", action="store_true",
                        help="train in the contiguous memory format instead of channels-last-3d")
    parser.add_argument("--work-dir", help="keep the phantoms and cache here (default: a temporary folder)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    with tempfile.TemporaryDirectory() as temporary:
        work = Path(args.work_dir or temporary)
        if not (work / "data").is_dir():
            write_luna16_dataset(work / "data", args.scans, seed=0, subsets=1, size=args.size)
        start = time.perf_counter()
        build_cache(work / "data", work / "cache", workers=2, progress=False)
        print(f"cache: {args.scans} {args.size} phantoms in {time.perf_counter() - start:.1f} s")

        crops = max(1, -(-args.steps * args.batch // args.scans))
        overrides = [f"data.patch_size={args.patch}", f"optim.batch_size={args.batch}",
                     f"optim.epochs={args.epochs}", f"data.num_workers={args.workers}",
                     f"data.crops_per_scan={crops}", "validation.every_epochs=0",
                     f"log_every_steps={args.steps}", f"channels_last={str(not args.contiguous).lower()}"]
        config = load_config(DEMO_CONFIG if args.config == "demo" else None, overrides)

        dataset = PatchDataset(load_cache(work / "cache"), config.data, config.augment, config.seed)
        collate = MatchingCollate(SCPMNet(config.model).strides, args.patch, config.matching)
        count = 2 * args.batch
        start = time.perf_counter()
        collate([dataset[(0, index)] for index in range(count)])
        data_rate = count / (time.perf_counter() - start)

        out = work / "run"
        shutil.rmtree(out, ignore_errors=True)
        trainer = Trainer(config, work / "cache", out, device=args.device)
        trainer.fit()
        with open(out / "train_log.csv", newline="") as handle:
            rows = list(csv.DictReader(handle))
        device = trainer.device
        cuda = device.type == "cuda"
        name = torch.cuda.get_device_name(device) if cuda else f"CPU, {torch.get_num_threads()} threads"
        params = sum(p.numel() for p in trainer.model.parameters())
        print(f"{args.config} network ({params / 1e6:.2f} M parameters), {args.patch}^3 patches, batch {args.batch}, "
              f"{args.workers} worker(s), {device} ({name}), "
              f"{'contiguous' if args.contiguous else 'channels-last-3d'}")
        print(f"data pipeline alone (one process): {data_rate:.1f} samples/s")
        for row in rows:
            print(f"epoch {row['epoch']}: {float(row['samples_per_s']):.2f} samples/s "
                  f"({3600 * float(row['samples_per_s']):.0f}/hour), "
                  f"data wait {100 * float(row['data_wait_share']):.1f}% of step time")


if __name__ == "__main__":
    main()
