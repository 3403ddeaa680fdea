"""What a learner step reports, reduced over every rank. Each function is a collective (every rank
calls it, in the same order). The key lists are the contract with the driver and the dashboards:
a skipped step reports the same keys as a trained one, NaN where nothing was measured."""
from __future__ import annotations

import math
import resource

import torch

from learner.collectives import all_reduce_max, all_reduce_sum, reduce_named
from learner.losses import importance_weights

MASK_KEYS = ("mask/threshold", "mask/kept_fraction", "mask/kept_tokens", "mask/scope_fraction", "entropy/mean",
             "entropy/kept_mean", "entropy/dropped_mean", "train/response_tokens")
OFF_POLICY_KEYS = ("off_policy/is_weight_mean", "off_policy/is_truncated_fraction", "off_policy/log_ratio_max",
                   "train/behaviour_logp_abs_diff")
UPDATE_KEYS = ("losses/loss", "losses/policy_loss", "losses/clipfrac_low", "losses/clipfrac_high",
               "losses/dual_clip_fraction", "losses/approx_kl", "losses/grad_norm", "losses/ref_kl",
               "losses/kept_entropy", "charts/lr", "charts/optimizer_updates", "train/skipped_no_signal",
               "train/nonfinite_updates", "train/projected_tokens",
               "train/forwarded_tokens", "memory/learner_peak_gb", "memory/learner_shared_gb")
TIMING_KEYS = ("timing/score_s", "timing/train_s")
STEP_KEYS = MASK_KEYS + OFF_POLICY_KEYS + UPDATE_KEYS + TIMING_KEYS


def mask_metrics(valid: torch.Tensor, all_valid: torch.Tensor, keep: torch.Tensor, entropy: torch.Tensor,
                 tau: float) -> dict[str, float]:
    """The mask's threshold and fractions and the entropies on each side of it. valid: (n, L-1)
    in-scope tokens; all_valid: every response token; keep: the kept ones; entropy: (n, L-1)."""
    dropped = valid & ~keep
    sums = reduce_named({
        "valid": valid.sum().item(), "all_valid": all_valid.sum().item(), "keep": keep.sum().item(),
        "h_all": entropy[valid].double().sum().item(), "h_keep": entropy[keep].double().sum().item(),
        "h_drop": entropy[dropped].double().sum().item(),
    }, all_reduce_sum)
    n_valid, n_keep = sums["valid"], sums["keep"]
    n_drop = n_valid - n_keep
    return {
        "mask/threshold": tau,
        "mask/kept_fraction": n_keep / max(n_valid, 1),
        "mask/kept_tokens": n_keep,
        "mask/scope_fraction": n_valid / max(sums["all_valid"], 1),
        "entropy/mean": sums["h_all"] / max(n_valid, 1),
        "entropy/kept_mean": sums["h_keep"] / max(n_keep, 1),
        "entropy/dropped_mean": sums["h_drop"] / n_drop if n_drop else math.nan,
        "train/response_tokens": sums["all_valid"],
    }


def off_policy_metrics(valid: torch.Tensor, prox_logp: torch.Tensor, behaviour_logp: torch.Tensor,
                       is_cap: float) -> dict[str, float]:
    """How far vLLM's behaviour log-probs are from the learner's proximal ones, and what the
    truncated importance weight did about it, over the batch's in-scope response tokens."""
    diff = (prox_logp - behaviour_logp)[valid].double()  # (K,) log pi_prox / mu
    w = importance_weights(prox_logp, behaviour_logp, is_cap)[valid].double()
    truncated = (diff > math.log(is_cap)).sum().item() if is_cap > 0 else 0
    sums = reduce_named({"n": diff.numel(), "abs": diff.abs().sum().item(), "w": w.sum().item(),
                         "truncated": truncated}, all_reduce_sum)
    peak = all_reduce_max(torch.tensor([diff.abs().max().item() if diff.numel() else 0.0], dtype=torch.float64))
    n = max(sums["n"], 1)
    return {
        "off_policy/is_weight_mean": sums["w"] / n,
        "off_policy/is_truncated_fraction": sums["truncated"] / n,
        "off_policy/log_ratio_max": peak.item(),
        "train/behaviour_logp_abs_diff": sums["abs"] / n,
    }


def update_metrics(sums: dict[str, float], passes: int, grad_norms: list[float], lr: float, updates: int,
                   nonfinite: int, memory: dict[str, float]) -> dict[str, float]:
    """The losses' statistics (`sums`: each micro-batch's, added up on this rank) over `passes`
    updates, weighted by the loss weights they carry."""
    sums = reduce_named(sums, all_reduce_sum)
    weight = max(sums["weight"], 1e-12)
    return {
        "losses/loss": sums["loss"] / passes,
        "losses/policy_loss": sums["policy_loss"] / passes,
        "losses/clipfrac_low": sums["clip_low"] / weight,
        "losses/clipfrac_high": sums["clip_high"] / weight,
        "losses/dual_clip_fraction": sums["dual_clip"] / weight,
        "losses/approx_kl": sums["approx_kl"] / weight,
        "losses/grad_norm": sum(grad_norms) / len(grad_norms),
        "losses/ref_kl": sums["ref_kl"] / max(sums["kl_weight"], 1e-12),
        "losses/kept_entropy": sums["entropy"] / weight,
        "charts/lr": lr,  # the rate the step's (last) update used
        "charts/optimizer_updates": updates,
        "train/skipped_no_signal": 0,
        # updates refused for a NaN / inf gradient norm (the weights did not change)
        "train/nonfinite_updates": nonfinite,
        # tokens whose vocabulary projection took part in the backward, per update (the kept ones
        # under learner.project_kept_only, every in-scope one otherwise)
        "train/projected_tokens": sums.get("projected", 0) / passes,
        # token positions the model ran with grad per update, padding and repeated prompts included
        "train/forwarded_tokens": sums.get("forwarded", 0) / passes,
        **memory,
    }


def skipped_metrics(response_tokens: int, updates: int, lr: float, train_s: float,
                    memory: dict[str, float]) -> dict[str, float]:
    """A step with no token in any loss term: nothing was masked, scored or updated."""
    out = dict.fromkeys(STEP_KEYS, math.nan)
    out.update({"mask/kept_fraction": 0.0, "mask/kept_tokens": 0, "mask/scope_fraction": 0.0,
                "train/response_tokens": response_tokens, "train/skipped_no_signal": 1, "train/nonfinite_updates": 0,
                "charts/optimizer_updates": updates, "charts/lr": lr, "timing/score_s": 0.0, "timing/train_s": train_s,
                **memory})
    return out


def memory_metrics(device: torch.device) -> dict[str, float]:
    """The largest rank's memory/learner_peak_gb: GPU memory allocated since the last call, or on
    CPU the process's peak resident set so far (Linux reports no per-step CPU peak). And its
    memory/learner_shared_gb, on CPU: the shared-memory pages now resident in the rank, chiefly
    the Ray object store's, where each weight publish is written. They count in the resident set,
    so in the CPU peak, but they are the object store's memory, not the learner's; Ray's own
    memory monitor leaves them out of a worker's usage. NaN where Linux's /proc is absent."""
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) / 2**30
        torch.cuda.reset_peak_memory_stats(device)
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # kB on Linux
    shared_kb = resident_kb().get("RssShmem", math.nan)
    both = all_reduce_max(torch.tensor([peak, shared_kb / 2**20], dtype=torch.float64)).tolist()
    return {"memory/learner_peak_gb": both[0], "memory/learner_shared_gb": both[1]}


def resident_kb(pid: int | str = "self") -> dict[str, int]:
    """The resident-set fields of /proc/<pid>/status (RssAnon, RssFile, RssShmem), in kB; empty
    where Linux's /proc is absent or the process is gone."""
    fields = {}
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.startswith("Rss"):
                    fields[key] = int(value.split()[0])
    except OSError:
        pass
    return fields
