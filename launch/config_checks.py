"""The config tree's cross-field checks: each names the key to change, in one line, before any
work starts (called by TrainConfig.__post_init__)."""
from __future__ import annotations

import re

from launch.data import KINDS
from launch.errors import ConfigError


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def validate(c) -> None:
    """Cross-field checks of a TrainConfig `c`; each names the key to change."""
    g, l, m = c.generation, c.learner, c.learner.mask
    _finite = lambda x: x == x and abs(x) != float("inf")  # noqa: E731  (not NaN, not inf)
    _check(c.steps >= 1, "steps", f"must be >= 1, got {c.steps}")
    _check(bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", c.tracking.name)), "tracking.name",
           f"must be a plain name (letters, digits, '.', '_', '-'; no '/'), got {c.tracking.name!r}")
    _check(g.temperature == g.temperature and g.temperature < float("inf"), "generation.temperature",
           f"must be finite, got {g.temperature}")
    _check(_finite(c.learner.lr), "learner.lr", f"must be finite, got {c.learner.lr}")
    _check(c.learner.grad_clip > 0 and _finite(c.learner.grad_clip), "learner.grad_clip",
           f"must be a finite number > 0, got {c.learner.grad_clip} (at <= 0 clipping would silently turn off)")
    for key, value in (("learner.w_lambda", c.learner.w_lambda), ("learner.weight_decay", c.learner.weight_decay),
                       ("reward.overlong_weight", c.reward.overlong_weight),
                       ("reward.format_weight", c.reward.format_weight)):
        _check(value >= 0 and _finite(value), key, f"must be a finite number >= 0, got {value}")
    _check(_finite(c.reward.timeout_s), "reward.timeout_s", f"must be finite, got {c.reward.timeout_s}")
    _check(c.learner.logprob_chunk >= 1, "learner.logprob_chunk", f"must be >= 1, got {c.learner.logprob_chunk}")
    _check(c.data.num_synthetic >= 1, "data.num_synthetic", f"must be >= 1, got {c.data.num_synthetic}")
    _check(c.learner.micro_batch_size >= 1, "learner.micro_batch_size",
           f"must be >= 1, got {c.learner.micro_batch_size}")
    _check(c.learner.mini_batch_size >= 0, "learner.mini_batch_size", "must be >= 0 (0 = the whole batch)")
    _check(c.prompts_per_step >= 1, "prompts_per_step", f"must be >= 1, got {c.prompts_per_step}")
    _check(c.dynamic_sampling_max_rounds >= 1, "dynamic_sampling_max_rounds", "must be >= 1")
    _check(c.eval.every >= 0 and c.eval.num_prompts >= 1, "eval.every", "eval.every must be >= 0, eval.num_prompts >= 1")
    _check(c.eval.samples >= 1, "eval.samples", f"must be >= 1, got {c.eval.samples}")
    _check(c.tracking.completions_every >= 0, "tracking.completions_every", "must be >= 0 (0 = no completions table)")
    _check(c.tracking.completions_rows >= 1, "tracking.completions_rows", f"must be >= 1, got {c.tracking.completions_rows}")
    _check(c.eval.max_new_tokens >= 0, "eval.max_new_tokens", "must be >= 0 (0 = generation.max_new_tokens)")
    _check(g.max_model_len > c.data.max_prompt_tokens + c.eval.max_new_tokens - 1, "generation.max_model_len",
           f"{g.max_model_len} cannot hold data.max_prompt_tokens + eval.max_new_tokens")
    _check(c.max_staleness >= 0, "max_staleness", f"must be >= 0, got {c.max_staleness}")
    _check(g.group_size >= 2, "generation.group_size", f"needs >= 2 responses for a group baseline, got {g.group_size}")
    _check(g.num_actors >= 1, "generation.num_actors", "must be >= 1")
    _check(g.max_new_tokens >= 1, "generation.max_new_tokens", "must be >= 1")
    _check(g.temperature > 0, "generation.temperature", f"must be > 0, got {g.temperature}")
    _check(g.top_p == 1.0, "generation.top_p", f"must be 1.0, got {g.top_p}: vLLM's log-probs would be renormalised "
           "over the nucleus while the learner scores the full softmax, biasing every importance ratio")
    _check(0 < g.gpu_memory_utilization < 1, "generation.gpu_memory_utilization", "must be in (0, 1)")
    _check(g.max_model_len > c.data.max_prompt_tokens + g.max_new_tokens - 1, "generation.max_model_len",
           f"{g.max_model_len} cannot hold data.max_prompt_tokens + generation.max_new_tokens")
    e = c.env
    _check(e.max_turns >= 1, "env.max_turns", f"must be >= 1, got {e.max_turns}")
    _check(0 < e.tool_timeout_s < float("inf"), "env.tool_timeout_s", f"must be a finite number > 0, got {e.tool_timeout_s}")
    _check(e.max_turn_tokens >= 0, "env.max_turn_tokens", f"must be >= 0 (0 = the budget left), got {e.max_turn_tokens}")
    _check(e.max_output_chars >= 1, "env.max_output_chars", f"must be >= 1, got {e.max_output_chars}")
    _check(e.tool_memory_mb >= 64, "env.tool_memory_mb", f"must be >= 64, got {e.tool_memory_mb}")
    _check(e.tool_workers >= 1, "env.tool_workers", f"must be >= 1, got {e.tool_workers}")
    _check(c.reward.timeout_s > 0, "reward.timeout_s", "must be > 0")
    _check(c.reward.code_test_timeout_s > 0 and c.reward.code_memory_mb >= 64, "reward.code_test_timeout_s",
           "code_test_timeout_s must be > 0 and code_memory_mb >= 64")
    _check(0 <= c.reward.overlong_cache <= g.max_new_tokens, "reward.overlong_cache",
           f"must be in [0, generation.max_new_tokens={g.max_new_tokens}]")
    _check(c.reward.num_actors >= 1 and c.reward.workers_per_actor >= 1, "reward.num_actors", "must be >= 1")
    _check(0 < c.reward.max_error_fraction <= 1, "reward.max_error_fraction", "must be in (0, 1]")
    _check(c.reward.max_error_steps >= 1, "reward.max_error_steps", "must be >= 1")
    _check(1 <= c.data.synthetic_min_operand <= c.data.synthetic_max_operand, "data.synthetic_min_operand",
           f"must be in [1, data.synthetic_max_operand={c.data.synthetic_max_operand}], got {c.data.synthetic_min_operand}")
    bad = [k for k in c.data.synthetic_kinds if k not in KINDS]
    _check(not bad and bool(c.data.synthetic_kinds), "data.synthetic_kinds",
           f"unknown kind(s) {bad}; choose from {', '.join(KINDS)}")
    _check(0 < m.rho <= 1, "learner.mask.rho", f"must be in (0, 1], got {m.rho}")
    _check(not (m.mode == "bottom" and m.rho == 1), "learner.mask.rho",
           "rho=1 with mode=bottom keeps a single token (bottom keeps the lowest 1-rho); use mode=none to train every token")
    _check(not (l.advantage == "w_reinforce" and (c.reward.format_weight or c.reward.overlong_weight
                                                  or c.reward.extra_fns)),
           "learner.advantage", "w_reinforce reads only the verifier's verdict, so reward.format_weight, "
           "reward.overlong_weight and reward.extra_fns would change reward/mean but not what trains; set them to 0 "
           "(or empty) or pick another estimator")
    r = c.reward
    _check(not r.extra_weights or len(r.extra_weights) == len(r.extra_fns), "reward.extra_weights",
           f"has {len(r.extra_weights)} weight(s) for {len(r.extra_fns)} reward.extra_fns (or leave it empty: 1 each)")
    _check(all(_finite(w) for w in r.extra_weights), "reward.extra_weights", f"must be finite, got {r.extra_weights}")
    names = [f.rsplit(":", 1)[-1] for f in [r.fn, *r.extra_fns]]
    _check(len(set(names)) == len(names), "reward.extra_fns",
           f"two rewards share a name ({', '.join(names)}); each one's score is logged as reward/fn/<name>")
    _check(not (m.normalize == "kept" and l.aggregation == "seq_mean_token_sum_norm"), "learner.mask.normalize",
           "'kept' has no meaning with learner.aggregation=seq_mean_token_sum_norm, which divides by a constant length")
    _check(l.dual_clip == 0 or l.dual_clip > 1, "learner.dual_clip", f"must be 0 (off) or > 1, got {l.dual_clip}")
    _check(l.kl_coef >= 0, "learner.kl_coef", "must be >= 0")
    _check(l.is_cap == 0 or l.is_cap >= 1, "learner.is_cap", f"must be 0 (off) or >= 1, got {l.is_cap}")
    _check(l.warmup_steps >= 0, "learner.warmup_steps", "must be >= 0")
    _check(l.num_ranks >= 1, "learner.num_ranks", "must be >= 1")
    _check(l.lr > 0, "learner.lr", "must be > 0")
    _check(l.torch_threads >= 0, "learner.torch_threads", "must be >= 0")
    _check(l.clip_low >= 0 and l.clip_high >= 0, "learner.clip_low", "clip epsilons must be >= 0")
    _check(l.epochs >= 1, "learner.epochs", "must be >= 1")
    _check(l.zero_reduce_bucket_size >= 1, "learner.zero_reduce_bucket_size",
           f"must be >= 1, got {l.zero_reduce_bucket_size}")
    _check(l.single_pass_max_tokens >= 0, "learner.single_pass_max_tokens", "must be >= 0 (0 = always score first)")
    _check(l.zero_persistence_threshold >= 0, "learner.zero_persistence_threshold", "must be >= 0")
    batch = c.prompts_per_step * g.group_size
    mini = l.mini_batch_size or batch
    _check(batch % mini == 0, "learner.mini_batch_size", f"{mini} must divide the batch of {batch} responses")
    _check(mini % (l.num_ranks * l.micro_batch_size) == 0, "learner.micro_batch_size",
           f"mini-batch {mini} must split evenly into learner.num_ranks={l.num_ranks} x micro_batch_size={l.micro_batch_size}")
    _check(l.max_packed_tokens >= 1, "learner.max_packed_tokens", f"must be >= 1, got {l.max_packed_tokens}")
    _check(l.max_tokens_per_micro_batch >= 0, "learner.max_tokens_per_micro_batch", "must be >= 0 (0 = off)")
    _check(c.tracking.save_every >= 0, "tracking.save_every", "must be >= 0")
    _check(c.checkpoint.every >= 0, "checkpoint.every", "must be >= 0")
    _check(c.checkpoint.keep >= 1, "checkpoint.keep", "must be >= 1")
    _check(c.fault.max_actor_restarts >= 0, "fault.max_actor_restarts", "must be >= 0")
    _check(c.fault.actor_restart_timeout_s > 0, "fault.actor_restart_timeout_s", "must be > 0")
    _check(c.fault.learner_restarts >= 0, "fault.learner_restarts", "must be >= 0")
    _check(not c.fault.learner_restarts or c.checkpoint.every > 0, "fault.learner_restarts",
           "needs checkpoint.every > 0: a restart continues from the latest full checkpoint")
    if g.sleep_mode:  # generation and learner take turns on one device
        _check(c.max_staleness == 0, "max_staleness", "must be 0 with generation.sleep_mode: vLLM sleeps while "
               "the learner steps, so generation cannot run ahead")
        _check(g.num_gpus > 0 and l.num_gpus > 0, "generation.num_gpus",
               "generation.sleep_mode shares a GPU: set generation.num_gpus and learner.num_gpus to fractions of it")
        _check(g.num_actors * g.num_gpus + l.num_ranks * l.num_gpus <= 1 + 1e-9, "learner.num_gpus",
               f"generation.num_actors x num_gpus ({g.num_actors} x {g.num_gpus:g}) + learner.num_ranks x num_gpus "
               f"({l.num_ranks} x {l.num_gpus:g}) must add up to at most 1: sleep mode shares one GPU")
    _check(l.max_skipped_steps >= 1, "learner.max_skipped_steps", "must be >= 1")
    _check(c.cluster.placement_timeout_s > 0, "cluster.placement_timeout_s", "must be > 0")
    lo = l.lora
    _check(lo.rank >= 0, "learner.lora.rank", f"must be >= 0 (0 = full fine-tuning), got {lo.rank}")
    _check(lo.alpha > 0, "learner.lora.alpha", f"must be > 0, got {lo.alpha}")
    _check(lo.dropout == 0, "learner.lora.dropout", f"must be 0, got {lo.dropout}: the learner runs every forward "
           "in eval mode so that log-probs, entropies and importance ratios come from one function")
    _check(bool(lo.target_modules) and all(lo.target_modules), "learner.lora.target_modules",
           "must name at least one module (or 'all-linear')")
