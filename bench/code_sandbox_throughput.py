"""Code-reward throughput: answers per second through RewardScorer("code"), honest and hostile
solutions mixed, and the start cost of one sandboxed run. Runs against whichever checkout is on
PYTHONPATH, so two checkouts can be measured side by side in one session:

    PYTHONPATH=/path/to/old python bench/code_sandbox_throughput.py --label old
    PYTHONPATH=.            python bench/code_sandbox_throughput.py --label new --out bench/results/code_sandbox.json

It also prints how many hostile answers scored above 0 (they should not).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path

STDIN = json.dumps({"tests": [{"input": "2", "output": "4"}, {"input": "5", "output": "10"}]})
ASSERTS = json.dumps({"asserts": ["assert f(2) == 4", "assert f(3) == 9", "assert f(10) == 100"]})


def sol(body: str) -> str:
    return f"Here you go:\n```python\n{body}\n```"


# (kind, response, ground truth, count); hostile kinds must score 0
MIX = [
    ("right stdin", sol("print(int(input()) * 2)"), STDIN, 70),
    ("wrong stdin", sol("print(int(input()) + 2)"), STDIN, 40),
    ("right asserts", sol("def f(x):\n    return x * x"), ASSERTS, 60),
    ("wrong asserts", sol("def f(x):\n    return x + x"), ASSERTS, 40),
    ("hostile exit", sol("import sys\ndef f(x):\n    return 0\nsys.exit(0)"), ASSERTS, 12),
    ("hostile always-equal", sol("class E:\n    def __eq__(s, o):\n        return True\ndef f(x):\n    return E()"),
     ASSERTS, 12),
    ("hostile patched abs", sol("import builtins\nbuiltins.abs = lambda x: 0\ndef f(x):\n    return 0"),
     json.dumps({"asserts": ["assert abs(f(2) - 4) < 1e-9"]}), 8),
    ("hostile fork bomb", sol("import os\nwhile True:\n    os.fork()"), STDIN, 4),
    ("hostile loop", sol("while True:\n    pass"), STDIN, 4),
]


def start_cost(n: int = 20) -> float:
    """Median seconds of one sandboxed run of an empty program."""
    try:
        from rewards.sandbox import SandboxLimits, run

        call = lambda: run("pass", "", SandboxLimits())  # noqa: E731
    except ImportError:  # the sandbox before rewards/sandbox.py
        from rewards.code import SandboxLimits, run_sandboxed

        call = lambda: run_sandboxed("pass", "", SandboxLimits())  # noqa: E731
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--label", required=True)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, help="append this run's figures to a JSON list here")
    args = ap.parse_args()
    from rewards.registry import RewardScorer

    items = [(kind, resp, gt) for kind, resp, gt, n in MIX for _ in range(n)]
    random.Random(0).shuffle(items)
    scorer = RewardScorer("code", timeout_s=30.0, num_workers=args.workers)
    scorer.start()
    try:
        t0 = time.perf_counter()
        results = scorer.score_batch([r for _, r, _ in items], [g for _, _, g in items])
        seconds = time.perf_counter() - t0
    finally:
        scorer.close()
    by_kind: dict[str, list[float]] = {}
    for (kind, _, _), r in zip(items, results):
        by_kind.setdefault(kind, []).append(r.score)
    report = {
        "label": args.label, "answers": len(items), "workers": args.workers, "seconds": round(seconds, 2),
        "answers_per_s": round(len(items) / seconds, 2), "start_cost_s": round(start_cost(), 4),
        "mean_score_by_kind": {k: round(sum(v) / len(v), 3) for k, v in by_kind.items()},
        "hostile_answers_scoring_above_0": sum(s > 0 for k, v in by_kind.items() if k.startswith("hostile") for s in v),
    }
    print(json.dumps(report, indent=2))
    if args.out:
        rows = json.loads(args.out.read_text()) if args.out.is_file() else []
        args.out.write_text(json.dumps(rows + [report], indent=2) + "\n")


if __name__ == "__main__":
    main()
