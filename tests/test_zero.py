"""ZeRO-3 plumbing on one in-process rank (a subprocess: DeepSpeed's process group stays out of pytest)."""
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]

SCRIPT = r"""
import os, sys, torch, deepspeed
sys.path.insert(0, {repo!r})
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29400 + os.getpid() % 500), RANK="0", WORLD_SIZE="1",
                  LOCAL_RANK="0")
deepspeed.init_distributed(dist_backend="gloo")
import learner.zero
from launch.config_load import load_config
from learner.batch import collate
from learner.engine import PolicyTrainer
from tests.test_actors_ray import make_batch

# The scoring pass with two micro-batches: the gradient buffer is accumulated into, then stepped
# from; a clip this small scales every step's gradients (in the buffer itself, when it is shared).
base = ["model.path={model}", "learner.lr=1e-2", "learner.micro_batch_size=4", "learner.single_pass_max_tokens=0",
        "learner.grad_clip=1e-4"]
prompts, resp, logp, adv = make_batch()
shard = collate(prompts, resp, logp, adv, 0)

share_weights, share_grads = learner.zero.share_master_weights, learner.zero.share_gradient_buffer

def trained(share, *extra):
    cfg = load_config(None, [*base, *extra])
    learner.zero.share_master_weights = share_weights if share else (lambda optimizer: None)
    learner.zero.share_gradient_buffer = share_grads if share else (lambda optimizer: None)
    t = PolicyTrainer(cfg.learner, {model!r}, temperature=1.0, max_new_tokens=6, max_prompt_tokens=16,
                      batch_size=len(shard), seed=0)
    opt = t.engine.optimizer
    shared = [m.data_ptr() == p.data_ptr() for m, p in zip(opt.fp32_partitioned_groups_flat,
                                                           opt.fp16_partitioned_groups_flat)]
    stepped_from_buffer = []  # per optimizer step: does the master's .grad live in ZeRO-3's buffer?
    step = opt._optimizer_step

    def watched(sub_group_id):
        grad = opt.fp32_partitioned_groups_flat[sub_group_id].grad
        stepped_from_buffer.append(grad.untyped_storage().data_ptr()
                                   == opt.grad_partitions_flat_buffer.untyped_storage().data_ptr())
        return step(sub_group_id)
    opt._optimizer_step = watched
    before = torch.cat([v.clone() for v in t.weight_shard().parts.values()])
    for _ in range(2):
        t.train_step(shard)
    parts = {{k: v.clone() for k, v in t.weight_shard().parts.items()}}
    assert (torch.cat(list(parts.values())) - before).abs().max() > 1e-3  # the updates moved the weights
    return shared, stepped_from_buffer, parts

shared_a, buffer_a, a = trained(True)
shared_b, buffer_b, b = trained(False)
_, _, c = trained(True, "learner.recompute_pointwise=false")
assert all(shared_a) and len(shared_a) > 0, shared_a
assert not any(shared_b), shared_b
assert all(buffer_a) and len(buffer_a) == 2, buffer_a  # one step per train_step, each from the buffer
assert not any(buffer_b) and len(buffer_b) == 2, buffer_b
assert a.keys() == b.keys()
assert all(torch.equal(a[k], b[k]) for k in a), "one float32 copy of the weights or gradients changed the update"
assert all(torch.equal(a[k], c[k]) for k in a), "recomputing the norms and activations changed the update"
print("OK", len(a))
"""


def test_float32_training_keeps_one_copy_of_the_weights_and_of_the_gradients_and_the_same_update(tiny_model):
    """DeepSpeed's optimizer held a second float32 copy of the partition it trains in float32 (its
    device check compares a torch.device with a string), and flattened the reduced gradients into a
    new tensor before every step. With the master aliased to the partition and its .grad a view of
    ZeRO-3's gradient buffer, two clipped, accumulated updates are bit-equal to DeepSpeed's own
    copying path, the master is the module's own partition, and every step reads the buffer. The
    pointwise recompute (on by default) is bit-equal to holding those activations, on ZeRO-3."""
    code = SCRIPT.format(repo=str(REPO), model=str(tiny_model))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]


def tiny(arch: str):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.for_model(arch, vocab_size=100, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                               num_attention_heads=4, num_key_value_heads=2, n_embd=64, n_layer=2, n_head=4)
    torch.manual_seed(0)
    return AutoModelForCausalLM.from_config(cfg, dtype=torch.float32).eval()


def saved_bytes_and_grads(model, ids):
    """(bytes the forward leaves allocated, which is what autograd holds for the backward plus the
    loss, every trainable parameter's gradient). Counted from the allocator's events (torch's profiler), so
    a tensor that a saved-tensor hook still holds counts, whichever hook holds it."""
    params = {k: p for k, p in model.named_parameters() if p.requires_grad}
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], profile_memory=True) as prof:
        loss = model(input_ids=ids).logits.logsumexp(-1).sum()
    held = sum(e.self_cpu_memory_usage for e in prof.events())
    grads = torch.autograd.grad(loss, list(params.values()))
    return held, dict(zip(params, grads))


def test_pointwise_recompute_holds_less_for_the_same_gradients():
    """learner.recompute_pointwise: the norms' normalised copies, the MLPs' activations act(gate)
    and their products act(gate) * up (down_proj's input) are recomputed in the backward, not
    held; the gradients are bit-identical. Llama's and Qwen2's SwiGLU MLPs qualify; GPT-2 (a GELU
    MLP, LayerNorm) is left exactly as it was."""
    import copy

    from learner.zero import recompute_pointwise

    ids = torch.randint(0, 100, (3, 40))
    for arch in ("llama", "qwen2"):
        plain = tiny(arch)
        lean = copy.deepcopy(plain)
        assert recompute_pointwise(lean) == 2 + 5  # 2 MLPs; 2 norms a layer and the final one
        held_plain, g_plain = saved_bytes_and_grads(plain, ids)
        held_lean, g_lean = saved_bytes_and_grads(lean, ids)
        act = 3 * 40 * 128 * 4  # one MLP's act(gate), or its product with up, in float32
        norm = 3 * 40 * 64 * 4  # one norm's normalised copy
        assert held_lean <= held_plain - 2 * 2 * act - 4 * norm, (arch, held_plain, held_lean)
        assert all(torch.equal(g_plain[k], g_lean[k]) for k in g_plain), arch
    assert recompute_pointwise(tiny("gpt2")) == 0


def test_pointwise_recompute_under_lora_adapters():
    """peft's LoRA layers wrap down_proj (its adapter saves the product too): the recomputed
    product serves them as well, for less memory and bit-identical adapter gradients."""
    import copy

    from peft import LoraConfig, get_peft_model

    from learner.zero import recompute_pointwise

    plain = get_peft_model(tiny("llama"), LoraConfig(r=4, lora_alpha=8, target_modules="all-linear"))
    for name, p in plain.named_parameters():
        if "lora_B" in name:  # peft starts B at zero: no gradient would reach lora_A
            torch.nn.init.normal_(p)
    lean = copy.deepcopy(plain)
    assert recompute_pointwise(lean) == 2 + 5
    ids = torch.randint(0, 100, (3, 40))
    held_plain, g_plain = saved_bytes_and_grads(plain, ids)
    held_lean, g_lean = saved_bytes_and_grads(lean, ids)
    assert held_lean <= held_plain - 2 * 2 * 3 * 40 * 128 * 4, (held_plain, held_lean)
    assert g_plain.keys() == g_lean.keys() and all(torch.equal(g_plain[k], g_lean[k]) for k in g_plain)
