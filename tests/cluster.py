"""A real multi-node Ray cluster on this machine, for tests and benches: each node its own raylet,
object store and resources (ray.cluster_utils.Cluster, Ray's own multi-node test harness)."""
from __future__ import annotations

from contextlib import contextmanager
from collections.abc import Iterator


@contextmanager
def local_cluster(nodes: list[dict], object_store_mb: int = 200) -> Iterator[object]:
    """Start one node per entry of `nodes` (e.g. {"num_cpus": 1, "resources": {"gen": 1}}), the
    first as the head; yields the Cluster (its `.address` is what `address=` takes) and shuts every
    node down afterwards. No driver is connected."""
    from ray.cluster_utils import Cluster

    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={**nodes[0], "object_store_memory": object_store_mb * 2**20,
                                      "include_dashboard": False})
    try:
        for spec in nodes[1:]:
            cluster.add_node(**spec, object_store_memory=object_store_mb * 2**20)
        cluster.wait_for_nodes()
        yield cluster
    finally:
        cluster.shutdown()


def actor_nodes(address: str, class_name: str) -> list[str]:
    """The node ids that actors of `class_name` ran on (alive or dead), from Ray's state API."""
    from ray.util.state import list_actors

    return [a.node_id for a in list_actors(address=address, filters=[("class_name", "=", class_name)], detail=True,
                                           limit=1000)]
