"""Shared fixtures: a tiny random Llama (built locally, no hub) and a local Ray."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from launch.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


@pytest.fixture(scope="session")
def yes_data(tmp_path_factory) -> Path:
    """Prompts of tiny-vocabulary words whose answer is 'yes' (for the starts_with reward)."""
    rng = random.Random(0)
    words = "the a cat dog red blue green big small up down left right it we so then".split()
    path = tmp_path_factory.mktemp("data") / "yes.jsonl"
    with open(path, "w") as f:
        for _ in range(64):
            f.write(json.dumps({"prompt": " ".join(rng.choice(words) for _ in range(rng.randint(2, 6))), "answer": "yes"}) + "\n")
    return path


@pytest.fixture(scope="session")
def yes_eval(tmp_path_factory) -> Path:
    """Held-out prompts of the same kind as `yes_data` (different words order, another seed)."""
    rng = random.Random(1)
    words = "the a cat dog red blue green big small up down left right it we so then".split()
    path = tmp_path_factory.mktemp("data") / "yes_eval.jsonl"
    with open(path, "w") as f:
        for _ in range(32):
            f.write(json.dumps({"prompt": " ".join(rng.choice(words) for _ in range(rng.randint(3, 6))), "answer": "yes"}) + "\n")
    return path


@pytest.fixture(scope="module")
def ray_local():
    import ray

    # Logical CPUs: the actors under test ask for fractions; the machine has 2 real cores.
    ray.init(num_cpus=4, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m filter reads the markers
def pytest_collection_modifyitems(items):
    for item in items:  # unmarked tests are unit tests
        if not any(item.get_closest_marker(name) for name in ("ray", "e2e")):
            item.add_marker(pytest.mark.unit)
