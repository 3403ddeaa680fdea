"""`forkrl` command line: train, prepare-model, make-tiny-model.

Bad input (config, data, model path, reward) ends with one line naming the problem, exit 2.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from launch.config import ConfigError, load_config


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="forkrl", description="RLVR with entropy-percentile (forking-token) masking")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a policy (see configs/*.yaml)")
    t.add_argument("--config", help="YAML config file (defaults apply to anything it leaves out)")
    t.add_argument("--address", help="Ray address, e.g. 'auto' to join a running cluster (sets address=)")
    t.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its latest checkpoint (overrides may change steps, eval.*, ...)")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. learner.mask.rho=0.5")
    m = sub.add_parser("prepare-model", help="convert the packaged SmolLM2 GGUF to a HF folder (cached)")
    m.add_argument("--cache-dir", help="where to write it (default $FORKRL_CACHE or ~/.cache/forkrl)")
    tiny = sub.add_parser("make-tiny-model", help="write a tiny random Llama + word tokenizer, for debugging")
    tiny.add_argument("out", help="output folder")
    return p


def main(argv: list[str] | None = None, default_command: str | None = None) -> int:
    args_list = list(sys.argv[1:] if argv is None else argv)
    if default_command and (not args_list or args_list[0] not in ("train", "prepare-model", "make-tiny-model")):
        args_list = [default_command, *args_list]
    args = _parser().parse_args(args_list)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from launch.data import DataError
    from launch.errors import ActorFailures, NetworkError, NonFiniteSteps, ResourceError, RunStopped
    from launch.rollouts import RewardFailure

    try:
        if args.command == "train":
            from launch.train import run

            overrides = list(args.overrides) + ([f"address={args.address}"] if args.address else [])
            if args.resume:
                if args.config:
                    raise ConfigError("--resume takes the run's own config.yaml; leave out --config")
                from launch.resume import resume_config

                run(resume_config(Path(args.resume), overrides), resume=Path(args.resume))
            else:
                run(load_config(args.config, overrides))
        elif args.command == "prepare-model":
            from launch.models import default_cache_dir, prepare_default_model

            print(prepare_default_model(Path(args.cache_dir) if args.cache_dir else default_cache_dir()))
        else:
            from launch.models import build_tiny_model

            print(build_tiny_model(Path(args.out)))
    except (ConfigError, DataError, ResourceError, NetworkError, FileNotFoundError, ValueError) as e:
        print(f"forkrl: error: {e}", file=sys.stderr)
        return 2
    except (RewardFailure, NonFiniteSteps, RunStopped, ActorFailures) as e:  # the run started and stopped; its files are kept
        print(f"forkrl: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
