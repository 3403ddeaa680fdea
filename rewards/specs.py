"""What `reward.fn`, `reward.extra_fns` and `env.name` name when they are not built-ins: an object in
an importable module ('package.module:name') or in a Python file ('path/to/file.py:name'), loaded in
whichever process uses it (the driver to check it, the reward actors' verifier processes, the
generation actors for environments)."""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys
from pathlib import Path


class SpecError(ValueError):
    """A spec that names nothing loadable; the message names the key and the spec."""


def is_file_spec(spec: str) -> bool:
    """'path/to/file.py:name' (a file, as verl's custom_reward_function.path) rather than 'pkg.mod:name'."""
    return spec.rsplit(":", 1)[0].endswith(".py") or "/" in spec


def absolute_file_spec(spec: str) -> str:
    """A file spec with its path made absolute against this process's directory (the directory
    forkrl starts in): the actors, config.yaml and a resume from elsewhere need it so."""
    if not (is_file_spec(spec) and ":" in spec):
        return spec
    path, name = spec.rsplit(":", 1)
    return f"{os.path.abspath(os.path.expanduser(path))}:{name}"


def import_spec(spec: str, key: str, kind: str = "function", error: type[SpecError] = SpecError):
    """The object `spec` names ('module:name' or 'file.py:name'); `error` (naming `key`) if the
    module or file does not load or lacks the name."""
    if spec.count(":") != 1 and not (is_file_spec(spec) and ":" in spec):
        raise error(f"{key}={spec!r}: expected 'package.module:{kind}' or 'path/to/file.py:{kind}'")
    module_name, name = spec.rsplit(":", 1)
    module = _load_file(module_name, key, error) if is_file_spec(spec) else _load_module(module_name, spec, key, error)
    obj = getattr(module, name, None)
    if obj is None:
        raise error(f"{key}={spec!r}: {module_name} has no {kind} {name}")
    return obj


def _load_module(module_name: str, spec: str, key: str, error: type[SpecError]):
    # As with `python -m` and TRL, a module in the directory forkrl starts in imports (a Ray actor
    # runs there too); searched after everything installed, so it cannot shadow a library.
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        return importlib.import_module(module_name)
    except ImportError as e:
        raise error(f"{key}={spec!r}: cannot import {module_name} ({e})") from None


def _load_file(path_text: str, key: str, error: type[SpecError]):
    path = Path(path_text).expanduser().resolve()
    if not path.is_file():
        raise error(f"{key}: {path_text} not found (a file path is read from the directory forkrl starts in; it "
                    "must be at the same path on every node)")
    # One module per file, named by its path: two files called rewards.py do not collide.
    name = f"forkrl_spec_{path.stem}_{hashlib.sha1(str(path).encode()).hexdigest()[:8]}"
    if name in sys.modules:
        return sys.modules[name]
    module_spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(module_spec)
    if str(path.parent) not in sys.path:  # its sibling modules import; last, so they shadow no library
        sys.path.append(str(path.parent))
    sys.modules[name] = module
    try:
        module_spec.loader.exec_module(module)
    except Exception as e:
        del sys.modules[name]
        raise error(f"{key}: {path_text} does not import ({type(e).__name__}: {e})") from None
    return module
