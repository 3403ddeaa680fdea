"""Demo step time, two commits side by side on this machine.

Each commit is checked out into a temporary git worktree and runs the demo config for `--steps`
steps with evaluation off, one after the other (never at once: they would share the cores), with
the same installed environment (the worktree goes first on PYTHONPATH, which Ray's workers inherit).
The median `timing/step_s` over the steps after the first is compared.
While each runs, the learner rank's process (`ray::LearnerWorker`) is sampled every 0.1 s from
outside, the same way for both commits: its peak resident set split into its own memory (anonymous
and file pages) and shared memory (chiefly the Ray object store's pages, where each weight publish
is written). The exact peak the learner reports itself (ru_maxrss) is kept beside it.

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
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from learner.step_metrics import resident_kb  # noqa: E402  (the learner's own reader of /proc/<pid>/status)


class LearnerMemory:
    """Samples every `ray::LearnerWorker` process's /proc/<pid>/status until stopped: the largest
    own (RssAnon + RssFile), shared (RssShmem) and total resident memory seen, in GB."""

    def __init__(self, every_s: float = 0.1):
        self.every_s, self.peak = every_s, {"own_gb": 0.0, "shared_gb": 0.0, "total_gb": 0.0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            for status in learner_statuses():
                own, shared = status.get("RssAnon", 0) + status.get("RssFile", 0), status.get("RssShmem", 0)
                for key, kb in (("own_gb", own), ("shared_gb", shared), ("total_gb", own + shared)):
                    self.peak[key] = max(self.peak[key], kb / 2**20)


def learner_statuses() -> list[dict[str, int]]:
    """The resident-set fields (kB) of each process named ray::LearnerWorker (Ray names an actor's
    process by its class)."""
    out = []
    for proc in Path("/proc").iterdir():
        try:
            if not proc.name.isdigit() or not (proc / "cmdline").read_bytes().startswith(b"ray::LearnerWorker"):
                continue
        except OSError:  # it exited meanwhile
            continue
        out.append(resident_kb(proc.name))
    return out


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
        with LearnerMemory() as memory:
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
                "learner_peak_gb": max((r.get("memory/learner_peak_gb", float("nan")) for r in rows), default=None),
                "sampled_learner_gb": memory.peak}
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
              f"generate {r['median_generate_s']:.1f} s), wall {r['wall_s']:.0f} s; learner peak "
              f"{r['learner_peak_gb']:.2f} GB (sampled: own {r['sampled_learner_gb']['own_gb']:.2f}, shared "
              f"{r['sampled_learner_gb']['shared_gb']:.2f}, total {r['sampled_learner_gb']['total_gb']:.2f} GB)")
    print(f"speed-up {row['speedup']:.2f}x")
    with (ROOT / "bench" / "results" / "demo_speed.jsonl").open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
