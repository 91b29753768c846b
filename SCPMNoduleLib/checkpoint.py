"""Detector checkpoints: one file holding a network, its pre-processing and what it is.

A checkpoint is read with ``torch.load(weights_only=True)`` (no code is unpickled): a dict with
``format`` (:data:`CHECKPOINT_FORMAT`), ``version`` (:data:`CHECKPOINT_VERSION`),
``model_config`` (:class:`~SCPMNoduleLib.model.SCPMNetConfig`'s fields), ``preprocess_config``
(:meth:`~SCPMNoduleLib.preprocess.PreprocessConfig.to_dict`, with its own version),
``state_dict`` (CPU tensors) and ``metadata`` (JSON types: training data, epochs, metrics,
whether the weights are trained). Which checkpoints ship, under which names, is
:mod:`SCPMNoduleLib.models`'s business.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from pathlib import Path

import torch

from .config_dict import dataclass_from_dict
from .documents import check_document
from .errors import UserInputError
from .io import atomic_write
from .model import SCPMNet, SCPMNetConfig
from .preprocess import PreprocessConfig

__all__ = ["CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "load_checkpoint", "save_checkpoint"]

CHECKPOINT_FORMAT = "scpm-nodule-checkpoint"
CHECKPOINT_VERSION = 1


def save_checkpoint(path: str | os.PathLike, model: SCPMNet, preprocess: PreprocessConfig,
                    metadata: dict | None = None) -> None:
    """Write a checkpoint readable with ``torch.load(weights_only=True)``, atomically.

    ``metadata`` (JSON types only) holds what a reader should know: training data, epochs,
    metrics, whether the weights are trained.
    """
    checkpoint = {
        "format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION,
        "model_config": asdict(model.config), "preprocess_config": preprocess.to_dict(),
        "state_dict": {k: v.detach().cpu().clone() for k, v in model.state_dict().items()},
        "metadata": dict(metadata or {}),
    }
    with atomic_write(path, "wb") as handle:
        torch.save(checkpoint, handle)


def load_checkpoint(path: str | os.PathLike) -> tuple[SCPMNet, PreprocessConfig, dict]:
    """Read a checkpoint without unpickling code; refuse anything that is not ours, with one sentence.

    Returns the model (eval mode, CPU), its pre-processing and its metadata.
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: checkpoint file not found.")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch raises many types for a damaged or foreign file
        raise UserInputError(f"{path}: the file is not a readable checkpoint (damaged, or not saved by "
                             "torch).") from None
    check_document(checkpoint, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, str(path),
                   "an SCPM-Net checkpoint of this program")
    try:
        config = dataclass_from_dict(SCPMNetConfig, checkpoint.get("model_config"), "model_config")
    except UserInputError as error:
        raise UserInputError(f"{path}: the checkpoint's architecture is not one this program's SCPM-Net can "
                             f"build ({str(error).rstrip('.')}).") from None
    try:
        preprocess = PreprocessConfig.from_dict(checkpoint.get("preprocess_config", {}))
    except UserInputError as error:
        raise UserInputError(f"{path}: {error}") from None
    model = SCPMNet(config)
    try:
        model.load_state_dict(checkpoint["state_dict"], strict=True)
    except (KeyError, RuntimeError):
        raise UserInputError(f"{path}: the checkpoint's weights do not match its architecture.") from None
    _check_finite(model, path)
    return model.eval(), preprocess, dict(checkpoint.get("metadata", {}))


def _check_finite(model: SCPMNet, path: Path) -> None:
    """Refuse weights that hold NaN or infinite values (a training run that diverged): one such
    weight makes every output NaN, so the detector would report no nodule in any scan, silently."""
    for name, tensor in model.state_dict().items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            count = int((~torch.isfinite(tensor)).sum())
            raise UserInputError(f"{path}: the checkpoint's weights hold NaN or infinite values ({count} in {name}), "
                                 "as a training run that diverged leaves them; it cannot detect anything.")
