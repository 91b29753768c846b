"""Where and in what precision the network runs: device names, the autocast policy, out of memory.

One vocabulary serves detection (:class:`~SCPMNoduleLib.inference.InferenceConfig`'s
``precision``) and training (``TrainConfig.amp``): ``auto``, ``fp32``, ``bf16``, ``fp16``;
``off`` is read as ``fp32`` (the training config's word for it). The two uses differ only where
they must, through ``training=True``: ``auto`` on CUDA picks float16 for training (the
trainer's gradient scaler exists for it) and bfloat16 where the GPU has it for detection, and
``fp16`` off CUDA is refused for training but runs in float32 for detection.

On the CPU, detection's ``auto`` is bf16 only where both the machine and the model allow it: the
CPU has native bf16 (:func:`native_bf16_cpu`; elsewhere bf16 is emulated and tens of times
slower) and the checkpoint records that its detections hold in bf16 (``precision_check``, written
by ``scpm-train export --bf16-evaluation``: :mod:`Training.precision_check`). The decision is made
per checkpoint because it is a property of the weights: bf16 once moved the detections of a tiny
*random* network by up to 0.26 voxel (probabilities by up to 0.28, one detection lost), while the
trained demo's top 20 detections on unseen phantoms moved by at most 0.14 mm (probabilities by
0.011) and ran 1.5x faster on a CPU with AVX512-BF16.
"""

from __future__ import annotations

import contextlib
import functools
import platform
from typing import Any

import torch

from .errors import UserInputError

__all__ = [
    "PRECISIONS",
    "autocast",
    "autocast_dtype",
    "detection_precision",
    "device_name",
    "is_out_of_memory",
    "native_bf16_cpu",
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


def _private_check(owner: Any, name: str) -> bool:
    """``owner.name()`` of one of torch's private capability checks; ``False`` where it is missing
    (another torch version) or fails."""
    try:
        return bool(getattr(owner, name)())
    except (AttributeError, RuntimeError):
        return False


@functools.cache
def native_bf16_cpu() -> bool:
    """Whether this CPU computes bf16 natively: oneDNN supports bf16 on it and the CPU has the
    AVX512-BF16 dot products or AMX tiles.

    oneDNN's own check (``torch.ops.mkldnn._is_mkldnn_bf16_supported``) is true on every CPU with
    AVX-512 core, where bf16 is emulated by conversions to float32 and runs tens of times slower
    than float32, so it is not enough alone. All three checks are private torch functions
    (``torch.cpu._is_avx512_bf16_supported``, ``torch.cpu._is_amx_tile_supported``): each is
    looked up by name, and one that this torch lacks counts as ``False`` (fp32, the safe side).
    """
    onednn = _private_check(torch.ops.mkldnn, "_is_mkldnn_bf16_supported")
    units = _private_check(torch.cpu, "_is_avx512_bf16_supported") or _private_check(torch.cpu,
                                                                                       "_is_amx_tile_supported")
    return onednn and units


def detection_precision(device: torch.device, precision: str, *,
                        bf16_holds: bool = False) -> tuple[torch.dtype | None, str]:
    """The autocast type of a detection on ``device`` (``None``: float32) and why, in a few words
    (for the JSON report): :func:`autocast_dtype` with ``training=False``."""
    dtype = autocast_dtype(device, precision, bf16_holds=bf16_holds)
    precision = _ALIASES.get(precision, precision)
    name = precision_name(dtype)
    if precision != "auto":
        return dtype, "asked for" if name == precision else f"{precision} asked for; fp32 off CUDA"
    if device.type == "cuda":
        return dtype, f"auto: CUDA {'with' if dtype == torch.bfloat16 else 'without'} bf16"
    if device.type != "cpu":
        return dtype, f"auto: fp32 on {device.type}"
    if not native_bf16_cpu():
        return dtype, "auto: the CPU has no native bf16"
    if not bf16_holds:
        return dtype, "auto: the checkpoint records no bf16 check that holds"
    return dtype, "auto: native bf16 CPU and the checkpoint's bf16 check holds"


def autocast_dtype(device: torch.device, precision: str, *, training: bool = False,
                   bf16_holds: bool = False) -> torch.dtype | None:
    """The autocast type of a precision setting on ``device``, ``None`` for float32.

    ==========  ==================================  ===================================
    precision   detection (``training=False``)      training (``training=True``)
    ==========  ==================================  ===================================
    ``auto``    CUDA: bf16 where supported, else    CUDA: fp16 (with gradient scaling);
                fp16; CPU: bf16 where               elsewhere fp32
                ``bf16_holds`` and
                :func:`native_bf16_cpu`, else
                fp32; elsewhere fp32
    ``fp32``    fp32 (``off`` is the same)          fp32
    ``bf16``    bf16                                bf16
    ``fp16``    CUDA: fp16; elsewhere fp32          CUDA: fp16; elsewhere bad input
    ==========  ==================================  ===================================

    ``bf16_holds``: the checkpoint's own record (``metadata["precision_check"]["bf16_holds"]``)
    that its detections in bf16 match those in fp32 within tolerance; without it ``auto`` is fp32
    on every CPU (see the module text for why it is decided per checkpoint). Training ignores it.

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
        cpu_bf16 = device.type == "cpu" and not training and bf16_holds and native_bf16_cpu()
        return torch.bfloat16 if cpu_bf16 else None
    if training:
        return torch.float16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def device_name(device: torch.device) -> str:
    """The processor behind ``device``, in words (for reports of measurements): the GPU's name, or
    the CPU's model name from ``/proc/cpuinfo`` (``platform.processor()`` elsewhere), with
    ``native bf16`` or ``no native bf16``."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        with open("/proc/cpuinfo", encoding="utf-8", errors="replace") as cpuinfo:
            name = next((line.split(":", 1)[1].strip() for line in cpuinfo if line.startswith("model name")), name)
    return f"{name or 'unknown CPU'} ({'native' if native_bf16_cpu() else 'no native'} bf16)"


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
