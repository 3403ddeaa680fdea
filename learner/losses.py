"""Token-level clipped policy-gradient loss and its aggregation weights. Pure functions.

The loss of a batch is sum_t w_t * l_t over every token t: l_t is the clipped surrogate and w_t
folds in the entropy mask and the aggregation mode. Because the weights are computed from the
*global* counts of the optimizer batch (all micro-batches, all ranks), summing micro-batch losses
gives exactly the whole-batch loss, whatever the split.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

AGGREGATIONS = ("token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm")


@dataclass(frozen=True)
class BatchCounts:
    """Global counts over one optimizer batch (summed over micro-batches and ranks)."""

    valid_tokens: int
    kept_tokens: int
    sequences: int


def token_weights(
    valid: torch.Tensor,  # (N, T) bool: response tokens that are not padding
    keep: torch.Tensor,  # (N, T) bool: tokens selected by the entropy mask (subset of valid)
    aggregation: str,
    normalize: str,  # "all": denominators count valid tokens (the paper); "kept": kept tokens
    counts: BatchCounts,
    max_len: int,  # constant length for seq_mean_token_sum_norm (Dr. GRPO)
) -> torch.Tensor:
    """(N, T) float weights w with loss = sum(w * per_token_loss)."""
    keep_f = keep.float()
    denom_mask = valid if normalize == "all" else keep
    if aggregation == "token_mean":
        total = counts.valid_tokens if normalize == "all" else counts.kept_tokens
        return keep_f / max(total, 1)
    if aggregation == "seq_mean_token_mean":
        per_seq = denom_mask.sum(dim=1, keepdim=True).clamp(min=1).float()  # (N, 1)
        return keep_f / per_seq / max(counts.sequences, 1)
    if aggregation == "seq_mean_token_sum_norm":
        return keep_f / (max_len * max(counts.sequences, 1))
    raise ValueError(f"unknown aggregation {aggregation!r}; one of {AGGREGATIONS}")


def clipped_pg_loss(
    logp: torch.Tensor,  # (N, T) log-probs of the sampled tokens under the current policy
    behaviour_logp: torch.Tensor,  # (N, T) log-probs under the policy that sampled them
    advantages: torch.Tensor,  # (N,) one advantage per sequence
    weights: torch.Tensor,  # (N, T) from token_weights; zero where no gradient may flow
    clip_low: float,
    clip_high: float,
    dual_clip: float = 0.0,  # > 1 bounds the loss of negative-advantage tokens at dual_clip * |A|
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """DAPO clip-higher surrogate: -min(r A, clip(r, 1-lo, 1+hi) A), optionally dual-clipped.

    Returns (scalar loss, stats) where stats hold *weighted sums* (of clip indicators and the
    k3 KL estimate, weighted by `weights`) that the caller sums over micro-batches and ranks.
    """
    adv = advantages[:, None]  # (N, 1)
    log_ratio = (logp - behaviour_logp).clamp(-20.0, 20.0)  # guards exp overflow on garbage tokens
    ratio = torch.exp(log_ratio)  # (N, T)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)  # (N, T)
    if dual_clip > 1.0:
        per_token = torch.where(adv < 0, torch.minimum(per_token, -adv * dual_clip), per_token)
    loss = (per_token * weights).sum()
    with torch.no_grad():
        w = weights.detach()
        stats = {
            "clip_low": ((ratio < 1.0 - clip_low) & (adv < 0)).float().mul(w).sum(),
            "clip_high": ((ratio > 1.0 + clip_high) & (adv > 0)).float().mul(w).sum(),
            # k3 estimator of KL(behaviour || current): (r - 1) - log r, non-negative per token
            "approx_kl": ((ratio - 1.0) - log_ratio).mul(w).sum(),
        }
    return loss, stats


KL_ESTIMATORS = ("k1", "k2", "k3")


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """(N, T) per-token estimate of KL(current || reference) from sampled tokens (Schulman's k1-k3).

    k1 = log(p/q) (unbiased, high variance, can be negative); k2 = 0.5 log(p/q)^2;
    k3 = q/p - 1 - log(q/p) (unbiased, non-negative): p current, q reference.
    """
    log_ratio = logp - ref_logp  # (N, T) log p/q
    if estimator == "k1":
        return log_ratio
    if estimator == "k2":
        return 0.5 * log_ratio.pow(2)
    if estimator == "k3":
        neg = (-log_ratio).clamp(max=20.0)  # log q/p, clamped so exp cannot overflow
        return torch.exp(neg) - 1.0 - neg
    raise ValueError(f"unknown KL estimator {estimator!r}; one of {KL_ESTIMATORS}")
