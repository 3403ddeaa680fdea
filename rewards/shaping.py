"""Reward shaping terms added to the verifier's score (pure functions).

- format: 1.0 when the response has its final answer in the reward's form (a non-empty
  \\boxed{...}; for the code reward, a non-empty fenced code block) and ended on its own
  (EOS/stop), not by hitting the length limit;
- overlong (DAPO soft punishment): 0 up to L_max - L_cache tokens, then a linear penalty reaching
  -1 at L_max, -1 beyond; here L_max is generation.max_new_tokens (the engine never goes past it,
  so a truncated response gets the full -1).
"""
from __future__ import annotations

from rewards.code import extract_code
from rewards.math import last_boxed


def format_reward(response: str, finished: bool, form: str = "boxed") -> float:
    """An empty box or block earns nothing: a policy would learn to append one to any response,
    and a `\\boxed{}` in a code response (the form the code reward never reads) likewise."""
    answer = extract_code(response) if form == "code" else last_boxed(response)
    return 1.0 if finished and answer is not None and answer.strip() else 0.0


def overlong_penalty(length: int, max_len: int, cache: int) -> float:
    """DAPO's soft overlong punishment in [-1, 0]; `cache` = L_cache (0 disables it)."""
    if cache <= 0 or length <= max_len - cache:
        return 0.0
    if length >= max_len:
        return -1.0
    return -(length - (max_len - cache)) / cache


def shaped_score(score: float, response: str, finished: bool, length: int, *, format_weight: float,
                 overlong_weight: float, max_len: int, overlong_cache: int, form: str = "boxed") -> float:
    """verifier score + format_weight * format (answer in `form`) + overlong_weight * overlong penalty."""
    total = score
    if format_weight:
        total += format_weight * format_reward(response, finished, form)
    if overlong_weight:
        total += overlong_weight * overlong_penalty(length, max_len, overlong_cache)
    return total
