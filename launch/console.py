"""A quiet, readable console for a run.

By default the terminal shows forkrl's own lines (start summary, one line per step, evaluations,
the end summary, errors) and a progress bar with an ETA. Everything else the driver process and
its Ray workers write (library warnings, vLLM and Ray logs, forwarded worker output, C++ logs) goes
to `runs/NAME/train.log`, together with forkrl's lines, at INFO. `--verbose` shows it all on the
terminal as well.

It works at the file-descriptor level: fds 1 and 2 point at train.log while the run goes, and the
console writes to a copy of the terminal's fd, so output that bypasses Python's sys.stderr (C
extensions, Ray's core) lands in the log too.
"""
from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

FORMAT = "%(asctime)s %(name)s: %(message)s"


class _TqdmHandler(logging.Handler):
    """Writes above the progress bar, so bar and lines do not tear each other."""

    def __init__(self, stream):
        super().__init__()
        self.stream = stream

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm import tqdm

        tqdm.write(self.format(record), file=self.stream)


class Console:
    """Context manager around a run; `term` is the terminal stream for progress bars."""

    def __init__(self, log_path: Path, verbose: bool):
        self.log_path, self.verbose = log_path, verbose
        self.term = sys.stderr
        self._saved: list[int] = []
        self._handlers: list[logging.Handler] = []

    def __enter__(self) -> "Console":
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        root = logging.getLogger()
        root.setLevel(logging.INFO)
        log_file = logging.FileHandler(self.log_path)
        log_file.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
        if self.verbose:  # everything on the terminal as before, and a copy of the logging in train.log
            self._add(root, log_file)
            return self
        sys.stdout.flush()
        sys.stderr.flush()
        self._saved = [os.dup(1), os.dup(2)]
        self.term = os.fdopen(os.dup(2), "w", buffering=1)
        fd = os.open(self.log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        os.dup2(fd, 1)
        os.dup2(fd, 2)
        os.close(fd)
        self._previous_handlers = root.handlers[:]
        for h in self._previous_handlers:  # they wrote to the terminal's stream; now fd 2 is the log
            root.removeHandler(h)
        self._add(root, log_file)
        console = _TqdmHandler(self.term)
        console.setFormatter(logging.Formatter(FORMAT, "%H:%M:%S"))
        console.addFilter(lambda r: r.name == "forkrl" or r.levelno >= logging.ERROR)
        self._add(root, console)
        return self

    def _add(self, logger: logging.Logger, handler: logging.Handler) -> None:
        logger.addHandler(handler)
        self._handlers.append(handler)

    def __exit__(self, *exc) -> None:
        root = logging.getLogger()
        for h in self._handlers:
            root.removeHandler(h)
            h.close()
        if not self._saved:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self._saved[0], 1)
        os.dup2(self._saved[1], 2)
        for fd in self._saved:
            os.close(fd)
        self.term.close()
        for h in self._previous_handlers:
            root.addHandler(h)

    def progress(self, total: int, initial: int = 0):
        """A progress bar over the run's steps, with an ETA, on a terminal (elsewhere, as in a log
        file or CI, the step lines carry the ETA)."""
        from tqdm import tqdm

        return tqdm(total=total, initial=initial, desc="train", unit="step", file=self.term, dynamic_ncols=True,
                    disable=not self.term.isatty())


def duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


def log_step(steps: int, step: int, m: dict, sample: tuple[float, str, str], eta_s: float) -> None:
    """The step's console line; every 5th step also one sampled (reward, answer, response)."""
    logger = logging.getLogger("forkrl")
    logger.info(
        "step %d/%d | reward %.3f | accuracy %.3f | kept %.2f (tau %.3f) | entropy %.3f | stale %d | gen %.1fs "
        "reward %.1fs learn %.1fs sync %.1fs | step %.1fs | learner peak %.1f GB (%.1f shared) | eta %s", step, steps,
        m["reward/mean"],
        m["reward/accuracy"],
        m["mask/kept_fraction"], m["mask/threshold"], m["entropy/mean"], m["staleness/max"], m["timing/generate_s"],
        m["timing/reward_s"], m["timing/learn_s"], m["timing/weight_sync_s"], m["timing/step_s"],
        # shared: the object-store pages inside that peak (memory/learner_shared_gb)
        m["memory/learner_peak_gb"], m["memory/learner_shared_gb"], duration(eta_s))
    if step == 1 or step % 5 == 0 or step == steps:
        reward, answer, response = sample
        logger.info("sample (reward %.2f, answer %s): %r", reward, answer, response[:600])


def summary_line(first: dict, last: dict) -> str:
    """The run's result in one line, e.g. 'held-out accuracy 0.31 -> 0.58 (+27 points, 128 prompts)'."""
    a, b = first["eval/accuracy"], last["eval/accuracy"]
    line = f"held-out accuracy {a:.2f} -> {b:.2f} ({100 * (b - a):+.0f} points, {last['eval/prompts']} prompts)"
    avg = next((k for k in last if k.startswith("eval/avg@")), None)
    if avg and avg in first:
        line += f"; {avg[5:]} {first[avg]:.2f} -> {last[avg]:.2f}"
    return line
