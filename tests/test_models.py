"""The packaged SmolLM2 GGUF converts to a plain HF folder that computes what the GGUF model does."""
import os
from pathlib import Path
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


def test_a_hub_id_resolves_through_the_local_hub_cache_offline_and_a_missing_one_is_named(tiny_model, tmp_path):
    """model.path=org/name goes through huggingface_hub's own cache (HF_HUB_OFFLINE=1: no network
    here): the cache is laid out as the library lays it out, holding the tiny model."""
    import shutil
    import subprocess
    import sys

    cache = tmp_path / "hub"
    commit = "0123456789abcdef0123456789abcdef01234567"
    repo = cache / "models--forkrl--tiny"
    shutil.copytree(tiny_model, repo / "snapshots" / commit)
    (repo / "refs").mkdir()
    (repo / "refs" / "main").write_text(commit)
    env = {**os.environ, "HF_HUB_CACHE": str(cache), "HF_HUB_OFFLINE": "1"}
    code = ("import sys; from launch.models import resolve_model_path; from transformers import AutoConfig; "
            "p = resolve_model_path(sys.argv[1]); print(p); AutoConfig.from_pretrained(p)")
    root = Path(__file__).resolve().parents[1]
    out = subprocess.run([sys.executable, "-c", code, "forkrl/tiny"], capture_output=True, text=True, env=env, cwd=root)
    assert out.returncode == 0, out.stderr[-2000:]
    assert Path(out.stdout.strip()) == repo / "snapshots" / commit
    out = subprocess.run([sys.executable, "-m", "launch.cli", "eval", "--model", "forkrl/absent", "--data", "x.jsonl"],
                         capture_output=True, text=True, env=env, cwd=root)
    assert out.returncode == 2
    assert out.stderr.strip().splitlines()[-1].startswith(
        "forkrl: error: model.path='forkrl/absent': not in the Hub cache"), out.stderr[-2000:]
    assert "HF_HUB_OFFLINE is set" in out.stderr
