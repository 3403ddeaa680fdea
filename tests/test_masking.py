import math

import pytest
import torch

from learner.masking import entropy_mask, kth_largest, select_tokens


def brute_mask(entropy, valid, rho):
    vals = entropy[valid]
    k = math.ceil(rho * vals.numel() - 1e-9)
    tau = torch.sort(vals, descending=True).values[k - 1]
    return valid & (entropy >= tau)


@pytest.mark.parametrize("n", [1, 2, 3, 17, 1000])
def test_kth_largest_matches_sort_including_negatives_and_zero(n):
    g = torch.Generator().manual_seed(n)
    x = torch.randn(n, generator=g) * 5
    x[0] = 0.0
    s = torch.sort(x, descending=True).values
    for k in {1, (n + 1) // 2, n}:
        assert kth_largest(x, k) == s[k - 1].item()


@pytest.mark.parametrize("rho", [0.2, 0.5, 0.05, 1.0])
def test_entropy_mask_is_the_nearest_rank_quantile(rho):
    g = torch.Generator().manual_seed(1)
    ent = torch.rand(16, 50, generator=g) * 4
    valid = torch.rand(16, 50, generator=g) > 0.3
    mask = entropy_mask(ent, valid, rho)
    assert mask.shape == ent.shape and mask.dtype == torch.bool
    assert torch.equal(mask, brute_mask(ent, valid, rho))
    assert mask.sum() == math.ceil(rho * valid.sum().item() - 1e-9)  # no ties in random floats


def test_ties_at_the_threshold_are_all_kept():
    ent = torch.tensor([[1.0, 2.0, 2.0, 2.0, 0.5]])
    valid = torch.ones_like(ent, dtype=torch.bool)
    mask = entropy_mask(ent, valid, 0.2)  # k = 1 -> tau = 2.0, shared by three tokens
    assert mask.tolist() == [[False, True, True, True, False]]


def test_padding_and_prompt_tokens_are_never_selected_even_with_huge_entropy():
    ent = torch.tensor([[9.0, 9.0, 1.0, 2.0, 3.0], [9.0, 0.1, 0.2, 9.0, 9.0]])
    valid = torch.tensor([[False, False, True, True, True], [False, True, True, False, False]])
    mask = entropy_mask(ent, valid, 0.4)  # 5 valid -> keep 2: entropies 3.0 and 2.0
    assert mask.tolist() == [[False, False, False, True, True], [False] * 5]
    assert not (mask & ~valid).any()


def test_bottom_random_none_modes():
    g = torch.Generator().manual_seed(2)
    ent = torch.rand(8, 40, generator=g)
    valid = torch.rand(8, 40, generator=g) > 0.2
    n = valid.sum().item()
    top, _ = select_tokens(ent, valid, "top", 0.2)
    bottom, _ = select_tokens(ent, valid, "bottom", 0.2)
    assert bottom.sum() == math.ceil(0.8 * n - 1e-9)
    # The lowest 80% and the top 20% meet in at most the one token that both ceilings round onto.
    assert ent[bottom].max() <= ent[top].min() and (bottom & top).sum() <= 1
    r1, _ = select_tokens(ent, valid, "random", 0.2, generator=torch.Generator().manual_seed(5))
    r2, _ = select_tokens(ent, valid, "random", 0.2, generator=torch.Generator().manual_seed(5))
    assert torch.equal(r1, r2) and r1.sum() == math.ceil(0.2 * n - 1e-9) and not (r1 & ~valid).any()
    assert not torch.equal(r1, top)
    none, tau = select_tokens(ent, valid, "none", 0.2)
    assert torch.equal(none, valid) and math.isnan(tau)


def test_rho_outside_range_is_rejected():
    with pytest.raises(ValueError, match="rho"):
        select_tokens(torch.rand(2, 2), torch.ones(2, 2, dtype=torch.bool), "top", 1.5)


def test_sharded_selection_with_summed_histograms_equals_single_process():
    """Simulates ranks: each shard's histograms are summed by a shared reducer, as all_reduce does."""
    g = torch.Generator().manual_seed(3)
    ent = torch.rand(12, 30, generator=g)
    valid = torch.rand(12, 30, generator=g) > 0.25
    whole, tau_whole = select_tokens(ent, valid, "top", 0.2)
    shards = [(ent[:5], valid[:5]), (ent[5:], valid[5:])]

    # Run both "ranks" in lockstep: every call to reduce collects one tensor per shard.
    import threading

    barrier, box, lock = threading.Barrier(2), {}, threading.Lock()

    def reduce(t):
        with lock:
            box.setdefault("acc", []).append(t)
        barrier.wait()
        out = sum(box["acc"])
        barrier.wait()
        with lock:
            box.pop("acc", None)
        barrier.wait()
        return out

    results = [None, None]

    def rank(i):
        results[i] = select_tokens(shards[i][0], shards[i][1], "top", 0.2, reduce)

    threads = [threading.Thread(target=rank, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert results[0][1] == results[1][1] == tau_whole
    assert torch.equal(torch.cat([results[0][0], results[1][0]]), whole)


def test_more_than_16m_tokens():
    """torch.quantile refuses inputs over 16M elements; the radix select does not."""
    n = 17_000_000
    g = torch.Generator().manual_seed(4)
    ent = torch.rand(n, generator=g)
    valid = torch.ones(n, dtype=torch.bool)
    valid[:1000] = False
    mask, tau = select_tokens(ent, valid, "top", 0.2)
    k = math.ceil(0.2 * (n - 1000) - 1e-9)
    assert tau == torch.topk(ent[1000:], k).values[-1].item()
    assert mask.sum().item() >= k and not mask[:1000].any()


def test_random_scores_depend_on_seed_batch_sample_and_position_only():
    from learner.masking import random_scores

    ids = torch.tensor([7, 3, 11, 0, 5])
    a = random_scores(0, 4, ids, 50)
    perm = torch.tensor([2, 0, 4, 1, 3])
    assert torch.equal(random_scores(0, 4, ids[perm], 50), a[perm])  # row order does not matter
    assert torch.equal(random_scores(0, 4, ids, 20), a[:, :20])  # nor the padded width
    assert not torch.equal(random_scores(0, 5, ids, 50), a) and not torch.equal(random_scores(1, 4, ids, 50), a)
    big = random_scores(0, 1, torch.arange(400), 500)  # (400, 500)
    assert 0 < float(big.min()) and float(big.max()) < 1
    assert abs(float(big.mean()) - 0.5) < 0.01 and abs(float(big.std()) - (1 / 12) ** 0.5) < 0.01
    x, y = big[:, :-1].flatten(), big[:, 1:].flatten()  # neighbouring positions are unrelated
    assert abs(float(torch.corrcoef(torch.stack([x, y]))[0, 1])) < 0.01
    assert big.flatten().unique().numel() > 0.999 * big.numel()
