"""Demo step time, two commits side by side on this machine.

Each commit is checked out into a temporary git worktree and runs the demo config for `--steps`
steps with evaluation off, one after the other (never at once: they would share the cores), with
the same installed environment (the worktree goes first on PYTHONPATH, which Ray's workers inherit).
The median `timing/step_s` over the steps after the first is compared.

    python bench/demo_speed.py --old 4b92d2e --new HEAD --steps 8

Results are appended to bench/results/demo_speed.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run_commit(rev: str, steps: int, overrides: list[str], work: Path) -> dict:
    sha = subprocess.check_output(["git", "rev-parse", "--short", rev], cwd=ROOT, text=True).strip()
    tree = work / sha
    subprocess.run(["git", "worktree", "add", "--detach", "-f", str(tree), sha], cwd=ROOT, check=True,
                   capture_output=True)
    try:
        run_dir = work / f"run_{sha}"
        cmd = [sys.executable, "-m", "launch.cli", "train", "--config", "configs/demo.yaml", f"steps={steps}",
               "eval.every=0", f"tracking.run_dir={run_dir}", "tracking.wandb_mode=disabled", *overrides]
        env = dict(os.environ, PYTHONPATH=str(tree))
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=tree, env=env, capture_output=True, text=True)
        wall = time.perf_counter() - t0
        if proc.returncode != 0:
            raise RuntimeError(f"{sha}: run failed\n{proc.stderr[-3000:]}")
        rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
        rows = [r for r in rows if r.get("step", 0) >= 1 and "timing/step_s" in r]
        later = rows[1:]
        return {"commit": sha, "wall_s": wall, "step_s": [r["timing/step_s"] for r in rows],
                "median_step_s": statistics.median(r["timing/step_s"] for r in later),
                "median_learn_s": statistics.median(r["timing/learn_s"] for r in later),
                "median_generate_s": statistics.median(r["timing/generate_s"] for r in later),
                "learner_peak_gb": max((r.get("memory/learner_peak_gb", float("nan")) for r in rows), default=None)}
    finally:
        subprocess.run(["git", "worktree", "remove", "--force", str(tree)], cwd=ROOT, capture_output=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--old", required=True)
    ap.add_argument("--new", default="HEAD")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("overrides", nargs="*", help="config key=value overrides for both runs")
    args = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="forkrl_speed_"))
    try:
        old = run_commit(args.old, args.steps, args.overrides, work)
        new = run_commit(args.new, args.steps, args.overrides, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    row = {"date": time.strftime("%Y-%m-%d %H:%M"), "steps": args.steps, "overrides": args.overrides,
           "old": old, "new": new, "speedup": old["median_step_s"] / new["median_step_s"]}
    for r in (old, new):
        print(f"{r['commit']}: median step {r['median_step_s']:.1f} s (learn {r['median_learn_s']:.1f} s, "
              f"generate {r['median_generate_s']:.1f} s), wall {r['wall_s']:.0f} s")
    print(f"speed-up {row['speedup']:.2f}x")
    with (ROOT / "bench" / "results" / "demo_speed.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
