"""Actors on a local Ray: real vLLM generation + weight sync, reward pool, ZeRO-3 learner group."""
import math

import pytest
import torch

from actors.types import Prompt
from launch.config_load import load_config
from launch.placement import launch_generators, launch_learners, launch_rewards
from rewards.shapes import Sample
from learner.batch import collate
from learner.weights import assemble_weights, shard_weights

pytestmark = pytest.mark.ray


def tiny_cfg(tiny_model, *overrides):
    return load_config(None, [
        f"model.path={tiny_model}", "model.chat_template=false", "generation.num_cpus=0.5",
        "generation.gpu_memory_utilization=0.1", "generation.max_model_len=64", "generation.max_new_tokens=6",
        "data.max_prompt_tokens=16", "reward.num_cpus=0.25", "learner.num_cpus=0.5", *overrides])


def hf_logprobs(model, prompt, response):
    ids = torch.tensor([prompt + response])
    with torch.no_grad():
        logp = torch.log_softmax(model(ids).logits[0, len(prompt) - 1:-1].float(), -1)
    return logp.gather(1, torch.tensor(response)[:, None]).squeeze(1)


def test_generation_samples_groups_and_loads_new_weights(ray_local, tiny_model):
    import ray
    from transformers import AutoModelForCausalLM

    cfg = tiny_cfg(tiny_model, "generation.group_size=3")
    (gen,) = launch_generators(cfg, str(tiny_model))
    # generation.allocator=auto: vLLM runs on tcmalloc where it is installed (scripts/install.sh)
    assert "libtcmalloc" in ray.get(gen.__ray_call__.remote(lambda self: open("/proc/self/maps").read()))
    prompts = [Prompt(0, [1, 5, 6], "yes"), Prompt(1, [1, 7], "no")]
    out = ray.get(gen.generate.remote(prompts))
    assert len(out) == 6 and out.group_size == 3 and out.policy_version == 0
    assert all(len(r) == len(lp) for r, lp in zip(out.response_ids, out.behaviour_logp))

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    torch.manual_seed(0)
    with torch.no_grad():  # a policy far from the initial one: logits become peaked
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    state = {k: v.detach().clone() for k, v in model.named_parameters()}
    # as two learner ranks would publish them
    ray.get(gen.load_weights.remote(7, *[ray.put(shard_weights(state, r, 2)) for r in range(2)]))
    out = ray.get(gen.generate.remote(prompts))
    assert out.policy_version == 7
    for i in range(len(out)):
        prompt = prompts[i // 3].token_ids
        ref = hf_logprobs(model, prompt, out.response_ids[i])
        # vLLM's behaviour log-probs must be those of the *new* weights (stale tied lm_head would fail)
        assert torch.allclose(torch.tensor(out.behaviour_logp[i]), ref, atol=1e-3), i
    ray.kill(gen)


def test_reward_pool_survives_a_hostile_batch(ray_local, tiny_model):
    import ray

    # 3 s: room for the slow-but-finite cases on a busy machine; the tower of powers never finishes
    cfg = tiny_cfg(tiny_model, "reward.timeout_s=3.0", "reward.num_actors=2", "reward.workers_per_actor=2")
    rewards = launch_rewards(cfg)
    texts = [r"\boxed{4}", r"\boxed{9^{9^{9^{9^{9}}}}}", "x" * 200_000 + r"\boxed{4}", r"\boxed{5}", "\x00" * 10,
             r"\boxed{" + "{" * 3000, r"\boxed{2+2}", r"\boxed{100000000!}"]
    answers = ["4"] * len(texts)
    half = len(texts) // 2
    samples = [Sample(t, a) for t, a in zip(texts, answers)]
    parts = ray.get([rewards[0].score.remote(samples[:half]), rewards[1].score.remote(samples[half:])])
    results = parts[0][0] + parts[1][0]
    assert [r.score for r in results] == [1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
    assert results[1].status == "timeout"
    # the pool is healthy afterwards
    again = ray.get([rw.score.remote([Sample(r"\boxed{4}", "4"), Sample(r"\boxed{3}", "4")]) for rw in rewards])
    assert [[r.score for r in res] for res, _ in again] == [[1.0, 0.0], [1.0, 0.0]]
    [ray.kill(r) for r in rewards]


def make_batch(n=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    prompts = [[1] + torch.randint(4, 40, (int(torch.randint(2, 5, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]
    resp = [torch.randint(4, 40, (int(torch.randint(2, 6, (1,), generator=g)),), generator=g).tolist() for _ in range(n)]
    behaviour_logp = [(-3.6 + 0.1 * torch.randn(len(r), generator=g)).tolist() for r in resp]
    adv = torch.randn(n, generator=g).tolist()
    return prompts, resp, behaviour_logp, adv


def run_learners(ray, tiny_model, ranks, micro, batch, *extra):
    cfg = tiny_cfg(tiny_model, f"learner.num_ranks={ranks}", f"learner.micro_batch_size={micro}", "prompts_per_step=2",
                   "generation.group_size=4", "learner.lr=1e-2", "learner.mask.rho=0.3", *extra)
    learners = launch_learners(cfg, str(tiny_model))
    prompts, resp, behaviour_logp, adv, *masks = batch  # a fifth item: multi-turn model masks
    per = len(prompts) // ranks
    shards = [collate(prompts[r * per:(r + 1) * per], resp[r * per:(r + 1) * per], behaviour_logp[r * per:(r + 1) * per],
                      adv[r * per:(r + 1) * per], 0, sample_ids=list(range(r * per, (r + 1) * per)),
                      model_mask=masks[0][r * per:(r + 1) * per] if masks else None) for r in range(ranks)]
    metrics = ray.get([w.train_step.remote(s) for w, s in zip(learners, shards)])
    state = assemble_weights(ray.get([w.weight_shard.remote() for w in learners]))
    [ray.kill(w) for w in learners]
    return metrics, state


@pytest.mark.parametrize("aggregation, normalize", [
    ("token_mean", "all"), ("seq_mean_token_mean", "kept"), ("seq_mean_token_sum_norm", "all")])
def test_two_zero3_ranks_equal_one_process(ray_local, tiny_model, aggregation, normalize):
    """Batch-scope mask threshold, the loss and the update itself are split-invariant, every mode."""
    import ray

    batch = make_batch()
    modes = (f"learner.aggregation={aggregation}", f"learner.mask.normalize={normalize}")
    (m0,), _ = run_learners(ray, tiny_model, 1, 8, batch, *modes)  # the whole batch in one piece
    (m1,), s1 = run_learners(ray, tiny_model, 1, 4, batch, *modes)  # two micro-batches
    m2, s2 = run_learners(ray, tiny_model, 2, 2, batch, *modes)  # two ranks, two micro-batches each
    for key in ("mask/threshold", "mask/kept_tokens"):
        assert m0[key] == m1[key]
    assert m1["losses/loss"] == pytest.approx(m0["losses/loss"], rel=1e-5, abs=1e-7)
    assert m1["losses/grad_norm"] == pytest.approx(m0["losses/grad_norm"], rel=1e-4)
    assert m2[0]["mask/threshold"] == m2[1]["mask/threshold"] == m1["mask/threshold"]
    assert m2[0]["mask/kept_tokens"] == m1["mask/kept_tokens"]
    assert m2[0]["losses/loss"] == pytest.approx(m1["losses/loss"], rel=1e-5, abs=1e-7)
    assert m2[0]["losses/grad_norm"] == pytest.approx(m1["losses/grad_norm"], rel=1e-4)
    assert m1["losses/grad_norm"] > 0
    assert_same_update(tiny_model, s1, s2)


def assert_same_update(tiny_model, s1, s2, atol=1e-6):
    """Adam's first step is about lr * sign(g): where g is ~0, float summation order flips signs, so
    compare the updates as a whole and element-wise for all but a sliver of near-zero gradients.
    Several updates compound float noise: pass a larger atol (still a thousandth of lr = 1e-2)."""
    from safetensors.torch import load_file

    assert s1.keys() == s2.keys() and len(s1) > 0
    w0 = load_file(str(tiny_model / "model.safetensors"))
    d1 = torch.cat([(s1[k] - w0[k]).flatten() for k in s1])
    d2 = torch.cat([(s2[k] - w0[k]).flatten() for k in s1])
    assert d1.abs().max() > 1e-3  # the step really moved the weights
    assert torch.nn.functional.cosine_similarity(d1, d2, dim=0) > 0.999
    assert ((d1 - d2).abs() > atol).float().mean() < 0.01


def test_several_updates_per_batch_keep_the_mask_fixed(ray_local, tiny_model):
    """mini_batch_size=4 of 8 and 2 epochs: four optimizer updates on one rollout batch."""
    import ray

    (m,), s4 = run_learners(ray, tiny_model, 1, 2, make_batch(), "learner.mini_batch_size=4", "learner.epochs=2")
    (m_once,), s1 = run_learners(ray, tiny_model, 1, 2, make_batch())
    assert m["charts/optimizer_updates"] == 4 and m_once["charts/optimizer_updates"] == 1
    # the mask comes from the scoring pass before any update, so it is the same batch threshold
    assert m["mask/threshold"] == m_once["mask/threshold"]
    # later updates see a moved policy, so the clipped objective's statistics and the weights differ
    assert m["losses/approx_kl"] != pytest.approx(m_once["losses/approx_kl"])
    assert any(not torch.equal(s4[k], s1[k]) for k in s1)


def test_a_stale_batch_gets_a_bounded_update_on_real_zero3(ray_local, tiny_model):
    """Behaviour log-probs 8 nats below the learner's (a very stale rollout), negative advantages:
    the truncated importance weight caps each token's weight at is_cap = 2, so loss and gradient are
    exactly twice the on-policy ones instead of e^8 ~ 3000 times."""
    import ray
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    prompts, resp, _, adv = make_batch()
    on_policy = [hf_logprobs(model, p, r).tolist() for p, r in zip(prompts, resp)]
    stale = [[x - 8.0 for x in lp] for lp in on_policy]
    neg = [-abs(a) - 0.1 for a in adv]
    (m_on,), _ = run_learners(ray, tiny_model, 1, 4, (prompts, resp, on_policy, neg))
    (m_stale,), _ = run_learners(ray, tiny_model, 1, 4, (prompts, resp, stale, neg))
    assert m_on["off_policy/log_ratio_max"] < 1e-3 and m_on["off_policy/is_truncated_fraction"] == 0
    assert m_stale["off_policy/log_ratio_max"] == pytest.approx(8.0, abs=1e-3)
    assert m_stale["off_policy/is_truncated_fraction"] == 1.0
    assert m_stale["off_policy/is_weight_mean"] == pytest.approx(2.0)
    assert m_stale["losses/policy_loss"] == pytest.approx(2 * m_on["losses/policy_loss"], rel=1e-3)
    assert m_stale["losses/grad_norm"] == pytest.approx(2 * m_on["losses/grad_norm"], rel=1e-3)


def test_a_batch_without_signal_is_skipped_on_every_rank(ray_local, tiny_model):
    """All advantages zero (every group scored alike): no token is in scope, so both ranks skip
    the passes and the optimizer step together, and the weights stay as they were."""
    import ray
    from safetensors.torch import load_file

    prompts, resp, behaviour_logp, _ = make_batch()
    metrics, state = run_learners(ray, tiny_model, 2, 2, (prompts, resp, behaviour_logp, [0.0] * len(prompts)))
    assert [m["train/skipped_no_signal"] for m in metrics] == [1, 1]
    assert metrics[0]["charts/optimizer_updates"] == 0 and metrics[0]["mask/scope_fraction"] == 0
    w0 = load_file(str(tiny_model / "model.safetensors"))
    assert all(torch.equal(state[k], w0[k]) for k in state)


@pytest.mark.parametrize("extra", [(), ("learner.single_pass_max_tokens=0",)])
def test_a_non_finite_update_is_refused_on_every_rank(ray_local, tiny_model, extra):
    """One advantage is NaN (single pass and two-pass paths): the loss and gradient norm are not
    finite, so no rank applies the update, the step says so, and the weights stay as they were."""
    import ray
    from safetensors.torch import load_file

    prompts, resp, behaviour_logp, adv = make_batch()
    adv[1] = float("nan")
    metrics, state = run_learners(ray, tiny_model, 2, 2, (prompts, resp, behaviour_logp, adv), *extra)
    assert [m["train/nonfinite_updates"] for m in metrics] == [1, 1]
    assert metrics[0]["charts/optimizer_updates"] == 0
    w0 = load_file(str(tiny_model / "model.safetensors"))
    assert all(torch.equal(state[k], w0[k]) for k in state)


@pytest.mark.parametrize("extra", [(), ("learner.entropy_coef=0.01", "learner.kl_coef=0.05")])
def test_single_pass_equals_the_scoring_pass(ray_local, tiny_model, extra):
    """Holding each micro-batch's graph until the batch-wide mask is chosen (no scoring pass) is
    the same update as scoring first, then forward + backward: same mask, loss and weights."""
    import ray

    batch = make_batch(n=8, seed=3)
    (one,), s_one = run_learners(ray, tiny_model, 1, 2, batch, "learner.single_pass_max_tokens=100000", *extra)
    (two,), s_two = run_learners(ray, tiny_model, 1, 2, batch, "learner.single_pass_max_tokens=0", *extra)
    assert one["timing/score_s"] == 0.0 and two["timing/score_s"] > 0
    assert one["mask/threshold"] == pytest.approx(two["mask/threshold"], rel=1e-6)
    assert one["mask/kept_tokens"] == two["mask/kept_tokens"]
    for key in ("losses/loss", "losses/grad_norm", "losses/ref_kl", "losses/kept_entropy", "off_policy/is_weight_mean"):
        assert one[key] == pytest.approx(two[key], rel=1e-5, abs=1e-7), key
    assert one["losses/grad_norm"] > 0
    assert_same_update(tiny_model, s_one, s_two)


def grouped_batch(seed=8, prompts=2, group=4, multi_turn=False):
    """make_batch's shape (or multi_turn_batch's), but `prompts` prompts of `group` responses each,
    as a rollout has."""
    p, *rest = multi_turn_batch(prompts * group, seed) if multi_turn else make_batch(n=prompts * group, seed=seed)
    return ([p[i // group * group] for i in range(len(p))], *rest)


# The learner's forward as it was before packing and the kept-only projection: padded micro-batches,
# every response token projected with grad.
PADDED_FULL = ("learner.share_prompt=false", "learner.project_kept_only=false")


@pytest.mark.parametrize("ranks, extra", [
    (2, ()),  # single pass, top mask, two ranks (the defaults: shared prompt, kept-only projection)
    (1, ("learner.mini_batch_size=4", "learner.epochs=2", "learner.mask.mode=bottom",
         "learner.aggregation=seq_mean_token_sum_norm")),  # scoring pass, four updates
    (1, ("learner.entropy_coef=0.01", "learner.kl_coef=0.05", "learner.aggregation=seq_mean_token_mean",
         "learner.mask.normalize=kept")),  # the KL weighs every in-scope token, the bonus the kept ones
    (1, ("learner.mask.mode=none", "learner.single_pass_max_tokens=0")),  # scoring pass, one update
    (1, ("learner.max_tokens_per_micro_batch=20", "learner.max_packed_tokens=12",
         "learner.segment_attention=false")),  # by tokens, through the T x T mask; some rows padded
    (2, ("learner.mini_batch_size=4", "learner.epochs=2", "learner.max_tokens_per_micro_batch=8")),  # scoring
    # pass and four updates by tokens, on two ranks: their micro-batches differ in number
    (1, ("multi_turn",)),  # environment tokens inside the responses
])
def test_packing_sharing_and_the_kept_only_projection_are_the_same_update(ray_local, tiny_model, ranks, extra):
    """Packed micro-batches, each group's prompt forwarded once, and the vocabulary projection with
    grad on the weighed tokens only give the padded, fully projected path's mask, losses and
    weights, on every path; the model runs fewer positions and projects only the weighed tokens."""
    import ray

    multi_turn = "multi_turn" in extra
    extra = tuple(e for e in extra if e != "multi_turn")
    batch = grouped_batch(multi_turn=multi_turn)
    new, s_new = run_learners(ray, tiny_model, ranks, 2, batch, *extra)
    old, s_old = run_learners(ray, tiny_model, ranks, 2, batch, *PADDED_FULL,
                              *[e for e in extra if "max_" not in e])
    for a, b in zip(new, old):
        assert a["mask/threshold"] == pytest.approx(b["mask/threshold"], rel=1e-5, nan_ok=True)  # NaN: no mask
        assert a["mask/kept_tokens"] == b["mask/kept_tokens"]
        for key in ("losses/loss", "losses/grad_norm", "losses/approx_kl", "losses/ref_kl", "losses/kept_entropy",
                    "losses/clipfrac_high"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), key
    assert new[0]["losses/grad_norm"] > 0
    # four Adam updates (two epochs of two mini-batches) compound the packed row's float noise
    assert_same_update(tiny_model, s_new, s_old, atol=1e-5 if "learner.epochs=2" in extra else 1e-6)
    if "learner.max_packed_tokens=12" not in extra:  # there, rows of several sequences run padded
        assert new[0]["train/forwarded_tokens"] < old[0]["train/forwarded_tokens"]
    # per update: each of the four updates of two epochs projects one mini-batch, half the batch
    per_update = 0.5 if "learner.epochs=2" in extra else 1.0
    in_scope = round(old[0]["train/response_tokens"] * old[0]["mask/scope_fraction"])
    assert old[0]["train/projected_tokens"] == in_scope * per_update
    every_token = "learner.kl_coef=0.05" in extra or "learner.mask.mode=none" in extra
    weighed = in_scope if every_token else new[0]["mask/kept_tokens"]
    assert new[0]["train/projected_tokens"] == weighed * per_update
    assert every_token or weighed < in_scope
    if "learner.max_packed_tokens=12" in extra:  # some micro-batches packed, the longer ones padded;
        # segment attention (the tiny model passes its probe) has no T x T mask and packs them all
        packed, _ = run_learners(ray, tiny_model, ranks, 2, batch, *extra[:2])
        assert packed[0]["train/forwarded_tokens"] < new[0]["train/forwarded_tokens"]


def test_zero_advantage_rows_are_left_out_without_changing_the_update(ray_local, tiny_model):
    """Zero-advantage rows are out of the default scope, so the single pass does not forward
    them; a rank left with fewer micro-batches (here rank 0, with none) runs fillers to keep
    ZeRO-3's collectives in step. One rank, two ranks and the two-pass path agree."""
    import ray

    prompts, resp, behaviour_logp, _ = make_batch(n=8, seed=5)
    batch = (prompts, resp, behaviour_logp, [0.0, 0.0, 0.0, 0.0, 0.7, -1.2, 0.0, 0.4])
    (one,), s1 = run_learners(ray, tiny_model, 1, 2, batch)
    (two,), s2 = run_learners(ray, tiny_model, 1, 2, batch, "learner.single_pass_max_tokens=0")
    m2, s3 = run_learners(ray, tiny_model, 2, 2, batch)
    assert one["mask/scope_fraction"] < 0.6 and one["timing/score_s"] == 0.0
    assert one["mask/kept_tokens"] == two["mask/kept_tokens"] == m2[0]["mask/kept_tokens"] > 0
    for key in ("losses/loss", "losses/grad_norm", "mask/threshold"):
        assert one[key] == pytest.approx(two[key], rel=1e-5, abs=1e-7), key
        assert m2[0][key] == m2[1][key] == pytest.approx(one[key], rel=1e-5, abs=1e-7), key
    assert_same_update(tiny_model, s1, s2)
    assert_same_update(tiny_model, s1, s3)


def test_warm_up_moves_the_weights_from_the_first_update_and_logs_the_rate_used(ray_local, tiny_model):
    """warmup_steps=4: updates 1..5 use lr/4, lr/2, 3lr/4, lr, lr, as the weights themselves show
    (Adam's first step moves each weight by about its rate), and charts/lr says so."""
    import ray

    lr = 1e-2
    cfg = tiny_cfg(tiny_model, "learner.num_ranks=1", "learner.micro_batch_size=8", "prompts_per_step=2",
                   "generation.group_size=4", f"learner.lr={lr}", "learner.warmup_steps=4", "learner.weight_decay=0")
    (w,) = launch_learners(cfg, str(tiny_model))
    prompts, resp, behaviour_logp, adv = make_batch()
    shard = collate(prompts, resp, behaviour_logp, adv, 0)
    before = assemble_weights(ray.get([w.weight_shard.remote()]))
    rates, moves = [], []
    for _ in range(5):
        m = ray.get(w.train_step.remote(shard))
        after = assemble_weights(ray.get([w.weight_shard.remote()]))
        rates.append(m["charts/lr"])
        moves.append(max(float((after[k] - before[k]).abs().max()) for k in after))
        before = after
    ray.kill(w)
    assert rates == pytest.approx([lr / 4, lr / 2, 3 * lr / 4, lr, lr])
    assert moves[0] == pytest.approx(lr / 4, rel=0.05)  # the first update is not wasted at rate 0
    assert all(mv > 0 for mv in moves)


def test_the_random_control_is_the_same_mask_on_every_path(ray_local, tiny_model):
    """mask.mode=random draws each token's score from (seed, batch, sample id, position): the whole
    batch at once, micro-batches, two ranks and the two-pass path keep the same tokens."""
    import ray

    batch, arm = make_batch(n=8, seed=4), ("learner.mask.mode=random", "learner.mask.rho=0.3")
    (whole,), s0 = run_learners(ray, tiny_model, 1, 8, batch, *arm)
    (micro,), s1 = run_learners(ray, tiny_model, 1, 2, batch, *arm)
    (two_pass,), s2 = run_learners(ray, tiny_model, 1, 2, batch, *arm, "learner.single_pass_max_tokens=0")
    ranks, s3 = run_learners(ray, tiny_model, 2, 2, batch, *arm)
    for m in (micro, two_pass, ranks[0], ranks[1]):
        assert m["mask/threshold"] == whole["mask/threshold"] and m["mask/kept_tokens"] == whole["mask/kept_tokens"]
        assert m["losses/loss"] == pytest.approx(whole["losses/loss"], rel=1e-5, abs=1e-7)
    assert whole["losses/grad_norm"] > 0
    for s in (s1, s2, s3):
        assert_same_update(tiny_model, s0, s)


def multi_turn_batch(n=8, seed=6, env_logp=0.0):
    """make_batch's sequences with an environment segment of 1-6 tokens inside each response
    (its behaviour log-probs set to `env_logp`: nothing may read them)."""
    g = torch.Generator().manual_seed(seed)
    prompts, resp, behaviour_logp, adv = make_batch(n, seed)
    out_r, out_lp, masks = [], [], []
    for r, lp in zip(resp, behaviour_logp):
        cut, k = 1 + int(torch.randint(0, len(r) - 1, (1,), generator=g)), int(torch.randint(1, 7, (1,), generator=g))
        env = torch.randint(4, 40, (k,), generator=g).tolist()
        out_r.append(r[:cut] + env + r[cut:])
        out_lp.append(lp[:cut] + [env_logp] * k + lp[cut:])
        masks.append([True] * cut + [False] * k + [True] * (len(r) - cut))
    return prompts, out_r, out_lp, adv, masks


def test_multi_turn_batches_train_the_model_tokens_alike_on_every_path(ray_local, tiny_model):
    """Responses with environment tokens inside: the whole batch at once, two ranks of two
    micro-batches and the two-pass path choose the same mask over the model's tokens only and make the same
    update; the environment tokens' behaviour log-probs are never read."""
    import ray

    batch = multi_turn_batch()
    model_tokens = sum(sum(m) for m in batch[4])
    (whole,), s0 = run_learners(ray, tiny_model, 1, 8, batch)
    (two_pass,), s2 = run_learners(ray, tiny_model, 1, 2, batch, "learner.single_pass_max_tokens=0")
    ranks, s3 = run_learners(ray, tiny_model, 2, 2, batch)
    (garbage,), _ = run_learners(ray, tiny_model, 1, 8, multi_turn_batch(env_logp=123.0))
    assert whole["mask/kept_tokens"] == math.ceil(0.3 * model_tokens)  # rho of the model's tokens
    for m in (two_pass, ranks[0], ranks[1], garbage):  # micro-batches: two_pass and ranks run 2 a rank
        assert m["mask/threshold"] == pytest.approx(whole["mask/threshold"], rel=1e-6)
        assert m["mask/kept_tokens"] == whole["mask/kept_tokens"]
        assert m["losses/loss"] == pytest.approx(whole["losses/loss"], rel=1e-5, abs=1e-7)
        assert m["losses/grad_norm"] == pytest.approx(whole["losses/grad_norm"], rel=1e-4)
    assert garbage["off_policy/log_ratio_max"] == pytest.approx(whole["off_policy/log_ratio_max"], rel=1e-5)
    assert whole["losses/grad_norm"] > 0
    for s in (s2, s3):
        assert_same_update(tiny_model, s0, s)


def test_multi_turn_generation_keeps_the_sampled_ids_and_their_logprobs(ray_local, tiny_model):
    """A scripted environment answers two turns of 3 sampled tokens: each trajectory is the sampled
    ids with the observation ids between them, flagged, and vLLM's log-probs of the model's tokens
    are the policy's in that whole context (so the trained tokens are the sampled ones)."""
    import ray
    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = tiny_cfg(tiny_model, "generation.group_size=2", "generation.max_new_tokens=24",
                   "env.name=tests.fixtures.envs:Scripted", "env.max_turn_tokens=3", "env.max_turns=4")
    (gen,) = launch_generators(cfg, str(tiny_model))
    prompts = [Prompt(0, [1, 5, 6], "yes", "q0"), Prompt(1, [1, 7], "no", "q1")]
    out = ray.get(gen.generate.remote(prompts, seed=3))
    tok = AutoTokenizer.from_pretrained(tiny_model)
    obs = [tok.encode(f" obs{k} ", add_special_tokens=False) for k in (1, 2)]
    model = AutoModelForCausalLM.from_pretrained(tiny_model)
    assert len(out) == 4 and out.turns is not None
    for i in range(4):
        ids, mask = out.response_ids[i], out.model_mask[i]
        assert mask == [True] * 3 + [False] * len(obs[0]) + [True] * 3 + [False] * len(obs[1]) + [True] * 3
        assert ids[3:3 + len(obs[0])] == obs[0] and ids[6 + len(obs[0]):6 + len(obs[0]) + len(obs[1])] == obs[1]
        assert [t.tool for t in out.turns[i]] == ["ok", "ok", ""] and out.turns[i][-1].end == "done"
        ref = hf_logprobs(model, prompts[i // 2].token_ids, ids)  # (T,) every token in its full context
        m = torch.tensor(mask)
        assert torch.allclose(torch.tensor(out.behaviour_logp[i])[m], ref[m], atol=1e-3), i
        assert all(lp == 0.0 for lp, f in zip(out.behaviour_logp[i], mask) if not f)
    again = ray.get(gen.generate.remote(prompts, seed=3))
    assert again.response_ids == out.response_ids  # seeded: a restarted actor or a resume samples the same
    summary, batch = gen.evaluation.options(num_returns=2).remote(prompts, 1, 24, 0)
    ev, summary = ray.get(batch), ray.get(summary)  # what the driver fetches: no text, the same counts
    assert ev.tool_calls == summary.tool_calls == (2, 2) and ev.policy_version == summary.policy_version
    assert not hasattr(summary, "response_text")
    ray.kill(gen)


def test_the_learner_runs_dropout_models_in_eval_mode(ray_local, tiny_model, tmp_path):
    """A model with dropout 0.5: the learner's proximal log-probs equal transformers' in eval mode
    (with dropout on they would be noise, and so would the mask's entropies)."""
    import json
    import shutil

    import ray
    from transformers import AutoModelForCausalLM

    model_dir = tmp_path / "dropout"
    shutil.copytree(tiny_model, model_dir)
    config = json.loads((model_dir / "config.json").read_text())
    (model_dir / "config.json").write_text(json.dumps({**config, "attention_dropout": 0.5}))
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    prompts, resp, _, adv = make_batch()
    exact = [hf_logprobs(model, p, r).tolist() for p, r in zip(prompts, resp)]
    (m,), _ = run_learners(ray, model_dir, 1, 8, (prompts, resp, exact, adv))
    assert m["off_policy/log_ratio_max"] < 1e-3


def test_learner_ranks_run_on_the_configured_allocator_and_report_shared_memory(ray_local, tiny_model):
    """learner.allocator preloads jemalloc or tcmalloc into each rank's process (the install script
    puts both on this machine; 'auto' is tcmalloc here); 'system' leaves glibc's malloc. Either way
    a step reports the shared (object-store) pages in its resident set apart from the peak."""
    import ray

    batch = make_batch()
    mapped = {}
    for allocator in ("jemalloc", "auto", "system"):
        cfg = tiny_cfg(tiny_model, "prompts_per_step=2", "generation.group_size=4", f"learner.allocator={allocator}")
        (rank,) = launch_learners(cfg, str(tiny_model))
        maps = ray.get(rank.__ray_call__.remote(lambda self: open("/proc/self/maps").read()))
        mapped[allocator] = {lib for lib in ("libjemalloc", "libtcmalloc") if lib in maps}
        m = ray.get(rank.train_step.remote(collate(*batch[:4], 0)))
        ray.get(rank.publish_weights.options(num_returns=2).remote()[1])  # a publish writes into the object store
        m2 = ray.get(rank.train_step.remote(collate(*batch[:4], 0)))
        ray.kill(rank)
        assert m["memory/learner_peak_gb"] > 0 and 0 <= m["memory/learner_shared_gb"] < m["memory/learner_peak_gb"]
        assert m2["memory/learner_shared_gb"] >= m["memory/learner_shared_gb"]
    assert mapped == {"jemalloc": {"libjemalloc"}, "auto": {"libtcmalloc"}, "system": set()}


def test_a_missing_allocator_library_stops_the_run_before_it_starts(monkeypatch):
    import ctypes.util

    from launch.errors import ConfigError
    from launch.placement import allocator_env

    assert allocator_env("system") == {}
    assert allocator_env("tcmalloc")["LD_PRELOAD"].startswith("libtcmalloc_minimal.so.4")
    assert allocator_env("auto") == allocator_env("tcmalloc")
    monkeypatch.setattr(ctypes.util, "find_library", lambda name: None)
    assert allocator_env("system") == allocator_env("auto") == {}  # auto falls back to glibc's
    with pytest.raises(ConfigError, match="learner.allocator=jemalloc: libjemalloc.so.2 is not installed"):
        allocator_env("jemalloc")
    with pytest.raises(ConfigError, match="generation.allocator=tcmalloc: .* or set generation.allocator=system"):
        allocator_env("tcmalloc", "generation.allocator")
