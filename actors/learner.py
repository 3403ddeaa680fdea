"""Learner worker: one rank of the DeepSpeed ZeRO-3 group. A plain class; launch/ makes it remote."""
from __future__ import annotations

import os
import socket

from learner.batch import TrainShard


class LearnerWorker:
    def __init__(self, cfg, rank: int, world_size: int):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.trainer = None

    def address(self) -> tuple[str, int]:
        """This node's IP and a free port, for rank 0 to host the process-group rendezvous."""
        import ray

        ip = ray.util.get_node_ip_address()
        with socket.socket() as s:
            s.bind(("", 0))
            return ip, s.getsockname()[1]

    def setup(self, *, master: tuple[str, int], model_path: str, temperature: float, max_new_tokens: int,
              max_prompt_tokens: int, batch_size: int, seed: int) -> None:
        import deepspeed
        import torch

        os.environ.update(MASTER_ADDR=master[0], MASTER_PORT=str(master[1]), RANK=str(self.rank),
                          WORLD_SIZE=str(self.world_size), LOCAL_RANK="0")
        if torch.cuda.is_available():
            torch.cuda.set_device(0)  # Ray gives each rank its own GPU as device 0
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
        from learner.engine import PolicyTrainer

        self.trainer = PolicyTrainer(self.cfg, model_path, temperature=temperature, max_new_tokens=max_new_tokens,
                                     max_prompt_tokens=max_prompt_tokens, batch_size=batch_size, seed=seed)

    def train_step(self, shard: TrainShard) -> dict:
        return self.trainer.train_step(shard)

    def weight_shard(self):
        return self.trainer.weight_shard()
