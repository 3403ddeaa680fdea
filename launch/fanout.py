"""Calls across the actor groups, and recovery when an actor in them dies.

A rollout batch fans out over the generation actors (a slice of the prompts each, seeded per
part) and their reward scoring is chained on them over the reward actors, so verification starts
without a hop through the driver. Weights fan in from every learner rank's ZeRO-3 slice to every
generator. Generation and reward actors are restarted by Ray (fault.max_actor_restarts) and their
lost batch is sampled again; a learner rank cannot be, so its death is raised as LearnerLost.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import ray
from ray.exceptions import ActorUnavailableError, RayActorError

from actors.types import RolloutBatch
from launch.config import TrainConfig
from launch.errors import ActorFailures, LearnerLost
from launch.placement import Actors
from launch.rollouts import contiguous_slices, sample_seed
from rewards.math import RewardResult

logger = logging.getLogger("forkrl")

@dataclass
class InFlight:
    """One rollout batch on its way: generation parts and the reward scoring chained on them."""

    rollouts: list  # ObjectRef[RolloutBatch], one per generation actor
    scores: list  # ObjectRef[(list[RewardResult], seconds)], per reward actor slice
    batch: int  # the batch's number in the prompt stream (its sampling seeds derive from it)
    prompts: list  # its prompts: the ledger of issued-but-untrained prompts, resubmitted after a failure
    version: int  # the policy version published when it was submitted: no healthy generator answers older
    epoch: int  # Faults.epoch at submission: a failure seen after a later recovery was already counted


@dataclass
class Faults:
    """Actor failures so far, and what recovering from one needs: the latest published weights."""

    max_restarts: int
    restarts: int = 0
    resubmitted_prompts: int = 0
    learner_restarts: int = 0  # restarts of the whole run from its latest checkpoint after a rank died
    epoch: int = 0  # recoveries so far
    version: int = 0  # the latest published policy version
    shards: list = field(default_factory=list)  # its weight shards (ObjectRefs)
    instances: dict = field(default_factory=dict)  # generator index -> the incarnation that last answered

    def metrics(self) -> dict:
        return {"fault/actor_restarts": self.restarts, "fault/resubmitted_prompts": self.resubmitted_prompts,
                "fault/learner_restarts": self.learner_restarts}

    def counters(self) -> dict:  # what a checkpoint keeps, so a resumed run's bound and metrics go on
        return {"restarts": self.restarts, "resubmitted_prompts": self.resubmitted_prompts,
                "learner_restarts": self.learner_restarts}


def submit_rollout(cfg: TrainConfig, actors: Actors, prompts: list, batch: int, faults: Faults) -> InFlight:
    k, group_size = len(actors.generators), cfg.generation.group_size
    rollouts = [gen.generate.remote(prompts[j::k], sample_seed(cfg.seed, batch, j))
                for j, gen in enumerate(actors.generators) if prompts[j::k]]
    scores = []
    for ref, n_prompts in zip(rollouts, [len(prompts[j::k]) for j in range(k)]):
        n = n_prompts * group_size
        for rw, part in zip(actors.rewards, contiguous_slices(n, len(actors.rewards))):
            # the rollout ref is resolved inside the reward actor: no driver hop
            scores.append(rw.score_rollout.remote(ref, part.start, part.stop))
    return InFlight(rollouts, scores, batch, list(prompts), faults.version, faults.epoch)


def collect(cfg: TrainConfig, actors: Actors, batch: InFlight, faults: Faults
            ) -> tuple[list[RolloutBatch], list[RewardResult], float]:
    """Wait for a batch: its parts, the reward results in response order, the slowest scoring time.

    A generation or reward actor that died on the way (Ray restarts it, up to
    fault.max_actor_restarts) loses the whole batch: the restarted generators get the latest
    weights, and the batch's prompts are sampled again with the same seeds, so no prompt is lost
    or trained twice and no failed response enters training."""
    while True:
        try:
            parts, scored = ray.get(batch.rollouts), ray.get(batch.scores)
            if all(p.policy_version >= batch.version for p in parts):
                note_instances(cfg, faults, parts)
                return parts, [r for res, _ in scored for r in res], max(s for _, s in scored)
            cause = "a generator answered with its initial weights: it was restarted"
        except (RayActorError, ActorUnavailableError) as e:
            cause = str(e).strip().splitlines()[0]
        if batch.epoch == faults.epoch:  # a new failure, not one already recovered from
            count_restart(cfg, faults, cause)
            logger.warning("actor failure (%s): restoring weights, sampling batch %d again", cause, batch.batch)
            refresh_generators(actors, faults)
            faults.instances.clear()  # the restarted incarnations were counted here
        faults.resubmitted_prompts += len(batch.prompts)
        batch = submit_rollout(cfg, actors, batch.prompts, batch.batch, faults)


def count_restart(cfg: TrainConfig, faults: Faults, cause: str) -> None:
    faults.restarts += 1
    if faults.restarts > cfg.fault.max_actor_restarts:
        raise ActorFailures(f"{faults.restarts} actor failures, over fault.max_actor_restarts="
                            f"{cfg.fault.max_actor_restarts}; last: {cause}")


def note_instances(cfg: TrainConfig, faults: Faults, parts: list[RolloutBatch]) -> None:
    """Count a generator that Ray restarted between batches and that got the latest weights (queued
    before its next batch) before it sampled: no batch was lost, but it failed all the same."""
    for j, part in enumerate(parts):  # parts[j] came from generator j (submit_rollout's order)
        seen = faults.instances.setdefault(j, part.actor_instance)
        if seen != part.actor_instance:
            faults.instances[j] = part.actor_instance
            count_restart(cfg, faults, f"generation actor {j} was restarted")
            logger.warning("generation actor %d was restarted and had the latest weights before it sampled: "
                           "no batch lost", j)


def answer_when_up(method, timeout_s: float = 900.0):
    """Call an actor method, waiting while Ray restarts the actor (it answers 'unavailable' then);
    an actor that is gone for good, or not back within `timeout_s`, stops the run."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            return ray.get(method.remote())
        except ActorUnavailableError:
            if time.monotonic() > deadline:
                raise ActorFailures(f"an actor did not come back within {timeout_s:.0f}s of failing") from None
            time.sleep(1.0)
        except RayActorError as e:
            raise ActorFailures(f"an actor is gone for good: {str(e).strip().splitlines()[0]}") from None


def refresh_generators(actors: Actors, faults: Faults) -> None:
    """Give every generator that lags the latest policy version (a restarted one starts from the
    initial weights) those weights; waits until all answer (Ray restarts them meanwhile)."""
    versions = [answer_when_up(g.policy_version) for g in actors.generators]
    stale = [g for g, v in zip(actors.generators, versions) if v < faults.version]
    try:
        ray.get([g.load_weights.remote(faults.version, *faults.shards) for g in stale])
    except RayActorError as e:  # a weight shard that never came: its learner rank died publishing it
        raise learner_lost(actors, e) or e from None
    faults.epoch += 1


def publish_weights(actors: Actors, version: int, previous_loads: list):
    """Every learner rank puts its own slice of the weights into the object store; each generator
    assembles them (Ray hands it the resolved shards) and loads. Nothing passes through one process.

    Returns the shards' ObjectRefs, the seconds the *previous* loads took (they are done by now;
    waiting on the new ones would stall behind in-flight generation) and the new loads' futures."""
    shards = [w.weight_shard.remote() for w in actors.learners]
    ray.wait(shards, num_returns=len(shards))
    load_s = wait_loads(previous_loads)
    return shards, load_s, [gen.load_weights.remote(version, *shards) for gen in actors.generators]


def wait_loads(loads: list) -> float:
    """Wait for weight loads; the slowest one's seconds (0 when a generator died: collect() finds
    and restores it before it samples again)."""
    try:
        return max(ray.get(loads), default=0.0)
    except (RayActorError, ActorUnavailableError):
        return 0.0


def on_learners(actors: Actors, refs: list) -> list:
    """Results of one call on every learner rank, failing as soon as one rank dies: its peers then
    wait in a collective for it and would never answer. A dead rank cannot be replaced in place
    under ZeRO-3 (its shards went with it), so this raises LearnerLost naming the rank."""
    pending = list(refs)
    try:
        while pending:
            done, pending = ray.wait(pending, num_returns=1)
            ray.get(done)
        return ray.get(refs)
    except RayActorError as e:
        raise learner_lost(actors, e) or e from None


def learner_lost(actors: Actors, e: RayActorError) -> LearnerLost | None:
    """The LearnerLost that `e` means, or None when the actor that died is not a learner rank."""
    dead = getattr(e, "actor_id", None)
    ranks = [i for i, w in enumerate(actors.learners) if w._actor_id.hex() == dead]
    if not ranks and dead in {w._actor_id.hex() for w in actors.generators + actors.rewards}:
        return None
    rank = ranks[0] if ranks else "?"  # a shard argument's error names the learner that failed to make it
    return LearnerLost(f"learner rank {rank} died ({str(e).strip().splitlines()[0]})")


def train_step(actors: Actors, shards: list) -> dict:
    """One step on every learner rank; rank 0's metrics (they are reduced over the ranks)."""
    return on_learners(actors, [w.train_step.remote(s) for w, s in zip(actors.learners, shards)])[0]
