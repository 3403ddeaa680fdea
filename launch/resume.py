"""Full checkpoints of a run and resuming from them.

A checkpoint is `run_dir/state/step_N/`:
- `zero/`: DeepSpeed's own checkpoint, every learner rank writing its model, optimizer and
  scheduler shards (nothing is gathered into one process);
- `driver.json`: the step, the policy version, the prompt stream's position, the ledger of
  batches issued but not yet trained (sampled again on resume from the same prompts and seeds),
  the driver's RNG states, the reward-health, skipped-step and fault counters, and the wandb run id.
It is written under a temporary name and renamed into place; `state/latest` names the newest
complete one and is replaced last, so a crash at any moment leaves the previous checkpoint usable.
The run's config is run_dir/config.yaml; `state/learner_restarts` counts the run's learner
restarts, which outlive the checkpoints they rewind to.

Nothing here imports Ray: the command line checks a resume before Ray may be loaded.
"""
from __future__ import annotations

import json
import random
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from launch.atomic import atomic_dir, fsync_dir, fsync_tree, write_atomic
from launch.errors import ConfigError
from launch.config import TrainConfig
from launch.config_load import load_config, to_dict
from launch.rng_state import rng_from_json, rng_to_json

if TYPE_CHECKING:  # annotations only: launch.groups imports Ray
    from launch.data import PromptStream
    from launch.groups import ActorGroups
    from launch.rollouts import RewardHealth

STATE_DIR = "state"

# Keys a resume may change: they cannot change what the run trains on or how.
RESUMABLE = ("steps", "eval.", "tracking.wandb_mode", "tracking.wandb_project", "tracking.save_every",
             "tracking.log_rollouts", "checkpoint.", "address", "cluster.", "generation.num_cpus", "reward.num_cpus",
             "reward.num_actors", "reward.workers_per_actor", "learner.num_cpus", "learner.torch_threads",
             "learner.max_skipped_steps", "reward.max_error_fraction", "reward.max_error_steps", "fault.")


# Keys a resume may change by converting the checkpoint to DeepSpeed's universal format, which
# no longer depends on how many ranks wrote it; micro_batch_size must be able to follow the ranks.
RESHARDABLE = ("learner.num_ranks", "learner.num_gpus", "learner.micro_batch_size")


@dataclass
class Progress:
    """What the step loop carries from step to step, and a checkpoint records."""

    shard_rng: random.Random  # shuffles responses into rank shards
    step: int = 0  # last trained step
    version: int = 0  # policy version (one per trained step)
    skipped_total: int = 0  # steps whose update was refused for a NaN / inf gradient norm
    skipped_streak: int = 0


@dataclass
class DriverState:
    step: int  # last trained step
    version: int  # policy version after it
    stream: dict  # PromptStream.state() after the last batch issued
    pending: list  # [[batch number, prompt uids], ...]: issued but not trained, sampled again on resume
    shard_rng: list  # random.Random state of the batch shuffler (JSON form)
    skipped_total: int
    skipped_streak: int
    reward_streak: int
    reward_first_error: str
    wandb_id: str | None
    num_ranks: int
    python_rng: list
    numpy_rng: list
    torch_rng: list
    faults: dict | None = None  # FaultCounts.state(): actor restarts, resubmitted prompts

    @classmethod
    def capture(cls, p: Progress, stream: "PromptStream", health: "RewardHealth", inflight: Iterable,
                wandb_id: str | None, actors: "ActorGroups") -> "DriverState":
        """The driver's side of a checkpoint after step `p.step`; `inflight`: InFlight batches."""
        return cls(step=p.step, version=p.version, stream=stream.state(),
                   pending=[[b.batch, [q.uid for q in b.prompts]] for b in inflight],
                   shard_rng=rng_to_json(p.shard_rng.getstate()), skipped_total=p.skipped_total,
                   skipped_streak=p.skipped_streak, reward_streak=health.streak,
                   reward_first_error=health.first_error, wandb_id=wandb_id, num_ranks=len(actors.learners),
                   faults=actors.faults.state(), **process_rngs())


def process_rngs() -> dict:
    """The driver's global Python, NumPy and torch RNG states, JSON-able."""
    np_state = np.random.get_state()
    return {"python_rng": rng_to_json(random.getstate()),
            "numpy_rng": [np_state[0], np_state[1].tolist(), *np_state[2:]],
            "torch_rng": torch.get_rng_state().tolist()}


def restore_process_rngs(state: DriverState) -> None:
    random.setstate(rng_from_json(state.python_rng))
    kind, keys, *rest = state.numpy_rng
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), *rest))
    torch.set_rng_state(torch.tensor(state.torch_rng, dtype=torch.uint8))


def save_driver_state(ckpt: Path, state: DriverState) -> None:
    (ckpt / "driver.json").write_text(json.dumps(asdict(state)))


def save_checkpoint(run_dir: Path, keep: int, actors: "ActorGroups", state: DriverState) -> Path:
    """A full checkpoint after step `state.step`: the learner ranks' ZeRO-3 shards and `state`."""
    tmp = checkpoint_tmp(run_dir, state.step)
    actors.save(str(tmp))
    save_driver_state(tmp, state)
    return commit_checkpoint(run_dir, tmp, state.step, keep)


def restore(ckpt: Path, saved: DriverState, actors: "ActorGroups", stream: "PromptStream", progress: Progress,
            health: "RewardHealth") -> list[tuple[int, list[int]]]:
    """Load a checkpoint into fresh actors and the driver's state; the generators get its weights
    before they sample. Returns the batches that were in flight, to sample again."""
    actors.load(str(ckpt))
    stream.restore(saved.stream)
    progress.shard_rng.setstate(rng_from_json(saved.shard_rng))
    progress.step, progress.version = saved.step, saved.version
    progress.skipped_total, progress.skipped_streak = saved.skipped_total, saved.skipped_streak
    health.streak, health.first_error = saved.reward_streak, saved.reward_first_error
    restore_process_rngs(saved)
    actors.faults.restore(saved.faults)
    actors.publish(saved.version, wait=True)
    return [tuple(p) for p in saved.pending]


def commit_checkpoint(run_dir: Path, tmp: Path, step: int, keep: int) -> Path:
    """Rename a fully written (and fsynced) checkpoint into place, point `latest` at it, then drop
    the oldest: of the checkpoints up to the one `latest` names, all but the newest `keep`. One
    newer than `latest` (left by a run whose pointer write failed) is never deleted, nor is the one
    `latest` names, whatever happened to the pointer."""
    root = run_dir / STATE_DIR
    final = root / f"step_{step}"
    fsync_tree(tmp)
    shutil.rmtree(final, ignore_errors=True)  # a step trained again after a resume
    tmp.rename(final)
    fsync_dir(root)
    write_atomic(root / "latest", final.name)
    pointed = (root / "latest").read_text().strip()
    done = sorted((p for p in root.glob("step_*") if p.is_dir() and p.name.split("_")[1].isdigit()),
                  key=lambda p: int(p.name.split("_")[1]))
    names = [p.name for p in done]
    upto = done[: names.index(pointed) + 1] if pointed in names else []
    for old in upto[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_tmp(run_dir: Path, step: int) -> Path:
    tmp = run_dir / STATE_DIR / f".step_{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def check_shared_storage(run_dir: Path, actors: "ActorGroups") -> None:
    """Before the first step: the driver and every learner rank write a mark into the run
    directory and read each other's. A cluster without storage shared by every node fails here in
    one line naming the rank and its node, not at the first checkpoint (or with a resume that
    finds only some ranks' shards)."""
    import uuid

    from launch.errors import ResourceError

    folder = run_dir / ".storage_check"  # not under state/, which marks a directory holding a run
    folder.mkdir(parents=True, exist_ok=True)
    token = uuid.uuid4().hex
    write_atomic(folder / "driver", token)
    reports = actors.probe_storage(str(folder), token)
    problem = storage_problem(run_dir, folder, token, reports)
    shutil.rmtree(folder, ignore_errors=True)
    if problem:
        raise ResourceError(problem)


def storage_problem(run_dir: Path, folder: Path, token: str, reports: list[dict]) -> str | None:
    """The first rank whose view of the run directory differs from the driver's, in one line."""
    need = ("checkpoints need a run directory every node shares: put tracking.run_dir on shared storage "
            "(README: On a cluster)")
    for rank, r in enumerate(reports):
        where = f"learner rank {rank} on node {r['node']}"
        if r["error"]:
            return f"{where} cannot write the run directory {run_dir} ({r['error']}); {need}"
        if not r["saw_driver"]:
            return f"{where} does not see the files the driver writes in {run_dir}; {need}"
        mark = folder / f"rank{rank}"
        if not (mark.is_file() and mark.read_text() == token):
            return f"the driver does not see what {where} wrote in {run_dir}; {need}"
    return None


class LearnerRestarts:
    """The run's learner restarts (a rank died; every actor restarted from the latest checkpoint),
    kept in run_dir/state/learner_restarts, its only home: a restart rewinds to a checkpoint
    written before it, whose counters cannot know of it, and fault.learner_restarts bounds the
    whole run, resumes included."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / STATE_DIR / "learner_restarts"
        self.count = int(self.path.read_text()) if self.path.is_file() else 0

    def add(self) -> int:
        self.count += 1
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, str(self.count))
        return self.count

    def metrics(self) -> dict:
        return {"fault/learner_restarts": self.count}


def latest_checkpoint(run_dir: Path) -> tuple[Path, DriverState]:
    pointer = run_dir / STATE_DIR / "latest"
    if not pointer.is_file():
        raise ConfigError(f"--resume {run_dir}: no complete checkpoint ({pointer} is missing); "
                          "checkpoints are written every checkpoint.every steps, at the end and when a run is stopped")
    ckpt = run_dir / STATE_DIR / pointer.read_text().strip()
    return ckpt, DriverState(**json.loads((ckpt / "driver.json").read_text()))


def to_universal(ckpt: Path) -> Path:
    """Convert a checkpoint's per-rank ZeRO-3 shards (model, optimizer) into DeepSpeed's universal
    format, which any number of ranks can load: ckpt/universal, written once, atomically. Runs
    DeepSpeed's own converter; it reads every shard, in this process's memory, once."""
    out = ckpt / "universal"
    if out.is_dir():
        return out
    with atomic_dir(out, ckpt / ".universal.tmp") as tmp:
        res = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                              str(ckpt / "zero"), "--output_folder", str(tmp), "--num_extract_workers", "1",
                              "--num_merge_workers", "1"], capture_output=True, text=True)
        if res.returncode != 0:
            tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
            raise ConfigError(f"learner.num_ranks: converting {ckpt} to a universal checkpoint failed: {tail}")
    return out


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in tree.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


def resume_config(run_dir: Path, overrides: list[str]) -> TrainConfig:
    """The run's saved config with `overrides` applied; refuses any change that would alter what
    the run trains (the error names the key), and a step count it has already passed."""
    saved_path = run_dir / "config.yaml"
    if not saved_path.is_file():
        raise ConfigError(f"--resume {run_dir}: not a run directory (no config.yaml)")
    saved = load_config(saved_path)
    cfg = load_config(saved_path, overrides)
    before, after = _flat(to_dict(saved)), _flat(to_dict(cfg))
    changed = [k for k in after if after[k] != before.get(k)]
    for key in changed:
        if key in RESHARDABLE:  # through DeepSpeed's universal checkpoint (to_universal)
            continue
        if not any(key == r or (r.endswith(".") and key.startswith(r)) for r in RESUMABLE):
            raise ConfigError(f"{key}: cannot change on --resume ({before.get(key)!r} -> {after[key]!r}); it would "
                              f"change what the run trains. Keys a resume may change: {', '.join(r + '*' if r.endswith('.') else r for r in RESUMABLE)}")
    _, state = latest_checkpoint(run_dir)
    if cfg.steps <= state.step:
        raise ConfigError(f"steps: the checkpoint is at step {state.step}; set steps above it to train further")
    return cfg
