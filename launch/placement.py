"""The only place that knows about Ray resources: wraps the plain worker classes as actors."""
from __future__ import annotations

import ray

from actors.generation import GenerationWorker
from actors.learner import LearnerWorker
from actors.reward import RewardWorker
from launch.errors import ResourceError
from launch.groups import ActorGroups
from launch.network import actor_env, file_rendezvous, loopback_only

# vLLM's engine must live in the actor's own process (collective_rpc then reaches the model that
# generates); its INFO logs would drown the driver's progress lines.
GEN_ENV = {"VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_LOGGING_LEVEL": "WARNING", "TOKENIZERS_PARALLELISM": "false"}
LEARNER_ENV = {"TOKENIZERS_PARALLELISM": "false"}


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


def launch_generators(cfg, model_path: str) -> list:
    g = cfg.generation
    # Ray restarts a dead generator or reward actor (same arguments); the driver gives it the
    # current weights and samples the lost batch again (launch/groups.py, ActorGroups.collect).
    Gen = ray.remote(num_cpus=g.num_cpus, num_gpus=g.num_gpus, max_restarts=cfg.fault.max_actor_restarts)(GenerationWorker)
    env = dict(GEN_ENV, **actor_env(cfg))
    return [Gen.options(runtime_env={"env_vars": env}).remote(g, model_path, cfg.seed + i, cfg.env, cfg.model.chat_template)
            for i in range(g.num_actors)]


def launch_rewards(cfg) -> list:
    Rew = ray.remote(num_cpus=cfg.reward.num_cpus, max_restarts=cfg.fault.max_actor_restarts)(RewardWorker)
    return [Rew.remote(cfg.reward, cfg.generation.max_new_tokens) for _ in range(cfg.reward.num_actors)]


def launch_learners(cfg, model_path: str, load_universal: bool = False) -> list:
    """Start the ranks and form their torch.distributed group (rank 0 hosts the rendezvous).
    `load_universal`: they will load a universal checkpoint (a resume on another number of ranks)."""
    l, g = cfg.learner, cfg.generation
    Lrn = ray.remote(num_cpus=l.num_cpus, num_gpus=l.num_gpus)(LearnerWorker)
    env = dict(LEARNER_ENV, **actor_env(cfg), **({"OMP_NUM_THREADS": str(l.torch_threads)} if l.torch_threads else {}))
    ranks = [Lrn.options(runtime_env={"env_vars": env}).remote(l, rank, l.num_ranks) for rank in range(l.num_ranks)]
    # torch's TCP store listens on every interface whatever its host, so a loopback-only run meets
    # through a file instead: all its ranks are on this node.
    rendezvous = file_rendezvous() if loopback_only(cfg) else ray.get(ranks[0].address.remote())
    batch = cfg.prompts_per_step * g.group_size
    ray.get([w.setup.remote(rendezvous=rendezvous, model_path=model_path, temperature=g.temperature,
                            max_new_tokens=g.max_new_tokens, max_prompt_tokens=cfg.data.max_prompt_tokens,
                            batch_size=batch, seed=cfg.seed, load_universal=load_universal) for w in ranks])
    return ranks


def launch_actors(cfg, model_path: str, load_universal: bool = False) -> ActorGroups:
    # Generation and reward actors start loading while the learner group forms.
    gens, scorers = launch_generators(cfg, model_path), launch_rewards(cfg)
    return ActorGroups(cfg, gens, scorers, launch_learners(cfg, model_path, load_universal))
