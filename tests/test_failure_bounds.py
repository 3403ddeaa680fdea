"""How failures end: each bound on waiting or restarting, and the one line that names what
failed and how to go on (the resume command once a checkpoint exists). Stand-ins for the actors
and for `train_run`; the real paths run on a cluster in tests/test_cluster.py."""
import pytest

from tests.test_e2e import REPO


def test_a_generator_restarted_between_batches_is_counted_once_and_bounded():
    """Ray restarted a generator and it got the latest weights before it sampled: no batch was lost,
    but the restart counts (its new incarnation tells), once, toward fault.max_actor_restarts."""
    from actors.types import RolloutBatch
    from launch.config_load import load_config
    from launch.errors import ActorFailures
    from launch.groups import ActorGroups

    cfg = load_config(REPO / "configs/tiny.yaml", ["fault.max_actor_restarts=1"])
    actors = ActorGroups(cfg, [], [], [])

    def parts(*instances):  # (generator index, its rollout)
        return enumerate(RolloutBatch([], 1, [], [], [], [], 3, 0.0, i) for i in instances)

    actors.note_instances(parts("a0", "b0"))
    actors.note_instances(parts("a0", "b0"))
    assert actors.faults.restarts == 0
    actors.note_instances(parts("a0", "b1"))  # generator 1 came back
    actors.note_instances(parts("a0", "b1"))
    assert actors.faults.restarts == 1 and actors.faults.metrics()["fault/actor_restarts"] == 1
    with pytest.raises(ActorFailures, match="over fault.max_actor_restarts=1"):
        actors.note_instances(parts("a1", "b1"))


def test_a_restart_that_cannot_be_placed_stops_in_one_line_that_says_how_to_resume(tiny_model, yes_data, tmp_path,
                                                                                  monkeypatch):
    """A learner rank's node is gone and no node left (nor a replacement within
    cluster.placement_timeout_s) can hold the restarted group: placement's own bounded refusal,
    naming the rank that died and the resume command. The first attempt's refusal is left as is."""
    from launch import driver
    from launch.config_load import load_config
    from launch.errors import LearnerLost, ResourceError

    run_dir = tmp_path / "run"
    cfg = load_config(REPO / "configs/tiny.yaml", [f"model.path={tiny_model}", f"data.train_files={yes_data}",
                                                   f"tracking.run_dir={run_dir}", "fault.learner_restarts=1",
                                                   "checkpoint.every=1", "eval.every=0"])
    refusal = ResourceError("cluster.learner_placement: 1 x {'CPU': 1.0} (pack) could not be reserved within "
                            "cluster.placement_timeout_s=5 s; free per node: 127.0.0.1 {'CPU': 0.25}")
    attempts = []

    def train_run(*args):
        attempts.append(args)
        if len(attempts) == 1:
            (run_dir / "state").mkdir(parents=True)
            (run_dir / "state" / "latest").write_text("step_2")
            raise LearnerLost("learner rank 0 died (the node it ran on was removed)")
        raise refusal

    monkeypatch.setattr(driver, "train_run", train_run)
    monkeypatch.setattr(driver, "latest_checkpoint", lambda d: (d / "state" / "step_2", None))
    with pytest.raises(ResourceError) as e:
        driver.run(cfg)
    assert len(attempts) == 2
    msg = str(e.value)
    assert msg.startswith(str(refusal)) and "\n" not in msg, msg
    assert "(restarting after learner rank 0 died (the node it ran on was removed))" in msg, msg
    assert msg.endswith(f"`forkrl train --resume {run_dir}`"), msg
    monkeypatch.setattr(driver, "train_run", lambda *a: (_ for _ in ()).throw(refusal))
    with pytest.raises(ResourceError) as e:
        driver.run(load_config(REPO / "configs/tiny.yaml", [f"model.path={tiny_model}", f"data.train_files={yes_data}",
                                                            f"tracking.run_dir={tmp_path / 'other'}", "eval.every=0"]))
    assert e.value is refusal  # a first placement that fails needs no resume: nothing ran


def test_an_actor_that_cannot_come_back_stops_the_run_in_bounded_time_naming_it(monkeypatch):
    """A generator whose node is gone and which no other node can hold: Ray keeps it restarting
    (calls answer 'unavailable', or not at all). The wait ends after fault.actor_restart_timeout_s
    with one line naming the actor and each node's free resources."""
    import itertools
    import time

    from ray.exceptions import ActorUnavailableError, GetTimeoutError

    from launch import groups
    from launch.errors import ActorFailures

    answers = itertools.cycle([ActorUnavailableError("restarting", None), GetTimeoutError("no answer")])

    def get(ref, timeout=None):
        raise next(answers)

    class Method:
        def remote(self):
            return "ref"

    monkeypatch.setattr(groups.ray, "get", get)
    monkeypatch.setattr(groups, "free_per_node", lambda: "127.0.0.1:ab12cd {'CPU': 0.25}")
    monkeypatch.setattr(groups.time, "sleep", lambda s: None)
    t0 = time.monotonic()
    with pytest.raises(ActorFailures) as e:
        groups.answer_when_up(Method(), 0.05, "generation actor 1")
    assert time.monotonic() - t0 < 5
    assert str(e.value) == ("generation actor 1 did not come back within fault.actor_restart_timeout_s=0.05 s of "
                            "failing: no live node could hold it (free per node: 127.0.0.1:ab12cd {'CPU': 0.25}); "
                            "add a node with the resources it asks for")


def test_actor_failures_after_a_checkpoint_name_the_resume_command(tiny_model, yes_data, tmp_path, monkeypatch):
    from launch import driver
    from launch.config_load import load_config
    from launch.errors import ActorFailures

    run_dir = tmp_path / "run"
    cfg = load_config(REPO / "configs/tiny.yaml", [f"model.path={tiny_model}", f"data.train_files={yes_data}",
                                                   f"tracking.run_dir={run_dir}", "eval.every=0"])

    def train_run(*args):
        (run_dir / "state").mkdir(parents=True, exist_ok=True)
        (run_dir / "state" / "latest").write_text("step_2")
        raise ActorFailures("generation actor 0 did not come back within fault.actor_restart_timeout_s=900 s")

    monkeypatch.setattr(driver, "train_run", train_run)
    with pytest.raises(ActorFailures) as e:
        driver.run(cfg)
    assert str(e.value) == ("generation actor 0 did not come back within fault.actor_restart_timeout_s=900 s; "
                            f"continue from the latest checkpoint with `forkrl train --resume {run_dir}`")
