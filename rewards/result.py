"""What a verification returns: a score and a typed status. Every layer that counts, trains on or
reports verdicts imports these (the reward actors, the driver's grouping, evaluation), so they
live apart from any one verifier."""
from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Status(StrEnum):
    """How a verification ended. A str: it compares equal to its value and is written as it."""

    CORRECT = "correct"
    WRONG = "wrong"
    NO_ANSWER = "no_answer"  # no final answer could be found in the response
    UNPARSEABLE = "unparseable"  # a final answer was found but could not be read as math
    TIMEOUT = "timeout"  # the answer ran the verifier (or its solution) past the time limit: wrong
    ERROR = "error"  # the reward function raised
    CRASHED = "crashed"  # the verifier process died


# Failures of the verifier itself: no verdict, so the response is left out of the group's
# statistics and gets no gradient (scoring it 0 would count it as a wrong answer). A timeout is
# not one of them: the answer is wrong for its own reason (a solution that hangs, a power tower),
# and excluding it would pay hanging better than being wrong, which RL would find.
FAILED = frozenset({Status.ERROR, Status.CRASHED})


@dataclass(frozen=True)
class RewardResult:
    score: float
    status: Status
    detail: str = ""
    seconds: float = 0.0  # wall time spent verifying this response
    extras: tuple[tuple[str, float], ...] = ()  # a user reward's own numbers (verl dict keys), logged as reward/fn/<name>
