"""What the driver process receives per step, and its memory, against batch size and response length.

Usage: python bench/driver_bytes/run.py [--repo PATH] [--label NAME] [--out bench/driver_bytes/results]
       python bench/driver_bytes/run.py --scaling [--label NAME]

Runs `forkrl train` with the tiny random model, every response sampled to exactly
generation.max_new_tokens (generation.ignore_eos), for 4 steps at each (prompts_per_step, max_new_tokens)
of the grid, one learner rank, and records per run:
- `driver/received_kb` and `rollouts/payload_kb` from metrics.jsonl (the mean over the steps): what
  the driver fetched of the rollouts, and the rollout batches' own size, which a driver that relays
  rollouts fetches on top (code before 2026-12-03 did: its collect() called ray.get on every
  RolloutBatch);
- the driver process's peak RSS, sampled every 0.2 s from outside (psutil), for this code and for
  an older checkout given by --repo (with its own .venv), so the two are compared side by side.
With --scaling: step time and driver bytes against the number of generation actors (1, 2, 4) on
one node and on three (a real multi-node Ray cluster on this machine), two learner ranks.
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


def run_one(repo: Path, python: str, model: Path, data: Path, prompts: int, tokens: int, run_dir: Path,
            ignore_eos: bool) -> dict:
    cmd = [python, "-m", "launch.cli", "train", "--config", str(repo / "configs/tiny.yaml"), f"model.path={model}",
           f"data.train_files={data}", f"tracking.run_dir={run_dir}", "tracking.wandb_mode=disabled", "steps=4",
           f"prompts_per_step={prompts}", f"generation.max_new_tokens={tokens}", "generation.max_model_len=512",
           "learner.num_ranks=1", "learner.micro_batch_size=4", *(["generation.ignore_eos=true"] if ignore_eos else [])]
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


def scaling(model: Path, data: Path, tmp: Path, label: str) -> list[dict]:
    """Step time and driver bytes against generation actors (1, 2, 4) on a 1-node and a 3-node
    cluster (tests/cluster.py; 6 logical CPUs in all either way, on the same 2 physical cores)."""
    sys.path.insert(0, str(REPO))
    from tests.cluster import local_cluster

    rows = []
    for nodes in (1, 3):
        with local_cluster([{"num_cpus": 6 // nodes}] * nodes) as cluster:
            for gens in (1, 2, 4):
                run_dir = tmp / f"scale-{nodes}-{gens}"
                cmd = [sys.executable, "-m", "launch.cli", "train", "--config", str(REPO / "configs/tiny.yaml"),
                       f"model.path={model}", f"data.train_files={data}", f"tracking.run_dir={run_dir}",
                       "tracking.wandb_mode=disabled", "steps=6", "prompts_per_step=8", "generation.max_new_tokens=64",
                       "generation.max_model_len=512", f"generation.num_actors={gens}", "generation.num_cpus=0.5",
                       "learner.num_ranks=2", "learner.num_cpus=0.5", f"address={cluster.address}"]
                t0 = time.perf_counter()
                res = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
                if res.returncode != 0:
                    raise SystemExit(f"{' '.join(cmd)} failed:\n{res.stderr[-2000:]}")
                m = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
                m = [r for r in m if "reward/mean" in r][1:]  # step 1 pays the engines' warm-up
                row = {"nodes": nodes, "generation_actors": gens, "code": label,
                       "step_s": statistics.median(r["timing/step_s"] for r in m),
                       "generate_s": statistics.median(r["timing/generate_s"] for r in m),
                       "driver_received_kb": statistics.mean(r["driver/received_kb"] for r in m),
                       "payload_kb": statistics.mean(r["rollouts/payload_kb"] for r in m),
                       "wall_s": time.perf_counter() - t0}
                print(json.dumps(row), flush=True)
                rows.append(row)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repo", default=str(REPO), help="the checkout to run (its .venv's python)")
    ap.add_argument("--label", default="this")
    ap.add_argument("--out", default=str(HERE / "results"))
    ap.add_argument("--no-ignore-eos", action="store_true",
                    help="for code without generation.ignore_eos: responses end where the tiny model stops")
    ap.add_argument("--scaling", action="store_true", help="the node x generation-actor grid instead (this code only)")
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
        if args.scaling:
            rows = scaling(model, data, tmp, args.label)
            (out / f"scaling-{args.label}.json").write_text(json.dumps(rows, indent=1) + "\n")
            return
        rows = []
        for prompts, tokens in GRID:
            row = run_one(repo, python, model, data, prompts, tokens, tmp / f"run-{prompts}-{tokens}", not args.no_ignore_eos)
            row["code"] = args.label
            print(json.dumps(row), flush=True)
            rows.append(row)
    (out / f"{args.label}.json").write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    main()
