"""Driver-side handling of scored rollouts: grouping, metrics, reward health, learner shards."""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import torch

from actors.types import Prompt, RolloutBatch, Turn
from learner.advantages import compute_advantages, group_is_informative
from learner.batch import TrainShard, collate
from launch.errors import RewardFailure
from rewards.result import FAILED, RewardResult, Status


@dataclass(frozen=True)
class Group:
    """The G scored responses to one prompt."""

    prompt: Prompt
    response_ids: list[list[int]]  # (G, ragged)
    behaviour_logp: list[list[float]]  # (G, ragged)
    rewards: list[float]  # (G,) shaped scores
    correct: list[bool]  # (G,) the verifier's verdict
    verified: list[bool]  # (G,) False where verification timed out, raised or crashed
    policy_version: int
    texts: tuple[str, ...] = ()  # (G,) decoded responses, for the run's rollout record
    statuses: tuple[Status, ...] = ()  # (G,) the verifier's status per response
    model_mask: tuple[list[bool], ...] | None = None  # (G, ragged) multi-turn: True on the model's tokens
    turns: tuple[tuple[Turn, ...], ...] | None = None  # (G, ragged) multi-turn: each trajectory's turns

    def records(self, step: int, fill: bool) -> list[dict]:
        """One JSON-able row per response: what `runs/NAME/rollouts/step_N.jsonl` holds (multi-turn:
        also each turn, with the model's text, the tool's output and its status)."""
        rows = [{"step": step, "prompt_id": self.prompt.uid, "prompt": self.prompt.text, "answer": self.prompt.answer,
                 "response": t, "reward": r, "status": st, "policy_version": self.policy_version, "fill": fill}
                for t, r, st in zip(self.texts, self.rewards, self.statuses)]
        for row, turns in zip(rows, self.turns or ()):
            row["turns"] = [{"model": t.text, "output": t.output, "tool": t.tool, "end": t.end} for t in turns]
        return rows

    def informative(self, estimator: str, w_lambda: float, signal: str = "verdict") -> bool:
        """Whether `estimator` gives any response of this group a non-zero advantage (DAPO drops
        groups that do not; which ones those are depends on the estimator and the signal rule,
        not only the rewards)."""
        return group_is_informative(torch.tensor(self.rewards), torch.tensor(self.correct),
                                    torch.tensor(self.verified), estimator, w_lambda, signal)


class RewardHealth:
    """Stops a run whose reward keeps failing: `max_steps` consecutive steps in which at least
    `max_fraction` of the verifications timed out, raised or crashed. Otherwise such a run would
    train on nothing (failed verifications get no gradient) for all its steps."""

    def __init__(self, fn: str, max_fraction: float, max_steps: int):
        self.fn, self.max_fraction, self.max_steps = fn, max_fraction, max_steps
        self.streak, self.first_error = 0, ""

    def check(self, results: list[RewardResult]) -> None:
        # Timeouts count here although they train as wrong answers: a step where most
        # verifications time out says more about the verifier's limit than about the policy.
        failed = [r for r in results if r.status in FAILED or r.status == Status.TIMEOUT]
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


def to_groups(rollouts: list[RolloutBatch], results: list[list[RewardResult]]) -> list[Group]:
    """Groups in rollout order; results[i] holds one result per response of rollouts[i], in its row order."""
    groups = []
    for part, part_results in zip(rollouts, results, strict=True):
        g = part.group_size
        for j, prompt in enumerate(part.prompts):
            rows = slice(j * g, (j + 1) * g)  # RolloutBatch's layout: rows j*G .. j*G+G-1 share prompt j
            res = part_results[rows]
            groups.append(Group(prompt, part.response_ids[rows], part.behaviour_logp[rows],
                                [r.score for r in res], [r.status == Status.CORRECT for r in res],
                                [r.status not in FAILED for r in res], part.policy_version,
                                tuple(part.response_text[rows]), tuple(r.status for r in res),
                                None if part.model_mask is None else tuple(part.model_mask[rows]),
                                None if part.turns is None else tuple(part.turns[rows])))
    return groups


def choose_groups(informative: list[Group], uninformative: list[Group], needed: int) -> tuple[list[Group], list[Group]]:
    """`needed` groups, informative first; short of those, fill groups complete the batch (the
    learner's shapes are fixed: ZeRO-3 ranks must run the same number of micro-batches).
    Returns (chosen, fill): fill groups get zero advantage under every estimator."""
    chosen = informative[:needed]
    return chosen, uninformative[: needed - len(chosen)]


def train_shards(groups: list[Group], fill: list[Group], estimator: str, w_lambda: float, ranks: int, pad_id: int,
                 rng: random.Random, signal: str = "verdict") -> list[TrainShard]:
    """Advantages per group (fill groups and failed verifications left out of every statistic),
    then the responses shuffled and cut into one shard per learner rank."""
    every = groups + fill
    rewards = torch.tensor([g.rewards for g in every], dtype=torch.float32)  # (P, G)
    correct = torch.tensor([g.correct for g in every])  # (P, G) bool
    verified = torch.tensor([g.verified for g in every])  # (P, G) bool
    is_fill = torch.tensor([False] * len(groups) + [True] * len(fill))[:, None]  # (P, 1)
    adv = compute_advantages(rewards, correct, verified & ~is_fill, estimator, w_lambda, signal).flatten()  # (P*G,)
    size = len(every[0].rewards)
    prompt_ids = [g.prompt.token_ids for g in every for _ in range(size)]
    resp = [r for g in every for r in g.response_ids]
    behaviour_logp = [lp for g in every for lp in g.behaviour_logp]
    model_mask = [m for g in every for m in (g.model_mask or [None] * size)]
    trained = verified.flatten().tolist()  # a failed verification's tokens are out of every term
    order = list(range(len(resp)))
    rng.shuffle(order)  # mini-batches then draw from every group rather than a few prompts
    per = len(order) // ranks
    return [
        collate([prompt_ids[i] for i in idx], [resp[i] for i in idx], [behaviour_logp[i] for i in idx],
                [float(adv[i]) for i in idx], pad_id, trained=[trained[i] for i in idx], sample_ids=idx,
                model_mask=[model_mask[i] for i in idx])
        for idx in (order[r * per:(r + 1) * per] for r in range(ranks))
    ]


def rollout_metrics(rollouts: list[RolloutBatch], results: list[list[RewardResult]], groups: list[Group],
                    version: int) -> dict:
    """Reward and length over every response sampled this step; staleness over the trained groups.
    results[i]: the results of rollouts[i]'s responses."""
    flat = [r for part in results for r in part]
    rewards = [r.score for r in flat]
    lengths = [len(x) for p in rollouts for x in p.response_ids]
    finished = [f for p in rollouts for f in p.finished]
    statuses = Counter(r.status for r in flat)
    out = {
        "reward/mean": sum(rewards) / len(rewards),
        "reward/max": max(rewards),
        "reward/accuracy": sum(r.status == Status.CORRECT for r in flat) / len(flat),
        # verifications that timed out, raised or crashed: left out of baselines and gradients
        "reward/excluded_fraction": sum(r.status in FAILED for r in flat) / len(flat),
        "reward/verify_p99_s": sorted(r.seconds for r in flat)[int(0.99 * (len(flat) - 1))],
        "response/length_mean": sum(lengths) / len(lengths),
        "response/truncated_fraction": 1 - sum(finished) / len(finished),
        "staleness/max": version - min(g.policy_version for g in groups),
        "staleness/mean": sum(version - g.policy_version for g in groups) / len(groups),
    }
    out.update({f"reward/status_{k}": v / len(flat) for k, v in sorted(statuses.items())})
    out.update(extras_metrics(flat))
    out.update(env_metrics(rollouts))
    return out


def extras_metrics(results: list[RewardResult]) -> dict:
    """A user reward's own numbers (a verl dict's other keys, OpenRLHF's extra_logs), each averaged
    over the responses that reported it, as reward/fn/<name>."""
    sums: dict[str, list[float]] = {}
    for r in results:
        for name, value in r.extras:
            sums.setdefault(name, []).append(value)
    return {f"reward/fn/{name}": sum(v) / len(v) for name, v in sorted(sums.items())}


def env_metrics(rollouts: list[RolloutBatch]) -> dict:
    """Multi-turn rollouts only: turns, tool calls and how they ended, the model's share of the
    tokens, and how many trajectories ran out of token budget."""
    trajs = [t for p in rollouts for t in (p.turns or ())]
    if not trajs:
        return {}
    calls = [turn.tool for t in trajs for turn in t if turn.tool]
    masks = [m for p in rollouts for m in p.model_mask]
    tokens = sum(len(m) for m in masks)
    return {
        "env/turns_mean": sum(len(t) for t in trajs) / len(trajs),
        "env/tool_calls_mean": len(calls) / len(trajs),
        "env/tool_error_fraction": sum(c in ("error", "env_error") for c in calls) / max(len(calls), 1),
        "env/tool_timeout_fraction": sum(c == "timeout" for c in calls) / max(len(calls), 1),
        "env/model_token_fraction": sum(sum(m) for m in masks) / max(tokens, 1),
        "env/budget_truncated_fraction": sum(t[-1].end == "budget" for t in trajs) / len(trajs),
        "env/max_turns_fraction": sum(t[-1].end == "max_turns" for t in trajs) / len(trajs),
    }
