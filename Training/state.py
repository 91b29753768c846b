"""The training state file (``last.pt``, ``best.pt``): its format, writing, reading, and the network it deploys.

A training state is one ``torch.save`` dict, read back with ``weights_only=True`` (tensors and
plain data, no code): ``format``/``version``/``library_version``, then what
:meth:`Training.trainer.Trainer.state_dict` holds (weights, their moving average, optimiser,
gradient scaler, RNG states, epoch, step, best CPM, config, pre-processing, training scans).
"""

from __future__ import annotations

import hashlib
import os
import random
from typing import Any, NamedTuple, cast

import numpy as np
import torch
from torch import nn

from SCPMNoduleLib import __version__
from SCPMNoduleLib.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, load_torch_file, save_torch_file
from SCPMNoduleLib.documents import check_document
from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.model import SCPMNet
from SCPMNoduleLib.preprocess import PreprocessConfig

from .config import TrainConfig

__all__ = [
    "STATE_FORMAT", "STATE_VERSION", "Deployable", "file_format", "load_deployable", "load_state", "load_weights",
    "model_from_state", "parameter_digest", "restore_rng_state", "rng_state", "save_state",
]

STATE_FORMAT = "scpm-train-state"
STATE_VERSION = 1


def rng_state() -> dict[str, Any]:
    """The torch, CUDA, NumPy (legacy global) and Python RNG states, as tensors and plain data."""
    # legacy=True (the default) returns the MT19937 tuple; the stubs' return type also allows
    # the dict of legacy=False
    name, keys, position, has_gauss, gauss = cast(tuple[str, np.ndarray, int, int, float],
                                                  np.random.get_state(legacy=True))
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "position": int(position),
                  "has_gauss": int(has_gauss), "gauss": float(gauss)},
        "python": random.getstate(),
    }


def restore_rng_state(state: dict[str, Any]) -> None:
    """Set every RNG back to what :func:`rng_state` returned (CUDA's only where a device is present)."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    numpy = state["numpy"]
    np.random.set_state((numpy["name"], numpy["keys"].numpy().astype(np.uint32), numpy["position"],
                         numpy["has_gauss"], numpy["gauss"]))
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))


def save_state(path: str | os.PathLike, fields: dict[str, Any]) -> None:
    """Write ``fields`` under this format's header (format, version, library version), atomically."""
    save_torch_file(path, {"format": STATE_FORMAT, "version": STATE_VERSION, "library_version": __version__,
                           **fields})


def file_format(path: str | os.PathLike) -> str | None:
    """The ``format`` field of a dict saved with ``torch.save`` (a training state or a detector
    checkpoint), or ``None`` for anything else (missing, damaged, foreign).

    Only the pickled structure is read: the tensors are memory-mapped, not loaded.
    """
    try:
        saved = load_torch_file(path, "file", mmap=True)
    except UserInputError:
        return None
    return saved.get("format") if isinstance(saved, dict) else None


def load_state(path: str | os.PathLike) -> dict[str, Any]:
    """A training state written by :func:`save_state` (weights-only unpickling: tensors and plain data)."""
    state = load_torch_file(path, "training checkpoint")
    return check_document(state, STATE_FORMAT, STATE_VERSION, str(path), "a scpm-train training checkpoint")


def load_weights(model: nn.Module, weights: dict[str, torch.Tensor], where: str) -> None:
    """``model.load_state_dict(weights)``, a mismatch reported as bad input naming ``where``."""
    try:
        model.load_state_dict(weights)
    except RuntimeError:
        raise UserInputError(f"{where}: the checkpoint's weights do not fit its network config "
                             "(saved by another version of the network code?).") from None


class Deployable(NamedTuple):
    """What :func:`load_deployable` reads from a training state or a detector checkpoint."""

    model: SCPMNet
    preprocess: PreprocessConfig
    training: dict[str, Any] | None
    """The training record (what ``export`` writes into a checkpoint's metadata: epochs, steps,
    fold, training scans, best epoch, validation CPM and the training config); ``None`` when a
    checkpoint records no training."""
    metadata: dict[str, Any]
    """A detector checkpoint's whole metadata (its ``precision_check`` among it); empty for a
    training state."""


def load_deployable(path: str | os.PathLike) -> Deployable:
    """The network, pre-processing, training record and metadata of a training state (``best.pt``,
    ``last.pt``) or of a detector checkpoint, read once."""
    if file_format(path) == CHECKPOINT_FORMAT:  # anything else: load_state names the problem
        model, preprocess, metadata = load_checkpoint(path)
        training = metadata.get("training")
        return Deployable(model, preprocess, training if isinstance(training, dict) else None, metadata)
    state = load_state(path)
    training = {"epochs": state["epoch"], "steps": state["step"], "fold": state["fold"],
                "train_scans": len(state["train_seriesuids"]), "best_epoch": state["best_epoch"],
                "validation_cpm": state["best_cpm"], "config": state["config"]}
    return Deployable(model_from_state(state, str(path)), PreprocessConfig.from_dict(state["preprocess"]),
                      training, {})


def model_from_state(state: dict[str, Any], where: str) -> SCPMNet:
    """The network a training state deploys (CPU, train mode): its weights' moving average when the
    run kept one (``optim.ema_decay > 0``), its last weights otherwise."""
    model = SCPMNet(TrainConfig.from_dict(state["config"]).model)
    average = state.get("weight_average")
    load_weights(model, average["weights"] if average is not None else state["model"], where)
    return model


def parameter_digest(model: nn.Module) -> str:
    """SHA-256 over every parameter's bytes in ``named_parameters`` order (identical weights <=> equal)."""
    digest = hashlib.sha256()
    for name, parameter in model.named_parameters():
        digest.update(name.encode())
        digest.update(parameter.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()
