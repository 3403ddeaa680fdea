"""Export the policy as a plain Hugging Face folder (safetensors), written atomically."""
from __future__ import annotations

import shutil
from pathlib import Path

import torch

from launch.atomic import atomic_dir

# Everything of the source folder except weights: config, generation config, tokenizer, template.
_COPY = ("config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
         "special_tokens_map.json", "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt")


def export_hf(state: dict[str, torch.Tensor], model_path: str, out: Path) -> Path:
    """Write `state` (full HF-named weights) plus the source folder's config and tokenizer to `out`.

    The folder appears complete or not at all: it is written beside and renamed into place.
    """
    from safetensors.torch import save_file

    with atomic_dir(out) as tmp:
        tmp.mkdir(parents=True)
        save_file({k: v.contiguous() for k, v in state.items()}, str(tmp / "model.safetensors"), metadata={"format": "pt"})
        for name in _COPY:
            if (Path(model_path) / name).is_file():
                shutil.copy2(Path(model_path) / name, tmp / name)
    return out
