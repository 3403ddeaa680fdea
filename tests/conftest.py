"""Shared fixtures: a tiny random Llama (built locally, no hub) and a local Ray."""
from __future__ import annotations

import json
import random
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    from launch.models import build_tiny_model

    return build_tiny_model(tmp_path_factory.mktemp("models") / "tiny")


def write_yes_prompts(path: Path, n: int, seed: int, min_words: int) -> Path:
    """n prompts of tiny-vocabulary words whose answer is 'yes' (for the starts_with reward)."""
    rng = random.Random(seed)
    words = "the a cat dog red blue green big small up down left right it we so then".split()
    with open(path, "w") as f:
        for _ in range(n):
            f.write(json.dumps({"prompt": " ".join(rng.choice(words) for _ in range(rng.randint(min_words, 6))),
                                "answer": "yes"}) + "\n")
    return path


@pytest.fixture(scope="session")
def yes_data(tmp_path_factory) -> Path:
    return write_yes_prompts(tmp_path_factory.mktemp("data") / "yes.jsonl", 64, seed=0, min_words=2)


@pytest.fixture(scope="session")
def yes_eval(tmp_path_factory) -> Path:
    """Held-out prompts like `yes_data` (another seed; any repeat of a training prompt is dropped by the loader)."""
    return write_yes_prompts(tmp_path_factory.mktemp("data") / "yes_eval.jsonl", 32, seed=1, min_words=3)


@pytest.fixture(scope="module")
def ray_local():
    import ray

    # Logical CPUs: the actors under test ask for fractions; the machine has 2 real cores.
    ray.init(num_cpus=4, include_dashboard=False, ignore_reinit_error=True, log_to_driver=False,
             runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
    yield ray
    ray.shutdown()
    from launch.network import remove_rendezvous_files

    remove_rendezvous_files()  # this process launched the ranks, as a driver does


@pytest.hookimpl(tryfirst=True)  # before pytest's own -m filter reads the markers
def pytest_collection_modifyitems(items):
    for item in items:  # unmarked tests are unit tests
        if not any(item.get_closest_marker(name) for name in ("ray", "e2e", "gpu")):
            item.add_marker(pytest.mark.unit)
