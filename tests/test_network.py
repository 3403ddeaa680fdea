"""Where a run listens: loopback only for a local run, unless cluster.bind_all. The end-to-end
check samples the sockets of tests/test_e2e.py's 2-rank async run (run_watching_sockets)."""
import os
import subprocess
import sys
import threading
import time

import psutil
import pytest

from launch.config_load import load_config
from launch.errors import NetworkError
from launch.network import SINGLE_MACHINE_RAY, actor_env, is_loopback, local_ray, loopback_only, prepare_local_ray
from tests.test_e2e import BIN, REPO


@pytest.mark.parametrize("ip, ok", [("127.0.0.1", True), ("127.0.0.5", True), ("::1", True),
                                    ("::ffff:127.0.0.1", True), ("0.0.0.0", False), ("::", False),
                                    ("192.0.2.2", False), ("::ffff:192.0.2.2", False), ("", False)])
def test_is_loopback(ip, ok):
    assert is_loopback(ip) is ok


def test_local_run_is_loopback_only_unless_opened_or_joining(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert loopback_only(load_config(None, []))
    assert not loopback_only(load_config(None, ["cluster.bind_all=true"]))
    assert not local_ray(load_config(None, ["address=auto"]))
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # inside `ray job submit`
    assert not local_ray(load_config(None, []))
    assert actor_env(load_config(None, [])) == {}


def test_actor_env_pins_vllm_and_torch_sockets_to_loopback(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    env = actor_env(load_config(None, []))
    assert env["VLLM_HOST_IP"] == "127.0.0.1"
    lo = env["GLOO_SOCKET_IFNAME"]
    assert env["NCCL_SOCKET_IFNAME"] == lo
    assert any(a.address == "127.0.0.1" for a in psutil.net_if_addrs()[lo])


def test_prepare_refuses_when_ray_was_imported_first(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.delenv(SINGLE_MACHINE_RAY, raising=False)
    monkeypatch.setitem(sys.modules, "ray", object())
    with pytest.raises(NetworkError, match="ray was imported before"):
        prepare_local_ray(load_config(None, []))
    prepare_local_ray(load_config(None, ["cluster.bind_all=true"]))  # nothing to promise: no error
    assert SINGLE_MACHINE_RAY not in os.environ


def listeners(root: psutil.Process) -> set[tuple[str, str, int]]:
    """(process name, address, port) of every listening TCP socket of `root` and its descendants."""
    out = set()
    try:
        procs = [root, *root.children(recursive=True)]
    except psutil.Error:
        return out
    for p in procs:
        try:
            name = p.name()
            out |= {(name, c.laddr.ip, c.laddr.port) for c in p.net_connections(kind="inet")
                    if c.status == psutil.CONN_LISTEN}
        except psutil.Error:  # the process ended between the listing and the look
            pass
    return out


def run_watching_sockets(args: list) -> tuple[int, str, set]:
    """`forkrl train ARGS` as a local run (no RAY_ADDRESS), sampling the listening sockets of all
    its processes every 0.2 s until it ends: (return code, stderr, every socket seen)."""
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", SINGLE_MACHINE_RAY)}
    proc = subprocess.Popen([str(BIN / "forkrl"), "train", *map(str, args)], cwd=REPO, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True, env={**env, "WANDB_SILENT": "true"})
    root, seen = psutil.Process(proc.pid), set()
    err_chunks = []
    reader = threading.Thread(target=lambda: err_chunks.append(proc.stderr.read()), daemon=True)
    reader.start()  # a full stderr pipe would block the run
    while proc.poll() is None:
        seen |= listeners(root)
        time.sleep(0.2)
    reader.join(timeout=30)
    return proc.returncode, "".join(err_chunks), seen


def assert_loopback_only(seen: set) -> None:
    """The sample saw the run's servers (Ray's own and the learner ranks'), all on loopback."""
    names = {name for name, _, _ in seen}
    assert {"gcs_server", "raylet"} <= names, seen
    assert any("LearnerWorker" in n for n in names), seen
    exposed = sorted(s for s in seen if not is_loopback(s[1]))
    assert not exposed, exposed
