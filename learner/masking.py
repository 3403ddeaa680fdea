"""Entropy-percentile token selection ("Beyond the 80/20 Rule", forking tokens).

The threshold is the nearest-rank (1 - rho) quantile of the valid tokens' entropies: with N valid
tokens and k = ceil(rho * N), tau is the k-th largest entropy and every valid token with entropy
>= tau is kept, so ties at tau are kept and at least rho of the tokens get gradient (exactly rho
without ties; the authors' code keeps exactly k with `topk`, splitting ties arbitrarily).

The k-th largest value is found by an exact radix select over the float bits, 8 bits a pass: each
pass needs only a 256-bin histogram, so the batch's tokens never need gathering in one place
(`reduce` sums a histogram over ranks, which makes the distributed answer equal the
single-process one) and there is no element cap as with `torch.quantile` (16M).
"""
from __future__ import annotations

import math
import typing
from typing import Callable, Literal

import torch

Reduce = Callable[[torch.Tensor], torch.Tensor]  # sums an int64 tensor over ranks (identity on one)
MaskMode = Literal["top", "bottom", "random", "none"]
# Which response tokens the mask chooses among and the loss divides by: "informative" ones (non-zero
# advantage) or "all". Zero-advantage tokens get no policy gradient anyway; under "all" they would
# still take part of the top-rho budget and the denominators, so the share of tokens that carry
# signal would fall below rho and move with accuracy. The paper's batches come after DAPO's
# filtering, where the two coincide.
MaskScope = Literal["informative", "all"]


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


def _keys(values: torch.Tensor) -> torch.Tensor:
    bits = values.float().contiguous().view(torch.int32).to(torch.int64)  # (M,) in [-2^31, 2^31)
    # Standard float total-order trick: flip all bits of negatives, only the sign bit of positives.
    return torch.where(bits >= 0, bits + 2**31, 2**31 - 1 - (bits + 2**31))


def _from_key(key: int) -> float:
    bits = key - 2**31 if key >= 2**31 else (2**31 - 1 - key) - 2**31
    return torch.tensor([bits], dtype=torch.int64).to(torch.int32).view(torch.float32).item()


def kth_largest(values: torch.Tensor, k: int, reduce: Reduce = _identity) -> float:
    """The k-th largest of `values` (1-based) over all ranks; `values` is (M,) float, local part.

    `reduce` must sum a tensor elementwise over ranks; every rank must call with the same k.
    """
    keys = _keys(values.reshape(-1))  # (M,) int64 in [0, 2^32)
    prefix = 0
    for shift in (24, 16, 8, 0):
        if shift < 24:
            match = (keys >> (shift + 8)) == (prefix >> (shift + 8))
            digits = ((keys[match] >> shift) & 255)
        else:
            digits = (keys >> shift) & 255
        hist = reduce(torch.bincount(digits, minlength=256).to(torch.int64))  # (256,)
        above = torch.flip(torch.cumsum(torch.flip(hist, [0]), 0), [0])  # above[d] = count with digit >= d
        # The digit d of the k-th largest is the largest d with at least k values at or above it.
        d = int(torch.nonzero(above >= k).max().item())
        k -= int(above[d].item() - hist[d].item())
        prefix |= d << shift
    return _from_key(prefix)


_MOD = 2**31 - 1  # a prime; every product below stays under 2**62, so int64 never overflows


def _mix(x: torch.Tensor) -> torch.Tensor:
    """A nonlinear scramble of int64 values in [0, _MOD): multiplications mod the prime, with
    xor-shifts between them so that neighbouring inputs do not give related outputs."""
    for a, shift in ((48271, 13), (69621, 17), (16807, 11), (39373, 15)):
        x = (x * a) % _MOD
        x = x ^ (x >> shift)
    return x % _MOD


def random_scores(seed: int, batch: int, sample_ids: torch.Tensor, width: int) -> torch.Tensor:
    """(N, width) uniform scores in (0, 1) for the `random` control arm, a function of (seed,
    batch number, sample id, position) only: the same mask whatever the ranks, the micro-batches,
    the row order or the training path. sample_ids: (N,) int64."""
    h = _mix(torch.full((1, 1), (seed * 1_000_003 + batch) % _MOD, dtype=torch.int64))
    h = _mix((h + sample_ids.reshape(-1, 1) % _MOD) % _MOD)  # (N, 1)
    h = _mix((h * 31 + torch.arange(width, dtype=torch.int64)[None, :]) % _MOD)  # (N, width)
    return (h.double() + 1.0) / (_MOD + 1.0)


def select_tokens(
    entropy: torch.Tensor,  # (N, T) float, this rank's tokens
    valid: torch.Tensor,  # (N, T) bool, response tokens that are not padding
    mode: str,
    rho: float,
    reduce: Reduce = _identity,
    generator: torch.Generator | None = None,
    scores: torch.Tensor | None = None,  # (N, T) the random arm's scores (random_scores); else drawn
) -> tuple[torch.Tensor, float]:
    """Tokens that receive gradient, and the threshold used: ((N, T) bool, float).

    top: entropy >= k-th largest, k = ceil(rho N). bottom: entropy <= the ceil((1-rho) N)-th
    smallest. random: a uniformly random ceil(rho N) tokens (threshold on `scores`, or on
    torch.rand with `generator` when none are given). none: every valid token. N counts valid
    tokens over all ranks (via `reduce`).
    """
    if mode not in typing.get_args(MaskMode):
        raise ValueError(f"mask mode {mode!r} not in {typing.get_args(MaskMode)}")
    if not 0 < rho <= 1:
        raise ValueError(f"rho must be in (0, 1], got {rho}")
    n_total = int(reduce(valid.sum().reshape(1).to(torch.int64)).item())
    if mode == "none" or n_total == 0:
        return valid.clone(), float("nan")
    if mode == "random":
        scores = scores.float() if scores is not None else torch.rand(entropy.shape, generator=generator)
    elif mode == "bottom":
        scores = -entropy.float()  # the lowest (1 - rho) entropies are the highest scores of -H
    else:
        scores = entropy.float()
    frac = (1.0 - rho) if mode == "bottom" else rho
    k = max(1, math.ceil(frac * n_total - 1e-9))  # tolerance: 0.2 * 10 must give 2, not 3
    tau = kth_largest(scores[valid], k, reduce)
    keep = valid & (scores >= tau)
    return keep, (-tau if mode == "bottom" else tau)


def scope_tokens(
    valid: torch.Tensor,  # (N, T) bool response tokens that are not padding
    advantages: torch.Tensor,  # (N,) float
    scope: str,
) -> torch.Tensor:
    """(N, T) bool: the tokens the mask selects from and the loss counts (see MaskScope)."""
    if scope == "all":
        return valid
    if scope == "informative":
        return valid & (advantages[:, None] != 0)
    raise ValueError(f"mask scope {scope!r} not in {typing.get_args(MaskScope)}")


def entropy_mask(entropy: torch.Tensor, valid: torch.Tensor, rho: float) -> torch.BoolTensor:
    """True exactly for valid tokens whose entropy is at or above the (1 - rho) quantile of the
    valid entries (nearest-rank; see module docstring). Same shape as `entropy`."""
    keep, _ = select_tokens(entropy, valid.bool(), "top", rho)
    return keep
