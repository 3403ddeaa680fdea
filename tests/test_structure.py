"""The tree's shape: the process-boundary folders import only downward, and no module imports
itself through others (lazy imports inside functions count: they are the usual way back in)."""
from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("actors", "learner", "rewards", "envs", "launch")
# What each folder may import from the others: launch -> actors -> envs -> rewards, and learner
# (the floors; envs runs tool calls in the rewards sandbox).
ALLOWED = {"launch": {"actors", "learner", "rewards", "envs"}, "actors": {"learner", "rewards", "envs"},
           "envs": {"rewards"}, "learner": set(), "rewards": set()}


def module_imports() -> dict[str, set[str]]:
    """module -> the project modules it imports, anywhere in its body."""
    modules = {".".join(p.relative_to(REPO).with_suffix("").parts): p
               for pkg in PACKAGES for p in (REPO / pkg).glob("*.py") if p.name != "__init__.py"}
    graph = {}
    for name, path in modules.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                targets = [node.module] + [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            else:
                continue
            found |= {t for t in targets if t in modules and t != name}
        graph[name] = found
    return graph


def test_no_import_circles():
    graph = module_imports()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(m: str) -> None:
        state[m] = 1
        path.append(m)
        for n in sorted(graph[m]):
            assert state.get(n) != 1, "import circle: " + " -> ".join(path[path.index(n):] + [n])
            if n not in state:
                visit(n)
        path.pop()
        state[m] = 2

    for m in sorted(graph):
        if m not in state:
            visit(m)


def test_folders_import_only_downward():
    bad = [(m, n) for m, deps in module_imports().items() for n in deps
           if n.split(".")[0] != m.split(".")[0] and n.split(".")[0] not in ALLOWED[m.split(".")[0]]]
    assert not bad, bad
