"""Code rewards: run a Python solution against test cases in the sandbox (rewards/sandbox.py).

The ground truth is JSON, either stdin/stdout cases `{"tests": [{"input": "...", "output": "..."}]}`
or assertions `{"asserts": ["assert f(2) == 4", ...]}`. The reward is the fraction passed.

Verdicts are decided where the solution cannot reach them:
- stdin/stdout: one sandboxed run per case; this process compares the output (and wants exit 0).
- asserts: each assert is split here (by parsing it, never running it) into *probes*, the
  outermost expressions rooted at a name of the solution's (`f(2)` in `abs(f(2) - 4) < 1e-9`),
  and the rest, which holds the expected values. Builtins and standard-library modules are always
  the judge's, even where the solution rebinds them. One sandbox runs the solution as a module named
  `solution` (so an `if __name__ == "__main__":` block does not run) and evaluates the probes; their
  values come back as plain data of exact built-in types. A second sandbox, the judge, which never
  runs solution code, evaluates each assert with those values in place. So an early exit, a
  patched builtin or an object with a forged `__eq__` earns nothing: the solution never sees an
  expected value, and nothing it defines reaches the judge.
- The rule for asserts that cannot be split that way: an assert must be one `assert EXPR`
  statement, it must call at least one name of the solution's (`assert max([1, 5]) == 5` checks
  only the judge's builtin, so any code would pass it), and no probe may use a name bound inside
  the assert (a comprehension's or lambda's variable). Other asserts are refused as bad ground
  truth, naming the assert; the driver checks every row before any actor starts.
- A probe value nested deeper than MAX_VALUE_DEPTH fails its assert: the judge could not be sent it.
A test that runs out of time fails; the response then scores what it passed, with status
`timeout` (a wrong answer for its own reason, trained on like any wrong answer).
"""
from __future__ import annotations

import ast
import builtins
import json
import re
import sys

from rewards.result import Status
from rewards.sandbox import SandboxLimits, run

_CODE_BLOCK = re.compile(r"```(?:python|py|python3)?[ \t]*\n(.*?)```", re.DOTALL)
_BUILTINS = frozenset(dir(builtins))
_STDLIB = frozenset(sys.stdlib_module_names)


def extract_code(response: str) -> str | None:
    """The last fenced code block (```python ... ```), or None."""
    blocks = _CODE_BLOCK.findall(response.replace("\x00", ""))
    return blocks[-1] if blocks else None


def _root_name(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


class _Split(ast.NodeTransformer):
    """Replaces each outermost expression rooted at a solution name by a placeholder name. Every
    name is the solution's except builtins and standard-library modules, which the judge provides
    (always: a solution that rebinds `abs` must not decide `abs(f(2) - 4) < 1e-9`), and the names
    the assert binds itself (`local`)."""

    def __init__(self, local: set[str]):
        self.local = local
        self.probes: list[str] = []

    def _is_solution(self, name: str | None) -> bool:
        return name is not None and name not in self.local and name not in _BUILTINS and name not in _STDLIB

    def visit(self, node):
        if isinstance(node, (ast.Name, ast.Attribute, ast.Subscript, ast.Call)) and \
                not isinstance(getattr(node, "ctx", None), ast.Store) and self._is_solution(_root_name(node)):
            self.probes.append(ast.unparse(node))
            return ast.copy_location(ast.Name(id=f"__probe_{len(self.probes) - 1}", ctx=ast.Load()), node)
        return self.generic_visit(node)


def split_assert(test: str) -> tuple[str, list[str], list[str]]:
    """(judge expression with __probe_k placeholders, probe expressions, stdlib modules it names).
    Raises ValueError for an assert outside the rule in the module docstring."""
    try:
        tree = ast.parse(test)
    except SyntaxError as e:
        raise ValueError(f"code ground truth: assert {test[:80]!r} is not Python ({e.msg})") from None
    if len(tree.body) != 1 or not isinstance(tree.body[0], ast.Assert):
        raise ValueError(f"code ground truth: {test[:80]!r} is not one assert statement")
    expr = tree.body[0].test
    local = {n.id for n in ast.walk(expr) if isinstance(n, ast.Name) and isinstance(n.ctx, ast.Store)}
    local |= {a.arg for n in ast.walk(expr) if isinstance(n, ast.Lambda) for a in ast.walk(n.args)
              if isinstance(a, ast.arg)}
    splitter = _Split(local)
    judged = splitter.visit(expr)
    for probe in splitter.probes:
        used = {n.id for n in ast.walk(ast.parse(probe, mode="eval")) if isinstance(n, ast.Name)}
        if used & local:
            raise ValueError(f"code ground truth: assert {test[:80]!r} calls the solution with a name bound "
                             "inside the assert; write one assert per case")
    if not splitter.probes:  # it would check nothing of the solution's, so any code would pass it
        raise ValueError(f"code ground truth: assert {test[:80]!r} calls no name of the solution's (builtins and "
                         "standard-library names are always the judge's): rename the solution's function")
    names = {n.id for n in ast.walk(judged) if isinstance(n, ast.Name)}
    return ast.unparse(judged), splitter.probes, sorted(names & _STDLIB)


def check_ground_truth(ground_truth: str) -> None:
    """Raise ValueError naming the problem if `ground_truth` is not a code spec this module can judge
    (see the module docstring). Runs nothing: the driver checks every row with it before training."""
    _read_spec(ground_truth)


def _read_spec(ground_truth: str) -> tuple[list, list | None]:
    """(test cases, each assert split by split_assert, or None for stdin/stdout tests); ValueError
    naming the problem for a spec this module cannot judge."""
    try:
        spec = json.loads(ground_truth)
    except json.JSONDecodeError as e:
        raise ValueError(f"code ground truth is not JSON ({e.msg})") from None
    if not isinstance(spec, dict) or not ({"tests", "asserts"} & spec.keys()):
        raise ValueError("code ground truth needs a 'tests' or 'asserts' list")
    cases = spec.get("asserts", spec.get("tests"))
    if not isinstance(cases, list) or not cases:
        raise ValueError("code ground truth has no test cases")
    if "asserts" in spec:
        return cases, [split_assert(str(a)) for a in cases]
    if not all(isinstance(t, dict) and "output" in t for t in cases):
        raise ValueError("code ground truth: each of 'tests' needs an 'output'")
    return cases, None


# A probe's value as the solution reported it is nested at most this deep. The judge's request
# nests each value two levels deeper, and json's encoder recurses: a value just shallow enough to
# read back could make the request raise, and an error leaves a wrong solution out of training.
MAX_VALUE_DEPTH = 100


def _shallow(value: object, limit: int = MAX_VALUE_DEPTH) -> bool:
    todo = [(value, 0)]
    while todo:
        v, d = todo.pop()
        if d > limit:
            return False
        if isinstance(v, dict):
            todo.extend((x, d + 1) for x in v.values())
        elif isinstance(v, list):
            todo.extend((x, d + 1) for x in v)
    return True


def _assert_results(code: str, split: list[tuple[str, list[str], list[str]]],
                    limits: SandboxLimits) -> tuple[int, bool]:
    """(asserts passed, whether a run ran out of time); `split`: each assert as split_assert gives it."""
    probes = [p for _, ps, _ in split for p in ps]
    probe_run = run(code, "", limits, mode="probe", exprs=json.dumps(probes), expr_count=len(probes))
    values: dict[int, object] = {}
    for line in probe_run.lines:
        try:
            msg = json.loads(line)
        except (ValueError, RecursionError):  # whatever the solution wrote there is data, and may be junk
            continue
        if isinstance(msg, dict) and isinstance(msg.get("i"), int) and "value" in msg and msg["i"] not in values:
            values[msg["i"]] = msg["value"]  # the first answer for a probe counts (too deep: it fails)
    values = {i: v for i, v in values.items() if _shallow(v)}
    tests, k, judgeable = [], 0, []
    for t, (expr, ps, modules) in enumerate(split):
        ids = range(k, k + len(ps))
        k += len(ps)
        if all(i in values for i in ids):  # a probe that raised or never came fails its assert
            judgeable.append(t)
            tests.append({"expr": expr, "modules": modules, "values": {f"__probe_{j}": values[i] for j, i in enumerate(ids)}})
    timed_out = probe_run.status == "timeout"
    if not tests:
        return 0, timed_out
    judged = run("", "", limits, mode="judge", exprs=json.dumps(tests), expr_count=len(tests))
    ok = set()
    for line in judged.lines:
        msg = json.loads(line)
        if msg.get("ok") is True:
            ok.add(judgeable[msg["i"]])
    return len(ok), timed_out


def _same_output(got: str, want: str) -> bool:
    norm = lambda s: [line.rstrip() for line in s.strip().splitlines()]  # noqa: E731
    return norm(got) == norm(want)


def score_code(response: str, ground_truth: str, limits: SandboxLimits = SandboxLimits()) -> tuple[float, Status]:
    """(fraction of tests passed, status). Bad ground truth raises ValueError naming the problem."""
    cases, split = _read_spec(ground_truth)
    code = extract_code(response)
    if code is None:
        return 0.0, Status.NO_ANSWER
    if split is not None:
        passed, timed_out = _assert_results(code, split, limits)
    else:
        runs = [run(code, str(t.get("input", "")), limits) for t in cases]
        passed = sum(r.status == "ok" and _same_output(r.stdout, str(t["output"])) for r, t in zip(runs, cases))
        timed_out = any(r.status == "timeout" for r in runs)
    frac = passed / len(cases)
    if frac == 1.0:
        return frac, Status.CORRECT
    return frac, Status.TIMEOUT if timed_out else Status.WRONG
