"""forkrl on a real 3-node Ray cluster on this machine (tests/cluster.py): placement groups put
each actor group where it fits, objects cross the nodes' stores, and a group that cannot fit
stops the run in bounded time."""
import re

import pytest

from tests.cluster import local_cluster
from tests.test_e2e import forkrl, read_metrics, tiny_args

pytestmark = pytest.mark.e2e

# The shape that deadlocked before placement groups (issue 23): 3 nodes of 1 CPU; 2 learner ranks
# of 1 CPU, a generator of 0.5 and a reward actor of 0.25 (2.75 of 3 CPUs). Without reserving
# the learners' CPUs together, the small actors could land on two nodes and leave no node for the
# second rank.
SHAPE = ["learner.num_ranks=2", "learner.num_cpus=1", "generation.num_cpus=0.5", "reward.num_cpus=0.25",
         "max_staleness=0", "tracking.wandb_mode=disabled", "reward.overlong_weight=1.0", "reward.overlong_cache=4",
         "learner.signal=reward"]


# One learner rank and one generator, small enough for 1-CPU nodes; the node-loss tests pin them.
ONE_RANK = ["learner.num_ranks=1", "learner.num_cpus=0.5", "generation.num_cpus=0.5", "reward.num_cpus=0.25",
            "tracking.wandb_mode=disabled", "reward.overlong_weight=1.0", "reward.overlong_cache=4",
            "learner.signal=reward"]


def start_run(cluster, tiny_model, yes_data, tmp_path, *args):
    """`forkrl train` joined to `cluster`, in the background: (process, run dir, its stderr file)."""
    import subprocess

    from tests.test_e2e import BIN, REPO

    run_dir, stderr_path = tmp_path / "run", tmp_path / "stderr.txt"
    with open(stderr_path, "w") as err_file:  # the child keeps its own descriptor
        proc = subprocess.Popen([str(BIN / "forkrl"), "train", *map(str, tiny_args(tiny_model, yes_data, run_dir)),
                                 f"address={cluster.address}", *args], cwd=REPO, stdout=subprocess.DEVNULL,
                                stderr=err_file, text=True)
    return proc, run_dir, stderr_path


def test_three_nodes_place_every_group_train_and_refuse_what_cannot_fit(tiny_model, yes_data, tmp_path):
    with local_cluster([{"num_cpus": 1}] * 3) as cluster:
        run_dir = tmp_path / "run"
        res = forkrl(*tiny_args(tiny_model, yes_data, run_dir), "steps=3", f"address={cluster.address}", *SHAPE,
                     timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3]
        line = next(x for x in (run_dir / "train.log").read_text().splitlines() if "placement (node" in x)
        groups = dict(re.findall(r"(learner|generation|reward): ([^|]+)", line))
        learners = [n.strip() for n in groups["learner"].split(",")]
        gen, rew = groups["generation"].strip(), groups["reward"].strip()
        assert len(learners) == 2 and len(set(learners)) == 2, line  # one rank per 1-CPU node: they met over TCP
        assert gen not in learners and rew not in learners, line  # rollouts and weights crossed object stores
        # all three nodes' CPUs are reserved by the groups: strict_pack of both ranks on one node cannot fit
        res = forkrl(*tiny_args(tiny_model, yes_data, tmp_path / "no"), "steps=1", f"address={cluster.address}",
                     *SHAPE, "cluster.learner_placement=strict_pack", "cluster.placement_timeout_s=10", timeout=300)
        assert res.returncode == 2, res.stderr[-3000:]
        last = res.stderr.strip().splitlines()[-1]
        assert re.match(r"forkrl: error: cluster.learner_placement: 2 x \{'CPU': 1(\.0)?\} \(strict_pack\) could not "
                        r"be reserved within cluster.placement_timeout_s=10 s; free per node: ", last), last


class Producer:
    """Stands in for a generation actor's object output: (summary, batch) with num_returns=2."""

    def make(self, batch):
        return batch.summary(), batch


def test_ranks_fetch_rollouts_across_nodes_and_a_batch_lost_with_its_node_is_found_before_training():
    """Rollout batches made on node B are fetched by learner ranks on node A straight from B's
    object store (not through the driver); when B dies holding the only copy of a batch, staging
    fails with RolloutsLost (the driver then samples the step again), fast, before any rank enters
    the step's collectives."""
    import random
    import time

    import ray

    from actors.learner import LearnerWorker
    from actors.types import Prompt, RolloutBatch
    from launch.config_load import load_config
    from launch.errors import RolloutsLost
    from launch.groups import ActorGroups
    from launch.rollouts import plan_shards, to_groups
    from rewards.result import RewardResult
    from tests.test_e2e import REPO

    def batch(uid):  # 2 prompts x 2 responses of 20k tokens: ~1 MB, so it lives in B's object store
        resp = [[5] * 20_000 for _ in range(4)]
        return RolloutBatch([Prompt(uid, [1, 2], "y"), Prompt(uid + 1, [1, 3], "y")], 2, resp, [[-0.5] * 20_000] * 4,
                            ["x"] * 4, [True] * 4, 0, 0.1)

    cfg = load_config(REPO / "configs/tiny.yaml", [])
    with local_cluster([{"num_cpus": 1, "resources": {"a": 1}}, {"num_cpus": 1, "resources": {"b": 1}}]) as cluster:
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            learners = [ray.remote(LearnerWorker).options(num_cpus=0, resources={"a": 0.1}).remote(cfg.learner, r, 2)
                        for r in range(2)]
            producer = ray.remote(Producer).options(num_cpus=0, resources={"b": 0.1}).remote()
            actors = ActorGroups(cfg, [], [], learners)
            results = [[RewardResult(1.0, "correct"), RewardResult(0.0, "wrong")] * 2] * 2

            def step(uid):
                (s1, b1), (s2, b2) = [producer.make.options(num_returns=2).remote(batch(u)) for u in (uid, uid + 2)]
                summaries = ray.get([s1, s2])
                groups = to_groups([[Prompt(u, [], "")] * 2 for u in (uid, uid + 2)], summaries, results)
                return plan_shards(groups, [], "grpo", 0.1, 2, 0, random.Random(0)), [b1, b2]

            plans, refs = step(0)
            staged = ray.get([w.stage.remote(p, *[refs[i] for i in used]) for w, (p, used) in zip(learners, plans)])
            assert staged == [4, 4]  # every row, fetched by the ranks from node B

            plans, refs = step(10)
            cluster.remove_node(cluster.list_all_nodes()[1])
            t0 = time.monotonic()
            with pytest.raises(RolloutsLost):
                actors.train(plans, refs)
            assert time.monotonic() - t0 < 60
        finally:
            ray.shutdown()


def test_a_node_lost_with_the_generator_mid_run_loses_no_prompt(tiny_model, yes_data, tmp_path):
    """The node holding the generation actor is removed after step 1 and a replacement node joins
    (as an autoscaler brings one): Ray restarts the actor there, it gets the current weights, the
    batch lost with the node is sampled again, and the run finishes having trained exactly the
    prompts the seeded stream issues (what an uninterrupted run trains), step by step, none lost
    or doubled."""
    from tests.test_resume import driver_paused, expected_prompts, rollout_rows, wait_for_steps

    args = ["steps=8", *ONE_RANK, "cluster.generation_node_resource=gen", "cluster.learner_node_resource=main",
            "cluster.reward_node_resource=main", "max_staleness=1"]
    with local_cluster([{"num_cpus": 1, "resources": {"main": 1}}, {"num_cpus": 1, "resources": {"gen": 1}}]) as cluster:
        proc, run_dir, stderr_path = start_run(cluster, tiny_model, yes_data, tmp_path, *args)
        wait_for_steps(proc, run_dir, 1)
        with driver_paused(proc):
            cluster.remove_node(next(n for n in cluster.list_all_nodes() if n is not cluster.head_node))
        cluster.add_node(num_cpus=1, resources={"gen": 1}, object_store_memory=200 * 2**20)
        proc.wait(timeout=900)
        err = stderr_path.read_text()
        assert proc.returncode == 0, err[-3000:]
    line = next(x for x in (run_dir / "train.log").read_text().splitlines() if "placement (node" in x)
    groups = {k: v.strip() for k, v in re.findall(r"(learner|generation|reward): ([^|]+)", line)}
    assert groups["generation"] != groups["learner"] == groups["reward"], line  # the generator had a node of its own
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == list(range(1, 9))
    assert rows[-1]["fault/actor_restarts"] >= 1, err[-3000:]
    assert "actor failure" in err or "rollouts lost" in err or "was restarted" in err, err[-3000:]
    rb = rollout_rows(run_dir)
    assert all(len(rb[s]) == 4 * 4 for s in range(1, 9))  # prompts_per_step x group_size: no row twice
    assert [sorted({r["prompt_id"] for r in rb[s]}) for s in range(1, 9)] == expected_prompts(tiny_model, yes_data, 8)
    assert all(r["status"] not in ("error", "timeout", "crashed") for s in rb for r in rb[s])


def test_a_node_lost_with_a_learner_rank_restarts_the_run_on_the_nodes_that_remain(tiny_model, yes_data, tmp_path):
    """fault.learner_restarts=1, the learner rank pinned to the two `worker` nodes. After step 2 the
    node holding the rank is removed, with its ZeRO-3 shard: the driver restarts every actor from
    the latest checkpoint, the rank is placed on the worker node that remains, and the run
    finishes, each step once in metrics.jsonl."""
    from tests.test_resume import driver_paused, expected_prompts, rollout_rows, wait_for_line, wait_for_steps

    args = ["steps=5", "checkpoint.every=1", "fault.learner_restarts=1", *ONE_RANK,
            "cluster.learner_node_resource=worker", "cluster.generation_node_resource=main",
            "cluster.reward_node_resource=main", "max_staleness=0"]
    worker = {"num_cpus": 1, "resources": {"worker": 1}}
    with local_cluster([{"num_cpus": 1, "resources": {"main": 1}}, worker, worker]) as cluster:
        proc, run_dir, stderr_path = start_run(cluster, tiny_model, yes_data, tmp_path, *args)
        wait_for_steps(proc, run_dir, 2)
        line = next(x for x in (run_dir / "train.log").read_text().splitlines() if "placement (node" in x)
        first = re.search(r"learner: [^:|]+:(\w+)", line).group(1)
        node = next(n for n in cluster.list_all_nodes() if n.node_id.startswith(first))
        assert node is not cluster.head_node, line
        with driver_paused(proc):
            cluster.remove_node(node)
        wait_for_line(proc, stderr_path, ("restarting every actor from",))
        proc.wait(timeout=600)
        err = stderr_path.read_text()
        assert proc.returncode == 0, err[-3000:]
    assert re.search(r"learner rank 0 died .*restarting every actor from .*step_\d+ \(learner restart 1 of 1\)", err), \
        err[-3000:]
    placed = [re.search(r"learner: [^:|]+:(\w+)", x).group(1)
              for x in (run_dir / "train.log").read_text().splitlines() if "placement (node" in x]
    assert len(placed) == 2 and placed[0] == first and placed[1] != first, placed  # the other worker node
    rows = read_metrics(run_dir)
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]  # steps trained again replace the lost ones
    assert rows[-1]["fault/learner_restarts"] == 1
    rb = rollout_rows(run_dir)  # the rewound steps trained the same prompts again, none twice
    assert [sorted({r["prompt_id"] for r in rb[s]}) for s in range(1, 6)] == expected_prompts(tiny_model, yes_data, 5)
    assert all(len(rb[s]) == 4 * 4 for s in range(1, 6))


def test_a_generator_that_no_node_can_hold_stops_the_run_in_bounded_time(tiny_model, yes_data, tmp_path):
    """The generator is pinned to the `gen` node, which is removed after step 2 with no
    replacement (the driver paused meanwhile, and 20 steps asked for, so that the run cannot end
    first): Ray cannot restart it anywhere. Within fault.actor_restart_timeout_s the run stops
    with one line naming the actor, each node's free resources and the resume command."""
    import time

    from tests.test_resume import driver_paused, wait_for_steps

    args = ["steps=20", "checkpoint.every=1", *ONE_RANK, "cluster.generation_node_resource=gen",
            "cluster.learner_node_resource=main", "cluster.reward_node_resource=main", "max_staleness=0",
            "fault.actor_restart_timeout_s=10"]
    with local_cluster([{"num_cpus": 1, "resources": {"main": 1}}, {"num_cpus": 1, "resources": {"gen": 1}}]) as cluster:
        proc, run_dir, stderr_path = start_run(cluster, tiny_model, yes_data, tmp_path, *args)
        wait_for_steps(proc, run_dir, 2)
        with driver_paused(proc):
            cluster.remove_node(next(n for n in cluster.list_all_nodes() if n is not cluster.head_node))
        t0 = time.monotonic()
        proc.wait(timeout=300)
        waited = time.monotonic() - t0
        err = stderr_path.read_text()
        assert proc.returncode == 1, err[-3000:]
        last = err.strip().splitlines()[-1]
        assert re.match(r"forkrl: error: generation actor 0 did not come back within fault.actor_restart_timeout_s=10 s "
                        r"of failing: no live node could hold it \(free per node: .*\); add a node with the resources it "
                        r"asks for; continue from the latest checkpoint with `forkrl train --resume ", last), last
        assert 10 <= waited < 120, waited
        assert "bundle_group" not in last  # Ray's placement-group bookkeeping is not a node's free resources
