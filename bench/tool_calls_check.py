"""What the base model's tool calls compute: of its successful python calls, how many printed the
right answer, against how many trajectories then wrote it as the verified answer (bench/README.md,
"Tool probe"). 16 addition prompts (2-3 digits) x 8 samples at T = 0.6, 160-token budget, 3 turns.

Usage: python bench/tool_calls_check.py ['instruction']
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from actors.generation import GenerationWorker  # noqa: E402
from bench.tool_probe import TOOL_INSTRUCTION  # noqa: E402
from launch.config import EnvConfig, GenerationConfig  # noqa: E402
from launch.data import synthetic_arithmetic, tokenize  # noqa: E402
from launch.models import resolve_model_path  # noqa: E402
from rewards.math import score_math  # noqa: E402


def main() -> None:
    path = str(resolve_model_path("smollm2-135m-instruct"))
    worker = GenerationWorker(GenerationConfig(group_size=8, max_new_tokens=160, temperature=0.6), path, 0,
                              EnvConfig(name="python", max_turns=3))
    from transformers import AutoTokenizer

    rows = synthetic_arithmetic(16, 999, 1234, ["add"], 10)
    prompts = tokenize(rows, AutoTokenizer.from_pretrained(path), True,
                       sys.argv[1] if len(sys.argv) > 1 else TOOL_INSTRUCTION, 256, "check")
    batch = worker.generate(prompts, seed=0)
    ok_calls = printed_answer = right = 0
    for i in range(len(batch)):
        answer = rows[i // 8]["answer"]
        for turn in batch.turns[i]:
            if turn.tool == "ok":
                ok_calls += 1
                printed_answer += answer in turn.output
        right += score_math(batch.response_text[i], answer)[1] == "correct"
    print(json.dumps({"trajectories": len(batch), "ok_calls": ok_calls, "calls_printing_the_answer": printed_answer,
                      "right_answers": right}))


if __name__ == "__main__":
    main()
