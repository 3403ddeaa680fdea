"""The rollout record (runs/NAME/rollouts/step_N.jsonl) and the wandb completions table's rows,
filled in from the rollout batches in the object store.

`write_records` runs as a Ray task on the driver's node (launch/groups.py pins it there: the run
directory is the driver's), so the responses' text goes from the generators' object stores to
that node's without passing through the driver process.
"""
from __future__ import annotations

import json
from pathlib import Path

from launch.atomic import write_atomic


def fill_records(rows: list[dict], rollouts: tuple) -> list[dict]:
    """`rows` (launch.rollouts.Group.records) with each response's text, and multi-turn its turns,
    read from rollouts[part] at the row its `_src` names."""
    out = []
    for row in rows:
        row = dict(row)
        part, i = row.pop("_src")
        batch = rollouts[part]
        row["response"] = batch.response_text[i]
        if batch.turns is not None:
            row["turns"] = [{"model": t.text, "output": t.output, "tool": t.tool, "end": t.end} for t in batch.turns[i]]
        out.append(row)
    return out


def write_records(path: str | None, rows: list[dict], keep: int, *rollouts) -> list[dict]:
    """Write the filled rows to `path` (whole, then renamed; None: no file) and return the first
    `keep` of them (the completions table; 0: none)."""
    records = fill_records(rows, rollouts)
    if path is not None:
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(out, "".join(json.dumps(r) + "\n" for r in records))
    return records[:keep]
