"""What the cluster's nodes have free, for the one-line errors of placement and restarts."""
from __future__ import annotations

import ray


def free_per_node() -> str:
    from ray._private.state import available_resources_per_node  # the only per-node view of free resources

    nodes = {n["NodeID"]: n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]}
    parts = []
    for node, free in available_resources_per_node().items():
        shown = {k: round(v, 3) for k, v in free.items() if k in ("CPU", "GPU") or not k.startswith(("node:", "memory",
                                                                                                    "object_store"))}
        parts.append(f"{nodes.get(node, node[:8])} {shown}")
    return "; ".join(parts) or "no live node"
