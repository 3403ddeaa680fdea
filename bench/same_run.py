"""Do two checkouts train the same run? For refactors that promise no behaviour change.

Runs the tiny model (built locally) through the whole loop -- async staleness, dynamic sampling,
overlong shaping, evaluation, checkpoints, two ZeRO-3 ranks -- once from each checkout with the
same seeds, then compares every metric (timings and memory left out) and every trained response.
The tiny runs are deterministic on one machine (tests/test_resume.py relies on it), so any
difference is a change of behaviour.

    python bench/same_run.py /path/to/old/checkout /path/to/new/checkout [--out bench/results/same_run.json]

Each checkout runs with its own code on PYTHONPATH and this interpreter (the project's venv).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.conftest import write_yes_prompts  # noqa: E402

NOISY = ("timing/", "memory/", "reward/verify_p99_s")  # wall-clock figures: they differ run to run
OVERRIDES = ["steps=6", "max_staleness=1", "learner.num_ranks=2", "dynamic_sampling=true",
             "dynamic_sampling_max_rounds=2", "reward.overlong_weight=1.0", "reward.overlong_cache=4",
             "eval.every=3", "eval.samples=2", "checkpoint.every=2", "tracking.log_rollouts=true",
             "tracking.wandb_mode=disabled", "learner.signal=reward"]  # shaping alone must train: the tiny model never earns its reward


def train(checkout: Path, model: Path, data: Path, held_out: Path, run_dir: Path) -> None:
    cmd = [sys.executable, "-m", "launch.cli", "train", "--config", str(checkout / "configs/tiny.yaml"),
           f"model.path={model}", f"data.train_files={data}", f"eval.files={held_out}", f"tracking.run_dir={run_dir}",
           *OVERRIDES]
    env = {**os.environ, "PYTHONPATH": str(checkout), "WANDB_SILENT": "true"}
    res = subprocess.run(cmd, cwd=checkout, env=env, capture_output=True, text=True, timeout=1800)
    if res.returncode != 0:
        raise SystemExit(f"{checkout}: training failed:\n{res.stderr[-3000:]}")


def same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    return a == b


def compare(old: Path, new: Path) -> dict:
    rows_a = [json.loads(x) for x in (old / "metrics.jsonl").read_text().splitlines()]
    rows_b = [json.loads(x) for x in (new / "metrics.jsonl").read_text().splitlines()]
    diffs = []
    for ra, rb in zip(rows_a, rows_b):
        keys = {k for k in ra.keys() | rb.keys() if not k.startswith(NOISY)}
        diffs += [(ra["step"], k, ra.get(k), rb.get(k)) for k in sorted(keys) if not same(ra.get(k), rb.get(k))]
    rollouts = sorted(p.name for p in (old / "rollouts").glob("*.jsonl"))
    differing = [n for n in rollouts if (old / "rollouts" / n).read_text() != (new / "rollouts" / n).read_text()]
    return {"steps": len(rows_a), "steps_new": len(rows_b), "metric_values_compared": sum(len(r) for r in rows_a),
            "steps_with_an_update": sum(r.get("losses/loss") is not None for r in rows_a),
            "evaluations": sum("eval/accuracy" in r for r in rows_a),
            "metric_differences": diffs, "rollout_files": len(rollouts), "rollout_files_differing": differing}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("old", type=Path)
    ap.add_argument("new", type=Path)
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    from launch.models import build_tiny_model

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        model = build_tiny_model(tmp / "tiny")
        data = write_yes_prompts(tmp / "yes.jsonl", 64, seed=0, min_words=2)
        held_out = write_yes_prompts(tmp / "yes_eval.jsonl", 32, seed=1, min_words=3)
        for name, checkout in (("old", args.old), ("new", args.new)):
            train(checkout.resolve(), model, data, held_out, tmp / name)
        report = {"old": str(args.old), "new": str(args.new), "overrides": OVERRIDES,
                  **compare(tmp / "old", tmp / "new")}
    print(json.dumps(report, indent=2))
    if args.out:
        args.out.write_text(json.dumps(report, indent=2) + "\n")
    ok = not report["metric_differences"] and not report["rollout_files_differing"] and report["steps"] == report["steps_new"]
    raise SystemExit(0 if ok else 1)


if __name__ == "__main__":
    main()
