"""Reward worker: scores a rollout's responses with a `rewards.registry.RewardScorer`."""
from __future__ import annotations

import time

from actors.types import RolloutBatch
from rewards.math import RewardResult
from rewards.registry import RewardScorer


class RewardWorker:
    def __init__(self, cfg):
        self.scorer = RewardScorer(cfg.fn, cfg.timeout_s, cfg.workers_per_actor)
        self.scorer.start()  # pay the verifier processes' start-up before the first batch

    def score(self, texts: list[str], answers: list[str]) -> tuple[list[RewardResult], float]:
        t0 = time.perf_counter()
        return self.scorer.score_batch(texts, answers), time.perf_counter() - t0

    def score_rollout(self, rollout: RolloutBatch, start: int, stop: int) -> tuple[list[RewardResult], float]:
        """Score responses start..stop of a rollout (the rollout arrives from the object store)."""
        g = rollout.group_size
        answers = [rollout.prompts[i // g].answer for i in range(start, stop)]
        return self.score(rollout.response_text[start:stop], answers)

    def restarts(self) -> int:
        """Verifier processes killed and restarted so far (timeouts and crashes)."""
        return self.scorer.restarts
