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

import io
import os
import pickle
import re
import warnings
import zipfile
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from .config_dict import dataclass_from_dict
from .documents import check_document
from .errors import UserInputError, reported_os_errors
from .io import atomic_write
from .model import SCPMNet, SCPMNetConfig
from .preprocess import PreprocessConfig

__all__ = [
    "CHECKPOINT_FORMAT", "CHECKPOINT_VERSION", "bf16_holds", "load_checkpoint", "load_torch_file", "save_checkpoint",
    "save_torch_file",
]

CHECKPOINT_FORMAT = "scpm-nodule-checkpoint"
CHECKPOINT_VERSION = 1


def save_torch_file(path: str | os.PathLike, document: dict[str, Any]) -> None:
    """``torch.save(document)`` to ``path``, atomically.

    The archive is built in memory first, then written in one go, so that a write failure (a full
    disk) is the operating system's error, not torch's ``RuntimeError`` about zip positions.

    Raises:
        UserInputError: the file could not be written, naming it and the reason.
    """
    buffer = io.BytesIO()
    torch.save(document, buffer)
    with reported_os_errors("write", path), atomic_write(path, "wb") as handle:
        handle.write(buffer.getbuffer())


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
    save_torch_file(path, checkpoint)


def bf16_holds(metadata: dict) -> bool:
    """Whether a checkpoint's metadata records that its detections hold in bf16
    (``metadata["precision_check"]["bf16_holds"]``, written by ``scpm-train export
    --bf16-evaluation``); ``False`` without such a record, so that ``auto`` stays fp32 on the CPU."""
    check = metadata.get("precision_check")
    return isinstance(check, dict) and check.get("bf16_holds") is True


def _load_problem(path: Path, error: Exception) -> str:
    """What is wrong with a file ``torch.load(weights_only=True)`` refused, in words (never torch's
    advice to load it with ``weights_only=False``, which would run whatever code it holds)."""
    if path.stat().st_size == 0:
        return "the file is empty"
    if not zipfile.is_zipfile(path):
        return "not a file saved by torch: truncated, damaged or another kind of file"
    if isinstance(error, pickle.UnpicklingError):
        found = re.search(r"GLOBAL ([\w.]+)", str(error))
        objects = f"a {found.group(1)} object" if found else "Python objects"
        return (f"it holds {objects} besides tensors and plain data; such objects are never loaded, because "
                "unpickling them could run code")
    return "the torch archive is damaged"


def load_torch_file(path: str | os.PathLike, what: str, mmap: bool = False) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU: tensors and plain data, no code unpickled.

    Args:
        path: the file.
        what: what it should be, in words (``"checkpoint"``, ``"training checkpoint"``).
        mmap: memory-map the tensors instead of reading them (to read only the structure).

    Raises:
        UserInputError: ``"<path>: <what> not found."`` or ``"<path>: the file is not a readable
            <what> (<reason>)."``, the reason saying what is wrong (empty, not saved by torch,
            damaged, holding objects that are not loaded).
    """
    path = Path(path)
    if not path.is_file():
        raise UserInputError(f"{path}: {what} not found.")
    try:
        with warnings.catch_warnings():  # torch warns on stderr about pickle protocols of foreign files
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except Exception as error:  # torch raises many types for a damaged or foreign file
        raise UserInputError(f"{path}: the file is not a readable {what} ({_load_problem(path, error)}).") from None


def load_checkpoint(path: str | os.PathLike) -> tuple[SCPMNet, PreprocessConfig, dict]:
    """Read a checkpoint without unpickling code; refuse anything that is not ours, with one sentence.

    Returns the model (eval mode, CPU), its pre-processing and its metadata.
    """
    path = Path(path)
    checkpoint = load_torch_file(path, "checkpoint")
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
