"""Building the config tree (launch/config.py) from YAML and `key=value` overrides
(`learner.mask.rho=0.5`). Unknown keys, wrong types and out-of-range values raise `ConfigError`
with a one-line message naming the key, before any actor starts."""
from __future__ import annotations

import dataclasses
import typing
from pathlib import Path
from typing import Literal

import yaml

from launch.config import TrainConfig
from launch.errors import ConfigError


def _build(cls, raw: dict, prefix: str):
    if not isinstance(raw, dict):
        raise ConfigError(f"{prefix or 'config'}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in raw.items():
        full = f"{prefix}{key}"
        if key not in names:
            raise ConfigError(f"{full}: unknown config key (known here: {', '.join(sorted(names))})")
        kwargs[key] = _coerce(hints[key], value, full)
    return cls(**kwargs)


# Choices left out on purpose, with the reason a user who asks for them gets.
REFUSED = {
    ("learner.kl_estimator", "k1"): "k1 = log(pi/ref) as a loss has zero expected gradient",
}


def _coerce(tp, value, key):
    if dataclasses.is_dataclass(tp):
        return _build(tp, value, key + ".")
    origin = typing.get_origin(tp)
    if origin is Literal:
        choices = typing.get_args(tp)
        if value not in choices:
            why = f" ({REFUSED[key, value]})" if (key, value) in REFUSED else ""
            raise ConfigError(f"{key}: must be one of {', '.join(map(str, choices))}; got {value!r}{why}")
        return value
    if origin is list:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v]
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {value!r}")
        (item,) = typing.get_args(tp) or (str,)
        if item is str:
            return [str(v) for v in value]
        return [_coerce(item, v, f"{key}[{i}]") for i, v in enumerate(value)]
    if tp is bool:
        if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
            return value.lower() in ("true", "1")
        if not isinstance(value, bool):
            raise ConfigError(f"{key}: expected true/false, got {value!r}")
        return value
    if tp in (int, float):
        if isinstance(value, bool):
            raise ConfigError(f"{key}: expected a number, got {value!r}")
        try:
            out = tp(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{key}: expected {tp.__name__}, got {value!r}") from None
        if tp is int and isinstance(value, float) and value != out:
            raise ConfigError(f"{key}: expected an integer, got {value!r}")
        return out
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{key}: expected a string, got {value!r}")
        if value is None or isinstance(value, bool):  # YAML reads on/off/yes/no/null as these
            raise ConfigError(f"{key}: expected a string, got {value!r} (YAML reads on, off, yes, no and null "
                              "that way: quote the value)")
        return str(value)
    raise ConfigError(f"{key}: unsupported type {tp}")


def _set_dotted(tree: dict, dotted: str, value) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"{dotted}: {p} is not a section")
    node[parts[-1]] = value


def load_config(path: str | Path | None = None, overrides: list[str] = ()) -> TrainConfig:
    """Read YAML (optional), apply `key=value` overrides, build and validate the tree."""
    raw: dict = {}
    if path is not None:
        p = Path(path)
        if not p.is_file():
            raise ConfigError(f"--config {p}: file not found")
        try:
            raw = yaml.safe_load(p.read_text()) or {}
        except yaml.YAMLError as e:
            raise ConfigError(f"{p}: not valid YAML ({str(e).splitlines()[0]})") from None
    for ov in overrides:
        if "=" not in ov:
            raise ConfigError(f"override {ov!r}: expected key=value")
        key, value = ov.split("=", 1)
        _set_dotted(raw, key.strip(), yaml.safe_load(value) if value else "")
    return _build(TrainConfig, raw, "")


def to_dict(cfg) -> dict:
    return dataclasses.asdict(cfg)

