"""Reward functions in the shapes users bring from other trainers, called one response at a time.

- `forkrl`: `fn(response, ground_truth) -> float`.
- `verl`: `compute_score(data_source, solution_str, ground_truth, extra_info=None)` -> float or a
  dict holding `score` (its other numeric keys are logged).
- `trl`: `fn(completions, **columns) -> list[float]`, with `prompts` and the data row's other
  columns as keyword arguments; completions are chat messages when the prompt was.
- `openrlhf`: `reward_func(queries, prompts, labels)` -> a tensor / list, or a dict holding
  `rewards` (and `extra_logs`, logged).

The batched shapes (TRL, OpenRLHF) get a batch of one: each response is still scored in its own
killable call with its own time limit, and one bad response cannot void its batch.

Whether an answer is *correct* (reward/accuracy, eval/accuracy, learner.signal=verdict) is the
reward's explicit `acc` or `correct` field when it returns one; a plain number counts as correct
only at full credit (score >= 1). Partial credit and format bonuses are not correct answers.
"""
from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, field
from typing import Literal

Shape = Literal["auto", "forkrl", "verl", "trl", "openrlhf"]
SHAPES = ("forkrl", "verl", "trl", "openrlhf")
FULL_CREDIT = 1.0  # a plain-number score at or above this is a correct answer
_SCORE_KEYS = ("score", "reward", "rewards")  # verl's dict; OpenRLHF's
_VERDICT_KEYS = ("acc", "correct")
# TRL passes these itself; a data column of the same name does not override them
_TRL_OWN = ("prompts", "completions", "completion_ids")


@dataclass(frozen=True)
class Sample:
    """What a reward function may see about one response."""

    response: str
    ground_truth: str  # the answer as text (a dict or list ground truth as JSON)
    label: object = None  # the ground truth as the data had it (str, dict or list); None: ground_truth
    prompt: str | list = ""  # the question as the data had it: text or chat messages
    fields: dict = field(default_factory=dict)  # the data row's other columns (data_source, extra_info, ...)

    @classmethod
    def of(cls, prompt, response: str) -> "Sample":
        """Response `response` to an `actors.types.Prompt`: its row's answer, question and columns."""
        return cls(response, prompt.answer, prompt.label, prompt.question or prompt.text, prompt.fields)

    @property
    def gold(self):
        return self.ground_truth if self.label is None else self.label

    @property
    def prompt_text(self) -> str:
        if isinstance(self.prompt, str):
            return self.prompt
        return "\n".join(m["content"] for m in self.prompt if m.get("role") == "user")


class ShapeError(TypeError):
    """A function that fits no reward shape, or a return value no shape allows."""


def _params(fn) -> tuple[list[str], bool]:
    """Parameter names of `fn` and whether it takes **kwargs."""
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):  # a builtin without a signature: treat as forkrl's two arguments
        return ["response", "ground_truth"], False
    names = [p.name for p in sig.parameters.values() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    return names, any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())


def describe(fn) -> str:
    try:
        return f"{getattr(fn, '__name__', fn)}{inspect.signature(fn)}"
    except (TypeError, ValueError):
        return str(getattr(fn, "__name__", fn))


def detect_shape(fn) -> str:
    """The shape `fn`'s parameter names say it has; ShapeError when they fit none."""
    names, _ = _params(fn)
    if "solution_str" in names:
        return "verl"
    if "completions" in names:
        return "trl"
    if {"queries", "labels"} <= set(names):
        return "openrlhf"
    try:
        inspect.signature(fn).bind("response", "ground truth")
        return "forkrl"
    except TypeError:  # takes other arguments than two positional ones
        pass
    except ValueError:  # no signature to read (a builtin): let the call say
        return "forkrl"
    raise ShapeError(f"{describe(fn)} fits no reward shape: expected forkrl's fn(response, ground_truth), "
                     "verl's compute_score(data_source, solution_str, ground_truth, extra_info), TRL's "
                     "fn(completions, **kwargs) or OpenRLHF's reward_func(queries, prompts, labels)")


def _accepted(fn, kwargs: dict) -> dict:
    """The keyword arguments `fn` takes (all of them if it has **kwargs): a verl function written
    before extra_info existed, or a TRL function naming only the columns it reads, still fits."""
    names, var_kw = _params(fn)
    return kwargs if var_kw else {k: v for k, v in kwargs.items() if k in names}


def call(fn, shape: str, s: Sample):
    """fn's raw return for one response, called the way its trainer calls it."""
    if shape == "forkrl":
        return fn(s.response, s.ground_truth)
    if shape == "verl":
        return fn(**_accepted(fn, {"data_source": s.fields.get("data_source", ""), "solution_str": s.response,
                                   "ground_truth": s.gold, "extra_info": s.fields.get("extra_info")}))
    if shape == "trl":
        chat = isinstance(s.prompt, list)
        columns = {k: [v] for k, v in s.fields.items() if k not in _TRL_OWN}
        completion = [{"role": "assistant", "content": s.response}] if chat else s.response
        return fn(**_accepted(fn, {**columns, "prompts": [s.prompt], "completions": [completion]}))
    if shape == "openrlhf":
        return fn(**_accepted(fn, {"queries": [s.prompt_text + s.response], "prompts": [s.prompt_text],
                                   "labels": [s.ground_truth]}))
    raise ShapeError(f"unknown reward shape {shape!r}; expected one of {', '.join(SHAPES)}")


def _number(value, what: str) -> float:
    """A finite float from a number, a one-element list or tuple, or a one-element tensor / array."""
    if hasattr(value, "tolist") and not isinstance(value, (int, float)):  # torch / numpy, not imported here
        value = value.tolist()
    if isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ShapeError(f"{what} has {len(value)} values for 1 response")
        value = value[0]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ShapeError(f"{what} is {value!r}; expected a finite float")
    return float(value)


def read_return(value) -> tuple[float, bool, tuple[tuple[str, float], ...]]:
    """(score, correct, extras) from what a reward function returned; ShapeError names what is wrong."""
    if not isinstance(value, dict):
        score = _number(value, "the return value")
        return score, score >= FULL_CREDIT, ()
    keys = [k for k in _SCORE_KEYS if k in value]
    if not keys:
        raise ShapeError(f"returned a dict without a score (keys: {', '.join(map(str, value))[:200]}); "
                         f"expected one of {', '.join(_SCORE_KEYS)}")
    score = _number(value[keys[0]], f"its {keys[0]!r}")
    verdicts = [k for k in _VERDICT_KEYS if k in value]
    if verdicts:
        v = value[verdicts[0]]
        if hasattr(v, "tolist"):
            v = v.tolist()
        if isinstance(v, (list, tuple)) and len(v) == 1:
            v = v[0]
        if v not in (True, False, 0, 1):
            raise ShapeError(f"its {verdicts[0]!r} is {v!r}; expected a bool (or 0 / 1)")
        correct = bool(v)
    else:
        correct = score >= FULL_CREDIT
    logs = dict(value.get("extra_logs") or {})  # OpenRLHF's
    logs.update({k: v for k, v in value.items() if k not in (*_SCORE_KEYS, *_VERDICT_KEYS, "extra_logs")})
    extras = []
    for k, v in logs.items():
        try:
            extras.append((str(k), _number(float(v) if isinstance(v, bool) else v, str(k))))
        except (ShapeError, TypeError, ValueError):
            continue  # a text field (verl's `pred`) is not a metric
    return score, correct, tuple(extras)
