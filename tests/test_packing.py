"""Packed micro-batches (learner/packing.py) against the padded forward, on the tiny model."""
import pytest
import torch

from learner.batch import collate
from learner.packing import pack, packed_tokens, groups_of, prompt_keys, token_budget_micro_batches


def grouped_shard():
    g = torch.Generator().manual_seed(0)
    prompts = [[1, 5, 6, 7]] * 3 + [[1, 9, 9]] * 2 + [[1, 5, 6, 7]]  # the last row's group is not adjacent
    resp = [torch.randint(4, 40, (int(torch.randint(2, 7, (1,), generator=g)),), generator=g).tolist() for _ in prompts]
    return collate(prompts, resp, [[-1.0] * len(r) for r in resp], [1.0] * len(prompts), 0)


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("share", [False, True])
def test_a_packed_row_gives_every_token_its_padded_hidden_state(tiny_model, attn, share):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=attn).eval()
    sh = grouped_shard()
    row = pack(sh.input_ids, sh.attention_mask.sum(1), sh.prompt_lens, sh.valid, share, torch.float32)
    with torch.no_grad():
        ref = model(input_ids=sh.input_ids, attention_mask=sh.attention_mask,
                    output_hidden_states=True).hidden_states[-1][:, :-1][sh.valid]
        out = model(input_ids=row.input_ids, attention_mask=row.attention_mask, position_ids=row.position_ids,
                    output_hidden_states=True).hidden_states[-1][0, row.predictors]
    assert out.shape == ref.shape and torch.allclose(out, ref, atol=1e-5)
    lengths = sh.attention_mask.sum(1).tolist()
    # unshared: every real token once; shared: the two prompts once each, not six times
    expected = sum(lengths) if not share else sum(lengths) - 4 * 3 - 3 * 1
    assert row.input_ids.shape[1] == expected == packed_tokens(lengths, sh.prompt_lens.tolist(),
                                                               groups_of(sh.input_ids, sh.prompt_lens, share))


def test_responses_of_a_shared_prompt_never_see_each_other():
    sh = grouped_shard()
    row = pack(sh.input_ids, sh.attention_mask.sum(1), sh.prompt_lens, sh.valid, True, torch.float32)
    allowed = row.attention_mask[0, 0] == 0  # (T, T)
    p = 4
    r0 = int(sh.attention_mask[0].sum()) - p  # the first response follows the prompt
    first_of_second = p + r0
    assert allowed[first_of_second, :p].all()  # the second response sees the whole prompt
    assert not allowed[first_of_second, p:first_of_second].any()  # and nothing of the first response
    assert allowed[first_of_second, first_of_second]
    assert row.position_ids[0, first_of_second] == p  # at its own position
    assert not allowed.triu(1).any()  # nothing attends to a later token


def test_token_budget_runs_pay_each_prompt_once_and_never_exceed_the_budget():
    sh = grouped_shard()
    lengths, plens = sh.attention_mask.sum(1).tolist(), sh.prompt_lens.tolist()
    keys = prompt_keys(sh.input_ids, sh.prompt_lens)
    for share in (False, True):
        runs = token_budget_micro_batches(list(range(6)), lengths, plens, keys, 14, share)
        assert sorted(i for r in runs for i in r) == list(range(6))
        assert len(runs) == (6 if not share else 5)  # shared, rows 3 and 4 fit together on one prompt
        for r in runs:
            cost = packed_tokens([lengths[i] for i in r], [plens[i] for i in r],
                                 groups_of(sh.input_ids[r], sh.prompt_lens[r], share))
            assert cost <= 14 or len(r) == 1


def test_activation_checkpointing_recomputes_each_layer_and_keeps_dropout_off(tiny_model):
    from transformers import AutoModelForCausalLM

    from learner.zero import enable_checkpointing

    calls = {}
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    grads = []
    for on in (False, True):
        model = AutoModelForCausalLM.from_pretrained(tiny_model).eval()
        model.config.use_cache = False
        if on:
            enable_checkpointing(model)
        layer = model.model.layers[0]
        calls[on] = 0
        # a pre-hook: the recompute stops as soon as it has what the backward needs, before any post-hook
        layer.register_forward_pre_hook(lambda *_: calls.__setitem__(on, calls[on] + 1))
        model(input_ids=ids).logits.float().logsumexp(-1).sum().backward()
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
        assert not any(m.training for m in model.modules() if isinstance(m, torch.nn.Dropout))
    assert calls == {False: 1, True: 2}  # forwarded again in the backward
    assert torch.allclose(grads[0], grads[1], atol=1e-6)


def test_rows_split_by_count_or_by_tokens_and_in_scope_rows_come_shortest_first_by_group():
    from learner.packing import in_scope_order, split_rows

    shard = grouped_shard()
    rows = torch.arange(len(shard))
    assert [r.tolist() for r in split_rows(rows, shard.input_ids, shard.attention_mask, shard.prompt_lens, 4, 0,
                                           True)] == [[0, 1, 2, 3], [4, 5]]
    lengths = shard.attention_mask.sum(dim=1).tolist()
    by_tokens = split_rows(rows, shard.input_ids, shard.attention_mask, shard.prompt_lens, 4, 12, False)
    assert torch.cat(by_tokens).tolist() == rows.tolist()  # every row once, in order
    assert all(len(m) == 1 or sum(lengths[i] for i in m.tolist()) <= 12 for m in by_tokens)
    valid = shard.valid.clone()
    valid[1] = False  # out of scope: not forwarded
    order = in_scope_order(valid, shard.attention_mask, shard.input_ids, shard.prompt_lens, share=True)
    assert 1 not in order.tolist() and sorted(order.tolist()) == [0, 2, 3, 4, 5]
    keys = [tuple(shard.input_ids[i, : int(shard.prompt_lens[i])].tolist()) for i in order.tolist()]
    assert keys == sorted(keys, key=keys.index)  # a group's rows side by side


def _segment_model(tiny_model):
    from transformers import AutoModelForCausalLM

    from learner.attention import SEGMENT_ATTENTION, register

    register()
    return AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation=SEGMENT_ATTENTION).eval()


@pytest.mark.parametrize("share", [False, True])
def test_segment_attention_gives_the_masked_rows_hidden_states_and_gradients(tiny_model, share):
    """Attention by segments (no T x T mask) against the padded forward: the same hidden state for
    every scored token and the same gradient of every parameter, with prompts of two lengths in
    one row and, shared, responses that must not see each other."""
    from learner.attention import LAYOUT_KWARG

    model = _segment_model(tiny_model)
    sh = grouped_shard()
    row = pack(sh.input_ids, sh.attention_mask.sum(1), sh.prompt_lens, sh.valid, share, torch.float32, dense=False)
    assert row.attention_mask is None
    w = torch.randn(model.config.hidden_size, generator=torch.Generator().manual_seed(1))
    outs, grads = [], []
    for packed in (False, True):
        model.zero_grad()
        if packed:
            h = model(input_ids=row.input_ids, attention_mask=torch.ones_like(row.input_ids),
                      position_ids=row.position_ids, output_hidden_states=True,
                      **{LAYOUT_KWARG: row.layout}).hidden_states[-1][0, row.predictors]
        else:
            h = model(input_ids=sh.input_ids, attention_mask=sh.attention_mask,
                      output_hidden_states=True).hidden_states[-1][:, :-1][sh.valid]
        (h @ w).tanh().sum().backward()
        outs.append(h.detach())
        grads.append(torch.cat([p.grad.flatten() for p in model.parameters()]))
    assert torch.allclose(outs[1], outs[0], atol=1e-5)
    # relative to the largest gradient: the embedding's sums many positions' terms in another order
    assert (grads[1] - grads[0]).abs().max() <= 1e-5 * grads[0].abs().max() and grads[0].abs().sum() > 0


def test_segment_layout_builds_each_responses_mask_and_refuses_pieces_that_do_not_tile_the_row():
    from learner.attention import segment_layout

    lay = segment_layout([(0, 3, [(3, 2), (5, 1)]), (6, 1, [(7, 3)])], row_len=10)
    assert [m.shape for m in lay.masks] == [(2, 5), (1, 4), (3, 4)]
    # the second response's query sees the prompt's 3 keys and itself
    assert lay.masks[1].tolist() == [[True, True, True, True]]
    assert lay.masks[2].tolist() == [[True, True, False, False], [True, True, True, False], [True, True, True, True]]
    for bad, row_len in (([(0, 3, [(4, 2)])], 6), ([(0, 3, [(3, 2)])], 6)):  # a gap; a row left uncovered
        with pytest.raises(ValueError, match="segment layout"):
            segment_layout(bad, row_len)


def test_the_probe_refuses_segment_attention_where_the_model_would_ignore_it(tiny_model, monkeypatch):
    """The start-up probe passes the tiny Llama, names the attention a plainly loaded model uses,
    and catches a model that attends across the whole row whatever the layout says."""
    from transformers import AutoModelForCausalLM

    import learner.attention as attention
    from learner.probes import segment_attention_reason

    class Engine:  # what the probe reads of a DeepSpeed engine: call and .module
        def __init__(self, m):
            self.module = m

        def __call__(self, **kw):
            return self.module(**kw)

    cpu = torch.device("cpu")
    assert segment_attention_reason(Engine(_segment_model(tiny_model)), cpu, torch.float32) is None
    plain = AutoModelForCausalLM.from_pretrained(tiny_model, attn_implementation="sdpa").eval()
    assert "attn_implementation='sdpa'" in segment_attention_reason(Engine(plain), cpu, torch.float32)

    def whole_row(q, k, v, layout, scaling):  # causal over the row: the layout ignored
        return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=scaling,
                                                                enable_gqa=True)

    monkeypatch.setattr(attention, "segment_attention", whole_row)
    assert "differ" in segment_attention_reason(Engine(_segment_model(tiny_model)), cpu, torch.float32)
