"""Packed micro-batches: sequences end to end in one row, no padding, and each group's prompt once.

A micro-batch of m sequences (prompt + response each) becomes one row of T tokens made of
segments that never attend to each other:
- unshared, every sequence is its own segment [prompt_i, response_i];
- shared, the sequences of one group (the same prompt token for token) are one segment
  [prompt, response_1, ..., response_g]: the prompt is forwarded once, and each response attends
  to the prompt and to its own earlier tokens only, at the positions it has in its own sequence.

Every token therefore gets the hidden state it gets in its own padded sequence (the same tokens
at the same positions, attending to the same keys), and since the one prompt's activations feed
every response of its group, the backward accumulates each response's gradient into them: the
same gradient as forwarding the prompt once per response, for the prompt's compute once. This is
the layout of "Prefix Grouper" (2025) for GRPO. The row carries its segments' positions
(`SegmentLayout`, for learner/attention.py, whose cost follows each response's own length) and,
when asked for, the same structure as an explicit 4-D mask (T x T), which any attention
implementation accepts. Pure functions; tested against the padded forward.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from learner.attention import SegmentLayout, segment_layout


@dataclass(frozen=True)
class PackedRow:
    input_ids: torch.Tensor  # (1, T) long
    position_ids: torch.Tensor  # (1, T) long: each token's position in its own sequence
    attention_mask: torch.Tensor | None  # (1, 1, T, T) additive: 0 where query t may attend key s, dtype min
    #   elsewhere; None unless pack(dense=True)
    predictors: torch.Tensor  # (k,) long: for each valid token (row-major over `valid`), the position
    #   in the row whose hidden state predicts it
    layout: SegmentLayout  # the same structure as positions: each prompt's and each response's


def groups_of(input_ids: torch.Tensor, prompt_lens: torch.Tensor, share: bool) -> list[list[int]]:
    """Row indices grouped by identical prompt (first appearance order); one row a group unshared."""
    if not share:
        return [[i] for i in range(input_ids.shape[0])]
    by_prompt: dict[tuple[int, ...], list[int]] = {}
    for i in range(input_ids.shape[0]):
        by_prompt.setdefault(tuple(input_ids[i, : int(prompt_lens[i])].tolist()), []).append(i)
    return list(by_prompt.values())


def packed_tokens(lengths: list[int], prompt_lens: list[int], groups: list[list[int]]) -> int:
    """Tokens in the packed row: each group's prompt once plus every member's response."""
    return sum(prompt_lens[g[0]] + sum(lengths[i] - prompt_lens[i] for i in g) for g in groups)


def pack(
    input_ids: torch.Tensor,  # (m, L) right-padded sequences
    lengths: torch.Tensor,  # (m,) real tokens of each
    prompt_lens: torch.Tensor,  # (m,) prompt tokens of each
    valid: torch.Tensor,  # (m, L-1) bool: column c scores token c+1 (predicted from position c)
    share: bool,
    dtype: torch.dtype,  # the model's activation dtype (the additive mask's)
    dense: bool = True,  # build the (T, T) mask too
) -> PackedRow:
    m = input_ids.shape[0]
    ids, pos = [], []
    segments: list[tuple[int, int, list[tuple[int, int]]]] = []  # (prompt start, length, [(start, length)])
    row_start = [0] * m  # where row i's own tokens (past the prompt) begin in the packed row
    prompt_start = [0] * m  # where row i's prompt begins
    cursor = 0
    for group in groups_of(input_ids, prompt_lens, share):
        p = int(prompt_lens[group[0]])
        ids.append(input_ids[group[0], :p])
        pos.append(torch.arange(p))
        start, cursor = cursor, cursor + p
        segments.append((start, p, []))
        for i in group:
            n = int(lengths[i]) - p
            ids.append(input_ids[i, p : p + n])
            pos.append(torch.arange(p, p + n))
            prompt_start[i], row_start[i] = start, cursor
            segments[-1][2].append((cursor, n))
            cursor += n
    layout = segment_layout(segments, cursor)
    mask = None
    if dense:  # the layout's own per-piece masks, placed in the row: nothing else may be attended
        allow = torch.zeros(cursor, cursor, dtype=torch.bool)  # (T, T)
        pieces = iter(layout.masks)
        for start, p, responses in segments:
            allow[start : start + p, start : start + p] = torch.ones(p, p, dtype=torch.bool).tril()
            for r, n in responses:
                piece = next(pieces)  # (n, p + n): the prompt's keys, then its own
                allow[r : r + n, start : start + p] = piece[:, :p]
                allow[r : r + n, r : r + n] = piece[:, p:]
        mask = torch.zeros(cursor, cursor, dtype=dtype).masked_fill(~allow, torch.finfo(dtype).min)[None, None]
    predictors = []
    for i in range(m):
        p = int(prompt_lens[i])
        cols = valid[i].nonzero().flatten()  # positions c predicting token c+1
        predictors.append(torch.where(cols < p, prompt_start[i] + cols, row_start[i] + cols - p))
    return PackedRow(torch.cat(ids)[None], torch.cat(pos)[None], mask,
                     torch.cat(predictors) if predictors else torch.zeros(0, dtype=torch.long), layout)


def token_budget_micro_batches(order: list[int], lengths: list[int], prompt_lens: list[int], prompts: list[tuple],
                               budget: int, share: bool) -> list[list[int]]:
    """Consecutive runs of `order` (rows), each packing into at most `budget` tokens (a row longer
    than the budget goes alone). prompts: each row's prompt key; shared, a run pays a prompt once."""
    out: list[list[int]] = []
    cur: list[int] = []
    seen: set = set()
    used = 0
    for i in order:
        cost = lengths[i] - prompt_lens[i] + (0 if share and prompts[i] in seen else prompt_lens[i])
        if cur and used + cost > budget:
            out.append(cur)
            cur, seen, used = [], set(), 0
            cost = lengths[i]
        cur.append(i)
        seen.add(prompts[i])
        used += cost
    if cur:
        out.append(cur)
    return out


def prompt_keys(input_ids: torch.Tensor, prompt_lens: torch.Tensor) -> list[tuple[int, ...]]:
    """Each row's prompt tokens, as a hashable key."""
    return [tuple(input_ids[i, : int(prompt_lens[i])].tolist()) for i in range(input_ids.shape[0])]


def group_order(input_ids: torch.Tensor, prompt_lens: torch.Tensor) -> torch.Tensor:
    """(m,) a stable row order that puts rows with the same prompt next to each other, groups in
    order of first appearance (so a length order inside each group is kept)."""
    first: dict[tuple[int, ...], int] = {}
    keys = prompt_keys(input_ids, prompt_lens)
    rank = [first.setdefault(k, len(first)) for k in keys]
    return torch.argsort(torch.tensor(rank, dtype=torch.long), stable=True)


def in_scope_order(valid: torch.Tensor, attention_mask: torch.Tensor, input_ids: torch.Tensor,
                   prompt_lens: torch.Tensor, share: bool) -> torch.Tensor:
    """(k,) the rows with an in-scope token (valid: (n, L-1)), shortest first; under `share`, a
    group's rows side by side, so that a micro-batch forwards their prompt once."""
    rows = torch.nonzero(valid.any(dim=1)).flatten()
    rows = rows[torch.argsort(attention_mask[rows].sum(dim=1), stable=True)]
    if share:
        rows = rows[group_order(input_ids[rows], prompt_lens[rows])]
    return rows


def split_rows(rows: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor, prompt_lens: torch.Tensor,
               size: int, budget: int, share: bool) -> list[torch.Tensor]:
    """`rows` in their order as micro-batches: `size` rows at a time, or, with a token `budget`,
    packed to at most that many tokens (token_budget_micro_batches)."""
    if not budget:
        return [rows[i : i + size] for i in range(0, len(rows), size)]
    keys = prompt_keys(input_ids, prompt_lens)
    return [torch.tensor(r) for r in token_budget_micro_batches(
        rows.tolist(), attention_mask.sum(dim=1).tolist(), prompt_lens.tolist(), keys, budget, share)]
