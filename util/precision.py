"""Memory format, precision and compilation of the convnets: channels_last, bf16 autocast where the hardware computes
bf16, torch.compile on request.

channels_last (NHWC) lets oneDNN on CPUs and cuDNN on GPUs run convolutions without layout conversions; a model
converted with `to_channels_last` computes the same function (to float rounding) and its state_dict loads into a
contiguous model unchanged. bf16 autocast halves the bytes moved and uses bf16 units where they exist: CUDA GPUs, and
CPUs with avx512_bf16 or amx_bf16 (elsewhere a CPU emulates bf16, slower than float32).
"""

from __future__ import annotations

import argparse
import functools
from pathlib import Path

import torch
from torch import nn

from util.errors import UserError


@functools.cache
def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bf16 in hardware (the avx512_bf16 or amx_bf16 flag in /proc/cpuinfo)."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def native_bf16(device: torch.device) -> bool:
    return device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16())


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    """bf16 autocast on `device` when enabled (the scripts accept --amp only where native_bf16 holds)."""
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)


def to_channels_last(model: nn.Module, enabled: bool = True) -> nn.Module:
    """The model's 4-d parameters and buffers in channels_last, in place; a no-op when not enabled."""
    return model.to(memory_format=torch.channels_last) if enabled else model


def check_amp(amp: bool, device_type: str) -> None:
    """--amp only where bf16 is computed natively (an emulated bf16 is slower than float32)."""
    if amp and not native_bf16(torch.device(device_type)):
        raise UserError("--amp needs CUDA or a CPU with native bf16 (avx512_bf16 or amx_bf16): drop --amp on this CPU")


def add_amp_arg(group: argparse._ArgumentGroup) -> None:
    """--amp, the same flag in both pretraining scripts."""
    group.add_argument(
        "--amp",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="bf16 autocast of the training steps and of the feature extraction (clustering, kNN monitor, its floor "
        "included), on CUDA or on a CPU with native bf16 (avx512_bf16 or amx_bf16); evaluations stay in float32",
    )


def add_compile_arg(group: argparse._ArgumentGroup) -> None:
    """--compile, the same flag in both pretraining scripts."""
    group.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=False,
        help="torch.compile the backbone (training and extraction; its weights keep their names). The first steps "
        "of each mode and crop size wait for the compiler (its time: docs/benchmarks.md)",
    )


def compile_in_place(model: nn.Module, enabled: bool) -> nn.Module:
    """model.compile() when enabled: its forward runs compiled, its state_dict keys are unchanged (checkpoints load
    into an uncompiled model)."""
    if enabled:
        model.compile()
    return model
