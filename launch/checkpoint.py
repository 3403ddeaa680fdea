"""Export the policy as a plain Hugging Face folder (safetensors), written atomically; a LoRA
policy's folder holds the merged weights and, under adapter/, the adapters as a peft folder."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from launch.atomic import atomic_dir
from learner.weights import LoraSpec, WeightShard, assemble_weights, load_base_weights, merge_lora

# Everything of the source folder except weights: config, generation config, tokenizer, template.
_COPY = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt")


def export_hf(state: dict[str, torch.Tensor], model_path: str, out: Path,
              adapter: tuple[dict[str, torch.Tensor], LoraSpec] | None = None) -> Path:
    """Write `state` (full HF-named weights) plus the source folder's config and tokenizer to `out`,
    and with `adapter` (peft-named tensors, their spec) a peft folder in `out`/adapter.

    The folder appears complete or not at all: it is written beside and renamed into place.
    """
    from safetensors.torch import save_file

    with atomic_dir(out) as tmp:
        tmp.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for name in _COPY:
            if (Path(model_path) / name).is_file():
                shutil.copy2(Path(model_path) / name, tmp / name)
        if adapter is not None:
            write_peft_adapter(*adapter, model_path, tmp / "adapter")
    return out


def export_weights(shards: list[WeightShard], model_path: str, out: Path) -> Path:
    """The published weights as `out`: an HF folder of the full weights; under LoRA, of the base
    with the adapters merged, plus the adapters as a peft folder in `out`/adapter (loadable by
    peft's PeftModel.from_pretrained and by vLLM as a LoRA). One atomic rename for both."""
    weights = assemble_weights(shards)
    lora = shards[0].lora
    if lora is None:
        return export_hf(weights, model_path, out)
    return export_hf(merge_lora(load_base_weights(model_path), weights, lora), model_path, out,
                     adapter=(weights, lora))


def write_peft_adapter(tensors: dict[str, torch.Tensor], lora: LoraSpec, model_path: str, out: Path) -> None:
    """adapter_config.json (peft's own LoraConfig) and adapter_model.safetensors under peft's names."""
    from peft import LoraConfig
    from safetensors.torch import save_file

    out.mkdir(parents=True)
    LoraConfig(r=lora.r, lora_alpha=lora.alpha, target_modules=list(lora.target_modules), bias="none",
               task_type="CAUSAL_LM", base_model_name_or_path=str(model_path)).save_pretrained(str(out))
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(out / "adapter_model.safetensors"),
              metadata={"format": "pt"})
