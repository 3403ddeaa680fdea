"""Base-model probe for tool use: greedy accuracy, avg@n and pass@k with and without the python tool.

The successor of task_probe.py for multi-turn: it samples through the trainer's own generation
worker (actors.generation.GenerationWorker, the plain class, no Ray) with env.name=single_turn and
env.name=python, so the probe sees exactly the rollouts training would. For each task it also
reports how often the model called the tool and how many of its right answers used it.

Usage: python bench/tool_probe.py [--n 8] [--prompts 48] [--tasks add:10:999,mul:10:99,...]
       [--instruction "..."] [--max-tokens 160] [--temperature 1.0]
Prints one row per (task, env) and appends them as JSON lines to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from actors.generation import GenerationWorker  # noqa: E402
from launch.config import EnvConfig, GenerationConfig  # noqa: E402
from launch.data import synthetic_arithmetic, tokenize  # noqa: E402
from launch.models import resolve_model_path  # noqa: E402
from learner.passk import mean_pass_at_k  # noqa: E402
from rewards.registry import RewardScorer  # noqa: E402

TOOL_INSTRUCTION = ("You can run Python: write code in a ```python block and you will see its output. "
                    "Put the final answer in \\boxed{}.")


def probe(worker, scorer, prompts, n: int, max_tokens: int) -> dict:
    greedy = worker.evaluate(prompts, 1, max_tokens, seed=0)
    answers = [p.answer for p in prompts]
    g_ok = [r.status == "correct" for r in scorer.score_batch(greedy.response_text, answers)]
    sampled = worker.evaluate(prompts, n, max_tokens, seed=1)
    s_ok = [r.status == "correct" for r in scorer.score_batch(sampled.response_text, [a for a in answers for _ in range(n)])]
    per_prompt = [sum(s_ok[i:i + n]) for i in range(0, len(s_ok), n)]
    out = {"greedy": sum(g_ok) / len(g_ok), f"avg@{n}": sum(s_ok) / len(s_ok),
           "pass@k": {k: round(v, 3) for k, v in mean_pass_at_k(per_prompt, n).items()},
           "greedy_example": greedy.response_text[0][:200]}
    if greedy.tool_calls:
        g_used = [c > 0 for c in greedy.tool_calls]
        s_used = [c > 0 for c in sampled.tool_calls]
        out.update({"greedy_tool_rate": sum(g_used) / len(g_used), "sampled_tool_rate": sum(s_used) / len(s_used),
                    "sampled_correct_with_tool": sum(u and o for u, o in zip(s_used, s_ok)) / max(sum(s_ok), 1),
                    "sampled_acc_when_tool": sum(u and o for u, o in zip(s_used, s_ok)) / max(sum(s_used), 1)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=48)
    ap.add_argument("--temperature", type=float, default=1.0)
    ap.add_argument("--max-tokens", type=int, default=160)
    ap.add_argument("--max-turns", type=int, default=3)
    ap.add_argument("--tasks", default="add:10:999,sub:10:999,mul:10:99,mul:10:999,add+sub+mul+word:10:999",
                    help="comma-separated KINDS(+KINDS):min_operand:max_operand")
    ap.add_argument("--env", default="python", help="single_turn or python (one engine per process)")
    ap.add_argument("--instruction", default=TOOL_INSTRUCTION)
    ap.add_argument("--out", default=str(REPO / "bench/results/tool_probe.jsonl"))
    ap.add_argument("--note", default="")
    args = ap.parse_args()

    path = str(resolve_model_path(args.model))
    gen = GenerationConfig(group_size=args.n, max_new_tokens=args.max_tokens, temperature=args.temperature,
                           max_model_len=1024, gpu_memory_utilization=0.2)
    # The engine first: vLLM's CPU backend sizes its KV cache from this process's memory at start.
    env_name = args.env
    worker = GenerationWorker(gen, path, seed=0, env_cfg=EnvConfig(name=env_name, max_turns=args.max_turns))
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(path)
    scorer = RewardScorer("math", 5.0, num_workers=2)
    scorer.start()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for task in args.tasks.split(","):
        kinds, lo, hi = task.split(":")
        rows = synthetic_arithmetic(args.prompts, int(hi), 1234, kinds.split("+"), int(lo))
        prompts = tokenize(rows, tok, True, args.instruction, 256, "probe")
        t0 = time.perf_counter()
        row = {"note": args.note, "task": task, "env": env_name, "prompts": len(rows), "n": args.n,
               "temperature": args.temperature, "max_tokens": args.max_tokens, "max_turns": args.max_turns,
               **probe(worker, scorer, prompts, args.n, args.max_tokens), "seconds": round(time.perf_counter() - t0, 1)}
        print(json.dumps(row), flush=True)
        with open(args.out, "a") as f:
            f.write(json.dumps(row) + "\n")
    scorer.close()


if __name__ == "__main__":
    main()
