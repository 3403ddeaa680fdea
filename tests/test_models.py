"""The packaged SmolLM2 GGUF converts to a plain HF folder that computes what the GGUF model does."""
import pytest
import torch

from launch.models import DEFAULT_MODEL, _find_gguf, prepare_default_model, resolve_model_path


def test_default_model_conversion_matches_the_gguf(tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    out = prepare_default_model(tmp_path)
    assert (out / "model.safetensors").is_file() and not (tmp_path / f"{DEFAULT_MODEL}.tmp").exists()
    stamp = (out / "model.safetensors").stat().st_mtime_ns
    assert prepare_default_model(tmp_path) == out and (out / "model.safetensors").stat().st_mtime_ns == stamp  # cached

    tok = AutoTokenizer.from_pretrained(out)
    ids = tok.apply_chat_template([{"role": "user", "content": "What is 2 + 3?"}], add_generation_prompt=True,
                                  return_tensors="pt", return_dict=True)["input_ids"]
    converted = AutoModelForCausalLM.from_pretrained(out)
    gguf = _find_gguf()
    reference = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
    with torch.no_grad():
        assert torch.allclose(converted(ids).logits, reference(ids).logits, atol=1e-4)


def test_missing_model_folder_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="no Hugging Face model folder"):
        resolve_model_path(str(tmp_path / "nope"))
