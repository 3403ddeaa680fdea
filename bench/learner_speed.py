"""Learner speed: forkrl's full per-batch learner work next to a plain-PyTorch reference.

One batch of realistic shape (the demo config's prompts and group size, response lengths drawn
from a range) is trained:
- by forkrl's `PolicyTrainer` under a single-rank DeepSpeed ZeRO-3 engine (scoring if any, the
  scope and entropy mask, every micro-batch's forward and backward, the optimizer step);
- by plain PyTorch: the same model, forward + log-prob loss over the same response tokens +
  backward on the same micro-batches, then one AdamW step.
Each side runs in its own subprocess (own threads, own peak RSS; a learner side with the host
allocator a learner rank gets, learner.allocator, and the reference with the system's, as a plain
PyTorch script runs), one after the other, `--repeats`
times, and the pair is repeated `--rounds` times alternately; each process's first step is a
warm-up, and the medians of the rest are reported with their ratio.

    python bench/learner_speed.py --config configs/demo.yaml --repeats 4
    python bench/learner_speed.py --config configs/demo.yaml learner.micro_batch_size=4

`--variant KEY=VALUE ...` adds a third side to the alternation: the learner under those overrides
(for example `--variant learner.project_kept_only=false`, the path before), reported beside the
default learner with its own ratio and peak memory.
`--profile N` profiles one more step of the default learner (torch.profiler) and prints its N
costliest operators. `--publish-ranks 1 2` also times the weight publish through Ray (learner ranks as actors).
Results are appended to bench/results/learner_speed.jsonl.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def build_batch(cfg, model_path: str, resp_min: int, resp_max: int, seed: int, informative: float,
                prompt_extra: int = 0):
    """A TrainShard like a demo step's: prompts_per_step prompts x group_size responses of random
    lengths, behaviour log-probs near the model's; the first `informative` fraction of the groups
    carries +-1 advantages, the rest all-equal rewards (advantage 0, out of the default scope)."""
    import torch
    from transformers import AutoTokenizer

    from launch.data import load_prompts
    from learner.batch import collate

    tok = AutoTokenizer.from_pretrained(model_path)
    prompts = load_prompts(cfg.data, cfg.model, tok)[: cfg.prompts_per_step]
    rng = random.Random(seed)
    g = cfg.generation.group_size
    prompt_ids, resp, behaviour_logp, adv = [], [], [], []
    for i, p in enumerate(prompts):
        signal = i < round(informative * len(prompts))
        # a long shared context (a few-shot or system prompt) of prompt_extra tokens before the question
        context = [rng.randrange(100, tok.vocab_size) for _ in range(prompt_extra)]
        for _ in range(g):
            n = rng.randint(resp_min, resp_max)
            prompt_ids.append(context + p.token_ids)
            resp.append([rng.randrange(100, tok.vocab_size) for _ in range(n)])
            behaviour_logp.append([-rng.random() * 2 for _ in range(n)])
            adv.append(rng.choice([-1.0, 1.0]) if signal else 0.0)
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    shard = collate(prompt_ids, resp, behaviour_logp, adv, pad)
    return shard, torch.tensor(adv)


def profile_step(step, rows: int) -> None:
    """One more step under torch.profiler; prints its `rows` most expensive operators (self time,
    on the GPU where there is one) to stderr: where the time goes, for the next change."""
    import torch
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.cuda.is_available()
    with profile(activities=[ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])) as prof:
        step()
        sync()
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(prof.key_averages().table(sort_by=key, row_limit=rows, max_name_column_width=60), file=sys.stderr, flush=True)


def run_learner(cfg, model_path: str, shard, repeats: int, profile: int = 0) -> dict:
    import deepspeed
    import torch

    from learner.engine import PolicyTrainer

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(29500 + os.getpid() % 1000), RANK="0",
                      WORLD_SIZE="1", LOCAL_RANK="0")
    deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")
    g = cfg.generation
    trainer = PolicyTrainer(cfg.learner, model_path, temperature=g.temperature, max_new_tokens=g.max_new_tokens,
                            max_prompt_tokens=cfg.data.max_prompt_tokens, batch_size=len(shard), seed=cfg.seed)
    times, metrics = [], {}
    for _ in range(repeats):
        t0 = time.perf_counter()
        metrics = trainer.train_step(shard)
        sync()
        times.append(time.perf_counter() - t0)
    if profile:
        profile_step(lambda: trainer.train_step(shard), profile)
    t0 = time.perf_counter()
    trainer.weight_shard()
    return {"times": times, "shard_s": time.perf_counter() - t0, "peak_gb": metrics["memory/learner_peak_gb"],
            "score_s": metrics.get("timing/score_s"), "kept_tokens": metrics.get("mask/kept_tokens"),
            "projected": metrics.get("train/projected_tokens")}


def run_reference(cfg, model_path: str, shard, repeats: int, ref_micro: int = 0) -> dict:
    """Plain PyTorch: forward, response-token log-prob loss, backward per micro-batch (ref_micro
    sequences, default the learner's micro_batch_size); one AdamW step. float32 weights; on CUDA
    under bf16 autocast, as the learner trains there."""
    import contextlib

    import torch
    from transformers import AutoModelForCausalLM

    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(dev)
    model.config.use_cache = False
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.learner.lr, fused=True)
    autocast = (lambda: torch.autocast("cuda", torch.bfloat16)) if dev.type == "cuda" else contextlib.nullcontext
    mb_size = ref_micro or cfg.learner.micro_batch_size
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        for s in range(0, len(shard), mb_size):
            mb = shard.rows(s, s + mb_size)
            valid, targets = mb.valid.to(dev), mb.targets.to(dev)
            with autocast():
                logits = model(input_ids=mb.input_ids.to(dev), attention_mask=mb.attention_mask.to(dev)).logits[:, :-1]
            lp = torch.log_softmax(logits[valid].float() / cfg.generation.temperature, dim=-1)
            adv = mb.advantages.to(dev)[:, None].expand_as(valid)[valid]
            loss = -(lp.gather(1, targets[valid][:, None]).squeeze(1) * adv).mean()
            loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.learner.grad_clip)
        opt.step()
        opt.zero_grad(set_to_none=True)
        sync()
        times.append(time.perf_counter() - t0)
    peak = torch.cuda.max_memory_allocated() / 2**30 if dev.type == "cuda" else None
    return {"times": times, "peak_gb": peak}


def sync() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def child(args) -> None:
    """One side of the comparison, in its own process; prints one JSON line."""
    import torch

    from launch.config_load import load_config
    from launch.models import resolve_model_path

    cfg = load_config(args.config, args.overrides)
    threads = cfg.learner.torch_threads or 1
    torch.set_num_threads(threads)
    model_path = str(resolve_model_path(cfg.model.path))
    shard, _ = build_batch(cfg, model_path, args.resp_min, args.resp_max, cfg.seed, args.informative, args.prompt_extra)
    if args.child == "learner":
        out = run_learner(cfg, model_path, shard, args.repeats, args.profile)
    else:
        out = run_reference(cfg, model_path, shard, args.repeats, args.ref_micro)
    out.update(peak_rss_gb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, threads=threads,
               device=torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
               sequences=len(shard), tokens=int(shard.attention_mask.sum()), response_tokens=int(shard.valid.sum()))
    print("RESULT " + json.dumps(out), flush=True)


def run_child(side: str, args, extra: list[str] = ()) -> dict:
    profiled = args.profile if side == "learner" and not extra else 0  # the default learner only
    cmd = [sys.executable, __file__, "--child", side, "--config", args.config, "--repeats", str(args.repeats),
           "--resp-min", str(args.resp_min), "--resp-max", str(args.resp_max), "--informative", str(args.informative),
           "--prompt-extra", str(args.prompt_extra), "--profile", str(profiled), "--ref-micro", str(args.ref_micro),
           *args.overrides, *extra]
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), TOKENIZERS_PARALLELISM="false")
    if side == "learner":  # the allocator a learner rank gets at launch (learner.allocator)
        from launch.config_load import load_config
        from launch.placement import allocator_env

        env.update(allocator_env(load_config(args.config, [*args.overrides, *extra]).learner.allocator))
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT)
    if profiled:
        print(proc.stderr[proc.stderr.find("-----"):], file=sys.stderr)  # the profile table
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{side} run failed:\n{proc.stderr[-3000:]}")


def time_publish(args, ranks: int) -> dict:
    """The weight publish through the real learner actors: every rank puts its shard into the
    object store and a consumer (here the driver, as a generation actor would) assembles them."""
    import ray

    from launch.config_load import load_config
    from launch.models import resolve_model_path
    from launch.placement import launch_learners
    from learner.weights import assemble_weights

    cfg = load_config(args.config, [*args.overrides, f"learner.num_ranks={ranks}", "learner.num_cpus=0.5",
                                    "learner.torch_threads=1"])
    model_path = str(resolve_model_path(cfg.model.path))
    ray.init(num_cpus=2, include_dashboard=False, _node_ip_address="127.0.0.1")
    try:
        learners = launch_learners(cfg, model_path)
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            state = assemble_weights(ray.get([w.weight_shard.remote() for w in learners]))
            times.append(time.perf_counter() - t0)
        mb = sum(t.numel() * t.element_size() for t in state.values()) / 2**20
        return {"ranks": ranks, "publish_s": times[1:], "megabytes": mb}
    finally:
        ray.shutdown()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/demo.yaml")
    ap.add_argument("--repeats", type=int, default=4, help="train steps per side; the first is a warm-up")
    ap.add_argument("--rounds", type=int, default=2, help="alternating reference / learner subprocess pairs")
    ap.add_argument("--resp-min", type=int, default=8)
    ap.add_argument("--resp-max", type=int, default=32)
    ap.add_argument("--informative", type=float, default=0.5,
                    help="fraction of groups with non-zero advantages (the demo averages about half)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--prompt-extra", type=int, default=0, help="tokens of shared context added to every prompt")
    ap.add_argument("--publish-ranks", type=int, nargs="*", default=[])
    ap.add_argument("--ref-micro", type=int, default=0,
                    help="sequences per reference micro-batch (0: the learner's micro_batch_size); padded "
                         "long sequences need fewer to fit in memory, as a user would choose")
    ap.add_argument("--variant", nargs="*", default=[], help="overrides of a second learner side, run alongside")
    ap.add_argument("--profile", type=int, default=0,
                    help="after the timed steps, profile one more learner step and print its N costliest operators")
    ap.add_argument("--child", choices=["learner", "reference"], help=argparse.SUPPRESS)
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "learner_speed.jsonl"))
    ap.add_argument("--label", default="", help="a note stored with the result row")
    ap.add_argument("overrides", nargs="*", help="config key=value overrides")
    args = ap.parse_intermixed_args()
    if args.child:
        return child(args)
    args.overrides = [*args.overrides, f"learner.torch_threads={args.threads}"]
    ref, lrn, var = {"times": []}, {"times": []}, {"times": []}
    for _ in range(args.rounds):  # alternate the sides so that machine noise hits both alike
        r, l = run_child("reference", args), run_child("learner", args)
        r["times"], l["times"] = ref["times"] + r["times"][1:], lrn["times"] + l["times"][1:]  # drop warm-ups
        ref, lrn = r, l
        if args.variant:
            v = run_child("learner", args, args.variant)
            v["times"] = var["times"] + v["times"][1:]
            var = v
    med = statistics.median
    row = {"date": time.strftime("%Y-%m-%d %H:%M"), "label": args.label, "config": args.config,
           "informative": args.informative, "prompt_extra": args.prompt_extra, "ref_micro": args.ref_micro,
           "overrides": args.overrides, "sequences": lrn["sequences"], "tokens": lrn["tokens"],
           "response_tokens": lrn["response_tokens"], "threads": args.threads,
           "reference_s": med(ref["times"]), "learner_s": med(lrn["times"]),
           "ratio": med(lrn["times"]) / med(ref["times"]), "learner_score_s": lrn["score_s"],
           "device": lrn["device"], "learner_shard_s": lrn["shard_s"], "learner_peak_rss_gb": lrn["peak_rss_gb"],
           "learner_peak_gpu_gb": lrn["peak_gb"] if lrn["device"] != "cpu" else None,
           "reference_peak_gpu_gb": ref["peak_gb"],
           "reference_peak_rss_gb": ref["peak_rss_gb"], "reference_times": ref["times"], "learner_times": lrn["times"]}
    if args.variant:
        row.update(variant=args.variant, variant_s=med(var["times"]), variant_ratio=med(var["times"]) / med(ref["times"]),
                   variant_peak_rss_gb=var["peak_rss_gb"], variant_peak_gpu_gb=var["peak_gb"] if var["device"] != "cpu" else None,
                   variant_times=var["times"], learner_projected_tokens=lrn["projected"],
                   variant_projected_tokens=var["projected"])
    for r in args.publish_ranks:
        pub = time_publish(args, r)
        row[f"publish_{r}_ranks_s"], row["publish_megabytes"] = med(pub["publish_s"]), pub["megabytes"]
    print(f"{row['sequences']} sequences, {row['tokens']} tokens ({row['response_tokens']} response), "
          f"{args.informative:.0%} of groups informative, {args.threads} threads, {row['device']}")
    print(f"plain PyTorch fwd+bwd+AdamW: {row['reference_s']:.2f} s   forkrl learner: {row['learner_s']:.2f} s   "
          f"ratio {row['ratio']:.2f}x   learner peak RSS {row['learner_peak_rss_gb']:.2f} GB"
          + (f", GPU {row['learner_peak_gpu_gb']:.2f} GB (reference {row['reference_peak_gpu_gb']:.2f} GB)"
             if row["learner_peak_gpu_gb"] is not None else ""))
    if args.variant:
        print(f"variant {' '.join(args.variant)}: {row['variant_s']:.2f} s   ratio {row['variant_ratio']:.2f}x   "
              f"peak RSS {row['variant_peak_rss_gb']:.2f} GB"
              + (f", GPU {row['variant_peak_gpu_gb']:.2f} GB" if row["variant_peak_gpu_gb"] is not None else "")
              + f"   (learner / variant: {row['learner_s'] / row['variant_s']:.2f}x time)")
    for r in args.publish_ranks:
        print(f"weight publish, {r} rank(s): {row[f'publish_{r}_ranks_s']:.2f} s ({row['publish_megabytes']:.0f} MB)")
    with Path(args.results).open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
