"""Runs inside the sandbox child (python -I -S): install a permanent audit hook, then the solution.

Audit hooks cannot be removed once added, so the solution cannot switch this off. The hook is one
layer of several (see rewards/code.py); the OS limits hold even if it were bypassed.
"""
import os
import runpy
import sys

WORKDIR = os.path.realpath(sys.argv[1])
SCRIPT = sys.argv[2]
READABLE = tuple({os.path.realpath(p) for p in (sys.base_prefix, sys.prefix, sys.exec_prefix)}) + (WORKDIR, "/dev/null", "/dev/urandom")
DENIED = {
    "socket.__new__", "socket.connect", "socket.bind", "socket.getaddrinfo", "socket.sendto",
    "subprocess.Popen", "os.system", "os.exec", "os.posix_spawn", "os.spawn", "os.fork", "os.forkpty",
    "os.kill", "os.killpg", "ctypes.dlopen", "ctypes.dlsym", "ctypes.cdata", "os.startfile", "pty.spawn",
}
MUTATING = {"os.remove", "os.rename", "os.rmdir", "os.mkdir", "os.chmod", "os.chown", "os.symlink",
            "os.link", "os.truncate", "os.utime", "shutil.rmtree", "os.chdir"}
LISTING = {"os.listdir", "os.scandir"}  # the import system lists stdlib folders
WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC


def _inside(path, roots) -> bool:
    if isinstance(path, int):
        return True  # an already-open descriptor
    try:
        real = os.path.realpath(os.fsdecode(path) if not isinstance(path, str) else path)
    except (TypeError, ValueError):
        return False
    return any(real == r or real.startswith(r.rstrip("/") + "/") for r in roots)


def hook(event, args):
    if event in DENIED:
        raise PermissionError(f"sandbox: {event} is not allowed")
    if event == "import" and args and str(args[0]).split(".")[0] in ("ctypes", "_ctypes"):
        raise PermissionError("sandbox: ctypes is not allowed")
    if event == "open":
        path, mode, flags = args[0], args[1], args[2] or 0
        writes = (mode is not None and any(c in str(mode) for c in "wax+")) or (flags & WRITE_FLAGS)
        if not _inside(path, (WORKDIR,) if writes else READABLE):
            raise PermissionError(f"sandbox: cannot {'write' if writes else 'read'} {path!r}")
    elif event in MUTATING or event in LISTING:
        roots = (WORKDIR,) if event in MUTATING else READABLE
        for a in args[:2]:
            if isinstance(a, (str, bytes, os.PathLike)) and not _inside(a, roots):
                raise PermissionError(f"sandbox: {event} outside the sandbox directory")


os.chdir(WORKDIR)
sys.argv = [SCRIPT]
sys.addaudithook(hook)
runpy.run_path(SCRIPT, run_name="__main__")
