"""A killable worker process with a wall-clock limit per call.

Why a process: math-verify and sympy can spin for minutes on hostile input (power towers, huge
factorials), and the usual SIGALRM guard only works in a process's main thread, so inside Ray
actors, threads or async code it silently does nothing. A separate process can always be killed.
The worker is started lazily and restarted after a timeout or crash; the caller gets a status.
"""
from __future__ import annotations

import resource
import socket
import subprocess
import sys
import threading
from multiprocessing.connection import Connection
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from rewards.result import Status

# Statuses a call can end with; callers count them as metrics instead of hiding them. The three
# failures are the reward statuses of the same name: a verification ends as its call did.
OK = "ok"
TIMEOUT, ERROR, CRASHED = Status.TIMEOUT, Status.ERROR, Status.CRASHED
STARTUP_TIMEOUT_S = 120.0
PROJECT_ROOT = str(Path(__file__).resolve().parents[1])  # the folder holding rewards/


@dataclass(frozen=True)
class CallResult:
    status: str  # one of OK, TIMEOUT, ERROR, CRASHED
    value: Any = None  # fn's return value when status == OK
    error: str = ""  # "ExcType: message" when status == ERROR


def _worker_main(conn: Connection, memory_limit_bytes: int, preload: tuple[str, ...]) -> None:
    import importlib

    for name in preload:  # paid once per child, outside any call's time limit
        importlib.import_module(name)
    if memory_limit_bytes > 0:
        resource.setrlimit(resource.RLIMIT_AS, (memory_limit_bytes, memory_limit_bytes))
    conn.send("ready")
    while True:
        try:
            msg = conn.recv()
        except EOFError:
            return
        if msg is None:
            return
        fn, args = msg
        try:
            conn.send((OK, fn(*args), ""))
        except MemoryError:
            conn.send((ERROR, None, "MemoryError: over the verifier's memory limit"))
        except Exception as e:  # reported to the caller with its type, never swallowed
            conn.send((ERROR, None, f"{type(e).__name__}: {str(e)[:300]}"))


class BoundedProcess:
    """Runs picklable module-level functions in one child process, each call bounded in time.

    Thread-safe: calls from several threads are serialised (one child runs one call at a time).
    """

    def __init__(self, memory_limit_mb: int = 4096, preload: tuple[str, ...] = (), search_path: tuple[str, ...] = ()):
        self._memory_limit = memory_limit_mb * 2**20
        self._preload, self._search_path = tuple(preload), tuple(search_path)
        self._proc = None
        self._conn = None
        self._lock = threading.Lock()
        self.restarts = 0

    def _start(self) -> None:
        # A fresh interpreter (not fork: that would copy a Ray/vLLM process with live threads; not
        # multiprocessing's spawn: that re-imports the caller's __main__, which breaks unguarded scripts).
        ours, theirs = socket.socketpair()
        # -P: the working directory is not put on the import path (a module planted there would
        # run as this user); the project's own root goes first, explicitly. `search_path` (where a
        # user's reward module lives) goes last: it adds modules but cannot shadow an installed one.
        boot = (f"import sys; sys.path.insert(0, {PROJECT_ROOT!r}); sys.path.extend({list(self._search_path)!r}); "
                "from rewards.bounded import main; main()")
        cmd = [sys.executable, "-P", "-c", boot, str(theirs.fileno()), str(self._memory_limit), *self._preload]
        self._proc = subprocess.Popen(cmd, pass_fds=(theirs.fileno(),), stdin=subprocess.DEVNULL)
        theirs.close()
        self._conn = parent = Connection(ours.detach())
        try:
            ready = parent.poll(STARTUP_TIMEOUT_S) and parent.recv() == "ready"
        except (EOFError, OSError):  # it died while starting (a preload that raised, say)
            ready = False
        if not ready:
            try:  # its socket closed: it is exiting, or it is stuck
                code = self._proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                code = None
            self._kill()
            if code is not None:  # its traceback went to stderr (the run's train.log)
                raise RuntimeError(f"verifier process exited with code {code} while starting (preload={self._preload})")
            raise RuntimeError(f"verifier process did not start within {STARTUP_TIMEOUT_S}s (preload={self._preload})")

    def _kill(self) -> None:
        if self._proc is not None:
            self._proc.kill()
            self._proc.wait(timeout=5)
        if self._conn is not None:
            self._conn.close()
        self._proc, self._conn = None, None
        self.restarts += 1

    def call(self, fn: Callable, args: tuple, timeout_s: float) -> CallResult:
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()
            try:
                self._conn.send((fn, args))
                if not self._conn.poll(timeout_s):
                    self._kill()
                    return CallResult(TIMEOUT)
                status, value, error = self._conn.recv()
            except (EOFError, BrokenPipeError, ConnectionResetError, OSError):
                self._kill()
                return CallResult(CRASHED)
            return CallResult(status, value, error)

    def start(self) -> None:
        """Start the child now, so its imports are paid before the first real call."""
        with self._lock:
            if self._proc is None or self._proc.poll() is not None:
                self._start()

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                try:
                    self._conn.send(None)
                except OSError:
                    pass
            if self._proc is not None:
                try:
                    self._proc.wait(timeout=2)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            self._proc, self._conn = None, None

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


def main() -> None:
    """The child: python -P -c BOOT FD MEMORY_LIMIT [MODULE ...]."""
    _worker_main(Connection(int(sys.argv[1])), int(sys.argv[2]), tuple(sys.argv[3:]))
