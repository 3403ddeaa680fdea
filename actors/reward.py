"""Reward worker: scores a rollout's responses with a `rewards.registry.RewardScorer`."""
from __future__ import annotations

import time
from dataclasses import replace

from actors.types import EvalBatch, RolloutBatch
from rewards.registry import RewardScorer, extra_rewards
from rewards.result import RewardResult
from rewards.sandbox import SandboxLimits
from rewards.shapes import Sample
from rewards.shaping import shaped_score


class RewardWorker:
    def __init__(self, cfg, max_new_tokens: int):
        self.cfg, self.max_new_tokens = cfg, max_new_tokens
        limits = SandboxLimits(timeout_s=cfg.code_test_timeout_s, memory_mb=cfg.code_memory_mb,
                               isolation=cfg.code_isolation)
        self.scorer = RewardScorer(cfg.fn, cfg.timeout_s, cfg.workers_per_actor, code_limits=limits, shape=cfg.shape,
                                   extra=extra_rewards(cfg), math_form=cfg.math_answer_form)
        self.scorer.start()  # pay the verifier processes' start-up before the first batch

    def score(self, samples: list[Sample]) -> tuple[list[RewardResult], float]:
        t0 = time.perf_counter()
        return self.scorer.score_samples(samples), time.perf_counter() - t0

    def score_rollout(self, rollout: RolloutBatch, start: int, stop: int) -> tuple[list[RewardResult], float]:
        """Score responses start..stop of a rollout (the rollout arrives from the object store)."""
        g, c = rollout.group_size, self.cfg
        results, seconds = self.score([Sample.of(rollout.prompts[i // g], rollout.response_text[i])
                                       for i in range(start, stop)])
        if not (c.format_weight or c.overlong_weight):
            return results, seconds
        shaped = [
            replace(r, score=shaped_score(r.score, rollout.response_text[i], rollout.finished[i], len(rollout.response_ids[i]),
                                          format_weight=c.format_weight, overlong_weight=c.overlong_weight,
                                          max_len=self.max_new_tokens, overlong_cache=c.overlong_cache,
                                          form="code" if c.fn == "code" else "boxed"))
            for r, i in zip(results, range(start, stop))
        ]
        return shaped, seconds

    def score_eval(self, batch: EvalBatch, start: int, stop: int) -> tuple[list[RewardResult], float]:
        """Score responses start..stop of an evaluation batch, unshaped: the verdict is what counts."""
        return self.score([Sample.of(batch.prompts[i // batch.samples], batch.response_text[i])
                           for i in range(start, stop)])
