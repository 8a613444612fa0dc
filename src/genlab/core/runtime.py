"""Device choice, seeding and random streams: everything random flows from `seed`.

Each purpose draws from its own named stream, seeded by a hash of (seed, name). Offsets (seed + 1,
seed + 2, ...) would make one run's noise stream another seed's batch-order stream, so the runs of a
seed sweep would share randomness; hashed names never collide, and a new stream moves no other.
"""

from __future__ import annotations

import hashlib
import os
import random
import re
from pathlib import Path

import numpy as np
import torch

from genlab.core.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """'auto' picks CUDA when present; an explicit CUDA request without a GPU is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device = {name!r} but no CUDA device is available: use 'auto' or 'cpu'")
    return torch.device(name)


_STAGE_SCRIPT = re.compile(r"stages/\w+\.py")


def _processes() -> dict[int, tuple[int, str | None]]:
    """{pid: (parent pid, the genlab stage script a python runs in it, else None)} of the processes we can read."""
    import psutil  # here, not at the top: only a stage at `threads: null` asks

    table = {}
    for process in psutil.process_iter(["ppid", "cmdline"]):
        argv = process.info["cmdline"] or []  # None where it is not ours to read
        script = _STAGE_SCRIPT.search(" ".join(argv[1:])) if argv and Path(argv[0]).name.startswith("python") else None
        table[process.pid] = (process.info["ppid"], script.group(0) if script else None)
    return table


def other_stages() -> dict[int, str]:
    """{pid: stage script} of the genlab stages running beside this process, one per run (torchrun and its
    workers count once: the outermost), this process's own run not at all."""
    table = _processes()

    def outermost(pid: int) -> int | None:
        top, seen = None, set()
        while pid in table and pid not in seen:
            seen.add(pid)
            parent, script = table[pid]
            top = pid if script else top
            pid = parent
        return top

    mine = outermost(os.getpid()) or os.getpid()
    roots = {outermost(pid) for pid, (_, script) in table.items() if script} - {mine, None}
    return {pid: table[pid][1] for pid in sorted(roots)}


def use_threads(threads: int | None) -> None:
    """Run torch's CPU kernels on `threads` threads (params key `threads`); None keeps torch's default, one per
    core, and says so when other genlab stages share the cores: threads that outnumber the cores wait on each
    other at every kernel (a queued pair of DDPM runs took 2.3x one alone, docs/benchmarks.md §17), and the
    remedy, fewer threads, changes float sums, so it is the user's choice, not one made from the machine's load."""
    if threads is not None:
        torch.set_num_threads(threads)
        return
    others, cores, mine = other_stages(), os.cpu_count() or 1, torch.get_num_threads()
    if others and (len(others) + 1) * mine > cores:
        running = ", ".join(f"{script}, pid {pid}" for pid, script in others.items())
        print(
            f"threads: null = {mine} threads on {cores} cores, beside {len(others)} other genlab stage(s) ({running}): "
            "threads that outnumber the cores wait on each other (docs/benchmarks.md §17). Side by side, pass "
            f"-S threads={max(1, cores // (len(others) + 1))} (float sums then differ from one-per-core runs).",
            flush=True,
        )


def stream_seed(seed: int, name: str) -> int:
    """The seed of stream `name` for run seed `seed`: a non-negative 63-bit integer."""
    digest = hashlib.sha256(f"{seed}/{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


def stream(seed: int, name: str, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator for one purpose (e.g. 'batch_order', 'eval_samples') on `device`."""
    return torch.Generator(device=device).manual_seed(stream_seed(seed, name))


def seed_everything(seed: int, purpose: str) -> None:
    """Seed the global generators (weight initialisation, library code) from the stream `purpose`."""
    derived = stream_seed(seed, purpose)
    random.seed(derived)
    np.random.seed(derived % 2**32)
    torch.manual_seed(derived)
    # Deterministic kernels make the same params on the same machine kind give identical metrics;
    # cuBLAS needs this workspace setting (read at CUDA start-up) to be deterministic.
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    deterministic()
    torch.backends.cudnn.benchmark = False


def deterministic(compiled: bool = False) -> None:
    """Deterministic kernels, warning where an op has none. torch.use_deterministic_algorithms also sets
    inductor's flag, which imports torch._dynamo: seconds of every stage's start for a flag that only the
    kernels torch.compile generates read, so only a compiled run (`compiled=True`) pays for it."""
    if compiled:
        torch.use_deterministic_algorithms(True, warn_only=True)
    else:
        torch._C._set_deterministic_algorithms(True, warn_only=True)


class Rngs:
    """The training run's own generators: `order` (CPU: batch order, the same on every worker; named `order`,
    so that each network the loop trains shuffles from its own stream) and `noise` (on the model's device;
    worker r > 0 of a data-parallel run has its own, worker 0 the one-process one)."""

    def __init__(self, seed: int, device: torch.device, rank: int = 0, order: str = "batch_order"):
        self.order = stream(seed, order)
        self.noise = stream(seed, "train_noise" if rank == 0 else f"train_noise/worker{rank}", device)

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {"order": self.order.get_state(), "noise": self.noise.get_state(), "torch": torch.get_rng_state()}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        self.order.set_state(state["order"])
        self.noise.set_state(state["noise"])
        torch.set_rng_state(state["torch"])
