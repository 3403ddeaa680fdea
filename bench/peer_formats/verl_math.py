"""A reward in verl's shape that verifies with forkrl's math verifier, as verl's own math_verify
scorer delegates to math-verify: compute_score(data_source, solution_str, ground_truth, extra_info)
returning verl's dict (score, acc, and a number of its own). By file path:
reward.fn=bench/peer_formats/verl_math.py:compute_score (bench/README.md "Peer formats").

It runs inside forkrl's verifier process, which already bounds it in time and memory, so it calls
the verifier directly rather than through rewards.registry.math_reward (a second process)."""
from rewards.math import score_math


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    score, status = score_math(solution_str, ground_truth)
    return {"score": score, "acc": status == "correct", "no_answer": float(status == "no_answer"),
            "status": str(status)}
