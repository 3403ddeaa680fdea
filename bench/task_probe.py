"""Base-model probe: greedy accuracy, avg@n and pass@n of the policy on candidate tasks and prompts.

RL sharpens what a model can already sometimes do, so a demo task should have pass@n (at the
training temperature) well above greedy accuracy. This measures that before choosing a task.

Usage: python bench/task_probe.py [--model smollm2-135m-instruct] [--n 8] [--prompts 64]
       [--temperature 1.0] [--max-tokens 48] [--tasks add9,add20,...] [--instructions box,plain]
Prints one row per (task, instruction) and appends them as JSON lines to --out.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
from pathlib import Path

# The engine in this process: killing the probe then leaves no orphaned vLLM worker behind.
os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from launch.data import KINDS, synthetic_arithmetic  # noqa: E402
from launch.models import resolve_model_path  # noqa: E402
from learner.passk import mean_pass_at_k  # noqa: E402
from rewards.registry import RewardScorer  # noqa: E402

INSTRUCTIONS = {
    "box": "Put the final answer in \\boxed{}.",
    "boxex": "Write the final answer in a box, like \\boxed{12}.",
    "plain": "",
    "answer": "End with 'The answer is N.'",
    "hashes": "Let's think step by step and output the final answer after \"####\".",  # verl's GSM8K prompt
}
_NUM = re.compile(r"-?\d+")


def last_number(text: str) -> str | None:
    """Diagnostic only (never a reward): the response's last integer, to see what the model knows
    apart from whether it writes the answer in a form the verifier accepts."""
    nums = _NUM.findall(text)
    return nums[-1] if nums else None


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--prompts", type=int, default=64)
    ap.add_argument("--temperatures", default="1.0", help="comma-separated sampling temperatures")
    ap.add_argument("--max-tokens", type=int, default=48)
    ap.add_argument("--tasks", default="add:9,sub:9,mul:9,word:9,add+sub+word:20",
                    help="comma-separated KINDS(+KINDS):max_operand")
    ap.add_argument("--instructions", default="box,plain")
    ap.add_argument("--out", default=str(REPO / "bench/results/task_probe.jsonl"))
    ap.add_argument("--note", default="", help="free text stored with each row (e.g. what changed)")
    ap.add_argument("--reward", default="math", help="reward.fn to score with (a built-in, module:fn or file.py:fn)")
    args = ap.parse_args()

    from transformers import AutoTokenizer
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    path = str(resolve_model_path(args.model))
    tok = AutoTokenizer.from_pretrained(path)
    llm = LLM(model=path, dtype="float32", enforce_eager=True, gpu_memory_utilization=0.2, max_model_len=512, seed=0)
    scorer = RewardScorer(args.reward, 5.0, num_workers=2)
    scorer.start()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    for task in args.tasks.split(","):
        kinds, top = task.split(":")
        assert all(k in KINDS for k in kinds.split("+")), f"unknown kind in {task}; known: {list(KINDS)}"
        rows = synthetic_arithmetic(args.prompts, int(top), 1234, kinds.split("+"))
        for ins_name in args.instructions.split(","):
            ins = INSTRUCTIONS[ins_name]
            ids = [tok.apply_chat_template([{"role": "user", "content": f"{r['prompt']} {ins}".strip()}],
                                           add_generation_prompt=True, tokenize=True, return_dict=False) for r in rows]
            prompts = [TokensPrompt(prompt_token_ids=list(i)) for i in ids]
            t0 = time.perf_counter()
            greedy = llm.generate(prompts, SamplingParams(temperature=0.0, max_tokens=args.max_tokens), use_tqdm=False)
            g_texts = [o.outputs[0].text for o in greedy]
            g_res = scorer.score_batch(g_texts, [r["answer"] for r in rows])
            base = {"note": args.note, "reward": args.reward, "task": task, "instruction": ins_name, "prompts": len(rows), "n": args.n,
                    "max_tokens": args.max_tokens,
                    "greedy": sum(r.status == "correct" for r in g_res) / len(rows),
                    "greedy_no_answer": sum(r.status == "no_answer" for r in g_res) / len(rows),
                    "greedy_last_number": sum(last_number(t) == r["answer"] for t, r in zip(g_texts, rows)) / len(rows),
                    "greedy_example": g_texts[0][:160], "prompt_example": rows[0]["prompt"]}
            for temp in map(float, args.temperatures.split(",")):
                sampled = llm.generate(prompts, SamplingParams(n=args.n, temperature=temp, max_tokens=args.max_tokens),
                                       use_tqdm=False)
                s_texts = [c.text for o in sampled for c in o.outputs]
                s_res = scorer.score_batch(s_texts, [r["answer"] for r in rows for _ in range(args.n)])
                correct = [r.status == "correct" for r in s_res]
                per_prompt = [sum(correct[i:i + args.n]) for i in range(0, len(correct), args.n)]
                pk = mean_pass_at_k(per_prompt, args.n)
                row = {**base, "temperature": temp, f"avg@{args.n}": sum(correct) / len(correct),
                       "pass@k": {k: round(v, 3) for k, v in pk.items()},
                       "sampled_no_answer": sum(r.status == "no_answer" for r in s_res) / len(s_res),
                       "seconds": round(time.perf_counter() - t0, 1)}
                print(json.dumps(row), flush=True)
                with open(args.out, "a") as f:
                    f.write(json.dumps(row) + "\n")
    scorer.close()


if __name__ == "__main__":
    main()
