"""Which network addresses a run listens on.

A local run (no `address`, no RAY_ADDRESS) keeps every listener on loopback unless
`cluster.bind_all=true`: Ray's GCS, raylet, workers and agents, the learner ranks' torch.distributed
rendezvous and collectives, and vLLM's own process group. A run that joins a cluster uses the
node's cluster address, as Ray does.

How, with each library's own switches (nothing in Ray is patched):
- Ray binds its servers to the node's IP, but `ray.init` turns a loopback `_node_ip_address` into
  the machine's outward IP, except where Ray runs in single-machine mode (its default on macOS and
  Windows), chosen by RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0. Ray reads that variable once, when it is
  imported, so `prepare_local_ray` must run before the first `import ray`; launch/cli.py does
  that. Ray's worker processes inherit it.
- torch.distributed: its TCP store listens on every interface whatever host it is given, so the
  learner ranks of a local run meet through a file store (`file_rendezvous`), and
  GLOO_SOCKET_IFNAME / NCCL_SOCKET_IFNAME put gloo's and NCCL's pair sockets on loopback.
- vLLM: VLLM_HOST_IP is the address its process group uses.

This module imports nothing from Ray at import time, for the reason above.
"""
from __future__ import annotations

import ipaddress
import os
import sys
import tempfile
import uuid
from pathlib import Path

from launch.errors import NetworkError

SINGLE_MACHINE_RAY = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's node IP may be loopback
LOOPBACK = "127.0.0.1"


def local_ray(cfg) -> bool:
    """Whether this run starts its own Ray instance rather than joining a cluster."""
    return not cfg.address and not os.environ.get("RAY_ADDRESS")


def loopback_only(cfg) -> bool:
    return local_ray(cfg) and not cfg.cluster.bind_all


def is_loopback(ip: str) -> bool:
    try:
        addr = ipaddress.ip_address(ip)
    except ValueError:
        return False
    mapped = getattr(addr, "ipv4_mapped", None)  # '::ffff:127.0.0.1' on a dual-stack socket
    return (mapped or addr).is_loopback


def prepare_local_ray(cfg) -> None:
    """Before Ray is imported: put a local Ray instance's node address on loopback."""
    if not loopback_only(cfg) or os.environ.get(SINGLE_MACHINE_RAY) == "0":
        return
    if "ray" in sys.modules:  # too late: Ray has already read the variable
        raise NetworkError(
            "ray was imported before forkrl could keep the local Ray instance on loopback: call "
            "launch.cli.train before importing ray, set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0 before it, "
            "or set cluster.bind_all=true to listen on every interface")
    os.environ[SINGLE_MACHINE_RAY] = "0"


def start_ray(cfg, log_to_driver: bool) -> None:
    """Join the configured cluster, or start a fresh local Ray of our own ("local": never a head
    found in /tmp/ray; `address=auto` joins that), and check where a local one listens."""
    import ray

    ray.init(address=cfg.address or ("local" if local_ray(cfg) else None), ignore_reinit_error=True,
             log_to_driver=log_to_driver, include_dashboard=cfg.cluster.dashboard if local_ray(cfg) else None)
    check_node_address(cfg)


def check_node_address(cfg) -> None:
    """After ray.init: a loopback-only run must have a loopback node address, or it stops here."""
    import ray

    ip = ray.util.get_node_ip_address()
    if loopback_only(cfg) and not is_loopback(ip):
        ray.shutdown()
        raise NetworkError(
            f"the local Ray instance took node address {ip}, not loopback: Ray was imported before "
            "launch.cli.train could set RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0; set it yourself or set cluster.bind_all=true")


def loopback_interface() -> str:
    """The name of the interface holding 127.0.0.1 ('lo' on Linux, 'lo0' on macOS)."""
    import psutil

    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address == LOOPBACK for a in addrs):
            return name
    raise NetworkError("no network interface holds 127.0.0.1; set cluster.bind_all=true to use the others")


def actor_env(cfg) -> dict[str, str]:
    """Environment for actors that open sockets of their own (vLLM, torch.distributed)."""
    if not loopback_only(cfg):
        return {}
    lo = loopback_interface()
    return {"VLLM_HOST_IP": LOOPBACK, "GLOO_SOCKET_IFNAME": lo, "NCCL_SOCKET_IFNAME": lo}


def file_rendezvous() -> str:
    """A torch init_method URL for ranks that share this machine: a fresh file, no socket. Named
    by the driver's pid, so that the driver can remove its own (remove_rendezvous_files)."""
    return f"file://{tempfile.gettempdir()}/forkrl-rendezvous-{os.getpid()}-{uuid.uuid4().hex}"


def remove_rendezvous_files() -> None:
    """Delete this driver's rendezvous files once its ranks are gone: torch's FileStore removes
    its file only when every rank exits cleanly, and Ray's shutdown kills them."""
    for path in Path(tempfile.gettempdir()).glob(f"forkrl-rendezvous-{os.getpid()}-*"):
        path.unlink(missing_ok=True)
