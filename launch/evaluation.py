"""Scoring a policy on held-out prompts through the generation and reward actors: the evaluations
inside a training run and `forkrl eval` use this same code."""
from __future__ import annotations

from collections.abc import Callable

from launch.groups import ActorGroups
from learner.passk import mean_pass_at_k


def eval_max_tokens(cfg) -> int:
    """Evaluation response limit: eval.max_new_tokens, else the training one."""
    return cfg.eval.max_new_tokens or cfg.generation.max_new_tokens


def evaluate(actors: ActorGroups, prompts, samples: int, max_tokens: int, seed: int = 0, chunk: int = 0,
             progress: Callable[[int], None] | None = None) -> dict:
    """Greedy accuracy with the current weights; with samples = n > 1 also n sampled responses
    per prompt at the generation temperature: avg@n (mean accuracy) and pass@k, k = 1, 2, 4 .. n.
    `chunk` > 0 scores that many prompts at a time and calls `progress(prompts done)` after each."""
    step = chunk or len(prompts)
    greedy, calls, sampled, versions = [], [], [], []
    for c, lo in enumerate(range(0, len(prompts), step)):
        part = prompts[lo:lo + step]
        v = actors.verify_eval(part, 1, max_tokens, seed + c)
        greedy += v.correct
        calls += v.tool_calls
        versions.append(v.policy_version)
        if samples > 1:
            sampled += actors.verify_eval(part, samples, max_tokens, seed + c).correct
        if progress:
            progress(len(part))
    out = {"eval/accuracy": sum(greedy) / len(greedy), "eval/policy_version": min(versions), "eval/prompts": len(prompts)}
    if calls:  # multi-turn: how often the greedy answers used the tool, and how many right ones did
        used = [n > 0 for n in calls]
        out["eval/tool_call_rate"] = sum(used) / len(used)
        out["eval/tool_share_of_correct"] = sum(u and g for u, g in zip(used, greedy)) / max(sum(greedy), 1)
    if samples > 1:
        per_prompt = [sum(sampled[i:i + samples]) for i in range(0, len(sampled), samples)]
        out[f"eval/avg@{samples}"] = sum(sampled) / len(sampled)
        out.update({f"eval/pass@{kk}": v for kk, v in mean_pass_at_k(per_prompt, samples).items()})
    return out
