"""Segment attention for packed rows: each response attends to its group's prompt and to itself,
at a cost that grows with each response's own length, not with the row's.

A packed row (learner/packing.py) holds segments [prompt, response_1, ..., response_g]. The
explicit 4-D mask that expresses "a response sees its prompt and its own earlier tokens" makes
SDPA score every query against every key of the row: (P + sum n_j)^2 pairs, most of them masked.
At 8 responses of 1024 tokens that is about 8x the pairs any token needs, and the mask itself is
T x T. Here the same attention runs as two dense batched calls instead:
- every prompt, causally over itself (prompts padded to the longest in the micro-batch);
- every response, over its own prompt's keys followed by its own keys, causal in the second part
  (responses padded to the longest one; keys gathered per response).
Each query sees exactly the keys the 4-D mask allows, so the outputs agree with the masked call to
float rounding (tests). Padded query rows are computed and dropped; padded keys are masked.
This is a transformers attention function (registered under `SEGMENT_ATTENTION`), given the layout
as a forward keyword; without one (padded micro-batches, the reference's plain forwards) it is
transformers' own SDPA.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

SEGMENT_ATTENTION = "forkrl_segments"  # the attn_implementation name the learner's models use
LAYOUT_KWARG = SEGMENT_ATTENTION  # the forward keyword that carries a SegmentLayout


@dataclass(frozen=True)
class SegmentLayout:
    """Where each prompt and response of a packed row lies, as gather indices into the row."""
    prompt_idx: torch.Tensor  # (S, P) long: prompt s's token positions, padded with 0
    prompt_keys: torch.Tensor  # (S, P) bool: real prompt tokens
    resp_idx: torch.Tensor  # (R, N) long: response r's token positions, padded with 0
    resp_keys: torch.Tensor  # (R, P + N) bool: keys r's queries may see at all (its prompt's, its own)
    key_idx: torch.Tensor  # (R, P + N) long: r's keys, its prompt's positions then its own
    row_len: int  # T, the packed row's length

    def to(self, device) -> "SegmentLayout":
        return SegmentLayout(*(t.to(device) for t in (self.prompt_idx, self.prompt_keys, self.resp_idx,
                                                      self.resp_keys, self.key_idx)), self.row_len)


def segment_layout(segments: list[tuple[list[int], list[list[int]]]], row_len: int) -> SegmentLayout:
    """segments: for each prompt, (its positions in the row, [each response's positions]). A prompt
    with no response, or a response with an empty prompt, is allowed."""
    n_prompt = max((len(p) for p, _ in segments), default=0)
    n_resp = max((len(r) for _, rs in segments for r in rs), default=0)
    prompt_idx = torch.zeros(len(segments), n_prompt, dtype=torch.long)
    prompt_keys = torch.zeros(len(segments), n_prompt, dtype=torch.bool)
    resp_rows = [(s, r) for s, (_, rs) in enumerate(segments) for r in rs]
    resp_idx = torch.zeros(len(resp_rows), n_resp, dtype=torch.long)
    resp_keys = torch.zeros(len(resp_rows), n_prompt + n_resp, dtype=torch.bool)
    for s, (p, _) in enumerate(segments):
        prompt_idx[s, : len(p)] = torch.tensor(p, dtype=torch.long)
        prompt_keys[s, : len(p)] = True
    for j, (s, r) in enumerate(resp_rows):
        resp_idx[j, : len(r)] = torch.tensor(r, dtype=torch.long)
        resp_keys[j, : n_prompt] = prompt_keys[s]
        resp_keys[j, n_prompt : n_prompt + len(r)] = True
    seg_of = torch.tensor([s for s, _ in resp_rows], dtype=torch.long)
    key_idx = torch.cat([prompt_idx[seg_of], resp_idx], dim=1) if resp_rows else torch.zeros(0, n_prompt + n_resp,
                                                                                              dtype=torch.long)
    return SegmentLayout(prompt_idx, prompt_keys, resp_idx, resp_keys, key_idx, row_len)


def _sdpa(q, k, v, allow, scaling):
    """q: (B, H, Lq, D); k, v: (B, Hkv, Lk, D); allow: (B, 1, Lq, Lk) bool -> (B, H, Lq, D)."""
    # GQA without repeating the keys: the repeated copies would be held for the backward in every layer
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=allow, scale=scaling,
                                                            enable_gqa=q.shape[1] != k.shape[1])


def segment_attention(
    q: torch.Tensor,  # (1, H, T, D) the packed row's queries
    k: torch.Tensor,  # (1, Hkv, T, D)
    v: torch.Tensor,  # (1, Hkv, T, D)
    layout: SegmentLayout,
    scaling: float | None,
) -> torch.Tensor:  # (1, H, T, D)
    S, P = layout.prompt_idx.shape
    R, N = layout.resp_idx.shape
    out = q.new_zeros(q.shape)
    causal = torch.ones(max(P, N), max(P, N), dtype=torch.bool, device=q.device).tril()
    if S and P:
        # (S, H, P, D) each prompt over its own earlier tokens; padded keys masked, padded queries
        # still see key 0 (a row with no key would be NaN) and are dropped below
        pq, pk, pv = (x[0][:, layout.prompt_idx].transpose(0, 1) for x in (q, k, v))
        allow = (causal[:P, :P][None] & layout.prompt_keys[:, None, :])[:, None]  # (S, 1, P, P)
        po = _sdpa(pq, pk, pv, allow, scaling)
        out[0].index_copy_(1, layout.prompt_idx[layout.prompt_keys], po.transpose(0, 1)[:, layout.prompt_keys])
    if R and N:
        rq = q[0][:, layout.resp_idx].transpose(0, 1)  # (R, H, N, D)
        rk, rv = (x[0][:, layout.key_idx].transpose(0, 1) for x in (k, v))  # (R, Hkv, P + N, D)
        own = torch.cat([torch.ones(N, P, dtype=torch.bool, device=q.device), causal[:N, :N]], dim=1)  # (N, P+N)
        allow = (own[None] & layout.resp_keys[:, None, :])  # (R, N, P + N)
        allow[:, :, 0] |= ~allow.any(dim=2)  # a padded query row (and an empty prompt's first) keeps a key
        ro = _sdpa(rq, rk, rv, allow[:, None], scaling)
        real = layout.resp_keys[:, P:]  # (R, N) real response tokens: own keys are exactly those
        out[0].index_copy_(1, layout.resp_idx[real], ro.transpose(0, 1)[:, real])
    return out


def attention_forward(module, query, key, value, attention_mask, dropout: float = 0.0, scaling=None, **kwargs):
    """transformers' attention-function signature: (B, H, T, D) inputs -> ((B, T, H, D), None).
    With a SegmentLayout under LAYOUT_KWARG, segment attention over the one packed row; otherwise
    transformers' SDPA unchanged."""
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    layout = kwargs.pop(LAYOUT_KWARG, None)
    if layout is None:
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    if dropout or kwargs.get("sliding_window") or kwargs.get("softcap") or query.shape[0] != 1:
        raise ValueError("segment attention: dropout, sliding windows, soft-capping and batches of rows are not "
                         "supported; set learner.segment_attention=false")
    return segment_attention(query, key, value, layout, scaling).transpose(1, 2).contiguous(), None


def unsupported_reason(config) -> str | None:
    """Why this model's attention is not plain causal attention that segment attention can stand
    in for (sliding windows, soft-capped logits), or None."""
    if getattr(config, "attn_logit_softcapping", None):
        return "its attention logits are soft-capped"
    if getattr(config, "sliding_window", None) or any(t != "full_attention" for t in getattr(config, "layer_types", None) or []):
        return "it has sliding-window attention"
    return None


def register() -> None:
    """Make SEGMENT_ATTENTION a transformers attention implementation (idempotent): the function
    above, with SDPA's mask construction for the plain forwards."""
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(SEGMENT_ATTENTION, attention_forward)
    AttentionMaskInterface.register(SEGMENT_ATTENTION, sdpa_mask)
