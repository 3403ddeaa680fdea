"""The driver: generate -> verify -> advantages -> learn -> publish weights, asynchronously.

Up to `max_staleness + 1` rollout batches are in flight. Generation actors run their calls in
order, so a batch submitted after the weights of version v were queued is sampled by version v;
the batch trained at learner version v therefore lags by at most `max_staleness` versions, and
the learner corrects the lag with the importance ratio against the behaviour log-probs.

Entered through launch/train.py, which keeps a local Ray instance on loopback before Ray is imported.
"""
from __future__ import annotations

import logging
import math
import random
import signal
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass
from pathlib import Path

import ray

from actors.types import RolloutBatch
from launch.checkpoint import export_hf
from launch.config import TrainConfig, to_dict
from launch.console import Console
from launch.data import PromptStream, load_eval_prompts, load_prompts
from launch.models import resolve_model_path
from launch.errors import ActorFailures, LearnerLost, NonFiniteSteps, RunStopped
from launch.fanout import (Faults, InFlight, collect, on_learners, publish_weights, submit_rollout, train_step,
                           wait_loads)
from launch.network import start_ray
from launch.resume import (STATE_DIR, DriverState, checkpoint_tmp, commit_checkpoint, latest_checkpoint, process_rngs,
                           record_learner_restarts, recorded_learner_restarts, restore_process_rngs,
                           save_driver_state, to_universal)
from launch.rng_state import rng_from_json, rng_to_json
from launch.placement import Actors, check_resources, launch_actors
from launch.evaluation import eval_max_tokens, evaluate
from launch.rollouts import FAILED, Group, RewardHealth, choose_groups, to_groups, train_shards
from launch.tracking import RunTracker, check_fresh
from learner.weights import assemble_weights
from rewards.math import RewardResult
from rewards.registry import check_spec

logger = logging.getLogger("forkrl")


def issue(cfg: TrainConfig, actors: Actors, stream: PromptStream, n_prompts: int, faults: Faults) -> InFlight:
    prompts = stream.take(n_prompts)
    return submit_rollout(cfg, actors, prompts, stream.issued, faults)


def rollout_metrics(parts: list[RolloutBatch], results, groups: list[Group], version: int) -> dict:
    """Reward and length over every response sampled this step; staleness over the trained groups."""
    rewards = [r.score for r in results]
    lengths = [len(x) for p in parts for x in p.response_ids]
    finished = [f for p in parts for f in p.finished]
    statuses = Counter(r.status for r in results)
    out = {
        "reward/mean": sum(rewards) / len(rewards),
        "reward/max": max(rewards),
        "reward/accuracy": sum(r.status == "correct" for r in results) / len(results),
        # verifications that timed out, raised or crashed: left out of baselines and gradients
        "reward/excluded_fraction": sum(r.status in FAILED for r in results) / len(results),
        "reward/verify_p99_s": sorted(r.seconds for r in results)[int(0.99 * (len(results) - 1))],
        "response/length_mean": sum(lengths) / len(lengths),
        "response/truncated_fraction": 1 - sum(finished) / len(finished),
        "staleness/max": version - min(g.policy_version for g in groups),
        "staleness/mean": sum(version - g.policy_version for g in groups) / len(groups),
    }
    out.update({f"reward/status_{k}": v / len(results) for k, v in sorted(statuses.items())})
    return out


def dynamic_sample(cfg: TrainConfig, actors: Actors, stream: PromptStream, parts: list, results: list,
                   faults: Faults):
    """DAPO dynamic sampling: keep groups the advantage estimator gives signal to and sample more
    prompts until the batch is full or `dynamic_sampling_max_rounds` rounds ran. Extends `parts`
    and `results` in place, so the step's reward metrics cover every response sampled.
    Returns (chosen groups, fill groups, metrics)."""
    need, l = cfg.prompts_per_step, cfg.learner
    good, dull = [], []
    for g in to_groups(parts, results):
        (good if g.informative(l.advantage, l.w_lambda) else dull).append(g)
    rounds = 1
    while len(good) < need and rounds < cfg.dynamic_sampling_max_rounds:
        more_parts, more_results, _ = collect(cfg, actors, issue(cfg, actors, stream, need, faults), faults)
        parts += more_parts
        results += more_results
        for g in to_groups(more_parts, more_results):
            (good if g.informative(l.advantage, l.w_lambda) else dull).append(g)
        rounds += 1
    chosen, fill = choose_groups(good, dull, need)
    return chosen, fill, {"dynamic/rounds": rounds, "dynamic/dropped_fraction": len(dull) / (len(good) + len(dull)),
                          "dynamic/filled_groups": len(fill)}


def summary_line(first: dict, last: dict) -> str:
    """The run's result in one line, e.g. 'held-out accuracy 0.31 -> 0.58 (+27 points, 128 prompts)'."""
    a, b = first["eval/accuracy"], last["eval/accuracy"]
    line = f"held-out accuracy {a:.2f} -> {b:.2f} ({100 * (b - a):+.0f} points, {last['eval/prompts']} prompts)"
    avg = next((k for k in last if k.startswith("eval/avg@")), None)
    if avg and avg in first:
        line += f"; {avg[5:]} {first[avg]:.2f} -> {last[avg]:.2f}"
    return line


def run(cfg: TrainConfig, resume: Path | None = None, verbose: bool = False) -> Path:
    """Train per `cfg` (continuing the run in `resume` from its latest checkpoint); returns the run
    directory. All input is checked before actors start."""
    from transformers import AutoTokenizer

    check_spec(cfg.reward.fn)
    model_path = str(resolve_model_path(cfg.model.path))
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    prompts = load_prompts(cfg.data, cfg.model, tokenizer)
    eval_prompts = load_eval_prompts(cfg.eval, cfg.data, cfg.model, tokenizer, prompts) if cfg.eval.every else []
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    run_dir = resume or Path(cfg.tracking.run_dir.format(name=cfg.tracking.name))
    ckpt, saved = latest_checkpoint(run_dir) if resume else (None, None)
    if not resume:
        check_fresh(run_dir)
    with Console(run_dir / "train.log", verbose) as console:
        learner_restarts = recorded_learner_restarts(run_dir) if resume else 0  # fault.learner_restarts is per run
        while True:
            try:
                return _run(cfg, run_dir, model_path, prompts, eval_prompts, pad_id, ckpt, saved, console,
                            learner_restarts)
            except LearnerLost as e:  # _run has shut Ray down: every actor, the hung peers of the dead rank too
                if not (run_dir / STATE_DIR / "latest").is_file():
                    raise ActorFailures(f"{e} before the run's first checkpoint: nothing to resume from; start "
                                        "again under another tracking.name") from None
                if learner_restarts >= cfg.fault.learner_restarts:
                    raise ActorFailures(f"{e}; ZeRO-3 cannot replace a rank in place: continue from the latest "
                                        f"checkpoint with `forkrl train --resume {run_dir}`" + (
                                            f" (fault.learner_restarts={cfg.fault.learner_restarts} used up)"
                                            if cfg.fault.learner_restarts else "")) from None
                learner_restarts += 1
                record_learner_restarts(run_dir, learner_restarts)
                ckpt, saved = latest_checkpoint(run_dir)
                logger.warning("%s: restarting every actor from %s (learner restart %d of %d)", e, ckpt,
                               learner_restarts, cfg.fault.learner_restarts)


def _run(cfg: TrainConfig, run_dir: Path, model_path: str, prompts: list, eval_prompts: list, pad_id: int,
         ckpt: Path | None, saved: DriverState | None, console: Console, learner_restarts: int = 0) -> Path:
    t_start = time.perf_counter()
    g, l = cfg.generation, cfg.learner
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
    actors = launch_actors(cfg, model_path, load_universal=reshard)
    logger.info("actors ready in %.1fs", time.perf_counter() - t_start)
    tracker = RunTracker(run_dir, to_dict(cfg), cfg.tracking.name, cfg.tracking.wandb_project, cfg.tracking.wandb_mode,
                         log_rollouts=cfg.tracking.log_rollouts, resume_step=saved.step if saved else None,
                         wandb_id=saved.wandb_id if saved else None)
    stream = PromptStream(prompts, cfg.data.seed)
    progress = Progress(shard_rng=random.Random(cfg.seed))
    health = RewardHealth(cfg.reward.fn, cfg.reward.max_error_fraction, cfg.reward.max_error_steps)
    pending: list[tuple[int, list[int]]] = []
    faults = Faults(cfg.fault.max_actor_restarts, learner_restarts=learner_restarts)
    try:
        baseline = {}
        if saved:
            pending = restore(saved, ckpt, actors, stream, progress, health, faults)
            baseline = next((r for r in tracker.history if r["step"] == 0 and "eval/accuracy" in r), {})
            logger.info("resumed at step %d (policy version %d) from %s", saved.step, saved.version, ckpt)
        elif eval_prompts:  # step 0: the initial policy on the same held-out prompts, the run's baseline
            baseline = {"step": 0, "policy_version": 0,
                        **evaluate(actors, eval_prompts, cfg.eval.samples, eval_max_tokens(cfg), cfg.seed)}
            tracker.log(baseline)
            logger.info("eval at step 0 (before training): accuracy %.3f", baseline["eval/accuracy"])
        by_uid = {p.uid: p for p in prompts}
        inflight = deque(submit_rollout(cfg, actors, [by_uid[u] for u in uids], batch, faults) for batch, uids in pending)
        with StopSignal() as stop, console.progress(cfg.steps, progress.step) as bar:
            final = _loop(cfg, actors, stream, tracker, pad_id, eval_prompts, model_path,
                          Loop(progress, health, inflight, stop, faults), bar)
    finally:
        tracker.close()
        ray.shutdown()  # inside the console: the workers' last forwarded lines land in train.log
    if baseline and "eval/accuracy" in final:
        logger.info("%s", summary_line(baseline, final))
    logger.info("done in %s: policy %s | metrics and curves.png in %s | resume state %s",
                _duration(time.perf_counter() - t_start), run_dir / "checkpoints" / f"step_{cfg.steps}", run_dir,
                run_dir / "state")
    return run_dir


def _duration(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m}m{s:02d}s" if m else f"{s}s"


@dataclass
class Progress:
    """What the loop carries from step to step, and a checkpoint records."""

    shard_rng: random.Random  # shuffles responses into rank shards
    step: int = 0  # last trained step
    version: int = 0  # policy version (one per trained step)
    skipped_total: int = 0  # steps whose update was refused for a NaN / inf gradient norm
    skipped_streak: int = 0


@dataclass
class Loop:
    progress: Progress
    health: RewardHealth
    inflight: deque  # InFlight batches, oldest first
    stop: "StopSignal"
    faults: Faults


class StopSignal:
    """SIGTERM or SIGINT (`ray job stop`, preemption, Ctrl-C) during a run: finish the step, save a
    checkpoint, stop. A second signal interrupts at once."""

    def __init__(self):
        self.name: str | None = None
        self._previous: dict = {}

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():  # Python delivers signals there only
            self._previous = {sig: signal.signal(sig, self._handle) for sig in (signal.SIGTERM, signal.SIGINT)}
        return self

    def _handle(self, signum, frame) -> None:
        if self.name is not None:
            raise KeyboardInterrupt
        self.name = signal.Signals(signum).name
        logger.warning("%s: finishing this step, then saving a checkpoint (send it again to stop at once)", self.name)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def restore(saved: DriverState, ckpt: Path, actors: Actors, stream: PromptStream, progress: Progress,
            health: RewardHealth, faults: Faults) -> list[tuple[int, list[int]]]:
    """Load a checkpoint into the fresh actors and the driver's state; the generators get its
    weights before they sample. Returns the batches that were in flight, to sample again."""
    on_learners(actors, [w.load_checkpoint.remote(str(ckpt)) for w in actors.learners])
    stream.restore(saved.stream)
    progress.shard_rng.setstate(rng_from_json(saved.shard_rng))
    progress.step, progress.version = saved.step, saved.version
    progress.skipped_total, progress.skipped_streak = saved.skipped_total, saved.skipped_streak
    health.streak, health.first_error = saved.reward_streak, saved.reward_first_error
    restore_process_rngs(saved)
    for key, value in (saved.faults or {}).items():
        setattr(faults, key, max(value, getattr(faults, key)))  # learner_restarts may be ahead: counted since
    faults.version = saved.version
    faults.shards, _, loads = publish_weights(actors, saved.version, [])
    ray.get(loads)
    return [tuple(p) for p in saved.pending]


def save_checkpoint(cfg: TrainConfig, actors: Actors, tracker: RunTracker, stream: PromptStream, loop: Loop) -> Path:
    """A full checkpoint after the current step (see launch/resume.py)."""
    p = loop.progress
    tmp = checkpoint_tmp(tracker.run_dir, p.step)
    on_learners(actors, [w.save_checkpoint.remote(str(tmp)) for w in actors.learners])
    save_driver_state(tmp, DriverState(
        step=p.step, version=p.version, stream=stream.state(),
        pending=[[b.batch, [p.uid for p in b.prompts]] for b in loop.inflight], shard_rng=rng_to_json(p.shard_rng.getstate()),
        skipped_total=p.skipped_total, skipped_streak=p.skipped_streak, reward_streak=loop.health.streak,
        reward_first_error=loop.health.first_error, wandb_id=tracker.wandb_id, num_ranks=len(actors.learners),
        faults=loop.faults.counters(), **process_rngs()))
    return commit_checkpoint(tracker.run_dir, tmp, p.step, cfg.checkpoint.keep)


def log_step(cfg: TrainConfig, step: int, m: dict, parts: list[RolloutBatch], results: list[RewardResult],
             eta_s: float) -> None:
    logger.info(
        "step %d/%d | reward %.3f | accuracy %.3f | kept %.2f (tau %.3f) | entropy %.3f | stale %d | gen %.1fs "
        "reward %.1fs learn %.1fs sync %.1fs | step %.1fs | learner peak %.1f GB | eta %s", step, cfg.steps,
        m["reward/mean"],
        m["reward/accuracy"],
        m["mask/kept_fraction"], m["mask/threshold"], m["entropy/mean"], m["staleness/max"], m["timing/generate_s"],
        m["timing/reward_s"], m["timing/learn_s"], m["timing/weight_sync_s"], m["timing/step_s"],
        m["memory/learner_peak_gb"], _duration(eta_s))
    if step == 1 or step % 5 == 0 or step == cfg.steps:
        logger.info("sample (reward %.2f, answer %s): %r", results[0].score, parts[0].prompts[0].answer,
                    parts[0].response_text[0][:300])


def _loop(cfg: TrainConfig, actors: Actors, stream: PromptStream, tracker: RunTracker, pad_id: int,
          eval_prompts: list, model_path: str, loop: Loop, bar) -> dict:
    """Trains from loop.progress.step + 1 to cfg.steps; returns the last step's metrics."""
    p, inflight, pending_loads, metrics = loop.progress, loop.inflight, [], {}
    first, t_loop = p.step + 1, time.perf_counter()
    for step in range(p.step + 1, cfg.steps + 1):
        t0 = time.perf_counter()
        while len(inflight) < cfg.max_staleness + 1:  # keep generation ahead of the learner
            inflight.append(issue(cfg, actors, stream, cfg.prompts_per_step, loop.faults))
        parts, results, reward_s = collect(cfg, actors, inflight.popleft(), loop.faults)
        if cfg.dynamic_sampling:
            groups, fill, dyn = dynamic_sample(cfg, actors, stream, parts, results, loop.faults)
        else:
            groups, fill, dyn = to_groups(parts, results), [], {}
        t_wait = time.perf_counter() - t0
        loop.health.check(results)
        metrics = {"step": step, **rollout_metrics(parts, results, groups + fill, p.version), **dyn}
        if metrics["staleness/max"] > cfg.max_staleness:  # the ordering argument above is broken
            raise RuntimeError(f"staleness {metrics['staleness/max']} over max_staleness={cfg.max_staleness}")

        l = cfg.learner
        shards = train_shards(groups, fill, l.advantage, l.w_lambda, l.num_ranks, pad_id, p.shard_rng)
        t1 = time.perf_counter()
        if cfg.generation.sleep_mode:  # one GPU: vLLM gives its memory to the learner for the step
            ray.get([gen.sleep.remote() for gen in actors.generators])
        learner_metrics = train_step(actors, shards)
        if cfg.generation.sleep_mode:  # queued before the weight load below: actor calls run in order
            [gen.wake_up.remote() for gen in actors.generators]
        t_learn = time.perf_counter() - t1
        check_finite(cfg, step, learner_metrics, p)

        t2 = time.perf_counter()
        p.step, p.version = step, p.version + 1
        state, load_s, pending_loads = publish_weights(actors, p.version, pending_loads)
        loop.faults.version, loop.faults.shards = p.version, state
        metrics.update(learner_metrics)
        metrics.update(loop.faults.metrics())
        metrics.update({
            "policy_version": p.version,
            "train/skipped_steps": p.skipped_total,
            "timing/generate_s": max(x.generate_s for x in parts),
            "timing/reward_s": reward_s,
            "timing/wait_rollout_s": t_wait,
            "timing/learn_s": t_learn,
            "timing/weight_sync_s": time.perf_counter() - t2 + load_s,
            "timing/step_s": time.perf_counter() - t0,
        })
        if eval_prompts and (step % cfg.eval.every == 0 or step == cfg.steps):
            wait_loads(pending_loads)  # evaluate the weights this step produced
            metrics.update(evaluate(actors, eval_prompts, cfg.eval.samples, eval_max_tokens(cfg), cfg.seed + step))
            logger.info("eval at step %d: accuracy %.3f", step, metrics["eval/accuracy"])
        save_every = cfg.tracking.save_every
        if step == cfg.steps or (save_every and step % save_every == 0):
            path = export_hf(assemble_weights(ray.get(state)), model_path, tracker.run_dir / "checkpoints" / f"step_{step}")
            logger.info("saved %s", path)
        tracker.log(metrics)
        tracker.log_rollout_records(step, [r for g in groups for r in g.records(step, False)]
                                    + [r for g in fill for r in g.records(step, True)])
        eta = (time.perf_counter() - t_loop) / (step - first + 1) * (cfg.steps - step)
        log_step(cfg, step, metrics, parts, results, eta)
        bar.update(1)
        every = cfg.checkpoint.every
        if loop.stop.name or step == cfg.steps or (every and step % every == 0):
            logger.info("checkpoint %s", save_checkpoint(cfg, actors, tracker, stream, loop))
        if loop.stop.name:
            wait_loads(pending_loads)
            raise RunStopped(f"stopped by {loop.stop.name} after step {step}; continue with "
                             f"`forkrl train --resume {tracker.run_dir}`")
    wait_loads(pending_loads)
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
