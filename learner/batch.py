"""The learner's view of a rollout batch: padded tensors aligned for next-token scoring."""
from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class TrainShard:
    """One rank's sequences. Column t of the (n, L-1) fields describes token t+1 of input_ids."""

    input_ids: torch.Tensor  # (n, L) long: prompt + response, right-padded
    attention_mask: torch.Tensor  # (n, L) long: 1 on real tokens
    valid: torch.Tensor  # (n, L-1) bool: the target token is a response token the policy sampled
    #   (never a multi-turn environment token: those are out of the mask, every denominator and loss)
    behaviour_logp: torch.Tensor  # (n, L-1) float: log-prob under the sampling policy (0 off valid)
    advantages: torch.Tensor  # (n,) float: one advantage per sequence
    sample_ids: torch.Tensor  # (n,) int64: each response's id in the whole batch, whatever rank or order holds it
    prompt_lens: torch.Tensor  # (n,) int64: prompt tokens at the start of each row (the rest is the response)

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    @property
    def targets(self) -> torch.Tensor:  # (n, L-1) long
        return self.input_ids[:, 1:]

    def take(self, order: torch.Tensor) -> "TrainShard":
        """The same sequences in `order` ((n,) row indices)."""
        return TrainShard(self.input_ids[order], self.attention_mask[order], self.valid[order],
                          self.behaviour_logp[order], self.advantages[order], self.sample_ids[order],
                          self.prompt_lens[order])

    def rows(self, start: int, stop: int) -> "TrainShard":
        """Sequences start..stop, trimmed to their longest real length (less padding to score)."""
        length = int(self.attention_mask[start:stop].sum(dim=1).max().item())
        return TrainShard(
            self.input_ids[start:stop, :length],
            self.attention_mask[start:stop, :length],
            self.valid[start:stop, : length - 1],
            self.behaviour_logp[start:stop, : length - 1],
            self.advantages[start:stop],
            self.sample_ids[start:stop],
            self.prompt_lens[start:stop],
        )


def length_order(lengths: torch.Tensor, groups: int) -> torch.Tensor:
    """(n,) row order that sorts rows by length inside each of `groups` equal consecutive slices
    (the mini-batches): micro-batches then hold similar lengths and carry little padding, while
    every mini-batch keeps the same rows (its random draw from the batch is unchanged)."""
    n = lengths.shape[0]
    per = n // groups
    return torch.cat([g * per + torch.argsort(lengths[g * per:(g + 1) * per], stable=True) for g in range(groups)])


def epoch_order(lengths: torch.Tensor, groups: int, epoch: int, seed: int) -> torch.Tensor:
    """(n,) row order for epoch `epoch`: epoch 0 keeps the rows' own mini-batch slices
    (length_order); every later epoch draws the mini-batches afresh from the whole batch (a
    seeded permutation), so several epochs do not repeat the same mini-batch updates in the same
    order, as PPO's reshuffle does. Inside each mini-batch rows are sorted by length (padding)."""
    if epoch == 0:
        return length_order(lengths, groups)
    perm = torch.randperm(lengths.shape[0], generator=torch.Generator().manual_seed(seed))
    return perm[length_order(lengths[perm], groups)]


def collate(
    prompt_ids: list[list[int]],
    response_ids: list[list[int]],
    behaviour_logp: list[list[float]],  # one per response token
    advantages: list[float],
    pad_id: int,
    trained: list[bool] | None = None,  # False: the response takes part in no loss term (no valid tokens)
    sample_ids: list[int] | None = None,  # ids in the whole batch (default 0..n-1: one shard is the batch)
    model_mask: list[list[bool] | None] | None = None,  # per response, True where the policy sampled the
    #   token (multi-turn); None: every response token is the model's
) -> TrainShard:
    n = len(prompt_ids)
    lengths = [len(p) + len(r) for p, r in zip(prompt_ids, response_ids)]
    width = max(lengths)
    ids = torch.full((n, width), pad_id, dtype=torch.long)
    attn = torch.zeros((n, width), dtype=torch.long)
    valid = torch.zeros((n, width - 1), dtype=torch.bool)
    behaviour = torch.zeros((n, width - 1), dtype=torch.float32)
    for i, (p, r, lp) in enumerate(zip(prompt_ids, response_ids, behaviour_logp)):
        if len(lp) != len(r):
            raise ValueError(f"sequence {i}: {len(r)} response tokens but {len(lp)} behaviour log-probs")
        ids[i, : lengths[i]] = torch.tensor(p + r, dtype=torch.long)
        attn[i, : lengths[i]] = 1
        # Response token j sits at position len(p)+j and is predicted from column len(p)+j-1.
        valid[i, len(p) - 1 : lengths[i] - 1] = trained is None or trained[i]
        if model_mask is not None and model_mask[i] is not None:
            if len(model_mask[i]) != len(r):
                raise ValueError(f"sequence {i}: {len(r)} response tokens but {len(model_mask[i])} model-mask flags")
            valid[i, len(p) - 1 : lengths[i] - 1] &= torch.tensor(model_mask[i], dtype=torch.bool)
        behaviour[i, len(p) - 1 : lengths[i] - 1] = torch.tensor(lp, dtype=torch.float32)
    ids_t = torch.tensor(sample_ids if sample_ids is not None else range(n), dtype=torch.int64)
    return TrainShard(ids, attn, valid, behaviour, torch.tensor(advantages, dtype=torch.float32), ids_t,
                      torch.tensor([len(p) for p in prompt_ids], dtype=torch.int64))


@dataclass(frozen=True)
class ShardPlan:
    """One rank's share of a step, as the driver decides it: which rows of which rollout batches,
    and their advantages. The rank fetches those batches from the object store itself and
    collates them (collate_plan), so response tokens never pass through the driver."""

    rows: list[tuple[int, int]]  # (n,) (index into the batches this rank is handed, row in that batch)
    advantages: list[float]  # (n,)
    trained: list[bool]  # (n,) False: a failed verification, out of every loss term
    sample_ids: list[int]  # (n,) each response's id in the whole batch
    pad_id: int
    tokens: int = 0  # tokens this rank forwards (shared prompts once): the driver's balance figure


def collate_plan(plan: ShardPlan, rollouts: tuple) -> TrainShard:
    """The TrainShard of `plan` from the rollout batches it indexes (RolloutBatch: prompts,
    group_size, response_ids, behaviour_logp, model_mask)."""
    picked = [(rollouts[b], r) for b, r in plan.rows]
    return collate([b.prompts[r // b.group_size].token_ids for b, r in picked],
                   [b.response_ids[r] for b, r in picked], [b.behaviour_logp[r] for b, r in picked],
                   plan.advantages, plan.pad_id, trained=plan.trained, sample_ids=plan.sample_ids,
                   model_mask=[None if b.model_mask is None else b.model_mask[r] for b, r in picked])
