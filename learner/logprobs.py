"""Per-token log-probs and full-vocabulary entropies from logits, in chunks of tokens.

Only one chunk's (tokens, V) softmax exists at a time, so a batch's (N, T, V) float copy of the
normalised distribution never materialises beside the logits.
"""
from __future__ import annotations

import torch


def logprobs_and_entropy(
    logits: torch.Tensor,  # (N, T, V) next-token logits aligned with targets
    targets: torch.Tensor,  # (N, T) token ids whose log-prob is wanted
    temperature: float = 1.0,
    chunk: int = 1024,
    with_entropy: bool = True,
    entropy_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """((N, T) log p(target), (N, T) entropy H = -sum_v p log p) at `temperature`, in float32.

    entropy_grad=False returns the entropy detached: the mask only ranks it, and a differentiable
    entropy would keep a (tokens, V) softmax per chunk alive until the backward pass."""
    n, t, v = logits.shape
    flat = logits.reshape(n * t, v)
    tgt = targets.reshape(n * t)
    logp_parts, ent_parts = [], []
    # At least one (possibly empty) chunk: a micro-batch with no scored token must still return
    # tensors attached to the logits, so that backward runs and ZeRO-3's gradient hooks fire on
    # every rank (a rank that skipped them would hang the others' reduce-scatter).
    for s in range(0, max(n * t, 1), chunk):
        part = flat[s : s + chunk].float() / temperature  # (c, V)
        logz = torch.logsumexp(part, dim=-1)  # (c,)
        logp_parts.append(part.gather(1, tgt[s : s + chunk, None]).squeeze(1) - logz)
        if with_entropy:
            with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                p = torch.softmax(part, dim=-1)
                ent_parts.append(logz - (p * part).sum(dim=-1))  # H = log Z - E_p[logit]
    logp = torch.cat(logp_parts).reshape(n, t)
    ent = torch.cat(ent_parts).reshape(n, t) if with_entropy else None
    return logp, ent
