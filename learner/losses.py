"""Token-level decoupled clipped policy-gradient loss, KL regulariser, aggregation weights. Pure.

The loss of a batch is sum_t w_t * l_t over every token t: l_t is the per-token objective and w_t
folds in the entropy mask and the aggregation mode. Because the weights are computed from the
*global* counts of the optimizer batch (all micro-batches, all ranks), summing micro-batch losses
gives exactly the whole-batch loss, whatever the split.

Three policies are kept apart (decoupled PPO, as in AReaL):
- behaviour mu: vLLM's weights that sampled the tokens, possibly `max_staleness` versions old and
  never numerically equal to the learner's;
- proximal pi_prox: the learner's weights when the batch arrived, before its first update;
- current pi_theta: the weights being updated.
The PPO clip is taken on r = pi_theta / pi_prox, so it only limits how far *this* batch's updates
move the policy, and the gap between behaviour and proximal is corrected by a truncated,
detached importance weight min(pi_prox / mu, is_cap). With a stale or mismatched rollout the
clip against mu would either zero a positive token's gradient (ratio already past 1 + eps) or,
for a negative advantage, leave the loss unbounded (a log-ratio of 8 weighs ~3000x); here the
per-token gradient weight is at most is_cap * dual_clip * |A|.
"""
from __future__ import annotations

import math
import typing
from dataclasses import dataclass
from typing import Literal

import torch

Aggregation = Literal["token_mean", "seq_mean_token_mean", "seq_mean_token_sum_norm"]
Normalize = Literal["all", "kept"]
KLEstimator = Literal["k2", "k3"]  # k1 is refused as a loss: its expected gradient is zero


@dataclass(frozen=True)
class BatchCounts:
    """Global counts over one optimizer batch (summed over micro-batches and ranks)."""

    valid_tokens: int  # response tokens in scope
    kept_tokens: int  # of those, selected by the entropy mask
    sequences: int  # sequences with at least one token in scope
    kept_sequences: int  # sequences with at least one kept token
    rows: int = 0  # every sequence of the optimizer batch, in scope or not (Dr. GRPO's constant G x B)


def token_weights(
    valid: torch.Tensor,  # (N, T) bool: response tokens in scope (not padding)
    keep: torch.Tensor,  # (N, T) bool: tokens selected by the entropy mask (subset of valid)
    aggregation: str,
    normalize: str,  # "all": denominators count valid tokens (the paper); "kept": kept tokens
    counts: BatchCounts,
    max_len: int,  # constant length for seq_mean_token_sum_norm (Dr. GRPO)
) -> torch.Tensor:
    """(N, T) float weights w with loss = sum(w * per_token_loss).

    seq_mean_token_mean with normalize="kept" averages over the sequences that have a kept token
    (a sequence with none has no mean to take); seq_mean_token_sum_norm divides by a constant,
    so it only takes normalize="all" (the config refuses the other)."""
    keep_f = keep.float()
    if aggregation == "token_mean":
        total = counts.valid_tokens if normalize == "all" else counts.kept_tokens
        return keep_f / max(total, 1)
    if aggregation == "seq_mean_token_mean":
        denom_mask = valid if normalize == "all" else keep
        per_seq = denom_mask.sum(dim=1, keepdim=True).clamp(min=1).float()  # (N, 1)
        seqs = counts.sequences if normalize == "all" else counts.kept_sequences
        return keep_f / per_seq / max(seqs, 1)
    if aggregation == "seq_mean_token_sum_norm":
        if normalize != "all":
            raise ValueError("seq_mean_token_sum_norm divides by a constant length; normalize must be 'all'")
        # Dr. GRPO's point is a constant normaliser: dividing by the in-scope sequences instead would
        # double every gradient when half the groups carry no signal.
        return keep_f / (max_len * max(counts.rows or counts.sequences, 1))
    raise ValueError(f"unknown aggregation {aggregation!r}; one of {typing.get_args(Aggregation)}")


def importance_weights(
    proximal_logp: torch.Tensor,  # (N, T) learner log-probs before this batch's first update
    behaviour_logp: torch.Tensor,  # (N, T) log-probs of the policy that sampled the tokens
    is_cap: float,  # truncation C of min(pi_prox / mu, C); 0 turns the correction off (weights 1)
) -> torch.Tensor:
    """(N, T) detached truncated importance weights min(pi_prox / mu, is_cap)."""
    if is_cap <= 0:
        return torch.ones_like(proximal_logp)
    log_w = (proximal_logp - behaviour_logp).detach().clamp(max=math.log(is_cap))
    return torch.exp(log_w)


def clipped_pg_loss(
    logp: torch.Tensor,  # (N, T) log-probs of the sampled tokens under the current policy
    proximal_logp: torch.Tensor,  # (N, T) under the learner's policy before this batch's first update
    behaviour_logp: torch.Tensor,  # (N, T) under the policy that sampled them (vLLM)
    advantages: torch.Tensor,  # (N,) one advantage per sequence
    weights: torch.Tensor,  # (N, T) from token_weights; zero where no gradient may flow
    clip_low: float,
    clip_high: float,
    dual_clip: float = 3.0,  # > 1 bounds the loss of negative-advantage tokens at dual_clip * |A|; 0 = off
    is_cap: float = 2.0,  # truncation of the behaviour -> proximal importance weight; 0 = off
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Decoupled DAPO clip-higher surrogate (see module docstring):

        l_t = w_is * max(-A r, -A clip(r, 1-lo, 1+hi)),  r = pi_theta / pi_prox,
        w_is = min(pi_prox / mu, is_cap) (detached), and for A < 0: min(that, w_is * dual_clip * |A|).

    With proximal == behaviour this is the plain clipped loss against the behaviour policy.
    Returns (scalar loss, stats): stats hold *weighted sums* (by `weights`) of the clip
    indicators, the dual-clip indicator, the k3 estimate of KL(prox || current) and the
    policy loss, which the caller sums over micro-batches and ranks.
    """
    adv = advantages[:, None]  # (N, 1)
    log_ratio = (logp - proximal_logp.detach()).clamp(-20.0, 20.0)  # guards exp overflow on garbage tokens
    ratio = torch.exp(log_ratio)  # (N, T)
    unclipped = -adv * ratio
    clipped = -adv * ratio.clamp(1.0 - clip_low, 1.0 + clip_high)
    per_token = torch.maximum(unclipped, clipped)  # (N, T)
    dual_hit = torch.zeros_like(per_token, dtype=torch.bool)
    if dual_clip > 1.0:
        dual_hit = (adv < 0) & (per_token > -adv * dual_clip)
        per_token = torch.where(dual_hit, -adv * dual_clip, per_token)
    per_token = importance_weights(proximal_logp, behaviour_logp, is_cap) * per_token
    loss = (per_token * weights).sum()
    with torch.no_grad():
        w = weights.detach()
        stats = {
            "clip_low": ((ratio < 1.0 - clip_low) & (adv < 0)).float().mul(w).sum(),
            "clip_high": ((ratio > 1.0 + clip_high) & (adv > 0)).float().mul(w).sum(),
            "dual_clip": dual_hit.float().mul(w).sum(),
            # k3 estimator of KL(prox || current): (r - 1) - log r, non-negative per token
            "approx_kl": ((ratio - 1.0) - log_ratio).mul(w).sum(),
        }
    return loss, stats


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """(N, T) per-token KL term, differentiable in `logp` (current policy p, reference q).

    What each does *as a loss* on tokens sampled from p (gradients in expectation over p):
    - k2 = 0.5 log(p/q)^2: gradient log(p/q) grad log p, whose expectation is grad KL(p || q).
      The one whose gradient is the KL it names; forkrl's default.
    - k3 = q/p - 1 - log(q/p) (GRPO paper): gradient (1 - q/p) grad log p, whose expectation is
      grad KL(q || p), the *reverse* KL (mass-covering). Its value is an unbiased,
      non-negative estimate of KL(p || q), which is why forkrl logs it as `losses/ref_kl`.
    - k1 = log(p/q) would have expected gradient E_p[grad log p] = 0; the config refuses it.
    """
    log_ratio = logp - ref_logp  # (N, T) log p/q
    if estimator == "k2":
        return 0.5 * log_ratio.pow(2)
    if estimator == "k3":
        neg = (-log_ratio).clamp(max=20.0)  # log q/p, clamped so exp cannot overflow
        return torch.exp(neg) - 1.0 - neg
    raise ValueError(f"unknown KL estimator {estimator!r}; one of {typing.get_args(KLEstimator)}")


def kl_sample_weights(
    logp: torch.Tensor,  # (N, T) current policy
    behaviour_logp: torch.Tensor,  # (N, T) the policy that sampled the tokens
    is_cap: float,
) -> torch.Tensor:
    """(N, T) detached weights min(pi_theta / mu, is_cap) that make the KL term's gradient an
    expectation over the *current* policy although the tokens came from mu (the estimators'
    gradients above hold only for samples from p). is_cap = 0 turns it off (weights 1)."""
    if is_cap <= 0:
        return torch.ones_like(logp)
    return torch.exp((logp - behaviour_logp).detach().clamp(max=math.log(is_cap)))
