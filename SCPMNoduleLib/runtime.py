"""Where and in what precision the network runs: device names, the autocast policy, out of memory.

One vocabulary serves detection (:class:`~SCPMNoduleLib.inference.InferenceConfig`'s
``precision``) and training (``TrainConfig.amp``): ``auto``, ``fp32``, ``bf16``, ``fp16``;
``off`` is read as ``fp32`` (the training config's word for it). The two uses differ only where
they must, through ``training=True``: ``auto`` on CUDA picks float16 for training (the
trainer's gradient scaler exists for it) and bfloat16 where the GPU has it for detection, and
``fp16`` off CUDA is refused for training but runs in float32 for detection.
"""

from __future__ import annotations

import contextlib

import torch

from .errors import UserInputError

__all__ = [
    "PRECISIONS",
    "autocast",
    "autocast_dtype",
    "is_out_of_memory",
    "precision_name",
    "resolve_device",
]

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
_ALIASES = {"off": "fp32"}
_NAMES = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
# torch.OutOfMemoryError (torch >= 2.5) covers every accelerator; torch.cuda's is the same class
# there and the only one before
_OUT_OF_MEMORY_ERRORS = (getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError), torch.cuda.OutOfMemoryError)
_CPU_OUT_OF_MEMORY = ("can't allocate memory", "DefaultCPUAllocator: not enough memory")


def resolve_device(device: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cpu``, ``cuda``, ``cuda:N``; CUDA without a GPU is bad input."""
    if device not in ("auto", "cpu", "cuda") and not device.startswith("cuda:"):
        raise UserInputError(f"device {device!r}: expected auto, cpu or cuda.")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError(f"device {device!r}: no CUDA GPU is available to this program.")
    return torch.device(device)


def autocast_dtype(device: torch.device, precision: str, *, training: bool = False) -> torch.dtype | None:
    """The autocast type of a precision setting on ``device``, ``None`` for float32.

    ==========  ==================================  ===================================
    precision   detection (``training=False``)      training (``training=True``)
    ==========  ==================================  ===================================
    ``auto``    CUDA: bf16 where supported, else    CUDA: fp16 (with gradient scaling);
                fp16; elsewhere fp32                elsewhere fp32
    ``fp32``    fp32 (``off`` is the same)          fp32
    ``bf16``    bf16                                bf16
    ``fp16``    CUDA: fp16; elsewhere fp32          CUDA: fp16; elsewhere bad input
    ==========  ==================================  ===================================

    ``auto`` is fp32 on the CPU: bf16 autocast there moved detections of a tiny random network
    by up to 0.26 voxel and changed probabilities by up to 0.28 against fp32 (and one detection
    was lost), beyond the 0.1 voxel / 0.01 the tiling is held to; ``bf16`` is available to
    ask for it explicitly on CPUs with native bf16.

    Raises:
        UserInputError: an unknown precision, or ``fp16`` training off CUDA.
    """
    precision = _ALIASES.get(precision, precision)
    if precision not in PRECISIONS:
        raise UserInputError(f"precision {precision!r}: expected one of {', '.join(PRECISIONS)}.")
    cuda = device.type == "cuda"
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if training and not cuda:
            raise UserInputError("precision fp16: float16 training needs a CUDA device; use bf16 or fp32 on CPU.")
        return torch.float16 if cuda else None
    if not cuda:
        return None
    if training:
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def precision_name(dtype: torch.dtype | None) -> str:
    """``fp32``, ``bf16`` or ``fp16``: the name of an :func:`autocast_dtype` result."""
    return _NAMES[dtype]


def autocast(device: torch.device, dtype: torch.dtype | None) -> contextlib.AbstractContextManager:
    """Autocast to ``dtype`` on ``device``'s type; nothing at all for ``None`` (float32), so
    that any device works, also those torch has no autocast for."""
    return contextlib.nullcontext() if dtype is None else torch.autocast(device.type, dtype=dtype)


def is_out_of_memory(error: BaseException) -> bool:
    """Whether ``error`` says that memory ran out.

    Accelerators raise ``torch.OutOfMemoryError`` (``torch.cuda.OutOfMemoryError`` before torch
    2.5); the CPU allocator raises a plain ``RuntimeError`` (``DefaultCPUAllocator: can't
    allocate memory`` on POSIX, ``not enough memory`` on Windows; still so in torch 2.13),
    which only its message tells apart.
    """
    if isinstance(error, _OUT_OF_MEMORY_ERRORS):
        return True
    return isinstance(error, RuntimeError) and any(text in str(error) for text in _CPU_OUT_OF_MEMORY)
