"""Environments by name or import path: 'single_turn' (one response per sample, the default),
'python' (`envs.python_tool`), 'package.module:Class' or 'path/to/file.py:Class' (the interface:
`envs.base`)."""
from __future__ import annotations

from envs.base import EnvSpecError
from rewards.specs import import_spec

BUILTINS = ("single_turn", "python")


def load_env(spec: str):
    """The environment class `spec` names; single_turn has none (None)."""
    if spec == "single_turn":
        return None
    if spec == "python":
        from envs.python_tool import PythonTool

        return PythonTool
    if ":" not in spec:
        raise EnvSpecError(f"env.name={spec!r}: expected one of {', '.join(BUILTINS)}, 'package.module:Class' or "
                           "'path/to/file.py:Class'")
    cls = import_spec(spec, "env.name", "class", EnvSpecError)
    module_name, cls_name = spec.rsplit(":", 1)
    if not isinstance(cls, type):
        raise EnvSpecError(f"env.name={spec!r}: {module_name} has no class {cls_name}")
    if not callable(getattr(cls, "step", None)):
        raise EnvSpecError(f"env.name={spec!r}: {cls_name} has no step(turn, ended) method")
    stop = getattr(cls, "stop", ())
    if not (isinstance(stop, (tuple, list)) and all(isinstance(s, str) and s for s in stop)):
        raise EnvSpecError(f"env.name={spec!r}: {cls_name}.stop must be a tuple of non-empty strings, got {stop!r}")
    return cls


def check_env(spec: str, isolation: str = "bwrap") -> None:
    """Everything a run's environment needs, before any actor starts: the class loads and, for the
    python tool, the code sandbox can be had here."""
    load_env(spec)
    if spec == "python":
        from rewards.sandbox import check_isolation

        check_isolation(isolation)
