"""The one config tree. Every field documents itself; building it validates it all up front
(`__post_init__`: launch/config_checks.py). `launch.config_load.load_config` builds it from YAML
and `key=value` overrides. Each actor receives only its own sub-config.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from learner.advantages import Estimator, Signal
from rewards.sandbox import Isolation
from rewards.shapes import Shape
from rewards.specs import absolute_file_spec
from learner.losses import Aggregation, KLEstimator, Normalize
from learner.masking import MaskMode, MaskScope

Placement = Literal["pack", "spread", "strict_spread", "strict_pack"]


@dataclass
class ModelConfig:
    path: str = "smollm2-135m-instruct"
    """HF model folder, a Hub id ('org/name', through the Hub cache), or 'smollm2-135m-instruct' for the packaged default (converted once)."""
    chat_template: bool = True
    """Wrap prompts in the tokenizer's chat template (off for raw-text tiny models)."""


@dataclass
class DataConfig:
    train_files: list[str] = field(default_factory=list)
    """Training rows: jsonl / json / parquet files, save_to_disk folders (folder@split), Hub datasets
    (org/name[:config][@split], split train unless named); empty uses the built-in arithmetic generator."""
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
    """Longest prompt in tokens (after the template and instruction); longer ones: see overlong_prompts."""
    overlong_prompts: Literal["drop", "error"] = "drop"
    """Prompts over max_prompt_tokens: 'drop' them when the data is loaded, counted in the log (as
    verl's filter_overlong_prompts), or 'error': stop before any work, naming the first such row."""
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
    ignore_eos: bool = False
    """Sample every single-turn training response to exactly max_new_tokens (vLLM's ignore_eos):
    for speed and memory benchmarks at a fixed length, never for training (evaluation is unaffected)."""
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
    allocator: Literal["auto", "tcmalloc", "jemalloc", "system"] = "auto"
    """The generation actors' host memory allocator, preloaded into each at launch, as
    learner.allocator is into the ranks: 'auto' is tcmalloc where the driver's node has it
    (vLLM's CPU backend asks for it at every start), else glibc's. On the demo, with tcmalloc the
    weight load into vLLM took 0.56-0.6 s less and the step 0.7-1.3 s less in two pairs of runs,
    with sampling unchanged; later runs did not separate the step time from noise (bench/README.md,
    "tcmalloc in the generation actors"). Code a model writes (tool calls) runs
    in a sandbox that inherits none of this environment. A library named here but missing on the
    driver's node stops the run before it starts."""


@dataclass
class EnvConfig:
    name: str = "single_turn"
    """Rollout environment: 'single_turn' (one response per sample), 'python' (the model may run fenced
    ```python blocks in the code sandbox and read their output; envs/python_tool.py),
    'package.module:Class' or 'path/to/file.py:Class' (envs/base.py says what the class provides). Multi-turn:
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

    def __post_init__(self) -> None:
        self.name = absolute_file_spec(self.name)  # as reward.fn: the actors need the absolute path


@dataclass
class RewardConfig:
    fn: str = "math"
    """Reward: 'math', 'code', 'starts_with' (response begins with the answer word), 'pkg.module:function'
    or 'path/to/file.py:function' (README "Rewards": verl's, TRL's and OpenRLHF's shapes are accepted)."""
    math_answer_form: Literal["value", "number"] = "value"
    """The math reward's rule for a ground truth that is a number: 'value' (an answer equal in value
    scores: `7-3` or `2^2` for 4, as math-verify) or 'number' (the answer, or an equation's last
    side, must be written as a number, an integer, decimal or fraction: an unevaluated expression,
    such as the question's own `345+678` copied into the box, scores wrong; `9 - 4 = 5` scores). 'number' suits arithmetic tasks, where restating
    the question would otherwise earn full reward."""
    shape: Shape = "auto"
    """How reward.fn is called: 'auto' (from its parameter names), 'forkrl' fn(response, ground_truth),
    'verl' compute_score(data_source, solution_str, ground_truth, extra_info), 'trl' fn(completions,
    **columns) or 'openrlhf' reward_func(queries, prompts, labels)."""
    extra_fns: list[str] = field(default_factory=list)
    """More rewards added to reward.fn's score (each as reward.fn takes it, shape read from its
    signature), as TRL's several reward_funcs: a format or length term. Correctness stays reward.fn's;
    each one's own score is logged as reward/fn/<name>."""
    extra_weights: list[float] = field(default_factory=list)
    """Weight of each of reward.extra_fns (empty = 1 each); reward.fn's weight is 1."""
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
    """Weight of the format reward: 1 for a response that ended by itself with its answer in the
    reward's form (a non-empty \\boxed{...}; with reward.fn=code, a non-empty fenced code block)."""
    overlong_weight: float = 0.0
    """Weight of DAPO's soft overlong punishment (0 = off)."""
    overlong_cache: int = 0
    """L_cache: tokens before generation.max_new_tokens where the overlong penalty ramps to -1."""
    max_error_fraction: float = 0.5
    """Stop the run when at least this share of a step's verifications time out, raise or crash ..."""
    max_error_steps: int = 2
    """... for this many consecutive steps (a broken reward must not train on zeros for hours)."""

    def __post_init__(self) -> None:
        # A reward file is named from the directory forkrl starts in; the actors, a resume from
        # elsewhere and config.yaml need the absolute path.
        self.fn = absolute_file_spec(self.fn)
        self.extra_fns = [absolute_file_spec(f) for f in self.extra_fns]


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
    zero_reduce_bucket_size: int = 50_000_000
    """Elements in ZeRO-3's gradient reduce bucket (DeepSpeed's reduce_bucket_size). DeepSpeed's
    default of 5e8 is 2 GB in float32; at the demo shape 5e7 lowered the learner's peak RSS by 0.7
    GB (bench/README.md) and still moves 50M elements per reduce."""
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
    share_prompt: bool = True
    """Forward each group's prompt once per micro-batch: the micro-batch is packed into one row
    without padding, where each response attends to its group's one copy of the prompt (and to its
    own earlier tokens), at its own positions. The same update (tests); the prompt's compute once
    instead of once per response (1.54x faster learner at the demo shape, bench/README.md).
    Micro-batches then hold a group's sequences side by side."""
    segment_attention: bool = True
    """Packed rows attend segment by segment (learner/attention.py): each response against its
    prompt's keys and its own, at a cost that follows its own length rather than the row's (2.0-2.5x
    faster forward and backward at 8 x 256..1024-token responses, bench/README.md). The same
    hidden states as the explicit T x T mask, to float rounding (tests). A model whose attention it
    cannot stand in for (sliding windows, soft-capping, or a start-up probe that disagrees) falls
    back to the mask with a warning. false always uses the mask."""
    max_packed_tokens: int = 8192
    """Under the explicit T x T mask (segment_attention off or unsupported), a packed micro-batch
    longer than this runs padded instead (the same update); unused with segment attention."""
    max_tokens_per_micro_batch: int = 0
    """When > 0, micro-batches are packed rows (no padding) of at most this many tokens, a
    sequence longer than that alone, instead of micro_batch_size sequences each: in the single
    pass, in the scoring pass and in each mini-batch's updates. A mini-batch's micro-batches then
    vary in number; every rank runs as many as the busiest. The same update either way. For long
    responses it is the cheap way to bound memory: at 32 x 256..1024-token responses on CPU, 2048
    took 0.41x the default's peak memory in 0.96x its time (activation checkpointing: 0.58x in
    1.14x); at the demo's shape it packs one larger micro-batch, about 10% faster (bench/README.md)."""
    activation_checkpointing: bool = False
    """Recompute each decoder layer's activations in the backward instead of holding them
    (transformers' checkpointing): memory for long responses, at the cost of a second forward
    through every layer (bench/README.md)."""
    recompute_pointwise: bool = True
    """Recompute cheap pointwise results in the backward instead of holding them: each RMSNorm's
    normalised input, and each SwiGLU MLP's activation act(gate) and its product with up (down_proj
    keeps a recipe for it, not the tensor), as Liger's kernels do. The same update bit for bit
    (tests); at the demo's shape the learner's forward holds 0.27 GB less with the norms and the
    activation, and 0.08 GB less again with the product, in about the same step time
    (bench/README.md, "Host allocator and recomputed pointwise results", "Half the learner's
    memory"). Models whose MLP is not transformers' LlamaMLP forward keep their MLP as is. Off
    under activation_checkpointing, which recomputes whole layers."""
    project_kept_only: bool = True
    """Run the vocabulary projection with grad only on the tokens a loss term weighs (the kept
    ones; every in-scope token when kl_coef > 0), the rest without grad: the same update, without
    the other tokens' logits in memory or the projection's backward for them. false projects every
    response token with grad (the path before; for comparison). Models whose logits are not their
    output layer applied to the last hidden state (soft-capped ones) always take that path."""
    dtype: Literal["auto", "float32", "bfloat16"] = "auto"
    """Training dtype: 'auto' is float32 on CPU and bfloat16 on GPU."""
    allocator: Literal["auto", "tcmalloc", "jemalloc", "system"] = "auto"
    """The learner ranks' host memory allocator, preloaded into each rank at launch: tcmalloc
    (libtcmalloc_minimal.so.4), jemalloc (libjemalloc.so.2) or glibc's own malloc ('system').
    'auto' is tcmalloc where the driver's node has it, else glibc's. Debian/Ubuntu packages:
    libtcmalloc-minimal4 and libjemalloc2; scripts/install.sh installs both. glibc keeps the
    activations a CPU step frees in fragmented heaps: at the demo's shape tcmalloc lowered the
    learner's peak by 0.6 GB in the same step time (four pairs of processes), jemalloc by 0.3-0.6
    GB at 8-10% more time (bench/README.md, "Host allocator"). Not measured on GPU, where the
    activations are not in host memory. A library named here but missing on the driver's node
    stops the run before it starts; a rank on a node without it runs on glibc (its log says that
    the preload failed)."""
    mask: MaskConfig = field(default_factory=MaskConfig)
    """Entropy-percentile gradient mask."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA adapters instead of full fine-tuning (rank > 0)."""


@dataclass
class EvalConfig:
    every: int = 0
    """Evaluate on held-out prompts every this many steps, and after the last (0 = never)."""
    files: list[str] = field(default_factory=list)
    """Held-out rows, in any form data.train_files takes (same keys; a Hub dataset's test split as
    org/name@test); empty = generated rows the training set lacks."""
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
    completions_every: int = 10
    """Every this many steps, a wandb table of that step's trained responses ('completions': step,
    prompt, response, answer, reward, status; up to completions_rows of them); 0 = none."""
    completions_rows: int = 64
    """Rows of each completions table (the step's first responses, whole groups together)."""


@dataclass
class FaultConfig:
    max_actor_restarts: int = 3
    """Generation / reward actor failures survived per run (Ray restarts the actor; its batch is sampled
    again); one more stops the run with the cause. Counted over the whole run, resumes included."""
    actor_restart_timeout_s: float = 900.0
    """How long a generation or reward actor that Ray is restarting may take to answer again (its
    node lost and no other node able to hold it, say) before the run stops, naming the actor and
    each node's free resources."""
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
        from launch.config_checks import validate  # the cross-field rules, in their own file

        validate(self)
