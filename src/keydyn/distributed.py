"""Data-parallel training over several processes (torchrun / DistributedDataParallel).

A trainer started by `torchrun --nproc-per-node N -m keydyn.cli train-...` runs in N processes (ranks). Every
rank draws the same global batch from the same seeded generator (the indices and the augmentation), takes its
contiguous share of it (`World.share`) and weights its loss by `World.weight`, so that the gradient DDP averages
over the ranks is the gradient of the mean over the whole global batch: the optimisation is that of one process
with the same batch, up to the order of float reductions. Rank 0 alone writes the run directory (and holds its
lock); the others read what it decided through `World.broadcast`.

Without torchrun (WORLD_SIZE unset or 1) `World()` is one process and every helper does nothing.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

Value = TypeVar("Value")


@dataclass(frozen=True)
class World:
    """The processes of a run: this one's `rank` among `size`, and its `local_rank` on its machine (its GPU)."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @classmethod
    def from_environment(cls) -> World:
        """The world torchrun describes in RANK, WORLD_SIZE and LOCAL_RANK (one process when they are unset).

        Raises:
            ValueError: the variables are not whole numbers with 0 <= RANK < WORLD_SIZE.
        """
        try:
            world = cls(
                int(os.environ.get("RANK", "0")),
                int(os.environ.get("WORLD_SIZE", "1")),
                int(os.environ.get("LOCAL_RANK", "0")),
            )
        except ValueError as error:
            message = f"RANK, WORLD_SIZE and LOCAL_RANK must be whole numbers ({error}); launch with torchrun"
            raise ValueError(message) from None
        if not 0 <= world.rank < world.size:
            raise ValueError(f"RANK {world.rank} is outside WORLD_SIZE {world.size}; launch with torchrun")
        return world

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        """Whether this is rank 0, the one that writes files."""
        return self.rank == 0

    def device(self, device: torch.device) -> torch.device:
        """This rank's device: its own GPU (LOCAL_RANK) when `device` is CUDA and there are several ranks."""
        if self.distributed and device.type == "cuda":
            return torch.device("cuda", self.local_rank)
        return device

    def share(self, count: int) -> slice:
        """This rank's contiguous part of `count` items: the sizes differ by at most one, earlier ranks larger."""
        base, extra = divmod(count, self.size)
        begin = self.rank * base + min(self.rank, extra)
        return slice(begin, begin + base + (self.rank < extra))

    def weight(self, part: int, whole: int) -> float:
        """The factor on a rank's mean loss over `part` of `whole` items that makes DDP's average of the ranks'
        gradients the gradient of the mean over all `whole` (1.0 for one process; 0 when `whole` is 0)."""
        if not self.distributed:
            return 1.0
        return self.size * part / whole if whole else 0.0

    def barrier(self) -> None:
        """Wait until every rank gets here."""
        if self.distributed:
            dist.barrier()

    def broadcast(self, value: Value) -> Value:
        """Rank 0's `value` (any picklable object) on every rank."""
        if not self.distributed:
            return value
        holder = [value]
        dist.broadcast_object_list(holder, src=0)
        return holder[0]

    def total(self, values: list[float]) -> list[float]:
        """The sums over the ranks of `values` (the same length on every rank), in float64."""
        if not self.distributed:
            return values
        tensor = torch.tensor(values, dtype=torch.float64, device=_collective_device())
        dist.all_reduce(tensor)
        return tensor.tolist()

    def wrap(self, module: nn.Module, device: torch.device) -> nn.Module:
        """`module` (already on `device`) in DistributedDataParallel, which averages gradients over the ranks
        during backward; `module` itself for one process."""
        if not self.distributed:
            return module
        return DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


ONE_PROCESS = World()
"""A run without torchrun."""


def _collective_device() -> torch.device:
    """Where the process group's tensors live: the current GPU for NCCL, else the CPU."""
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


class _Summed(torch.autograd.Function):
    """The sum over the ranks of a tensor, differentiable: the gradient of each rank's input is the sum of the
    ranks' output gradients (each rank's output feeds its own loss; DDP then averages the parameter gradients)."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, tensor: torch.Tensor) -> torch.Tensor:
        summed = tensor.clone()
        dist.all_reduce(summed)
        return summed

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, gradient: torch.Tensor) -> torch.Tensor:
        summed = gradient.clone()
        dist.all_reduce(summed)
        return summed


def all_reduce(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of `tensor` over the ranks, with gradients (`_Summed`)."""
    return _Summed.apply(tensor)


class SyncBatchNorm2d(nn.BatchNorm2d):
    """BatchNorm2d whose training statistics are those of the whole global batch, summed over the ranks with
    differentiable all-reduces (gloo on CPUs too, unlike torch.nn.SyncBatchNorm); the plain layer in eval mode or
    without a process group. Statistics in float32 (the output in the input's dtype)."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return super().forward(input)
        values = input.float()
        channels = (1, -1, 1, 1)
        sums = torch.cat([values.sum((0, 2, 3)), values.new_full((1,), values.numel() / values.shape[1])])
        sums = all_reduce(sums)
        count = sums[-1]
        centred = values - (sums[:-1] / count).view(channels)
        variance = all_reduce(centred.pow(2).sum((0, 2, 3))) / count
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                momentum = 1.0 / float(self.num_batches_tracked) if self.momentum is None else self.momentum
                self.running_mean.lerp_((sums[:-1] / count).to(self.running_mean.dtype), momentum)
                unbiased = variance * count / (count - 1).clamp_min(1.0)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
        output = centred * torch.rsqrt(variance + self.eps).view(channels)
        if self.affine:
            output = output * self.weight.view(channels) + self.bias.view(channels)
        return output.to(input.dtype)


def synchronise_batch_norm(module: nn.Module) -> None:
    """Make every BatchNorm2d of `module` (in place, weights and statistics kept) a `SyncBatchNorm2d`, so that
    ranks that share a batch normalise it as one process would normalise the whole batch."""
    for child in module.modules():
        if type(child) is nn.BatchNorm2d:
            child.__class__ = SyncBatchNorm2d


@contextmanager
def joined(device: torch.device) -> Iterator[World]:
    """The world of this process, its process group initialised (NCCL for CUDA, else gloo) while inside and
    destroyed on leaving; one process without torchrun (nothing to initialise)."""
    world = World.from_environment()
    if not world.distributed:
        yield world
        return
    cuda = device.type == "cuda"
    if cuda:
        torch.cuda.set_device(world.local_rank)
    dist.init_process_group("nccl" if cuda else "gloo", rank=world.rank, world_size=world.size)
    try:
        yield world
    finally:
        dist.destroy_process_group()


def writes_files() -> bool:
    """Whether this process writes the run directory: it is not a torchrun rank other than 0."""
    return World.from_environment().main


__all__ = ["ONE_PROCESS", "SyncBatchNorm2d", "World", "joined", "synchronise_batch_norm", "writes_files"]
