"""Durable runs: full checkpoints, resume, never overwriting a run, a record of what was trained."""
import contextlib
import json
import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest
import torch
import yaml

from launch.errors import ConfigError
from launch.data import PromptStream
from launch.resume import resume_config
from tests.test_e2e import BIN, REPO, forkrl, read_metrics, tiny_args

from actors.types import Prompt


# ---- unit ---------------------------------------------------------------------------------------

def test_prompt_stream_state_round_trips_across_epochs():
    prompts = [Prompt(uid=i, token_ids=[i], answer="") for i in range(7)]
    a = PromptStream(prompts, seed=3)
    a.take(5)
    state = json.loads(json.dumps(a.state()))  # what a checkpoint stores
    b = PromptStream(prompts, seed=99)
    b.restore(state)
    assert [p.uid for p in a.take(12)] == [p.uid for p in b.take(12)]  # crosses an epoch reshuffle
    assert a.issued == b.issued == 2


def fake_run(tmp_path, step=2):
    from launch.config_load import load_config, to_dict

    cfg = load_config(REPO / "configs/tiny.yaml", ["steps=4"])
    (tmp_path / "config.yaml").write_text(yaml.safe_dump(to_dict(cfg), sort_keys=False))
    ckpt = tmp_path / "state" / f"step_{step}"
    ckpt.mkdir(parents=True)
    (ckpt / "driver.json").write_text(json.dumps({
        "step": step, "version": step, "stream": {}, "pending": [], "shard_rng": [], "skipped_total": 0,
        "skipped_streak": 0, "reward_streak": 0, "reward_first_error": "", "wandb_id": None, "num_ranks": 2,
        "python_rng": [], "numpy_rng": [], "torch_rng": []}))
    (tmp_path / "state" / "latest").write_text(ckpt.name)
    return tmp_path


def test_resume_allows_harmless_overrides_and_names_any_other(tmp_path):
    run = fake_run(tmp_path)
    cfg = resume_config(run, ["steps=8", "eval.every=2", "tracking.wandb_mode=disabled", "reward.num_cpus=0.5"])
    assert cfg.steps == 8 and cfg.eval.every == 2
    with pytest.raises(ConfigError, match=r"^learner.lr: cannot change on --resume"):
        resume_config(run, ["steps=8", "learner.lr=0.5"])
    with pytest.raises(ConfigError, match=r"^learner.mask.rho: cannot change"):
        resume_config(run, ["steps=8", "learner.mask.rho=0.5"])
    assert resume_config(run, ["steps=8", "learner.num_ranks=1"]).learner.num_ranks == 1  # resharded on load
    with pytest.raises(ConfigError, match=r"^steps: the checkpoint is at step 2"):
        resume_config(run, ["steps=2"])
    with pytest.raises(ConfigError, match="no complete checkpoint"):
        (run / "state" / "latest").unlink()
        resume_config(run, ["steps=8"])


# ---- end to end ---------------------------------------------------------------------------------

def rollout_rows(run_dir: Path) -> dict[int, list[dict]]:
    out = {}
    for f in sorted((run_dir / "rollouts").glob("step_*.jsonl")):
        out[int(f.stem.split("_")[1])] = [json.loads(line) for line in f.read_text().splitlines()]
    return out


# Overlong shaping scores responses by length and the reward rule lets that difference train, so
# every step has signal (a reward the random model never earns would make every step a skipped
# one and the comparison empty; under the default verdict rule shaping alone trains nothing).
SYNC = ["max_staleness=0", "learner.num_ranks=2", "tracking.wandb_mode=disabled", "reward.overlong_weight=1.0",
        "reward.overlong_cache=4", "learner.signal=reward"]


@pytest.fixture(scope="module")
def straight(tiny_model, yes_data, tmp_path_factory):
    """The reference: 4 steps without interruption."""
    run_dir = tmp_path_factory.mktemp("straight") / "run"
    res = forkrl(*tiny_args(tiny_model, yes_data, run_dir), "steps=4", *SYNC)
    assert res.returncode == 0, res.stderr[-3000:]
    return run_dir


@pytest.mark.e2e
def test_two_steps_then_resume_trains_what_four_straight_steps_train(straight, tiny_model, yes_data, tmp_path):
    run_dir = tmp_path / "run"
    first = forkrl(*tiny_args(tiny_model, yes_data, run_dir), "steps=2", *SYNC)
    assert first.returncode == 0, first.stderr[-3000:]
    again = forkrl(*tiny_args(tiny_model, yes_data, run_dir), "steps=4", *SYNC)  # not a resume: refused
    assert again.returncode == 2 and "--resume" in again.stderr.strip().splitlines()[-1]
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2]  # untouched
    res = subprocess.run([str(BIN / "forkrl"), "train", "--resume", str(run_dir), "steps=4"], cwd=REPO,
                         capture_output=True, text=True, timeout=900, env={**os.environ, "WANDB_SILENT": "true"})
    assert res.returncode == 0, res.stderr[-3000:]
    a, b = read_metrics(straight), read_metrics(run_dir)
    assert [r["step"] for r in b] == [1, 2, 3, 4]  # appended, no step twice
    ra, rb = rollout_rows(straight), rollout_rows(run_dir)
    for step in (1, 2, 3, 4):  # the same prompts in the same order, the same sampled responses
        assert [(r["prompt_id"], r["response"]) for r in ra[step]] == [(r["prompt_id"], r["response"]) for r in rb[step]]
    for x, y in zip(a, b):
        assert x["reward/mean"] == pytest.approx(y["reward/mean"])
        for key in ("losses/loss", "losses/grad_norm"):  # None: a step without signal, skipped in both
            assert (x[key] is None) == (y[key] is None), key
            if x[key] is not None:
                assert x[key] == pytest.approx(y[key], rel=1e-4, abs=1e-6), key
    assert any(r["losses/loss"] is not None for r in b[2:]), "the resumed steps trained nothing: a weak check"
    assert (run_dir / "state" / "latest").read_text() == "step_4"


def wait_for_steps(proc, run_dir: Path, n: int, timeout_s: float = 600) -> None:
    deadline = time.time() + timeout_s
    path = run_dir / "metrics.jsonl"
    while not path.is_file() or len(path.read_text().splitlines()) < n:
        assert proc.poll() is None and time.time() < deadline, f"run ended or stalled before step {n}"
        time.sleep(0.02)  # tiny steps take a tenth of a second: a slow poll lets the run get ahead


@contextlib.contextmanager
def driver_paused(proc):
    """The driver stopped (SIGSTOP) while a test injects a fault, and continued after. Tiny steps take
    a tenth of a second and removing a node takes seconds: a driver left running could finish
    every step before the fault lands (CI saw a 4-step run end while its node was being removed).
    The actors keep running; only the driver's next step waits."""
    proc.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        proc.send_signal(signal.SIGCONT)


def wait_for_line(proc, path: Path, texts: tuple[str, ...], timeout_s: float = 600) -> None:
    deadline = time.time() + timeout_s
    while not any(t in path.read_text() for t in texts):
        assert proc.poll() is None and time.time() < deadline, f"run ended or stalled before it printed any of {texts}"
        time.sleep(0.2)


@pytest.mark.e2e
def test_a_killed_actor_and_a_sigterm_lose_no_prompt(straight, tiny_model, yes_data, tmp_path):
    """Generation runs one batch ahead (max_staleness=1). After step 1 the vLLM actor is SIGKILLed:
    Ray restarts it and the driver notices, whether a batch was lost on it (the batch is sampled
    again from the same prompts, after the restarted actor gets the current weights) or the
    restarted actor got the current weights before it sampled again (nothing lost). Once the
    driver has noticed, it gets SIGTERM: it finishes the step, checkpoints and stops; the resumed
    run samples the in-flight batch again from the ledger. Every step trains exactly the prompts
    of the uninterrupted run, none lost or doubled. The run is 12 steps long although it is
    compared over 4: tiny steps take a tenth of a second, and the signal must find steps left."""
    import psutil

    run_dir = tmp_path / "run"
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as err_file:  # a file, not a pipe: a full pipe would stall the run
        proc = subprocess.Popen([str(BIN / "forkrl"), "train", *map(str, tiny_args(tiny_model, yes_data, run_dir)),
                                 "steps=12", "max_staleness=1", "learner.num_ranks=2", "tracking.wandb_mode=disabled"],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=err_file, text=True,
                                env={**os.environ, "WANDB_SILENT": "true"})
        wait_for_steps(proc, run_dir, 1)
        gens = actor_processes(proc, "GenerationWorker")
        assert len(gens) == 1, [p.name() for p in psutil.Process(proc.pid).children(recursive=True)]
        with driver_paused(proc):
            gens[0].kill()
        wait_for_line(proc, stderr_path, ("forkrl: actor failure", "generation actor 0 was restarted"))
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=600)
    err = stderr_path.read_text()
    assert proc.returncode == 1, err[-3000:]
    assert "forkrl: error: stopped by SIGTERM after step" in err and "--resume" in err, err[-3000:]
    stopped_at = len(read_metrics(run_dir))
    assert 2 <= stopped_at < 12 and (run_dir / "state" / "latest").read_text() == f"step_{stopped_at}"
    assert read_metrics(run_dir)[-1]["fault/actor_restarts"] == 1, err[-3000:]
    res = subprocess.run([str(BIN / "forkrl"), "train", "--resume", str(run_dir)], cwd=REPO, capture_output=True,
                         text=True, timeout=900, env={**os.environ, "WANDB_SILENT": "true"})
    assert res.returncode == 0, res.stderr[-3000:]
    assert [r["step"] for r in read_metrics(run_dir)] == list(range(1, 13))
    assert read_metrics(run_dir)[-1]["fault/actor_restarts"] == 1  # the counters go on from the checkpoint
    ra, rb = rollout_rows(straight), rollout_rows(run_dir)
    assert [[r["prompt_id"] for r in ra[s]] for s in (1, 2, 3, 4)] == [[r["prompt_id"] for r in rb[s]] for s in (1, 2, 3, 4)]
    assert all(r["status"] not in ("error", "timeout", "crashed") for s in rb for r in rb[s])
    assert set(rb[1][0]) >= {"prompt_id", "prompt", "response", "reward", "status", "policy_version"}


def actor_processes(proc, name: str) -> list:
    """The run's processes whose name has `name` (a Ray actor's class). A process that exits while
    it is listed (actors die and restart in these tests) is left out, not an error."""
    import psutil

    found = []
    for p in psutil.Process(proc.pid).children(recursive=True):
        try:
            if name in p.name():
                found.append(p)
        except psutil.NoSuchProcess:
            pass
    return found


def learner_processes(proc) -> list:
    return actor_processes(proc, "LearnerWorker")


def wait_for_new_learners(proc, old_pids: set[int], timeout_s: float = 600) -> list:
    deadline = time.time() + timeout_s
    while True:
        found = learner_processes(proc)
        if len(found) == 2 and not {p.pid for p in found} & old_pids:
            return found
        assert proc.poll() is None and time.time() < deadline, f"not restarted: learner processes {found}"
        time.sleep(0.2)


@pytest.mark.e2e
def test_a_killed_learner_rank_restarts_the_run_then_stops_it_when_restarts_run_out(straight, tiny_model, yes_data,
                                                                                  tmp_path):
    """fault.learner_restarts=1. A ZeRO-3 rank SIGKILLed after step 2 takes its shards with it while
    its peer waits in a collective: the driver fails fast, shuts every actor down and starts again
    from the latest checkpoint in the same process. A second rank killed after step 3 exceeds the
    bound: the run stops naming the rank and the resume command, and the resume finishes it. The
    run trains the straight run's prompts, responses, rewards and losses, each step once in
    metrics.jsonl (6 steps, compared over 4: a kill that lands late still leaves steps to run)."""
    run_dir = tmp_path / "run"
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as err_file:
        proc = subprocess.Popen([str(BIN / "forkrl"), "train", *map(str, tiny_args(tiny_model, yes_data, run_dir)),
                                 "steps=6", *SYNC, "checkpoint.every=1", "fault.learner_restarts=1"],
                                cwd=REPO, stdout=subprocess.DEVNULL, stderr=err_file, text=True,
                                env={**os.environ, "WANDB_SILENT": "true"})
        wait_for_steps(proc, run_dir, 2)
        first = learner_processes(proc)
        assert len(first) == 2, first
        with driver_paused(proc):
            first[1].kill()
        # Tiny steps are fast: step 3 may land before the kill does, so the restart is waited for by
        # its log line and its new ranks, not by a step count.
        wait_for_line(proc, stderr_path, ("restarting every actor from",))
        second = wait_for_new_learners(proc, {p.pid for p in first})
        rows = len((run_dir / "metrics.jsonl").read_text().splitlines())  # back at the checkpoint
        wait_for_steps(proc, run_dir, rows + 1)  # the new ranks have trained a step
        with driver_paused(proc):
            second[0].kill()
        proc.wait(timeout=900)
    err = stderr_path.read_text()
    assert proc.returncode == 1, err[-3000:]
    assert "restarting every actor from" in err and "(learner restart 1 of 1)" in err, err[-3000:]
    last = err.strip().splitlines()[-1]
    assert re.search(r"forkrl: error: learner rank [01] died", last) and "used up" in last, last
    assert f"forkrl train --resume {run_dir}" in last, last
    res = subprocess.run([str(BIN / "forkrl"), "train", "--resume", str(run_dir)], cwd=REPO, capture_output=True,
                         text=True, timeout=900, env={**os.environ, "WANDB_SILENT": "true"})
    assert res.returncode == 0, res.stderr[-3000:]
    b = read_metrics(run_dir)
    assert [r["step"] for r in b] == [1, 2, 3, 4, 5, 6]  # the steps trained again replace the lost ones
    assert b[-1]["fault/learner_restarts"] == 1  # carried through the checkpoint into the resumed run
    assert_trained_alike(straight, run_dir, (1, 2, 3, 4))


def assert_trained_alike(straight: Path, run_dir: Path, steps) -> None:
    """The two runs sampled the same prompts and responses at `steps` and got the same rewards and
    losses (a step without signal skipped in both)."""
    ra, rb = rollout_rows(straight), rollout_rows(run_dir)
    for step in steps:
        assert [(r["prompt_id"], r["response"]) for r in ra[step]] == [(r["prompt_id"], r["response"]) for r in rb[step]]
    for x, y in zip(read_metrics(straight), read_metrics(run_dir)):
        assert x["reward/mean"] == pytest.approx(y["reward/mean"])
        assert (x["losses/loss"] is None) == (y["losses/loss"] is None)
        if x["losses/loss"] is not None:
            assert x["losses/loss"] == pytest.approx(y["losses/loss"], rel=1e-4, abs=1e-6)


def test_learner_restarts_need_periodic_checkpoints():
    from launch.config_load import load_config

    with pytest.raises(ConfigError, match=r"^fault.learner_restarts: needs checkpoint.every > 0"):
        load_config(REPO / "configs/tiny.yaml", ["fault.learner_restarts=1"])
    assert load_config(REPO / "configs/tiny.yaml", ["fault.learner_restarts=1", "checkpoint.every=2"]).fault.learner_restarts == 1


@pytest.mark.ray
@pytest.mark.parametrize("extra", [(), ("learner.lora.rank=4", "learner.lora.alpha=8")], ids=["full", "lora"])
def test_a_two_rank_checkpoint_resumes_on_one_rank_through_the_universal_format(ray_local, tiny_model, tmp_path,
                                                                                 extra):
    """2 ZeRO-3 ranks train a step and checkpoint. Converted to DeepSpeed's universal format, it
    loads on 1 rank with the same weights, and the next step (which reads Adam's moments) moves the
    weights as the 2 ranks do when they go on. Under LoRA the weights are the adapters (the frozen
    base is not in the optimizer and comes from the model folder)."""
    import ray

    from launch.placement import launch_learners
    from launch.resume import to_universal
    from learner.batch import collate
    from learner.weights import assemble_weights
    from tests.test_actors_ray import make_batch, tiny_cfg

    prompts, resp, behaviour_logp, adv = make_batch()

    def shards(ranks, seed_shift=0.0):
        per = len(prompts) // ranks
        a = [x + seed_shift for x in adv]
        return [collate(prompts[r * per:(r + 1) * per], resp[r * per:(r + 1) * per], behaviour_logp[r * per:(r + 1) * per],
                        a[r * per:(r + 1) * per], 0) for r in range(ranks)]

    def weights(learners):
        return assemble_weights(ray.get([w.weight_shard.remote() for w in learners]))

    common = ["prompts_per_step=2", "generation.group_size=4", "learner.lr=1e-2", "learner.mask.mode=none",
              "learner.micro_batch_size=2", *extra]
    two = launch_learners(tiny_cfg(tiny_model, "learner.num_ranks=2", *common), str(tiny_model))
    ray.get([w.train_step.remote(s) for w, s in zip(two, shards(2))])
    ckpt = tmp_path / "ckpt"
    ray.get([w.save_checkpoint.remote(str(ckpt)) for w in two])
    saved = weights(two)
    ray.get([w.train_step.remote(s) for w, s in zip(two, shards(2, 0.5))])
    went_on = weights(two)
    [ray.kill(w) for w in two]

    to_universal(ckpt)
    one = launch_learners(tiny_cfg(tiny_model, "learner.num_ranks=1", *common), str(tiny_model), load_universal=True)
    ray.get(one[0].load_checkpoint.remote(str(ckpt)))
    loaded = weights(one)
    assert all(torch.equal(loaded[k], saved[k]) for k in saved)
    ray.get(one[0].train_step.remote(shards(1, 0.5)[0]))
    resumed = weights(one)
    ray.kill(one[0])
    for k in saved:  # a step with fresh Adam moments would move the weights by about lr everywhere
        assert torch.allclose(resumed[k], went_on[k], atol=1e-5), k


MULTI_TURN = ["env.name=tests.fixtures.envs:Scripted", "env.max_turn_tokens=3", "generation.max_new_tokens=16",
              "tracking.wandb_mode=disabled", "reward.overlong_weight=1.0", "reward.overlong_cache=8",
              "learner.signal=reward"]
USER_CODE = {"PYTHONPATH": str(REPO)}  # the environment is user code from this checkout


def expected_prompts(tiny_model, yes_data, steps: int) -> list[list[int]]:
    """The prompt ids each step trains, from the seeded stream alone: what any run of this config,
    interrupted or not, must train (no dynamic sampling in these configs)."""
    from transformers import AutoTokenizer

    from launch.config_load import load_config
    from launch.data import load_prompts

    cfg = load_config(REPO / "configs/tiny.yaml", [f"model.path={tiny_model}", f"data.train_files={yes_data}"])
    stream = PromptStream(load_prompts(cfg.data, cfg.model, AutoTokenizer.from_pretrained(tiny_model)), cfg.data.seed)
    return [sorted(p.uid for p in stream.take(cfg.prompts_per_step)) for _ in range(steps)]


@pytest.mark.e2e
def test_a_multi_turn_run_survives_a_killed_generator_and_resumes_the_same_prompts(tiny_model, yes_data, yes_eval,
                                                                                      tmp_path):
    """A user environment (tests.fixtures.envs:Scripted) answers two turns of every trajectory. The
    run records each turn, its env/ metrics and multi-turn evaluations. Its generation actor is
    SIGKILLed after step 1, the run is stopped by SIGTERM and resumed, and it trains exactly the
    prompts the seeded stream issues at every step: none lost to the kill, none trained twice."""
    run_dir = tmp_path / "run"
    stderr_path = tmp_path / "stderr.txt"
    with open(stderr_path, "w") as err_file:
        proc = subprocess.Popen([str(BIN / "forkrl"), "train", *map(str, tiny_args(tiny_model, yes_data, run_dir)),
                                 "steps=12", "max_staleness=1", *MULTI_TURN, "eval.every=4", f"eval.files={yes_eval}",
                                 "eval.num_prompts=4"], cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=err_file, text=True, env={**os.environ, "WANDB_SILENT": "true", **USER_CODE})
        wait_for_steps(proc, run_dir, 2)  # step 0's evaluation, then step 1
        gens = actor_processes(proc, "GenerationWorker")
        assert len(gens) == 1
        with driver_paused(proc):
            gens[0].kill()
        wait_for_line(proc, stderr_path, ("forkrl: actor failure", "generation actor 0 was restarted"))
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=600)
    err = stderr_path.read_text()
    assert proc.returncode == 1 and "stopped by SIGTERM" in err, err[-3000:]
    res = subprocess.run([str(BIN / "forkrl"), "train", "--resume", str(run_dir)], cwd=REPO, capture_output=True,
                         text=True, timeout=900, env={**os.environ, "WANDB_SILENT": "true", **USER_CODE})
    assert res.returncode == 0, res.stderr[-3000:]
    rows = read_metrics(run_dir)
    m = [r for r in rows if "reward/mean" in r]  # the step rows (step 0 is the baseline evaluation)
    assert [r["step"] for r in m] == list(range(1, 13)) and m[-1]["fault/actor_restarts"] == 1
    assert m[0]["env/turns_mean"] == 3 and m[0]["env/tool_calls_mean"] == 2 and m[0]["env/tool_error_fraction"] == 0
    assert 0 < m[0]["env/model_token_fraction"] < 1
    evals = [r for r in rows if "eval/accuracy" in r]
    assert [r["step"] for r in evals] == [0, 4, 8, 12] and all(r["eval/tool_call_rate"] == 1.0 for r in evals)
    assert any(r["losses/loss"] is not None for r in m)
    rb = rollout_rows(run_dir)
    row = rb[1][0]
    assert [t["output"] for t in row["turns"]] == [" obs1 ", " obs2 ", ""] and row["turns"][-1]["end"] == "done"
    assert row["response"] == "".join(t["model"] for t in row["turns"])  # the reward read the model's text only
    assert all(len(r["turns"]) == 3 for s in rb for r in rb[s])
    assert all(len(rb[s]) == 4 * 4 for s in range(1, 13))  # prompts_per_step x group_size: no row twice
    trained = [sorted({r["prompt_id"] for r in rb[s]}) for s in range(1, 13)]
    assert trained == expected_prompts(tiny_model, yes_data, 12)


@pytest.mark.ray
def test_an_evaluation_after_a_generator_restart_scores_the_current_weights(ray_local, tiny_model):
    """A generator killed after it loaded policy version 1 comes back with the initial weights:
    the evaluation notices (its answer is version 0), counts the restart, gives it version 1 again
    and evaluates again, instead of scoring the initial policy as the current one."""
    import ray
    from safetensors.torch import load_file

    from actors.types import Prompt
    from launch.groups import ActorGroups
    from launch.placement import launch_generators, launch_rewards
    from learner.weights import shard_weights
    from tests.test_actors_ray import tiny_cfg

    cfg = tiny_cfg(tiny_model, "reward.fn=starts_with", "fault.max_actor_restarts=2")
    actors = ActorGroups(cfg, launch_generators(cfg, str(tiny_model)), launch_rewards(cfg), [])
    actors.version, actors.shards = 1, [ray.put(shard_weights(load_file(str(tiny_model / "model.safetensors")), 0, 1))]
    ray.get(actors.generators[0].load_weights.remote(1, *actors.shards))
    prompts = [Prompt(i, [1, 5 + i, 6], "yes") for i in range(3)]
    assert actors.verify_eval(prompts, 1, 4, seed=0).policy_version == 1 and actors.faults.restarts == 0
    pid = ray.get(actors.generators[0].__ray_call__.remote(lambda self: __import__("os").getpid()))
    os.kill(pid, signal.SIGKILL)
    out = actors.verify_eval(prompts, 1, 4, seed=0)
    assert out.policy_version == 1 and actors.faults.restarts == 1
    assert len(out.correct) == 3
