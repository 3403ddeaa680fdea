import math

import pytest
import torch

from learner.advantages import compute_advantages, drgrpo, grpo, reinforce_pp, rloo, w_reinforce
from learner.batch import collate
from learner.logprobs import logprobs_and_entropy
from learner.losses import BatchCounts, clipped_pg_loss, token_weights


def every(r):
    return torch.ones_like(r, dtype=torch.bool)


def test_grpo_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 1.0]])
    # mean 0.5, unbiased std sqrt(1/3)
    expect = (r - 0.5) / (math.sqrt(1 / 3) + 1e-6)
    assert torch.allclose(grpo(r, every(r)), expect)
    assert torch.equal(grpo(torch.ones(1, 4), every(torch.ones(1, 4))), torch.zeros(1, 4))  # all-equal: no signal
    # equal non-round rewards give exactly 0, not a float residue of the mean
    r3 = torch.full((1, 4), 0.3)
    for fn in (grpo, drgrpo, rloo):
        assert torch.equal(fn(r3, every(r3)), torch.zeros(1, 4))


def test_drgrpo_rloo_reinforce_pp_wreinforce_by_hand():
    r = torch.tensor([[1.0, 0.0, 0.0, 0.0], [1.0, 1.0, 0.0, 1.0]])
    inc = every(r)
    assert torch.allclose(drgrpo(r, inc), torch.tensor([[0.75, -0.25, -0.25, -0.25], [0.25, 0.25, -0.75, 0.25]]))
    # leave-one-out: 1 - 0 = 1; 0 - 1/3
    assert torch.allclose(rloo(r, inc)[0], torch.tensor([1.0, -1 / 3, -1 / 3, -1 / 3]))
    flat = r.flatten()
    assert torch.allclose(reinforce_pp(r, inc), (r - flat.mean()) / (flat.std() + 1e-6))
    correct = r > 0
    assert torch.equal(w_reinforce(correct, inc, 0.1)[0], torch.tensor([0.1, -1.0, -1.0, -1.0]))
    assert torch.equal(w_reinforce(correct, inc, 0.0)[1], torch.tensor([0.0, 0.0, -1.0, 0.0]))  # pure NSR
    with pytest.raises(ValueError, match="unknown advantage"):
        compute_advantages(r, correct, inc, "ppo")


def test_clipped_loss_by_hand_with_clip_higher():
    logp = torch.log(torch.tensor([[1.5, 0.5, 1.1]]))  # ratios against behaviour logp 0
    old = torch.zeros(1, 3)
    w = torch.ones(1, 3)
    loss_pos, stats = clipped_pg_loss(logp, old, old, torch.tensor([1.0]), w, 0.2, 0.28, dual_clip=0)
    # A>0: -min(r, clip(r)) -> -1.28, -0.5, -1.1
    assert loss_pos.item() == pytest.approx(-(1.28 + 0.5 + 1.1))
    assert stats["clip_high"].item() == 1.0 and stats["clip_low"].item() == 0.0
    loss_neg, stats = clipped_pg_loss(logp, old, old, torch.tensor([-1.0]), w, 0.2, 0.28, dual_clip=0)
    # A<0: max(r, clip(r)) -> 1.5, 0.8, 1.1
    assert loss_neg.item() == pytest.approx(1.5 + 0.8 + 1.1)
    assert stats["clip_low"].item() == 1.0
    dual, stats = clipped_pg_loss(logp, old, old, torch.tensor([-1.0]), w, 0.2, 0.28, dual_clip=1.2)
    assert dual.item() == pytest.approx(1.2 + 0.8 + 1.1)  # 1.5 capped at c*|A| = 1.2
    assert stats["dual_clip"].item() == 1.0


def test_masked_tokens_get_exactly_zero_gradient():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 11, requires_grad=True)
    targets = torch.randint(0, 11, (2, 5))
    logp, _ = logprobs_and_entropy(logits, targets)
    valid = torch.ones(2, 5, dtype=torch.bool)
    keep = torch.zeros(2, 5, dtype=torch.bool)
    keep[0, 1] = keep[1, 3] = True
    w = token_weights(valid, keep, "token_mean", "all", BatchCounts(10, 2, 2, 2), 5)
    loss, _ = clipped_pg_loss(logp, logp.detach(), logp.detach() - 0.3, torch.tensor([1.0, -0.5]), w, 0.2, 0.28)
    loss.backward()
    per_token = logits.grad.abs().sum(-1)  # (2, 5)
    assert torch.count_nonzero(per_token[~keep]) == 0
    assert (per_token[keep] > 0).all()


@pytest.mark.parametrize("aggregation, normalize", [
    ("token_mean", "all"), ("token_mean", "kept"), ("seq_mean_token_mean", "all"), ("seq_mean_token_mean", "kept"),
    ("seq_mean_token_sum_norm", "all")])
def test_micro_batched_loss_and_gradient_equal_whole_batch(aggregation, normalize):
    torch.manual_seed(1)
    n, t = 6, 7
    logits = torch.randn(n, t, 13, requires_grad=True)
    targets = torch.randint(0, 13, (n, t))
    valid = torch.rand(n, t) > 0.3
    keep = valid & (torch.rand(n, t) > 0.5)
    adv = torch.randn(n)
    old = torch.randn(n, t) * 0.1 - 2.5
    counts = BatchCounts(int(valid.sum()), int(keep.sum()), n, int(keep.any(1).sum()))
    behaviour = old + torch.randn(n, t) * 0.5  # stale: the importance weights differ per token

    def loss_of(rows):
        lp, _ = logprobs_and_entropy(logits[rows], targets[rows])
        w = token_weights(valid[rows], keep[rows], aggregation, normalize, counts, t)
        return clipped_pg_loss(lp, old[rows], behaviour[rows], adv[rows], w, 0.2, 0.28)[0]

    whole = loss_of(slice(0, n))
    (g_whole,) = torch.autograd.grad(whole, logits)
    parts = [loss_of(slice(0, 2)), loss_of(slice(2, 3)), loss_of(slice(3, 6))]
    (g_parts,) = torch.autograd.grad(sum(parts), logits)
    assert sum(parts).item() == pytest.approx(whole.item(), rel=1e-6, abs=1e-7)
    assert torch.allclose(g_parts, g_whole, atol=1e-7)


def test_token_mean_divides_by_all_valid_tokens_or_kept():
    valid = torch.tensor([[True, True, True, False]])
    keep = torch.tensor([[True, False, False, False]])
    counts = BatchCounts(valid_tokens=30, kept_tokens=6, sequences=4, kept_sequences=2)
    assert token_weights(valid, keep, "token_mean", "all", counts, 8)[0, 0] == pytest.approx(1 / 30)
    assert token_weights(valid, keep, "token_mean", "kept", counts, 8)[0, 0] == pytest.approx(1 / 6)
    assert token_weights(valid, keep, "seq_mean_token_mean", "all", counts, 8)[0, 0] == pytest.approx(1 / 3 / 4)
    assert token_weights(valid, keep, "seq_mean_token_sum_norm", "all", counts, 8)[0, 0] == pytest.approx(1 / 32)
    # kept: mean over the kept tokens of each sequence that has one, then over those sequences only
    assert token_weights(valid, keep, "seq_mean_token_mean", "kept", counts, 8)[0, 0] == pytest.approx(1 / 1 / 2)
    with pytest.raises(ValueError, match="normalize must be 'all'"):
        token_weights(valid, keep, "seq_mean_token_sum_norm", "kept", counts, 8)


def test_chunked_logprobs_and_entropy_match_direct():
    torch.manual_seed(2)
    logits = torch.randn(3, 9, 50) * 3
    targets = torch.randint(0, 50, (3, 9))
    lp, ent = logprobs_and_entropy(logits, targets, temperature=0.7, chunk=4)
    ref = torch.log_softmax(logits / 0.7, -1)
    assert torch.allclose(lp, ref.gather(-1, targets[..., None]).squeeze(-1), atol=1e-5)
    assert torch.allclose(ent, -(ref.exp() * ref).sum(-1), atol=1e-5)


def test_collate_aligns_response_tokens_and_logprobs():
    s = collate([[1, 2, 3], [4]], [[7, 8], [9, 10, 11]], [[-0.1, -0.2], [-0.3, -0.4, -0.5]], [1.0, -1.0], pad_id=0)
    assert s.input_ids.tolist() == [[1, 2, 3, 7, 8], [4, 9, 10, 11, 0]]
    # column t predicts token t+1: response tokens are targets at columns 2,3 and 0,1,2
    assert s.valid.tolist() == [[False, False, True, True], [True, True, True, False]]
    assert s.targets[s.valid].tolist() == [7, 8, 9, 10, 11]
    assert s.behaviour_logp[s.valid].tolist() == pytest.approx([-0.1, -0.2, -0.3, -0.4, -0.5])
    with pytest.raises(ValueError, match="behaviour log-probs"):
        collate([[1]], [[2, 3]], [[-0.1]], [0.0], 0)


def test_kl_estimators_by_hand():
    from learner.losses import kl_penalty

    logp = torch.log(torch.tensor([[0.5, 0.2]]))
    ref = torch.log(torch.tensor([[0.25, 0.4]]))
    lr = logp - ref  # log p/q = [log 2, log 0.5]
    assert torch.allclose(kl_penalty(logp, ref, "k2"), 0.5 * lr**2)
    q_over_p = torch.tensor([[0.5, 2.0]])
    assert torch.allclose(kl_penalty(logp, ref, "k3"), q_over_p - 1 - torch.log(q_over_p))
    assert torch.equal(kl_penalty(ref, ref, "k3"), torch.zeros(1, 2))
    for bad in ("k1", "k4"):  # k1 as a loss has zero expected gradient
        with pytest.raises(ValueError, match="unknown KL"):
            kl_penalty(logp, ref, bad)


def test_pass_at_k_matches_the_binomial_formula():
    from math import comb

    from learner.passk import mean_pass_at_k, pass_at_k

    for n, c, k in [(10, 3, 1), (10, 3, 5), (16, 0, 4), (16, 16, 1), (200, 7, 100), (5, 4, 2)]:
        assert pass_at_k(n, c, k) == pytest.approx(1 - comb(n - c, k) / comb(n, k))
    assert pass_at_k(10, 3, 1) == pytest.approx(0.3)
    assert mean_pass_at_k([0, 8], 8) == {k: pytest.approx((0 + 1) / 2) for k in (1, 2, 4, 8)}
    with pytest.raises(ValueError):
        pass_at_k(4, 5, 1)


def test_no_scored_token_still_gives_a_backward_path():
    """A micro-batch whose tokens are all out of scope must still back-propagate (zeros), or one
    ZeRO-3 rank would skip the gradient collectives the others wait in."""
    logits = torch.randn(1, 0, 11, requires_grad=True)
    lp, ent = logprobs_and_entropy(logits, torch.zeros(1, 0, dtype=torch.long))
    assert lp.shape == (1, 0) and ent.shape == (1, 0) and lp.requires_grad
    (lp.sum() + ent.sum()).backward()
    assert logits.grad is not None


@pytest.mark.parametrize("world", [1, 2, 3, 5])
def test_weight_shards_reassemble_in_any_order(world):
    """ZeRO-3-style flat slices (the tail zero-padded) come back to the exact full tensors."""
    from learner.weights import assemble_weights, shard_weights

    g = torch.Generator().manual_seed(world)
    state = {"a": torch.randn(7, 3, generator=g), "b": torch.randn(4, generator=g), "c": torch.randn(1, generator=g)}
    shards = [shard_weights(state, r, world) for r in range(world)]
    assert all(s.parts["a"].numel() == -(-21 // world) for s in shards)
    out = assemble_weights(shards[::-1])
    assert out.keys() == state.keys()
    for k in state:
        assert torch.equal(out[k], state[k])
    if world > 1:
        with pytest.raises(ValueError, match="do not make up one group"):
            assemble_weights(shards[1:])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_a_weight_shard_pickles_only_its_own_bytes_out_of_band(dtype):
    """A shard whose parts are views of a larger buffer (a ZeRO-3 partition's flat group) travels
    as exactly its parts' bytes, out of band (what Ray writes into the object store without an
    in-band copy), and comes back equal, in its dtype."""
    import pickle

    from learner.weights import LoraSpec, WeightShard

    flat = torch.randn(1000).to(dtype)  # the live buffer the parts are views of
    shard = WeightShard(0, 1, {"w": flat[100:300], "b": flat[300:310]}, {"w": (20, 10), "b": (10,)},
                        LoraSpec(4, 8.0, ("q_proj",)))
    buffers = []
    data = pickle.dumps(shard, protocol=5, buffer_callback=buffers.append)
    assert sorted(b.raw().nbytes for b in buffers) == sorted([10 * flat.element_size(), 200 * flat.element_size()])
    assert len(data) < 1000  # names, shapes and dtypes only: no tensor storage in band
    # Read back from copies, read-only as the object store's memory is to a reader.
    back = pickle.loads(data, buffers=[bytes(b.raw()) for b in buffers])
    assert back.lora == shard.lora and back.shapes == shard.shapes and (back.rank, back.world) == (0, 1)
    for k in shard.parts:
        assert back.parts[k].dtype == dtype and torch.equal(back.parts[k], shard.parts[k])


def test_a_skipped_step_reports_the_keys_of_a_trained_one():
    """One key list (learner.step_metrics.STEP_KEYS) for trained and skipped steps: the dashboards
    and the driver's console line read the same names either way."""
    from learner.step_metrics import (MASK_KEYS, OFF_POLICY_KEYS, STEP_KEYS, UPDATE_KEYS, mask_metrics,
                                      off_policy_metrics, skipped_metrics, update_metrics)

    valid = torch.tensor([[True, True, False], [True, False, False]])
    keep = torch.tensor([[True, False, False], [False, False, False]])
    ent, logp = torch.rand(2, 3), -torch.rand(2, 3)
    assert tuple(mask_metrics(valid, valid, keep, ent, 0.5)) == MASK_KEYS
    assert tuple(off_policy_metrics(valid, logp, logp - 0.1, 2.0)) == OFF_POLICY_KEYS
    sums = dict.fromkeys(("loss", "policy_loss", "weight", "clip_low", "clip_high", "dual_clip", "approx_kl",
                          "ref_kl", "kl_weight", "entropy"), 1.0)
    memory = {"memory/learner_peak_gb": 1.0, "memory/learner_shared_gb": 0.5}
    assert tuple(update_metrics(sums, 1, [0.5], 1e-5, 3, 0, memory)) == UPDATE_KEYS
    skipped = skipped_metrics(3, 3, 1e-5, 0.1, memory)
    assert set(skipped) == set(STEP_KEYS) and skipped["train/skipped_no_signal"] == 1
    assert math.isnan(skipped["losses/loss"]) and skipped["mask/kept_tokens"] == 0


def test_each_epoch_after_the_first_draws_new_mini_batches():
    """epoch_order: epoch 0 keeps each mini-batch's rows; a later epoch permutes the whole batch
    (seeded: the same seed, the same draw), and each mini-batch is sorted by length."""
    from learner.batch import epoch_order, length_order

    lengths = torch.tensor([5, 3, 9, 1, 7, 2, 8, 4])
    assert torch.equal(epoch_order(lengths, 2, 0, seed=1), length_order(lengths, 2))
    first = [set(length_order(lengths, 2)[i * 4:(i + 1) * 4].tolist()) for i in range(2)]
    again = epoch_order(lengths, 2, 1, seed=1)
    assert sorted(again.tolist()) == list(range(8))  # every row once
    assert torch.equal(again, epoch_order(lengths, 2, 1, seed=1))
    draws = [[set(epoch_order(lengths, 2, 1, seed=s)[i * 4:(i + 1) * 4].tolist()) for i in range(2)] for s in range(8)]
    assert any(d != first for d in draws)  # the mini-batches change between epochs
    for s in range(8):
        o = epoch_order(lengths, 2, 1, seed=s)
        for i in range(2):
            part = lengths[o[i * 4:(i + 1) * 4]]
            assert torch.equal(part, part.sort().values)


def test_the_logged_ref_kl_is_unbiased_for_kl_of_the_current_policy_on_stale_tokens():
    """losses/ref_kl is k3 weighted by kl_sample_weights (learner/engine.py). By exact enumeration
    over a 6-token vocabulary: on tokens drawn from a stale behaviour policy mu, the weighted k3
    averages to KL(pi || ref) exactly (no cap reached), while the unweighted one does not."""
    from learner.losses import kl_penalty, kl_sample_weights

    g = torch.Generator().manual_seed(0)
    log_pi, log_mu, log_ref = (torch.log_softmax(torch.randn(6, generator=g, dtype=torch.float64), 0) for _ in range(3))
    mu = log_mu.exp()
    k3 = kl_penalty(log_pi[None], log_ref[None], "k3")[0]  # (V,) the estimate at each token
    weighted = (mu * kl_sample_weights(log_pi[None], log_mu[None], is_cap=1e9)[0] * k3).sum()  # E_mu[w k3]
    plain = (mu * k3).sum()  # E_mu[k3]: what an unweighted log would average to
    exact = (log_pi.exp() * (log_pi - log_ref)).sum()  # KL(pi || ref)
    assert weighted.item() == pytest.approx(exact.item(), rel=1e-12)
    assert abs(plain.item() - exact.item()) > 0.05  # the bias the weighting removes
