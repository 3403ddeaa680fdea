"""Reductions over the learner group. Every rank must call each one, in the same order: they are
collectives. Outside a group (one process, tests) they return their input."""
from __future__ import annotations

import torch
import torch.distributed as dist


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """Sum over the learner group (gloo takes CPU int64/float64; nccl needs CUDA, so move there)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t
    backend = dist.get_backend()
    work = t.cuda() if backend == "nccl" else t.clone()
    dist.all_reduce(work, op=dist.ReduceOp.SUM)
    return work.to(t.device)


def all_reduce_max(t: torch.Tensor) -> torch.Tensor:
    """Elementwise max over the learner group."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return t
    work = t.cuda() if dist.get_backend() == "nccl" else t.clone()
    dist.all_reduce(work, op=dist.ReduceOp.MAX)
    return work.to(t.device)


def reduce_named(sums: dict[str, float], reduce) -> dict[str, float]:
    """Sum named scalars over ranks in one collective (every rank passes the same names)."""
    names = sorted(sums)
    total = reduce(torch.tensor([float(sums[k]) for k in names], dtype=torch.float64))
    return dict(zip(names, total.tolist()))


def global_count(mask: torch.Tensor) -> int:
    """True entries of `mask` over every rank."""
    return int(all_reduce_sum(mask.sum().reshape(1).to(torch.int64)).item())
