"""The driver: generate -> verify -> advantages -> learn -> publish weights, asynchronously.

Up to `max_staleness + 1` rollout batches are in flight. Generation actors run their calls in
order, so a batch submitted after the weights of version v were queued is sampled by version v;
the batch trained at learner version v therefore lags by at most `max_staleness` versions, and
the learner corrects the lag with the importance ratio against the behaviour log-probs.

Read top to bottom: `run` survives learner deaths, `train_run` sets a run up and tears it down,
`train_steps` is the step loop, and each step's parts follow in the order it calls them. Every
remote call goes through launch/groups.py; checkpoints are launch/resume.py's.

Entered through launch/cli.py, which keeps a local Ray instance on loopback before Ray is imported.
"""
from __future__ import annotations

import logging
import math
import random
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path

import ray

from launch.checkpoint import export_weights
from launch.config import TrainConfig
from launch.config_load import to_dict
from launch.console import Console, duration, log_step, summary_line
from launch.data import PromptStream, load_eval_prompts, load_prompts
from launch.errors import ActorFailures, LearnerLost, NonFiniteSteps, ResourceError, RolloutsLost, RunStopped
from launch.evaluation import eval_max_tokens, evaluate
from launch.groups import ActorGroups, Collected, InFlight
from launch.models import check_chat_wrap, check_lora_targets, resolve_model_path
from launch.network import remove_rendezvous_files, start_ray
from launch.placement import allocator_env, check_resources, launch_actors
from launch.resume import (STATE_DIR, DriverState, LearnerRestarts, Progress, check_shared_storage,
                           latest_checkpoint, restore, save_checkpoint, to_universal)
from launch.rollouts import (Group, RewardHealth, choose_groups, plan_shards, rank_token_imbalance, rollout_metrics,
                             to_groups)
from launch.signals import StopSignal
from launch.tracking import RunLock, RunTracker, check_fresh
from envs.registry import check_env
from rewards.registry import check_ground_truths, check_reward_config, dry_call_reward

logger = logging.getLogger("forkrl")


@dataclass(frozen=True)
class Inputs:
    """What a run trains on, all checked before any actor starts."""

    model_path: str  # a local HF folder (the packaged default converted once)
    prompts: list  # training Prompts
    eval_prompts: list  # held-out Prompts ([] without evaluation)
    pad_id: int


@dataclass
class Run:
    """What every step of one training run works with."""

    cfg: TrainConfig
    actors: ActorGroups
    stream: PromptStream
    tracker: RunTracker
    progress: Progress
    health: RewardHealth
    inflight: deque  # InFlight batches, oldest first
    stop: StopSignal
    learner_restarts: LearnerRestarts
    inputs: Inputs


@dataclass
class Rollouts:
    """One step's scored responses and the groups chosen from them to train on."""

    collected: Collected  # every response sampled this step (dynamic sampling's rounds too)
    groups: list[Group]  # trained: informative first (under dynamic sampling)
    fill: list[Group]  # zero-advantage groups that complete a short batch
    metrics: dict


def run(cfg: TrainConfig, resume: Path | None = None, verbose: bool = False) -> Path:
    """Train per `cfg` (continuing the run in `resume` from its latest checkpoint); returns the run
    directory. All input is checked before actors start."""
    from transformers import AutoTokenizer

    check_reward_config(cfg.reward)
    check_env(cfg.env.name, cfg.env.isolation)
    model_path = str(resolve_model_path(cfg.model.path))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    check_chat_wrap(cfg, tokenizer)
    check_lora_targets(cfg.learner.lora, model_path)
    allocator_env(cfg.learner.allocator)  # an allocator library named but missing here stops the run now
    allocator_env(cfg.generation.allocator, "generation.allocator")
    prompts = load_prompts(cfg.data, cfg.model, tokenizer)
    dry_call_reward(cfg.reward, prompts[0], f"row 1 of {','.join(cfg.data.train_files) or 'the synthetic data'}")
    inputs = Inputs(model_path, prompts,
                    load_eval_prompts(cfg.eval, cfg.data, cfg.model, tokenizer, prompts) if cfg.eval.every else [],
                    tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id)
    check_ground_truths(cfg.reward, prompts, ",".join(cfg.data.train_files) or "the synthetic data")
    check_ground_truths(cfg.reward, inputs.eval_prompts, ",".join(cfg.eval.files) or "the generated eval data")
    run_dir = resume or Path(cfg.tracking.run_dir.format(name=cfg.tracking.name))
    if not resume:
        check_fresh(run_dir)
    # Locked before the checkpoint is read: another driver may be writing it.
    with RunLock(run_dir), Console(run_dir / "train.log", verbose) as console:
        ckpt, saved = latest_checkpoint(run_dir) if resume else (None, None)
        restarts = LearnerRestarts(run_dir)  # fault.learner_restarts bounds the whole run
        restarted_after = None  # the LearnerLost that this attempt restarts after
        while True:
            try:
                return train_run(cfg, run_dir, inputs, ckpt, saved, console, restarts)
            except ResourceError as e:
                if restarted_after is None:
                    raise
                # The dead rank's node went with it and no node that remains (nor a replacement
                # within cluster.placement_timeout_s) can hold the group: bounded, and resumable.
                raise ResourceError(f"{e} (restarting after {restarted_after}); once the cluster can hold "
                                    f"the actors again: `forkrl train --resume {run_dir}`") from None
            except LearnerLost as e:  # train_run has shut Ray down: every actor, the dead rank's hung peers too
                if not (run_dir / STATE_DIR / "latest").is_file():
                    raise ActorFailures(f"{e} before the run's first checkpoint: nothing to resume from; start "
                                        "again under another tracking.name") from None
                if restarts.count >= cfg.fault.learner_restarts:
                    raise ActorFailures(f"{e}; ZeRO-3 cannot replace a rank in place: continue from the latest "
                                        f"checkpoint with `forkrl train --resume {run_dir}`" + (
                                            f" (fault.learner_restarts={cfg.fault.learner_restarts} used up)"
                                            if cfg.fault.learner_restarts else "")) from None
                restarts.add()
                restarted_after = e
                ckpt, saved = latest_checkpoint(run_dir)
                logger.warning("%s: restarting every actor from %s (learner restart %d of %d)", e, ckpt,
                               restarts.count, cfg.fault.learner_restarts)
            except ActorFailures as e:  # generation / reward actors failed for good, or too often
                if not (run_dir / STATE_DIR / "latest").is_file():
                    raise
                raise ActorFailures(f"{e}; continue from the latest checkpoint with "
                                    f"`forkrl train --resume {run_dir}`") from None


def train_run(cfg: TrainConfig, run_dir: Path, inputs: Inputs, ckpt: Path | None, saved: DriverState | None,
              console: Console, restarts: LearnerRestarts) -> Path:
    """Start the actors, restore `saved` (or evaluate the initial policy), train, shut Ray down."""
    t_start = time.perf_counter()
    g, l = cfg.generation, cfg.learner
    prompts, eval_prompts = inputs.prompts, inputs.eval_prompts
    logger.info("%s %s: model %s | %d prompts, %d held out | %d generation actor(s), %d reward, %d learner "
                "rank(s) (%s) | log: %s", "resuming" if saved else "run", run_dir, cfg.model.path, len(prompts),
                len(eval_prompts), g.num_actors, cfg.reward.num_actors, l.num_ranks,
                "GPU" if l.num_gpus else "CPU", run_dir / "train.log")
    start_ray(cfg, log_to_driver=True)
    check_resources(cfg)
    reshard = bool(saved) and saved.num_ranks != cfg.learner.num_ranks
    if reshard:
        logger.info("resuming %d rank(s) on %d: converting %s to a universal checkpoint", saved.num_ranks,
                    cfg.learner.num_ranks, ckpt)
        to_universal(ckpt)
    actors = launch_actors(cfg, inputs.model_path, load_universal=reshard)
    check_shared_storage(run_dir, actors)  # every run checkpoints, at its end at least
    logger.info("actors ready in %.1fs", time.perf_counter() - t_start)
    tracker = RunTracker(run_dir, to_dict(cfg), cfg.tracking.name, cfg.tracking.wandb_project, cfg.tracking.wandb_mode,
                         log_rollouts=cfg.tracking.log_rollouts, completions_every=cfg.tracking.completions_every,
                         completions_rows=cfg.tracking.completions_rows, resume_step=saved.step if saved else None,
                         wandb_id=saved.wandb_id if saved else None)
    stream = PromptStream(prompts, cfg.data.seed)
    progress = Progress(shard_rng=random.Random(cfg.seed))
    health = RewardHealth(cfg.reward.fn, cfg.reward.max_error_fraction, cfg.reward.max_error_steps)
    try:
        baseline, pending = {}, []
        if saved:
            pending = restore(ckpt, saved, actors, stream, progress, health)
            baseline = next((r for r in tracker.history if r["step"] == 0 and "eval/accuracy" in r), {})
            logger.info("resumed at step %d (policy version %d) from %s", saved.step, saved.version, ckpt)
        elif eval_prompts:  # step 0: the initial policy on the same held-out prompts, the run's baseline
            baseline = {"step": 0, "policy_version": 0,
                        **evaluate(actors, eval_prompts, cfg.eval.samples, eval_max_tokens(cfg), cfg.seed)}
            tracker.log(baseline)
            logger.info("eval at step 0 (before training): accuracy %.3f", baseline["eval/accuracy"])
        by_uid = {p.uid: p for p in prompts}
        inflight = deque(actors.submit([by_uid[u] for u in uids], batch) for batch, uids in pending)
        with StopSignal() as stop, console.progress(cfg.steps, progress.step) as bar:
            final = train_steps(Run(cfg, actors, stream, tracker, progress, health, inflight, stop, restarts, inputs),
                                bar)
    finally:
        tracker.close()
        ray.shutdown()  # inside the console: the workers' last forwarded lines land in train.log
        remove_rendezvous_files()
    if baseline and "eval/accuracy" in final:
        logger.info("%s", summary_line(baseline, final))
    logger.info("done in %s: policy %s | metrics and curves.png in %s | resume state %s",
                duration(time.perf_counter() - t_start), run_dir / "checkpoints" / f"step_{cfg.steps}", run_dir,
                run_dir / "state")
    return run_dir


def train_steps(run: Run, bar) -> dict:
    """Trains from progress.step + 1 to cfg.steps; returns the last step's metrics."""
    cfg, p, actors = run.cfg, run.progress, run.actors
    metrics, first, t_loop = {}, p.step + 1, time.perf_counter()
    for step in range(first, cfg.steps + 1):
        t0 = time.perf_counter()
        batch = generate_and_verify(run)
        t_wait = time.perf_counter() - t0
        t1 = time.perf_counter()
        while True:
            try:
                plans = plan(run, batch)
                learned = learn(run, plans, batch.collected.payloads, step)
                break
            except RolloutsLost as e:  # a node died with a batch only it held: sample the step's prompts
                batch = resample(run, batch, str(e))  # again (bounded by fault.max_actor_restarts)
        t_learn = time.perf_counter() - t1
        metrics = {"step": step, **batch.metrics}

        t2 = time.perf_counter()
        p.step, p.version = step, p.version + 1
        load_s = actors.publish(p.version)
        metrics.update(learned)
        metrics["learner/rank_token_imbalance"] = rank_token_imbalance(plans)
        metrics.update({**actors.faults.metrics(), **run.learner_restarts.metrics(), "policy_version": p.version,
                        "train/skipped_steps": p.skipped_total,
                        "timing/generate_s": max(r.generate_s for r in batch.collected.summaries),
                        "timing/reward_s": batch.collected.reward_s, "timing/wait_rollout_s": t_wait,
                        "timing/learn_s": t_learn, "timing/weight_sync_s": time.perf_counter() - t2 + load_s,
                        "weights/published_mb": actors.published_mb,
                        # what the driver fetched of this step's rollouts, against the batches'
                        # size (what a driver that relayed them would have received)
                        "driver/received_kb": batch.collected.received_bytes / 1024,
                        "rollouts/payload_kb": sum(s.payload_bytes for s in batch.collected.summaries) / 1024,
                        "timing/step_s": time.perf_counter() - t0})
        if run.inputs.eval_prompts and due(step, cfg.eval.every, cfg.steps):
            metrics.update(evaluate_policy(run, step))
        if due(step, cfg.tracking.save_every, cfg.steps):
            export_policy(run, step)
        record_step(run, step, metrics, batch, eta_s=(time.perf_counter() - t_loop) / (step - first + 1) * (cfg.steps - step))
        bar.update(1)
        if run.stop.name or due(step, cfg.checkpoint.every, cfg.steps):
            logger.info("checkpoint %s", checkpoint(run))
        if run.stop.name:
            actors.wait_loads()
            raise RunStopped(f"stopped by {run.stop.name} after step {step}; continue with "
                             f"`forkrl train --resume {run.tracker.run_dir}`")
    actors.wait_loads()
    actors.wait_records()
    return metrics


def due(step: int, every: int, last: int) -> bool:
    """Whether a cadence (`every` steps, 0: never) falls on `step`; the last step always counts."""
    return step == last or bool(every and step % every == 0)


def issue(run: Run, n_prompts: int) -> InFlight:
    """The next `n_prompts` of the prompt stream, submitted as one batch."""
    prompts = run.stream.take(n_prompts)
    return run.actors.submit(prompts, run.stream.issued)


def generate_and_verify(run: Run) -> Rollouts:
    """The oldest batch in flight, scored and grouped (refilling the pipeline first; under dynamic
    sampling, more batches until enough groups have signal), checked for reward health and
    staleness."""
    cfg = run.cfg
    while len(run.inflight) < cfg.max_staleness + 1:  # keep generation ahead of the learner
        run.inflight.append(issue(run, cfg.prompts_per_step))
    collected = run.actors.collect(run.inflight.popleft())
    # DAPO dynamic sampling: sample more prompts until the batch is full of groups the advantage
    # estimator gives signal to, or dynamic_sampling_max_rounds rounds ran.
    while (cfg.dynamic_sampling and len(collected.sources) < cfg.dynamic_sampling_max_rounds
           and len(split_groups(run, collected)[0]) < cfg.prompts_per_step):
        collected.extend(run.actors.collect(issue(run, cfg.prompts_per_step)))
    return select(run, collected)


def split_groups(run: Run, collected: Collected) -> tuple[list[Group], list[Group]]:
    """Every group collected, as (informative, not): those the estimator and the signal rule give a
    non-zero advantage, and the rest."""
    l = run.cfg.learner
    good, dull = [], []
    for g in to_groups(collected.prompts, collected.summaries, collected.results):
        (good if g.informative(l.advantage, l.w_lambda, l.signal) else dull).append(g)
    return good, dull


def select(run: Run, collected: Collected) -> Rollouts:
    """The groups the step trains (dynamic sampling: informative first, fill groups completing a
    short batch), the step's rollout metrics, the reward-health and staleness checks.
    `collected` holds every response sampled for the step, so the metrics cover them all."""
    cfg = run.cfg
    if cfg.dynamic_sampling:
        good, dull = split_groups(run, collected)
        groups, fill = choose_groups(good, dull, cfg.prompts_per_step)
        dyn = {"dynamic/rounds": len(collected.sources), "dynamic/dropped_fraction": len(dull) / (len(good) + len(dull)),
               "dynamic/filled_groups": len(fill)}
    else:
        groups, fill, dyn = to_groups(collected.prompts, collected.summaries, collected.results), [], {}
    run.health.check([r for part in collected.results for r in part])
    metrics = {**rollout_metrics(collected.summaries, collected.results, groups + fill, run.progress.version), **dyn}
    if metrics["staleness/max"] > cfg.max_staleness:  # the ordering argument above is broken
        raise RuntimeError(f"staleness {metrics['staleness/max']} over max_staleness={cfg.max_staleness}")
    return Rollouts(collected, groups, fill, metrics)


def resample(run: Run, lost: Rollouts, cause: str) -> Rollouts:
    """The step's batches sampled again with their seeds, by the current policy (a rollout batch a
    learner rank needed was lost with its node), then selected as before. Counts as an actor
    failure toward fault.max_actor_restarts."""
    run.actors.count_restart(cause)
    logger.warning("rollouts lost (%s): sampling batch(es) %s again", cause,
                   ", ".join(str(b.batch) for b in lost.collected.sources))
    collected = None
    for src in lost.collected.sources:
        run.actors.faults.resubmitted_prompts += len(src.prompts)
        more = run.actors.collect(run.actors.submit(src.prompts, src.batch))
        if collected is None:
            collected = more
        else:
            collected.extend(more)
    return select(run, collected)


def plan(run: Run, batch: Rollouts) -> list:
    """Which rows each learner rank trains, with their advantages (launch/rollouts.py)."""
    cfg = run.cfg
    return plan_shards(batch.groups, batch.fill, cfg.learner.advantage, cfg.learner.w_lambda, cfg.learner.num_ranks,
                       run.inputs.pad_id, run.progress.shard_rng, cfg.learner.signal, cfg.learner.share_prompt)


def learn(run: Run, plans: list, payloads: list, step: int) -> dict:
    """One optimizer batch on the learner ranks; with one GPU the generators sleep meanwhile."""
    if run.cfg.generation.sleep_mode:
        run.actors.sleep_generators()
    try:
        metrics = run.actors.train(plans, payloads)
    finally:
        if run.cfg.generation.sleep_mode:
            run.actors.wake_generators()  # before the weight load that publish queues
    check_finite(run.cfg, step, metrics, run.progress)
    return metrics


def check_finite(cfg: TrainConfig, step: int, m: dict, p: Progress) -> None:
    """A step whose update the learner refused (NaN / inf gradient norm) is counted and logged;
    learner.max_skipped_steps of them in a row stop the run."""
    if not m.get("train/nonfinite_updates"):
        p.skipped_streak = 0
        return
    p.skipped_total += 1
    p.skipped_streak += 1
    loss = m.get("losses/loss", math.nan)
    reason = f"loss {loss}" if not math.isfinite(loss) else f"gradient norm {m.get('losses/grad_norm')}"
    logger.warning("step %d: %s, so no update was made (%d in a row)", step, reason, p.skipped_streak)
    if p.skipped_streak >= cfg.learner.max_skipped_steps:
        raise NonFiniteSteps(f"{p.skipped_streak} consecutive steps had a non-finite loss or gradient norm (last: "
                             f"{reason} at step {step}; learner.max_skipped_steps={cfg.learner.max_skipped_steps}); "
                             "lower learner.lr or check the reward for extreme values")


def evaluate_policy(run: Run, step: int) -> dict:
    """Held-out figures of the weights this step produced."""
    run.actors.wait_loads()
    cfg = run.cfg
    out = evaluate(run.actors, run.inputs.eval_prompts, cfg.eval.samples, eval_max_tokens(cfg), cfg.seed + step)
    logger.info("eval at step %d: accuracy %.3f", step, out["eval/accuracy"])
    return out


def export_policy(run: Run, step: int) -> None:
    """checkpoints/step_N: the published weights as a plain HF folder."""
    out = run.tracker.run_dir / "checkpoints" / f"step_{step}"
    logger.info("saved %s", export_weights(ray.get(run.actors.shards), run.inputs.model_path, out))


def record_step(run: Run, step: int, metrics: dict, batch: Rollouts, eta_s: float) -> None:
    """metrics.jsonl (and wandb), the rollout record and completions table, the console line."""
    run.tracker.log(metrics)
    path, keep = run.tracker.records_path(step), run.tracker.completions_due(step)
    if path or keep:
        rows = [r for g in batch.groups for r in g.records(step, False)] + [r for g in batch.fill for r in g.records(step, True)]
        written = run.actors.write_records(path, rows, keep, batch.collected.payloads)
        if keep:
            run.tracker.log_completions(step, ray.get(written))
    c = batch.collected
    log_step(run.cfg.steps, step, metrics, (c.results[0][0].score, c.prompts[0][0].answer, c.summaries[0].preview), eta_s)


def checkpoint(run: Run) -> Path:
    """A full checkpoint after the current step (launch/resume.py)."""
    run.actors.wait_records()  # a resumed run's record starts where this one's stops
    state = DriverState.capture(run.progress, run.stream, run.health, run.inflight, run.tracker.wandb_id, run.actors)
    return save_checkpoint(run.tracker.run_dir, run.cfg.checkpoint.keep, run.actors, state)
