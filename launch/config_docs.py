"""Every config key with its type, default and docstring, read from the tree itself (`forkrl config`):
the docstrings written under each field of launch/config.py are parsed from its source."""
from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

from launch import config

def _field_docs() -> dict[tuple[str, str], str]:
    """(class name, field) -> the docstring written under the field in this file's source."""
    docs = {}
    for node in ast.parse(Path(config.__file__).read_text()).body:
        if isinstance(node, ast.ClassDef):
            body = node.body
            for a, b in zip(body, body[1:]):
                if (isinstance(a, ast.AnnAssign) and isinstance(a.target, ast.Name) and isinstance(b, ast.Expr)
                        and isinstance(b.value, ast.Constant) and isinstance(b.value.value, str)):
                    docs[node.name, a.target.id] = " ".join(b.value.value.split())
    return docs


def config_keys(cls=None, prefix: str = "") -> list[tuple[str, str, object, str]]:
    """Every key of the tree: (dotted key, type, default, docstring), generated from the dataclasses."""
    cls = cls or config.TrainConfig
    docs, hints, out = _field_docs(), typing.get_type_hints(cls), []
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out += config_keys(tp, f"{prefix}{f.name}.")
            continue
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        origin = typing.get_origin(tp)
        kind = ("|".join(map(str, typing.get_args(tp))) if origin is typing.Literal
                else "list" if origin is list else getattr(tp, "__name__", str(tp)))
        out.append((f"{prefix}{f.name}", kind, default, docs.get((cls.__name__, f.name), "")))
    return out
