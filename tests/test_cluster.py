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
