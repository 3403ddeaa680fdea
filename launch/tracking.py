"""Run directory (config.yaml, metrics.jsonl, plot) and wandb, written by the driver only."""
from __future__ import annotations

import json
import logging
import math
import os
from pathlib import Path

import yaml

from launch.atomic import write_atomic

logger = logging.getLogger("forkrl")


def wandb_mode(setting: str) -> str:
    """'auto' means online when wandb has credentials (WANDB_API_KEY, or the netrc entry that
    `wandb login` writes for WANDB_BASE_URL's host), else offline, saying why (never a prompt)."""
    if setting != "auto":
        return setting
    if wandb_credentials():
        return "online"
    logger.warning("wandb: offline (no WANDB_API_KEY and no `wandb login` entry in %s); the run syncs later with "
                   "`wandb sync`", netrc_path())
    return "offline"


def netrc_path() -> Path:
    return Path(os.environ.get("NETRC") or Path.home() / ".netrc")


def wandb_credentials() -> bool:
    import netrc
    from urllib.parse import urlsplit

    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlsplit(os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai")).hostname
    try:
        entry = netrc.netrc(str(netrc_path())).authenticators(host)
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return bool(entry and entry[2])


class RunExists(ValueError):
    """A new run was pointed at a directory that holds one; nothing in it is touched."""


class RunLocked(RunExists):
    """Another driver is writing the run directory; nothing in it is touched."""


class RunLock:
    """Held for as long as a driver writes a run directory: an exclusive flock on run_dir/.lock, so
    a second driver (a resume started twice, a new run under the same name) is refused with one line
    instead of interleaving two runs' files. The kernel drops the lock when the holder dies, so a
    crashed run never leaves it stuck."""

    def __init__(self, run_dir: Path):
        self.path = run_dir / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> "RunLock":
        import fcntl
        import socket

        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 200).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise RunLocked(f"{self.path.parent} is being written by another forkrl driver ({holder}); wait for it "
                            "to finish or stop it, then resume") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}".encode())
        self.fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self.fd is not None:
            os.close(self.fd)  # releases the flock
            self.fd = None


# Files whose presence means a run directory already holds a run.
RUN_MARKERS = ("metrics.jsonl", "config.yaml", "state")


def check_fresh(run_dir: Path) -> None:
    """Refuse to start a new run in a directory that holds one (its metrics would be lost)."""
    found = [m for m in RUN_MARKERS if (run_dir / m).exists()]
    if found:
        raise RunExists(f"{run_dir} already holds a run ({', '.join(found)}): continue it with "
                        f"`forkrl train --resume {run_dir}`, or choose another tracking.name")


def read_metrics_rows(path: Path) -> list[dict]:
    """metrics.jsonl's rows, without a torn tail (see RunTracker._truncate)."""
    from launch.errors import ConfigError

    lines = path.read_bytes().split(b"\n")
    rows: list[dict] = []
    for i, line in enumerate(lines):
        if not line.strip(b"\0 \t\r"):
            continue
        try:
            rows.append(json.loads(line))
        except ValueError:
            rest = [x for x in lines[i + 1:] if x.strip(b"\0 \t\r")]
            if rest:
                raise ConfigError(f"--resume: {path} line {i + 1} is not JSON and {len(rest)} line(s) follow it: "
                                  "the file was changed by hand, not torn by a crash") from None
            logger.warning("%s: line %d is torn (%d bytes, a crash or a full disk); cut back to the %d complete "
                           "row(s) before it", path, i + 1, len(line), len(rows))
            break
    return rows


class RunTracker:
    """Writes config.yaml, metrics.jsonl, curves.png and rollouts/ in the run directory, and logs
    to wandb. With `resume_step`, continues a run: metrics.jsonl keeps the steps up to the
    checkpoint (later ones are trained again) and is appended to; wandb continues `wandb_id`."""

    def __init__(self, run_dir: Path, config: dict, name: str, project: str, mode: str, *,
                 log_rollouts: bool = True, completions_every: int = 0, completions_rows: int = 64,
                 resume_step: int | None = None, wandb_id: str | None = None):
        self.run_dir, self.log_rollouts = run_dir, log_rollouts
        self.completions_every, self.completions_rows = completions_every, completions_rows
        self.history: list[dict] = []
        if resume_step is None:
            check_fresh(run_dir)
        else:
            self.history = self._truncate(run_dir / "metrics.jsonl", resume_step)
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
        self._metrics = open(run_dir / "metrics.jsonl", "a")
        self.wandb = None
        mode = wandb_mode(mode)
        if mode != "disabled":
            import wandb

            self.wandb = wandb.init(project=project, name=name, config=config, dir=str(run_dir), mode=mode,
                                    id=wandb_id, resume="allow" if wandb_id else None)
            if mode == "online" and getattr(self.wandb, "url", None):
                logger.info("wandb: %s", self.wandb.url)

    @property
    def wandb_id(self) -> str | None:
        return self.wandb.id if self.wandb is not None else None

    @staticmethod
    def _truncate(path: Path, last_step: int) -> list[dict]:
        """Keep the rows up to `last_step` (atomically); return them. A torn tail (a disk that
        filled up mid-line, or the NUL bytes a crash can leave) is cut back to the last complete
        line, with a warning; a bad line with good ones after it is not a tail and is refused."""
        rows = read_metrics_rows(path) if path.is_file() else []
        rows = [r for r in rows if r["step"] <= last_step]
        write_atomic(path, "".join(json.dumps(r) + "\n" for r in rows))
        return rows

    def records_path(self, step: int) -> str | None:
        """rollouts/step_N.jsonl: every response trained at this step, written whole by
        launch/records.py; None when tracking.log_rollouts is off."""
        return str(self.run_dir / "rollouts" / f"step_{step}.jsonl") if self.log_rollouts else None

    def completions_due(self, step: int) -> int:
        """How many of this step's records the wandb completions table wants (0: none this step)."""
        due = self.wandb is not None and self.completions_every and step % self.completions_every == 0
        return self.completions_rows if due else 0

    def log_completions(self, step: int, records: list[dict]) -> None:
        """A wandb table of the step's first trained responses (as TRL's log_completions)."""
        import wandb

        columns = ["step", "prompt", "response", "answer", "reward", "status"]
        self.wandb.log({"completions": wandb.Table(columns=columns, data=[[r[c] for c in columns] for r in records])},
                       step=step)

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
