import random

import pytest

from actors.types import Prompt, RolloutBatch
from learner.batch import collate_plan
from launch.rollouts import choose_groups, plan_shards, to_groups
from rewards.result import RewardResult


def rollout(n_prompts, g, version, base=0):
    prompts = [Prompt(base + i, [1, 2 + i], "yes") for i in range(n_prompts)]
    resp = [[5, 6 + j] for _ in range(n_prompts) for j in range(g)]
    lps = [[-0.5, -0.7] for _ in resp]
    return RolloutBatch(prompts, g, resp, lps, ["x"] * len(resp), [True] * len(resp), version, 0.1)


def groups_of(parts, results):
    return to_groups([p.prompts for p in parts], [p.summary() for p in parts], results)


def shards_of(parts, groups, fill, *args):
    """What each learner rank collates from its plan and the parts it was handed."""
    return [collate_plan(plan, tuple(parts[i] for i in used)) for plan, used in plan_shards(groups, fill, *args)]


def results(scores):
    return [RewardResult(float(s), "correct" if s else "wrong") for s in scores]


def test_groups_follow_rollout_order_and_drop_uninformative():
    parts = [rollout(2, 3, 4), rollout(1, 3, 5, base=10)]
    groups = groups_of(parts, [results([1, 0, 1, 0, 0, 0]), results([1, 1, 1])])
    assert [g.prompt.uid for g in groups] == [0, 1, 10]
    assert [g.rewards for g in groups] == [[1, 0, 1], [0, 0, 0], [1, 1, 1]]
    assert [g.informative("grpo", 0.1) for g in groups] == [True, False, False]
    assert [g.policy_version for g in groups] == [4, 4, 5]
    good = [g for g in groups if g.informative("grpo", 0.1)]
    dull = [g for g in groups if not g.informative("grpo", 0.1)]
    chosen, fill = choose_groups(good, dull, 2)
    assert [g.prompt.uid for g in chosen + fill] == [0, 1] and len(fill) == 1
    chosen, fill = choose_groups(good * 3, dull, 2)
    assert fill == [] and all(g.informative("grpo", 0.1) for g in chosen)


def test_train_shards_split_evenly_with_group_advantages():
    parts = [rollout(4, 2, 0)]
    groups = groups_of(parts, [results([1, 0, 0, 0, 1, 1, 0, 1])])
    shards = shards_of(parts, groups, [], "drgrpo", 0.1, 2, 0, random.Random(0))
    assert [len(s) for s in shards] == [4, 4]
    advs = sorted(float(a) for s in shards for a in s.advantages)
    assert advs == [-0.5, -0.5, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5]


@pytest.mark.parametrize("n,parts", [(0, 2), (1, 3), (7, 2), (8, 2), (8, 3), (5, 8), (64, 5)])
def test_contiguous_slices_cover_every_item_once_in_order(n, parts):
    from launch.groups import contiguous_slices

    cut = contiguous_slices(n, parts)
    assert len(cut) <= parts and all(s.stop > s.start for s in cut)
    assert [i for s in cut for i in range(n)[s]] == list(range(n))  # concatenated results line up


def test_ranks_collate_from_their_plans_exactly_what_the_whole_batch_holds():
    """Two parts, multi-turn masks on one, two ranks: every response lands on exactly one rank,
    with its own prompt, tokens, log-probs, model mask and advantage, and the ranks read only the
    parts their rows are in."""
    import torch

    from actors.types import Turn
    from learner.batch import collate

    a = rollout(2, 2, 0)
    b = RolloutBatch([Prompt(7, [9, 9, 9], "no")], 2, [[4, 4, 4], [3]], [[-0.1, -0.2, -0.3], [-0.4]], ["u", "v"],
                     [True, False], 0, 0.1, model_mask=[[True, False, True], [True]],
                     turns=[(Turn("u", "obs", "ok", "done"),), (Turn("v", "", "", "budget"),)])
    parts = [a, b]
    groups = groups_of(parts, [results([1, 0, 0, 1]), results([1, 0])])
    plans = plan_shards(groups, [], "grpo", 0.1, 2, 0, random.Random(3))
    flat = [(p, i) for p, part in enumerate(parts) for i in range(len(part))]
    seen = []
    for plan, used in plans:
        got = collate_plan(plan, tuple(parts[i] for i in used))
        rows = [(used[k], r) for k, r in plan.rows]
        assert set(used) == {p for p, _ in rows}  # a rank is handed only the parts it reads
        want = collate([parts[p].prompts[r // 2].token_ids for p, r in rows], [parts[p].response_ids[r] for p, r in rows],
                       [parts[p].behaviour_logp[r] for p, r in rows], plan.advantages, 0, sample_ids=plan.sample_ids,
                       model_mask=[None if parts[p].model_mask is None else parts[p].model_mask[r] for p, r in rows])
        for f in ("input_ids", "attention_mask", "valid", "behaviour_logp", "advantages", "sample_ids", "prompt_lens"):
            assert torch.equal(getattr(got, f), getattr(want, f)), f
        seen += [flat.index(x) for x in rows]
        assert plan.sample_ids == [flat.index(x) for x in rows]  # ids in the whole batch, whatever rank holds them
    assert sorted(seen) == list(range(6))
    s = b.summary(123)
    assert (s.lengths, s.finished, s.payload_bytes) == ([3, 1], [True, False], 123)
    assert [(t.turns, t.tool_calls, t.end, t.model_tokens, t.tokens) for t in s.trajectories] == \
        [(1, ("ok",), "done", 2, 3), (1, (), "budget", 1, 1)]


def test_a_step_whose_rollouts_were_lost_samples_its_batches_again_and_selects_as_before():
    """driver.resample: every batch of the step (dynamic sampling's rounds too) is submitted again
    with its batch number (hence its seeds) and prompts, in order; the loss counts as one actor
    failure; the step's groups are chosen from the new responses by the same rule."""
    from pathlib import Path
    from types import SimpleNamespace

    from launch import driver
    from launch.config_load import load_config
    from launch.groups import Collected, FaultCounts, InFlight
    from launch.resume import Progress
    from launch.rollouts import RewardHealth

    cfg = load_config(Path(__file__).resolve().parents[1] / "configs/tiny.yaml",
                      ["prompts_per_step=2", "generation.group_size=2", "dynamic_sampling=true", "learner.signal=verdict"])

    class Actors:  # the driver's side of ActorGroups: what resample calls
        def __init__(self):
            self.faults, self.submitted, self.failures = FaultCounts(), [], []

        def count_restart(self, cause):
            self.failures.append(cause)

        def submit(self, prompts, batch):
            self.submitted.append((batch, [p.uid for p in prompts]))
            return InFlight([], batch, prompts, 0, 0)

        def collect(self, b):  # prompt uid 0 mod 3: all wrong; others mixed
            part = RolloutBatch(b.prompts, 2, [[5]] * 4, [[-0.1]] * 4, ["x"] * 4, [True] * 4, 0, 0.1)
            res = [r for p in b.prompts for r in results([0, 0] if p.uid % 3 == 0 else [1, 0])]
            return Collected([b.prompts], [part.summary()], [f"ref{b.batch}"], [res], 0.1, [b], 10)

    actors = Actors()
    run = SimpleNamespace(cfg=cfg, actors=actors, progress=Progress(random.Random(0)), health=RewardHealth("f", 1.0, 3))
    first = [Prompt(0, [1], "y"), Prompt(3, [1], "y")]  # no signal: dynamic sampling took a second round
    second = [Prompt(4, [1], "y"), Prompt(5, [1], "y")]
    lost = actors.collect(InFlight([], 7, first, 0, 0))
    lost.extend(actors.collect(InFlight([], 8, second, 0, 0)))
    out = driver.resample(run, driver.select(run, lost), "node gone")
    assert actors.submitted == [(7, [0, 3]), (8, [4, 5])]  # the same batches, in order
    assert actors.failures == ["node gone"] and actors.faults.resubmitted_prompts == 4
    assert [g.prompt.uid for g in out.groups] == [4, 5] and out.collected.payloads == ["ref7", "ref8"]
    assert out.metrics["dynamic/rounds"] == 2 and [g.part for g in out.groups] == [1, 1]


def test_groups_go_whole_to_ranks_with_their_tokens_balanced():
    """Four groups of very different lengths on two ranks: each group's responses all on one rank
    (its prompt then runs once), two groups a rank, the ranks' forwarded tokens balanced (the
    longest group with the shortest), each rank reading only the batches its groups are in. Three
    groups on two ranks cannot go whole: responses are split by count, as before."""
    from launch.rollouts import balance_groups, rank_token_imbalance

    def long_rollout(n_prompts, g, lengths, base):
        prompts = [Prompt(base + i, [1, 2, 3], "yes") for i in range(n_prompts)]
        resp = [[5] * n for n in lengths]
        return RolloutBatch(prompts, g, resp, [[-0.5] * n for n in lengths], ["x"] * len(resp), [True] * len(resp), 0, 0.1)

    parts = [long_rollout(2, 2, [40, 40, 1, 1], 0), long_rollout(2, 2, [30, 30, 10, 10], 10)]
    groups = groups_of(parts, [results([1, 0, 1, 0]), results([0, 1, 1, 0])])
    assert [g.lengths for g in groups] == [(40, 40), (1, 1), (30, 30), (10, 10)]
    assert [g.tokens(True) for g in groups] == [83, 5, 63, 23] and groups[0].tokens(False) == 86
    plans = plan_shards(groups, [], "grpo", 0.1, 2, 0, random.Random(0))
    by_rank = [{(used[b], r // 2) for b, r in plan.rows} for plan, used in plans]  # (part, group in part)
    assert by_rank == [{(0, 0), (0, 1)}, {(1, 0), (1, 1)}]  # 83 + 5 against 63 + 23
    assert [plan.tokens for plan, _ in plans] == [88, 86] and [used for _, used in plans] == [[0], [1]]
    assert rank_token_imbalance(plans) == 88 / 87
    flat = sorted(i for plan, _ in plans for i in plan.sample_ids)
    assert flat == list(range(8))
    # without a shared prompt each row's prompt counts
    assert [p.tokens for p, _ in plan_shards(groups, [], "grpo", 0.1, 2, 0, random.Random(0), share_prompt=False)] \
        == [94, 92]
    # one rank: every row, shuffled as before (the single-rank plan is what it was)
    (one, _), = plan_shards(groups, [], "grpo", 0.1, 1, 0, random.Random(5))
    order = list(range(8))
    random.Random(5).shuffle(order)
    assert one.sample_ids == order
    # three groups on two ranks: split by count
    plans = plan_shards(groups[:3], [], "grpo", 0.1, 2, 0, random.Random(0))
    assert [len(plan.rows) for plan, _ in plans] == [3, 3]
    # the balance itself: equal counts, every group once, loads within the largest group's size
    rng = random.Random(1)
    for _ in range(50):
        ranks = rng.choice([2, 3, 4])
        tokens = [rng.randint(1, 1000) for _ in range(ranks * rng.randint(1, 6))]
        shares = balance_groups(tokens, ranks)
        assert sorted(i for s in shares for i in s) == list(range(len(tokens)))
        assert len({len(s) for s in shares}) == 1
        loads = [sum(tokens[i] for i in s) for s in shares]
        assert max(loads) - min(loads) <= max(tokens)
