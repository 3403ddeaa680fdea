"""The run's actor groups and every call across them: rollouts, evaluation, learning, weights,
checkpoints, and recovery when an actor dies.

A batch fans out over the generation actors (prompts j, j+k, ... to generator j of k, seeded per
part) and each part's reward scoring is chained on it over the reward actors, so verification
starts without a hop through the driver. Results come back per part, so nothing downstream
depends on the order in which parts were flattened. The driver fetches only each part's summary
and rewards; the batch itself goes by reference to the reward actors, the learner ranks (each
stages its own rows before any trains) and the rollout-record task. Weights fan in from every learner rank's
ZeRO-3 slice to every generator. Generation and reward actors are restarted by Ray
(fault.max_actor_restarts) and their lost batch is sampled again; a learner rank cannot be, so
its death is raised as LearnerLost.
"""
from __future__ import annotations

import logging
import pickle
import random
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, fields

import ray
from ray.exceptions import ActorUnavailableError, GetTimeoutError, ObjectLostError, RayActorError

from actors.types import Prompt, RolloutSummary
from launch.config import TrainConfig
from launch.errors import ActorFailures, LearnerLost, RolloutsLost
from launch.nodes import free_per_node
from rewards.result import RewardResult, Status

logger = logging.getLogger("forkrl")


@dataclass
class Part:
    """One generator's share of a batch, on its way."""

    generator: int  # index into ActorGroups.generators
    positions: range  # where its prompts sit in the batch
    output: object  # ObjectRef of what the driver reads: a RolloutSummary, or an EvalSummary
    payload: object  # ObjectRef of the RolloutBatch (or EvalBatch): read by the reward actors, the
    #   learner ranks and the record writer, never by the driver
    scores: list  # ObjectRef[(list[RewardResult], seconds)] per reward-actor slice, in response order


@dataclass
class InFlight:
    """One rollout batch on its way: its parts and what resubmitting it needs."""

    parts: list[Part]
    batch: int  # the batch's number in the prompt stream (its sampling seeds derive from it)
    prompts: list  # its prompts: the ledger of issued-but-untrained prompts, resubmitted after a failure
    version: int  # the policy version published when it was submitted: no healthy generator answers older
    epoch: int  # ActorGroups' recoveries at submission: a failure seen after a later one was already counted


@dataclass(frozen=True)
class Verified:
    """Held-out responses, verified: `samples` per prompt, in prompt order."""

    correct: list[bool]
    policy_version: int  # the oldest version that answered
    tool_calls: list[int]  # tool calls per response (multi-turn); empty for single-turn


@dataclass
class Collected:
    """What the driver has of one step's rollouts (dynamic sampling's rounds appended), per
    generator part: the summaries and rewards it decides with, and references to the batches."""

    prompts: list[list[Prompt]]  # prompts[i]: part i's prompts, in its row order
    summaries: list[RolloutSummary]  # one per part
    payloads: list  # ObjectRef[RolloutBatch] per part: handed to the learner ranks and the record writer
    results: list[list[RewardResult]]  # results[i][r]: response r of part i
    reward_s: float  # the slowest scoring slice's seconds
    sources: list[InFlight]  # the batches collected: what sampling these parts again takes
    received_bytes: int  # pickled size of what the driver fetched (summaries and rewards)

    def extend(self, more: "Collected") -> None:
        for f in ("prompts", "summaries", "payloads", "results", "sources"):
            getattr(self, f).extend(getattr(more, f))
        self.reward_s = max(self.reward_s, more.reward_s)
        self.received_bytes += more.received_bytes


@dataclass
class FaultCounts:
    """Actor failures recovered from so far; a checkpoint keeps them, so a resumed run's bound and
    metrics go on. (Learner restarts are counted for the whole run in launch/resume.py.)"""

    restarts: int = 0  # generation and reward actor deaths, toward fault.max_actor_restarts
    resubmitted_prompts: int = 0

    def metrics(self) -> dict:
        return {"fault/actor_restarts": self.restarts, "fault/resubmitted_prompts": self.resubmitted_prompts}

    def state(self) -> dict:
        return asdict(self)

    def restore(self, state: dict | None) -> None:
        """Take a checkpoint's counts (those before 0a010d5 also held learner_restarts: not ours)."""
        for f in fields(self):
            setattr(self, f.name, (state or {}).get(f.name, 0))


class ActorGroups:
    """The generation, reward and learner actors of a run, the weights last published to the
    generators, and the fault counts. Every remote call of a run goes through here."""

    def __init__(self, cfg: TrainConfig, generators: list, scorers: list, learners: list):
        self.cfg = cfg
        self.generators = generators  # GenerationWorker handles
        self.scorers = scorers  # RewardWorker handles
        self.learners = learners  # LearnerWorker handles, index = rank
        self.faults = FaultCounts()
        self.version = 0  # the latest published policy version
        self.shards: list = []  # its weight shards (ObjectRefs, one per learner rank)
        self.published_mb = 0.0  # the size of that publish, every rank together (adapters only under LoRA)
        self._loads: list = []  # generators' loads of those weights, not yet waited for
        self._epoch = 0  # recoveries so far
        self._instances: dict[int, str] = {}  # generator index -> the incarnation that last answered
        self._record_task = None  # launch.records.write_records as a Ray task on the driver's node
        self._records: list = []  # its calls not yet waited for

    # -- rollouts ---------------------------------------------------------------------------------

    def submit(self, prompts: list, batch: int) -> InFlight:
        """Sample `prompts` (G responses each) and score them; returns at once."""
        parts = self._fan_out(prompts, self.cfg.generation.group_size,
                              lambda gen, mine, j: gen.rollout.options(num_returns=2).remote(
                                  mine, sample_seed(self.cfg.seed, batch, j)),
                              lambda rw, ref, sl: rw.score_rollout.remote(ref, sl.start, sl.stop))
        return InFlight(parts, batch, list(prompts), self.version, self._epoch)

    def collect(self, batch: InFlight) -> Collected:
        """Wait for a batch.

        A generation or reward actor that died on the way (Ray restarts it, up to
        fault.max_actor_restarts) loses the whole batch: the restarted generators get the latest
        weights, and the batch's prompts are sampled again with the same seeds, so no prompt is
        lost or trained twice and no failed response enters training."""
        while True:
            try:
                summaries = ray.get([p.output for p in batch.parts])
                scored = [ray.get(p.scores) for p in batch.parts]
                if all(r.policy_version >= batch.version for r in summaries):
                    self.note_instances(zip((p.generator for p in batch.parts), summaries))
                    return Collected([[batch.prompts[i] for i in p.positions] for p in batch.parts], summaries,
                                     [p.payload for p in batch.parts], [[r for res, _ in s for r in res] for s in scored],
                                     max(sec for s in scored for _, sec in s), [batch],
                                     len(pickle.dumps((summaries, scored), protocol=5)))
                cause = "a generator answered with its initial weights: it was restarted"
            except (RayActorError, ActorUnavailableError) as e:
                cause = str(e).strip().splitlines()[0]
            if batch.epoch == self._epoch:  # a new failure, not one already recovered from
                self.count_restart(cause)
                logger.warning("actor failure (%s): restoring weights, sampling batch %d again", cause, batch.batch)
                self._refresh_generators()
                self._instances.clear()  # the restarted incarnations were counted here
            self.faults.resubmitted_prompts += len(batch.prompts)
            batch = self.submit(batch.prompts, batch.batch)

    # -- evaluation -------------------------------------------------------------------------------

    def verify_eval(self, prompts: list, samples: int, max_tokens: int, seed: int) -> Verified:
        """`samples` responses per prompt (greedy when 1), verified, in prompt order. An actor
        that dies meanwhile (Ray restarts it) costs a restart, as in training: the generators get
        the current weights back and the evaluation runs again with the same seeds."""
        while True:
            parts = self._fan_out(prompts, samples,
                                  lambda gen, mine, j: gen.evaluation.options(num_returns=2).remote(
                                      mine, samples, max_tokens, sample_seed(seed, -1, j)),
                                  lambda rw, ref, sl: rw.score_eval.remote(ref, sl.start, sl.stop))
            try:
                scored = [ray.get(part.scores) for part in parts]
                summaries = ray.get([part.output for part in parts])  # EvalSummary: no text
                if all(b.policy_version >= self.version for b in summaries):
                    break
                cause = "a generator answered with its initial weights: it was restarted"
            except (RayActorError, ActorUnavailableError) as e:
                cause = str(e).strip().splitlines()[0]
            self.count_restart(cause)
            logger.warning("actor failure during evaluation (%s): restoring weights, evaluating again", cause)
            self._refresh_generators()
            self._instances.clear()
        by_prompt: list[list[bool]] = [[] for _ in prompts]
        calls: list[tuple[int, ...]] = [() for _ in prompts]
        for part, results, summary in zip(parts, scored, summaries):
            flags = [r.status == Status.CORRECT for res, _ in results for r in res]
            for n, pos in enumerate(part.positions):
                by_prompt[pos] = flags[n * samples:(n + 1) * samples]
                calls[pos] = summary.tool_calls[n * samples:(n + 1) * samples]
        return Verified([f for group in by_prompt for f in group], min(b.policy_version for b in summaries),
                        [c for group in calls for c in group])

    def _fan_out(self, prompts: list, per_prompt: int, generate: Callable, score: Callable) -> list[Part]:
        """Prompts j, j+k, ... to generator j of k (`generate(handle, prompts, j)` -> the ObjectRefs
        (what the driver reads, the batch)), and its `per_prompt` responses per prompt cut into
        contiguous slices over the reward actors (`score(handle, batch ref, slice)`): the batch is
        resolved inside the reward actor."""
        k, parts = len(self.generators), []
        for j, gen in enumerate(self.generators):
            positions = range(j, len(prompts), k)
            if not positions:
                continue
            output, payload = generate(gen, [prompts[i] for i in positions], j)
            slices = contiguous_slices(len(positions) * per_prompt, len(self.scorers))
            parts.append(Part(j, positions, output, payload,
                              [score(rw, payload, sl) for rw, sl in zip(self.scorers, slices)]))
        return parts

    # -- learning and weights ---------------------------------------------------------------------

    def train(self, plans: list, payloads: list) -> dict:
        """One step on every learner rank; rank 0's metrics (they are reduced over the ranks).
        `plans`: (ShardPlan, the parts it reads) per rank; `payloads`: the step's RolloutBatch refs.

        Every rank first fetches its rows (Ray moves the batches between object stores) and only
        then do they train: a batch lost on the way (its node died) is found before any rank
        enters a collective that the others would never join."""
        try:
            self._on_learners([w.stage.remote(plan, *[payloads[i] for i in parts])
                               for w, (plan, parts) in zip(self.learners, plans)])
        except ObjectLostError as e:
            raise RolloutsLost(str(e).strip().splitlines()[0]) from None
        return self._on_learners([w.train_staged.remote() for w in self.learners])[0]

    def write_records(self, path: str | None, rows: list[dict], keep: int, payloads: list):
        """The rollout record and the completions table's rows (launch/records.py), in a task on
        the driver's node; returns its ObjectRef (the first `keep` rows)."""
        if self._record_task is None:
            from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

            from launch.records import write_records

            here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
            self._record_task = ray.remote(write_records).options(num_cpus=0, scheduling_strategy=here)
        ref = self._record_task.remote(path, rows, keep, *payloads)
        self._records.append(ref)
        return ref

    def wait_records(self) -> None:
        """Wait for the record writes in flight (before a checkpoint, at the end)."""
        pending, self._records = self._records, []
        ray.get(pending)

    def sleep_generators(self) -> None:
        """One GPU: vLLM gives its memory to the learner until wake_generators."""
        ray.get([gen.sleep.remote() for gen in self.generators])

    def wake_generators(self) -> None:
        # Not waited for: queued before the next weight load, and actor calls run in order.
        for gen in self.generators:
            gen.wake_up.remote()

    def publish(self, version: int, wait: bool = False) -> float:
        """Every learner rank puts its own slice of the weights into the object store; each
        generator assembles them (Ray hands it the resolved shards) and loads. Nothing passes
        through one process.

        Returns the seconds the *previous* loads took: they are done by now, while waiting on the
        new ones would stall behind in-flight generation. `wait`: wait for the new loads too, and
        raise if one fails."""
        shards, sizes = zip(*[w.publish_weights.options(num_returns=2).remote() for w in self.learners])
        shards = list(shards)
        ray.wait(shards, num_returns=len(shards))
        try:
            self.published_mb = sum(ray.get(list(sizes))) / 2**20
        except RayActorError as e:  # a rank died before it published: its shards went with it
            raise self._learner_lost(e) or e from None
        load_s = self.wait_loads()
        self.version, self.shards = version, shards
        self._loads = [gen.load_weights.remote(version, *shards) for gen in self.generators]
        if wait:
            ray.get(self._loads)
        return load_s

    def wait_loads(self) -> float:
        """Wait for the weight loads in flight; the slowest one's seconds (0 when a generator died:
        collect() finds and restores it before it samples again)."""
        try:
            return max(ray.get(self._loads), default=0.0)
        except (RayActorError, ActorUnavailableError):
            return 0.0

    def probe_storage(self, folder: str, token: str) -> list[dict]:
        """Every learner rank's view of `folder` (LearnerWorker.probe_storage), by rank."""
        return self._on_learners([w.probe_storage.remote(folder, token) for w in self.learners])

    def save(self, path: str) -> None:
        """Every learner rank writes its ZeRO-3 shards of model, optimizer and scheduler under `path`."""
        self._on_learners([w.save_checkpoint.remote(path) for w in self.learners])

    def load(self, path: str) -> None:
        self._on_learners([w.load_checkpoint.remote(path) for w in self.learners])

    # -- failures ---------------------------------------------------------------------------------

    def note_instances(self, answered: Iterable[tuple[int, RolloutSummary]]) -> None:
        """Count a generator that Ray restarted between batches and that got the latest weights
        (queued before its next batch) before it sampled: no batch was lost, but it failed all the
        same. `answered`: (generator index, its rollout's summary)."""
        for j, rollout in answered:
            seen = self._instances.setdefault(j, rollout.actor_instance)
            if seen != rollout.actor_instance:
                self._instances[j] = rollout.actor_instance
                self.count_restart(f"generation actor {j} was restarted")
                logger.warning("generation actor %d was restarted and had the latest weights before it sampled: "
                               "no batch lost", j)

    def count_restart(self, cause: str) -> None:
        self.faults.restarts += 1
        limit = self.cfg.fault.max_actor_restarts
        if self.faults.restarts > limit:
            raise ActorFailures(f"{self.faults.restarts} actor failures, over fault.max_actor_restarts={limit}; "
                                f"last: {cause}")

    def _refresh_generators(self) -> None:
        """Give every generator that lags the latest policy version (a restarted one starts from
        the initial weights) those weights; waits until all answer (Ray restarts them meanwhile)."""
        versions = [answer_when_up(g.policy_version, self.cfg.fault.actor_restart_timeout_s, f"generation actor {j}")
                    for j, g in enumerate(self.generators)]
        stale = [g for g, v in zip(self.generators, versions) if v < self.version]
        try:
            ray.get([g.load_weights.remote(self.version, *self.shards) for g in stale])
        except RayActorError as e:  # a weight shard that never came: its learner rank died publishing it
            raise self._learner_lost(e) or e from None
        self._epoch += 1

    def _on_learners(self, refs: list) -> list:
        """Results of one call on every learner rank, failing as soon as one rank dies: its peers
        then wait in a collective for it and would never answer. A dead rank cannot be replaced in
        place under ZeRO-3 (its shards went with it), so this raises LearnerLost naming the rank."""
        pending = list(refs)
        try:
            while pending:
                done, pending = ray.wait(pending, num_returns=1)
                ray.get(done)
            return ray.get(refs)
        except RayActorError as e:
            raise self._learner_lost(e) or e from None

    def _learner_lost(self, e: RayActorError) -> LearnerLost | None:
        """The LearnerLost that `e` means, or None when the actor that died is not a learner rank."""
        dead = getattr(e, "actor_id", None)
        ranks = [i for i, w in enumerate(self.learners) if w._actor_id.hex() == dead]
        if not ranks and dead in {w._actor_id.hex() for w in self.generators + self.scorers}:
            return None
        rank = ranks[0] if ranks else "?"  # a shard argument's error names the learner that failed to make it
        return LearnerLost(f"learner rank {rank} died ({str(e).strip().splitlines()[0]})")


def sample_seed(run_seed: int, batch: int, part: int) -> int:
    """The sampling seed of one generation call: a function of (run seed, batch number, part), so
    a resumed run or a restarted actor draws exactly what the uninterrupted run drew."""
    return random.Random(f"{run_seed}/{batch}/{part}").getrandbits(62)


def contiguous_slices(n: int, parts: int) -> list[slice]:
    """Items 0..n-1 cut into at most `parts` contiguous, non-empty slices of ceil(n / parts), in
    order: how a part's responses are spread over the reward actors, so their results
    concatenate back into the part's row order."""
    per = -(-n // parts)
    return [slice(i * per, min(n, (i + 1) * per)) for i in range(parts) if i * per < n]


def answer_when_up(method, timeout_s: float, who: str):
    """Call an actor method, waiting while Ray restarts the actor (it answers 'unavailable', or
    not at all while it waits for a node); an actor that is gone for good, or not back within
    `timeout_s` (fault.actor_restart_timeout_s), stops the run, naming it and the nodes' free resources."""
    deadline = time.monotonic() + timeout_s
    while True:
        left = deadline - time.monotonic()
        try:
            return ray.get(method.remote(), timeout=max(left, 1.0))
        except (ActorUnavailableError, GetTimeoutError):
            if time.monotonic() >= deadline:
                raise ActorFailures(f"{who} did not come back within fault.actor_restart_timeout_s={timeout_s:g} s of "
                                    f"failing: no live node could hold it (free per node: {free_per_node()}); add a "
                                    "node with the resources it asks for") from None
            time.sleep(1.0)
        except RayActorError as e:
            raise ActorFailures(f"{who} is gone for good: {str(e).strip().splitlines()[0]}") from None
