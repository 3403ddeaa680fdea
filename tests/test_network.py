"""Where a run listens: loopback only for a local run, unless cluster.bind_all."""
import os
import subprocess
import sys
import time

import psutil
import pytest

from launch.config import load_config
from launch.errors import NetworkError
from launch.network import SINGLE_MACHINE_RAY, actor_env, is_loopback, local_ray, loopback_only, prepare_local_ray
from tests.test_e2e import BIN, REPO, read_metrics, tiny_args


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


@pytest.mark.e2e
def test_a_local_run_listens_on_loopback_only(tiny_model, yes_data, tmp_path):
    """A tiny run with 2 ZeRO-3 ranks (torch rendezvous + gloo), vLLM and a reward actor: every
    socket any of its processes listens on while it runs is bound to a loopback address."""
    run_dir = tmp_path / "run"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", SINGLE_MACHINE_RAY)}
    proc = subprocess.Popen([str(BIN / "forkrl"), "train", *map(str, tiny_args(tiny_model, yes_data, run_dir)),
                             "steps=3", "learner.num_ranks=2", "tracking.wandb_mode=disabled"],
                            cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env={**env, "WANDB_SILENT": "true"})
    root, seen = psutil.Process(proc.pid), set()
    while proc.poll() is None:
        seen |= listeners(root)
        time.sleep(0.2)
    err = proc.stderr.read()
    assert proc.returncode == 0, err[-3000:]
    assert [r["step"] for r in read_metrics(run_dir)] == [1, 2, 3]
    names = {name for name, _, _ in seen}
    # the check saw the run's servers, not an empty list: Ray's own and the learner ranks'
    assert {"gcs_server", "raylet"} <= names, seen
    assert any("LearnerWorker" in n for n in names), seen
    exposed = sorted(s for s in seen if not is_loopback(s[1]))
    assert not exposed, exposed
