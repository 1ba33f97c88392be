"""torch.distributed support: one process per rank under ``torchrun``, or a single process.

``torchrun --nproc-per-node N -m nndist gradients ...`` (or ``reproduce``) sets ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK``; :func:`setup` then joins the process group (gloo on CPU, NCCL on
GPU) through torchrun's own rendezvous, so the same command works across machines
(``--nnodes``, ``--rdzv-endpoint``). Without those variables everything runs in one process and
the helpers below are no-ops. Only rank 0 writes results; the others send it what they measured.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from .errors import NndistError


@dataclass(frozen=True)
class DistInfo:
    """Where this process stands: ``rank`` of ``world`` processes."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup(device: str = "auto") -> DistInfo:
    """Joins the process group when launched by torchrun; returns this process's place.

    Args:
        device: the run's ``--device``; CUDA devices use NCCL, CPU uses gloo.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo()
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        use_cuda = device != "cpu" and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return DistInfo(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local_rank)


def rank_device(device: str, info: DistInfo) -> str:
    """The device of this rank: ``cuda:<local_rank>`` when CUDA is used under torchrun."""
    if info.enabled and device in ("auto", "cuda") and torch.cuda.is_available():
        return f"cuda:{info.local_rank}"
    return device


def gather_to_main(obj: Any, info: DistInfo) -> list[Any] | None:
    """Gathers one picklable object per rank to rank 0 (a list in rank order there, None elsewhere)."""
    if not info.enabled:
        return [obj]
    out: list[Any] | None = [None] * info.world if info.is_main else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast_from_main(obj: Any, info: DistInfo) -> Any:
    """Sends rank 0's ``obj`` to every rank; returns it everywhere."""
    if not info.enabled:
        return obj
    box = [obj if info.is_main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier(info: DistInfo) -> None:
    """Waits for every rank (no-op in one process)."""
    if info.enabled:
        dist.barrier()


def check_agree(value: Any, what: str, info: DistInfo) -> None:
    """Raises on every rank if ranks disagree on ``value`` (e.g. a failure on one rank)."""
    if not info.enabled:
        return
    values = [None] * info.world
    dist.all_gather_object(values, value)
    if any(v != values[0] for v in values):
        raise NndistError(f"ranks disagree on {what}: {values}")


def raise_on_every_rank(error: str | None, info: DistInfo) -> None:
    """Rank 0's error (or None) sent to every rank, where it is raised as an :class:`NndistError`."""
    error = broadcast_from_main(error, info)
    if error:
        raise NndistError(error)
