"""The decoupled off-policy objective, verdict-based advantages, mask scope and the KL's gradient.

Pure CPU tests on plain tensors; shapes in the comments.
"""
import math
import random

import pytest
import torch

from pathlib import Path

from actors.types import Prompt, RolloutBatch
from launch.errors import ConfigError
from launch.config_load import load_config
from launch.rollouts import choose_groups, plan_shards, to_groups
from learner.batch import collate_plan
from learner.advantages import compute_advantages, group_is_informative
from learner.losses import (BatchCounts, clipped_pg_loss, importance_weights, kl_penalty, kl_sample_weights,
                            token_weights)
from learner.masking import scope_tokens, select_tokens
from rewards.result import RewardResult

REPO = Path(__file__).resolve().parents[1]


def plain_clipped_loss(logp, old, adv, w, lo, hi):
    """The clipped surrogate against one old policy, written out independently."""
    r = torch.exp(logp - old)
    a = adv[:, None]
    return (torch.maximum(-a * r, -a * r.clamp(1 - lo, 1 + hi)) * w).sum()


# -- the decoupled, bounded objective ------------------------------------------------------------

def test_stale_negative_tokens_get_a_bounded_loss_and_gradient():
    # (N=2, T=3): the behaviour policy gave these tokens log-prob 8 below the learner's (stale)
    prox = torch.full((2, 3), -1.0)
    behaviour = prox - 8.0
    logp = prox.clone().requires_grad_(True)
    adv = torch.tensor([-1.0, -2.0])
    w = torch.full((2, 3), 1 / 6)
    # Against the behaviour policy (the old objective) the ratio is e^8 ~ 2981: unbounded weight.
    old_loss = plain_clipped_loss(logp, behaviour, adv, w, 0.2, 0.28)
    (old_grad,) = torch.autograd.grad(old_loss, logp)
    assert old_grad.abs().max() > 900
    loss, _ = clipped_pg_loss(logp, prox, behaviour, adv, w, 0.2, 0.28, dual_clip=3.0, is_cap=2.0)
    (grad,) = torch.autograd.grad(loss, logp)
    bound = 2.0 * 3.0 * adv.abs()[:, None] * w  # is_cap * dual_clip * |A| * w per token
    assert (grad.abs() <= bound + 1e-6).all()
    assert loss.item() == pytest.approx(2.0 * (1 + 2) * 3 / 6)  # w_is = 2 (truncated), ratio 1


def test_dual_clip_bounds_a_later_update_on_negative_tokens():
    # A later mini-batch update moved the current policy far above the proximal one.
    prox = torch.zeros(1, 2)
    logp = torch.tensor([[math.log(50.0), 0.0]], requires_grad=True)
    loss, stats = clipped_pg_loss(logp, prox, prox, torch.tensor([-1.0]), torch.ones(1, 2), 0.2, 0.28, 3.0, 2.0)
    (grad,) = torch.autograd.grad(loss, logp)
    assert loss.item() == pytest.approx(3.0 + 1.0)  # the first token is capped at c * |A|
    assert grad[0, 0] == 0 and stats["dual_clip"].item() == 1.0


def test_positive_token_pushed_past_the_clip_by_staleness_still_learns():
    # vLLM (behaviour) gave the token prob e^-2, the learner already has e^-1: a ratio of e against
    # behaviour would sit above 1 + 0.28 and get exactly zero gradient in the old objective.
    prox = torch.full((1, 1), -1.0)
    behaviour = torch.full((1, 1), -2.0)
    logp = prox.clone().requires_grad_(True)
    w = torch.ones(1, 1)
    (old_grad,) = torch.autograd.grad(plain_clipped_loss(logp, behaviour, torch.tensor([1.0]), w, 0.2, 0.28), logp)
    assert old_grad.item() == 0
    loss, _ = clipped_pg_loss(logp, prox, behaviour, torch.tensor([1.0]), w, 0.2, 0.28, 3.0, 2.0)
    (grad,) = torch.autograd.grad(loss, logp)
    assert grad.item() == pytest.approx(-2.0)  # -A * ratio(1) * min(e, 2)


def test_behaviour_equal_to_proximal_gives_the_plain_clipped_loss_and_gradient():
    torch.manual_seed(0)
    prox = torch.randn(4, 6) - 2
    logp = (prox + 0.3 * torch.randn(4, 6)).requires_grad_(True)
    adv = torch.tensor([1.0, -0.5, 0.7, -1.2])
    w = torch.rand(4, 6)
    ref = plain_clipped_loss(logp, prox, adv, w, 0.2, 0.28)
    new, _ = clipped_pg_loss(logp, prox, prox, adv, w, 0.2, 0.28, dual_clip=0.0, is_cap=2.0)
    (g_ref,) = torch.autograd.grad(ref, logp)
    (g_new,) = torch.autograd.grad(new, logp)
    assert new.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(g_new, g_ref)


def test_importance_weights_truncate_and_turn_off():
    prox = torch.tensor([[0.0, 0.0, 0.0]])
    behaviour = torch.tensor([[0.5, -0.5, -5.0]])  # w = e^-0.5, e^0.5, e^5
    w = importance_weights(prox, behaviour, 2.0)
    assert torch.allclose(w, torch.tensor([[math.exp(-0.5), math.exp(0.5), 2.0]]))
    assert torch.equal(importance_weights(prox, behaviour, 0.0), torch.ones(1, 3))


# -- the KL regulariser's gradient ----------------------------------------------------------------

def expected_gradient(theta, q_logp, estimator, sample_logp=None, weights_fn=None):
    """d/dtheta of E_{x~p}[k(x)] with x held fixed, enumerated exactly over a small vocabulary:
    sum_x s(x) * w(x) * grad k_x, with s the sampling distribution (p unless given)."""
    logp = torch.log_softmax(theta, -1)  # (V,)
    s = (sample_logp if sample_logp is not None else logp).detach().exp()
    k = kl_penalty(logp[None], q_logp[None], estimator)[0]  # (V,)
    w = weights_fn(logp) if weights_fn else torch.ones_like(k)
    (g,) = torch.autograd.grad((s * w * k).sum(), theta)
    return g


def kl_gradient(theta, q_logp, reverse):
    logp = torch.log_softmax(theta, -1)
    kl = (q_logp.exp() * (q_logp - logp)).sum() if reverse else (logp.exp() * (logp - q_logp)).sum()
    (g,) = torch.autograd.grad(kl, theta)
    return g


def test_k2_gradient_is_that_of_kl_p_ref_and_k3_that_of_kl_ref_p():
    torch.manual_seed(3)
    theta = torch.randn(7, requires_grad=True)
    q = torch.log_softmax(torch.randn(7), -1)
    assert torch.allclose(expected_gradient(theta, q, "k2"), kl_gradient(theta, q, reverse=False), atol=1e-6)
    assert torch.allclose(expected_gradient(theta, q, "k3"), kl_gradient(theta, q, reverse=True), atol=1e-6)
    assert not torch.allclose(expected_gradient(theta, q, "k3"), kl_gradient(theta, q, reverse=False), atol=1e-3)


def test_kl_sample_weights_correct_for_sampling_from_the_behaviour_policy():
    torch.manual_seed(4)
    theta = torch.randn(7, requires_grad=True)
    q = torch.log_softmax(torch.randn(7), -1)
    mu = torch.log_softmax(theta.detach() + 0.3 * torch.randn(7), -1)  # a nearby, stale policy
    weights = lambda logp: kl_sample_weights(logp[None], mu[None], is_cap=100.0)[0]  # noqa: E731
    corrected = expected_gradient(theta, q, "k2", sample_logp=mu, weights_fn=weights)
    uncorrected = expected_gradient(theta, q, "k2", sample_logp=mu)
    truth = kl_gradient(theta, q, reverse=False)
    assert torch.allclose(corrected, truth, atol=1e-5)
    assert (uncorrected - truth).abs().max() > 1e-3


# -- advantages on the verdict, informative groups, failed verifications ------------------------------

def test_w_reinforce_reads_the_verdict_not_the_shaped_score():
    # format bonus: a wrong boxed answer scores 0.2; overlong: a correct long answer scores 1 - 1 = 0
    rewards = torch.tensor([[0.2, 0.0, 1.0, 0.2]])  # (P=1, G=4)
    correct = torch.tensor([[False, False, False, True]])
    inc = torch.ones(1, 4, dtype=torch.bool)
    adv = compute_advantages(rewards, correct, inc, "w_reinforce", 0.1)
    assert torch.equal(adv, torch.tensor([[-1.0, -1.0, -1.0, 0.1]]))


def test_an_all_wrong_group_is_trained_under_w_reinforce_but_dropped_under_grpo():
    r, c, inc = torch.zeros(4), torch.zeros(4, dtype=torch.bool), torch.ones(4, dtype=torch.bool)
    assert not group_is_informative(r, c, inc, "grpo")
    assert not group_is_informative(r, c, inc, "rloo")
    assert group_is_informative(r, c, inc, "w_reinforce", 0.1)
    assert group_is_informative(r, c, inc, "reinforce_pp")  # its baseline is the batch's
    ones = torch.ones(4)
    assert not group_is_informative(ones, ones.bool(), inc, "w_reinforce", 0.0)  # NSR: all right, no signal
    adv = compute_advantages(r[None], c[None], inc[None], "w_reinforce", 0.1)
    assert torch.equal(adv, torch.full((1, 4), -1.0))


def rollout(n_prompts, g, version=0):
    prompts = [Prompt(i, [1, 2 + i], "yes") for i in range(n_prompts)]
    resp = [[5, 6 + j, 7] for _ in range(n_prompts) for j in range(g)]
    return RolloutBatch(prompts, g, resp, [[-0.5, -0.7, -0.9] for _ in resp], ["x"] * len(resp), [True] * len(resp),
                        version, 0.1)


def scored(part, results):  # results: [the part's results]
    """Groups of one rollout batch, and a function giving the ranks' shards the way they collate them."""
    groups = to_groups([part.prompts], [part.summary()], results)

    def shards(chosen, fill, *args):
        return [collate_plan(plan, tuple([part] * len(used))) for plan, used in plan_shards(chosen, fill, *args)]
    return groups, shards


def res(*specs):
    """('correct'|'wrong'|'timeout'|..., score) pairs -> RewardResults."""
    return [RewardResult(score, status) for status, score in specs]


@pytest.mark.parametrize("estimator", ["grpo", "drgrpo", "rloo", "reinforce_pp", "w_reinforce"])
def test_fill_groups_get_zero_advantage_under_every_estimator(estimator):
    groups, shards = scored(rollout(3, 2), [res(("correct", 1.0), ("wrong", 0.0), ("wrong", 0.0), ("wrong", 0.0),
                                             ("correct", 1.0), ("correct", 1.0))])
    good = [g for g in groups if g.informative(estimator, 0.1)]
    dull = [g for g in groups if not g.informative(estimator, 0.1)]
    chosen, fill = choose_groups(good[:1], dull + good[1:], 3)  # one informative group, two fill groups
    (shard,) = shards(chosen, fill, estimator, 0.1, 1, 0, random.Random(0))
    # the fill groups' responses are exactly those with advantage 0; the real group's are non-zero
    assert int((shard.advantages == 0).sum()) == 4
    assert int((shard.advantages != 0).sum()) == 2


def test_failed_verifications_leave_the_baseline_and_the_gradient():
    groups, shards = scored(rollout(1, 4), [res(("correct", 1.0), ("crashed", 0.0), ("wrong", 0.0), ("error", 0.0))])
    assert groups[0].verified == [True, False, True, False]
    (shard,) = shards(groups, [], "drgrpo", 0.1, 1, 0, random.Random(0))
    # baseline over the two verified responses only: mean 0.5 -> +0.5 / -0.5; failed ones 0
    by_row = sorted(zip(shard.advantages.tolist(), shard.valid.any(dim=1).tolist()))
    assert by_row == [(-0.5, True), (0.0, False), (0.0, False), (0.5, True)]


def test_a_timeout_is_a_wrong_answer_not_an_excluded_one():
    """A solution that hangs (or an answer that keeps the verifier past its limit) must not fare
    better than a wrong one: it stays in the baseline and gets a wrong answer's advantage."""
    groups, shards = scored(rollout(1, 4), [res(("correct", 1.0), ("timeout", 0.0), ("wrong", 0.0), ("wrong", 0.0))])
    assert groups[0].verified == [True, True, True, True] and groups[0].informative("grpo", 0.1)
    (shard,) = shards(groups, [], "drgrpo", 0.1, 1, 0, random.Random(0))
    adv = shard.advantages.tolist()
    assert sorted(adv) == pytest.approx([-0.25, -0.25, -0.25, 0.75])  # the timeout's is the wrong ones'


def test_a_group_with_one_verified_response_has_no_baseline():
    groups, shards = scored(rollout(1, 3), [res(("correct", 1.0), ("error", 0.0), ("crashed", 0.0))])
    assert not groups[0].informative("grpo", 0.1)
    assert groups[0].informative("w_reinforce", 0.1)  # no baseline needed: +lam on the verdict


# -- mask scope -------------------------------------------------------------------------------------

def test_scope_informative_keeps_rho_of_the_informative_tokens():
    torch.manual_seed(5)
    n, t = 16, 40
    valid = torch.rand(n, t) > 0.2  # (N, T)
    adv = torch.tensor([0.0] * 10 + [1.0, -1.0] * 3)  # 10 of 16 sequences carry no signal
    entropy = torch.rand(n, t) * 3
    entropy[adv == 0] += 1.0  # uninformative sequences happen to be the high-entropy ones
    rho = 0.2
    informative = valid & (adv[:, None] != 0)
    scope = scope_tokens(valid, adv, "informative")
    assert torch.equal(scope, informative)
    keep, _ = select_tokens(entropy, scope, "top", rho)
    share = (keep & informative).sum().item() / informative.sum().item()
    assert share == pytest.approx(math.ceil(rho * informative.sum().item()) / informative.sum().item())
    assert abs(share - rho) < 1 / informative.sum().item() + 1e-9
    keep_all, _ = select_tokens(entropy, scope_tokens(valid, adv, "all"), "top", rho)
    assert (keep_all & informative).sum().item() / informative.sum().item() < rho / 2  # the budget went elsewhere
    # with every sequence informative (as after dynamic sampling) the scopes agree
    busy = torch.ones(n)
    assert torch.equal(scope_tokens(valid, busy, "informative"), scope_tokens(valid, busy, "all"))


def test_scope_sets_the_denominators():
    valid = torch.tensor([[True, True, True, True], [True, True, False, False]])
    adv = torch.tensor([0.0, 1.0])
    scope = scope_tokens(valid, adv, "informative")
    keep = torch.tensor([[False, False, False, False], [True, False, False, False]])
    counts = BatchCounts(int(scope.sum()), int(keep.sum()), int(scope.any(1).sum()), int(keep.any(1).sum()))
    assert token_weights(scope, keep, "token_mean", "all", counts, 4)[1, 0] == pytest.approx(1 / 2)
    assert token_weights(scope, keep, "seq_mean_token_mean", "all", counts, 4)[1, 0] == pytest.approx(1 / 2 / 1)


def test_dr_grpo_divides_by_a_constant_whatever_share_of_the_groups_carries_signal():
    """seq_mean_token_sum_norm: 1 / (max_len x every sequence of the batch). With half the groups
    out of scope (zero advantage) a kept token's weight is what it is with all of them in scope."""
    valid = torch.ones(4, 3, dtype=torch.bool)
    keep = torch.zeros(4, 3, dtype=torch.bool)
    keep[0, 0] = True
    weights = []
    for adv in (torch.tensor([1.0, -1.0, 0.5, -0.5]), torch.tensor([1.0, -1.0, 0.0, 0.0])):
        scope = scope_tokens(valid, adv, "informative")
        counts = BatchCounts(int(scope.sum()), int(keep.sum()), int(scope.any(1).sum()), int(keep.any(1).sum()),
                             rows=4)
        weights.append(token_weights(scope, keep, "seq_mean_token_sum_norm", "all", counts, 8)[0, 0].item())
    assert weights[0] == weights[1] == pytest.approx(1 / (8 * 4))


# -- config refusals -----------------------------------------------------------------------------------

@pytest.mark.parametrize("override, needle", [
    ("generation.top_p=0.9", "generation.top_p: must be 1.0"),
    ("learner.kl_estimator=k1", "zero expected gradient"),
    ("learner.mask.scope=some", "learner.mask.scope: must be one of informative, all"),
    ("learner.is_cap=0.5", "learner.is_cap: must be 0 (off) or >= 1"),
    ("learner.advantage=ppo", "learner.advantage: must be one of grpo"),
])
def test_config_refuses_biased_or_meaningless_settings(override, needle):
    with pytest.raises(ConfigError, match=None) as e:
        load_config(None, [override])
    assert needle in str(e.value)


def test_config_refuses_kept_normalisation_with_a_constant_denominator():
    with pytest.raises(ConfigError, match="learner.mask.normalize"):
        load_config(None, ["learner.aggregation=seq_mean_token_sum_norm", "learner.mask.normalize=kept"])
    cfg = load_config(None, [])
    assert (cfg.learner.dual_clip, cfg.learner.is_cap, cfg.learner.mask.scope) == (3.0, 2.0, "informative")


# -- signal follows the verdict ----------------------------------------------------------------------

@pytest.mark.parametrize("estimator", ["grpo", "drgrpo", "rloo"])
def test_a_shaping_difference_alone_carries_no_signal(estimator):
    """The demo's case: an all-wrong group where one response ran long (overlong penalty -0.125).
    Under the reward rule GRPO gives the short wrong answers +0.354 and the long one -2.475, the
    advantages of a group with one right answer of eight; under the verdict rule (default) it
    gets exactly 0 and dynamic sampling drops it, and a group whose verdicts differ still trains."""
    wrong = [RewardResult(0.0, "wrong")] * 7 + [RewardResult(-0.125, "wrong")]
    right = [RewardResult(1.0, "correct")] * 7 + [RewardResult(0.875, "correct")]
    mixed = [RewardResult(1.0, "correct")] + [RewardResult(0.0, "wrong")] * 6 + [RewardResult(-0.125, "wrong")]
    groups, shards = scored(rollout(3, 8), [wrong + right + mixed])
    assert [g.informative(estimator, 0.1) for g in groups] == [False, False, True]
    chosen, fill = choose_groups([g for g in groups if g.informative(estimator, 0.1)],
                                 [g for g in groups if not g.informative(estimator, 0.1)], 1)
    assert [g.prompt.uid for g in chosen] == [2] and fill == []
    (shard,) = shards(groups, [], estimator, 0.1, 1, 0, random.Random(0))
    trained = {round(float(a), 6) for a in shard.advantages}
    adv = compute_advantages(torch.tensor([[r.score for r in g] for g in (wrong, right, mixed)]),
                             torch.tensor([[r.status == "correct" for r in g] for g in (wrong, right, mixed)]),
                             torch.ones(3, 8, dtype=torch.bool), estimator)
    assert torch.equal(adv[:2], torch.zeros(2, 8)) and bool((adv[2] != 0).all())
    assert trained == {round(float(a), 6) for a in adv.flatten()}
    # the reward rule keeps today's behaviour, for partial-credit rewards and shaping studies
    assert [g.informative(estimator, 0.1, "reward") for g in groups] == [True, True, True]
    if estimator == "grpo":
        old = compute_advantages(torch.tensor([[r.score for r in wrong]]), torch.zeros(1, 8, dtype=torch.bool),
                                 torch.ones(1, 8, dtype=torch.bool), "grpo", signal="reward")
        assert old[0, 0].item() == pytest.approx(0.354, abs=1e-3) and old[0, 7].item() == pytest.approx(-2.475, abs=1e-3)


def test_reinforce_pp_takes_the_verdict_rule_over_the_batch():
    lengths = torch.tensor([[0.0, 0.0, -0.125, 0.0], [0.0, -0.5, 0.0, 0.0]])  # all wrong, lengths differ
    wrong, every = torch.zeros(2, 4, dtype=torch.bool), torch.ones(2, 4, dtype=torch.bool)
    assert torch.equal(compute_advantages(lengths, wrong, every, "reinforce_pp"), torch.zeros(2, 4))
    assert bool((compute_advantages(lengths, wrong, every, "reinforce_pp", signal="reward") != 0).any())
    one_right = wrong.clone()
    one_right[1, 2] = True
    assert bool((compute_advantages(lengths + one_right, one_right, every, "reinforce_pp")[0] < 0).all())


def test_w_reinforce_keeps_training_all_wrong_groups():
    adv = compute_advantages(torch.zeros(1, 4), torch.zeros(1, 4, dtype=torch.bool), torch.ones(1, 4, dtype=torch.bool),
                             "w_reinforce", 0.1)
    assert torch.equal(adv, torch.full((1, 4), -1.0))


def test_configs_that_would_train_something_else_than_they_say_are_refused():
    with pytest.raises(ConfigError, match="learner.mask.rho: rho=1 with mode=bottom keeps a single token"):
        load_config(REPO / "configs/tiny.yaml", ["learner.mask.mode=bottom", "learner.mask.rho=1.0"])
    with pytest.raises(ConfigError, match="learner.advantage: w_reinforce reads only the verifier's verdict"):
        load_config(REPO / "configs/tiny.yaml", ["learner.advantage=w_reinforce", "reward.overlong_weight=1.0",
                                                  "reward.overlong_cache=4"])
    with pytest.raises(ConfigError, match="learner.signal"):
        load_config(REPO / "configs/tiny.yaml", ["learner.signal=shaped"])
    assert load_config(REPO / "configs/tiny.yaml", ["learner.signal=reward"]).learner.signal == "reward"
