"""The one config tree. Every field documents itself; `load_config` validates it all up front.

YAML files set it, `key=value` overrides change it (`learner.mask.rho=0.5`). Unknown keys, wrong
types and out-of-range values raise `ConfigError` with a one-line message naming the key, before
any actor starts. Each actor receives only its own sub-config.
"""
from __future__ import annotations

import ast
import dataclasses
import re
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml

from launch.data import KINDS
from learner.advantages import Estimator, Signal
from rewards.sandbox import Isolation
from learner.losses import Aggregation, KLEstimator, Normalize
from learner.masking import MaskMode, MaskScope


Placement = Literal["pack", "spread", "strict_spread", "strict_pack"]


class ConfigError(ValueError):
    """A config value a user must change; the message names the key."""


@dataclass
class ModelConfig:
    path: str = "smollm2-135m-instruct"
    """HF model folder, a Hub id ('org/name', through the Hub cache), or 'smollm2-135m-instruct' for the packaged default (converted once)."""
    chat_template: bool = True
    """Wrap prompts in the tokenizer's chat template (off for raw-text tiny models)."""


@dataclass
class DataConfig:
    train_files: list[str] = field(default_factory=list)
    """jsonl or parquet files of training rows; empty uses the built-in arithmetic generator."""
    prompt_key: str = "prompt"
    """Field of a row holding the question text."""
    answer_key: str = "answer"
    """Field of a row holding the ground-truth answer."""
    num_synthetic: int = 2000
    """Rows the built-in generator makes when train_files is empty."""
    synthetic_max_operand: int = 20
    """Largest operand of generated arithmetic problems (small keeps the demo learnable)."""
    synthetic_min_operand: int = 1
    """Smallest operand of generated arithmetic problems (10 with max 9999: 2-4 digit numbers)."""
    synthetic_kinds: list[str] = field(default_factory=lambda: ["add", "sub", "mul", "word"])
    """Problem kinds the generator mixes: add, sub, mul, word (word problems, + and -)."""
    instruction: str = "Put the final answer in \\boxed{}."
    """Text appended to every prompt (empty for none)."""
    max_prompt_tokens: int = 256
    """Prompts longer than this (after the template) are rejected when the data is loaded."""
    seed: int = 0
    """Seed for generation of synthetic rows and for shuffling."""


@dataclass
class GenerationConfig:
    num_actors: int = 1
    """vLLM engines; prompts of a batch are split across them."""
    num_gpus: float = 0.0
    """GPUs per engine (1 on clusters; 0 on CPU)."""
    num_cpus: float = 1.0
    """Ray CPUs per engine (fractions are fine on a small machine)."""
    group_size: int = 4
    """Responses sampled per prompt (G)."""
    max_new_tokens: int = 64
    """Longest response, in tokens."""
    temperature: float = 1.0
    """Sampling temperature; the learner scores tokens at the same temperature."""
    top_p: float = 1.0
    """Must stay 1.0: below it vLLM's log-probs are renormalised over the nucleus while the learner
    scores the full softmax, which would bias every importance ratio."""
    gpu_memory_utilization: float = 0.2
    """vLLM memory fraction (of CPU RAM on the CPU backend)."""
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"
    """vLLM dtype: 'auto' is float32 on CPU (faster than bf16 there) and bfloat16 on GPU."""
    max_model_len: int = 1024
    """vLLM context length; must hold prompt + response."""
    sleep_mode: bool = False
    """Single-GPU mode: vLLM releases its GPU memory (sleep) while the learner steps and takes it back
    (wake_up) before it samples; needs CUDA, max_staleness=0 and a GPU shared by fractions."""


@dataclass
class EnvConfig:
    name: str = "single_turn"
    """Rollout environment: 'single_turn' (one response per sample), 'python' (the model may run fenced
    ```python blocks in the code sandbox and read their output; envs/python_tool.py) or
    'package.module:Class' (envs/base.py says what the class provides). Multi-turn:
    generation.max_new_tokens is each trajectory's whole token budget, model and environment tokens."""
    max_turns: int = 4
    """Model turns per trajectory at most (the last is never answered)."""
    max_turn_tokens: int = 0
    """Tokens per model turn at most (a turn cut there is still answered); 0 = the budget left."""
    tool_timeout_s: float = 2.0
    """Wall-clock limit per tool call; a call over it ends with status timeout and the model is told so."""
    max_output_chars: int = 512
    """A tool call's output shown to the model is cut to this many characters."""
    tool_memory_mb: int = 512
    """Address-space limit per process of a tool call."""
    tool_workers: int = 8
    """Tool calls run at once per generation actor (each its own sandbox process)."""
    isolation: Isolation = "bwrap"
    """'bwrap' runs each tool call in its own bubblewrap namespaces (README, "The code sandbox");
    'none' runs it as this user with network, warned about at every start."""


@dataclass
class RewardConfig:
    fn: str = "math"
    """Reward: 'math', 'starts_with' (response begins with the answer word) or 'pkg.module:function'."""
    num_actors: int = 1
    """Reward actors; responses of a batch are split across them."""
    num_cpus: float = 0.5
    """Ray CPUs per reward actor."""
    workers_per_actor: int = 1
    """Killable verifier processes per reward actor (parallel scoring)."""
    timeout_s: float = 5.0
    """Wall-clock limit per response; a response over it scores 0 as a wrong answer (status timeout)."""
    code_test_timeout_s: float = 2.0
    """code reward: wall-clock limit per test run (reward.timeout_s bounds the whole response)."""
    code_memory_mb: int = 512
    """code reward: address-space limit per process of a test run."""
    code_isolation: Isolation = "bwrap"
    """code reward: 'bwrap' runs each solution in its own bubblewrap namespaces (README, "The code
    sandbox"); 'none' runs it as this user with network, warned about at every start."""
    format_weight: float = 0.0
    """Weight of the format reward (boxed answer and a response that ended by itself)."""
    overlong_weight: float = 0.0
    """Weight of DAPO's soft overlong punishment (0 = off)."""
    overlong_cache: int = 0
    """L_cache: tokens before generation.max_new_tokens where the overlong penalty ramps to -1."""
    max_error_fraction: float = 0.5
    """Stop the run when at least this share of a step's verifications time out, raise or crash ..."""
    max_error_steps: int = 2
    """... for this many consecutive steps (a broken reward must not train on zeros for hours)."""


@dataclass
class MaskConfig:
    mode: MaskMode = "top"
    """'top' (highest-entropy rho, the paper), 'bottom' (lowest 1-rho), 'random' (rho), 'none'."""
    rho: float = 0.2
    """Fraction of the batch's valid response tokens that receive gradient (1.0 = every token)."""
    normalize: Normalize = "all"
    """Loss denominator: 'all' in-scope tokens (the paper's objective) or only the 'kept' ones."""
    scope: MaskScope = "informative"
    """Tokens the mask picks from and the loss counts: 'informative' (non-zero advantage) or 'all'."""


@dataclass
class LoraConfig:
    rank: int = 0
    """LoRA rank r of each adapter (peft): the base weights are frozen, the optimizer holds only the
    adapters and only they travel to the generators. 0 = full fine-tuning, every weight trained."""
    alpha: float = 32.0
    """Adapter scale numerator: each targeted weight W acts as W + (alpha / rank) * B A."""
    dropout: float = 0.0
    """Dropout on the adapters' input; must be 0: every forward of the learner runs in eval mode so
    that the proximal log-probs, the mask's entropies and the importance ratios come from one
    function, and dropout would make them noisy."""
    target_modules: list[str] = field(default_factory=lambda: ["all-linear"])
    """Names of the modules that get adapters (a name matches a module whose path ends in it);
    'all-linear' = every linear projection but the output head. Checked against the model before Ray
    starts."""


@dataclass
class LearnerConfig:
    num_ranks: int = 1
    """DeepSpeed ZeRO-3 ranks (Ray actors in one torch.distributed group)."""
    num_gpus: float = 0.0
    """GPUs per rank (1 on clusters)."""
    num_cpus: float = 1.0
    """Ray CPUs per rank."""
    torch_threads: int = 0
    """CPU threads for torch in each rank (0 = Ray's default, one per whole CPU requested)."""
    lr: float = 1e-6
    """AdamW learning rate."""
    weight_decay: float = 0.0
    """AdamW weight decay."""
    max_skipped_steps: int = 3
    """Stop the run after this many consecutive steps whose loss or gradient norm was NaN or inf (each makes no update)."""
    grad_clip: float = 1.0
    """Global gradient-norm clip."""
    warmup_steps: int = 0
    """Linear learning-rate warm-up: update k (from 1) uses lr * min(1, k / warmup_steps); 0 = none."""
    micro_batch_size: int = 4
    """Sequences per forward/backward on one rank."""
    mini_batch_size: int = 0
    """Sequences per optimizer update, all ranks together; 0 = the whole rollout batch."""
    epochs: int = 1
    """Passes over each rollout batch."""
    advantage: Estimator = "grpo"
    """'grpo' (group mean/std), 'drgrpo' (group mean), 'rloo', 'reinforce_pp' (batch), 'w_reinforce'."""
    w_lambda: float = 0.1
    """w_reinforce: weight of positive samples relative to negative ones (0 = pure NSR)."""
    signal: Signal = "verdict"
    """Which groups carry signal: 'verdict' (some right, some wrong; shaping only ranks inside them,
    as DAPO filters) or 'reward' (any score difference: partial-credit rewards, shaping studies)."""
    clip_low: float = 0.2
    """Lower ratio clip epsilon."""
    clip_high: float = 0.28
    """Upper ratio clip epsilon (DAPO clip-higher)."""
    dual_clip: float = 3.0
    """Dual-clip bound c > 1: a negative-advantage token's loss is at most c * |A| (0 = off; verl's 3)."""
    is_cap: float = 2.0
    """Truncation C of the importance weight min(pi_prox / pi_behaviour, C) for stale rollouts (0 = off)."""
    aggregation: Aggregation = "token_mean"
    """'token_mean' (DAPO), 'seq_mean_token_mean' (GRPO) or 'seq_mean_token_sum_norm' (Dr. GRPO)."""
    kl_coef: float = 0.0
    """Weight of the KL penalty to the frozen initial policy (0 = off, as in DAPO; no reference is built)."""
    kl_estimator: KLEstimator = "k2"
    """KL term in the loss: 'k2' (gradient of KL(pi || ref)) or 'k3' (GRPO's; gradient of KL(ref || pi))."""
    entropy_coef: float = 0.0
    """Entropy bonus weight (subtracts coef * entropy from the loss; one-shot RLVR used ~1e-3)."""
    zero_persistence_threshold: int = 100_000
    """ZeRO-3 keeps parameters with fewer elements than this gathered on every rank (DeepSpeed's
    stage3_param_persistence_threshold): no gather/release per pass for them, at their full size in
    each rank's memory."""
    publish_dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Dtype of the weights each rank publishes to the generation actors: 'auto' = the training
    dtype; 'bfloat16' halves the bytes moved when training in float32 (generation then samples
    from rounded weights, which the importance weights correct for)."""
    single_pass_max_tokens: int = 16384
    """Single pass when a rank's shard can hold at most this many tokens (its sequences x
    (data.max_prompt_tokens + generation.max_new_tokens)) and there is one update per batch: each
    micro-batch is forwarded once and the mask's entropies come from that same pass, with every
    graph held until the mask is chosen. No scoring pass (a third less compute), but the whole
    shard's activations in memory at once. Above it (or 0), a no-grad scoring pass comes first and
    each micro-batch is forwarded and back-propagated in turn (memory of one micro-batch)."""
    logprob_chunk: int = 1024
    """Tokens per chunk when computing log-softmax/entropy over the vocabulary."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Training dtype: 'auto' is float32 on CPU and bfloat16 on GPU."""
    mask: MaskConfig = field(default_factory=MaskConfig)
    """Entropy-percentile gradient mask."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters instead of full fine-tuning (rank > 0)."""


@dataclass
class EvalConfig:
    every: int = 0
    """Evaluate on held-out prompts every this many steps, and after the last (0 = never)."""
    files: list[str] = field(default_factory=list)
    """Held-out jsonl/parquet rows (same keys as data); empty = generated rows the training set lacks."""
    num_prompts: int = 64
    """Held-out prompts scored per evaluation."""
    max_new_tokens: int = 0
    """Response limit when evaluating (0 = generation.max_new_tokens); longer keeps a rambling base model fair."""
    samples: int = 1
    """Greedy accuracy is always measured; n > 1 also samples n per prompt: avg@n and pass@k, k = 1, 2, 4 .. n."""


@dataclass
class TrackingConfig:
    run_dir: str = "runs/{name}"
    """Folder for config.yaml, metrics.jsonl and plots ({name} is filled in)."""
    name: str = "forkrl"
    """Run name (wandb run name too)."""
    wandb_project: str = "forkrl"
    """wandb project."""
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = "auto"
    """'online', 'offline', 'disabled', or 'auto' (online when wandb has credentials: WANDB_API_KEY or a `wandb login`)."""
    save_every: int = 0
    """Export the policy as a HF folder under run_dir/checkpoints every this many steps (0 = only at the end)."""
    log_rollouts: bool = True
    """Write every trained response to run_dir/rollouts/step_N.jsonl (prompt, response, reward, status, version)."""


@dataclass
class FaultConfig:
    max_actor_restarts: int = 3
    """Generation / reward actor failures survived per run (Ray restarts the actor; its batch is sampled
    again); one more stops the run with the cause. Counted over the whole run, resumes included."""
    learner_restarts: int = 0
    """Learner rank deaths survived by restarting every actor from the latest full checkpoint, in the same
    driver (steps since that checkpoint are trained again); 0 = stop and print the --resume command.
    Needs checkpoint.every > 0, or a death before the first checkpoint cannot be survived."""


@dataclass
class CheckpointConfig:
    every: int = 0
    """Full checkpoint (every rank's ZeRO-3 shards, optimizer, driver state) every this many steps; 0 = only
    at the end and when the run is stopped (SIGTERM / SIGINT)."""
    keep: int = 2
    """Full checkpoints kept in run_dir/checkpoints (the oldest are removed); at least 1."""


@dataclass
class ClusterConfig:
    bind_all: bool = False
    """A local run (no `address`) listens on 127.0.0.1 only; true opens Ray and the actors to every interface."""
    dashboard: bool = False
    """Start Ray's dashboard with a local run (it listens on 127.0.0.1:8265 unless bind_all)."""
    learner_placement: Placement = "pack"
    """How the learner ranks' resources are reserved (one Ray placement group, before any actor
    starts): 'pack' on as few nodes as fit, 'spread' over nodes where possible, 'strict_spread' one
    per node, 'strict_pack' all on one node."""
    generation_placement: Placement = "spread"
    """The same for the generation actors (spread: each node's engine serves its own share)."""
    reward_placement: Placement = "pack"
    """The same for the reward actors."""
    learner_node_resource: str = ""
    """Pin the learner ranks to nodes that offer this custom resource (`ray start --resources
    '{"learner": 1}'`); each rank asks for 0.001 of it. Empty: any node."""
    generation_node_resource: str = ""
    """Pin the generation actors to nodes with this custom resource (as learner_node_resource)."""
    reward_node_resource: str = ""
    """Pin the reward actors to nodes with this custom resource (as learner_node_resource)."""
    placement_timeout_s: float = 120.0
    """A group whose resources are not reserved within this many seconds stops the run, naming its
    demand and what each node has free (Ray would otherwise wait forever)."""


@dataclass
class TrainConfig:
    steps: int = 20
    """Optimizer-batch steps (rollout batches) to train."""
    prompts_per_step: int = 8
    """Prompts per rollout batch; the batch holds prompts_per_step * group_size responses."""
    max_staleness: int = 1
    """How many policy versions a rollout may lag the learner (0 = synchronous, on-policy)."""
    dynamic_sampling: bool = False
    """DAPO dynamic sampling: drop groups whose rewards are all equal and sample more prompts."""
    dynamic_sampling_max_rounds: int = 3
    """Generation rounds per step at most; a batch still short is filled with zero-advantage groups."""
    seed: int = 0
    """Seed for sampling, masking and init."""
    address: str = ""
    """Ray address: '' starts a local Ray (or joins RAY_ADDRESS), 'auto' joins a running cluster."""
    cluster: ClusterConfig = field(default_factory=ClusterConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    generation: GenerationConfig = field(default_factory=GenerationConfig)
    env: EnvConfig = field(default_factory=EnvConfig)
    reward: RewardConfig = field(default_factory=RewardConfig)
    learner: LearnerConfig = field(default_factory=LearnerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    fault: FaultConfig = field(default_factory=FaultConfig)

    def __post_init__(self) -> None:
        validate(self)


def _check(ok: bool, key: str, msg: str) -> None:
    if not ok:
        raise ConfigError(f"{key}: {msg}")


def validate(c: TrainConfig) -> None:
    """Cross-field checks; each names the key to change."""
    g, l, m = c.generation, c.learner, c.learner.mask
    _finite = lambda x: x == x and abs(x) != float("inf")  # noqa: E731  (not NaN, not inf)
    _check(c.steps >= 1, "steps", f"must be >= 1, got {c.steps}")
    _check(bool(re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", c.tracking.name)), "tracking.name",
           f"must be a plain name (letters, digits, '.', '_', '-'; no '/'), got {c.tracking.name!r}")
    _check(g.temperature == g.temperature and g.temperature < float("inf"), "generation.temperature",
           f"must be finite, got {g.temperature}")
    _check(_finite(c.learner.lr), "learner.lr", f"must be finite, got {c.learner.lr}")
    _check(c.learner.grad_clip > 0 and _finite(c.learner.grad_clip), "learner.grad_clip",
           f"must be a finite number > 0, got {c.learner.grad_clip} (at <= 0 clipping would silently turn off)")
    for key, value in (("learner.w_lambda", c.learner.w_lambda), ("learner.weight_decay", c.learner.weight_decay),
                       ("reward.overlong_weight", c.reward.overlong_weight),
                       ("reward.format_weight", c.reward.format_weight)):
        _check(value >= 0 and _finite(value), key, f"must be a finite number >= 0, got {value}")
    _check(_finite(c.reward.timeout_s), "reward.timeout_s", f"must be finite, got {c.reward.timeout_s}")
    _check(c.learner.logprob_chunk >= 1, "learner.logprob_chunk", f"must be >= 1, got {c.learner.logprob_chunk}")
    _check(c.data.num_synthetic >= 1, "data.num_synthetic", f"must be >= 1, got {c.data.num_synthetic}")
    _check(c.learner.micro_batch_size >= 1, "learner.micro_batch_size",
           f"must be >= 1, got {c.learner.micro_batch_size}")
    _check(c.learner.mini_batch_size >= 0, "learner.mini_batch_size", "must be >= 0 (0 = the whole batch)")
    _check(c.prompts_per_step >= 1, "prompts_per_step", f"must be >= 1, got {c.prompts_per_step}")
    _check(c.dynamic_sampling_max_rounds >= 1, "dynamic_sampling_max_rounds", "must be >= 1")
    _check(c.eval.every >= 0 and c.eval.num_prompts >= 1, "eval.every", "eval.every must be >= 0, eval.num_prompts >= 1")
    _check(c.eval.samples >= 1, "eval.samples", f"must be >= 1, got {c.eval.samples}")
    _check(c.eval.max_new_tokens >= 0, "eval.max_new_tokens", "must be >= 0 (0 = generation.max_new_tokens)")
    _check(g.max_model_len > c.data.max_prompt_tokens + c.eval.max_new_tokens - 1, "generation.max_model_len",
           f"{g.max_model_len} cannot hold data.max_prompt_tokens + eval.max_new_tokens")
    _check(c.max_staleness >= 0, "max_staleness", f"must be >= 0, got {c.max_staleness}")
    _check(g.group_size >= 2, "generation.group_size", f"needs >= 2 responses for a group baseline, got {g.group_size}")
    _check(g.num_actors >= 1, "generation.num_actors", "must be >= 1")
    _check(g.max_new_tokens >= 1, "generation.max_new_tokens", "must be >= 1")
    _check(g.temperature > 0, "generation.temperature", f"must be > 0, got {g.temperature}")
    _check(g.top_p == 1.0, "generation.top_p", f"must be 1.0, got {g.top_p}: vLLM's log-probs would be renormalised "
           "over the nucleus while the learner scores the full softmax, biasing every importance ratio")
    _check(0 < g.gpu_memory_utilization < 1, "generation.gpu_memory_utilization", "must be in (0, 1)")
    _check(g.max_model_len > c.data.max_prompt_tokens + g.max_new_tokens - 1, "generation.max_model_len",
           f"{g.max_model_len} cannot hold data.max_prompt_tokens + generation.max_new_tokens")
    e = c.env
    _check(e.max_turns >= 1, "env.max_turns", f"must be >= 1, got {e.max_turns}")
    _check(0 < e.tool_timeout_s < float("inf"), "env.tool_timeout_s", f"must be a finite number > 0, got {e.tool_timeout_s}")
    _check(e.max_turn_tokens >= 0, "env.max_turn_tokens", f"must be >= 0 (0 = the budget left), got {e.max_turn_tokens}")
    _check(e.max_output_chars >= 1, "env.max_output_chars", f"must be >= 1, got {e.max_output_chars}")
    _check(e.tool_memory_mb >= 64, "env.tool_memory_mb", f"must be >= 64, got {e.tool_memory_mb}")
    _check(e.tool_workers >= 1, "env.tool_workers", f"must be >= 1, got {e.tool_workers}")
    _check(c.reward.timeout_s > 0, "reward.timeout_s", "must be > 0")
    _check(c.reward.code_test_timeout_s > 0 and c.reward.code_memory_mb >= 64, "reward.code_test_timeout_s",
           "code_test_timeout_s must be > 0 and code_memory_mb >= 64")
    _check(0 <= c.reward.overlong_cache <= g.max_new_tokens, "reward.overlong_cache",
           f"must be in [0, generation.max_new_tokens={g.max_new_tokens}]")
    _check(c.reward.num_actors >= 1 and c.reward.workers_per_actor >= 1, "reward.num_actors", "must be >= 1")
    _check(0 < c.reward.max_error_fraction <= 1, "reward.max_error_fraction", "must be in (0, 1]")
    _check(c.reward.max_error_steps >= 1, "reward.max_error_steps", "must be >= 1")
    _check(1 <= c.data.synthetic_min_operand <= c.data.synthetic_max_operand, "data.synthetic_min_operand",
           f"must be in [1, data.synthetic_max_operand={c.data.synthetic_max_operand}], got {c.data.synthetic_min_operand}")
    bad = [k for k in c.data.synthetic_kinds if k not in KINDS]
    _check(not bad and bool(c.data.synthetic_kinds), "data.synthetic_kinds",
           f"unknown kind(s) {bad}; choose from {', '.join(KINDS)}")
    _check(0 < m.rho <= 1, "learner.mask.rho", f"must be in (0, 1], got {m.rho}")
    _check(not (m.mode == "bottom" and m.rho == 1), "learner.mask.rho",
           "rho=1 with mode=bottom keeps a single token (bottom keeps the lowest 1-rho); use mode=none to train every token")
    _check(not (l.advantage == "w_reinforce" and (c.reward.format_weight or c.reward.overlong_weight)),
           "learner.advantage", "w_reinforce reads only the verifier's verdict, so reward.format_weight and "
           "reward.overlong_weight would change reward/mean but not what trains; set them to 0 or pick another estimator")
    _check(not (m.normalize == "kept" and l.aggregation == "seq_mean_token_sum_norm"), "learner.mask.normalize",
           "'kept' has no meaning with learner.aggregation=seq_mean_token_sum_norm, which divides by a constant length")
    _check(l.dual_clip == 0 or l.dual_clip > 1, "learner.dual_clip", f"must be 0 (off) or > 1, got {l.dual_clip}")
    _check(l.kl_coef >= 0, "learner.kl_coef", "must be >= 0")
    _check(l.is_cap == 0 or l.is_cap >= 1, "learner.is_cap", f"must be 0 (off) or >= 1, got {l.is_cap}")
    _check(l.warmup_steps >= 0, "learner.warmup_steps", "must be >= 0")
    _check(l.num_ranks >= 1, "learner.num_ranks", "must be >= 1")
    _check(l.lr > 0, "learner.lr", "must be > 0")
    _check(l.torch_threads >= 0, "learner.torch_threads", "must be >= 0")
    _check(l.clip_low >= 0 and l.clip_high >= 0, "learner.clip_low", "clip epsilons must be >= 0")
    _check(l.epochs >= 1, "learner.epochs", "must be >= 1")
    _check(l.single_pass_max_tokens >= 0, "learner.single_pass_max_tokens", "must be >= 0 (0 = always score first)")
    _check(l.zero_persistence_threshold >= 0, "learner.zero_persistence_threshold", "must be >= 0")
    batch = c.prompts_per_step * g.group_size
    mini = l.mini_batch_size or batch
    _check(batch % mini == 0, "learner.mini_batch_size", f"{mini} must divide the batch of {batch} responses")
    _check(mini % (l.num_ranks * l.micro_batch_size) == 0, "learner.micro_batch_size",
           f"mini-batch {mini} must split evenly into learner.num_ranks={l.num_ranks} x micro_batch_size={l.micro_batch_size}")
    _check(c.tracking.save_every >= 0, "tracking.save_every", "must be >= 0")
    _check(c.checkpoint.every >= 0, "checkpoint.every", "must be >= 0")
    _check(c.checkpoint.keep >= 1, "checkpoint.keep", "must be >= 1")
    _check(c.fault.max_actor_restarts >= 0, "fault.max_actor_restarts", "must be >= 0")
    _check(c.fault.learner_restarts >= 0, "fault.learner_restarts", "must be >= 0")
    _check(not c.fault.learner_restarts or c.checkpoint.every > 0, "fault.learner_restarts",
           "needs checkpoint.every > 0: a restart continues from the latest full checkpoint")
    if g.sleep_mode:  # generation and learner take turns on one device
        _check(c.max_staleness == 0, "max_staleness", "must be 0 with generation.sleep_mode: vLLM sleeps while "
               "the learner steps, so generation cannot run ahead")
        _check(g.num_gpus > 0 and l.num_gpus > 0, "generation.num_gpus",
               "generation.sleep_mode shares a GPU: set generation.num_gpus and learner.num_gpus to fractions of it")
        _check(g.num_actors * g.num_gpus + l.num_ranks * l.num_gpus <= 1 + 1e-9, "learner.num_gpus",
               f"generation.num_actors x num_gpus ({g.num_actors} x {g.num_gpus:g}) + learner.num_ranks x num_gpus "
               f"({l.num_ranks} x {l.num_gpus:g}) must add up to at most 1: sleep mode shares one GPU")
    _check(l.max_skipped_steps >= 1, "learner.max_skipped_steps", "must be >= 1")
    _check(c.cluster.placement_timeout_s > 0, "cluster.placement_timeout_s", "must be > 0")
    lo = l.lora
    _check(lo.rank >= 0, "learner.lora.rank", f"must be >= 0 (0 = full fine-tuning), got {lo.rank}")
    _check(lo.alpha > 0, "learner.lora.alpha", f"must be > 0, got {lo.alpha}")
    _check(lo.dropout == 0, "learner.lora.dropout", f"must be 0, got {lo.dropout}: the learner runs every forward "
           "in eval mode so that log-probs, entropies and importance ratios come from one function")
    _check(bool(lo.target_modules) and all(lo.target_modules), "learner.lora.target_modules",
           "must name at least one module (or 'all-linear')")


# ---- building the tree from YAML and overrides -------------------------------------------------

def _build(cls, raw: dict, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{full}: unknown config key (known here: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(hints[key], value, full)
    return cls(**kwargs)


# Choices left out on purpose, with the reason a user who asks for them gets.
REFUSED = {
    ("learner.kl_estimator", "k1"): "k1 = log(pi/ref) as a loss has zero expected gradient",
}


def _coerce(tp, value, key):
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            why = f" ({REFUSED[key, value]})" if (key, value) in REFUSED else ""
            raise ConfigError(f"{key}: must be one of {', '.join(map(str, choices))}; got {value!r}{why}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        return [str(v) for v in value]
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != out:
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return out
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        if value is None or isinstance(value, bool):  # YAML reads on/off/yes/no/null as these
            raise ConfigError(f"{key}: expected a string, got {value!r} (YAML reads on, off, yes, no and null "
                              "that way: quote the value)")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {tp}")


def _set_dotted(tree: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {p} is not a section")
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """Read YAML (optional), apply `key=value` overrides, build and validate the tree."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--config {p}: file not found")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r}: expected key=value")
        key, value = ov.split("=", 1)
        _set_dotted(raw, key.strip(), yaml.safe_load(value) if value else "")
    return _build(TrainConfig, raw, "")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)


def _field_docs() -> dict[tuple[str, str], str]:
    """(class name, field) -> the docstring written under the field in this file's source."""
    docs = {}
    for node in ast.parse(Path(__file__).read_text()).body:
        if isinstance(node, ast.ClassDef):
            body = node.body
            for a, b in zip(body, body[1:]):
                if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
                        and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)):
                    docs[node.name, a.target.id] = " ".join(b.value.value.split())
    return docs


def config_keys(cls=None, prefix: str = "") -> list[tuple[str, str, object, str]]:
    """Every key of the tree: (dotted key, type, default, docstring), generated from the dataclasses."""
    cls = cls or TrainConfig
    docs, hints, out = _field_docs(), typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += config_keys(tp, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        origin = typing.get_origin(tp)
        kind = ("|".join(map(str, typing.get_args(tp))) if origin is Literal
                else "list" if origin is list else getattr(tp, "__name__", str(tp)))
        out.append((f"{prefix}{f.name}", kind, default, docs.get((cls.__name__, f.name), "")))
    return out
