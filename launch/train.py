"""`forkrl train` / `python -m launch.train`: the entry to a training run.

Nothing here imports Ray at module level: a local run must set Ray's single-machine switch before
Ray is first imported (see launch/network.py), and only then loads the driver (launch/driver.py).
"""
from __future__ import annotations

from pathlib import Path

from launch.config import TrainConfig
from launch.network import prepare_local_ray


def run(cfg: TrainConfig, resume: Path | None = None, verbose: bool = False) -> Path:
    """Train per `cfg` (continuing the run directory `resume`); returns the run directory.
    `verbose` shows library and Ray worker logs on the console too (they always go to train.log)."""
    prepare_local_ray(cfg)
    from launch.driver import run as drive

    return drive(cfg, resume, verbose)


def main(argv: list[str] | None = None) -> int:
    from launch.cli import main as cli_main

    return cli_main(["train", *(argv or [])]) if argv is not None else cli_main(None, default_command="train")


if __name__ == "__main__":
    raise SystemExit(main())
