"""Mask ablation: top-20% vs full-token vs random-20% vs bottom-80%, equal steps, several seeds.

Usage: python bench/ablation/run.py [--seeds 0 1 2] [--arms top none random bottom]
       [--config configs/demo.yaml] [--out bench/ablation/results] [extra key=value ...]
Add --report-only to rebuild the plot and table from the runs already on disk.

Each (arm, seed) is one `forkrl train` run of the config (sequentially; same data and seed across
arms, so step 1 sees identical rollouts). Every run evaluates its held-out set at step 0 and at
the end, so each arm's figure is a *gain over its own baseline*. Writes `gains.png` (mean +- std
of the held-out gain per arm, with each seed as a dot), `curves.png` (held-out accuracy over steps,
mean over seeds) and `table.md`. Runs whose directory already holds a finished metrics.jsonl are
not rerun, so an interrupted sweep continues where it stopped.
"""
from __future__ import annotations

import argparse
import json
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
ARMS = {
    "top": ("top 20% entropy (the paper)", ["learner.mask.mode=top", "learner.mask.rho=0.2"]),
    "none": ("all tokens", ["learner.mask.mode=none"]),
    "random": ("random 20% (control)", ["learner.mask.mode=random", "learner.mask.rho=0.2"]),
    "bottom": ("bottom 80% entropy (the paper's ablation)", ["learner.mask.mode=bottom", "learner.mask.rho=0.2"]),
}


def read_rows(run_dir: Path) -> list[dict]:
    path = run_dir / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.is_file() else []


def finished(rows: list[dict], steps: int) -> bool:
    return bool(rows) and rows[-1].get("step") == steps and "eval/accuracy" in rows[-1]


def run_one(arm: str, seed: int, args) -> list[dict]:
    run_dir = Path(args.out) / f"{arm}-seed{seed}"
    rows = read_rows(run_dir)
    if args.report_only or finished(rows, args.steps):
        return rows
    cmd = [sys.executable, "-m", "launch.cli", "train", "--config", str(REPO / args.config), f"seed={seed}",
           f"tracking.run_dir={run_dir}", f"tracking.name=ablation-{arm}-seed{seed}", "tracking.wandb_mode=offline",
           f"steps={args.steps}", *ARMS[arm][1], *args.extra]
    print(f"[{time.strftime('%H:%M:%S')}] running {arm} seed {seed}: {' '.join(cmd[2:])}", flush=True)
    for attempt in (1, 2):  # a run that dies (an actor killed by a memory spike elsewhere) gets a second try
        if run_dir.exists():  # an unfinished earlier attempt: start it again from nothing
            import shutil

            shutil.rmtree(run_dir)
        if subprocess.run(cmd, cwd=REPO).returncode == 0:
            break
        print(f"[{time.strftime('%H:%M:%S')}] {arm} seed {seed} failed (attempt {attempt})", flush=True)
    return read_rows(run_dir)  # a run that failed twice is left unfinished: the report leaves it out


def gain(rows: list[dict]) -> float:
    ev = [r["eval/accuracy"] for r in rows if "eval/accuracy" in r]
    return ev[-1] - ev[0]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--steps", type=int, default=None, help="default: the config's steps")
    ap.add_argument("--out", default=str(REPO / "bench/ablation/results"))
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument("extra", nargs="*", help="key=value overrides applied to every run")
    args = ap.parse_args()
    if args.steps is None:
        sys.path.insert(0, str(REPO))
        from launch.config_load import load_config

        args.steps = load_config(REPO / args.config, args.extra).steps
    t0 = time.perf_counter()
    # Seed-major order: an interrupted sweep leaves every arm with the same seeds finished.
    runs = {arm: {} for arm in args.arms}
    for s in args.seeds:
        for arm in args.arms:
            runs[arm][s] = run_one(arm, s, args)
    runs = {arm: {s: rows for s, rows in by_seed.items() if finished(rows, args.steps)} for arm, by_seed in runs.items()}
    report(runs, Path(args.out), time.perf_counter() - t0)


def report(runs: dict, out: Path, seconds: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (ax_g, ax_c) = plt.subplots(1, 2, figsize=(12, 4.2))
    lines = ["| arm | seeds | step-0 accuracy | final accuracy | gain (points), mean +- std | gain per seed |",
             "| --- | --- | --- | --- | --- | --- |"]
    for i, (arm, by_seed) in enumerate(runs.items()):
        if not by_seed:
            continue
        gains = [100 * gain(rows) for rows in by_seed.values()]
        sd = statistics.stdev(gains) if len(gains) > 1 else 0.0
        ax_g.bar(i, statistics.mean(gains), yerr=sd, capsize=6, alpha=0.6)
        ax_g.scatter([i] * len(gains), gains, color="k", zorder=3, s=12)
        first = [[r["eval/accuracy"] for r in rows if "eval/accuracy" in r] for rows in by_seed.values()]
        steps = [r["step"] for r in next(iter(by_seed.values())) if "eval/accuracy" in r]
        mean_curve = [statistics.mean(ev[j] for ev in first) for j in range(len(steps))]
        ax_c.plot(steps, mean_curve, marker="o", label=ARMS[arm][0])
        lines.append(f"| {ARMS[arm][0]} | {len(gains)} | {statistics.mean(ev[0] for ev in first):.3f} | "
                     f"{statistics.mean(ev[-1] for ev in first):.3f} | {statistics.mean(gains):+.1f} +- {sd:.1f} | "
                     f"{', '.join(f'{g:+.1f}' for g in gains)} |")
    ax_g.set_xticks(range(len(runs)), [ARMS[a][0].split(" (")[0] for a in runs], fontsize=8)
    ax_g.set_ylabel("held-out greedy accuracy gain (points)")
    ax_g.axhline(0, color="k", lw=0.8)
    ax_g.set_title("gain over step 0, mean +- std over seeds")
    ax_c.set_title("held-out greedy accuracy (mean over seeds)")
    ax_c.set_xlabel("step")
    ax_c.legend(fontsize=8)
    for ax in (ax_g, ax_c):
        ax.grid(alpha=0.3)
    fig.tight_layout()
    out.mkdir(parents=True, exist_ok=True)
    fig.savefig(out / "gains.png", dpi=100)
    plot_entropy(runs, out / "entropy.png")
    lines += ["", *confidence_lines({arm: [100 * gain(r) for r in by_seed.values()] for arm, by_seed in runs.items()
                                      if by_seed})]
    lines.append(f"\nWall time of this invocation: {seconds / 60:.1f} min.")
    (out / "table.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


def bootstrap(values: list[float], other: list[float] | None = None, n: int = 20_000, seed: int = 0):
    """95% percentile-bootstrap interval of the mean of `values` (or of mean(values) - mean(other),
    each arm resampled on its own: the arms' seeds are independent runs)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    a = rng.choice(np.asarray(values), size=(n, len(values))).mean(axis=1)
    if other is not None:
        a = a - rng.choice(np.asarray(other), size=(n, len(other))).mean(axis=1)
    return float(np.percentile(a, 2.5)), float(np.percentile(a, 97.5))


PAIRS = [("top", "none"), ("none", "bottom"), ("top", "random"), ("top", "bottom")]


def confidence_lines(gains: dict[str, list[float]]) -> list[str]:
    """Each arm's mean gain with its 95% bootstrap interval, and the paper's orderings as
    differences of means with theirs: an ordering holds at that confidence when its interval
    lies above 0."""
    lines = ["| arm | seeds | mean gain (points) | 95% CI (bootstrap) |", "| --- | --- | --- | --- |"]
    for arm, g in gains.items():
        lo, hi = bootstrap(g) if len(g) > 1 else (math.nan, math.nan)
        lines.append(f"| {ARMS[arm][0]} | {len(g)} | {statistics.mean(g):+.1f} | [{lo:+.1f}, {hi:+.1f}] |")
    lines += ["", "| ordering | difference of means (points) | 95% CI (bootstrap) | holds at 95%? |",
              "| --- | --- | --- | --- |"]
    for a, b in PAIRS:
        if len(gains.get(a, ())) > 1 and len(gains.get(b, ())) > 1:
            lo, hi = bootstrap(gains[a], gains[b])
            d = statistics.mean(gains[a]) - statistics.mean(gains[b])
            verdict = "yes" if lo > 0 else ("no: reversed" if hi < 0 else "not shown (CI spans 0)")
            lines.append(f"| {a} > {b} | {d:+.1f} | [{lo:+.1f}, {hi:+.1f}] | {verdict} |")
    return lines


def plot_entropy(runs: dict, path: Path) -> None:
    """Per arm, the mean entropy of the tokens that got gradient and of those masked out, step by
    step (mean over seeds): the paper's picture of where RLVR moves high-entropy tokens."""
    import matplotlib.pyplot as plt

    arms = [a for a, by_seed in runs.items() if by_seed]
    if not arms:
        return
    fig, axes = plt.subplots(1, len(arms), figsize=(4 * len(arms), 3.4), sharey=True, squeeze=False)
    for ax, arm in zip(axes[0], arms):
        for key, label, color in (("entropy/kept_mean", "kept (trained)", "C0"), ("entropy/dropped_mean", "dropped", "C1"),
                                  ("entropy/mean", "all response tokens", "C2")):
            curves = [{r["step"]: r[key] for r in rows if isinstance(r.get(key), (int, float))}
                      for rows in runs[arm].values()]
            steps = sorted(set().union(*curves))
            ys = [statistics.mean(c[s] for c in curves if s in c) for s in steps]
            if steps:
                ax.plot(steps, ys, label=label, lw=1.2, color=color, ls="--" if color == "C2" else "-")
        ax.set_title(ARMS[arm][0], fontsize=9)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].set_ylabel("mean token entropy (nats)")
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


if __name__ == "__main__":
    main()
