"""Driver-side handling of scored rollouts: grouping, DAPO dynamic sampling, learner shards."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from actors.types import Prompt, RolloutBatch
from learner.advantages import compute_advantages
from learner.batch import TrainShard, collate
from rewards.math import RewardResult


@dataclass(frozen=True)
class Group:
    """The G scored responses to one prompt."""

    prompt: Prompt
    response_ids: list[list[int]]  # (G, ragged)
    behaviour_logprobs: list[list[float]]  # (G, ragged)
    rewards: list[float]  # (G,)
    policy_version: int

    @property
    def informative(self) -> bool:
        """False when all G rewards are equal: every advantage is then zero (DAPO drops these)."""
        return len(set(self.rewards)) > 1


def to_groups(parts: list[RolloutBatch], results: list[RewardResult]) -> list[Group]:
    groups, i = [], 0
    for part in parts:
        g = part.group_size
        for j, prompt in enumerate(part.prompts):
            rows = slice(j * g, (j + 1) * g)
            groups.append(Group(prompt, part.response_ids[rows], part.behaviour_logprobs[rows],
                                [r.score for r in results[i + j * g : i + (j + 1) * g]], part.policy_version))
        i += len(part)
    return groups


def choose_groups(informative: list[Group], uninformative: list[Group], needed: int) -> tuple[list[Group], int]:
    """`needed` groups, informative first; short of those, zero-advantage groups fill the batch
    (the learner's shapes are fixed: ZeRO-3 ranks must run the same number of micro-batches).
    Returns (groups, how many were fill)."""
    chosen = informative[:needed]
    fill = uninformative[: needed - len(chosen)]
    return chosen + fill, len(fill)


def train_shards(groups: list[Group], estimator: str, w_lambda: float, ranks: int, pad_id: int,
                 rng: random.Random) -> list[TrainShard]:
    """Advantages per group, then the responses shuffled and cut into one shard per learner rank."""
    rewards = torch.tensor([g.rewards for g in groups], dtype=torch.float32)  # (P, G)
    adv = compute_advantages(rewards, estimator, w_lambda).flatten()  # (P*G,)
    size = len(groups[0].rewards)
    prompt_ids = [g.prompt.token_ids for g in groups for _ in range(size)]
    resp = [r for g in groups for r in g.response_ids]
    blp = [lp for g in groups for lp in g.behaviour_logprobs]
    order = list(range(len(resp)))
    rng.shuffle(order)  # mini-batches then draw from every group rather than a few prompts
    per = len(order) // ranks
    return [
        collate([prompt_ids[i] for i in idx], [resp[i] for i in idx], [blp[i] for i in idx],
                [float(adv[i]) for i in idx], pad_id)
        for idx in (order[r * per:(r + 1) * per] for r in range(ranks))
    ]
