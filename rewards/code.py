"""Code rewards: run a Python solution against test cases in a sandboxed subprocess.

The ground truth is JSON, either stdin/stdout cases `{"tests": [{"input": "...", "output": "..."}]}`
or assertions `{"asserts": ["assert f(2) == 4", ...]}`. The reward is the fraction passed.

Layers of the sandbox (each one alone would stop most escapes; together they fail closed):
- a fresh temporary directory as cwd, removed afterwards; `python -I -S` (no env, no site);
- rlimits: CPU seconds, address space, file size, open files, processes;
- a wall-clock kill of the whole process group (and `timeout -s KILL` in case our parent dies);
- a network namespace with no interfaces (`unshare --net`) and, when we are root, the
  unprivileged `nobody` user, where the machine allows both;
- inside the child, a Python audit hook, installed before the solution runs and impossible to
  remove, that refuses sockets, subprocesses, fork/exec, ctypes and writes outside the directory;
- stdout is read up to a cap; anything larger fails the test.
"""
from __future__ import annotations

import functools
import json
import os
import re
import resource
import select
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from rewards.result import Status

_CODE_BLOCK = re.compile(r"```(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL)
_BOOT = Path(__file__).with_name("_sandbox_boot.py")
NOBODY = 65534


@dataclass(frozen=True)
class SandboxLimits:
    timeout_s: float = 2.0  # wall clock per run
    memory_mb: int = 512  # address space
    output_bytes: int = 1 << 20  # stdout cap
    file_bytes: int = 1 << 20  # largest file the solution may write
    max_procs: int = 64  # processes of the sandbox user (fork-bomb bound)


def extract_code(response: str) -> str | None:
    """The last fenced code block (```python ... ```), or None."""
    blocks = _CODE_BLOCK.findall(response.replace("\x00", ""))
    return blocks[-1] if blocks else None


@functools.lru_cache(maxsize=1)
def _isolation_prefix() -> tuple[str, ...]:
    """Command prefix giving a fresh network namespace (and `nobody` when root), if this machine allows."""
    candidates = []
    if os.geteuid() == 0:
        candidates.append(("unshare", "--net", "--", "setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}",
                           "--clear-groups", "--"))
    candidates.append(("unshare", "--map-root-user", "--net", "--"))
    for prefix in candidates:
        if shutil.which(prefix[0]) is None:
            continue
        try:
            if subprocess.run([*prefix, "true"], capture_output=True, timeout=10).returncode == 0:
                return prefix
        except (OSError, subprocess.TimeoutExpired):
            continue
    return ()


def _limit(limits: SandboxLimits):
    def apply() -> None:  # runs in the child between fork and exec
        cpu = int(limits.timeout_s) + 1
        resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
        mem = limits.memory_mb * 2**20
        resource.setrlimit(resource.RLIMIT_AS, (mem, mem))
        resource.setrlimit(resource.RLIMIT_FSIZE, (limits.file_bytes, limits.file_bytes))
        resource.setrlimit(resource.RLIMIT_NOFILE, (64, 64))
        resource.setrlimit(resource.RLIMIT_NPROC, (limits.max_procs, limits.max_procs))
        resource.setrlimit(resource.RLIMIT_CORE, (0, 0))

    return apply


@dataclass(frozen=True)
class RunResult:
    status: str  # ok | error | timeout | output_limit
    stdout: str


def run_sandboxed(code: str, stdin: str, limits: SandboxLimits) -> RunResult:
    """Run `code` as a script with `stdin`; never raises for anything the code does."""
    workdir = Path(tempfile.mkdtemp(prefix="forkrl-sbx-"))
    try:
        (workdir / "solution.py").write_text(code)
        prefix = _isolation_prefix()
        if prefix and "setpriv" in prefix:
            os.chown(workdir, NOBODY, NOBODY)
        kill_after = f"{limits.timeout_s + 2:.1f}"
        cmd = ["timeout", "-s", "KILL", kill_after, *prefix, sys.executable, "-I", "-S", str(_BOOT),
               str(workdir), "solution.py"]
        proc = subprocess.Popen(cmd, cwd=workdir, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.DEVNULL, preexec_fn=_limit(limits), start_new_session=True,
                                env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"})
        try:
            status, out = _drive(proc, stdin.encode(), limits)
        finally:
            _kill_group(proc)  # also reaps anything the solution left behind in its session
        return RunResult(status if status != "exited" else ("ok" if proc.returncode == 0 else "error"),
                         out.decode(errors="replace"))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _drive(proc: subprocess.Popen, stdin: bytes, limits: SandboxLimits) -> tuple[str, bytes]:
    """Feed stdin, read stdout up to the cap before the deadline: ("exited"|"timeout"|"output_limit", out)."""
    feeder = threading.Thread(target=_feed, args=(proc.stdin, stdin), daemon=True)
    feeder.start()
    deadline = time.monotonic() + limits.timeout_s
    out = bytearray()
    fd = proc.stdout.fileno()
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return "timeout", b""
        ready, _, _ = select.select([fd], [], [], left)
        if not ready:
            continue
        chunk = os.read(fd, 1 << 16)
        if not chunk:
            break
        out += chunk
        if len(out) > limits.output_bytes:
            return "output_limit", b""
    try:
        proc.wait(timeout=max(deadline - time.monotonic(), 0.01))
    except subprocess.TimeoutExpired:
        return "timeout", b""
    return "exited", bytes(out)


def _feed(pipe, data: bytes) -> None:
    try:
        pipe.write(data)
        pipe.close()
    except OSError:  # the solution exited or closed stdin without reading it all
        pass


def _kill_group(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, 9)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()
    proc.stdout.close()


def _same_output(got: str, want: str) -> bool:
    norm = lambda s: [line.rstrip() for line in s.strip().splitlines()]  # noqa: E731
    return norm(got) == norm(want)


def score_code(response: str, ground_truth: str, limits: SandboxLimits = SandboxLimits()) -> tuple[float, str]:
    """(fraction of tests passed, status). Bad ground truth raises ValueError naming the problem."""
    try:
        spec = json.loads(ground_truth)
    except json.JSONDecodeError as e:
        raise ValueError(f"code ground truth is not JSON ({e.msg})") from None
    if not isinstance(spec, dict) or not ({"tests", "asserts"} & spec.keys()):
        raise ValueError("code ground truth needs a 'tests' or 'asserts' list")
    code = extract_code(response)
    if code is None:
        return 0.0, "no_answer"
    if "asserts" in spec:
        asserts = spec["asserts"]
        passed = 0
        for a in asserts:  # one run each, so one failing assert does not hide the others
            res = run_sandboxed(code + "\n\n" + str(a) + "\n", "", limits)
            passed += res.status == "ok"
        total = len(asserts)
    else:
        tests = spec["tests"]
        passed = sum(
            (r := run_sandboxed(code, str(t.get("input", "")), limits)).status == "ok" and _same_output(r.stdout, str(t["output"]))
            for t in tests
        )
        total = len(tests)
    if total == 0:
        raise ValueError("code ground truth has no test cases")
    frac = passed / total
    return frac, Status.CORRECT if frac == 1.0 else Status.WRONG
