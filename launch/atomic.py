"""Files and folders that appear complete or not at all: written beside, then renamed into place.
A crash at any moment leaves the previous version (or nothing), never a torn one."""
from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_atomic(path: Path, text: str) -> None:
    """Replace `path` with `text` in one rename, the bytes on disk before the name points at them
    (a rename is ordered before the data it names only after an fsync: a power cut could otherwise
    leave the new name on an empty file)."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


def fsync_tree(root: Path) -> None:
    """fsync every file under `root` and every folder, deepest first (before `root` is renamed)."""
    for folder, _, files in os.walk(root, topdown=False):
        for name in files:
            fd = os.open(os.path.join(folder, name), os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        fsync_dir(Path(folder))


def fsync_dir(folder: Path) -> None:
    """Make a folder's entries (a rename, a new file) durable."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


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
    fsync_tree(tmp)
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    fsync_dir(out.parent)
