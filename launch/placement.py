"""The only place that knows about Ray resources: wraps the plain worker classes as actors."""
from __future__ import annotations

import logging
from dataclasses import dataclass

import ray

from actors.generation import GenerationWorker
from actors.learner import LearnerWorker
from actors.reward import RewardWorker
from launch.errors import ConfigError, ResourceError
from launch.groups import ActorGroups
from launch.nodes import free_per_node
from launch.network import actor_env, file_rendezvous, loopback_only

logger = logging.getLogger("forkrl")

# vLLM's engine must live in the actor's own process (collective_rpc then reaches the model that
# generates); its INFO logs would drown the driver's progress lines.
GEN_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}
LEARNER_ENV = {"TOKENIZERS_PARALLELISM": "false"}


# The sonames: each node's own loader resolves them. Debian/Ubuntu packages in ALLOCATOR_PACKAGES.
ALLOCATORS = {"jemalloc": "libjemalloc.so.2", "tcmalloc": "libtcmalloc_minimal.so.4"}
ALLOCATOR_PACKAGES = {"jemalloc": "libjemalloc2", "tcmalloc": "libtcmalloc-minimal4"}


def allocator_env(allocator: str, key: str = "learner.allocator") -> dict[str, str]:
    """An actor's environment for its allocator setting (`key`: learner.allocator or
    generation.allocator): that library preloaded (ahead of any LD_PRELOAD this process has), or
    nothing for glibc's malloc. 'auto' is tcmalloc where this node has it, else glibc's. Raises
    ConfigError when a library asked for by name is missing here (checked before any actor starts)."""
    import ctypes.util
    import os

    def installed(name: str) -> bool:
        return ctypes.util.find_library(ALLOCATORS[name].removeprefix("lib").split(".so")[0]) is not None

    if allocator == "auto":
        allocator = "tcmalloc" if installed("tcmalloc") else "system"
    if allocator == "system":
        return {}
    if not installed(allocator):
        raise ConfigError(f"{key}={allocator}: {ALLOCATORS[allocator]} is not installed on this node "
                          f"(Debian/Ubuntu: apt-get install {ALLOCATOR_PACKAGES[allocator]}), or set {key}=system")
    return {"LD_PRELOAD": ":".join(filter(None, [ALLOCATORS[allocator], os.environ.get("LD_PRELOAD", "")]))}


def check_resources(cfg) -> None:
    """Fail before starting anything when the actors cannot all be placed (else Ray waits forever)."""
    g, r, l = cfg.generation, cfg.reward, cfg.learner
    need_cpu = g.num_actors * g.num_cpus + r.num_actors * r.num_cpus + l.num_ranks * l.num_cpus
    need_gpu = g.num_actors * g.num_gpus + l.num_ranks * l.num_gpus
    have = ray.cluster_resources()
    if g.sleep_mode and have.get("GPU", 0) < 1:
        raise ResourceError("generation.sleep_mode needs a CUDA GPU (vLLM's sleep mode is CUDA-only) and this "
                            "Ray cluster has none: use configs/tiny.yaml or configs/demo.yaml on CPU")
    if need_cpu > have.get("CPU", 0) + 1e-9:
        raise ResourceError(
            f"the actors need {need_cpu:g} CPUs but the Ray cluster has {have.get('CPU', 0):g}: lower "
            "generation.num_cpus / reward.num_cpus / learner.num_cpus (fractions are fine) or add nodes")
    if need_gpu > have.get("GPU", 0) + 1e-9:
        raise ResourceError(
            f"the actors need {need_gpu:g} GPUs but the Ray cluster has {have.get('GPU', 0):g}: set "
            "generation.num_gpus / learner.num_gpus to 0 for CPU, or add GPU nodes")


def reserve(group: str, bundle: dict[str, float], count: int, strategy: str, node_resource: str,
            timeout_s: float):
    """One placement group of `count` bundles for an actor group: its resources are reserved
    together, so small actors scheduled first can never fragment the nodes that a larger group
    needs. Fails after `timeout_s` with one line naming the demand and each node's free resources."""
    from ray.util.placement_group import placement_group, remove_placement_group

    one = {k: v for k, v in bundle.items() if v > 0}
    if node_resource:
        one[node_resource] = 0.001
    pg = placement_group([dict(one) for _ in range(count)], strategy=strategy.upper(), name=f"forkrl-{group}")
    ready, _ = ray.wait([pg.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(pg)
        raise ResourceError(f"cluster.{group}_placement: {count} x {one} ({strategy}) could not be reserved within "
                            f"cluster.placement_timeout_s={timeout_s:g} s; free per node: {free_per_node()}")
    return pg


@dataclass
class Reservations:
    """The run's placement groups, one per actor group (None: plain scheduling, as in unit tests)."""

    learner: object = None
    generation: object = None
    reward: object = None


def reserve_all(cfg) -> Reservations:
    """The learner ranks first (the largest bundles), then the generators, then the reward actors."""
    c, g, r, l = cfg.cluster, cfg.generation, cfg.reward, cfg.learner
    t = c.placement_timeout_s
    return Reservations(
        learner=reserve("learner", {"CPU": l.num_cpus, "GPU": l.num_gpus}, l.num_ranks, c.learner_placement,
                        c.learner_node_resource, t),
        generation=reserve("generation", {"CPU": g.num_cpus, "GPU": g.num_gpus}, g.num_actors, c.generation_placement,
                           c.generation_node_resource, t),
        reward=reserve("reward", {"CPU": r.num_cpus}, r.num_actors, c.reward_placement, c.reward_node_resource, t))


def describe(pgs: Reservations) -> str:
    """Which node holds each bundle, for the log: 'learner: n1, n2 | generation: n3 | reward: n3'."""
    from ray.util.placement_group import placement_group_table

    nodes = {n["NodeID"]: n["NodeManagerAddress"] + ":" + n["NodeID"][:6] for n in ray.nodes()}
    parts = []
    for group in ("learner", "generation", "reward"):
        pg = getattr(pgs, group)
        placed = placement_group_table(pg)["bundles_to_node_id"]
        parts.append(f"{group}: " + ", ".join(nodes.get(placed[i], placed[i][:6]) for i in sorted(placed)))
    return " | ".join(parts)


def _in(pg, i: int) -> dict:
    """Actor options that put it in bundle `i` of `pg` (a restarted actor goes back there)."""
    if pg is None:
        return {}
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    return {"scheduling_strategy": PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=i)}


def launch_generators(cfg, model_path: str, pg=None) -> list:
    g = cfg.generation
    # Ray restarts a dead generator or reward actor (same arguments); the driver gives it the
    # current weights and samples the lost batch again (launch/groups.py, ActorGroups.collect).
    Gen = ray.remote(num_cpus=g.num_cpus, num_gpus=g.num_gpus, max_restarts=cfg.fault.max_actor_restarts)(GenerationWorker)
    env = dict(GEN_ENV, **actor_env(cfg), **allocator_env(g.allocator, "generation.allocator"))
    return [Gen.options(runtime_env={"env_vars": env}, **_in(pg, i)).remote(g, model_path, cfg.seed + i, cfg.env,
                                                                           cfg.model.chat_template)
            for i in range(g.num_actors)]


def launch_rewards(cfg, pg=None) -> list:
    Rew = ray.remote(num_cpus=cfg.reward.num_cpus, max_restarts=cfg.fault.max_actor_restarts)(RewardWorker)
    return [Rew.options(**_in(pg, i)).remote(cfg.reward, cfg.generation.max_new_tokens)
            for i in range(cfg.reward.num_actors)]


def launch_learners(cfg, model_path: str, load_universal: bool = False, pg=None) -> list:
    """Start the ranks and form their torch.distributed group (rank 0 hosts the rendezvous).
    `load_universal`: they will load a universal checkpoint (a resume on another number of ranks)."""
    l, g = cfg.learner, cfg.generation
    Lrn = ray.remote(num_cpus=l.num_cpus, num_gpus=l.num_gpus)(LearnerWorker)
    env = dict(LEARNER_ENV, **actor_env(cfg), **allocator_env(l.allocator),
               **({"OMP_NUM_THREADS": str(l.torch_threads)} if l.torch_threads else {}))
    ranks = [Lrn.options(runtime_env={"env_vars": env}, **_in(pg, rank)).remote(l, rank, l.num_ranks)
             for rank in range(l.num_ranks)]
    # torch's TCP store listens on every interface whatever its host, so a loopback-only run meets
    # through a file instead: all its ranks are on this node.
    rendezvous = file_rendezvous() if loopback_only(cfg) else ray.get(ranks[0].address.remote())
    batch = cfg.prompts_per_step * g.group_size
    ray.get([w.setup.remote(rendezvous=rendezvous, model_path=model_path, temperature=g.temperature,
                            max_new_tokens=g.max_new_tokens, max_prompt_tokens=cfg.data.max_prompt_tokens,
                            batch_size=batch, seed=cfg.seed, load_universal=load_universal) for w in ranks])
    return ranks


def launch_actors(cfg, model_path: str, load_universal: bool = False) -> ActorGroups:
    pgs = reserve_all(cfg)
    logger.info("placement (node address:id per rank / actor): %s", describe(pgs))
    # Generation and reward actors start loading while the learner group forms.
    gens, scorers = launch_generators(cfg, model_path, pgs.generation), launch_rewards(cfg, pgs.reward)
    return ActorGroups(cfg, gens, scorers, launch_learners(cfg, model_path, load_universal, pgs.learner))
