"""LoRA policies (learner.lora): peft adapters under ZeRO-3, adapter-only publishes, merged loads."""
import pytest
import torch

from actors.types import Prompt
from launch.errors import ConfigError
from launch.config_load import load_config
from learner.batch import collate
from learner.weights import PEFT_PREFIX, LoraSpec, merge_lora, shard_weights
from tests.test_actors_ray import hf_logprobs, make_batch, run_learners, tiny_cfg

LORA = ("learner.lora.rank=4", "learner.lora.alpha=8")


def peft_policy(tiny_model, seed=0, targets="all-linear"):
    """The tiny model under peft with random (non-zero) B, as a trained adapter would be."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                           LoraConfig(r=4, lora_alpha=8, target_modules=targets, lora_dropout=0.0))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.3)
    return model.eval()


def saved_adapters(model) -> dict[str, torch.Tensor]:
    from peft import get_peft_model_state_dict

    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}


@pytest.mark.unit
def test_merge_lora_equals_peft_merge(tiny_model):
    """merge_lora on peft's saved names gives peft's own merge_and_unload weights, and the model's outputs."""
    from safetensors.torch import load_file

    model = peft_policy(tiny_model)
    adapters = saved_adapters(model)
    assert all(k.startswith(PEFT_PREFIX) for k in adapters)
    ids = torch.tensor([[1, 5, 6, 7, 8, 9]])
    with torch.no_grad():
        want_logits = model(input_ids=ids).logits
    merged = merge_lora(load_file(str(tiny_model / "model.safetensors")), adapters,
                        LoraSpec(4, 8.0, tuple(sorted(model.peft_config["default"].target_modules))))
    plain = model.merge_and_unload()
    for k, v in plain.state_dict().items():
        if k in merged:
            assert torch.allclose(merged[k], v, atol=1e-6), k
    changed = [k for k in merged if "proj" in k]
    assert len(changed) == 2 * 7  # 2 layers x q, k, v, o, gate, up, down
    plain.load_state_dict(merged, strict=False)
    with torch.no_grad():
        assert torch.allclose(plain(input_ids=ids).logits, want_logits, atol=1e-5)


@pytest.mark.unit
def test_an_exported_adapter_loads_in_peft_and_the_merged_folder_in_transformers(tiny_model, tmp_path):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from launch.checkpoint import export_weights

    model = peft_policy(tiny_model, seed=1)
    adapters = saved_adapters(model)
    spec = LoraSpec(4, 8.0, tuple(sorted(model.peft_config["default"].target_modules)))
    out = export_weights([shard_weights(adapters, r, 2, spec) for r in range(2)], str(tiny_model), tmp_path / "step_3")
    ids = torch.tensor([[1, 9, 8, 7, 6]])
    with torch.no_grad():
        want = model(input_ids=ids).logits
        merged = AutoModelForCausalLM.from_pretrained(out)(input_ids=ids).logits
        loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model), out / "adapter")(input_ids=ids).logits
    assert torch.allclose(merged, want, atol=1e-5)
    assert torch.allclose(loaded, want, atol=1e-5)
    assert not (tmp_path / "step_3.tmp").exists()


@pytest.mark.unit
def test_lora_keys_are_validated_before_any_work(tiny_model):
    from launch.models import check_lora_targets

    with pytest.raises(ConfigError, match=r"^learner.lora.dropout: must be 0"):
        load_config(None, ["learner.lora.rank=4", "learner.lora.dropout=0.1"])
    with pytest.raises(ConfigError, match=r"^learner.lora.rank: must be >= 0"):
        load_config(None, ["learner.lora.rank=-1"])
    cfg = load_config(None, [*LORA, "learner.lora.target_modules=[q_proj,qkv_proj]"])
    with pytest.raises(ConfigError, match=r"^learner.lora.target_modules: 'qkv_proj' matches no linear module of "
                                          r".*; it has down_proj, gate_proj, k_proj, lm_head, o_proj, q_proj"):
        check_lora_targets(cfg.learner.lora, str(tiny_model))
    check_lora_targets(load_config(None, [*LORA, "learner.lora.target_modules=[q_proj,v_proj]"]).learner.lora,
                       str(tiny_model))


@pytest.mark.ray
def test_lora_learners_publish_adapters_only_and_two_ranks_update_as_one(ray_local, tiny_model):
    """The update of a LoRA policy is split-invariant across ranks like a full one; each publish
    holds the adapters alone (peft's saved names), a fraction of the model's bytes."""
    import ray

    batch = make_batch()
    (m1,), s1 = run_learners(ray, tiny_model, 1, 4, batch, *LORA)
    m2, s2 = run_learners(ray, tiny_model, 2, 2, batch, *LORA)
    assert set(s1) == set(s2) and all(k.startswith(PEFT_PREFIX) and ".lora_" in k for k in s1)
    assert len(s1) == 2 * 7 * 2  # layers x projections x (A, B)
    b = {k: v for k, v in s1.items() if "lora_B" in k}
    assert all(v.abs().max() > 0 for v in b.values())  # B started at zero: the step trained it
    assert m2[0]["mask/threshold"] == m1["mask/threshold"]
    assert m2[0]["losses/loss"] == pytest.approx(m1["losses/loss"], rel=1e-5, abs=1e-7)
    assert m2[0]["losses/grad_norm"] == pytest.approx(m1["losses/grad_norm"], rel=1e-4)
    d1 = torch.cat([s1[k].flatten() for k in sorted(b)])
    d2 = torch.cat([s2[k].flatten() for k in sorted(b)])
    assert torch.nn.functional.cosine_similarity(d1, d2, dim=0) > 0.999
    from safetensors.torch import load_file

    full = sum(v.numel() for v in load_file(str(tiny_model / "model.safetensors")).values())
    assert sum(v.numel() for v in s1.values()) < 0.5 * full


@pytest.mark.ray
def test_lora_single_pass_equals_the_scoring_pass(ray_local, tiny_model, mode="random"):
    """Under LoRA, with the entropy bonus and the KL to the base (adapters off) on: the single pass
    is the update of scoring first, then forward + backward (under the random control arm, whose
    mask must not depend on the path either)."""
    import ray

    batch = make_batch(n=8, seed=3)
    extra = (*LORA, "learner.entropy_coef=0.01", "learner.kl_coef=0.05", f"learner.mask.mode={mode}")
    (one,), s_one = run_learners(ray, tiny_model, 1, 2, batch, "learner.single_pass_max_tokens=100000", *extra)
    (two,), s_two = run_learners(ray, tiny_model, 1, 2, batch, "learner.single_pass_max_tokens=0", *extra)
    assert one["timing/score_s"] == 0.0 and two["timing/score_s"] > 0
    assert one["mask/kept_tokens"] == two["mask/kept_tokens"]
    for key in ("losses/loss", "losses/grad_norm", "losses/kept_entropy"):
        assert one[key] == pytest.approx(two[key], rel=1e-5, abs=1e-7), key
    assert one["losses/grad_norm"] > 0
    for k in s_one:
        assert torch.allclose(s_one[k], s_two[k], atol=1e-6), k


@pytest.mark.ray
def test_the_lora_reference_is_the_base_with_adapters_off(ray_local, tiny_model):
    """learner.kl_coef > 0 under LoRA builds no second model. At the first step the policy is the
    base (B = 0), so the KL to the reference is exactly 0; at the second the adapters have moved
    the policy and the reference stays the base, so it is not."""
    import ray

    from launch.placement import launch_learners

    cfg = tiny_cfg(tiny_model, "learner.num_ranks=1", "learner.micro_batch_size=4", "prompts_per_step=2",
                   "generation.group_size=4", "learner.lr=1e-2", *LORA, "learner.kl_coef=0.1")
    (learner,) = launch_learners(cfg, str(tiny_model))
    prompts, resp, behaviour_logp, adv = make_batch()
    shard = collate(prompts, resp, behaviour_logp, adv, 0, sample_ids=list(range(len(prompts))))
    first = ray.get(learner.train_step.remote(shard))
    second = ray.get(learner.train_step.remote(shard))
    ray.kill(learner)
    assert first["losses/ref_kl"] == pytest.approx(0.0, abs=1e-7)
    assert second["losses/ref_kl"] > 1e-5


@pytest.mark.ray
def test_generation_loads_adapters_and_a_restarted_generator_gets_the_base_plus_the_current_ones(ray_local,
                                                                                                  tiny_model):
    """vLLM given adapter shards (two ranks' slices) samples with log-probs that match transformers
    running the peft model with the same adapters, to the full-weight path's tolerance. Killed, it
    comes back with the base weights only; the driver's restart path (here an evaluation, which
    notices the initial version) gives it the current adapters, merged into the base its new
    incarnation reads again, and it samples from the same merged policy."""
    import os
    import signal

    import ray

    from launch.groups import ActorGroups
    from launch.placement import launch_generators, launch_rewards

    model = peft_policy(tiny_model, seed=2)
    adapters = saved_adapters(model)
    spec = LoraSpec(4, 8.0, tuple(sorted(model.peft_config["default"].target_modules)))
    cfg = tiny_cfg(tiny_model, "generation.group_size=3", "reward.fn=starts_with", "fault.max_actor_restarts=2")
    actors = ActorGroups(cfg, launch_generators(cfg, str(tiny_model)), launch_rewards(cfg), [])
    (gen,) = actors.generators
    prompts = [Prompt(0, [1, 5, 6], "yes"), Prompt(1, [1, 7], "no")]

    def assert_samples_from_the_merged_policy():
        out = ray.get(gen.generate.remote(prompts))
        assert out.policy_version == 4
        for i in range(len(out)):
            ref = hf_logprobs(model, prompts[i // 3].token_ids, out.response_ids[i])
            assert torch.allclose(torch.tensor(out.behaviour_logp[i]), ref, atol=1e-3), i

    for version in (3, 4):  # a second load merges onto the base again, not onto the first merge
        actors.version, actors.shards = version, [ray.put(shard_weights(adapters, r, 2, spec)) for r in range(2)]
        ray.get(gen.load_weights.remote(version, *actors.shards))
    assert_samples_from_the_merged_policy()
    os.kill(ray.get(gen.__ray_call__.remote(lambda self: os.getpid())), signal.SIGKILL)
    assert actors.verify_eval(prompts, 1, 4, seed=0).policy_version == 4 and actors.faults.restarts == 1
    assert_samples_from_the_merged_policy()
    ray.kill(gen)


@pytest.mark.e2e
def test_a_lora_run_resumes_exactly_and_publishes_adapters(tiny_model, yes_data, tmp_path):
    """Through the CLI on 2 ZeRO-3 ranks: 1 LoRA step, then --resume to 2, train what 2 straight
    steps train (same prompts, responses, rewards, losses). Every publish is the adapters' size;
    the exported step holds the merged model and the peft adapter (both load: the unit tests
    above; `forkrl eval` of a checkpoint folder: tests/test_e2e.py)."""
    import os
    import subprocess

    from tests.test_e2e import BIN, REPO, forkrl, read_metrics, tiny_args
    from tests.test_resume import SYNC, assert_trained_alike

    args = [*SYNC, *LORA, "learner.lr=1e-2", "tracking.save_every=2"]
    straight = tmp_path / "straight"
    res = forkrl(*tiny_args(tiny_model, yes_data, straight), "steps=2", *args)
    assert res.returncode == 0, res.stderr[-3000:]
    run_dir = tmp_path / "run"
    res = forkrl(*tiny_args(tiny_model, yes_data, run_dir), "steps=1", *args)
    assert res.returncode == 0, res.stderr[-3000:]
    res = subprocess.run([str(BIN / "forkrl"), "train", "--resume", str(run_dir), "steps=2"], cwd=REPO,
                         capture_output=True, text=True, timeout=900, env={**os.environ, "WANDB_SILENT": "true"})
    assert res.returncode == 0, res.stderr[-3000:]
    b = read_metrics(run_dir)
    assert [r["step"] for r in b] == [1, 2]
    assert_trained_alike(straight, run_dir, (1, 2))
    assert b[1]["losses/loss"] is not None, "nothing trained after the resume: a weak check"
    # rank 4 on 2 layers of q, k, v, o (64 -> 64) and gate, up (64 -> 128), down (128 -> 64), float32
    adapter_mb = 2 * 4 * (4 * (64 + 64) + 3 * (64 + 128)) * 4 / 2**20
    assert all(r["weights/published_mb"] == pytest.approx(adapter_mb) for r in b)
    ckpt = straight / "checkpoints" / "step_2"
    assert (ckpt / "model.safetensors").is_file() and (ckpt / "adapter" / "adapter_model.safetensors").is_file()
