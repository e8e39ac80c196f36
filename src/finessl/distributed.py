"""torchrun / DDP helpers: process group, rank-aware gathering, main-process checks.

Launch with the standard engine, e.g. ``torchrun --nproc_per_node 4 -m finessl train ...``;
torchrun sets RANK / WORLD_SIZE / LOCAL_RANK and this module picks them up. Without them
everything degrades to a single process.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def gather(self, tensor: torch.Tensor) -> torch.Tensor:
        """Concatenates equal-shaped tensors from every process, in rank order."""
        if not self.enabled:
            return tensor
        parts = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(parts, tensor.contiguous())
        return torch.cat(parts)

    def gather_uneven(self, tensor: torch.Tensor) -> torch.Tensor:
        """Like ``gather`` for tensors whose first dimension differs between processes."""
        if not self.enabled:
            return tensor
        size = torch.tensor([tensor.shape[0]], device=tensor.device)
        sizes = self.gather(size).tolist()
        padded = torch.zeros((max(sizes), *tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        padded[: tensor.shape[0]] = tensor
        parts = self.gather(padded).split(max(sizes))
        return torch.cat([p[:n] for p, n in zip(parts, sizes)])

    def local_slice(self, tensor: torch.Tensor) -> torch.Tensor:
        """This process's share of a tensor built by ``gather``."""
        if not self.enabled:
            return tensor
        per = tensor.shape[0] // self.world_size
        return tensor[self.rank * per:(self.rank + 1) * per]

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every process when ``flag`` is true on any (so all stop together)."""
        if not self.enabled:
            return flag
        value = torch.tensor([float(flag)], device=device)
        dist.all_reduce(value, op=dist.ReduceOp.MAX)
        return bool(value.item())

    def broadcast_indices(self, values, device: torch.device):
        """Rank 0's 1-D integer array, on every process (so all agree exactly)."""
        import numpy as np

        if not self.enabled:
            return values
        size = torch.tensor([len(values) if self.is_main else 0], device=device)
        dist.broadcast(size, 0)
        tensor = torch.as_tensor(np.asarray(values, dtype=np.int64), device=device) if self.is_main \
            else torch.zeros(int(size), dtype=torch.int64, device=device)
        dist.broadcast(tensor, 0)
        return tensor.cpu().numpy()


def init_distributed(device_type: str) -> DistEnv:
    """Joins the process group torchrun describes (nccl on CUDA, gloo on CPU), if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistEnv()
    if not dist.is_initialized():
        backend = "nccl" if device_type == "cuda" else "gloo"
        dist.init_process_group(backend=backend)
    env = DistEnv(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))
    if device_type == "cuda":
        torch.cuda.set_device(env.local_rank)
    return env


def shutdown_distributed() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
