"""ZeRO-3 plumbing on one in-process rank (a subprocess: DeepSpeed's process group stays out of pytest)."""
import subprocess
import sys
from pathlib import Path

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
cfg = load_config(None, ["model.path={model}", "learner.lr=1e-2", "learner.micro_batch_size=4",
                         "learner.single_pass_max_tokens=0", "learner.grad_clip=1e-4"])
prompts, resp, logp, adv = make_batch()
shard = collate(prompts, resp, logp, adv, 0)

share_weights, share_grads = learner.zero.share_master_weights, learner.zero.share_gradient_buffer

def trained(share):
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
assert all(shared_a) and len(shared_a) > 0, shared_a
assert not any(shared_b), shared_b
assert all(buffer_a) and len(buffer_a) == 2, buffer_a  # one step per train_step, each from the buffer
assert not any(buffer_b) and len(buffer_b) == 2, buffer_b
assert a.keys() == b.keys()
assert all(torch.equal(a[k], b[k]) for k in a), "one float32 copy of the weights or gradients changed the update"
print("OK", len(a))
"""


def test_float32_training_keeps_one_copy_of_the_weights_and_of_the_gradients_and_the_same_update(tiny_model):
    """DeepSpeed's optimizer held a second float32 copy of the partition it trains in float32 (its
    device check compares a torch.device with a string), and flattened the reduced gradients into a
    new tensor before every step. With the master aliased to the partition and its .grad a view of
    ZeRO-3's gradient buffer, two clipped, accumulated updates are bit-equal to DeepSpeed's own
    copying path, the master is the module's own partition, and every step reads the buffer."""
    code = SCRIPT.format(repo=str(REPO), model=str(tiny_model))
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr[-3000:]
