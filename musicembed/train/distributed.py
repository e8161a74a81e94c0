"""Multi-process data parallelism: torchrun environment, process group, gathers with gradients.

Started by ``torchrun`` (RANK, WORLD_SIZE, LOCAL_RANK in the environment) the training
loop joins a process group (NCCL on GPUs, gloo on CPU); started as a plain process it runs
alone and every helper here is a no-op.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    """This process's place: global rank, world size, rank on its node."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world > 1


def from_env() -> DistInfo:
    """Rank, world size and local rank as torchrun sets them (a single process otherwise)."""
    return DistInfo(
        rank=int(os.environ.get("RANK", 0)),
        world=int(os.environ.get("WORLD_SIZE", 1)),
        local_rank=int(os.environ.get("LOCAL_RANK", 0)),
    )


def pick_device(requested: str, info: DistInfo) -> torch.device:
    """'auto' -> this process's GPU (cuda:LOCAL_RANK) when there is one, else CPU; anything else as given."""
    if requested == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", info.local_rank % torch.cuda.device_count())
        return torch.device("cpu")
    device = torch.device(requested)
    if device.type == "cuda" and device.index is None:
        device = torch.device("cuda", info.local_rank % torch.cuda.device_count())
    return device


def init(info: DistInfo, device: torch.device) -> None:
    """Join the torchrun process group (NCCL for CUDA devices, gloo otherwise); no-op when alone."""
    if not info.enabled or dist.is_initialized():
        return
    if device.type == "cuda":
        torch.cuda.set_device(device)
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo")


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def barrier() -> None:
    if active():
        dist.barrier()


def any_true(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is True on any rank (one all-reduce)."""
    if not active():
        return flag
    t = torch.tensor([int(flag)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def broadcast_buffers(module: torch.nn.Module) -> None:
    """Copy rank 0's buffers (BatchNorm running statistics) to every rank."""
    if active():
        for buf in module.buffers():
            dist.broadcast(buf, src=0)


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward returns this rank's slice of the summed gradients."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        world = dist.get_world_size()
        ctx.rank, ctx.size = dist.get_rank(), x.shape[0]
        chunks = [torch.empty_like(x) for _ in range(world)]
        dist.all_gather(chunks, x.contiguous())
        return torch.cat(chunks, dim=0)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad[ctx.rank * ctx.size : (ctx.rank + 1) * ctx.size]


def gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate x (B, ...) from all ranks in rank order, (world * B, ...), differentiable.

    Every rank then computes the same global loss; the backward sums the ranks' gradients
    for this rank's rows, so after DDP averages the parameter gradients they equal the
    gradient of that global loss. Identity when running alone.
    """
    return _GatherWithGrad.apply(x) if active() else x
