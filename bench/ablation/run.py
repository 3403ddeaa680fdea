"""Mask ablation on the CPU demo task: none vs top-20% vs bottom-80% vs random-20%, equal steps.

Usage: python bench/ablation/run.py [--steps 12] [--out bench/ablation/results] [extra key=value ...]
Add --report-only to rebuild the plot and table from an earlier run's metrics.
Runs `forkrl train` once per arm (sequentially, same seed and data), then writes
`curves.png` (mean training reward and held-out greedy accuracy over steps) and `table.md`.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARMS = {
    "none (all tokens)": ["learner.mask.mode=none"],
    "top 20% entropy": ["learner.mask.mode=top", "learner.mask.rho=0.2"],
    "bottom 80% entropy": ["learner.mask.mode=bottom", "learner.mask.rho=0.2"],
    "random 20%": ["learner.mask.mode=random", "learner.mask.rho=0.2"],
}


def run_arm(name: str, overrides: list[str], args) -> list[dict]:
    run_dir = Path(args.out) / name.split()[0]
    if args.report_only:
        return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    cmd = [sys.executable, "-m", "launch.train", "--config", str(REPO / "configs/demo.yaml"), f"steps={args.steps}",
           f"tracking.run_dir={run_dir}", f"tracking.name=ablation-{name.split()[0]}", "tracking.wandb_mode=offline",
           f"eval.every={args.eval_every}", "eval.num_prompts=32", *overrides, *args.extra]
    print("running", name, flush=True)
    subprocess.run(cmd, cwd=REPO, check=True)
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--eval-every", type=int, default=4)
    ap.add_argument("--out", default=str(REPO / "bench/ablation/results"))
    ap.add_argument("--report-only", action="store_true", help="rebuild the plot and table from earlier runs")
    ap.add_argument("extra", nargs="*", help="key=value overrides applied to every arm")
    args = ap.parse_args()
    results = {name: run_arm(name, ov, args) for name, ov in ARMS.items()}

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_r, ax_e) = plt.subplots(1, 2, figsize=(11, 4))
    for name, rows in results.items():
        ax_r.plot([r["step"] for r in rows], [r["reward/mean"] for r in rows], marker=".", label=name)
        ev = [r for r in rows if "eval/accuracy" in r]
        ax_e.plot([r["step"] for r in ev], [r["eval/accuracy"] for r in ev], marker="o", label=name)
    for ax, title in ((ax_r, "training reward (mean)"), (ax_e, "held-out greedy accuracy")):
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    out = Path(args.out)
    fig.savefig(out / "curves.png", dpi=100)

    lines = ["| arm | reward first 3 steps | reward last 3 steps | eval accuracy (first -> last) | kept fraction |",
             "| --- | --- | --- | --- | --- |"]
    for name, rows in results.items():
        ev = [r["eval/accuracy"] for r in rows if "eval/accuracy" in r]
        mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
        lines.append(f"| {name} | {mean([r['reward/mean'] for r in rows[:3]]):.3f} | "
                     f"{mean([r['reward/mean'] for r in rows[-3:]]):.3f} | {ev[0]:.3f} -> {ev[-1]:.3f} | "
                     f"{mean([r['mask/kept_fraction'] for r in rows]):.2f} |")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
