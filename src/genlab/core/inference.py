"""Running trained networks to make images (the evaluate and sample stages; `sample.precision`).

`sampling(precision, device)` is the context every image a stage generates or reconstructs is made in:
inference mode (no autograd records, no version counters), no NaN fill of fresh tensors (the deterministic
mode of `genlab.core.runtime.deterministic` writes every new tensor once before its kernel writes it again:
3-10 % of a 28x28 U-Net step on a CPU, and nothing a sampler's kernels read), and with `precision="bf16"`
bfloat16 autocast. fp32 gives the same numbers as before, bit for bit; bf16 moves them (docs/benchmarks.md §13).

bf16 is refused where the device has no bfloat16 arithmetic: a CPU without AVX512-BF16 or AMX emulates it,
several times slower than fp32 (2.5-4x for the U-Net on a 2-core AVX-512 Xeon), so asking for it there is a
mistake, not a setting to fall back from silently (the metrics would then depend on the machine it ran on).
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch

from genlab.core.errors import ConfigError

PRECISIONS = ("fp32", "bf16")


def cpu_bf16_units() -> list[str]:
    """The CPU's bfloat16 instruction sets torch's kernels use (AVX512-BF16, AMX-BF16), empty if none."""
    caps = torch.cpu.get_capabilities()
    return [name for flag, name in (("avx512_bf16", "AVX512-BF16"), ("amx_bf16", "AMX-BF16")) if caps.get(flag)]


def bf16_unsupported(device: torch.device) -> str | None:
    """Why `device` cannot run bf16 sampling at speed, or None when it can (CUDA with bf16, or a CPU with
    AVX512-BF16 or AMX)."""
    if device.type == "cuda":
        return None if torch.cuda.is_bf16_supported() else f"{torch.cuda.get_device_name(device)} has no bfloat16"
    if device.type == "cpu":
        if cpu_bf16_units():
            return None
        name = torch.cpu.get_capabilities().get("cpu_name", "this CPU")
        return (
            f"{name} has neither AVX512-BF16 nor AMX: bf16 is emulated there, several times slower than fp32 "
            "(docs/benchmarks.md §13)"
        )
    return f"bf16 sampling is not set up for {device.type} devices"


def check_precision(precision: str, device: torch.device, key: str = "sample.precision") -> None:
    """Refuse a precision the device cannot run at speed (before a stage writes anything)."""
    if precision not in PRECISIONS:
        raise ConfigError(f"{key} = {precision!r}: expected one of {', '.join(PRECISIONS)}")
    if precision == "bf16":
        why = bf16_unsupported(device)
        if why:
            raise ConfigError(f"{key} = bf16 on {device}: {why}; use fp32")


@contextlib.contextmanager
def no_fill() -> Iterator[None]:
    """Fresh tensors left unfilled inside (torch fills them with NaN under deterministic algorithms)."""
    before = torch.utils.deterministic.fill_uninitialized_memory
    torch.utils.deterministic.fill_uninitialized_memory = False
    try:
        yield
    finally:
        torch.utils.deterministic.fill_uninitialized_memory = before


@contextlib.contextmanager
def sampling(precision: str, device: torch.device) -> Iterator[None]:
    """Inference mode, no fill of fresh tensors, and bf16 autocast when precision is "bf16" (checked first)."""
    check_precision(precision, device)
    with (
        torch.inference_mode(),
        no_fill(),
        torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16"),
    ):
        yield
