"""The packaged SmolLM2 GGUF converts to a plain HF folder that computes what the GGUF model does."""
import pytest
import torch

from launch.models import DEFAULT_MODEL, _find_gguf, prepare_default_model, resolve_model_path


def test_default_model_conversion_matches_the_gguf(tmp_path):
    """Through `forkrl prepare-model`, as `make demo` runs it: stdout is the folder, the terminal
    gets forkrl's lines only, and the conversion's bars and library warnings are in its log."""
    import re
    import subprocess
    import sys
    from pathlib import Path

    from transformers import AutoModelForCausalLM, AutoTokenizer

    res = subprocess.run([str(Path(sys.executable).parent / "forkrl"), "prepare-model", "--cache-dir", str(tmp_path)],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-2000:]
    out = tmp_path / DEFAULT_MODEL
    assert res.stdout.strip() == str(out)
    assert res.stderr.strip() and all(re.match(r"\d\d:\d\d:\d\d forkrl: ", line) for line in res.stderr.strip().splitlines())
    assert "Writing model shards" in (tmp_path / "prepare-model.log").read_text()
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
