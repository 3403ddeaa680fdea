"""Learner worker: one rank of the DeepSpeed ZeRO-3 group. A plain class; launch/ makes it remote."""
from __future__ import annotations

import os
import socket
from pathlib import Path

from learner.batch import ShardPlan, TrainShard, collate_plan


class LearnerWorker:
    def __init__(self, cfg, rank: int, world_size: int):
        self.cfg, self.rank, self.world_size = cfg, rank, world_size
        self.trainer = None
        self.staged: TrainShard | None = None  # stage()'s rows, until train_staged

    def address(self) -> str:
        """A tcp:// rendezvous on this node's IP and a free port, for rank 0 to host (cluster runs)."""
        import ray

        ip = ray.util.get_node_ip_address()
        with socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET) as s:
            s.bind((ip, 0))  # only probes for a free port on the address the store will use
            port = s.getsockname()[1]
        return f"tcp://[{ip}]:{port}" if ":" in ip else f"tcp://{ip}:{port}"

    def setup(self, *, rendezvous: str, model_path: str, temperature: float, max_new_tokens: int,
              max_prompt_tokens: int, batch_size: int, seed: int, load_universal: bool = False) -> None:
        """Joins the process group at `rendezvous` (a torch init_method URL: tcp:// hosted by rank 0,
        or file:// when every rank is on this node, which opens no socket) and builds the trainer."""
        import deepspeed
        import torch

        os.environ.update(RANK=str(self.rank), WORLD_SIZE=str(self.world_size), LOCAL_RANK="0")
        if torch.cuda.is_available():
            torch.cuda.set_device(0)  # Ray gives each rank its own GPU as device 0
        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo",
                                   auto_mpi_discovery=False, init_method=rendezvous, rank=self.rank,
                                   world_size=self.world_size)
        from learner.engine import PolicyTrainer

        self.trainer = PolicyTrainer(self.cfg, model_path, temperature=temperature, max_new_tokens=max_new_tokens,
                                     max_prompt_tokens=max_prompt_tokens, batch_size=batch_size, seed=seed,
                                     load_universal=load_universal)

    def probe_storage(self, folder: str, token: str) -> dict:
        """Write this rank's mark into `folder` and read the driver's: checkpoints are written by
        every rank into the run directory, which therefore must be storage all nodes share."""
        import ray

        out = {"node": ray.util.get_node_ip_address(), "error": "", "saw_driver": False}
        try:
            path = Path(folder)
            path.mkdir(parents=True, exist_ok=True)
            (path / f"rank{self.rank}").write_text(token)
            out["saw_driver"] = (path / "driver").is_file() and (path / "driver").read_text() == token
        except OSError as e:
            out["error"] = f"{type(e).__name__}: {e}"
        return out

    def train_step(self, shard: TrainShard) -> dict:
        return self.trainer.train_step(shard)

    def stage(self, plan: ShardPlan, *rollouts) -> int:
        """This rank's rows of the step, collated from the rollout batches (Ray hands them over from
        the generators' object stores, not through the driver); train_staged trains them. Returns
        the rows staged."""
        self.staged = collate_plan(plan, rollouts)
        return len(self.staged)

    def train_staged(self) -> dict:
        shard, self.staged = self.staged, None
        if shard is None:
            raise RuntimeError("train_staged without a staged shard")
        return self.trainer.train_step(shard)

    def weight_shard(self):
        return self.trainer.weight_shard()

    def publish_weights(self) -> tuple:
        """(this rank's WeightShard, its bytes): called with num_returns=2, so the driver reads the
        size without fetching the shard, which goes to the generators by reference."""
        shard = self.trainer.weight_shard()
        return shard, shard.nbytes

    def save_checkpoint(self, path: str) -> None:
        self.trainer.save_checkpoint(path)

    def load_checkpoint(self, path: str) -> None:
        self.trainer.load_checkpoint(path)
