"""Reward functions by name or import path, each scored in a killable process with a time limit.

A reward function is a plain `fn(response: str, ground_truth: str) -> float`. Built-ins:
- `math`: `rewards.math` verification (last boxed answer, compared by value);
- `code`: fraction of test cases a fenced Python solution passes, run in a sandbox (`rewards.code`);
- `starts_with`: 1.0 when the response's first word is the ground truth (a trivially learnable
  reward for smoke tests of the training loop).
Anything else is `package.module:function`, imported inside the verifier process.
"""
from __future__ import annotations

import functools
import importlib
import logging
import math
import time
from concurrent.futures import ThreadPoolExecutor

from rewards.bounded import ERROR, OK, BoundedProcess, CallResult
from rewards.math import score_math
from rewards.result import RewardResult, Status

logger = logging.getLogger(__name__)

MATH_REWARD_TIMEOUT_S = 5.0  # math_reward's limit per call

BUILTINS = ("math", "code", "starts_with")


class RewardSpecError(ValueError):
    """reward.fn names no usable reward function; the message says why."""


def starts_with(response: str, ground_truth: str) -> float:
    words = response.split(maxsplit=1)
    return 1.0 if words and words[0] == ground_truth.strip() else 0.0


def check_reward(spec: str, code_isolation: str = "bwrap") -> None:
    """Everything a run's reward needs, checked before any actor starts: the function exists and,
    for the code reward, its sandbox can be had here (else one line names what is missing)."""
    check_spec(spec)
    if spec == "code":
        from rewards.sandbox import check_isolation

        check_isolation(code_isolation)


def check_spec(spec: str) -> None:
    """Raise RewardSpecError naming the problem if `spec` is neither a built-in nor 'module:function'."""
    if spec in BUILTINS:
        return
    if spec.count(":") != 1:
        raise RewardSpecError(f"reward.fn={spec!r}: expected one of {', '.join(BUILTINS)} or 'package.module:function'")
    _import_fn(spec)


@functools.lru_cache(maxsize=16)
def _import_fn(spec: str):
    module_name, fn_name = spec.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise RewardSpecError(f"reward.fn={spec!r}: cannot import {module_name} ({e})") from None
    fn = getattr(module, fn_name, None)
    if not callable(fn):
        raise RewardSpecError(f"reward.fn={spec!r}: {module_name} has no function {fn_name}")
    return fn


def score_one(spec: str, response: str, ground_truth: str, code_limits=None) -> tuple[float, str]:
    """Runs inside the verifier process: (score, status)."""
    if spec == "math":
        return score_math(response, ground_truth)
    if spec == "code":
        from rewards.code import score_code
        from rewards.sandbox import SandboxLimits

        return score_code(response, ground_truth, code_limits or SandboxLimits())
    fn = starts_with if spec == "starts_with" else _import_fn(spec)
    score = fn(response, ground_truth)
    if isinstance(score, bool) or not isinstance(score, (int, float)) or not math.isfinite(score):
        raise TypeError(f"reward {spec} returned {score!r}; expected a finite float")
    return float(score), Status.CORRECT if score > 0 else Status.WRONG


class RewardScorer:
    """Scores batches in parallel over `num_workers` killable processes, `timeout_s` per response."""

    def __init__(self, spec: str, timeout_s: float, num_workers: int = 1, memory_limit_mb: int = 4096,
                 code_limits=None):
        check_reward(spec, code_limits.isolation if code_limits is not None else "bwrap")
        self.spec, self.timeout_s, self.code_limits = spec, timeout_s, code_limits
        preload = ("rewards.registry",) + (() if spec in BUILTINS else (spec.split(":")[0],))
        self._procs = [BoundedProcess(memory_limit_mb, preload) for _ in range(num_workers)]
        self._pool = ThreadPoolExecutor(max_workers=num_workers)

    def start(self) -> None:
        list(self._pool.map(lambda p: p.start(), self._procs))

    def _score_slice(self, proc: BoundedProcess, items: list[tuple[str, str]]) -> list[RewardResult]:
        out = []
        for response, gt in items:
            t0 = time.perf_counter()
            try:
                res = proc.call(score_one, (self.spec, response, gt, self.code_limits), self.timeout_s)
            except RuntimeError as e:  # the verifier process could not start: an error, not a verdict
                res = CallResult(ERROR, error=str(e))
            took = time.perf_counter() - t0
            if res.status == OK:
                out.append(RewardResult(res.value[0], res.value[1], seconds=took))
            else:
                out.append(RewardResult(0.0, res.status, f"{self.spec}: {res.error}" if res.error else "", took))
        return out

    def score_batch(self, responses: list[str], ground_truths: list[str]) -> list[RewardResult]:
        k = len(self._procs)
        items = list(zip(responses, ground_truths))
        # Strided slices: worker j scores items j, j+k, ... so each process sees a mix of lengths.
        slices = list(self._pool.map(self._score_slice, self._procs, [items[j::k] for j in range(k)]))
        out: list[RewardResult] = [None] * len(items)  # type: ignore[list-item]
        for j, sl in enumerate(slices):
            out[j::k] = sl
        return out

    @property
    def restarts(self) -> int:
        return sum(p.restarts for p in self._procs)

    def close(self) -> None:
        for p in self._procs:
            p.close()
        self._pool.shutdown(wait=False)


@functools.lru_cache(maxsize=1)
def _math_scorer() -> RewardScorer:
    # math_reward is the plain-function contract; it shares one lazily started verifier process
    # per Python process so that calling it in a loop does not pay a process start per call.
    return RewardScorer("math", timeout_s=MATH_REWARD_TIMEOUT_S)


def math_reward(response: str, ground_truth: str) -> float:
    """1.0 when the response's final answer equals the ground truth mathematically, else 0.0.

    Never raises; bounded in time on any input (default 5 s per call).
    """
    try:
        return _math_scorer().score_batch([str(response)], [str(ground_truth)])[0].score
    except RuntimeError as e:  # only a verifier process that cannot start; the contract is never to raise
        logger.error("math_reward: %s", e)
        return 0.0
