"""Data-parallel training on torch.distributed: one process per worker, started by torchrun.

`train.processes: N` makes the train stage start N workers through torch's own launcher
(`python -m torch.distributed.run`, i.e. torchrun); launching torchrun by hand, on one machine or
several, does the same. Every worker runs the whole loop; they differ only in the examples they see:

* `train.batch_size` is the **global** batch. Each step's global batch (the same seeded permutation on
  every worker) is split into N contiguous shards, one per worker, so the workers see disjoint images.
* After each backward the loop averages the gradients over the workers, weighting each by its share
  of the global batch, so the update is the one a single process would make from the full batch
  (given the same noise draws: each worker has its own noise stream; worker 0's is the one-process stream).
* Metrics are reduced over all workers, weighted by example counts. Floating-point buffers (BatchNorm
  running statistics) are averaged after every epoch. BatchNorm *batch* statistics are per worker on
  CPU (PyTorch's SyncBatchNorm needs a GPU); on CUDA the GAN's BatchNorm layers become SyncBatchNorm.
* Only worker 0 (rank 0) talks to MLflow and writes checkpoints, models and metrics.
"""

from __future__ import annotations

import datetime
import os
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import nn

from genlab.core.errors import ConfigError
from genlab.core.runtime import resolve_device
from genlab.models.base import Sums

# A worker waiting longer than this for the others (one was killed, one hangs) fails instead of hanging.
TIMEOUT = datetime.timedelta(minutes=10)


@dataclass(frozen=True)
class World:
    """This process's place among the workers: rank 0 of 1 when not launched by torchrun."""

    rank: int = 0
    size: int = 1
    backend: str | None = None

    @property
    def main(self) -> bool:
        return self.rank == 0

    def shard(self, items: torch.Tensor) -> torch.Tensor:
        """This worker's contiguous part of a global batch (sizes differ by at most one)."""
        return items if self.size == 1 else items.tensor_split(self.size)[self.rank]

    def sums(self) -> Sums:
        """What an epoch's batches add their metrics to: float32 sums alone, float64 between workers."""
        return Sums(torch.float64 if self.size > 1 else torch.float32)

    def reduce_means(self, sums: Sums) -> dict[str, float]:
        """Per-example means over every worker's batches."""
        if self.size == 1:
            return sums.means()
        # A worker may have had no batch (a validation split of one batch): take the names from one that had.
        keys = next((names for names in self.gather(list(sums.totals)) if names), [])
        vector = torch.zeros(len(keys) + 1, dtype=torch.float64)
        if sums.totals:
            vector[:-1] = torch.stack([sums.totals[k] for k in keys])
        vector[-1] = sums.count
        self._all_reduce(vector)
        return {k: (vector[i] / vector[-1]).item() for i, k in enumerate(keys)}

    def average_gradients(self, params: Iterable[torch.Tensor], weight: float) -> None:
        """Sum over workers of each gradient times `weight` (this worker's share of the global batch)."""
        if self.size == 1:
            return
        grads = [p.grad for p in params if p.grad is not None]
        if not grads:
            return
        flat = torch.cat([g.reshape(-1) for g in grads]) * weight  # one collective per update, not one per tensor
        self._all_reduce(flat)
        for g, part in zip(grads, flat.split([g.numel() for g in grads])):
            g.copy_(part.view_as(g))

    def average_buffers(self, modules: Iterable[nn.Module]) -> None:
        """Average every floating-point buffer (BatchNorm running statistics) over the workers."""
        if self.size == 1:
            return
        buffers = [b for m in modules for b in m.buffers() if b.is_floating_point()]
        if not buffers:
            return
        flat = torch.cat([b.reshape(-1).float() for b in buffers]) / self.size
        self._all_reduce(flat)
        for b, part in zip(buffers, flat.split([b.numel() for b in buffers])):
            b.copy_(part.view_as(b))

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every worker (pickled: for small things like metrics and resume states)."""
        if self.size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def gather(self, obj: Any) -> list[Any]:
        """Every worker's `obj`, in rank order, on every worker."""
        if self.size == 1:
            return [obj]
        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.size > 1:
            dist.barrier()

    def _all_reduce(self, tensor: torch.Tensor) -> None:
        # NCCL reduces CUDA tensors only; gloo reduces CPU ones.
        device = torch.device("cuda", torch.cuda.current_device()) if self.backend == "nccl" else torch.device("cpu")
        moved = tensor.to(device)
        dist.all_reduce(moved)
        tensor.copy_(moved)


SINGLE = World()


def launched() -> bool:
    """Whether torchrun (or another torch.distributed launcher) started this process."""
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def join(device_name: str, processes: int) -> tuple[World, torch.device]:
    """This process's World and device: under a launcher, join its process group (NCCL on CUDA with one GPU
    per worker, gloo on CPU) after checking that the launcher started `processes` workers."""
    device = resolve_device(device_name)
    if not launched():
        return SINGLE, device
    size, rank = int(os.environ["WORLD_SIZE"]), int(os.environ["RANK"])
    if size != processes:
        raise ConfigError(
            f"the launcher started {size} workers but train.processes = {processes}: "
            f"set train.processes={size} (it is the total number of workers, over all machines)"
        )
    if device.type == "cuda":
        local = int(os.environ.get("LOCAL_RANK", 0))
        if local >= torch.cuda.device_count():
            raise ConfigError(
                f"worker {rank} needs GPU {local} but this machine has {torch.cuda.device_count()}: "
                "start at most one worker per GPU (torchrun --nproc_per_node)"
            )
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend, timeout=TIMEOUT)
    return World(rank, size, backend), device


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def launch_command(processes: int, argv: list[str]) -> list[str]:
    """The torchrun command that runs `argv` (a script and its arguments) as `processes` workers on this machine."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={processes}", *argv]


def sync_batchnorm(modules: Iterable[nn.Module], device: torch.device, world: World) -> None:
    """On CUDA with several workers, BatchNorm layers compute batch statistics over the global batch."""
    if world.size > 1 and device.type == "cuda":
        for module in modules:
            nn.SyncBatchNorm.convert_sync_batchnorm(module)  # swaps the children in place, same Parameters
