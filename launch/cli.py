"""`forkrl` command line (also `python -m launch.cli`): train, eval, config, prepare-model, make-tiny-model.

Bad input (config, data, model path, reward, run directory, cluster) ends with one line naming the
problem, exit 2. A run that started and stopped (reward failures, actor failures, a signal) ends
with one line too, exit 1, its files kept. Anything else is a bug: its traceback is printed, exit 1.

Nothing here imports Ray at module level: a local run must set Ray's single-machine switch before
Ray is first imported (see launch/network.py), and only then loads the driver (launch/driver.py).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from launch.errors import ConfigError

from launch.config import TrainConfig

from launch.config_load import load_config
from launch.network import prepare_local_ray


def train(cfg: TrainConfig, resume: Path | None = None, verbose: bool = False) -> Path:
    """Train per `cfg` (continuing the run directory `resume`); returns the run directory.
    `verbose` shows library and Ray worker logs on the console too (they always go to train.log).
    The entry for programs too: call it before anything imports Ray."""
    prepare_local_ray(cfg)
    from launch.driver import run

    return run(cfg, resume, verbose)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="forkrl", description="RLVR with entropy-percentile (forking-token) masking")
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train a policy (see configs/*.yaml)")
    t.add_argument("--config", help="YAML config file (defaults apply to anything it leaves out)")
    t.add_argument("--address", help="Ray address, e.g. 'auto' to join a running cluster (sets address=)")
    t.add_argument("--verbose", action="store_true",
                   help="show library warnings and Ray worker logs on the console too (always in runs/NAME/train.log)")
    t.add_argument("--resume", metavar="RUN_DIR",
                   help="continue the run in RUN_DIR from its latest checkpoint (overrides may change steps, eval.*, ...)")
    t.add_argument("--print-config", action="store_true",
                   help="print the resolved config (YAML, after --config and overrides) and exit")
    t.add_argument("overrides", nargs="*", help="key=value overrides, e.g. learner.mask.rho=0.5 "
                   "(every key, its type, default and meaning: forkrl config)")
    e = sub.add_parser("eval", help="score a model on a dataset with the configured reward (greedy, avg@n, pass@k)")
    e.add_argument("--model", required=True, help="HF model folder (a run's checkpoints/step_N) or the packaged default")
    e.add_argument("--data", required=True, help="jsonl / json / parquet / save_to_disk folder (data.prompt_key / answer_key)")
    e.add_argument("--samples", type=int, default=1, help="n sampled responses per prompt for avg@n and pass@k (default 1: greedy only)")
    e.add_argument("--temperature", type=float, help="sampling temperature (default generation.temperature)")
    e.add_argument("--config", help="YAML config whose data, reward and generation settings apply")
    e.add_argument("--compare", metavar="BASE_PATH", help="also score this model on the same prompts and print the difference")
    e.add_argument("--out", help="write the figures as JSON here")
    e.add_argument("overrides", nargs="*", help="key=value overrides, e.g. eval.max_new_tokens=128")
    c = sub.add_parser("config", help="list every config key with its type, default and meaning")
    c.add_argument("prefix", nargs="?", default="", help="only keys starting with this, e.g. learner.lora")
    m = sub.add_parser("prepare-model", help="convert the packaged SmolLM2 GGUF to a HF folder (cached)")
    m.add_argument("--cache-dir", help="where to write it (default $FORKRL_CACHE or ~/.cache/forkrl)")
    tiny = sub.add_parser("make-tiny-model", help="write a tiny random Llama + word tokenizer, for debugging")
    tiny.add_argument("out", help="output folder")
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(list(sys.argv[1:] if argv is None else argv))
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    from launch.data import DataError
    from launch.errors import ActorFailures, NetworkError, NonFiniteSteps, ResourceError, RewardFailure, RunStopped
    from launch.tracking import RunExists
    from envs.base import EnvSpecError
    from rewards.registry import RewardSpecError
    from rewards.sandbox import IsolationError

    try:
        if args.command == "train":
            overrides = list(args.overrides) + ([f"address={args.address}"] if args.address else [])
            if args.resume:
                if args.config:
                    raise ConfigError("--resume takes the run's own config.yaml; leave out --config")
                from launch.resume import resume_config

                cfg = resume_config(Path(args.resume), overrides)
            else:
                cfg = load_config(args.config, overrides)
            if args.print_config:
                import yaml

                from launch.config_load import to_dict

                print(yaml.safe_dump(to_dict(cfg), sort_keys=False), end="")
            else:
                train(cfg, resume=Path(args.resume) if args.resume else None, verbose=args.verbose)
        elif args.command == "config":
            from launch.config_docs import config_keys

            rows = [r for r in config_keys() if r[0].startswith(args.prefix)]
            if not rows:
                raise ConfigError(f"forkrl config {args.prefix}: no key starts with {args.prefix!r}")
            for key, kind, default, doc in rows:
                print(f"{key} ({kind}, default {default!r})\n    {doc}")
        elif args.command == "eval":
            if args.samples < 1:
                raise ConfigError(f"--samples: must be >= 1, got {args.samples}")
            overrides = [f"model.path={args.model}", *args.overrides]
            if args.temperature is not None:
                overrides.append(f"generation.temperature={args.temperature}")
            from launch.model_eval import run_eval

            run_eval(load_config(args.config, overrides), args.model, args.data, args.samples,
                     Path(args.out) if args.out else None, args.compare)
        elif args.command == "prepare-model":
            from launch.console import Console
            from launch.models import default_cache_dir, prepare_default_model

            cache = Path(args.cache_dir) if args.cache_dir else default_cache_dir()
            # the conversion's progress bars and library warnings (DeepSpeed's accelerator guess,
            # pulled in by transformers) go to a log; the terminal gets forkrl's line and the path
            with Console(cache / "prepare-model.log", verbose=False):
                logging.getLogger("forkrl").info("packaged model: converted once into %s (log: %s)", cache,
                                                 cache / "prepare-model.log")
                path = prepare_default_model(cache)
            print(path)
        else:
            from launch.models import build_tiny_model

            print(build_tiny_model(Path(args.out)))
    except (ConfigError, DataError, RewardSpecError, EnvSpecError, IsolationError, RunExists, ResourceError, NetworkError,
            FileNotFoundError) as e:
        print(f"forkrl: error: {e}", file=sys.stderr)
        return 2
    except (RewardFailure, NonFiniteSteps, RunStopped, ActorFailures) as e:  # the run started and stopped; its files are kept
        print(f"forkrl: error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
