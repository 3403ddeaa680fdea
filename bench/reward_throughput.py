"""Reward verification throughput and tail latency on a realistic mix of responses.

Usage: python bench/reward_throughput.py [--n 400] [--workers 1 2] [--timeout 5]
Prints answers verified per second (and per worker process) and p50/p99 latency per response,
for each worker count, measured side by side in one run.
"""
from __future__ import annotations

import argparse
import random
import statistics
import time

from rewards.registry import RewardScorer

FILLER = "Let me think step by step. First we add the numbers, then we simplify the result. "


def realistic_mix(n: int, hostile: float, seed: int = 0) -> list[tuple[str, str]]:
    """Mostly ordinary chain-of-thought answers, right and wrong, plus a few hard or hostile ones."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b = rng.randint(1, 99), rng.randint(1, 99)
        if rng.random() < hostile:
            out.append(("\\boxed{9^{9^{9^{9^{9}}}}}", "1"))  # a power tower: sympy would spin for minutes
            continue
        kind = rng.random()
        body = FILLER * rng.randint(1, 8)
        if kind < 0.35:
            out.append((f"{body} So the answer is \\boxed{{{a + b}}}.", str(a + b)))
        elif kind < 0.55:
            out.append((f"{body} Therefore \\boxed{{{a + b + 1}}}.", str(a + b)))
        elif kind < 0.70:
            out.append((f"{body} \\boxed{{\\frac{{{a}}}{{{b}}}}}", f"\\frac{{{2 * a}}}{{{2 * b}}}"))
        elif kind < 0.80:
            out.append((f"{body} \\boxed{{(x+{a})^2}}", f"x^2+{2 * a}x+{a * a}"))
        elif kind < 0.88:
            out.append((f"{body} \\boxed{{[{a}, {a + b})}}", f"[{a},{a + b})"))
        else:
            out.append((body + " I am not sure.", str(a)))
    return out


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=400)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    ap.add_argument("--timeout", type=float, default=5.0)
    ap.add_argument("--hostile", type=float, nargs="+", default=[0.0, 0.01], help="shares of power-tower answers")
    args = ap.parse_args()
    for share in args.hostile:
        items = realistic_mix(args.n, share)
        print(f"{args.n} responses, timeout {args.timeout}s, hostile share {share:.0%}")
        for k in args.workers:
            measure(items, k, args.timeout)


def measure(items, k: int, timeout: float) -> None:
    responses, golds = [i[0] for i in items], [i[1] for i in items]
    scorer = RewardScorer("math", timeout, num_workers=k)
    scorer.start()
    scorer.score_batch(responses[:8], golds[:8])  # pay imports and caches before timing
    t0 = time.perf_counter()
    results = scorer.score_batch(responses, golds)
    wall = time.perf_counter() - t0
    latencies = sorted(r.seconds for r in results)
    p99 = latencies[int(0.99 * (len(latencies) - 1))]
    print(f"  workers={k}: {len(items) / wall:7.1f} answers/s total, {len(items) / wall / k:7.1f} per worker; "
          f"p50 {statistics.median(latencies) * 1000:6.1f} ms, p99 {p99 * 1000:7.1f} ms, timeouts {scorer.restarts}")
    scorer.close()


if __name__ == "__main__":
    main()
