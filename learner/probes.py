"""What a loaded model supports, each decided by one tiny no-grad forward at start-up.

Both run identically on every rank (ZeRO-3 gathers each layer's weights for them), so every
rank takes the same path. A model that fails a probe takes the general path: slower, the same
update.
"""
from __future__ import annotations

import torch

from learner.attention import LAYOUT_KWARG, SEGMENT_ATTENTION, unsupported_reason
from learner.packing import pack


def head_is_projection(engine, device) -> bool:
    """Whether the model's logits are its output projection applied to its last hidden state (so
    the projection can run apart, on chosen positions only)."""
    ids = torch.arange(1, 9, device=device)[None]  # (1, 8)
    with torch.no_grad():
        out = engine(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True)
        head = engine.module.get_output_embeddings()
        if head is None or not out.hidden_states:
            return False
        return torch.allclose(head(out.hidden_states[-1]).float(), out.logits.float(), rtol=1e-4, atol=1e-4)


def segment_attention_reason(engine, device, dtype: torch.dtype) -> str | None:
    """None when segment attention (learner/attention.py) gives this model the hidden states the
    explicit 4-D mask gives; else why not. A model whose attention does not go through
    transformers' attention functions would ignore the layout and attend across the whole row:
    the comparison catches that, not only the configurations known to be unsupported."""
    config = engine.module.config
    reason = unsupported_reason(config)
    if reason or config._attn_implementation != SEGMENT_ATTENTION:
        return reason or f"the model was loaded with attn_implementation={config._attn_implementation!r}"
    # one prompt of 4 tokens and two responses of 3: the second response must not see the first
    ids = torch.tensor([[1, 2, 3, 4, 5, 6, 7, 0], [1, 2, 3, 4, 8, 9, 10, 11]])
    valid = torch.zeros(2, 7, dtype=torch.bool)
    valid[0, 3:6] = valid[1, 3:7] = True
    row = pack(ids, torch.tensor([7, 8]), torch.tensor([4, 4]), valid, True, dtype)
    kw = dict(input_ids=row.input_ids.to(device), position_ids=row.position_ids.to(device), output_hidden_states=True)
    with torch.no_grad():
        dense = engine(**kw, attention_mask=row.attention_mask.to(device)).hidden_states[-1].float()
        seg = engine(**kw, attention_mask=torch.ones_like(kw["input_ids"]),
                     **{LAYOUT_KWARG: row.layout.to(device)}).hidden_states[-1].float()
    tol = 1e-2 if dtype == torch.bfloat16 else 1e-4
    if not torch.allclose(seg, dense, rtol=tol, atol=tol):
        return f"its hidden states under segment attention differ from the masked ones by {(seg - dense).abs().max():.3g}"
    return None
