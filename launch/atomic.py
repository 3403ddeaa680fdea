"""Files and folders that appear complete or not at all: written beside, then renamed into place.
A crash at any moment leaves the previous version (or nothing), never a torn one."""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one rename."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextmanager
def atomic_dir(out: Path, tmp: Path | None = None) -> Iterator[Path]:
    """Yields an absent temporary path beside `out` (default `out`.tmp) for the caller to fill;
    on success it replaces `out`, on an exception it is removed and `out` is left as it was."""
    tmp = tmp or out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
