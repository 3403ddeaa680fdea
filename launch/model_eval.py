"""`forkrl eval`: score a model (base or trained checkpoint) on a dataset with the configured reward,
through the same generation actors and verifier as training.

Nothing here imports Ray at module level (see launch/network.py).
"""
from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from launch.atomic import write_atomic
from launch.config import TrainConfig
from launch.network import prepare_local_ray

logger = logging.getLogger("forkrl")


def table(rows: dict[str, dict], samples: int) -> str:
    """A small fixed-width table: one line per model (and the difference), one column per figure."""
    keys = ["eval/accuracy"] + ([f"eval/avg@{samples}"] + [f"eval/pass@{k}" for k in _ks(samples)] if samples > 1 else [])
    heads = ["greedy"] + [k.split("/")[1] for k in keys[1:]]
    width = max(12, *(len(name) for name in rows))
    lines = [f"{'model':<{width}}  " + "  ".join(f"{h:>7}" for h in heads)]
    for name, m in rows.items():
        sign = "+" if name == "difference" else ""
        lines.append(f"{name:<{width}}  " + "  ".join(f"{m[k]:>{sign}7.3f}" for k in keys))
    return "\n".join(lines)


def _ks(n: int) -> list[int]:
    ks, k = [], 1
    while k < n:
        ks.append(k)
        k *= 2
    return ks + [n]


def prompts_per_model(cfg, models: dict[str, str], rows: list[dict], source: str) -> dict[str, list]:
    """Each model's prompts through its own tokenizer and chat template (the same rows, in the
    same order): two models' ids for one text need not agree."""
    from transformers import AutoTokenizer

    from launch.data import tokenize
    from launch.models import check_chat_wrap

    out = {}
    for name, path in models.items():
        tokenizer = AutoTokenizer.from_pretrained(path)
        check_chat_wrap(cfg, tokenizer)
        out[name] = tokenize(rows, tokenizer, cfg.model.chat_template, cfg.data.instruction, cfg.data.max_prompt_tokens,
                             source, cfg.data.overlong_prompts)
    # Rows one tokenizer found too long are left out for every model: both score the same prompts.
    common = set.intersection(*({p.uid for p in prompts} for prompts in out.values()))
    if not common:
        from launch.data import DataError

        raise DataError(f"{source}: no row fits data.max_prompt_tokens={cfg.data.max_prompt_tokens} for every model")
    return {name: [p for p in prompts if p.uid in common] for name, prompts in out.items()}


def run_eval(cfg: TrainConfig, model: str, data: str, samples: int, out: Path | None, compare: str | None) -> dict:
    """Evaluate `model` (and `compare`, on the same prompts); print the table, write JSON to `out`."""
    prepare_local_ray(cfg)
    import ray
    from tqdm import tqdm
    from launch.data import load_rows
    from launch.evaluation import eval_max_tokens, evaluate
    from launch.models import resolve_model_path
    from launch.network import start_ray
    from launch.groups import ActorGroups
    from launch.placement import check_resources, launch_generators, launch_rewards
    from rewards.registry import check_ground_truths, check_reward_config, dry_call_reward
    from envs.registry import check_env

    check_reward_config(cfg.reward)
    check_env(cfg.env.name, cfg.env.isolation)
    models = {model: str(resolve_model_path(model))}
    if compare:
        models[compare] = str(resolve_model_path(compare))
    rows = load_rows([data], cfg.data.prompt_key, cfg.data.answer_key, "--data")
    prompts_of = prompts_per_model(cfg, models, rows, data)
    prompts = prompts_of[model]
    check_ground_truths(cfg.reward, prompts, data)
    dry_call_reward(cfg.reward, prompts[0], f"row 1 of {data}")
    max_tokens = eval_max_tokens(cfg)

    start_ray(cfg, log_to_driver=False)
    check_resources(cfg)
    results, t0 = {}, time.perf_counter()
    scorers = launch_rewards(cfg)
    for name, path in models.items():
        gens = launch_generators(cfg, path)
        with tqdm(total=len(prompts), desc=f"eval {Path(name).name}", unit="prompt") as bar:
            results[name] = evaluate(ActorGroups(cfg, gens, scorers, []), prompts_of[name], samples, max_tokens,
                                     cfg.seed, chunk=32, progress=bar.update)
        for g in gens:  # free the engine before the next model's
            ray.kill(g)
    if compare:
        results["difference"] = {k: results[model][k] - results[compare][k] for k in results[model]
                                 if k.startswith(("eval/accuracy", "eval/avg@", "eval/pass@"))}
    print(table(results, samples))
    report = {"data": data, "prompts": len(prompts), "samples": samples, "temperature": cfg.generation.temperature,
              "max_new_tokens": max_tokens, "reward": cfg.reward.fn, "seconds": round(time.perf_counter() - t0, 1),
              "models": {k: v for k, v in results.items() if k != "difference"}}
    if compare:
        report["difference"] = results["difference"]
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, json.dumps(report, indent=2))
    return report
