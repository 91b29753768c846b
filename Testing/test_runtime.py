"""Devices, the autocast policy shared by detection and training, out-of-memory detection."""

import sys
from pathlib import Path

import pytest
import torch

from SCPMNoduleLib.errors import UserInputError
from SCPMNoduleLib.runtime import (
    autocast,
    autocast_dtype,
    detection_precision,
    device_name,
    is_out_of_memory,
    native_bf16_cpu,
    precision_name,
    resolve_device,
)

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("bf16_supported", [True, False])
def test_autocast_policy_for_detection_and_training(monkeypatch, bf16_supported):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *args, **kwargs: bf16_supported)
    detection_auto = torch.bfloat16 if bf16_supported else torch.float16
    expected = {  # (device, precision): (detection, training)
        (CPU, "auto"): (None, None), (CUDA, "auto"): (detection_auto, torch.float16),
        (CPU, "fp32"): (None, None), (CUDA, "fp32"): (None, None),
        (CPU, "off"): (None, None), (CUDA, "off"): (None, None),
        (CPU, "bf16"): (torch.bfloat16, torch.bfloat16), (CUDA, "bf16"): (torch.bfloat16, torch.bfloat16),
        (CPU, "fp16"): (None, "refused"), (CUDA, "fp16"): (torch.float16, torch.float16),
    }
    for (device, precision), (detection, training) in expected.items():
        assert autocast_dtype(device, precision) == detection, (device, precision)
        if training == "refused":
            with pytest.raises(UserInputError, match="float16 training needs a CUDA device"):
                autocast_dtype(device, precision, training=True)
        else:
            assert autocast_dtype(device, precision, training=True) == training, (device, precision)



def _cpu_flags() -> set[str]:
    for line in Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    return set()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the CPU's flags from /proc/cpuinfo (Linux)")
def test_native_bf16_is_what_the_cpu_flags_say():
    """avx512_bf16 (AVX512-BF16 dot products) or amx_bf16 (AMX tiles): oneDNN's own check alone
    is true on every AVX-512 CPU, where bf16 is emulated."""
    flags = _cpu_flags()
    assert native_bf16_cpu() == bool({"avx512_bf16", "amx_bf16"} & flags), sorted(f for f in flags if "512" in f)
    assert device_name(CPU).endswith("(native bf16)" if native_bf16_cpu() else "(no native bf16)")


def test_auto_on_the_cpu_is_bf16_only_where_the_checkpoint_holds_and_the_cpu_is_native():
    native = native_bf16_cpu()
    assert autocast_dtype(CPU, "auto", bf16_holds=False) is None
    assert autocast_dtype(CPU, "auto", bf16_holds=True) == (torch.bfloat16 if native else None)
    assert autocast_dtype(CPU, "auto", training=True, bf16_holds=True) is None  # training is unchanged
    assert autocast_dtype(CPU, "fp32", bf16_holds=True) is None  # asked for: the record does not matter
    assert autocast_dtype(torch.device("meta"), "auto", bf16_holds=True) is None
    assert detection_precision(CPU, "auto", bf16_holds=False) == (
        None, "auto: the checkpoint records no bf16 check that holds" if native else "auto: the CPU has no native bf16")
    assert detection_precision(CPU, "auto", bf16_holds=True) == (
        (torch.bfloat16, "auto: native bf16 CPU and the checkpoint's bf16 check holds") if native
        else (None, "auto: the CPU has no native bf16"))
    assert detection_precision(CPU, "bf16") == (torch.bfloat16, "asked for")
    assert detection_precision(CPU, "fp16") == (None, "fp16 asked for; fp32 off CUDA")


def test_unknown_precisions_are_refused():
    with pytest.raises(UserInputError, match="precision 'half'"):
        autocast_dtype(CPU, "half")


def test_precision_names_and_the_float32_autocast_is_none_at_all():
    assert [precision_name(d) for d in (None, torch.bfloat16, torch.float16)] == ["fp32", "bf16", "fp16"]
    with autocast(torch.device("meta"), None):  # no autocast exists for meta: fp32 must not need one
        assert not torch.is_autocast_enabled("cpu")
    with autocast(CPU, torch.bfloat16):
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16


def test_out_of_memory_is_told_by_type_and_by_the_cpu_allocators_failure():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError("CUDA out of memory"))
    assert is_out_of_memory(torch.OutOfMemoryError("out of memory"))
    with pytest.raises(RuntimeError) as cpu_failure:  # a real allocation far beyond any machine
        torch.empty(2**60, dtype=torch.uint8)
    assert is_out_of_memory(cpu_failure.value)
    assert not is_out_of_memory(RuntimeError("Expected all tensors to be on the same device"))
    assert not is_out_of_memory(ValueError("can't allocate memory"))


def test_devices(monkeypatch):
    assert resolve_device("cpu") == CPU
    for present, expected in ((True, CUDA), (False, CPU)):
        monkeypatch.setattr(torch.cuda, "is_available", lambda present=present: present)
        assert resolve_device("auto") == expected
    monkeypatch.undo()
    with pytest.raises(UserInputError, match="expected auto, cpu or cuda"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(UserInputError, match="no CUDA GPU"):
            resolve_device("cuda:1")
