"""Weight publish and load through the object store, across two Ray nodes, against model size.

Usage: python bench/weight_publish.py [--models tiny smollm2-135m llama-1b] [--dtypes float32 bfloat16]
       [--ranks 2] [--repeats 3] [--ways views torch]

A real 2-node Ray cluster on this machine (tests/cluster.py): `--ranks` publisher actors on node A
stand in for the learner ranks (each holds its ZeRO-3-shaped slice of every weight, random
values, in the publish dtype) and one consumer actor on node B stands in for a generator. Per
(model, dtype), median of --repeats:
- publish_s: every rank puts its WeightShard into its node's object store (what
  LearnerWorker.publish_weights does after copying its partition to CPU);
- fetch_assemble_s: the consumer receives every shard (Ray moves them from node A's store to
  node B's) and concatenates them into full HF-named tensors (learner.weights.assemble_weights,
  as GenerationWorker.load_weights does before handing them to vLLM).
`--ways`: how a shard travels, alternated within each (model, dtype):
- views (forkrl's way since 2026-12-05): the parts are views of the rank's partition, pickled as
  numpy arrays, so the object store copies their bytes once, out of band, and the consumer reads
  views of the store's memory (WeightShard.__reduce__);
- torch (the way before): the rank copies its partition to new tensors, and torch's pickling
  copies each storage in band, on both sides.
vLLM's own reload_weights is not included (measured for the 135M model in bench/README.md "LoRA":
it runs in the generator and does not depend on where the shards came from). Shapes come from
each model's config on the meta device; no model is built.

Appends rows to bench/results/weight_publish.jsonl.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {  # name -> transformers LlamaConfig kwargs
    "tiny": dict(vocab_size=64, hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                 num_key_value_heads=2, tie_word_embeddings=True),
    "smollm2-135m": dict(vocab_size=49152, hidden_size=576, intermediate_size=1536, num_hidden_layers=30,
                         num_attention_heads=9, num_key_value_heads=3, tie_word_embeddings=True),
    "llama-1b": dict(vocab_size=49152, hidden_size=2048, intermediate_size=5632, num_hidden_layers=18,
                     num_attention_heads=16, num_key_value_heads=8, tie_word_embeddings=False),
}


def shapes_of(name: str) -> dict[str, tuple[int, ...]]:
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    with torch.device("meta"):
        model = LlamaForCausalLM(LlamaConfig(**MODELS[name]))
    return {k: tuple(p.shape) for k, p in model.named_parameters()}


def torch_pickled(shard):
    """`shard` as it travelled before: torch's pickling, each part's storage in band."""
    from learner.weights import WeightShard

    class TorchPickledShard(WeightShard):
        def __reduce__(self):
            return WeightShard, (self.rank, self.world, self.parts, self.shapes, self.lora)

    return TorchPickledShard(shard.rank, shard.world, shard.parts, shard.shapes, shard.lora)


class Publisher:
    """One learner rank's slice of every weight, random, in `dtype`, held as one flat buffer as
    ZeRO-3 holds a rank's partition."""

    def __init__(self, shapes: dict, rank: int, world: int, dtype: str):
        import torch

        gen = torch.Generator().manual_seed(rank)
        sizes = {k: math.ceil(math.prod(s) / world) for k, s in shapes.items()}
        self.flat = torch.randn(sum(sizes.values()), generator=gen).to(getattr(torch, dtype))
        self.parts, at = {}, 0
        for k, n in sizes.items():
            self.parts[k] = self.flat[at:at + n]
            at += n
        self.rank, self.world, self.shapes = rank, world, shapes

    def publish(self, way: str):
        """(the shard, its bytes) as num_returns=2: the driver reads the size, never the shard."""
        from learner.weights import WeightShard

        if way == "views":  # learner.zero.weight_shard on CPU
            shard = WeightShard(self.rank, self.world, self.parts, self.shapes)
        else:  # before: a copy of the partition, pickled by torch
            shard = torch_pickled(WeightShard(self.rank, self.world, {k: t.clone() for k, t in self.parts.items()},
                                              self.shapes))
        return shard, shard.nbytes


class Consumer:
    def load(self, *shards) -> tuple[float, int]:
        from learner.weights import assemble_weights

        t0 = time.perf_counter()
        state = assemble_weights(shards)
        return time.perf_counter() - t0, sum(t.numel() for t in state.values())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    ap.add_argument("--dtypes", nargs="+", default=["float32", "bfloat16"])
    ap.add_argument("--ranks", type=int, default=2)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--object-store-mb", type=int, default=6000)
    ap.add_argument("--ways", nargs="+", default=["views", "torch"], choices=["views", "torch"])
    args = ap.parse_args()
    import ray

    from tests.cluster import local_cluster

    out = ROOT / "bench/results/weight_publish.jsonl"
    with local_cluster([{"num_cpus": 1, "resources": {"a": 1}}, {"num_cpus": 1, "resources": {"b": 1}}],
                       object_store_mb=args.object_store_mb) as cluster:
        ray.init(address=cluster.address, log_to_driver=False)
        consumer = ray.remote(Consumer).options(num_cpus=0, resources={"b": 0.01}).remote()
        for name in args.models:
            shapes = shapes_of(name)
            params = sum(math.prod(s) for s in shapes.values())
            for dtype in args.dtypes:
                pubs = [ray.remote(Publisher).options(num_cpus=0, resources={"a": 0.01}).remote(shapes, r, args.ranks, dtype)
                        for r in range(args.ranks)]
                ray.get([p.publish.options(num_returns=2).remote(w)[1] for p in pubs for w in args.ways])  # warm
                times = {w: ([], [], []) for w in args.ways}
                for _ in range(args.repeats):
                    for way in args.ways:  # alternated, so drift on the machine hits every way alike
                        pub_s, load_s, asm_s = times[way]
                        t0 = time.perf_counter()
                        refs, sizes = zip(*[p.publish.options(num_returns=2).remote(way) for p in pubs])
                        ray.wait(list(refs), num_returns=len(refs), fetch_local=False)
                        nbytes = sum(ray.get(list(sizes)))
                        t1 = time.perf_counter()
                        asm, numel = ray.get(consumer.load.remote(*refs))
                        t2 = time.perf_counter()
                        pub_s.append(t1 - t0)
                        load_s.append(t2 - t1)
                        asm_s.append(asm)
                        assert numel == params
                        del refs
                for way, (pub_s, load_s, asm_s) in times.items():
                    row = {"model": name, "params_m": round(params / 1e6, 1), "dtype": dtype, "ranks": args.ranks,
                           "way": way, "mb": round(nbytes / 2**20, 1), "publish_s": round(statistics.median(pub_s), 3),
                           "fetch_assemble_s": round(statistics.median(load_s), 3),
                           "assemble_s": round(statistics.median(asm_s), 3),
                           "gb_per_s": round(nbytes / 1e9 / statistics.median(load_s), 2),
                           "date": time.strftime("%Y-%m-%d")}
                    print(json.dumps(row), flush=True)
                    with open(out, "a") as f:
                        f.write(json.dumps(row) + "\n")
                for p in pubs:
                    ray.kill(p)
        ray.shutdown()


if __name__ == "__main__":
    main()
