"""Per-token log-probs and full-vocabulary entropies, in chunks of tokens.

Only one chunk's (tokens, V) softmax exists at a time, so a batch's (N, T, V) float copy of the
normalised distribution never materialises beside the logits. `projected_logprobs_and_entropy`
goes one step further back and takes the final hidden states: a chunk's logits then exist only
while that chunk is scored, and only the rows that need a gradient keep theirs for the backward.
"""
from __future__ import annotations

from typing import Callable

import torch


def _chunked(
    logits_of: Callable[[int, int], torch.Tensor],  # (s, e) -> (e - s, V) logits of tokens s..e-1
    targets: torch.Tensor,  # (K,) token ids whose log-prob is wanted
    temperature: float,
    chunk: int,
    with_entropy: bool,
    entropy_grad: bool,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """((K,) log p(target), (K,) entropy or None) in float32, chunk tokens at a time."""
    k = targets.shape[0]
    logp_parts, ent_parts = [], []
    # At least one (possibly empty) chunk: a micro-batch with no scored token must still return
    # tensors attached to the graph, so that backward runs and ZeRO-3's gradient hooks fire on
    # every rank (a rank that skipped them would hang the others' reduce-scatter).
    for s in range(0, max(k, 1), chunk):
        part = logits_of(s, min(s + chunk, k)).float() / temperature  # (c, V)
        logz = torch.logsumexp(part, dim=-1)  # (c,)
        logp_parts.append(part.gather(1, targets[s : s + chunk, None]).squeeze(1) - logz)
        if with_entropy:
            with torch.set_grad_enabled(entropy_grad and torch.is_grad_enabled()):
                p = torch.softmax(part, dim=-1)
                ent_parts.append(logz - (p * part).sum(dim=-1))  # H = log Z - E_p[logit]
    return torch.cat(logp_parts), (torch.cat(ent_parts) if with_entropy else None)


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
    logp, ent = _chunked(lambda s, e: flat[s:e], targets.reshape(n * t), temperature, chunk, with_entropy,
                         entropy_grad)
    return logp.reshape(n, t), (ent.reshape(n, t) if ent is not None else None)


def projected_logprobs_and_entropy(
    head: Callable[[torch.Tensor], torch.Tensor],  # (c, d) -> (c, V): the model's output projection
    hidden: torch.Tensor,  # (K, d) final hidden states, each predicting one target
    targets: torch.Tensor,  # (K,) token ids whose log-prob is wanted
    temperature: float = 1.0,
    chunk: int = 1024,
    with_entropy: bool = True,
    entropy_grad: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """((K,) log p(target), (K,) entropy) at `temperature`, in float32, the logits of each chunk
    computed by `head` as it is scored. Under no_grad no logits outlive their chunk; with grad
    each chunk's logits stay in the graph, so pass only the rows that need a gradient."""
    return _chunked(lambda s, e: head(hidden[s:e]), targets, temperature, chunk, with_entropy, entropy_grad)
