"""What the driver process receives per step, and its memory, against batch size and response length.

Usage: python bench/driver_bytes/run.py [--repo PATH] [--label NAME] [--out bench/driver_bytes/results]

Runs `forkrl train` with the tiny random model (it almost never stops early, so responses are as
long as generation.max_new_tokens allows) for 4 steps at each (prompts_per_step, max_new_tokens)
of the grid, one learner rank, and records per run:
- `driver/received_kb` and `rollouts/payload_kb` from metrics.jsonl (the mean over the steps): what
  the driver fetched of the rollouts, and the rollout batches' own size, which a driver that relays
  rollouts fetches on top (code before 2026-12-03 did: its collect() called ray.get on every
  RolloutBatch);
- the driver process's peak RSS, sampled every 0.2 s from outside (psutil), for this code and for
  an older checkout given by --repo (with its own .venv), so the two are compared side by side.
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
GRID = [(4, 32), (4, 128), (4, 448), (16, 32), (16, 448)]  # (prompts_per_step, max_new_tokens); G = 4


def run_one(repo: Path, python: str, model: Path, data: Path, prompts: int, tokens: int, run_dir: Path) -> dict:
    cmd = [python, "-m", "launch.cli", "train", "--config", str(repo / "configs/tiny.yaml"), f"model.path={model}",
           f"data.train_files={data}", f"tracking.run_dir={run_dir}", "tracking.wandb_mode=disabled", "steps=4",
           f"prompts_per_step={prompts}", f"generation.max_new_tokens={tokens}", "generation.max_model_len=512",
           "learner.num_ranks=1", "learner.micro_batch_size=4"]
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=repo, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    driver, peak = psutil.Process(proc.pid), 0
    while proc.poll() is None:
        try:
            peak = max(peak, driver.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.2)
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{err[-2000:]}")
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    rows = [r for r in rows if "reward/mean" in r]

    def mean(key):
        vals = [r[key] for r in rows if key in r]
        return statistics.mean(vals) if vals else None

    return {"prompts_per_step": prompts, "responses": prompts * 4, "max_new_tokens": tokens,
            "length_mean": mean("response/length_mean"), "driver_received_kb": mean("driver/received_kb"),
            "payload_kb": mean("rollouts/payload_kb"), "driver_peak_rss_mb": peak / 2**20,
            "wall_s": time.perf_counter() - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", default=str(REPO), help="the checkout to run (its .venv's python)")
    ap.add_argument("--label", default="this")
    ap.add_argument("--out", default=str(HERE / "results"))
    args = ap.parse_args()
    repo = Path(args.repo).resolve()
    python = str(repo / ".venv/bin/python")
    sys.path.insert(0, str(REPO))
    from launch.models import build_tiny_model
    from tests.conftest import write_yes_prompts

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_tiny_model(tmp / "tiny")
        data = write_yes_prompts(tmp / "yes.jsonl", 256, 0, 1)
        rows = []
        for prompts, tokens in GRID:
            row = run_one(repo, python, model, data, prompts, tokens, tmp / f"run-{prompts}-{tokens}")
            row["code"] = args.label
            print(json.dumps(row), flush=True)
            rows.append(row)
    (out / f"{args.label}.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
