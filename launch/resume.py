"""Full checkpoints of a run and resuming from them.

A checkpoint is `run_dir/state/step_N/`:
- `zero/`: DeepSpeed's own checkpoint, every learner rank writing its model, optimizer and
  scheduler shards (nothing is gathered into one process);
- `driver.json`: the step, the policy version, the prompt stream's position, the ledger of
  batches issued but not yet trained (sampled again on resume from the same prompts and seeds),
  the driver's RNG states, the reward-health, skipped-step and fault counters, and the wandb run id.
It is written under a temporary name and renamed into place; `state/latest` names the newest
complete one and is replaced last, so a crash at any moment leaves the previous checkpoint usable.
The run's config is run_dir/config.yaml.
"""
from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from launch.config import ConfigError, TrainConfig, load_config, to_dict
from launch.rng_state import rng_from_json, rng_to_json

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
    faults: dict | None = None  # Faults.counters(): actor restarts, resubmitted prompts, learner restarts


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


def commit_checkpoint(run_dir: Path, tmp: Path, step: int, keep: int) -> Path:
    """Rename a fully written checkpoint into place, point `latest` at it, drop the oldest."""
    root = run_dir / STATE_DIR
    final = root / f"step_{step}"
    shutil.rmtree(final, ignore_errors=True)  # a step trained again after a resume
    tmp.rename(final)
    pointer = root / "latest.tmp"
    pointer.write_text(final.name)
    os.replace(pointer, root / "latest")
    done = sorted((p for p in root.glob("step_*") if p.is_dir() and p.name.split("_")[1].isdigit()),
                  key=lambda p: int(p.name.split("_")[1]))
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def checkpoint_tmp(run_dir: Path, step: int) -> Path:
    tmp = run_dir / STATE_DIR / f".step_{step}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def record_learner_restarts(run_dir: Path, count: int) -> None:
    """Learner restarts are counted for the whole run, outside the checkpoints: a restart rewinds to
    a checkpoint written before it, whose counters cannot know of it."""
    tmp = run_dir / STATE_DIR / "learner_restarts.tmp"
    tmp.write_text(str(count))
    os.replace(tmp, run_dir / STATE_DIR / "learner_restarts")


def recorded_learner_restarts(run_dir: Path) -> int:
    path = run_dir / STATE_DIR / "learner_restarts"
    return int(path.read_text()) if path.is_file() else 0


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
    tmp = ckpt / ".universal.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    res = subprocess.run([sys.executable, "-m", "deepspeed.checkpoint.ds_to_universal", "--input_folder",
                          str(ckpt / "zero"), "--output_folder", str(tmp), "--num_extract_workers", "1",
                          "--num_merge_workers", "1"], capture_output=True, text=True)
    if res.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tail = (res.stderr.strip().splitlines() or ["no output"])[-1]
        raise ConfigError(f"learner.num_ranks: converting {ckpt} to a universal checkpoint failed: {tail}")
    tmp.rename(out)
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
