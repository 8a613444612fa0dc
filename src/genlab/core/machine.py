"""The machine fingerprint: everything that picks the float kernels a run executes.

Float32 training is chaotic, so two CPUs that round differently (AVX-512/AMX vs AVX2 kernels, another
MKL or oneDNN build, another thread count) end a run on different numbers. Runs are bit-identical only
between equal fingerprints; `genlab.pipeline.reproduce` compares across fingerprints with measured seed bands.
"""

from __future__ import annotations

import os
import platform
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

# CPU flags that change which SIMD kernels MKL, oneDNN and ATen pick.
_ISA_FLAG = re.compile(r"^(sse4_2|avx|avx2|fma|f16c|avx_vnni|avx512.*|amx.*)$")
# Environment variables that override those choices (or the threads a reduction is split over).
KERNEL_ENV = ("ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS", "MKL_CBWR", "ONEDNN_MAX_CPU_ISA", "OMP_NUM_THREADS")


def _cpuinfo() -> tuple[str, list[str]]:
    """(model name, ISA flags) from /proc/cpuinfo; the platform's processor string elsewhere."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor() or platform.machine(), []
    model = re.search(r"^model name\s*:\s*(.+)$", text, re.M)
    flags = re.search(r"^(?:flags|Features)\s*:\s*(.+)$", text, re.M)
    isa = sorted(f for f in (flags.group(1).split() if flags else []) if _ISA_FLAG.match(f))
    return (model.group(1).strip() if model else platform.machine()), isa


def _library_version(pattern: str) -> str | None:
    import torch

    found = re.search(pattern, torch.__config__.show())
    return found.group(1) if found else None


def fingerprint(device: torch.device) -> dict[str, Any]:
    """What a run's numbers depend on besides params, code and data."""
    import numpy as np
    import torch  # here, not at the top: reports and the tracking store read fingerprints without torch

    cpu, isa = _cpuinfo()
    out: dict[str, Any] = {
        "cpu": cpu,
        "isa": isa,
        "aten_capability": torch.backends.cpu.get_cpu_capability(),
        "threads": torch.get_num_threads(),
        "kernel_env": {k: os.environ[k] for k in KERNEL_ENV if k in os.environ},
        "torch": torch.__version__,
        "mkl": _library_version(r"Math Kernel Library Version (\S+)"),
        "onednn": _library_version(r"MKL-DNN v(\S+)"),
        "numpy": np.__version__,
        "python": platform.python_version(),
        "device": device.type,
    }
    if device.type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(device)
        out["cuda"] = torch.version.cuda
        out["cudnn"] = torch.backends.cudnn.version()
    return out


def describe(fp: dict[str, Any]) -> str:
    """One line for reports: 'AMD EPYC (AVX2 kernels, 2 threads, torch 2.14.1)'."""
    where = fp.get("gpu") or fp.get("cpu", "?")
    env = "".join(f", {k}={v}" for k, v in sorted(fp.get("kernel_env", {}).items()))
    kernels, threads, torch_version = fp.get("aten_capability", "?"), fp.get("threads", "?"), fp.get("torch", "?")
    return f"{where} ({kernels} kernels, {threads} threads, torch {torch_version}{env})"


def tags(fp: dict[str, Any]) -> dict[str, str]:
    """The fingerprint as flat MLflow tags `machine.<key>`."""
    out = {}
    for key, value in fp.items():
        if isinstance(value, dict):
            value = " ".join(f"{k}={v}" for k, v in sorted(value.items())) or "-"
        elif isinstance(value, list):
            value = " ".join(value) or "-"
        out[f"machine.{key}"] = str(value)
    return out
