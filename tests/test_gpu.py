"""The learner's CUDA path: one ZeRO-3 rank on nccl in bf16, in this process (no Ray needed).

Marked `gpu`: runs wherever CUDA exists and is skipped, with the reason shown, where it does not.
"""
import os

import pytest
import torch

from launch.config_load import load_config

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA: this machine has no GPU")]


@pytest.fixture(scope="module")
def nccl_group():
    import deepspeed
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT="29561", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
    torch.cuda.set_device(0)
    deepspeed.init_distributed(dist_backend="nccl")
    yield
    dist.destroy_process_group()


def trainer(tiny_model, *overrides):
    from learner.engine import PolicyTrainer

    cfg = load_config(None, [f"model.path={tiny_model}", "learner.micro_batch_size=4", "learner.lr=1e-3",
                             "learner.mask.rho=0.3", *overrides])
    return PolicyTrainer(cfg.learner, str(tiny_model), temperature=1.0, max_new_tokens=8, max_prompt_tokens=8,
                         batch_size=8, seed=0)


def batch():
    from learner.batch import collate

    g = torch.Generator().manual_seed(0)
    prompts = [[1] + torch.randint(4, 40, (3 + i % 3,), generator=g).tolist() for i in range(8)]
    resp = [torch.randint(4, 40, (2 + i % 5,), generator=g).tolist() for i in range(8)]
    behaviour_logp = [(-3.6 + 0.1 * torch.randn(len(r), generator=g)).tolist() for r in resp]
    return collate(prompts, resp, behaviour_logp, torch.randn(8, generator=g).tolist(), 0)


def test_bf16_single_pass_matches_the_scoring_pass_on_cuda(nccl_group, tiny_model):
    one = trainer(tiny_model, "learner.single_pass_max_tokens=100000")
    m1 = one.train_step(batch())
    two = trainer(tiny_model, "learner.single_pass_max_tokens=0")
    m2 = two.train_step(batch())
    assert one.engine.module.dtype == torch.bfloat16 and one.device.type == "cuda"
    assert m1["timing/score_s"] == 0.0 and m2["timing/score_s"] > 0
    assert m1["mask/kept_tokens"] == m2["mask/kept_tokens"]
    assert m1["losses/loss"] == pytest.approx(m2["losses/loss"], rel=2e-2, abs=1e-4)
    assert m1["losses/grad_norm"] == pytest.approx(m2["losses/grad_norm"], rel=2e-2)
    assert 0 < m1["memory/learner_peak_gb"] < 10


def test_weight_shards_assemble_to_the_trained_weights_on_cuda(nccl_group, tiny_model):
    import deepspeed

    from learner.weights import assemble_weights

    t = trainer(tiny_model, "learner.publish_dtype=float32")
    t.train_step(batch())
    state = assemble_weights([t.weight_shard()])
    for name, p in t.engine.module.named_parameters():
        with deepspeed.zero.GatheredParameters([p]):
            assert torch.equal(state[name], p.detach().float().cpu()), name


def test_single_gpu_mode_trains_end_to_end(tiny_model, tmp_path):
    """configs/single_gpu.yaml on the one GPU: vLLM sleeps while the learner steps and wakes to
    sample; two steps finish, and the step after a sleep/wake cycle still samples from the
    published weights (staleness 0)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    run_dir = tmp_path / "run"
    data = tmp_path / "yes.jsonl"
    data.write_text("".join(json.dumps({"prompt": f"say yes {i}", "answer": "yes"}) + "\n" for i in range(32)))
    res = subprocess.run([str(Path(sys.executable).parent / "forkrl"), "train", "--config",
                          str(repo / "configs/single_gpu.yaml"), f"model.path={tiny_model}", "model.chat_template=false",
                          "data.instruction=", f"data.train_files={data}", "reward.fn=starts_with", "steps=2",
                          "prompts_per_step=4", "generation.max_new_tokens=8", "generation.max_model_len=128",
                          "data.max_prompt_tokens=64", "eval.every=0", f"tracking.run_dir={run_dir}",
                          "tracking.wandb_mode=disabled"], cwd=repo, capture_output=True, text=True, timeout=900)
    assert res.returncode == 0, res.stderr[-3000:]
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [1, 2] and all(r["staleness/max"] == 0 for r in rows)
