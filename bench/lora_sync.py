"""LoRA against full fine-tuning: the weight sync (bytes, seconds, exactness) and the learner step.

Weight sync, each way in its own subprocess, on the demo's model (SmolLM2-135M) with a rank-16
adapter on every linear projection whose B is random (as after training):
- `full`:   the full weights as two learner ranks publish them, assembled and loaded into vLLM
            in place (today's full fine-tuning path, GenerationWorker.load_weights);
- `merge`:  the adapters only, merged into the generator's copy of the base (W + s B A) and loaded
            in place: what forkrl's generators do under learner.lora;
- `native`: vLLM's own LoRA (enable_lora): the adapter is written as a peft folder and served as a
            new LoRARequest, the base weights untouched.
For each: seconds per load (median of --loads), the bytes that cross the object store, the time
to sample the demo's batch (4 prompts x 8 samples x 32 tokens, T = 0.6) with the loaded policy,
and the largest difference between vLLM's sampled log-probs and transformers + peft.

Learner step (`--learner`): bench/learner_speed.py's forkrl learner child on the demo batch, full
and LoRA, alternated --rounds times; median seconds per step and peak RSS.

    python bench/lora_sync.py --loads 5 --learner --rounds 2

Appends one row to bench/results/lora_sync.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RANK, ALPHA = 16, 32.0


def random_adapter(model_path: str, seed: int):
    """(peft's saved adapter tensors, LoraSpec, the peft model) of a rank-16 all-linear adapter."""
    import torch
    from peft import LoraConfig, get_peft_model, get_peft_model_state_dict
    from transformers import AutoModelForCausalLM

    from learner.weights import LoraSpec

    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32),
                           LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules="all-linear", lora_dropout=0.0))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.02)
    spec = LoraSpec(RANK, ALPHA, tuple(sorted(model.peft_config["default"].target_modules)))
    return {k: v.detach().clone() for k, v in get_peft_model_state_dict(model).items()}, spec, model.eval()


def prompts(model_path: str, n: int):
    from transformers import AutoTokenizer

    from launch.config_load import load_config
    from launch.data import load_prompts

    cfg = load_config(ROOT / "configs/demo.yaml")
    return [p.token_ids for p in load_prompts(cfg.data, cfg.model, AutoTokenizer.from_pretrained(model_path))[:n]]


def max_logprob_gap(model, prompt_ids, outputs) -> float:
    """Largest |vLLM sampled log-prob - transformers (+ peft) log-prob| over the outputs given."""
    import torch

    gap = 0.0
    for prompt, out in zip(prompt_ids, outputs):
        for o in out.outputs[:2]:
            ids = torch.tensor([prompt + list(o.token_ids)])
            with torch.no_grad():
                logits = model(input_ids=ids).logits[0, len(prompt) - 1:-1].float() / 0.6
            ref = torch.log_softmax(logits, -1).gather(1, torch.tensor(o.token_ids)[:, None]).squeeze(1)
            got = torch.tensor([d[t].logprob for d, t in zip(o.logprobs, o.token_ids)])
            gap = max(gap, float((got - ref).abs().max()))
    return gap


def child(mode: str, loads: int) -> dict:
    import torch
    from vllm import LLM, SamplingParams

    from launch.models import resolve_model_path
    from learner.weights import assemble_weights, load_base_weights, merge_lora, shard_weights

    model_path = str(resolve_model_path("smollm2-135m-instruct"))
    extra = {"enable_lora": True, "max_lora_rank": RANK, "max_loras": 1} if mode == "native" else {}
    # The engine first, before other heavy imports fill the process (vLLM CPU start-up).
    llm = LLM(model=model_path, dtype="float32", enforce_eager=True, gpu_memory_utilization=0.2, max_model_len=512,
              logprobs_mode="processed_logprobs", enable_prefix_caching=True, seed=0, **extra)
    batch = prompts(model_path, 4)
    params = SamplingParams(n=8, max_tokens=32, temperature=0.6, logprobs=0, seed=1)
    base = load_base_weights(model_path)
    load_s, bytes_moved, model, request = [], 0, None, None
    for version in range(1, loads + 1):
        adapters, spec, model = random_adapter(model_path, seed=version)
        if mode == "full":
            full = merge_lora(base, adapters, spec)  # as a fully fine-tuned policy would publish it
            shards = [shard_weights(full, r, 2) for r in range(2)]
        else:
            shards = [shard_weights(adapters, r, 2, spec) for r in range(2)]
        bytes_moved = sum(s.nbytes for s in shards)
        t0 = time.perf_counter()
        if mode == "native":
            from launch.checkpoint import write_peft_adapter
            from vllm.lora.request import LoRARequest

            folder = Path(f"/tmp/forkrl-lora-bench/{os.getpid()}/v{version}")
            write_peft_adapter(assemble_weights(shards), spec, model_path, folder)
            request = LoRARequest(f"v{version}", version, str(folder))
            llm.generate([{"prompt_token_ids": batch[0]}], SamplingParams(max_tokens=1), lora_request=request,
                         use_tqdm=False)  # vLLM loads an adapter at its first request
        else:
            state = assemble_weights(shards)
            if shards[0].lora is not None:
                state = merge_lora(base, state, shards[0].lora)
            llm.collective_rpc("reload_weights", kwargs={"weights_iterator": list(state.items())})
            llm.reset_prefix_cache()
        load_s.append(time.perf_counter() - t0)
    gen_s = []
    for _ in range(3):
        t0 = time.perf_counter()
        outs = llm.generate([{"prompt_token_ids": p} for p in batch], params, lora_request=request, use_tqdm=False)
        gen_s.append(time.perf_counter() - t0)
    gap = max_logprob_gap(model, batch, outs)
    return {"mode": mode, "load_s": statistics.median(load_s[1:] or load_s), "loads": load_s,
            "mb_moved": bytes_moved / 2**20, "generate_s": statistics.median(gen_s), "generate_all_s": gen_s,
            "max_logprob_gap": gap, "threads": torch.get_num_threads()}


def run_child(mode: str, loads: int) -> dict:
    from launch.placement import GEN_ENV  # the generation actors' vLLM settings: the engine in-process

    proc = subprocess.run([sys.executable, __file__, "--child", mode, "--loads", str(loads)], capture_output=True,
                          text=True, cwd=ROOT, env={**os.environ, **GEN_ENV})
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{mode} failed:\n{proc.stderr[-3000:]}")


def learner_sides(rounds: int) -> dict:
    """The forkrl learner on the demo batch, full and LoRA, alternated (bench/learner_speed.py's child)."""
    sys.path.insert(0, str(ROOT / "bench"))
    import learner_speed

    out = {"full": {"times": []}, "lora": {"times": []}}
    lora = [f"learner.lora.rank={RANK}", f"learner.lora.alpha={ALPHA}"]
    for _ in range(rounds):
        for side, extra in (("full", []), ("lora", lora)):
            args = argparse.Namespace(config="configs/demo.yaml", repeats=4, resp_min=8, resp_max=32, informative=0.5,
                                      threads=2, overrides=["learner.torch_threads=2", *extra])
            r = learner_speed.run_child("learner", args)
            out[side]["times"] += r["times"][1:]
            out[side]["peak_rss_gb"] = max(out[side].get("peak_rss_gb", 0), r["peak_rss_gb"])
    return {side: {"step_s": statistics.median(v["times"]), "times": v["times"], "peak_rss_gb": v["peak_rss_gb"]}
            for side, v in out.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--loads", type=int, default=5)
    ap.add_argument("--modes", nargs="*", default=["full", "merge", "native"])
    ap.add_argument("--learner", action="store_true", help="also time the learner step, full and LoRA")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "lora_sync.jsonl"))
    args = ap.parse_args()
    if args.child:
        print("RESULT " + json.dumps(child(args.child, args.loads)), flush=True)
        return
    row = {"date": time.strftime("%Y-%m-%d %H:%M"), "rank": RANK, "loads": args.loads,
           "sync": {m: run_child(m, args.loads) for m in args.modes}}
    for m, r in row["sync"].items():
        print(f"{m:>6}: load {r['load_s']:.2f} s, {r['mb_moved']:.1f} MB through the object store, "
              f"sample 32 x 32 tokens {r['generate_s']:.2f} s, max |log-prob gap| {r['max_logprob_gap']:.1e}")
    if args.learner:
        row["learner"] = learner_sides(args.rounds)
        for side, r in row["learner"].items():
            print(f"learner {side:>4}: {r['step_s']:.2f} s a step, peak RSS {r['peak_rss_gb']:.2f} GB")
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    with Path(args.results).open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
