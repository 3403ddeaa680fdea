"""Driver-side handling of scored rollouts: grouping, metrics, reward health, and which rows each
learner rank trains. The driver works from RolloutSummary and the rewards alone: tokens,
log-probs and texts travel from the generators to the ranks by ObjectRef."""
from __future__ import annotations

import random
from collections import Counter
from dataclasses import dataclass

import torch

from actors.types import Prompt, RolloutSummary
from learner.advantages import compute_advantages, group_is_informative
from learner.batch import ShardPlan
from launch.errors import RewardFailure
from rewards.result import FAILED, RewardResult, Status


@dataclass(frozen=True)
class Group:
    """The G scored responses to one prompt. Their tokens and texts stay in the object store:
    `part` names the rollout batch that holds them (an index into the step's parts) and
    `first_row` the group's first row in it."""

    prompt: Prompt
    rewards: list[float]  # (G,) shaped scores
    correct: list[bool]  # (G,) the verifier's verdict
    verified: list[bool]  # (G,) False where verification timed out, raised or crashed
    policy_version: int
    statuses: tuple[Status, ...] = ()  # (G,) the verifier's status per response
    part: int = 0  # index of the rollout batch holding these responses, in the step's parts
    first_row: int = 0  # rows first_row .. first_row + G - 1 of that batch
    lengths: tuple[int, ...] = ()  # (G,) response tokens, from the summary: what the learner will forward

    def tokens(self, share_prompt: bool) -> int:
        """Tokens the learner forwards for this group: its prompt once (shared) or once per response."""
        return len(self.prompt.token_ids) * (1 if share_prompt else len(self.rewards)) + sum(self.lengths)

    def rows(self) -> range:
        return range(self.first_row, self.first_row + len(self.rewards))

    def records(self, step: int, fill: bool) -> list[dict]:
        """One JSON-able row per response, as `runs/NAME/rollouts/step_N.jsonl` holds it, less the
        response (and multi-turn, its turns): `_src` (part, row) tells the record writer
        (launch/records.py) where to read them."""
        return [{"step": step, "prompt_id": self.prompt.uid, "prompt": self.prompt.text, "answer": self.prompt.answer,
                 "response": None, "reward": r, "status": st, "policy_version": self.policy_version, "fill": fill,
                 "_src": (self.part, row)}
                for row, r, st in zip(self.rows(), self.rewards, self.statuses)]

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


def to_groups(prompts: list[list[Prompt]], summaries: list[RolloutSummary], results: list[list[RewardResult]],
              first_part: int = 0) -> list[Group]:
    """Groups in rollout order. Part i (the step's part first_part + i) sampled prompts[i], is
    described by summaries[i] and has one result per response in results[i], in its row order."""
    groups = []
    for i, (mine, part, part_results) in enumerate(zip(prompts, summaries, results, strict=True)):
        g = part.group_size
        for j, prompt in enumerate(mine):
            rows = slice(j * g, (j + 1) * g)  # RolloutBatch's layout: rows j*G .. j*G+G-1 share prompt j
            res = part_results[rows]
            groups.append(Group(prompt, [r.score for r in res], [r.status == Status.CORRECT for r in res],
                                [r.status not in FAILED for r in res], part.policy_version,
                                tuple(r.status for r in res), first_part + i, j * g, tuple(part.lengths[rows])))
    return groups


def choose_groups(informative: list[Group], uninformative: list[Group], needed: int) -> tuple[list[Group], list[Group]]:
    """`needed` groups, informative first; short of those, fill groups complete the batch (the
    learner's shapes are fixed: ZeRO-3 ranks must run the same number of micro-batches).
    Returns (chosen, fill): fill groups get zero advantage under every estimator."""
    chosen = informative[:needed]
    return chosen, uninformative[: needed - len(chosen)]


def balance_groups(tokens: list[int], ranks: int) -> list[list[int]]:
    """Whole groups to ranks, the same number on each (ZeRO-3 ranks run the same micro-batches),
    the token totals balanced so that no rank waits long for the others in a collective: longest
    group first, each to the lightest rank that has room (ties to the lower index, so the plan is
    a function of the lengths alone). Returns each rank's group indexes. len(tokens) % ranks == 0."""
    per = len(tokens) // ranks
    shares: list[list[int]] = [[] for _ in range(ranks)]
    load = [0] * ranks
    for i in sorted(range(len(tokens)), key=lambda i: (-tokens[i], i)):
        r = min((r for r in range(ranks) if len(shares[r]) < per), key=lambda r: (load[r], r))
        shares[r].append(i)
        load[r] += tokens[i]
    return shares


def plan_shards(groups: list[Group], fill: list[Group], estimator: str, w_lambda: float, ranks: int, pad_id: int,
                rng: random.Random, signal: str = "verdict",
                share_prompt: bool = True) -> list[tuple[ShardPlan, list[int]]]:
    """Advantages per group (fill groups and failed verifications left out of every statistic),
    then one share per learner rank: (its ShardPlan, the step's parts it reads, in the order its
    plan indexes them). The ranks fetch those parts themselves (learner.batch.collate_plan).
    With several ranks and a group count they divide, each group goes whole to one rank
    (balance_groups): its prompt is then forwarded once, not once per rank its responses reach,
    the rank reads fewer batches, and the ranks' token counts are balanced. Otherwise the
    responses are shuffled and cut by count. Within a rank the order is shuffled, so mini-batches
    draw from every group. With one update per batch the update does not depend on which rank
    trains which row; with several, each mini-batch's rows do (README, "Not done yet")."""
    every = groups + fill
    rewards = torch.tensor([g.rewards for g in every], dtype=torch.float32)  # (P, G)
    correct = torch.tensor([g.correct for g in every])  # (P, G) bool
    verified = torch.tensor([g.verified for g in every])  # (P, G) bool
    is_fill = torch.tensor([False] * len(groups) + [True] * len(fill))[:, None]  # (P, 1)
    adv = compute_advantages(rewards, correct, verified & ~is_fill, estimator, w_lambda, signal).flatten()  # (P*G,)
    source = [(g.part, row) for g in every for row in g.rows()]  # (P*G,) where each response lives
    trained = verified.flatten().tolist()  # a failed verification's tokens are out of every term
    group_of = [k for k, g in enumerate(every) for _ in g.rows()]  # (P*G,)
    lengths = [n for g in every for n in (g.lengths or [0] * len(g.rewards))]  # (P*G,) response tokens
    if ranks > 1 and len(every) % ranks == 0:
        shares = []
        for mine in map(set, balance_groups([g.tokens(share_prompt) for g in every], ranks)):
            idx = [i for i, k in enumerate(group_of) if k in mine]
            rng.shuffle(idx)
            shares.append(idx)
    else:
        order = list(range(len(source)))
        rng.shuffle(order)  # mini-batches then draw from every group rather than a few prompts
        per = len(order) // ranks
        shares = [order[r * per:(r + 1) * per] for r in range(ranks)]
    out = []
    for idx in shares:
        parts = sorted({source[i][0] for i in idx})
        local = {p: k for k, p in enumerate(parts)}
        out.append((ShardPlan([(local[source[i][0]], source[i][1]) for i in idx], [float(adv[i]) for i in idx],
                              [trained[i] for i in idx], idx, pad_id,
                              forwarded_tokens(every, group_of, lengths, idx, share_prompt)), parts))
    return out


def forwarded_tokens(every: list[Group], group_of: list[int], lengths: list[int], idx: list[int],
                     share_prompt: bool) -> int:
    """Tokens a rank forwards for rows `idx`: their responses, and each group's prompt once per
    rank it is on (shared) or once per row."""
    prompts = {group_of[i] for i in idx} if share_prompt else [group_of[i] for i in idx]
    return sum(lengths[i] for i in idx) + sum(len(every[k].prompt.token_ids) for k in prompts)


def rank_token_imbalance(plans: list[tuple[ShardPlan, list[int]]]) -> float:
    """The busiest rank's tokens over the mean (1.0: balanced): how long the others wait for it."""
    loads = [plan.tokens for plan, _ in plans]
    return max(loads) / max(sum(loads) / len(loads), 1)


def rollout_metrics(summaries: list[RolloutSummary], results: list[list[RewardResult]], groups: list[Group],
                    version: int) -> dict:
    """Reward and length over every response sampled this step; staleness over the trained groups.
    results[i]: the results of part i's responses, summaries[i] its numbers."""
    flat = [r for part in results for r in part]
    rewards = [r.score for r in flat]
    lengths = [n for p in summaries for n in p.lengths]
    finished = [f for p in summaries for f in p.finished]
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
    out.update(env_metrics(summaries))
    return out


def extras_metrics(results: list[RewardResult]) -> dict:
    """A user reward's own numbers (a verl dict's other keys, OpenRLHF's extra_logs), each averaged
    over the responses that reported it, as reward/fn/<name>."""
    sums: dict[str, list[float]] = {}
    for r in results:
        for name, value in r.extras:
            sums.setdefault(name, []).append(value)
    return {f"reward/fn/{name}": sum(v) / len(v) for name, v in sorted(sums.items())}


def env_metrics(summaries: list[RolloutSummary]) -> dict:
    """Multi-turn rollouts only: turns, tool calls and how they ended, the model's share of the
    tokens, and how many trajectories ran out of token budget."""
    trajs = [t for p in summaries for t in (p.trajectories or ())]
    if not trajs:
        return {}
    calls = [c for t in trajs for c in t.tool_calls]
    tokens = sum(t.tokens for t in trajs)
    return {
        "env/turns_mean": sum(t.turns for t in trajs) / len(trajs),
        "env/tool_calls_mean": len(calls) / len(trajs),
        "env/tool_error_fraction": sum(c in ("error", "env_error") for c in calls) / max(len(calls), 1),
        "env/tool_timeout_fraction": sum(c == "timeout" for c in calls) / max(len(calls), 1),
        "env/model_token_fraction": sum(t.model_tokens for t in trajs) / max(tokens, 1),
        "env/budget_truncated_fraction": sum(t.end == "budget" for t in trajs) / len(trajs),
        "env/max_turns_fraction": sum(t.end == "max_turns" for t in trajs) / len(trajs),
    }
