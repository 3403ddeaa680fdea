"""Weights as they leave the learner: each ZeRO-3 rank's own slice, assembled by whoever loads them.

Every rank publishes its partition of every parameter (ZeRO-3's flat 1/world slice, the tail
zero-padded) into the object store; a generation actor, or the checkpoint writer, concatenates the
slices. No process ever gathers the whole model on the learner side, and the bytes each rank sends
fall as ranks are added.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch


@dataclass(frozen=True)
class WeightShard:
    """One learner rank's slice of every weight, under Hugging Face parameter names."""

    rank: int
    world: int
    parts: dict[str, torch.Tensor]  # name -> (ceil(numel / world),) flat slice rank*size .. (rank+1)*size
    shapes: dict[str, tuple[int, ...]]  # name -> the full tensor's shape


def shard_weights(state: dict[str, torch.Tensor], rank: int, world: int) -> WeightShard:
    """Rank `rank`'s slice of full weights, laid out as ZeRO-3 partitions them."""
    parts = {}
    for name, t in state.items():
        size = math.ceil(t.numel() / world)
        flat = torch.nn.functional.pad(t.detach().flatten(), (0, size * world - t.numel()))
        parts[name] = flat[rank * size:(rank + 1) * size].clone()
    return WeightShard(rank, world, parts, {k: tuple(v.shape) for k, v in state.items()})


def assemble_weights(shards: Sequence[WeightShard]) -> dict[str, torch.Tensor]:
    """Full weights from every rank's shard, given in any order."""
    shards = sorted(shards, key=lambda s: s.rank)
    world = shards[0].world if shards else 0
    if [s.rank for s in shards] != list(range(world)) or any(s.world != world for s in shards):
        raise ValueError(f"weight shards of ranks {[s.rank for s in shards]} do not make up one group of {world}")
    out = {}
    for name, shape in shards[0].shapes.items():
        flat = torch.cat([s.parts[name] for s in shards])  # (world * size,)
        out[name] = flat[: math.prod(shape)].view(shape)
    return out
