"""Running model-written code, isolated by the operating system (bubblewrap).

Each run gets its own user, mount, PID, IPC, UTS, cgroup and network namespaces; a read-only view
of the interpreter and the system libraries it loads, and nothing else of this machine (no
trainer files, no /tmp, no Unix socket); a private writable /sandbox of `disk_mb` in memory,
which disappears with the namespace; and per-sandbox limits: processes and threads (RLIMIT_NPROC
counted inside its own user namespace, or, for root, whose count the kernel never limits, a pids
cgroup), address space, CPU seconds, file size, open files, stdout bytes and wall-clock time.
Every process it starts dies with it: killing the sandbox's bwrap ends its PID namespace.

`isolation="none"` (reward.code_isolation=none) runs the same harness without bubblewrap, as the
trainer's user with network: an explicit opt-out for machines without user namespaces, warned
about at every start. There is no silent fallback.
"""
from __future__ import annotations

import functools
import logging
import os
import resource
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

HARNESS = Path(__file__).with_name("_sandbox_harness.py")
Isolation = Literal["bwrap", "none"]  # reward.code_isolation


class IsolationError(RuntimeError):
    """The sandbox cannot be had on this machine; the message names what is missing."""


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 2.0  # wall clock per test (a probe run: per probed value)
    memory_mb: int = 512  # address space per process
    output_bytes: int = 1 << 20  # stdout cap
    file_bytes: int = 1 << 20  # largest file the solution may write
    disk_mb: int = 16  # its private writable directory, in memory
    max_procs: int = 32  # processes and threads of one sandbox (fork-bomb bound)
    isolation: Isolation = "bwrap"


@dataclass(frozen=True)
class RunResult:
    status: str  # ok (exit 0) | error (other exit) | timeout | output_limit
    stdout: str = ""
    lines: tuple[str, ...] = ()  # what the harness wrote to its result channel, line by line


def interpreter() -> tuple[str, str]:
    """(the real interpreter binary, its installation prefix): the sandbox runs the base Python
    with -I -S, so neither a venv nor site-packages is needed inside."""
    exe = os.path.realpath(sys.executable)
    return exe, os.path.realpath(sys.base_prefix)


def _ro_binds() -> list[str]:
    exe, prefix = interpreter()
    dirs = [d for d in ("/usr", "/lib", "/lib64", "/lib32", "/bin") if os.path.isdir(d)]
    dirs += [p for p in (prefix, os.path.dirname(exe)) if not any(p == d or p.startswith(d + "/") for d in dirs)]
    out = []
    for d in dirs:
        out += ["--ro-bind", d, d]
    return out


def _bwrap_prefix(limits: SandboxLimits, files: dict[str, int]) -> list[str]:
    """bwrap's command up to the program. `files`: sandbox path -> fd whose content becomes that file."""
    cmd = [shutil.which("bwrap") or "bwrap", "--unshare-all", "--die-with-parent", "--new-session", "--cap-drop", "ALL",
           "--uid", "65534", "--gid", "65534", "--hostname", "sandbox", *_ro_binds(),
           "--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp",
           "--size", str(limits.disk_mb << 20), "--tmpfs", "/sandbox", "--dir", "/job",
           "--ro-bind", str(HARNESS), "/job/harness.py"]
    for path, fd in files.items():
        cmd += ["--ro-bind-data" if path.startswith("/job/") else "--file", str(fd), path]
    return cmd + ["--chdir", "/sandbox"]


@functools.lru_cache(maxsize=1)
def _pids_root() -> Path | None:
    """Where this process may create a pids cgroup per sandbox (root only: cgroup v1's pids
    hierarchy, or v2), or None."""
    if os.geteuid() != 0:
        return None
    for root in (Path("/sys/fs/cgroup/pids"), Path("/sys/fs/cgroup")):
        if (root / "cgroup.procs").is_file() and os.access(root, os.W_OK):
            probe = root / f"forkrl-probe-{uuid.uuid4().hex[:8]}"
            try:
                probe.mkdir()
                usable = (probe / "pids.max").is_file()
                probe.rmdir()
            except OSError:
                continue
            if usable:
                return root
    return None


def check_isolation(isolation: Isolation, key: str = "reward.code_isolation") -> None:
    """Refuse to start a run that cannot isolate model-written code (one line naming what is
    missing); warn at every start when isolation is turned off. `key`: the config key that chose it."""
    if isolation == "none":
        logger.warning(f"{key}=none: model-written code runs unisolated, as this user, with "
                       "network and this machine's files in reach; use it only where nothing else is at stake")
        return
    if shutil.which("bwrap") is None:
        raise IsolationError("model-written code runs under bubblewrap, which is not installed: install it "
                             f"(Debian/Ubuntu: apt-get install bubblewrap), or set {key}=none to run it unisolated")
    res = run("pass", "", SandboxLimits(timeout_s=30.0), mode="script")
    if res.status != "ok":
        why = _last_bwrap_error()
        raise IsolationError(f"bubblewrap cannot create its namespaces here ({why}): allow unprivileged user "
                             "namespaces (sysctl kernel.unprivileged_userns_clone=1, or a container run with "
                             f"--security-opt seccomp=unconfined), or set {key}=none")
    if os.geteuid() == 0 and _pids_root() is None:
        logger.warning("code sandbox: running as root without a writable pids cgroup, so the kernel will not "
                       "bound a sandbox's processes (it never limits root's); they are bounded by time only")


def _last_bwrap_error() -> str:
    exe, _ = interpreter()
    res = subprocess.run([*_bwrap_prefix(SandboxLimits(), {}), exe, "-I", "-S", "-c", "pass"], capture_output=True,
                         text=True, timeout=30)
    return (res.stderr.strip().splitlines() or [f"exit {res.returncode}"])[-1]


def run(code: str, stdin: str, limits: SandboxLimits, mode: str = "script", exprs: str | None = None,
        expr_count: int = 0) -> RunResult:
    """Run the harness on `code` in a fresh sandbox; never raises for anything the code does.
    mode "script": `code` is the program, `stdin` its input; "tool": the same, and an exception
    it raises ends stdout with its last traceback line. "probe"/"judge": `exprs` (JSON) is
    what to evaluate, `expr_count` how many result lines to wait for, each within timeout_s."""
    exe, _ = interpreter()
    r_out, w_out = os.pipe()
    data = {"/sandbox/solution.py": code}
    if exprs is not None:
        data["/job/exprs.json"] = exprs
    fds = {path: _data_fd(text) for path, text in data.items()}
    # + bwrap's PID-1 helper and the harness itself
    args = [mode, str(limits.max_procs + 2)] + ([str(w_out)] if mode not in ("script", "tool") else [])
    if limits.isolation == "none":
        workdir = Path(tempfile.mkdtemp(prefix="forkrl-sbx-"))
        cmd, cwd = [exe, "-I", "-S", str(_unisolated_harness(workdir, data)), *args], workdir
    else:
        workdir = None
        cmd, cwd = [*_bwrap_prefix(limits, fds), exe, "-I", "-S", "/job/harness.py", *args], "/"
    cgroup = _new_cgroup(limits.max_procs)
    try:
        proc = subprocess.Popen(cmd, cwd=cwd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, pass_fds=(w_out, *fds.values()), start_new_session=True,
                                preexec_fn=_limiter(limits, expr_count, cgroup), env={"PATH": "/usr/bin:/bin",
                                                                                      "LANG": "C.UTF-8"})
    finally:
        os.close(w_out)
        for fd in fds.values():
            os.close(fd)
    try:
        return _drive(proc, stdin.encode(), r_out, limits, expr_count, mode)
    finally:
        _end(proc, cgroup)
        os.close(r_out)
        if workdir is not None:
            _remove(workdir)


def _data_fd(text: str) -> int:
    """A readable fd holding `text` (bwrap copies it into the sandbox), from an unlinked file."""
    with tempfile.TemporaryFile() as f:
        f.write(text.encode())
        f.flush()
        f.seek(0)
        return os.dup(f.fileno())


def _unisolated_harness(workdir: Path, data: dict[str, str]) -> Path:
    """isolation=none: the harness reads /sandbox and /job; give it its own copy pointing at workdir."""
    src = HARNESS.read_text().replace('"/sandbox/', f'"{workdir}/').replace('"/job/', f'"{workdir}/')
    for path, text in data.items():
        (workdir / Path(path).name).write_text(text)
    (workdir / "harness.py").write_text(src)
    return workdir / "harness.py"


def _limiter(limits: SandboxLimits, expr_count: int, cgroup: Path | None):
    def apply() -> None:  # in the child, between fork and exec: bwrap and everything under it inherit these
        if cgroup is not None:
            (cgroup / "cgroup.procs").write_text(str(os.getpid()))
        cpu = int(limits.timeout_s * max(expr_count, 1)) + 2
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        mem = limits.memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


def _new_cgroup(max_procs: int) -> Path | None:
    root = _pids_root()
    if root is None:
        return None
    group = root / f"forkrl-sbx-{uuid.uuid4().hex}"
    try:
        group.mkdir()
        (group / "pids.max").write_text(str(max_procs + 2))  # + bwrap and its PID-1 helper
    except OSError:
        return None
    return group


def _drive(proc: subprocess.Popen, stdin: bytes, r_out: int, limits: SandboxLimits, expr_count: int,
           mode: str) -> RunResult:
    """Feed stdin; read stdout (script) or result lines (probe, judge) until exit, the output cap
    or the deadline, which a result line moves on by timeout_s."""
    threading.Thread(target=_feed, args=(proc.stdin, stdin), daemon=True).start()
    deadline = time.monotonic() + limits.timeout_s
    out, results, pending = bytearray(), [], b""
    fds = {proc.stdout.fileno(), r_out}
    while fds:
        left = deadline - time.monotonic()
        if left <= 0:
            return RunResult("timeout", "", tuple(results))
        ready, _, _ = select.select(list(fds), [], [], left)
        for fd in ready:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                fds.discard(fd)
                continue
            if fd == r_out:
                pending += chunk
                *done, pending = pending.split(b"\n")
                results += [x.decode(errors="replace") for x in done]
                if done:
                    deadline = time.monotonic() + limits.timeout_s
                if len(results) >= expr_count or any(x.startswith(b'{"setup_error"') for x in done):
                    return RunResult("ok", "", tuple(results))  # all answered: what it does next is moot
                if len(pending) > limits.output_bytes:
                    return RunResult("output_limit", "", tuple(results))
            else:
                out += chunk
                if len(out) > limits.output_bytes:
                    return RunResult("output_limit", "", tuple(results))
    try:
        proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
    except subprocess.TimeoutExpired:
        return RunResult("timeout", "", tuple(results))
    return RunResult("ok" if proc.returncode == 0 else "error", out.decode(errors="replace"), tuple(results))


def _feed(pipe, data: bytes) -> None:
    try:
        pipe.write(data)
        pipe.close()
    except OSError:  # the solution exited or closed stdin without reading it all
        pass


def _end(proc: subprocess.Popen, cgroup: Path | None) -> None:
    """Kill the sandbox and everything in it. bwrap's death ends its PID namespace, and with it
    every process there, setsid'd or double-forked ones too; the cgroup is emptied and removed."""
    try:
        os.killpg(proc.pid, 9)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    proc.stdout.close()
    if cgroup is not None:
        for _ in range(100):
            pids = (cgroup / "cgroup.procs").read_text().split()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(int(pid), 9)
                except (ProcessLookupError, PermissionError):
                    pass
            time.sleep(0.01)
        try:
            cgroup.rmdir()
        except OSError:
            pass


def _remove(workdir: Path) -> None:
    """isolation=none: remove the directory even where the solution took away its permissions."""
    for root, dirs, _ in os.walk(workdir):
        for d in dirs:
            try:
                os.chmod(os.path.join(root, d), 0o700)
            except OSError:
                pass
    try:
        os.chmod(workdir, 0o700)
    except OSError:
        pass
    shutil.rmtree(workdir, ignore_errors=True)
