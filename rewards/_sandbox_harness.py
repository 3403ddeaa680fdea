"""Runs inside the sandbox (python -I -S, nothing but the interpreter in view). Standard library only.

    harness.py script NPROC              run /sandbox/solution.py as __main__ (stdin/stdout tests)
    harness.py tool   NPROC              the same, and an exception it raises ends stdout with its
                                         last traceback line (what a tool call shows the model)
    harness.py probe  NPROC RESULT_FD    run it as module `solution`, then evaluate each expression of
                                         /job/exprs.json in its namespace and write each value
    harness.py judge  NPROC RESULT_FD    evaluate each test of /job/exprs.json ({"expr", "values"})
                                         with the probed values bound, no solution code loaded

A probe result is one JSON line per expression, written as soon as it is known, so the tests done
before a timeout keep their results. Values travel as tagged plain data (`encode`): only exact
built-in types survive, so an object with a forged __eq__ cannot reach the judge. The probe side
trusts nothing it writes: the solution shares its interpreter and could write anything to
RESULT_FD, but it never sees an expected value, and the judge (a separate sandbox that runs no
solution code) decides each test.
"""
import json
import os
import resource
import sys


def encode(v, depth=0):
    """Plain data of exact built-in types, tagged so that the judge rebuilds the same value."""
    if depth > 64:
        raise ValueError("nested too deeply")
    t = type(v)
    if v is None or t is bool or t is int or t is float or t is str:
        return v
    if t is list or t is tuple:
        return {t.__name__: [encode(x, depth + 1) for x in v]}
    if t is set or t is frozenset:
        return {"set": [encode(x, depth + 1) for x in v]}
    if t is dict:
        return {"dict": [[encode(k, depth + 1), encode(x, depth + 1)] for k, x in v.items()]}
    if t is bytes:
        return {"bytes": v.hex()}
    if t is complex:
        return {"complex": [v.real, v.imag]}
    raise TypeError(f"a {t.__name__} is not plain data")


def decode(v):
    if not isinstance(v, dict):
        return v
    (tag, x), = v.items()
    if tag == "list":
        return [decode(e) for e in x]
    if tag == "tuple":
        return tuple(decode(e) for e in x)
    if tag == "set":
        return {decode(e) for e in x}
    if tag == "dict":
        return {decode(k): decode(e) for k, e in x}
    if tag == "bytes":
        return bytes.fromhex(x)
    if tag == "complex":
        return complex(x[0], x[1])
    raise ValueError(f"unknown tag {tag!r}")


def main():
    mode, nproc = sys.argv[1], int(sys.argv[2])
    # Processes and threads of this sandbox (its own user namespace: the trainer's are not counted).
    resource.setrlimit(resource.RLIMIT_NPROC, (nproc, nproc))
    if mode in ("script", "tool"):
        os.closerange(3, 1 << 16)
        sys.argv = ["solution.py"]
        code = open("/sandbox/solution.py").read()
        if mode == "script":
            exec(compile(code, "solution.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
            return
        try:
            exec(compile(code, "solution.py", "exec"), {"__name__": "__main__", "__builtins__": __builtins__})
        except SystemExit as e:
            if e.code not in (None, 0):
                raise
        except BaseException as e:  # the model sees what went wrong, as a Python user would
            import traceback

            sys.stdout.flush()
            sys.stdout.write(traceback.format_exception_only(type(e), e)[-1])
            sys.stdout.flush()
            os._exit(1)
        return
    out = int(sys.argv[3])
    os.closerange(3, out)
    os.closerange(out + 1, 1 << 16)
    write, dumps = os.write, json.dumps  # bound before any solution code runs
    exprs = json.loads(open("/job/exprs.json").read())
    if mode == "judge":
        import builtins
        import importlib

        for i, test in enumerate(exprs):
            env = {"__builtins__": builtins}
            for name in test["modules"]:
                env[name] = importlib.import_module(name)
            try:
                env.update({k: decode(v) for k, v in test["values"].items()})
                ok = bool(eval(compile(test["expr"], "<test>", "eval"), env))
            except Exception as e:
                ok, err = False, type(e).__name__
            else:
                err = ""
            write(out, (dumps({"i": i, "ok": ok, "error": err}) + "\n").encode())
        return
    # probe: the solution is a module named `solution`, so an `if __name__ == "__main__":` block
    # (a sys.exit(main()) in it, say) does not run. Anything it raises fails every test.
    ns = {"__name__": "solution", "__builtins__": __builtins__}
    try:
        exec(compile(open("/sandbox/solution.py").read(), "solution.py", "exec"), ns)
    except BaseException as e:  # SystemExit too: an exit ends nothing but the solution's own chances
        write(out, (dumps({"setup_error": type(e).__name__}) + "\n").encode())
        return
    for i, src in enumerate(exprs):
        try:
            line = dumps({"i": i, "value": encode(eval(compile(src, "<test>", "eval"), ns))})
        except BaseException as e:
            line = dumps({"i": i, "error": type(e).__name__})
        write(out, (line + "\n").encode())


main()
