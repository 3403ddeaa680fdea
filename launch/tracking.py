"""Run directory (config.yaml, metrics.jsonl, plot) and wandb, written by the driver only."""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import yaml

logger = logging.getLogger(__name__)


def wandb_mode(setting: str) -> str:
    """'auto' means online when an API key is configured, else offline (never a login prompt)."""
    if setting != "auto":
        return setting
    return "online" if os.environ.get("WANDB_API_KEY") else "offline"


class RunTracker:
    def __init__(self, run_dir: Path, config: dict, name: str, project: str, mode: str):
        self.run_dir = run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        self._metrics = open(run_dir / "metrics.jsonl", "w")
        self.history: list[dict] = []
        self.wandb = None
        mode = wandb_mode(mode)
        if mode != "disabled":
            import wandb

            self.wandb = wandb.init(project=project, name=name, config=config, dir=str(run_dir), mode=mode)

    def log(self, metrics: dict) -> None:
        clean = {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in metrics.items()}
        self._metrics.write(json.dumps(clean) + "\n")
        self._metrics.flush()  # a crash later still leaves every finished step on disk
        self.history.append(metrics)
        if self.wandb is not None:
            self.wandb.log({k: v for k, v in metrics.items() if v is not None}, step=metrics["step"])

    def plot(self) -> Path | None:
        if not self.history:
            return None
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        steps = [m["step"] for m in self.history]
        keys = ["reward/mean", "entropy/mean", "mask/threshold"]
        if any("eval/accuracy" in m for m in self.history):
            keys.insert(1, "eval/accuracy")
        fig, axes = plt.subplots(1, len(keys), figsize=(4.3 * len(keys), 3.6))
        for ax, key in zip(axes, keys):
            pts = [(m["step"], m[key]) for m in self.history if isinstance(m.get(key), (int, float))]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".")
            ax.set_title(key)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        if "eval/accuracy" in keys:  # held-out greedy and sampled accuracy share one axis
            ev_ax = axes[keys.index("eval/accuracy")]
            avg = next((k for m in self.history for k in m if k.startswith("eval/avg@")), None)
            if avg:
                pts = [(m["step"], m[avg]) for m in self.history if isinstance(m.get(avg), (int, float))]
                ev_ax.plot([p[0] for p in pts], [p[1] for p in pts], marker=".")
            ev_ax.legend(["greedy"] + ([avg[5:] + " (sampled)"] if avg else []))
            ev_ax.set_title("held-out accuracy")
        ent_ax = axes[keys.index("entropy/mean")]
        ent_ax.plot(steps, [m.get("entropy/kept_mean", math.nan) for m in self.history], marker=".")
        ent_ax.legend(["all response tokens", "kept (gradient) tokens"])
        fig.tight_layout()
        path = self.run_dir / "curves.png"
        fig.savefig(path, dpi=100)
        plt.close(fig)
        return path

    def close(self) -> None:
        self._metrics.close()
        self.plot()
        if self.wandb is not None:
            self.wandb.finish()
