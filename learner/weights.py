"""Weights as they leave the learner: each ZeRO-3 rank's own slice, assembled by whoever loads them.

Every rank publishes its partition of every parameter (ZeRO-3's flat 1/world slice, the tail
zero-padded) into the object store; a generation actor, or the checkpoint writer, concatenates the
slices. No process ever gathers the whole model on the learner side, and the bytes each rank sends
fall as ranks are added.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Mapping, Sequence

import torch


@dataclass(frozen=True)
class LoraSpec:
    """What turns published adapter tensors into weights: W + (alpha / r) * B A on each target."""

    r: int
    alpha: float
    target_modules: tuple[str, ...]  # the module names peft resolved (for the exported adapter_config.json)

    @property
    def scale(self) -> float:
        return self.alpha / self.r


@dataclass(frozen=True)
class WeightShard:
    """One learner rank's slice of every weight, under Hugging Face parameter names; with `lora`, of
    the adapters only, under peft's saved names (`base_model.model.<module>.lora_A.weight`)."""

    rank: int
    world: int
    parts: dict[str, torch.Tensor]  # name -> (ceil(numel / world),) flat slice rank*size .. (rank+1)*size
    shapes: dict[str, tuple[int, ...]]  # name -> the full tensor's shape
    lora: LoraSpec | None = None

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.parts.values())

    def __reduce__(self):
        # Each part travels as a numpy array: pickle protocol 5 (Ray's) then hands its bytes over
        # out of band, so the object store copies them once, straight from the tensor, and a reader
        # gets views of the store's memory. torch's own pickling copies a tensor's whole storage in
        # band, once to write it and again to read it (bench/weight_publish.py: `--ways`).
        return _rebuild_shard, (self.rank, self.world, {k: _as_array(t) for k, t in self.parts.items()},
                                self.shapes, self.lora)


def _as_array(t: torch.Tensor):
    """(a numpy view of `t`'s memory, its torch dtype's name); bf16, which numpy lacks, as int16 bits."""
    t = t.detach().contiguous()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy(), "bfloat16"
    return t.numpy(), str(t.dtype).removeprefix("torch.")


def _rebuild_shard(rank, world, arrays, shapes, lora) -> "WeightShard":
    import warnings

    parts = {}
    with warnings.catch_warnings():
        # Views of the object store's read-only memory: every reader copies them (assemble_weights
        # concatenates), none writes into them.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        for name, (a, dtype) in arrays.items():
            parts[name] = torch.from_numpy(a).view(getattr(torch, dtype))
    return WeightShard(rank, world, parts, shapes, lora)


def shard_weights(state: dict[str, torch.Tensor], rank: int, world: int, lora: LoraSpec | None = None) -> WeightShard:
    """Rank `rank`'s slice of full weights, laid out as ZeRO-3 partitions them."""
    parts = {}
    for name, t in state.items():
        size = math.ceil(t.numel() / world)
        flat = torch.nn.functional.pad(t.detach().flatten(), (0, size * world - t.numel()))
        parts[name] = flat[rank * size:(rank + 1) * size].clone()
    return WeightShard(rank, world, parts, {k: tuple(v.shape) for k, v in state.items()}, lora)


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


PEFT_PREFIX = "base_model.model."


def merge_lora(base: Mapping[str, torch.Tensor], adapters: Mapping[str, torch.Tensor],
               spec: LoraSpec) -> dict[str, torch.Tensor]:
    """Full weights: `base` with W + scale * B A on every adapted module. `adapters` holds peft's
    saved names, `<PEFT_PREFIX><module>.lora_A.weight` (r, in) and `...lora_B.weight` (out, r).
    Computed in float32 from the base each time (never onto the previous merge), so a restarted
    generator and a running one get the same weights from the same adapters."""
    out = dict(base)
    for key, a in adapters.items():
        if not key.endswith(".lora_A.weight"):
            continue
        module = key[len(PEFT_PREFIX):-len(".lora_A.weight")]
        b = adapters[f"{PEFT_PREFIX}{module}.lora_B.weight"]
        w = base[f"{module}.weight"]  # (out, in)
        # In the wider of the two dtypes: a bf16 base stays exact and small deltas are not rounded away.
        out[f"{module}.weight"] = (w.float() + spec.scale * (b.float() @ a.float())).to(torch.promote_types(w.dtype, a.dtype))
    return out


def load_base_weights(model_path: str) -> dict[str, torch.Tensor]:
    """The HF folder's own weights (every *.safetensors file), as merge_lora's base."""
    from pathlib import Path

    from safetensors.torch import load_file

    files = sorted(Path(model_path).glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{model_path}: no *.safetensors weights to apply LoRA adapters to")
    return {k: v for f in files for k, v in load_file(str(f)).items()}
