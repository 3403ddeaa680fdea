"""What the cluster's nodes have free, for the one-line errors of placement and restarts."""
from __future__ import annotations

import ray


def free_per_node() -> str:
    """'address:id {'CPU': free, ...}' per live node, '; '-joined."""
    from ray._private.state import available_resources_per_node  # the only per-node view of free resources

    # address:id, as the placement log line names nodes (several nodes can share one address)
    nodes = {n["NodeID"]: n["NodeManagerAddress"] + ":" + n["NodeID"][:6] for n in ray.nodes() if n["Alive"]}
    parts = []
    for node, free in available_resources_per_node().items():
        shown = {k: round(v, 3) for k, v in free.items() if k in ("CPU", "GPU") or not k.startswith(
            ("node:", "memory", "object_store", "bundle_group"))}
        parts.append(f"{nodes.get(node, node[:8])} {shown}")
    return "; ".join(parts) or "no live node"
