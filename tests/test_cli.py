"""The command line's exit contract: bad input is one line and exit 2; a bug keeps its traceback."""
from __future__ import annotations

import pytest

import launch.cli as cli
from launch.config import ConfigError


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
