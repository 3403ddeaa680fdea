"""Driver-side handling of scored rollouts: grouping, DAPO dynamic sampling, learner shards."""
from __future__ import annotations

import random
from dataclasses import dataclass

import torch

from actors.types import Prompt, RolloutBatch
from learner.advantages import compute_advantages, group_is_informative
from learner.batch import TrainShard, collate
from rewards.math import CORRECT, RewardResult
from rewards.bounded import CRASHED, ERROR, TIMEOUT

# Verifications that did not finish: no verdict, so the response is left out of the group's
# statistics and gets no gradient (scoring it 0 would count it as a wrong answer).
FAILED = (TIMEOUT, ERROR, CRASHED)


@dataclass(frozen=True)
class Group:
    """The G scored responses to one prompt."""

    prompt: Prompt
    response_ids: list[list[int]]  # (G, ragged)
    behaviour_logprobs: list[list[float]]  # (G, ragged)
    rewards: list[float]  # (G,) shaped scores
    correct: list[bool]  # (G,) the verifier's verdict
    verified: list[bool]  # (G,) False where verification timed out, raised or crashed
    policy_version: int
    texts: tuple[str, ...] = ()  # (G,) decoded responses, for the run's rollout record
    statuses: tuple[str, ...] = ()  # (G,) the verifier's status per response

    def records(self, step: int, fill: bool) -> list[dict]:
        """One JSON-able row per response: what `runs/NAME/rollouts/step_N.jsonl` holds."""
        return [{"step": step, "prompt_id": self.prompt.uid, "prompt": self.prompt.text, "answer": self.prompt.answer,
                 "response": t, "reward": r, "status": st, "policy_version": self.policy_version, "fill": fill}
                for t, r, st in zip(self.texts, self.rewards, self.statuses)]

    def informative(self, estimator: str, w_lambda: float) -> bool:
        """Whether `estimator` gives any response of this group a non-zero advantage (DAPO drops
        groups that do not; which ones those are depends on the estimator, not only the rewards)."""
        return group_is_informative(torch.tensor(self.rewards), torch.tensor(self.correct),
                                    torch.tensor(self.verified), estimator, w_lambda)


def sample_seed(run_seed: int, batch: int, part: int) -> int:
    """The sampling seed of one generation call: a function of (run seed, batch number, part), so
    a resumed run or a restarted actor draws exactly what the uninterrupted run drew."""
    return random.Random(f"{run_seed}/{batch}/{part}").getrandbits(62)


class RewardFailure(RuntimeError):
    """The reward function keeps failing; the message names it and quotes its first error."""


class RewardHealth:
    """Stops a run whose reward keeps failing: `max_steps` consecutive steps in which at least
    `max_fraction` of the verifications timed out, raised or crashed. Otherwise such a run would
    train on nothing (failed verifications get no gradient) for all its steps."""

    def __init__(self, fn: str, max_fraction: float, max_steps: int):
        self.fn, self.max_fraction, self.max_steps = fn, max_fraction, max_steps
        self.streak, self.first_error = 0, ""

    def check(self, results: list[RewardResult]) -> None:
        failed = [r for r in results if r.status in FAILED]
        if len(failed) < self.max_fraction * len(results):
            self.streak, self.first_error = 0, ""
            return
        self.streak += 1
        self.first_error = self.first_error or failed[0].detail or failed[0].status
        if self.streak >= self.max_steps:
            raise RewardFailure(
                f"reward.fn={self.fn}: {len(failed)} of {len(results)} verifications failed (timeout/error/crash) "
                f"for {self.streak} consecutive steps (reward.max_error_fraction={self.max_fraction}, "
                f"reward.max_error_steps={self.max_steps}); first error: {self.first_error!r}")


def contiguous_slices(n: int, parts: int) -> list[slice]:
    """Items 0..n-1 cut into at most `parts` contiguous, non-empty slices of ceil(n / parts), in
    order: how responses are spread over the reward actors, so their results concatenate back
    into response order."""
    per = -(-n // parts)
    return [slice(i * per, min(n, (i + 1) * per)) for i in range(parts) if i * per < n]


def to_groups(parts: list[RolloutBatch], results: list[RewardResult]) -> list[Group]:
    """Groups in rollout order; `results` holds one result per response, in the same order."""
    groups, i = [], 0
    for part in parts:
        g = part.group_size
        for j, prompt in enumerate(part.prompts):
            res = results[i + j * g : i + (j + 1) * g]
            rows = slice(j * g, (j + 1) * g)
            groups.append(Group(prompt, part.response_ids[rows], part.behaviour_logprobs[rows],
                                [r.score for r in res], [r.status == CORRECT for r in res],
                                [r.status not in FAILED for r in res], part.policy_version,
                                tuple(part.response_text[rows]), tuple(r.status for r in res)))
        i += len(part)
    return groups


def choose_groups(informative: list[Group], uninformative: list[Group], needed: int) -> tuple[list[Group], list[Group]]:
    """`needed` groups, informative first; short of those, fill groups complete the batch (the
    learner's shapes are fixed: ZeRO-3 ranks must run the same number of micro-batches).
    Returns (chosen, fill): fill groups get zero advantage under every estimator."""
    chosen = informative[:needed]
    return chosen, uninformative[: needed - len(chosen)]


def train_shards(groups: list[Group], fill: list[Group], estimator: str, w_lambda: float, ranks: int, pad_id: int,
                 rng: random.Random) -> list[TrainShard]:
    """Advantages per group (fill groups and failed verifications left out of every statistic),
    then the responses shuffled and cut into one shard per learner rank."""
    every = groups + fill
    rewards = torch.tensor([g.rewards for g in every], dtype=torch.float32)  # (P, G)
    correct = torch.tensor([g.correct for g in every])  # (P, G) bool
    verified = torch.tensor([g.verified for g in every])  # (P, G) bool
    is_fill = torch.tensor([False] * len(groups) + [True] * len(fill))[:, None]  # (P, 1)
    adv = compute_advantages(rewards, correct, verified & ~is_fill, estimator, w_lambda).flatten()  # (P*G,)
    size = len(every[0].rewards)
    prompt_ids = [g.prompt.token_ids for g in every for _ in range(size)]
    resp = [r for g in every for r in g.response_ids]
    blp = [lp for g in every for lp in g.behaviour_logprobs]
    trained = verified.flatten().tolist()  # a failed verification's tokens are out of every term
    order = list(range(len(resp)))
    rng.shuffle(order)  # mini-batches then draw from every group rather than a few prompts
    per = len(order) // ranks
    return [
        collate([prompt_ids[i] for i in idx], [resp[i] for i in idx], [blp[i] for i in idx],
                [float(adv[i]) for i in idx], pad_id, trained=[trained[i] for i in idx])
        for idx in (order[r * per:(r + 1) * per] for r in range(ranks))
    ]
