import random

import pytest

from actors.types import Prompt, RolloutBatch
from launch.rollouts import choose_groups, to_groups, train_shards
from rewards.result import RewardResult


def rollout(n_prompts, g, version, base=0):
    prompts = [Prompt(base + i, [1, 2 + i], "yes") for i in range(n_prompts)]
    resp = [[5, 6 + j] for _ in range(n_prompts) for j in range(g)]
    lps = [[-0.5, -0.7] for _ in resp]
    return RolloutBatch(prompts, g, resp, lps, ["x"] * len(resp), [True] * len(resp), version, 0.1)


def results(scores):
    return [RewardResult(float(s), "correct" if s else "wrong") for s in scores]


def test_groups_follow_rollout_order_and_drop_uninformative():
    parts = [rollout(2, 3, 4), rollout(1, 3, 5, base=10)]
    groups = to_groups(parts, [results([1, 0, 1, 0, 0, 0]), results([1, 1, 1])])
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
    groups = to_groups([rollout(4, 2, 0)], [results([1, 0, 0, 0, 1, 1, 0, 1])])
    shards = train_shards(groups, [], "drgrpo", 0.1, 2, 0, random.Random(0))
    assert [len(s) for s in shards] == [4, 4]
    advs = sorted(float(a) for s in shards for a in s.advantages)
    assert advs == [-0.5, -0.5, 0.0, 0.0, 0.0, 0.0, 0.5, 0.5]


@pytest.mark.parametrize("n,parts", [(0, 2), (1, 3), (7, 2), (8, 2), (8, 3), (5, 8), (64, 5)])
def test_contiguous_slices_cover_every_item_once_in_order(n, parts):
    from launch.groups import contiguous_slices

    cut = contiguous_slices(n, parts)
    assert len(cut) <= parts and all(s.stop > s.start for s in cut)
    assert [i for s in cut for i in range(n)[s]] == list(range(n))  # concatenated results line up
