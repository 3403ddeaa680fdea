"""forkrl's math reward against four answer-equivalence test suites that other projects wrote.

The suites' cases were extracted once (`--extract`, from local clones) into
bench/data/verifier_suites.jsonl, one row per case with the suite's repository, commit and file;
scoring reads only that file, offline:

    python bench/verifier_suites.py                      # score, print the table, list disagreements
    python bench/verifier_suites.py --extract REPO_DIR...  # re-extract (clones named owner+name)

Each case is (prediction, gold, equivalent?). The prediction is put in \\boxed{} unless it is
prose (it already has a box, `$` delimiters, or several words), as a model would give it; the
gold goes in as the dataset answer. forkrl's verdict is the `math` reward (1 = equivalent).
A false positive is a pair the suite calls different that forkrl scores as equal: the kind of
hole a policy learns to exploit. Results go to bench/results/verifier_suites.json.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DATA = ROOT / "bench" / "data" / "verifier_suites.jsonl"

# suite -> (repository, test file, the order of the compared arguments)
SUITES = {
    "math-verify": ("huggingface/Math-Verify", "tests/test_all.py tests/test_boxed.py tests/test_numina_cases.py "
                    "tests/test_open_thoughts.py tests/test_yujianll.py", "gold,pred"),
    "nemo-skills": ("NVIDIA/NeMo-Skills", "tests/test_math_equal.py", "pred,gold"),
    "mario-eval": ("MARIO-Math-Reasoning/MARIO_EVAL", "math_evaluation/tests/test_is_equiv.py", "pred,gold"),
    "hendrycks-math": ("hendrycks/math", "modeling/math_equivalence_test.py", "pred,gold"),
}


def _literal(node):
    try:
        return ast.literal_eval(node)
    except ValueError:
        return None


def _parametrized(tree: ast.Module):
    """(function name, argnames, [values]) for every @pytest.mark.parametrize with literal values."""
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef):
            continue
        for dec in fn.decorator_list:
            if isinstance(dec, ast.Call) and getattr(dec.func, "attr", "") == "parametrize" and len(dec.args) >= 2:
                names, values = _literal(dec.args[0]), dec.args[1]
                if isinstance(values, ast.List):
                    yield fn.name, names, [_literal(v) for v in values.elts]


def _assert_pairs(tree: ast.Module):
    """(a, b, expected) from unittest bodies: `test_in = ...; test_out = ...; self.assertTrue(f(test_in, test_out))`."""
    for fn in ast.walk(tree):
        if not isinstance(fn, ast.FunctionDef):
            continue
        env: dict[str, object] = {}
        for stmt in fn.body:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and isinstance(stmt.targets[0], ast.Name):
                env[stmt.targets[0].id] = _literal(stmt.value)
            elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call):
                call = stmt.value
                kind = getattr(call.func, "attr", "")
                if kind in ("assertTrue", "assertFalse") and call.args and isinstance(call.args[0], ast.Call):
                    inner = call.args[0]
                    args = [env.get(a.id) if isinstance(a, ast.Name) else _literal(a) for a in inner.args[:2]]
                    if len(args) == 2 and all(isinstance(a, str) for a in args):
                        yield args[0], args[1], kind == "assertTrue", fn.name


def extract(clones: list[Path]) -> list[dict]:
    rows = []
    for suite, (repo, path, order) in SUITES.items():
        clone = next((c for c in clones if c.name.replace("+", "/") == repo or c.parent.name.replace("+", "/") == repo), None)
        if clone is None:
            raise SystemExit(f"--extract: no clone of {repo} given (a folder named {repo.replace('/', '+')})")
        git = ["git", "-C", str(clone)]
        commit = subprocess.check_output([*git, "rev-parse", "HEAD"], text=True).strip()
        for file in path.split():
            tree = ast.parse(subprocess.check_output([*git, "show", f"HEAD:{file}"], text=True))
            rows += _extract_file(suite, tree, {"suite": suite, "repo": repo, "commit": commit, "file": file})
    return rows


def _extract_file(suite: str, tree: ast.Module, source: dict) -> list[dict]:
    rows = []
    if suite == "math-verify":
        for fn, names, values in _parametrized(tree):
            if not isinstance(names, str) or names.replace(" ", "") not in ("gold,pred,expected", "gold,pred,result"):
                continue
            for v in values:
                if isinstance(v, tuple) and isinstance(v[0], str) and isinstance(v[1], str):
                    rows.append({**source, "test": fn, "gold": v[0], "pred": v[1], "equal": bool(v[2])})
    elif suite == "nemo-skills":
        for fn, _, values in _parametrized(tree):
            for v in values:
                if isinstance(v, tuple) and None not in v:
                    rows.append({**source, "test": fn, "pred": str(v[0]), "gold": str(v[1]),
                                 "equal": fn == "test_correct_examples"})
    else:
        for a, b, equal, fn in _assert_pairs(tree):
            rows.append({**source, "test": fn, "pred": a, "gold": b, "equal": equal})
    return rows


_DELIMITED_RE = re.compile(r"^\s*(?:\$\$|\$|\\\(|\\\[)(.*?)(?:\$\$|\$|\\\)|\\\])\s*\.?\s*$", re.DOTALL)


def is_prose(text: str) -> bool:
    """Several words outside LaTeX commands and \\text{}: a sentence, not a formula."""
    bare = re.sub(r"\\[A-Za-z]+(\{[^}]*\})?", " ", text)
    return len(re.findall(r"\b[A-Za-z]{2,}\b", bare)) >= 3


def as_response(pred: str) -> str:
    """How a model would write the prediction: boxed (its `$` delimiters dropped), unless it is
    prose or already has a box, which go in as they are."""
    if "\\boxed" in pred or is_prose(pred):
        return pred
    m = _DELIMITED_RE.match(pred)
    return f"\\boxed{{{(m.group(1) if m else pred).strip()}}}"


# Every disagreement is put in one class, first rule that matches. All but "defect left" are
# conventions forkrl keeps on purpose (README, Rewards); "defect left" is work still to do.
CLASSES = [
    ("the suite's expectation is wrong (1 - 1/e is not 1 + 1/e)",
     lambda r: "1 - \\frac{1}{\\mathrm{e}}" in r["gold"] and "1 + \\frac{1}{\\mathrm{e}}" in r["response"]),
    ("convention: several boxes, only the last counts",
     lambda r: r["response"].count("\\boxed") > 1 or r["gold"].count("\\boxed") > 1),
    ("convention: a decimal comma is not a decimal point",
     lambda r: bool(re.search(r"\d,\d{1,2}(?!\d)|\d,\d{4,}|0,\d", r["gold"] + " " + r["response"]))),
    ("convention: a claim in running prose is not an answer (no box, no 'answer is')",
     lambda r: r["status"] == "no_answer" or is_prose(r["response"]) and "\\boxed" not in r["response"]),
    ("convention: unordered comparison of a comma-separated list",
     lambda r: r["score"] == 1.0 and "," in r["gold"]),
    ("convention: the dataset's answer must parse (gold error)", lambda r: r["status"] == "error"),
    ("convention: no verdict within the time limit", lambda r: r["status"] == "timeout"),
    ("convention: numbers compare at 6 decimals, not a looser tolerance",
     lambda r: bool(re.search(r"\d\.\d{3}", r["gold"] + r["response"])) and "\\" in r["gold"] + r["response"]),
    ("convention: capital I is a variable, only i is imaginary", lambda r: "I" in r["gold"] + r["response"]),
    ("convention: a labelled answer (x_1 = ..., f(x) = ...) must match its label",
     lambda r: "=" in r["gold"] + r["response"]),
    ("convention: matrices, systems and intervals compare by their own structure",
     lambda r: bool(re.search(r"matrix|cases|\[", r["gold"] + r["response"]))),
]


def classify(r: dict) -> str:
    return next((name for name, rule in CLASSES if rule(r)), "defect left")


def score(rows: list[dict], timeout_s: float) -> list[dict]:
    from rewards.registry import RewardScorer

    scorer = RewardScorer("math", timeout_s=timeout_s, num_workers=2)
    try:
        results = scorer.score_batch([as_response(r["pred"]) for r in rows], [r["gold"] for r in rows])
    finally:
        scorer.close()
    return [{**r, "response": as_response(r["pred"]), "score": res.score, "status": res.status} for r, res in zip(rows, results)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--extract", nargs="*", type=Path, help="clones to extract the cases from, then exit")
    ap.add_argument("--timeout-s", type=float, default=5.0)
    args = ap.parse_args()
    if args.extract is not None:
        rows = extract(args.extract)
        DATA.parent.mkdir(parents=True, exist_ok=True)
        DATA.write_text("".join(json.dumps(r) + "\n" for r in rows))
        print(f"{len(rows)} cases -> {DATA}: {dict(Counter(r['suite'] for r in rows))}")
        return
    rows = [json.loads(line) for line in DATA.read_text().splitlines()]
    t0 = time.perf_counter()
    scored = score(rows, args.timeout_s)
    table = {}
    for suite in SUITES:
        mine = [r for r in scored if r["suite"] == suite]
        agree = sum((r["score"] == 1.0) == r["equal"] for r in mine)
        table[suite] = {"cases": len(mine), "agree": agree,
                        "false_positives": sum(r["score"] == 1.0 and not r["equal"] for r in mine),
                        "false_negatives": sum(r["score"] != 1.0 and r["equal"] for r in mine),
                        "timeouts": sum(r["status"] == "timeout" for r in mine)}
    total = {k: sum(t[k] for t in table.values()) for k in ("cases", "agree", "false_positives", "false_negatives", "timeouts")}
    print("| suite | cases | agree | false positives | false negatives | timeouts |")
    print("| --- | --- | --- | --- | --- | --- |")
    for name, t in [*table.items(), ("all", total)]:
        print(f"| {name} | {t['cases']} | {t['agree']} | {t['false_positives']} | {t['false_negatives']} | {t['timeouts']} |")
    print(f"({time.perf_counter() - t0:.0f} s)")
    classes = Counter()
    for r in scored:
        if (r["score"] == 1.0) != r["equal"]:
            r["class"] = classify(r)
            classes[r["class"], "FP" if r["score"] == 1.0 else "FN"] += 1
            kind = "FP" if r["score"] == 1.0 else "FN"
            print(f"{kind} [{r['class']}] {r['suite']}: gold {r['gold'][:80]!r} response {r['response'][:80]!r} ({r['status']})")
    print("\n| disagreement class | false negatives | false positives |\n| --- | --- | --- |")
    for name in [*(c for c, _ in CLASSES), "defect left"]:
        if classes[name, "FN"] or classes[name, "FP"]:
            print(f"| {name} | {classes[name, 'FN']} | {classes[name, 'FP']} |")
    out = ROOT / "bench" / "results" / "verifier_suites.json"
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "table": table, "total": total,
                               "classes": {f"{k[0]} ({k[1]})": v for k, v in classes.items()}, "cases": scored}, indent=1))


if __name__ == "__main__":
    main()
