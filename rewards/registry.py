"""Reward functions by name or import path, each scored in a killable process with a time limit.

A reward function is a plain `fn(response: str, ground_truth: str) -> float`, or one in verl's,
TRL's or OpenRLHF's shape (`rewards.shapes`). Built-ins:
- `math`: `rewards.math` verification (last boxed answer, compared by value);
- `code`: fraction of test cases a fenced Python solution passes, run in a sandbox (`rewards.code`);
- `starts_with`: 1.0 when the response's first word is the ground truth (a trivially learnable
  reward for smoke tests of the training loop).
Anything else is `package.module:function` or `path/to/file.py:function`, imported inside the
verifier process.
"""
from __future__ import annotations

import functools
import logging
import os
import time
from concurrent.futures import ThreadPoolExecutor

from rewards.bounded import ERROR, OK, BoundedProcess, CallResult
from rewards.math import score_math
from rewards.result import FAILED, RewardResult, Status
from rewards.shapes import SHAPES, Sample, ShapeError, call, describe, detect_shape, read_return
from rewards.specs import SpecError, import_spec, is_file_spec

logger = logging.getLogger(__name__)

MATH_REWARD_TIMEOUT_S = 5.0  # math_reward's limit per call

BUILTINS = ("math", "code", "starts_with")


class RewardSpecError(SpecError):
    """reward.fn names no usable reward function; the message says why."""


def starts_with(response: str, ground_truth: str) -> float:
    words = response.split(maxsplit=1)
    return 1.0 if words and words[0] == ground_truth.strip() else 0.0


def check_reward(spec: str, code_isolation: str = "bwrap", shape: str = "auto") -> None:
    """Everything a run's reward needs, checked before any actor starts: the function exists and
    fits its shape, and for the code reward, its sandbox can be had here (else one line names
    what is missing)."""
    check_spec(spec, shape)
    if spec == "code":
        from rewards.sandbox import check_isolation

        check_isolation(code_isolation)


def check_reward_config(cfg) -> None:
    """check_reward for a reward config's reward.fn and each of its reward.extra_fns."""
    check_reward(cfg.fn, cfg.code_isolation, cfg.shape)
    for other in cfg.extra_fns:
        check_reward(other, cfg.code_isolation)


def check_spec(spec: str, shape: str = "auto") -> None:
    """Raise RewardSpecError naming the problem if `spec` is neither a built-in nor an importable
    function in the given shape."""
    if spec in BUILTINS:
        return
    if spec.count(":") != 1 and not (is_file_spec(spec) and ":" in spec):
        raise RewardSpecError(f"reward.fn={spec!r}: expected one of {', '.join(BUILTINS)}, 'package.module:function' "
                              "or 'path/to/file.py:function'")
    fn = _import_fn(spec)
    if shape not in ("auto", *SHAPES):
        raise RewardSpecError(f"reward.shape={shape!r}: expected auto or one of {', '.join(SHAPES)}")
    try:
        resolve_shape(fn, shape)
    except ShapeError as e:
        raise RewardSpecError(f"reward.fn={spec!r}: {e}") from None


def resolve_shape(fn, shape: str) -> str:
    """The shape `fn` is called in: the declared one, or the one its signature shows."""
    return detect_shape(fn) if shape == "auto" else shape


@functools.lru_cache(maxsize=16)
def _import_fn(spec: str):
    fn = import_spec(spec, "reward.fn", "function", RewardSpecError)
    if not callable(fn):
        raise RewardSpecError(f"reward.fn={spec!r}: {spec.rsplit(':', 1)[0]} has no function {spec.rsplit(':', 1)[1]}")
    return fn


def score_one(spec: str, sample: Sample, code_limits=None, shape: str = "auto",
              extra: tuple[tuple[str, float], ...] = (), math_form: str = "value") -> tuple:
    """Runs inside the verifier process: (score, status, extras). `extra`: (spec, weight) of more
    rewards added to the score with their weights (TRL's reward_funcs and reward_weights); the
    verdict stays `spec`'s, and each one's own score is reported among the extras by its name.
    `math_form`: reward.math_answer_form, for the math reward."""
    score, status, extras = _score(spec, sample, code_limits, shape, math_form)
    if not extra:
        return score, status, extras
    parts = [(reward_name(spec), score)]
    for other, weight in extra:
        value = _score(other, sample, code_limits, "auto", math_form)[0]
        parts.append((reward_name(other), value))
        score += weight * value
    return score, status, extras + tuple(parts)


def reward_name(spec: str) -> str:
    """What a reward's own score is logged as (reward/fn/<name>): a built-in's name, else its function's."""
    return spec.rsplit(":", 1)[-1]


def _score(spec: str, sample: Sample, code_limits=None, shape: str = "auto", math_form: str = "value") -> tuple:
    if spec == "math":
        return (*score_math(sample.response, sample.ground_truth, math_form == "number"), ())
    if spec == "code":
        from rewards.code import score_code
        from rewards.sandbox import SandboxLimits

        return (*score_code(sample.response, sample.ground_truth, code_limits or SandboxLimits()), ())
    if spec == "starts_with":
        score = starts_with(sample.response, sample.ground_truth)
        return score, Status.CORRECT if score else Status.WRONG, ()
    fn = _import_fn(spec)
    raw = call(fn, resolve_shape(fn, shape), sample)
    try:
        score, correct, extras = read_return(raw)
    except ShapeError as e:
        raise TypeError(f"{describe(fn)}: {e}") from None
    return score, Status.CORRECT if correct else Status.WRONG, extras


class RewardScorer:
    """Scores batches in parallel over `num_workers` killable processes, `timeout_s` per response."""

    def __init__(self, spec: str, timeout_s: float, num_workers: int = 1, memory_limit_mb: int = 4096,
                 code_limits=None, shape: str = "auto", extra: tuple[tuple[str, float], ...] = (),
                 math_form: str = "value"):
        isolation = code_limits.isolation if code_limits is not None else "bwrap"
        check_reward(spec, isolation, shape)
        for other, _ in extra:
            check_reward(other, isolation)
        self.spec, self.timeout_s, self.code_limits, self.shape = spec, timeout_s, code_limits, shape
        self.math_form = math_form
        self.extra = tuple((str(s), float(w)) for s, w in extra)
        modules = [s.split(":")[0] for s in (spec, *(o for o, _ in extra)) if not (s in BUILTINS or is_file_spec(s))]
        preload = ("rewards.registry", *dict.fromkeys(modules))
        search = (os.getcwd(),) if modules else ()  # as _import_fn: after everything installed
        self._procs = [BoundedProcess(memory_limit_mb, preload, search) for _ in range(num_workers)]
        self._pool = ThreadPoolExecutor(max_workers=num_workers)

    def start(self) -> None:
        list(self._pool.map(lambda p: p.start(), self._procs))

    def _score_slice(self, proc: BoundedProcess, items: list[Sample]) -> list[RewardResult]:
        out = []
        for sample in items:
            t0 = time.perf_counter()
            try:
                res = proc.call(score_one, (self.spec, sample, self.code_limits, self.shape, self.extra, self.math_form),
                                self.timeout_s)
            except RuntimeError as e:  # the verifier process could not start: an error, not a verdict
                res = CallResult(ERROR, error=str(e))
            took = time.perf_counter() - t0
            if res.status == OK:
                score, status, extras = res.value
                out.append(RewardResult(score, status, seconds=took, extras=extras))
            else:
                out.append(RewardResult(0.0, res.status, f"{self.spec}: {res.error}" if res.error else "", took))
        return out

    def score_samples(self, samples: list[Sample]) -> list[RewardResult]:
        k = len(self._procs)
        # Strided slices: worker j scores items j, j+k, ... so each process sees a mix of lengths.
        slices = list(self._pool.map(self._score_slice, self._procs, [samples[j::k] for j in range(k)]))
        out: list[RewardResult] = [None] * len(samples)  # type: ignore[list-item]
        for j, sl in enumerate(slices):
            out[j::k] = sl
        return out

    def score_batch(self, responses: list[str], ground_truths: list[str]) -> list[RewardResult]:
        """Responses against plain-text ground truths, with no other data (the built-ins need none)."""
        return self.score_samples([Sample(r, g) for r, g in zip(responses, ground_truths, strict=True)])

    @property
    def restarts(self) -> int:
        return sum(p.restarts for p in self._procs)

    def close(self) -> None:
        for p in self._procs:
            p.close()
        self._pool.shutdown(wait=False)


def extra_rewards(cfg) -> tuple[tuple[str, float], ...]:
    """(spec, weight) of a reward config's extra_fns (weight 1 each when extra_weights is empty)."""
    weights = cfg.extra_weights or [1.0] * len(cfg.extra_fns)
    return tuple(zip(cfg.extra_fns, weights, strict=True))


def check_ground_truths(cfg, prompts, source: str) -> None:
    """Every row's ground truth, checked without running anything, where a built-in reward can (the
    code reward's test specs): a malformed spec, or an assert that any code passes, stops the run
    in one line naming the row, before any actor starts, not as errors in the middle of training."""
    if "code" not in (cfg.fn, *(s for s, _ in extra_rewards(cfg))):
        return
    from rewards.code import check_ground_truth

    for p in prompts:
        try:
            check_ground_truth(p.answer)
        except ValueError as e:
            raise RewardSpecError(f"{source} row {p.uid + 1}: {e}"[:600]) from None


def dry_call_reward(cfg, prompt, where: str) -> None:
    """Call a user's reward (reward config `cfg`) once on a real data row, `prompt`, with the row's
    own answer as the response, in a verifier process, before any actor starts: a wrong signature,
    a missing column or a return value that is not a score fails here in one line, naming the
    function and the row, not after two steps of training."""
    extra = extra_rewards(cfg)
    if cfg.fn in BUILTINS and all(s in BUILTINS for s, _ in extra):
        return
    scorer = RewardScorer(cfg.fn, cfg.timeout_s, shape=cfg.shape, extra=extra, math_form=cfg.math_answer_form)
    try:
        (res,) = scorer.score_samples([Sample.of(prompt, response=prompt.answer)])
    finally:
        scorer.close()
    if res.status in FAILED or res.status == Status.TIMEOUT:
        why = res.detail.removeprefix(f"{cfg.fn}: ") or res.status
        raise RewardSpecError(f"reward.fn={cfg.fn!r}: a dry call on {where} failed ({why})"[:600])


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
