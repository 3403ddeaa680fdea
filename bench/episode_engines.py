"""Multi-turn generation: turn-batched offline engine (forkrl's) against vLLM's async engine.

The tools demo's task and settings (configs/tools.yaml: SmolLM2-135M-Instruct, the python tool,
3 turns of at most 48 tokens, a 96-token budget, T = 0.6), on the base model:
- `batched`: forkrl's GenerationWorker: every live trajectory's next turn is one `LLM.generate`
  call, then that round's tool calls run at once on a thread pool (actors/episodes.py);
- `async`: vLLM's AsyncLLM, one coroutine per trajectory: it samples a turn, runs its tool on the
  same thread pool while the engine keeps sampling the other trajectories, and goes on. Same
  trajectory records, same environment class, same observation encoding.
Each side runs in its own process; the two alternate --rounds times, each timing --prompts x 8
trajectories from the same prompts after a warm-up batch of its own. Reported:
median seconds per batch, model tokens per second, tool calls.

    python bench/episode_engines.py --prompts 4 --rounds 3
    python bench/episode_engines.py --prompts 16 --rounds 3

Appends one row to bench/results/episode_engines.jsonl.
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


def setup(n_prompts: int):
    from transformers import AutoTokenizer

    from launch.config_load import load_config
    from launch.data import load_prompts
    from launch.models import resolve_model_path

    cfg = load_config(ROOT / "configs/tools.yaml")
    path = str(resolve_model_path(cfg.model.path))
    prompts = load_prompts(cfg.data, cfg.model, AutoTokenizer.from_pretrained(path))[:n_prompts]
    return cfg, path, prompts


def summary(trajs, seconds: float) -> dict:
    model_tokens = sum(sum(t.model) for t in trajs)
    return {"seconds": seconds, "model_tokens": model_tokens, "tokens_per_s": model_tokens / seconds,
            "tool_calls": sum(bool(turn.tool) for t in trajs for turn in t.turns),
            "turns": sum(len(t.turns) for t in trajs), "trajectories": len(trajs)}


def batched(n_prompts: int, seed: int) -> dict:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    cfg, path, prompts = setup(n_prompts)
    from actors.generation import GenerationWorker

    worker = GenerationWorker(cfg.generation, path, seed, cfg.env, cfg.model.chat_template)
    worker.generate(prompts[:1], seed=seed)  # warm-up
    t0 = time.perf_counter()
    trajs = worker._episodes(prompts, cfg.generation.group_size, cfg.generation.temperature,
                             cfg.generation.max_new_tokens)
    return summary(trajs, time.perf_counter() - t0)


def asynchronous(n_prompts: int, seed: int) -> dict:
    import asyncio
    import uuid
    from concurrent.futures import ThreadPoolExecutor

    from vllm import SamplingParams
    from vllm.engine.arg_utils import AsyncEngineArgs
    from vllm.inputs import TokensPrompt
    from vllm.v1.engine.async_llm import AsyncLLM

    cfg, path, prompts = setup(n_prompts)
    from actors.episodes import ObservationEncoder, Sampled, Trajectory
    from actors.types import Turn
    from envs.base import ToolLimits
    from envs.registry import load_env

    g, e = cfg.generation, cfg.env
    engine = AsyncLLM.from_engine_args(AsyncEngineArgs(
        model=path, dtype="float32", seed=seed, enforce_eager=True, gpu_memory_utilization=g.gpu_memory_utilization,
        max_model_len=g.max_model_len, logprobs_mode="processed_logprobs", enable_prefix_caching=True))
    env_cls = load_env(e.name)
    stop = list(getattr(env_cls, "stop", ()))
    limits = ToolLimits(e.tool_timeout_s, e.max_output_chars, e.tool_memory_mb, e.isolation)
    pool = ThreadPoolExecutor(max_workers=e.tool_workers)

    async def turn(context: list[int], max_tokens: int) -> Sampled:
        params = SamplingParams(n=1, temperature=g.temperature, max_tokens=max_tokens, logprobs=0, stop=stop,
                                include_stop_str_in_output=True)
        final = None
        async for out in engine.generate(TokensPrompt(prompt_token_ids=context), params, uuid.uuid4().hex):
            final = out
        o = final.outputs[0]
        return Sampled(list(o.token_ids), [st[tok].logprob for st, tok in zip(o.logprobs, o.token_ids)], o.text,
                       o.finish_reason == "stop" and not isinstance(o.stop_reason, str))

    async def episode(t: Trajectory, encode) -> Trajectory:
        loop = asyncio.get_running_loop()
        while not t.end:  # the same rules as actors.episodes.run_episodes, one trajectory at a time
            s = await turn(t.context(), min(t.remaining(), e.max_turn_tokens or t.remaining()))
            t.add_model(s)
            if t.remaining() <= 0:
                t.finish("budget")
            elif len(t.turns) >= e.max_turns:
                t.finish("max_turns")
            else:
                try:
                    obs = await loop.run_in_executor(pool, t.env.step, s.text, s.eos)
                except Exception:
                    t.turns[-1] = Turn(t.turns[-1].text, "", "env_error")
                    t.finish("env_error")
                    continue
                if obs is None:
                    t.finish("done")
                elif obs.text:
                    t.add_observation(encode(obs.text, s.eos), obs)
        return t

    async def run(batch) -> list[Trajectory]:
        encode = ObservationEncoder(engine.get_tokenizer(), cfg.model.chat_template)
        trajs = [Trajectory(env_cls(p.text, p.answer, limits), p.token_ids, g.max_new_tokens)
                 for p in batch for _ in range(g.group_size)]
        return list(await asyncio.gather(*(episode(t, encode) for t in trajs)))

    async def main():
        await run(prompts[:1])  # warm-up
        t0 = time.perf_counter()
        trajs = await run(prompts)
        return summary(trajs, time.perf_counter() - t0)

    try:
        return asyncio.run(main())
    finally:
        engine.shutdown()


def run_child(side: str, n_prompts: int, seed: int) -> dict:
    proc = subprocess.run([sys.executable, __file__, "--child", side, "--prompts", str(n_prompts), "--seed", str(seed)],
                          capture_output=True, text=True, cwd=ROOT, env={**os.environ, "TOKENIZERS_PARALLELISM": "false"})
    for line in proc.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"{side} failed:\n{proc.stderr[-3000:]}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prompts", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--child", choices=["batched", "async"], help=argparse.SUPPRESS)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--results", default=str(ROOT / "bench" / "results" / "episode_engines.jsonl"))
    args = ap.parse_args()
    if args.child:
        side = batched if args.child == "batched" else asynchronous
        print("RESULT " + json.dumps(side(args.prompts, args.seed)), flush=True)
        return
    runs = {"batched": [], "async": []}
    for r in range(args.rounds):  # alternate, so that machine noise hits both alike
        for side in runs:
            runs[side].append(run_child(side, args.prompts, args.seed + r))
    med = statistics.median
    row = {"date": time.strftime("%Y-%m-%d %H:%M"), "prompts": args.prompts, "rounds": args.rounds, "runs": runs}
    for side, rs in runs.items():
        counted = rs
        row[f"{side}_s"] = med(r["seconds"] for r in counted)
        row[f"{side}_tokens_per_s"] = med(r["tokens_per_s"] for r in counted)
        print(f"{side:>8}: {row[f'{side}_s']:.1f} s per {counted[0]['trajectories']} trajectories, "
              f"{row[f'{side}_tokens_per_s']:.0f} model tokens/s, tool calls {[r['tool_calls'] for r in rs]}")
    row["async_over_batched"] = row["async_s"] / row["batched_s"]
    print(f"async / batched time: {row['async_over_batched']:.2f}")
    with Path(args.results).open("a") as f:
        f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
