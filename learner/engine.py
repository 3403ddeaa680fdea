"""The policy under DeepSpeed ZeRO-3 and one optimizer-batch training step.

A step, on every rank at once:
1. a no-grad pass over this rank's micro-batches gives each response token's full-vocabulary
   entropy (current policy, rollout temperature) and its log-prob, which is the *proximal*
   policy of the decoupled objective (`learner.losses`): the weights before this batch's first
   update;
2. the scope (all response tokens, or those with a non-zero advantage) and then the entropy
   mask are chosen once for the whole batch over all ranks (`learner.masking`) and stay fixed for
   every mini-batch update of the batch;
3. for each epoch and mini-batch, micro-batch losses weighted by the mini-batch's global token
   counts are back-propagated and DeepSpeed steps at the accumulation boundary.

With one update per batch and a shard small enough (`learner.single_pass_max_tokens`), steps 1
and 3 are one pass: the training forwards themselves give the entropies, their graphs are held
until the mask is chosen, and one backward follows. Same update, a third less compute.

The vocabulary projection is run apart from the model: the forwards keep the final hidden
states (a 576-float row per token for SmolLM2, against 49,152 logits), the entropies and
log-probs that choose the mask are projected without grad, and only the tokens that a loss term
weighs (the kept ones, or every in-scope token when the KL penalty is on) are projected again
with grad. Their values are the same; the other tokens' weights are zero, so leaving them out of
the graph changes no gradient and spares their logits' memory and the projection's backward.

DeepSpeed divides the loss by the accumulation steps and averages gradients over ranks; the
loss is multiplied back by both so that the update is exactly the gradient of the documented
objective, whatever the split into micro-batches and ranks.
"""
from __future__ import annotations

import logging
import time
from dataclasses import replace

import torch
import torch.distributed as dist

from learner.batch import TrainShard, epoch_order, length_order
from learner.collectives import all_reduce_max, all_reduce_sum, global_count
from learner.logprobs import projected_logprobs_and_entropy
from learner.losses import BatchCounts, clipped_pg_loss, kl_penalty, kl_sample_weights, token_weights
from learner.attention import LAYOUT_KWARG
from learner.packing import group_order, groups_of, in_scope_order, pack, packed_tokens, split_rows
from learner.masking import random_scores, scope_tokens, select_tokens
from learner.probes import head_is_projection, segment_attention_reason
from learner.step_metrics import (mask_metrics, off_policy_metrics, memory_metrics, skipped_metrics,
                                  update_metrics)
from learner.weights import WeightShard
from learner.zero import build_engines, deepspeed_config, load_zero, save_zero, weight_shard

logger = logging.getLogger(__name__)


class PolicyTrainer:
    """A ZeRO-3 sharded causal LM plus the masked clipped-PG update. torch.distributed must be up."""

    def __init__(self, cfg, model_path: str, *, temperature: float, max_new_tokens: int, max_prompt_tokens: int,
                 batch_size: int, seed: int, load_universal: bool = False):
        self.cfg, self.temperature, self.max_new_tokens = cfg, temperature, max_new_tokens
        self.world = dist.get_world_size()
        self.rank = dist.get_rank()
        self.device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        bf16 = cfg.dtype == "bfloat16" or (cfg.dtype == "auto" and self.device.type == "cuda")
        mini = cfg.mini_batch_size or batch_size
        self.minis_per_batch = batch_size // mini
        self.micro_per_mini = mini // (self.world * cfg.micro_batch_size)
        # Decided once, from the most tokens a rank's shard can hold, so every rank and step agrees.
        shard_tokens = batch_size // self.world * (max_prompt_tokens + max_new_tokens)
        self.single_pass = cfg.epochs * self.minis_per_batch == 1 and shard_tokens <= cfg.single_pass_max_tokens
        # The single pass back-propagates the whole shard at once: one DeepSpeed accumulation step.
        self.accumulation = 1 if self.single_pass else self.micro_per_mini
        per_step = cfg.micro_batch_size * self.micro_per_mini // self.accumulation
        ds_cfg = deepspeed_config(cfg, per_step, self.accumulation, self.world, bf16, load_universal)
        self.load_universal = load_universal
        torch.manual_seed(seed)
        if cfg.torch_threads:
            torch.set_num_threads(cfg.torch_threads)
        self._engines = build_engines(model_path, ds_cfg, bf16, with_reference=cfg.kl_coef > 0,
                                      warmup_steps=cfg.warmup_steps, lora=cfg.lora,
                                      checkpointing=cfg.activation_checkpointing,
                                      pointwise_recompute=cfg.recompute_pointwise,
                                      segment_attention=cfg.segment_attention)
        self.engine, self.scheduler = self._engines.engine, self._engines.scheduler
        # The frozen initial policy, sharded like the policy; under LoRA none is built (the base with
        # the adapters off is that policy).
        self.ref_engine = self._engines.reference
        self.has_reference = cfg.kl_coef > 0
        self.seed = seed  # the same on every rank: the random arm's mask is the batch's, not the rank's
        self.updates = 0
        self.batches = 0  # rollout batches seen (trained or skipped): the random arm's draw follows it
        # Packed micro-batches (learner.packing): no padding, and each group's prompt forwarded once.
        self.packed = cfg.share_prompt or cfg.max_tokens_per_micro_batch > 0
        self.act_dtype = torch.bfloat16 if bf16 else torch.float32
        # The vocabulary projection runs apart from the model, with grad only where a loss term
        # weighs the token (`_trained`): under the top-20% mask that spares the other 80% of the
        # response tokens' logits in memory and the projection's backward for them.
        self.split_head = cfg.project_kept_only and head_is_projection(self.engine, self.device)
        if cfg.project_kept_only and not self.split_head:
            logger.warning("the model's logits are not its output projection of its last hidden state; the "
                           "projection is trained at every response position")
        # Packed rows attend segment by segment (learner/attention.py) where the model's attention
        # allows it; else through the explicit T x T mask, and rows over max_packed_tokens padded.
        self.segments = False
        if self.packed and cfg.segment_attention:
            reason = segment_attention_reason(self.engine, self.device, self.act_dtype)
            self.segments = reason is None
            if reason:
                logger.warning("packed rows use an explicit T x T attention mask: %s", reason)

    # -- scoring ---------------------------------------------------------------------------------

    def _features(self, mb: TrainShard, engine=None) -> torch.Tensor:
        """(k, d) the final hidden states that predict mb's valid tokens, in row-major order of
        mb.valid, carrying the graph when grad is on; the engine's own output projection runs on no
        position. For a model whose logits are not its head applied to the last hidden state (soft
        capping, say), (k, V) logits instead, and the projection is the identity (`_project`)."""
        dev = self.device
        valid = mb.valid.to(dev)
        model = engine or self.engine
        if self._packs(mb):
            row = pack(mb.input_ids, mb.attention_mask.sum(dim=1), mb.prompt_lens, mb.valid, self.cfg.share_prompt,
                       self.act_dtype, dense=not self.segments)
            inputs = dict(input_ids=row.input_ids.to(dev), position_ids=row.position_ids.to(dev))
            if self.segments:  # an all-ones 2-D mask: transformers builds no T x T mask for it
                inputs.update(attention_mask=torch.ones_like(inputs["input_ids"]), **{LAYOUT_KWARG: row.layout.to(dev)})
            else:
                inputs["attention_mask"] = row.attention_mask.to(dev)
            at = row.predictors.to(dev)
            if not self.split_head:
                return model(**inputs, logits_to_keep=at).logits[0]  # (k, V)
            pick = lambda hidden: hidden[0, at]  # noqa: E731  (1, T, d) -> (k, d)
        else:
            inputs = dict(input_ids=mb.input_ids.to(dev), attention_mask=mb.attention_mask.to(dev))
            if not self.split_head:
                # Logits only from the first column any row scores: prompt positions would spend
                # the vocabulary projection for nothing.
                cols = valid.any(dim=0).nonzero()
                start = int(cols[0]) if len(cols) else valid.shape[1] - 1
                logits = model(**inputs, logits_to_keep=torch.arange(start, valid.shape[1], device=dev)).logits
                return logits[valid[:, start:]]  # (m, l-1-start, V): column j predicts token start+j+1 -> (k, V)
            pick = lambda hidden: hidden[:, : valid.shape[1]][valid]  # noqa: E731  (m, l, d) -> (k, d)
        out = model(**inputs, logits_to_keep=torch.zeros(0, dtype=torch.long, device=dev), output_hidden_states=True)
        return pick(out.hidden_states[-1])

    def _project(self, feats: torch.Tensor, targets: torch.Tensor, engine=None, with_entropy: bool = True,
                 entropy_grad: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
        """((k,) log-probs, (k,) entropies or None) of `targets` from `_features` rows."""
        head = (engine or self.engine).module.get_output_embeddings() if self.split_head else (lambda x: x)
        return projected_logprobs_and_entropy(head, feats, targets, self.temperature, self.cfg.logprob_chunk,
                                              with_entropy, entropy_grad)

    def _forward(self, mb: TrainShard, with_entropy: bool, engine=None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """((m, l-1) log-probs, (m, l-1) entropies or None) of every valid token, zero elsewhere.
        Meant for no_grad scoring: with grad, every token's logits would enter the graph."""
        valid = mb.valid.to(self.device)
        lp, h = self._project(self._features(mb, engine), mb.targets.to(self.device)[valid], engine, with_entropy)
        return self._scatter(valid, lp), (self._scatter(valid, h) if h is not None else None)

    @staticmethod
    def _scatter(valid: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """(m, l-1) from (k,) values at `valid`'s positions, zero elsewhere; differentiable in x."""
        return torch.zeros(valid.shape, dtype=x.dtype, device=x.device).masked_scatter(valid, x)

    def _trained(self, mb: TrainShard, feats: torch.Tensor, grad_at: torch.Tensor, lp_base: torch.Tensor,
                 with_entropy: bool) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """((m, l-1) log-probs, entropies or None, how many tokens' logits are in the graph), whose
        graph runs through the vocabulary projection only at `grad_at` ((m, l-1) bool, within
        mb.valid): the tokens some loss term weighs. Everywhere else a weight of zero multiplies
        them, so their values come from `lp_base` ((k,) detached, the same weights' log-probs) and they cost no projection
        backward, no logits in memory. feats: (k, d) from `_features`, with grad."""
        dev = self.device
        valid = mb.valid.to(dev)
        sel = grad_at.to(dev)[valid]  # (k,) bool
        lp_sel, h_sel = self._project(feats[sel], mb.targets.to(dev)[valid][sel], None, with_entropy, entropy_grad=True)
        lp = lp_base.to(dev, lp_sel.dtype).masked_scatter(sel, lp_sel)  # (k,)
        h = torch.zeros(sel.shape, dtype=h_sel.dtype, device=dev).masked_scatter(sel, h_sel) if with_entropy else None
        projected = int(sel.sum()) if self.split_head else len(sel)  # else every (k, V) logit row has grad
        return self._scatter(valid, lp), (self._scatter(valid, h) if h is not None else None), projected

    def _forwarded_tokens(self, mb: TrainShard) -> int:
        """Token positions the model runs for micro-batch `mb`: its padded rectangle, or packed,
        its real tokens with each group's prompt once under share_prompt."""
        if self.packed:
            n = self._packed_tokens(mb)  # counted once: _packs would count it again
            if self.segments or n <= self.cfg.max_packed_tokens:
                return n
        return mb.input_ids.numel()

    def _packed_tokens(self, mb: TrainShard) -> int:
        """Tokens in mb's packed row."""
        lengths, prompt_lens = mb.attention_mask.sum(dim=1).tolist(), mb.prompt_lens.tolist()
        return packed_tokens(lengths, prompt_lens, groups_of(mb.input_ids, mb.prompt_lens, self.cfg.share_prompt))

    def _packs(self, mb: TrainShard) -> bool:
        """Whether micro-batch `mb` runs packed: packing is on and, unless attention runs by
        segments, its row fits max_packed_tokens (its attention mask is T x T). Either way the update
        is the same."""
        return self.packed and (self.segments or self._packed_tokens(mb) <= self.cfg.max_packed_tokens)

    def _grad_positions(self, valid: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
        """(m, l-1) bool: the tokens a loss term weighs. The policy loss and the entropy bonus
        weigh the kept tokens only; the KL penalty weighs every in-scope token."""
        return valid if self.has_reference else keep & valid

    @torch.no_grad()
    def score(self, shard: TrainShard) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(n, L-1) log-probs (the proximal policy) and entropies of this rank's shard under the
        current weights, and the reference policy's log-probs when a KL penalty is on (else None)."""
        n, width = shard.valid.shape
        logp, ent = torch.zeros(n, width), torch.zeros(n, width)
        for idx in self._micro_rows(shard, torch.arange(n)):
            mb = self._micro(shard, idx)
            lp, h = self._forward(mb, with_entropy=True)
            if mb.valid.any():  # not a filler
                logp[idx, : lp.shape[1]] = lp.float().cpu()
                ent[idx, : h.shape[1]] = h.float().cpu()
        return logp, ent, (self.reference_logp(shard) if self.has_reference else None)

    @torch.no_grad()
    def reference_logp(self, shard: TrainShard) -> torch.Tensor:
        """(n, L-1) log-probs of the frozen reference policy."""
        n, width = shard.valid.shape
        out = torch.zeros(n, width)
        for idx in self._micro_rows(shard, torch.arange(n)):
            mb = self._micro(shard, idx)
            lp = self._reference_forward(mb)
            if mb.valid.any():
                out[idx, : lp.shape[1]] = lp.float().cpu()
        return out

    @torch.no_grad()
    def _reference_forward(self, mb: TrainShard) -> torch.Tensor:
        """(m, l-1) log-probs of the frozen initial policy: its own engine, or the base with the
        adapters off under LoRA (B starts at zero, so that is exactly the initial policy)."""
        if self.ref_engine is not None:
            return self._forward(mb, False, self.ref_engine)[0]
        with self.engine.module.disable_adapter():
            return self._forward(mb, False)[0]

    # -- training --------------------------------------------------------------------------------

    @property
    def updates_per_batch(self) -> int:
        return self.cfg.epochs * self.minis_per_batch

    def train_step(self, shard: TrainShard) -> dict[str, float]:
        """One optimizer batch (this rank's shard); returns metrics reduced over all ranks."""
        c = self.cfg
        t0 = time.perf_counter()
        self.batches += 1
        # From here on `valid` means "in scope": the tokens the mask chooses among and every
        # denominator counts (all response tokens, or only those with a non-zero advantage).
        all_valid = shard.valid
        shard = replace(shard, valid=scope_tokens(shard.valid, shard.advantages, c.mask.scope))
        if global_count(shard.valid) == 0:
            # No token of the batch, on any rank, is in any loss term: every gradient would be
            # exactly zero, so the passes and the optimizer step are skipped (all ranks agree).
            return skipped_metrics(global_count(all_valid), self.updates, self._lr(), time.perf_counter() - t0,
                                   memory_metrics(self.device))
        if self.single_pass:  # it orders its own micro-batches (in-scope rows only, by length)
            return self._train_single_pass(shard, all_valid, t0)
        order = self._shared(shard, length_order(shard.attention_mask.sum(dim=1), self.minis_per_batch))
        shard, all_valid = shard.take(order), all_valid[order]
        prox_logp, entropy, ref_logp = self.score(shard)
        keep, metrics = self._choose_mask(shard, all_valid, entropy, prox_logp)
        metrics["timing/score_s"] = time.perf_counter() - t0

        rows_per_mini = len(shard) // self.minis_per_batch
        sums: dict[str, float] = {}
        boundaries = []
        scored = (shard, keep, prox_logp, ref_logp)  # rows in the order they were scored
        for epoch in range(c.epochs):
            if epoch:  # a fresh draw of mini-batches; the mask and log-probs travel with their rows
                order = epoch_order(scored[0].attention_mask.sum(dim=1), self.minis_per_batch, epoch,
                                    self.seed * 1_000_003 + self.batches * 1009 + epoch * 31 + self.rank)
                order = self._shared(scored[0], order)
                shard, keep, prox_logp = scored[0].take(order), scored[1][order], scored[2][order]
                ref_logp = scored[3][order] if scored[3] is not None else None
            for mi in range(self.minis_per_batch):
                lr = self._lr()  # the rate this mini-batch's update will use (it changes at updates only)
                lo, hi = mi * rows_per_mini, (mi + 1) * rows_per_mini
                counts = self._global_counts(shard.valid[lo:hi], keep[lo:hi])
                micro_rows = self._micro_rows(shard, torch.arange(lo, hi))  # scoring order, kept
                for j, idx in enumerate(micro_rows):
                    mb = self._micro(shard, idx)
                    cols = slice(0, mb.valid.shape[1])
                    mb_keep, mb_prox = keep[idx, cols] & mb.valid, prox_logp[idx, cols]  # a filler keeps nothing
                    logp, ent, projected = self._trained(mb, self._features(mb),
                                                         self._grad_positions(mb.valid, mb_keep), mb_prox[mb.valid],
                                                         with_entropy=c.entropy_coef > 0)
                    # With one update per batch the proximal policy *is* the current one (the
                    # optimizer steps only after the last micro-batch): this forward's, detached.
                    prox = logp.detach() if self.updates_per_batch == 1 else mb_prox
                    mb_ref = ref_logp[idx, cols] if ref_logp is not None else None
                    loss, stats = self._loss(mb, logp, ent, mb_keep, counts, prox, mb_ref)
                    stats["projected"], stats["forwarded"] = projected, self._forwarded_tokens(mb)
                    self._backward(loss, boundary=j == len(micro_rows) - 1)
                    self._accumulate(sums, stats)
                boundaries.append(self._after_boundary(lr))
        return self._finish(metrics, sums, boundaries, t0)

    def _train_single_pass(self, shard: TrainShard, all_valid: torch.Tensor, t0: float) -> dict[str, float]:
        """One update per batch without a scoring pass: the in-scope sequences are forwarded once
        with grad, micro-batch by micro-batch, each graph held until the batch-wide mask is chosen
        from those same forwards' entropies; then one backward. Exactly the two-pass update (the
        proximal log-probs are the forward's own, detached), for a third less compute and, in
        exchange, the shard's activations in memory at once (learner.single_pass_max_tokens).

        A sequence with no in-scope token is in no loss term and not in the mask's ranking, so it
        is not forwarded at all: under the default scope that is every zero-advantage group."""
        c = self.cfg
        n, width = shard.valid.shape
        micro_rows = self._micro_rows(shard, in_scope_order(shard.valid, shard.attention_mask, shard.input_ids,
                                                            shard.prompt_lens, c.share_prompt))
        logp_all, entropy = torch.zeros(n, width), torch.zeros(n, width)
        outs = []
        for idx in micro_rows:
            mb = self._micro(shard, idx)
            valid = mb.valid.to(self.device)
            feats = self._features(mb)  # (k, d) with grad, held until the mask is chosen
            with torch.no_grad():  # the mask ranks entropies; no logits stay for the backward
                lp, h = self._project(feats.detach(), mb.targets.to(self.device)[valid])
            if mb.valid.any():  # not a filler
                w = valid.shape[1]
                logp_all[idx, :w] = self._scatter(valid, lp).float().cpu()
                entropy[idx, :w] = self._scatter(valid, h).float().cpu()
            ref = self._reference_forward(mb) if self.has_reference else None
            outs.append((mb, feats, lp, ref))
        keep, metrics = self._choose_mask(shard, all_valid, entropy, logp_all)
        metrics["timing/score_s"] = 0.0
        counts = self._global_counts(shard.valid, keep)
        sums: dict[str, float] = {}
        total = 0.0
        for idx, (mb, feats, lp, ref) in zip(micro_rows, outs):
            mb_keep = keep[idx, : mb.valid.shape[1]] & mb.valid  # a filler's row -1 keeps nothing
            logp, ent, projected = self._trained(mb, feats, self._grad_positions(mb.valid, mb_keep), lp,
                                                 with_entropy=c.entropy_coef > 0)
            loss, stats = self._loss(mb, logp, ent, mb_keep, counts, logp.detach(), ref)
            stats["projected"], stats["forwarded"] = projected, self._forwarded_tokens(mb)
            total = total + loss
            self._accumulate(sums, stats)
        outs.clear()
        # One backward over every micro-batch's graph (DeepSpeed sees one accumulation step):
        # ZeRO-3's gradient hooks expect each forward phase to be followed by its own backward.
        lr = self._lr()
        self._backward(total, boundary=True)
        return self._finish(metrics, sums, [self._after_boundary(lr)], t0)

    def _choose_mask(self, shard: TrainShard, all_valid: torch.Tensor, entropy: torch.Tensor,
                     prox_logp: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
        """The entropy mask over the batch's in-scope tokens, chosen once over every rank and fixed
        for all of the batch's updates, and the metrics of the mask and of the off-policy gap.
        entropy, prox_logp: (n, L-1), zero off the in-scope tokens (both paths score only those)."""
        m = self.cfg.mask
        scores = random_scores(self.seed, self.batches, shard.sample_ids, entropy.shape[1]) if m.mode == "random" else None
        keep, tau = select_tokens(entropy, shard.valid, m.mode, m.rho, all_reduce_sum, scores=scores)
        metrics = mask_metrics(shard.valid, all_valid, keep, entropy, tau)
        metrics.update(off_policy_metrics(shard.valid, prox_logp, shard.behaviour_logp, self.cfg.is_cap))
        return keep, metrics

    def _after_boundary(self, lr: float) -> tuple[float, float, int]:
        """After an optimizer boundary: (gradient norm, the rate `lr` it used, 1 if the update was refused)."""
        return float(self.engine.get_global_grad_norm() or 0.0), lr, self._count_update()

    def _finish(self, metrics: dict, sums: dict[str, float], boundaries: list[tuple[float, float, int]],
                t0: float) -> dict[str, float]:
        norms, lrs, refused = zip(*boundaries)
        metrics.update(update_metrics(sums, self.updates_per_batch, list(norms), lrs[-1], self.updates, sum(refused),
                                      memory_metrics(self.device)))
        metrics["timing/train_s"] = time.perf_counter() - t0  # the driver's timing/learn_s includes transfer
        return metrics

    def _lr(self) -> float:
        """The rate the next update will use."""
        return self.scheduler.get_last_lr()[0] if self.scheduler else self.cfg.lr

    def _shared(self, shard: TrainShard, order: torch.Tensor) -> torch.Tensor:
        """`order` with, under share_prompt, each mini-batch's rows of one group side by side (the
        same rows in each mini-batch: only their split into micro-batches changes)."""
        if not self.cfg.share_prompt:
            return order
        per = len(order) // self.minis_per_batch
        parts = []
        for g in range(self.minis_per_batch):
            part = order[g * per : (g + 1) * per]
            parts.append(part[group_order(shard.input_ids[part], shard.prompt_lens[part])])
        return torch.cat(parts)

    def _micro_rows(self, shard: TrainShard, rows: torch.Tensor) -> list[torch.Tensor]:
        """Row indices of each micro-batch of `rows`, in their order (learner.packing.split_rows).
        Every rank runs as many micro-batches as the busiest one (ZeRO-3 gathers parameters in
        every forward, collectively), the rest made of one sequence taking part in nothing."""
        c = self.cfg
        micro = split_rows(rows, shard.input_ids, shard.attention_mask, shard.prompt_lens, c.micro_batch_size,
                           c.max_tokens_per_micro_batch, c.share_prompt)
        most = int(all_reduce_max(torch.tensor([float(len(micro))], dtype=torch.float64)).item())
        return micro + [torch.tensor([-1])] * (most - len(micro))

    @staticmethod
    def _micro(shard: TrainShard, idx: torch.Tensor) -> TrainShard:
        """The micro-batch of rows `idx`, trimmed of padding; [-1] is a filler with no valid token."""
        if idx.tolist() == [-1]:
            mb = shard.take(torch.tensor([0]))
            return replace(mb, valid=torch.zeros_like(mb.valid)).rows(0, 1)
        return shard.take(idx).rows(0, len(idx))

    @staticmethod
    def _accumulate(sums: dict[str, float], part: dict[str, float]) -> None:
        for k, v in part.items():
            sums[k] = sums.get(k, 0.0) + v

    def _count_update(self) -> int:
        """After an optimizer boundary: 0 if the update was applied, 1 if DeepSpeed refused it.
        DeepSpeed (any dtype) skips the update and clears the gradients when the global gradient
        norm is NaN or inf, which a NaN or inf loss always causes; every rank sees the same norm."""
        if self.engine.was_step_applied():
            self.updates += 1
            return 0
        return 1

    def _global_counts(self, valid: torch.Tensor, keep: torch.Tensor) -> BatchCounts:
        local = torch.tensor([valid.sum().item(), keep.sum().item(), valid.any(dim=1).sum().item(),
                              keep.any(dim=1).sum().item(), valid.shape[0]], dtype=torch.int64)
        v, k, s, ks, rows = all_reduce_sum(local).tolist()
        return BatchCounts(valid_tokens=v, kept_tokens=k, sequences=s, kept_sequences=ks, rows=rows)

    def _backward(self, loss: torch.Tensor, boundary: bool) -> None:
        """Back-propagate one accumulation step's loss; DeepSpeed steps at the boundary, which is
        set here, not counted by DeepSpeed: packed by tokens, a mini-batch's micro-batches vary
        in number, and every rank's last one is the boundary."""
        self.engine.set_gradient_accumulation_boundary(boundary)
        # Undo DeepSpeed's 1/accumulation and 1/world averaging: `loss` is already this part's
        # exact share of the global objective.
        self.engine.backward(loss * self.accumulation * self.world)
        self.engine.step()

    def _loss(self, mb: TrainShard, logp: torch.Tensor, ent: torch.Tensor | None, keep: torch.Tensor,
              counts: BatchCounts, prox_logp: torch.Tensor, ref_logp: torch.Tensor | None
              ) -> tuple[torch.Tensor, dict[str, float]]:
        """This micro-batch's share of the objective and its statistics. logp (m, l-1) carries the
        graph; ent likewise when it is in the loss."""
        c = self.cfg
        logp = logp.float()
        dev = logp.device
        behaviour = mb.behaviour_logp.to(dev)
        weights = token_weights(mb.valid, keep, c.aggregation, c.mask.normalize, counts, self.max_new_tokens).to(dev)
        pg_loss, stats = clipped_pg_loss(logp, prox_logp.to(dev), behaviour, mb.advantages.to(dev), weights,
                                         c.clip_low, c.clip_high, c.dual_clip, c.is_cap)
        loss = pg_loss
        out = {k: v.item() for k, v in stats.items()}
        out.update(policy_loss=pg_loss.item(), weight=weights.sum().item(), ref_kl=0.0, kl_weight=0.0, entropy=0.0)
        if ref_logp is not None:
            # The KL regularises the whole policy, so it covers every in-scope token, not only the
            # kept ones (as the peers do); its weights are the aggregation's with nothing masked.
            kl_w = token_weights(mb.valid, mb.valid, c.aggregation, "all", counts, self.max_new_tokens).to(dev)
            ref = ref_logp.to(dev)
            is_w = kl_sample_weights(logp, behaviour, c.is_cap)
            kl = kl_penalty(logp, ref, c.kl_estimator) * is_w
            loss = loss + c.kl_coef * (kl * kl_w).sum()
            # The logged value is weighted like the loss term: k3 is unbiased for KL(pi || ref) only
            # on tokens drawn from pi, and a stale rollout's tokens were drawn from the behaviour policy.
            out.update(ref_kl=(kl_penalty(logp.detach(), ref, "k3") * is_w * kl_w).sum().item(),
                       kl_weight=kl_w.sum().item())
        if ent is not None:
            # The entropy bonus stays on the kept (forking) tokens: exploration is wanted where the
            # reasoning branches, and the paper finds RLVR mainly moves those tokens' entropy.
            ent_sum = (ent.float() * weights).sum()
            loss = loss - c.entropy_coef * ent_sum
            out["entropy"] = ent_sum.item()
        out["loss"] = loss.item()
        return loss, out

    # -- checkpoints -----------------------------------------------------------------------------

    def save_checkpoint(self, path: str) -> None:
        """Every rank writes its shards under `path`/zero (collective), with the update and batch counts."""
        save_zero(self.engine, path, {"updates": self.updates, "batches": self.batches})

    def load_checkpoint(self, path: str) -> None:
        """Restores what `save_checkpoint` wrote: from its own shards when the ranks are as many as
        when it was saved, else from its universal conversion (launch/resume.py, to_universal)."""
        state = load_zero(self.engine, path, self.load_universal, self.rank)
        self.updates = state["updates"]
        self.batches = state.get("batches", self.updates)  # checkpoints before it counted updates only

    # -- weights ---------------------------------------------------------------------------------

    def weight_shard(self) -> WeightShard:
        """This rank's ZeRO-3 partition of every parameter (learner.zero.weight_shard)."""
        return weight_shard(self.engine, self.rank, self.world, self.cfg.publish_dtype)
