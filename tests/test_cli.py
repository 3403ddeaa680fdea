"""The command line's exit contract: bad input is one line and exit 2; a bug keeps its traceback."""
from __future__ import annotations

import pytest

import launch.cli as cli
from launch.errors import ConfigError


def test_bad_input_is_one_line_and_exit_2(monkeypatch, capsys):
    def refuse(cfg, resume=None, verbose=False):
        raise ConfigError("learner.lr: must be > 0")

    monkeypatch.setattr(cli, "train", refuse)
    assert cli.main(["train"]) == 2
    assert capsys.readouterr().err.strip() == "forkrl: error: learner.lr: must be > 0"


def test_an_internal_error_keeps_its_traceback(monkeypatch):
    """A ValueError from inside forkrl is a bug, not bad input: it must not be reported as exit 2
    with its traceback thrown away."""
    def bug(cfg, resume=None, verbose=False):
        raise ValueError("shapes (3,) and (4,) do not align")

    monkeypatch.setattr(cli, "train", bug)
    with pytest.raises(ValueError, match="do not align"):
        cli.main(["train"])


def test_eval_compare_tokenizes_for_each_model(tiny_model, tmp_path):
    """`forkrl eval --compare`: each model's prompts come from its own tokenizer."""
    import shutil

    from transformers import AutoTokenizer

    from launch.config_load import load_config
    from launch.model_eval import prompts_per_model

    other = tmp_path / "other"
    shutil.copytree(tiny_model, other)
    tok = AutoTokenizer.from_pretrained(other)
    tok.add_tokens(["Rosa"])  # a word of the prompt becomes one new id for this model only
    tok.save_pretrained(other)
    cfg = load_config(None, ["model.chat_template=false", "data.instruction="])
    rows = [{"prompt": "Rosa has 3 pens.", "answer": "3"}]
    got = prompts_per_model(cfg, {"a": str(tiny_model), "b": str(other)}, rows, "rows")
    assert got["a"][0].token_ids != got["b"][0].token_ids
    assert got["b"][0].token_ids == tok("Rosa has 3 pens.", add_special_tokens=True)["input_ids"]
    assert got["a"][0].text == got["b"][0].text == "Rosa has 3 pens."
