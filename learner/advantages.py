"""Critic-free advantage estimators. Input rewards are (P, G): P prompts, G responses each.

Every estimator returns (P, G) advantages; every token of response (p, g) gets advantages[p, g].
"""
from __future__ import annotations

import torch

ESTIMATORS = ("grpo", "drgrpo", "rloo", "reinforce_pp", "w_reinforce")


def grpo(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(r - group mean) / (group std + eps); std is the unbiased one, as in the GRPO paper's code."""
    mean = rewards.mean(dim=1, keepdim=True)  # (P, 1)
    std = rewards.std(dim=1, keepdim=True)  # (P, 1)
    return (rewards - mean) / (std + eps)


def drgrpo(rewards: torch.Tensor) -> torch.Tensor:
    """r - group mean (Dr. GRPO: no std division, which over-weights very easy and hard groups)."""
    return rewards - rewards.mean(dim=1, keepdim=True)


def rloo(rewards: torch.Tensor) -> torch.Tensor:
    """r - mean of the other G-1 rewards of the group (leave-one-out baseline)."""
    g = rewards.shape[1]
    others = (rewards.sum(dim=1, keepdim=True) - rewards) / (g - 1)  # (P, G)
    return rewards - others


def reinforce_pp(rewards: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """(r - batch mean) / (batch std + eps) over the whole batch (REINFORCE++ style)."""
    return (rewards - rewards.mean()) / (rewards.std() + eps)


def w_reinforce(rewards: torch.Tensor, lam: float = 0.1) -> torch.Tensor:
    """Weighted REINFORCE: reward +1 (correct, r > 0) scaled by lam, -1 (wrong) kept.

    lam = 0 is pure negative-sample reinforcement (NSR); rewards are read as pass/fail.
    """
    return torch.where(rewards > 0, torch.full_like(rewards, lam), torch.full_like(rewards, -1.0))


def compute_advantages(rewards: torch.Tensor, estimator: str, w_lambda: float = 0.1) -> torch.Tensor:
    """Dispatch on the config's estimator name; (P, G) -> (P, G)."""
    if estimator == "grpo":
        return grpo(rewards)
    if estimator == "drgrpo":
        return drgrpo(rewards)
    if estimator == "rloo":
        return rloo(rewards)
    if estimator == "reinforce_pp":
        return reinforce_pp(rewards)
    if estimator == "w_reinforce":
        return w_reinforce(rewards, w_lambda)
    raise ValueError(f"unknown advantage estimator {estimator!r}; one of {ESTIMATORS}")
