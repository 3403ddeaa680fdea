"""random.Random states in JSON form, for checkpoints (a Random's state is a tuple holding a tuple)."""
from __future__ import annotations


def rng_to_json(state: tuple) -> list:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def rng_from_json(state: list) -> tuple:
    return state[0], tuple(state[1]), state[2]
