"""Scoring a policy on held-out prompts through the generation and reward actors: the evaluations
inside a training run and `forkrl eval` use this same code."""
from __future__ import annotations

from collections.abc import Callable

import ray

from launch.placement import Actors
from launch.rollouts import contiguous_slices, sample_seed
from learner.passk import mean_pass_at_k


def eval_max_tokens(cfg) -> int:
    """Evaluation response limit: eval.max_new_tokens, else the training one."""
    return cfg.eval.max_new_tokens or cfg.generation.max_new_tokens


def eval_correct(actors: Actors, prompts, samples: int, max_tokens: int, seed: int) -> tuple[list[bool], int]:
    """`samples` responses per prompt (greedy when 1), verified: (correct flags grouped by prompt,
    the oldest policy version that answered)."""
    k = len(actors.generators)
    outs = ray.get([gen.evaluate.remote(prompts[j::k], samples, max_tokens, sample_seed(seed, -1, j))
                    for j, gen in enumerate(actors.generators) if prompts[j::k]])
    texts, answers = [], []
    for j, (t, _) in enumerate(outs):
        texts += t
        answers += [p.answer for p in prompts[j::k] for _ in range(samples)]
    scored = ray.get([rw.score.remote(texts[part], answers[part])
                      for rw, part in zip(actors.rewards, contiguous_slices(len(texts), len(actors.rewards)))])
    results = [r for res, _ in scored for r in res]
    # outs[j] holds generator j's prompts: put the flags back in prompt order
    flags = [r.status == "correct" for r in results]
    by_prompt, i = [None] * len(prompts), 0
    for j in range(min(k, len(prompts))):
        for idx in range(j, len(prompts), k):
            by_prompt[idx] = flags[i:i + samples]
            i += samples
    return [f for group in by_prompt for f in group], min(v for _, v in outs)


def evaluate(actors: Actors, prompts, samples: int, max_tokens: int, seed: int = 0, chunk: int = 0,
             progress: Callable[[int], None] | None = None) -> dict:
    """Greedy accuracy with the current weights; with samples = n > 1 also n sampled responses
    per prompt at the generation temperature: avg@n (mean accuracy) and pass@k, k = 1, 2, 4 .. n.
    `chunk` > 0 scores that many prompts at a time and calls `progress(prompts done)` after each."""
    step = chunk or len(prompts)
    greedy, sampled, versions = [], [], []
    for c, lo in enumerate(range(0, len(prompts), step)):
        part = prompts[lo:lo + step]
        flags, version = eval_correct(actors, part, 1, max_tokens, seed + c)
        greedy += flags
        versions.append(version)
        if samples > 1:
            sampled += eval_correct(actors, part, samples, max_tokens, seed + c)[0]
        if progress:
            progress(len(part))
    out = {"eval/accuracy": sum(greedy) / len(greedy), "eval/policy_version": min(versions), "eval/prompts": len(prompts)}
    if samples > 1:
        per_prompt = [sum(sampled[i:i + samples]) for i in range(0, len(sampled), samples)]
        out[f"eval/avg@{samples}"] = sum(sampled) / len(sampled)
        out.update({f"eval/pass@{kk}": v for kk, v in mean_pass_at_k(per_prompt, samples).items()})
    return out
