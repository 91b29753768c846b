"""Training configuration: dataclasses with the paper's defaults, JSON round trip, CLI overrides.

Every hyper-parameter of a training run is a field here (the network, matching and loss configs
are the library's own dataclasses), so one JSON file describes a run completely. The file written
beside the checkpoints is the config actually used, overrides included.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from SCPMNoduleLib.config_dict import check_choice, dataclass_from_dict
from SCPMNoduleLib.documents import read_json
from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.io import atomic_write
from SCPMNoduleLib.losses import LossConfig
from SCPMNoduleLib.matching import MatchingConfig
from SCPMNoduleLib.model import SCPMNetConfig
from SCPMNoduleLib.runtime import PRECISIONS

from .augment import AugmentConfig

__all__ = [
    "AMP_SETTINGS",
    "DataConfig",
    "LR_INTERPOLATIONS",
    "OPTIMIZERS",
    "OptimConfig",
    "TrainConfig",
    "ValidationConfig",
    "load_config",
    "save_config",
]

AMP_SETTINGS = (*PRECISIONS, "off")
"""The values of ``TrainConfig.amp``: the runtime's precisions, and ``off``, the training config's
word for ``fp32`` before training and detection shared one vocabulary; configs written then say
``off``, and :func:`~SCPMNoduleLib.runtime.autocast_dtype` reads it as ``fp32``."""

OPTIMIZERS = ("sgd", "adamw")
"""The values of ``OptimConfig.optimizer``."""

LR_INTERPOLATIONS = ("step", "linear")
"""The values of ``OptimConfig.lr_interpolation``."""


@dataclass
class DataConfig:
    """Patch sampling.

    Attributes:
        patch_size: side of the cubic training patch, voxels (= mm); a multiple of the network's
            size divisor.
        crops_per_scan: patches drawn from each training scan per epoch (epoch length =
            ``crops_per_scan * number of training scans``).
        nodule_fraction: share of patches (of scans that have nodules) centered near a nodule;
            the others are centered anywhere in the scan, edges included.
        jitter_fraction: a nodule-centered patch's center is the nodule center plus a uniform
            offset in ``[-j, j]`` per axis, ``j = jitter_fraction * patch_size``.
        nodule_size_power: a nodule-centered patch picks nodule ``n`` of its scan with probability
            proportional to ``r_n ** -nodule_size_power``; 0 picks uniformly, 2 favours a 3 mm
            nodule nine times over a 9 mm one (small nodules are the ones a detector misses).
        ignore_excluded: the excluded findings (``annotations_excluded.csv``) are ignored regions
            for the matching, as the evaluation ignores candidates on them; ``False`` trains
            them as background (nodules under 3 mm then teach the network to suppress 3 mm ones).
        num_workers: DataLoader worker processes per training process.
        prefetch_factor: batches each worker prepares ahead.
    """

    patch_size: int = 96
    crops_per_scan: int = 1
    nodule_fraction: float = 0.5
    jitter_fraction: float = 0.25
    nodule_size_power: float = 0.0
    ignore_excluded: bool = True
    num_workers: int = 2
    prefetch_factor: int = 2


@dataclass
class OptimConfig:
    """The optimiser, the learning-rate schedule (paper section 3.5) and weight averaging.

    Attributes:
        batch_size: global batch size (split evenly over the DDP processes).
        epochs: number of epochs.
        optimizer: ``sgd`` (the paper's) or ``adamw`` (decoupled weight decay; converges in far
            fewer steps for the small demo network, where a CPU hour buys only ~25,000 patches).
        momentum, nesterov: SGD settings (``momentum`` is AdamW's beta1).
        weight_decay: L2 penalty for SGD, decoupled decay for AdamW.
        lr_schedule: ``(start_epoch, lr)`` pairs in increasing epoch order; the learning rate of
            epoch ``e`` is that of the last pair with ``start_epoch <= e``. Paper: 1e-4 warm-up for
            20 epochs, then 1e-2, 1e-3 from epoch 80, 1e-4 from epoch 150.
        lr_interpolation: ``step`` holds each pair's rate until the next pair starts (the
            paper's); ``linear`` ramps linearly from one pair's rate to the next's, step by step
            (fractional epochs), and holds the last, so ``[[0, 1e-3], [15, 1e-3], [44, 0]]`` is
            constant, then a linear decay to zero at the end of a 44-epoch run.
        max_grad_norm: clip the gradients' global L2 norm to this value; 0 disables clipping.
        ema_decay: keep an exponential moving average of the weights and BatchNorm statistics,
            updated after every optimiser step (:class:`~Training.averaging.WeightAverage`);
            validation, ``best.pt`` selection and export then use the average. 0 disables it.
    """

    batch_size: int = 24
    epochs: int = 170
    optimizer: str = "sgd"
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    lr_schedule: tuple[tuple[int, float], ...] = ((0, 1e-4), (20, 1e-2), (80, 1e-3), (150, 1e-4))
    lr_interpolation: str = "step"
    max_grad_norm: float = 0.0
    ema_decay: float = 0.0


@dataclass
class ValidationConfig:
    """Validation on the fold's held-out scans with the real detector and LUNA16's FROC.

    Attributes:
        every_epochs: validate after every this many epochs (and after the last); 0 disables.
        max_scans: validate on at most this many held-out scans (the first in uid order);
            0 means all.
        bootstraps: bootstrap resamples for the FROC confidence bands.
        score_threshold: the detector's probability threshold during validation and
            cross-validation; lower than the detector's default, because the FROC curve up to
            8 FPs per scan is built from the low-probability candidates too (LUNA16 keeps up to
            100 per scan).
    """

    every_epochs: int = 10
    max_scans: int = 0
    bootstraps: int = 1000
    score_threshold: float = 0.01


@dataclass
class TrainConfig:
    """A whole training run.

    Attributes:
        seed: seeds the weights' initialisation and every sample's crop and augmentation.
        amp: mixed precision, in the detector's words (:data:`~SCPMNoduleLib.runtime.PRECISIONS`,
            :func:`~SCPMNoduleLib.runtime.autocast_dtype` with ``training=True``): ``auto``
            (float16 autocast with gradient scaling on CUDA, float32 on CPU), ``fp32`` (or ``off``),
            ``bf16`` (bfloat16 autocast, any device) or ``fp16`` (CUDA only).
        sync_batchnorm: under DDP, compute BatchNorm statistics over all processes' batches.
        log_every_steps: log the training terms every this many optimiser steps.
        cudnn_benchmark: let cuDNN pick the fastest convolution algorithms (not bit-reproducible).
        channels_last: keep weights and patches in the channels-last-3d memory format (the demo
            network's training step took 0.45 s instead of 0.58 s per batch of four 64^3 patches
            on two CPU cores; the inference default too).
        init_weights: start from these weights instead of the seed's initialisation (fine-tuning):
            a training state (``best.pt``, ``last.pt``, its moving average when it kept one) or a
            detector checkpoint, of the same network (``model``) and pre-processing as the cache.
            Read once, when the run starts; ``--resume`` continues from ``last.pt`` without it.
    """

    seed: int = 0
    data: DataConfig = field(default_factory=DataConfig)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    model: SCPMNetConfig = field(default_factory=SCPMNetConfig)
    matching: MatchingConfig = field(default_factory=MatchingConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    validation: ValidationConfig = field(default_factory=ValidationConfig)
    amp: str = "auto"
    sync_batchnorm: bool = False
    log_every_steps: int = 10
    cudnn_benchmark: bool = True
    channels_last: bool = True
    init_weights: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict` (:func:`~SCPMNoduleLib.config_dict.dataclass_from_dict`), validated."""
        return dataclass_from_dict(cls, data, "config")

    def validate(self) -> None:
        """Raise :class:`UserInputError` for values no training run can use.

        Runs when the config is made; call it again after changing a field (the config is
        mutable). The sentences name the settings by their keys in the JSON file and the
        overrides (``config optim.ema_decay: ...``), except the string options, which are refused
        as every config's are (:func:`~SCPMNoduleLib.config_dict.check_choice`:
        ``OptimConfig.optimizer: 'adam' is not one of sgd, adamw.``); the library's configs inside
        check their own values (``MatchingConfig.top_k: ...``).
        """
        check_choice(self, "amp", AMP_SETTINGS)
        if self.model.candidate_classifier is not None:
            raise UserInputError("config model.candidate_classifier: the candidate classifier is trained on a "
                                 "trained detector by scpm-train classifier, not by fit; leave it out.")
        schedule = self.optim.lr_schedule
        if not schedule or schedule[0][0] != 0 or any(a[0] >= b[0] for a, b in zip(schedule, schedule[1:])):
            raise UserInputError(
                f"config optim.lr_schedule: {schedule!r} must start at epoch 0 and increase."
            )
        if not all(math.isfinite(rate) and rate >= 0 for _, rate in schedule):
            raise UserInputError(f"config optim.lr_schedule: {schedule!r} holds a learning rate that is negative, "
                                 "NaN or infinite.")
        for key, value, lowest, below in (("optim.weight_decay", self.optim.weight_decay, 0.0, None),
                                          ("optim.momentum", self.optim.momentum, 0.0, 1.0),
                                          ("optim.max_grad_norm", self.optim.max_grad_norm, 0.0, None),
                                          ("data.jitter_fraction", self.data.jitter_fraction, 0.0, None),
                                          ("data.nodule_size_power", self.data.nodule_size_power, 0.0, None),
                                          ("validation.score_threshold", self.validation.score_threshold, 0.0, 1.0)):
            if not (math.isfinite(value) and value >= lowest and (below is None or value < below)):
                rule = f"in [{lowest:g}, {below:g})" if below is not None else f"a finite number of at least {lowest:g}"
                raise UserInputError(f"config {key}: {value} is not {rule}.")
        check_choice(self.optim, "lr_interpolation", LR_INTERPOLATIONS)
        if not 0.0 <= self.optim.ema_decay < 1.0:
            raise UserInputError(f"config optim.ema_decay: {self.optim.ema_decay} is not in [0, 1).")
        check_choice(self.optim, "optimizer", OPTIMIZERS)
        if not 0.0 <= self.data.nodule_fraction <= 1.0:
            raise UserInputError(f"config data.nodule_fraction: {self.data.nodule_fraction} is not in [0, 1].")
        for name in ("patch_size", "crops_per_scan"):
            if getattr(self.data, name) < 1:
                raise UserInputError(f"config data.{name}: must be at least 1.")
        if self.optim.batch_size < 1 or self.optim.epochs < 1:
            raise UserInputError("config optim.batch_size and optim.epochs must be at least 1.")
        for key, value, lowest in (("validation.every_epochs", self.validation.every_epochs, 0),
                                   ("validation.max_scans", self.validation.max_scans, 0),
                                   ("validation.bootstraps", self.validation.bootstraps, 0),
                                   ("data.num_workers", self.data.num_workers, 0),
                                   ("data.prefetch_factor", self.data.prefetch_factor, 1),
                                   ("log_every_steps", self.log_every_steps, 1)):
            if value < lowest:
                raise UserInputError(f"config {key}: {value} is not at least {lowest}.")

    def lr_at(self, epoch: float) -> float:
        """The learning rate at ``epoch`` (0-based; fractional within an epoch) from ``optim.lr_schedule``.

        With ``step`` interpolation it is the rate of the last pair ``(e_i, r_i)`` with
        ``e_i <= epoch``; with ``linear``, ``r_i + (epoch - e_i) / (e_{i+1} - e_i) * (r_{i+1} - r_i)``
        between pairs ``i`` and ``i + 1``, and the last rate from the last pair on.
        """
        schedule = self.optim.lr_schedule
        i = max(k for k, (start, _) in enumerate(schedule) if start <= epoch)
        start, lr = schedule[i]
        if self.optim.lr_interpolation == "step" or i + 1 == len(schedule):
            return float(lr)
        end, next_lr = schedule[i + 1]
        return float(lr + (epoch - start) / (end - start) * (next_lr - lr))


def load_config(path: str | os.PathLike | None = None, overrides: Sequence[str] = ()) -> TrainConfig:
    """The defaults, updated by a JSON file (any subset of keys), then by ``key.sub=value`` overrides.

    Override values are parsed as JSON when they parse (``3``, ``1e-3``, ``[64, 64]``, ``true``)
    and taken as strings otherwise, e.g. ``optim.epochs=5 data.patch_size=64 amp=off``.
    """
    merged = TrainConfig().to_dict()
    if path is not None:
        _merge(merged, read_json(path), str(path))
    for item in overrides:
        key, sep, text = item.partition("=")
        if not sep or not key:
            raise UserInputError(f"override {item!r}: expected KEY=VALUE, e.g. optim.epochs=5.")
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            value = text
        *parents, leaf = key.split(".")
        _merge(merged, _nest(parents + [leaf], value), f"override {item!r}")
    return TrainConfig.from_dict(merged)


def _nest(keys: list[str], value: Any) -> dict[str, Any]:
    for key in reversed(keys):
        value = {key: value}
    return value


def _merge(base: dict[str, Any], update: Any, where: str) -> None:
    if not isinstance(update, dict):
        raise UserInputError(f"{where}: expected a JSON object.")
    for key, value in update.items():
        if key not in base:
            raise UserInputError(f"{where}: unknown key {key!r}; known: {', '.join(sorted(base))}.")
        if isinstance(base[key], dict) and isinstance(value, dict):
            _merge(base[key], value, f"{where}: {key}")
        else:
            base[key] = value


def save_config(config: TrainConfig, path: str | os.PathLike) -> None:
    """Write the config as indented JSON, atomically."""
    with atomic_write(path) as handle:
        json.dump(config.to_dict(), handle, indent=2)
        handle.write("\n")
