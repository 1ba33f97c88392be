"""One training run with a monitor: in one process (``single``: each step's two halves of the batch
as micro-batches, loss / 2 each) or one rank of ``torchrun`` (``ddp`` or ``fsdp``: its half of
the batch). Both compute the same gradients, g0 / 2 + g1 / 2, bit for bit, so their monitor
tables must agree: ``python monitor_dist_script.py MODE OUT PER_CHANNEL``."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import nndist  # noqa: E402
from nndist.results import layout  # noqa: E402
from monitor_cases import Plain, data  # noqa: E402


def main() -> None:
    mode, out, per_channel = sys.argv[1], sys.argv[2], sys.argv[3] == "1"
    torch.manual_seed(0)
    model = Plain()
    rank, world = 0, 1
    wrapped: nn.Module = model
    if mode != "single":
        dist.init_process_group("gloo")
        rank, world = dist.get_rank(), dist.get_world_size()
        if mode == "ddp":
            wrapped = nn.parallel.DistributedDataParallel(model)
        else:
            from torch.distributed.device_mesh import init_device_mesh
            from torch.distributed.fsdp import fully_shard

            fully_shard(model, mesh=init_device_mesh("cpu", (world,)))
    mon = nndist.Monitor(wrapped, out, every=2, per_channel=per_channel)
    opt = torch.optim.SGD(wrapped.parameters(), lr=0.05, momentum=0.9)
    for x, y in data(5, batch=8):
        if mode == "single":
            for xh, yh in zip(x.chunk(2), y.chunk(2)):
                (nn.functional.cross_entropy(model(xh), yh) / 2).backward()
        else:
            nn.functional.cross_entropy(wrapped(x.chunk(world)[rank]), y.chunk(world)[rank]).backward()
        mon.step()
        opt.step()
        opt.zero_grad()
    mon.close(report=False)
    # every rank returns from close() once rank 0 has finished the run directory
    assert json.loads((Path(out) / layout.MANIFEST).read_text())["status"] == "finished", f"rank {rank}"
    if mode == "fsdp":
        assert all(p.to_local().shape[0] < p.shape[0] for p in model.parameters() if p.ndim), "not sharded"
    if mode != "single":
        dist.destroy_process_group()


if __name__ == "__main__":
    main()
