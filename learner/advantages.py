"""Critic-free advantage estimators. Pure functions over (P, G): P prompts, G responses each.

Every estimator takes the rewards, the verifier's verdicts and an `included` mask and returns
(P, G) advantages; every token of response (p, g) gets advantages[p, g].

Departures from a bare `(r - mean) / std`:
- `included` is False for responses whose verification failed (timeout, error, crash) and for
  fill groups. They are left out of every baseline and statistic and get advantage 0: a failed
  verification scored as 0 would pull its group's baseline down as if it were a wrong answer.
- A group whose included rewards are all equal, or with fewer than two included responses, gets
  exactly 0 (no float residue), so "uninformative" is an exact test, `advantages == 0`.
- W-REINFORCE reads the verifier's verdict (`correct`), never the shaped score: a format bonus
  must not turn a wrong answer into a positive sample, nor an overlong penalty a right one into a
  negative one.
- Signal follows the verdict (`signal="verdict"`, the default): a group has signal only when its
  included verdicts differ, some right and some wrong, as DAPO's dynamic-sampling filter has it.
  GRPO divides by the group's std, so otherwise any shaping difference (an overlong penalty in an
  all-wrong group) becomes a unit-scale advantage, exactly that of a group with one right answer.
  Shaping then only ranks responses inside groups that disagree on correctness. `signal="reward"`
  keeps any reward difference (partial-credit rewards, pure shaping experiments). REINFORCE++'s
  baseline is the batch's, so the rule is too: a batch whose verdicts all agree gets 0.
  W-REINFORCE has its own rule: it trains all-wrong groups by design (negative-sample
  reinforcement).
"""
from __future__ import annotations

import typing
from typing import Literal

import torch

Estimator = Literal["grpo", "drgrpo", "rloo", "reinforce_pp", "w_reinforce"]
Signal = Literal["verdict", "reward"]
# Estimators whose advantage needs the whole batch: a single group cannot be judged uninformative.
BATCH_LEVEL = ("reinforce_pp",)


def _group_stats(rewards: torch.Tensor, included: torch.Tensor):
    """(P, 1) included count, mean, and whether the group can carry signal at all."""
    inc = included.float()  # (P, G)
    n = inc.sum(dim=1, keepdim=True)  # (P, 1)
    mean = (rewards * inc).sum(dim=1, keepdim=True) / n.clamp(min=1)  # (P, 1)
    lo = torch.where(included, rewards, torch.full_like(rewards, float("inf"))).amin(dim=1, keepdim=True)
    hi = torch.where(included, rewards, torch.full_like(rewards, float("-inf"))).amax(dim=1, keepdim=True)
    live = (n >= 2) & (hi > lo)  # (P, 1): two or more included responses that disagree
    return n, mean, live


def grpo(rewards: torch.Tensor, included: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(r - group mean) / (group std + eps); std is the unbiased one, as in the GRPO paper's code."""
    n, mean, live = _group_stats(rewards, included)
    var = (((rewards - mean) * included) ** 2).sum(dim=1, keepdim=True) / (n - 1).clamp(min=1)  # (P, 1)
    adv = (rewards - mean) / (var.sqrt() + eps)
    return torch.where(live & included, adv, torch.zeros_like(adv))


def drgrpo(rewards: torch.Tensor, included: torch.Tensor) -> torch.Tensor:
    """r - group mean (Dr. GRPO: no std division, which over-weights very easy and hard groups)."""
    _, mean, live = _group_stats(rewards, included)
    adv = rewards - mean
    return torch.where(live & included, adv, torch.zeros_like(adv))


def rloo(rewards: torch.Tensor, included: torch.Tensor) -> torch.Tensor:
    """r - mean of the group's other included rewards (leave-one-out baseline)."""
    n, mean, live = _group_stats(rewards, included)
    others = (mean * n - rewards) / (n - 1).clamp(min=1)  # (P, G)
    adv = rewards - others
    return torch.where(live & included, adv, torch.zeros_like(adv))


def reinforce_pp(rewards: torch.Tensor, included: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(r - batch mean) / (batch std + eps) over every included response (REINFORCE++ style)."""
    vals = rewards[included]  # (K,)
    if vals.numel() < 2 or bool((vals == vals[0]).all()):
        return torch.zeros_like(rewards)
    adv = (rewards - vals.mean()) / (vals.std() + eps)
    return torch.where(included, adv, torch.zeros_like(adv))


def w_reinforce(correct: torch.Tensor, included: torch.Tensor, lam: float = 0.1) -> torch.Tensor:
    """Weighted REINFORCE on the verifier's verdict: correct samples +lam, wrong ones -1.

    lam = 0 is pure negative-sample reinforcement (NSR). An all-wrong group still gets -1 on
    every response: there is no group baseline, so it carries signal.
    """
    adv = torch.where(correct, torch.full(correct.shape, lam), torch.full(correct.shape, -1.0))  # (P, G)
    return torch.where(included, adv, torch.zeros_like(adv))


def verdicts_differ(correct: torch.Tensor, included: torch.Tensor) -> torch.Tensor:
    """(P, 1) bool: the group's included responses hold at least one right and one wrong verdict."""
    right = (correct & included).any(dim=1, keepdim=True)
    wrong = (~correct & included).any(dim=1, keepdim=True)
    return right & wrong


def compute_advantages(
    rewards: torch.Tensor,  # (P, G) float, shaped scores
    correct: torch.Tensor,  # (P, G) bool, the verifier's verdict
    included: torch.Tensor,  # (P, G) bool, False = left out of statistics, advantage 0
    estimator: str,
    w_lambda: float = 0.1,
    signal: str = "verdict",
) -> torch.Tensor:
    """(P, G) advantages by the config's estimator name; `signal` decides which groups have any."""
    if signal not in typing.get_args(Signal):
        raise ValueError(f"unknown signal rule {signal!r}; one of {typing.get_args(Signal)}")
    if signal == "verdict" and estimator in BATCH_LEVEL:  # its baseline is the batch's: so is the rule
        included = included & verdicts_differ(correct.reshape(1, -1), included.reshape(1, -1))
    elif signal == "verdict" and estimator != "w_reinforce":
        included = included & verdicts_differ(correct, included)  # a group without it: all 0
    if estimator == "grpo":
        return grpo(rewards, included)
    if estimator == "drgrpo":
        return drgrpo(rewards, included)
    if estimator == "rloo":
        return rloo(rewards, included)
    if estimator == "reinforce_pp":
        return reinforce_pp(rewards, included)
    if estimator == "w_reinforce":
        return w_reinforce(correct, included, w_lambda)
    raise ValueError(f"unknown advantage estimator {estimator!r}; one of {typing.get_args(Estimator)}")


def group_is_informative(
    rewards: torch.Tensor,  # (G,) float
    correct: torch.Tensor,  # (G,) bool
    included: torch.Tensor,  # (G,) bool
    estimator: str,
    w_lambda: float = 0.1,
    signal: str = "verdict",
) -> bool:
    """Whether a group would get any non-zero advantage: the estimator and the signal rule decide.

    For a batch-level estimator (reinforce_pp) any group with an included response counts, since
    its baseline (and, under the verdict rule, its signal) is the batch's, not the group's."""
    if estimator in BATCH_LEVEL:
        return bool(included.any())
    adv = compute_advantages(rewards[None], correct[None], included[None], estimator, w_lambda, signal)
    return bool((adv != 0).any())
