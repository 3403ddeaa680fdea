"""The environment interface of multi-turn rollouts.

An environment is a plain class, constructed once per trajectory:

    class MyEnv:
        stop = ("```\n",)  # optional: strings that end a model turn early (a tool call's end)

        def __init__(self, question: str, answer: str, limits: ToolLimits): ...

        def step(self, turn: str, ended: bool) -> Observation | None:
            # turn: the text the model just wrote (this turn only); ended: it finished with EOS
            # (its own end of message) rather than at a stop string.
            # Return None when the trajectory is done, Observation("") to let the model go on
            # writing (nothing appended), or Observation(text, tool=status) to append `text` as
            # environment tokens.

The reward is scored once, at the end, on what the model wrote (every model turn, joined; never
the environment's text), by the run's `reward.fn`. `env.name` picks the class (`envs.registry`).
"""
from __future__ import annotations

from dataclasses import dataclass

from rewards.specs import SpecError


class EnvSpecError(SpecError):
    """env.name names no usable environment; the message says why."""


@dataclass(frozen=True)
class Observation:
    """The environment's answer to one model turn."""

    text: str  # appended as environment tokens, tokenised once; "" appends nothing (the turn goes on)
    tool: str = ""  # the tool call's status (ok | error | timeout | output_limit); "" = no call made


@dataclass(frozen=True)
class ToolLimits:
    """What each tool call may use (env.* in the config)."""

    timeout_s: float = 2.0  # wall clock per call
    max_output_chars: int = 512  # the observation's output is cut to this many characters
    memory_mb: int = 512  # address space per process of a call
    isolation: str = "bwrap"  # rewards.sandbox.Isolation
