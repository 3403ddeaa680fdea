"""DeepSpeed ZeRO-3 plumbing: the engine's config, building the sharded policy (and reference),
its checkpoints and its weight slices. Nothing here knows about the RL objective."""
from __future__ import annotations

import functools
from dataclasses import dataclass

import torch

from learner.attention import SEGMENT_ATTENTION, register as register_segment_attention
from learner.weights import LoraSpec, WeightShard


def deepspeed_config(cfg, micro_per_rank: int, accumulation: int, world: int, bf16: bool,
                     load_universal: bool = False) -> dict:
    ds = {
        "train_micro_batch_size_per_gpu": micro_per_rank,
        "gradient_accumulation_steps": accumulation,
        "train_batch_size": micro_per_rank * accumulation * world,
        "gradient_clipping": cfg.grad_clip,
        "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": False,
                              "stage3_param_persistence_threshold": cfg.zero_persistence_threshold,
                              "reduce_bucket_size": cfg.zero_reduce_bucket_size},
        "optimizer": {
            "type": "AdamW",
            # torch's fused AdamW (CPU and CUDA): one kernel over the flat ZeRO partition,
            # several times faster than its per-tensor loop here, and no extension to build.
            "params": {"lr": cfg.lr, "weight_decay": cfg.weight_decay, "betas": [0.9, 0.999], "torch_adam": True,
                       "fused": True},
        },
        "bf16": {"enabled": bf16},
        "steps_per_print": 10**9,
        "wall_clock_breakdown": False,
        # resuming on another number of ranks reads DeepSpeed's universal (rank-free) checkpoint
        "checkpoint": {"load_universal": load_universal},
    }
    return ds


@dataclass
class Engines:
    engine: object  # deepspeed.DeepSpeedEngine of the policy
    scheduler: object | None  # its LR scheduler (None without warm-up)
    reference: object | None  # the frozen initial policy's engine, when a KL penalty is on
    hf_ds: object  # transformers' HfDeepSpeedConfig: kept alive, it makes from_pretrained build under zero.Init


def warmup_factor(update: int, warmup_steps: int) -> float:
    """The share of the learning rate that update `update` (0-based) uses: linear warm-up whose
    first update is already non-zero and whose update number `warmup_steps` (1-based) is the
    first at the full rate. (DeepSpeed's WarmupLR gave 0, 0, ...: two updates that moved nothing
    but still fed Adam's moments.)"""
    return min(1.0, (update + 1) / warmup_steps) if warmup_steps > 0 else 1.0


def build_engines(model_path: str, ds_cfg: dict, bf16: bool, with_reference: bool, warmup_steps: int = 0,
                  lora=None, checkpointing: bool = False, segment_attention: bool = False,
                  pointwise_recompute: bool = False) -> Engines:
    """The policy under ZeRO-3 (each rank materialises only its shard of the weights) and, with
    `with_reference`, the frozen initial policy sharded the same way. torch.distributed must be up.
    DeepSpeed steps the warm-up schedule after each applied update (a refused one does not count).
    With `lora` (learner.lora, rank > 0) peft wraps the policy: the base is frozen and the optimizer
    holds the adapters only; the reference is then the base with adapters off, not a second copy.
    With `segment_attention` both models attend through learner/attention.py's function, which is
    transformers' SDPA unless a forward passes a segment layout."""
    import deepspeed
    from transformers import AutoModelForCausalLM
    from transformers.integrations import HfDeepSpeedConfig

    hf_ds = HfDeepSpeedConfig(ds_cfg)
    attn = {}
    if segment_attention:
        register_segment_attention()
        attn = dict(attn_implementation=SEGMENT_ATTENTION)
    model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.bfloat16 if bf16 else torch.float32, **attn)
    model.config.use_cache = False
    if lora is not None and lora.rank > 0:
        model = wrap_lora(model, lora)
        with_reference = False
    schedule = None
    if warmup_steps > 0:
        factor = functools.partial(warmup_factor, warmup_steps=warmup_steps)
        schedule = lambda optimizer: torch.optim.lr_scheduler.LambdaLR(optimizer, factor)  # noqa: E731
    # Under LoRA only the adapters require grad: the optimizer (and its Adam state) holds them alone.
    trained = [p for p in model.parameters() if p.requires_grad]
    engine, _, _, scheduler = deepspeed.initialize(model=model, config=ds_cfg, model_parameters=trained,
                                                   lr_scheduler=schedule)
    share_master_weights(engine.optimizer)
    share_gradient_buffer(engine.optimizer)
    # Every forward in eval mode: dropout would add noise to the proximal log-probs, the entropies
    # that choose the mask and the importance ratios. from_pretrained happens to leave the model in
    # eval mode; this says so rather than relying on it. Gradients flow the same in eval mode.
    engine.eval()
    if checkpointing:
        enable_checkpointing(engine.module)
    elif pointwise_recompute:  # whole layers recomputed already cover these
        recompute_pointwise(engine.module)
    reference = None
    if with_reference:
        ref_cfg = {k: v for k, v in ds_cfg.items() if k != "optimizer"}
        ref = AutoModelForCausalLM.from_pretrained(model_path, dtype=model.dtype, **attn)
        reference, *_ = deepspeed.initialize(model=ref, config=ref_cfg)
        reference.eval()
    return Engines(engine, scheduler, reference, hf_ds)


def share_master_weights(optimizer) -> None:
    """Where the module's partition already is the master dtype on the optimizer's device (float32
    training, as on CPU), let the optimizer update it in place instead of a second copy. DeepSpeed
    means to alias them then (stage3.py, `_create_fp32_partitions`: "we don't need another copy of
    the weights"), but it compares the partition's torch.device with its own device name, a string
    ('cpu'), which is never equal, so every float32 run kept a duplicate: 0.5 GB for a 135M model on
    one rank, a third of ZeRO-3's state without Adam. After the step it copies the master into the
    partition, which is then a copy onto itself. The master tensors keep their identity (the
    optimizer's param groups and Adam state are keyed by them); only their storage becomes the
    partition's."""
    flats = getattr(optimizer, "fp32_partitioned_groups_flat", None)
    partitions = getattr(optimizer, "fp16_partitioned_groups_flat", None)
    if not flats or partitions is None or getattr(optimizer, "offload_optimizer", False):
        return
    for master, part in zip(flats, partitions):
        # torch.equal also refuses a size mismatch; the dtype and device checks keep it defined
        if (part is None or master.dtype != part.dtype or master.device != part.device
                or master.data_ptr() == part.data_ptr() or not torch.equal(master, part)):
            continue
        master.data = part.data  # same values: the master was cloned from this partition


def share_gradient_buffer(optimizer) -> None:
    """Let the optimizer step read the gradients where ZeRO-3 reduced them, not from a copy.
    ZeRO-3 reduces every parameter's gradient into its slice of one flat buffer, kept for the run.
    Before each step, DeepSpeed flattens those slices into a new tensor of the same size, which is
    already laid out that way. That is a second full-size gradient live at the step: 0.5 GB for a
    135M model on one rank, on CPU the step's largest allocation. Where a sub-group's slices are one
    contiguous run of that buffer in parameter order, its master's .grad becomes a view of the run.
    The values are the same and the step reads them the same way. Unscaling and clipping then
    scale the buffer in place. The next accumulation overwrites the buffer: its first backward
    copies rather than adds. Anything else keeps DeepSpeed's own copy: CPU offload, or a buffer
    whose dtype differs from the master's (gradients accumulated in bf16)."""
    flats = getattr(optimizer, "fp32_partitioned_groups_flat", None)
    prepare = getattr(optimizer, "_prepare_fp32_grad_for_sub_group", None)
    if not flats or prepare is None or getattr(optimizer, "offload_optimizer", False):
        return

    def prepare_from_buffer(sub_group_id: int) -> None:
        grads = optimizer.averaged_gradients[sub_group_id]
        master = flats[sub_group_id]
        run = _contiguous_run(grads)
        if run is None or run.dtype != master.dtype or run.device != master.device or run.numel() != master.numel():
            return prepare(sub_group_id)
        master.grad = run
        optimizer.averaged_gradients[sub_group_id] = None  # as DeepSpeed's own does: the step owns them now

    optimizer._prepare_fp32_grad_for_sub_group = prepare_from_buffer


def _contiguous_run(tensors) -> torch.Tensor | None:
    """One 1-D view over `tensors` when they are contiguous 1-D slices of one storage, each
    starting where the one before ends (what torch.cat of them would copy); else None."""
    if not tensors:
        return None
    first = tensors[0]
    offset = first.storage_offset()
    for t in tensors:
        if (t.dim() != 1 or not t.is_contiguous() or t.dtype != first.dtype or t.device != first.device
                or t.untyped_storage().data_ptr() != first.untyped_storage().data_ptr()
                or t.storage_offset() != offset):
            return None
        offset += t.numel()
    return first.new_empty(0).set_(first.untyped_storage(), first.storage_offset(), (offset - first.storage_offset(),))


def enable_checkpointing(model) -> None:
    """Activation checkpointing of every decoder layer (transformers' own, non-reentrant): each
    layer keeps only its input and recomputes its activations in the backward. transformers
    checkpoints a layer only while that layer is in training mode, so the layers themselves (not
    their submodules, whose dropout stays off) are switched to it."""
    from transformers.modeling_layers import GradientCheckpointingLayer

    model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    layers = [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]
    if not layers:
        raise ValueError("learner.activation_checkpointing: this model has no checkpointable decoder layers")
    for layer in layers:
        layer.training = True  # not .train(): that would turn dropout on in the attention and MLP


def recompute_pointwise(model) -> int:
    """Let the backward recompute what is cheap to recompute instead of holding it: each RMSNorm
    keeps only its input (not its normalised copy), and each SwiGLU MLP keeps its two projections
    but not the activation act(gate), which the product act(gate) * up otherwise holds. Both are
    pointwise work on tensors already held; the matmuls' inputs stay saved. Liger's RMSNorm and
    SwiGLU kernels make the same trade. Each piece runs in a non-reentrant torch checkpoint of the
    same operations, so the recomputed values and the gradients are bit-identical. At the demo's
    shape this cuts the learner's peak by 0.28 GB (bench/README.md). Returns the modules changed.

    An MLP qualifies only if its forward is transformers' LlamaMLP.forward, compared as bytecode.
    Qwen2, Mistral and the other models copied from it pass; a model whose MLP computes anything
    else keeps its own forward. A norm qualifies by its class name (…RMSNorm). Its own forward is
    what is checkpointed, so any formula recomputes exactly. Both checkpoints hold no parameter
    gathering. The projections run outside them, and the activation is called without its module
    hooks, so ZeRO-3 fetches nothing during a recompute."""
    from torch.utils.checkpoint import checkpoint
    from transformers.models.llama.modeling_llama import LlamaMLP

    swiglu = LlamaMLP.forward.__code__
    changed = 0
    for module in model.modules():
        code = getattr(type(module).forward, "__code__", None)
        if code is not None and (code.co_code, code.co_names, code.co_consts) == (
                swiglu.co_code, swiglu.co_names, swiglu.co_consts):
            module.forward = functools.partial(_swiglu_recomputing_activation, module)
        elif type(module).__name__.endswith("RMSNorm"):
            module.forward = functools.partial(checkpoint, type(module).forward.__get__(module), use_reentrant=False,
                                               preserve_rng_state=False)  # a norm draws no random numbers
        else:
            continue
        changed += 1
    return changed


def _swiglu_recomputing_activation(mlp, x: torch.Tensor) -> torch.Tensor:
    """LlamaMLP.forward, down(act(gate(x)) * up(x)), with act(gate) * up in a checkpoint, and
    down_proj holding a recipe for that product (its input, which its weight gradient needs)
    instead of the product itself: the checkpoint already holds gate and up, and the backward
    recomputes act(gate) * up from them when down_proj's gradient asks for it."""
    from torch.utils.checkpoint import checkpoint

    act, gate, up = mlp.act_fn.forward, mlp.gate_proj(x), mlp.up_proj(x)
    product = checkpoint(_activation_times, act, gate, up, use_reentrant=False,
                         preserve_rng_state=False)  # an activation draws no random numbers
    # Only the product's address, dtype and offset: a hook that referred to `product` itself kept
    # it alive for the backward (measured), which is what the recipe is there to avoid.
    storage, dtype, start = product.untyped_storage().data_ptr(), product.dtype, product.storage_offset()

    def pack(t: torch.Tensor):
        if t.untyped_storage().data_ptr() != storage or t.dtype != dtype:
            return t  # the weight, or anything else down_proj (or a LoRA/ZeRO-3 hook on it) keeps
        return _Recipe(act, gate, up, t.size(), t.stride(), t.storage_offset() - start)

    # The product is the same whichever tensor the linear saved: a view of it (a flattened
    # 2-D input) is rebuilt with that view's own sizes and strides from the recomputed copy.
    with torch.autograd.graph.saved_tensors_hooks(pack, _unpack):
        return mlp.down_proj(product)


class _Recipe(tuple):
    """(act, gate, up, size, stride, offset): what _unpack rebuilds a saved product view from."""

    def __new__(cls, *parts):
        return super().__new__(cls, parts)


def _unpack(saved):
    if not isinstance(saved, _Recipe):
        return saved
    act, gate, up, size, stride, offset = saved
    with torch.no_grad():
        product = _activation_times(act, gate, up)  # the same operations: bit-identical values
    return product.as_strided(size, stride, product.storage_offset() + offset)


def _activation_times(act, gate: torch.Tensor, up: torch.Tensor) -> torch.Tensor:
    return act(gate) * up


def wrap_lora(model, lora):
    """peft's LoRA on `model` (already partitioned by zero.Init: the adapters are created whole and
    deepspeed.initialize partitions them). B starts at zero, so the wrapped policy is the base."""
    from peft import LoraConfig, get_peft_model

    targets = "all-linear" if lora.target_modules == ["all-linear"] else list(lora.target_modules)
    return get_peft_model(model, LoraConfig(r=lora.rank, lora_alpha=lora.alpha, lora_dropout=0.0,
                                            target_modules=targets, bias="none"))


def lora_spec(engine) -> LoraSpec | None:
    """The published adapters' scale and targets; None for a fully fine-tuned policy."""
    config = getattr(engine.module, "peft_config", {}).get("default")
    if config is None:
        return None
    return LoraSpec(config.r, float(config.lora_alpha), tuple(sorted(config.target_modules)))


def save_zero(engine, path: str, client_state: dict) -> None:
    """DeepSpeed's own checkpoint: every rank writes its model, optimizer and scheduler shards
    under `path`/zero (collective; nothing is gathered to one process)."""
    engine.save_checkpoint(path, tag="zero", client_state=client_state, save_latest=False)


def load_zero(engine, path: str, universal: bool, rank: int) -> dict:
    """Restores what `save_zero` wrote, from its own shards, or with `universal` from its
    rank-free conversion (launch/resume.py, to_universal); returns the client state."""
    loaded, state = engine.load_checkpoint(path, tag="universal" if universal else "zero",
                                           load_optimizer_states=True, load_lr_scheduler_states=True)
    if loaded is None:
        raise RuntimeError(f"{path}: no DeepSpeed checkpoint for rank {rank}")
    return state


def weight_shard(engine, rank: int, world: int, publish_dtype: str) -> WeightShard:
    """This rank's ZeRO-3 partition of every parameter (of the adapters only, under LoRA: the
    frozen base never changes and every generator has it), on CPU in the publish dtype: no
    collective and no gathering, so publishing scales with the ranks.

    Where the partition already is a CPU tensor of that dtype, the parts are views of it, not
    copies: an actor returning the shard serializes it before its next call can change the
    weights. In process, copy (assemble) it before training again."""
    dtype = {"auto": None, "float32": torch.float32, "bfloat16": torch.bfloat16}[publish_dtype]
    spec = lora_spec(engine)
    parts, shapes = {}, {}
    for name, p in engine.module.named_parameters():
        if spec is not None:
            if not p.requires_grad:
                continue
            name = name.replace(".default.", ".")  # peft's saved (adapter_model.safetensors) names
        part = p.ds_tensor.detach().flatten()[: p.ds_tensor.ds_numel]  # (ceil(numel / world),)
        parts[name] = part.to("cpu", dtype or part.dtype)  # a view when nothing changes (see above)
        shapes[name] = tuple(p.ds_shape)
    return WeightShard(rank, world, parts, shapes, spec)
