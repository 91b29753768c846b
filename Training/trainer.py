"""The training loop: one process, or one per device under ``torchrun`` (DDP).

``torchrun --nproc_per_node N -m Training.cli fit ...`` starts N copies of the same command;
each reads ``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` from the environment, joins the process group
(NCCL on GPUs, Gloo on CPUs) and trains on its shard of every epoch's samples
(:class:`~Training.data.EpochSampler`); gradients are averaged by DDP, so all processes hold the
same weights after every step. The global batch ``optim.batch_size`` is split evenly over the
processes. Only rank 0 writes checkpoints, logs and validation reports.

Step ``i`` of the ``n`` in epoch ``e`` runs at the learning rate ``config.lr_at(e + i / n)`` (a pure
function of the position in the run, so the schedule resumes exactly); with ``optim.ema_decay``
the weights' moving average (:class:`~Training.averaging.WeightAverage`) is updated after every
step. After the epoch the full training state is written atomically to ``last.pt`` (model, its
average, optimiser, gradient scaler, RNG states, epoch, step, best CPM); every
``validation.every_epochs`` epochs the real detector runs on the fold's held-out scans (with the
averaged weights when there are any) and LUNA16's FROC is computed; the state with the best CPM is
also written to ``best.pt``.
Samples depend only on ``(seed, epoch, index)``, so resuming from ``last.pt`` continues exactly
as an uninterrupted run would (bit for bit on CPU).
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Sequence, Sized
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader

from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.evaluation import EvaluationConfig, FROCResult, evaluate_froc, write_evaluation
from SCPMNoduleLib.inference import InferenceConfig
from SCPMNoduleLib.io import Findings
from SCPMNoduleLib.losses import LOSS_TERMS, SCPMLoss
from SCPMNoduleLib.model import SCPMNet, network_only
from SCPMNoduleLib.preprocess import PreprocessConfig
from SCPMNoduleLib.runtime import autocast, autocast_dtype
from SCPMNoduleLib.temp_files import check_output_folder

from .averaging import WeightAverage
from .cache import CachedScan, load_cache, read_cache_info
from .config import TrainConfig, ValidationConfig, save_config
from .data import EpochSampler, MatchingCollate, PatchDataset
from .distributed import Distributed, init_distributed
from .heldout import detect_sharded
from .run_log import LOG_COLUMNS, RunLog
from .state import load_deployable, load_state, load_weights, parameter_digest, restore_rng_state, rng_state, save_state

__all__ = ["Trainer", "build_loader", "build_model", "load_scans", "make_optimizer", "split_folds"]

log = logging.getLogger(__name__)


def split_folds(scans: Sequence[CachedScan], fold: int | None) -> tuple[list[CachedScan], list[CachedScan]]:
    """LUNA16 cross-validation: fold ``k`` validates on subset ``k`` and trains on the others.

    ``fold=None`` trains on every scan and validates on none.
    """
    if fold is None:
        return list(scans), []
    folds = sorted({scan.fold for scan in scans})
    if fold not in folds:
        raise UserInputError(f"--fold {fold}: the cache has scans of subsets {folds} only.")
    train = [scan for scan in scans if scan.fold != fold]
    if not train:
        raise UserInputError(f"--fold {fold}: every cached scan is in subset {fold}; nothing is left to train on.")
    return train, [scan for scan in scans if scan.fold == fold]


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD with momentum (the paper's) or AdamW, at the schedule's first learning rate."""
    optim = config.optim
    if optim.optimizer == "adamw":
        return torch.optim.AdamW(model.parameters(), lr=config.lr_at(0), betas=(optim.momentum, 0.999),
                                 weight_decay=optim.weight_decay)
    return torch.optim.SGD(model.parameters(), lr=config.lr_at(0), momentum=optim.momentum,
                           weight_decay=optim.weight_decay, nesterov=optim.nesterov)


def load_scans(cache_dir: str | os.PathLike, fold: int | None, validation: ValidationConfig,
               checksum: bool) -> tuple[PreprocessConfig, list[CachedScan], list[CachedScan]]:
    """The cache's pre-processing, training scans and held-out scans of ``fold`` (:func:`split_folds`).

    At most ``validation.max_scans`` scans are held out (when positive); validation reads them from
    their original files, which must therefore still exist when it runs (``every_epochs > 0``).
    """
    preprocess = PreprocessConfig.from_dict(read_cache_info(cache_dir)["preprocess"])
    train, held_out = split_folds(load_cache(cache_dir, checksum=checksum), fold)
    if validation.max_scans > 0:
        held_out = held_out[: validation.max_scans]
    missing = [scan.source for scan in held_out if not scan.source.is_file()]
    if missing and validation.every_epochs > 0:
        raise UserInputError(f"{missing[0]}: validation reads the original held-out scans, but this one is gone.")
    return preprocess, train, held_out


def build_model(config: TrainConfig, dist: Distributed,
                memory_format: torch.memory_format) -> tuple[SCPMNet, nn.Module]:
    """The network, initialised from ``config.seed``, on this process's device; and what a step calls
    (the network itself, or its DDP wrapper when several processes train)."""
    torch.manual_seed(config.seed)
    model = SCPMNet(config.model)
    if config.data.patch_size % model.size_divisor:
        raise UserInputError(
            f"config data.patch_size {config.data.patch_size}: must be a multiple of {model.size_divisor}."
        )
    if config.sync_batchnorm and dist.enabled:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    # Module.to takes memory_format (torch documents it) but its typed overloads leave it out
    model = model.to(dist.device, memory_format=memory_format)  # type: ignore[call-overload]
    network: nn.Module = model
    if dist.enabled:
        network = DistributedDataParallel(model, device_ids=[dist.local_rank] if dist.device.type == "cuda" else None)
    if dist.device.type == "cuda":
        torch.backends.cudnn.benchmark = config.cudnn_benchmark
    return model, network


def build_loader(scans: Sequence[CachedScan], preprocess: PreprocessConfig, config: TrainConfig,
                 strides: Sequence[int], dist: Distributed) -> tuple[DataLoader, EpochSampler]:
    """This process's batches of every epoch and their sampler (:meth:`EpochSampler.set_epoch`).

    Each of the ``W`` processes gets ``optim.batch_size / W`` patches per step, drawn from its shard
    of the epoch's ``data.crops_per_scan * len(scans)`` samples; incomplete batches are dropped.
    """
    batch_size, world_size = config.optim.batch_size, dist.world_size
    if batch_size % world_size:
        raise UserInputError(f"config optim.batch_size {batch_size}: must be divisible by the {world_size} processes.")
    fill = float(preprocess.normalize(np.float32(preprocess.pad_hu)))
    dataset = PatchDataset(scans, config.data, config.augment, config.seed, fill)
    sampler = EpochSampler(dataset, world_size, dist.rank, seed=config.seed)
    workers = config.data.num_workers
    loader = DataLoader(
        dataset, batch_size=batch_size // world_size, sampler=sampler, drop_last=True,
        collate_fn=MatchingCollate(strides, config.data.patch_size, config.matching),
        num_workers=workers, persistent_workers=workers > 0,
        prefetch_factor=config.data.prefetch_factor if workers > 0 else None,
        pin_memory=dist.device.type == "cuda",
    )
    if len(loader) == 0:
        raise UserInputError(
            f"{len(dataset)} training patches per epoch over {world_size} process(es) do not fill "
            f"one batch of {batch_size // world_size}; lower optim.batch_size or raise data.crops_per_scan."
        )
    return loader, sampler


class Trainer:
    """Trains one fold from a cache into ``out_dir`` (see the module docstring).

    Args:
        config: the run's configuration.
        cache_dir: a cache made by ``scpm-train preprocess``.
        out_dir: checkpoints (``last.pt``, ``best.pt``), ``config.json``, ``train_log.csv``,
            ``validation.csv``, ``validation/epoch_<n>/`` FROC reports, TensorBoard events.
        fold: the held-out subset, or ``None`` to train on every scan without validation.
        device: ``auto``, ``cuda`` or ``cpu``.
        debug_hash_dir: if given, every process appends ``<step> <parameter digest>`` after each
            optimiser step to ``rank<r>.txt`` there (to check that DDP keeps the weights equal).
        verify_checksums: rank 0 checks every cached file's SHA-256 (sizes are always checked).
    """

    def __init__(self, config: TrainConfig, cache_dir: str | os.PathLike, out_dir: str | os.PathLike,
                 fold: int | None = None, device: str = "auto", debug_hash_dir: str | os.PathLike | None = None,
                 verify_checksums: bool = True) -> None:
        config.validate()
        self.config = config
        self.out_dir = Path(out_dir)
        self.fold = fold
        self.dist = init_distributed(device)
        if self.dist.is_main:
            check_output_folder(self.out_dir, "--out")
        self.device = self.dist.device
        self.debug_hash_dir = Path(debug_hash_dir) if debug_hash_dir is not None else None
        self.preprocess, self.train_scans, self.val_scans = load_scans(
            cache_dir, fold, config.validation, checksum=self.dist.is_main and verify_checksums)
        self.memory_format = torch.channels_last_3d if config.channels_last else torch.contiguous_format
        self.model, self.network = build_model(config, self.dist, self.memory_format)
        self.optimizer = make_optimizer(self.model, config)
        self.average = WeightAverage(self.model, config.optim.ema_decay) if config.optim.ema_decay > 0 else None
        self.autocast_dtype = autocast_dtype(self.device, config.amp, training=True)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.autocast_dtype == torch.float16)
        self.loss = SCPMLoss(config.loss)
        self.inference_config = InferenceConfig(score_threshold=config.validation.score_threshold)
        self.loader, self.sampler = build_loader(self.train_scans, self.preprocess, config, self.model.strides,
                                                 self.dist)
        self.epoch = 0
        self.step = 0
        self.best_cpm = -1.0
        self.best_epoch = -1
        self.run_log = RunLog(self.out_dir)

    # ------------------------------------------------------------------------------ state

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue exactly: weights, optimiser, scaler, RNGs, counters, config
        (what :func:`~Training.state.save_state` writes under the format's header)."""
        return {
            "epoch": self.epoch, "step": self.step, "fold": self.fold,
            "best_cpm": self.best_cpm, "best_epoch": self.best_epoch,
            "model": self.model.state_dict(), "optimizer": self.optimizer.state_dict(),
            "weight_average": self.average.state_dict() if self.average is not None else None,
            "scaler": self.scaler.state_dict(), "rng": rng_state(),
            "config": self.config.to_dict(), "preprocess": self.preprocess.to_dict(),
            "train_seriesuids": [scan.seriesuid for scan in self.train_scans],
        }

    def load_state_dict(self, state: dict[str, Any], where: str) -> None:
        saved = TrainConfig.from_dict(state["config"])
        if saved.model != self.config.model:
            raise UserInputError(f"{where}: the checkpoint is of another network configuration than config model.")
        if PreprocessConfig.from_dict(state["preprocess"]) != self.preprocess:
            raise UserInputError(f"{where}: the checkpoint was trained with another pre-processing than this cache.")
        changed = [f.name for f in dataclasses.fields(TrainConfig)
                   if getattr(saved, f.name) != getattr(self.config, f.name)]
        if changed:
            log.warning("resuming with a changed config (%s)", ", ".join(changed))
        load_weights(self.model, state["model"], where)
        if self.average is not None:
            if state.get("weight_average") is None:
                raise UserInputError(f"{where}: the run kept no weight average; resume it with optim.ema_decay=0.")
            self.average.load_state_dict(state["weight_average"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scaler.load_state_dict(state["scaler"])
        restore_rng_state(state["rng"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best_cpm, self.best_epoch = float(state["best_cpm"]), int(state["best_epoch"])

    def _start_from(self, path: str) -> None:
        """Replace the seed's initial weights by those of ``path`` (``config.init_weights``); the
        optimiser starts afresh, the moving average (if kept) from these weights."""
        model, preprocess, _, _ = load_deployable(path)
        network = network_only(model)  # a two-stage detector gives its network's weights only
        if network.config != self.config.model:
            raise UserInputError(f"{path}: config init_weights is of another network configuration than config model.")
        if preprocess != self.preprocess:
            raise UserInputError(
                f"{path}: config init_weights was trained with another pre-processing than this cache.")
        self.model.load_state_dict(network.state_dict())  # copies into the existing tensors: memory format kept
        if self.average is not None:
            self.average = WeightAverage(self.model, self.config.optim.ema_decay)
        log.info("starting from the weights of %s", path)

    def _save(self, name: str) -> None:
        save_state(self.out_dir / name, self.state_dict())

    # ------------------------------------------------------------------------------ loop

    def fit(self, resume: bool = False) -> dict[str, Any]:
        """Train to ``optim.epochs``; with ``resume``, continue from ``out_dir/last.pt`` if it exists.

        Returns:
            ``{"epochs": ..., "steps": ..., "best_cpm": ..., "best_epoch": ...}``.
        """
        last = self.out_dir / "last.pt"
        if last.is_file() and not resume:
            raise UserInputError(
                f"{last}: a run already exists here; pass --resume to continue it or pick another --out.")
        if resume and last.is_file():
            self.load_state_dict(load_state(last), str(last))
            log.info("resumed from %s at epoch %d (step %d)", last, self.epoch, self.step)
        elif self.config.init_weights:
            self._start_from(self.config.init_weights)
        if self.dist.is_main:
            self.out_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.out_dir / "config.json")
            self.run_log.open(self.epoch)
        log.info("training on %d scans (%d patches/epoch), validating on %d; %d process(es), device %s",
                 len(self.train_scans), len(cast(Sized, self.loader.dataset)), len(self.val_scans),
                 self.dist.world_size, self.device)
        every = self.config.validation.every_epochs
        try:
            for epoch in range(self.epoch, self.config.optim.epochs):
                self._train_epoch(epoch)
                self.epoch = epoch + 1
                improved = False
                if self.val_scans and every > 0 and (self.epoch % every == 0 or self.epoch == self.config.optim.epochs):
                    cpm = self.validate()
                    improved = cpm > self.best_cpm
                    if improved:
                        self.best_cpm, self.best_epoch = cpm, self.epoch
                if self.dist.is_main:
                    self._save("last.pt")
                    if improved:
                        self._save("best.pt")
        finally:
            self.run_log.close()
        return {"epochs": self.epoch, "steps": self.step, "best_cpm": self.best_cpm, "best_epoch": self.best_epoch}

    @property
    def deployed_model(self) -> SCPMNet:
        """The weights validation scores and export ships: the moving average when kept."""
        return self.average.model if self.average is not None else self.model

    def _train_epoch(self, epoch: int) -> None:
        self.network.train()
        self.sampler.set_epoch(epoch)
        steps = len(self.loader)
        window = torch.zeros(len(LOG_COLUMNS) - 4, dtype=torch.float64, device=self.device)
        window_steps, window_wait, window_start = 0, 0.0, time.perf_counter()
        batches = iter(self.loader)
        for index in range(steps):
            lr = self.config.lr_at(epoch + index / steps)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            fetch_start = time.perf_counter()
            batch = next(batches)
            window_wait += time.perf_counter() - fetch_start
            total, terms = self._step(batch)
            window[:-1] += torch.stack([total.detach(), *(terms[name].detach() for name in LOSS_TERMS)]).double()
            window_steps += 1
            if (index + 1) % self.config.log_every_steps == 0 or index + 1 == steps:
                if self.device.type == "cuda":
                    torch.cuda.synchronize(self.device)
                elapsed = time.perf_counter() - window_start
                self._log_window(epoch, lr, window, window_steps, window_wait, elapsed)
                window.zero_()
                window_steps, window_wait, window_start = 0, 0.0, time.perf_counter()

    def _step(self, batch: dict[str, Any]) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        device = self.device
        image = batch["image"].to(device, non_blocking=True).contiguous(memory_format=self.memory_format)
        origin = batch["origin_zyx"].to(device, non_blocking=True)
        shape = batch["scan_shape_zyx"].to(device, non_blocking=True)
        targets = [target.to(device) for target in batch["targets"]]
        with autocast(device, self.autocast_dtype):
            outputs = self.network(image, origin, shape)
        total, terms = self.loss(outputs, targets)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.config.optim.max_grad_norm > 0:
            self.scaler.unscale_(self.optimizer)
            nn.utils.clip_grad_norm_(self.model.parameters(), self.config.optim.max_grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if self.average is not None:
            self.average.update(self.model)
        self.step += 1
        if self.debug_hash_dir is not None:
            self.debug_hash_dir.mkdir(parents=True, exist_ok=True)
            with open(self.debug_hash_dir / f"rank{self.dist.rank}.txt", "a", encoding="utf-8") as handle:
                handle.write(f"{self.step} {parameter_digest(self.model)}\n")
        return total, terms

    def _log_window(self, epoch: int, lr: float, sums: torch.Tensor, steps: int, wait_s: float,
                    elapsed_s: float) -> None:
        """Average the window's loss terms and the data-wait share over processes; rank 0 writes."""
        sums[:-1] /= steps
        sums[-1] = wait_s / max(elapsed_s, 1e-9)
        if self.dist.enabled:
            dist.all_reduce(sums)
            sums /= self.dist.world_size
        values = sums.tolist()
        if not np.isfinite(values[0]):
            raise FloatingPointError(f"the training loss became {values[0]} at epoch {epoch}, step {self.step}; "
                                     "lower the learning rate or enable optim.max_grad_norm.")
        row = {"epoch": epoch, "step": self.step, "lr": lr, "total": values[0],
               **dict(zip(LOSS_TERMS, values[1:-1])),
               "samples_per_s": steps * self.config.optim.batch_size / max(elapsed_s, 1e-9),
               "data_wait_share": values[-1]}
        if not self.dist.is_main:
            return
        log.info("epoch %d step %d lr %.2e loss %.4f (%s) %.1f samples/s, data wait %.0f%%", epoch, self.step, lr,
                 row["total"], " ".join(f"{name} {row[name]:.4f}" for name in LOSS_TERMS), row["samples_per_s"],
                 100 * row["data_wait_share"])
        self.run_log.train_row(row)

    # ------------------------------------------------------------------------------ validation

    def validate(self) -> float:
        """Detect on this process's share of the held-out scans, gather, evaluate on rank 0; returns CPM.

        Every process gets the same CPM back (it decides which checkpoint is the best).
        """
        candidates = detect_sharded(self.deployed_model, self.preprocess, self.val_scans, self.device, self.dist.rank,
                                    self.dist.world_size, self.inference_config)
        cpm = torch.zeros(1, dtype=torch.float64)
        if self.dist.is_main:
            result = self._evaluate(candidates)
            cpm[0] = result.cpm if result is not None else -1.0
        if self.dist.enabled:
            cpm = cpm.to(self.device)
            dist.broadcast(cpm, 0)
        return float(cpm.item())

    def _evaluate(self, candidates: Findings) -> FROCResult | None:
        annotations = Findings.concat([scan.annotations for scan in self.val_scans])
        if len(annotations) == 0:
            log.warning("the held-out scans hold no nodule; FROC is undefined, validation skipped")
            return None
        excluded = Findings.concat([scan.excluded for scan in self.val_scans])
        uids = [scan.seriesuid for scan in self.val_scans]
        config = EvaluationConfig(n_bootstraps=self.config.validation.bootstraps, seed=self.config.seed)
        result = evaluate_froc(annotations, excluded, uids, candidates, config)
        write_evaluation({f"epoch {self.epoch}": result}, self.out_dir / "validation" / f"epoch_{self.epoch:03d}",
                         inputs={"fold": str(self.fold), "epoch": str(self.epoch)})
        self.run_log.validation_row(self.epoch, self.step, result)
        log.info("validation epoch %d: CPM %.3f, sensitivities %s", self.epoch, result.cpm,
                 " ".join(f"{value:.3f}" for value in result.sensitivities))
        return result

