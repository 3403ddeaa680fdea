"""The code reward attacked as a policy under RL would attack it, through the real scoring path:
forged verdicts earn nothing, nothing outside the sandbox can be read, written, signalled or
connected to, nothing is left behind, and honest solutions still score."""
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import pytest

from rewards.code import extract_code, score_code, split_assert
from rewards.result import Status
from rewards.sandbox import IsolationError, SandboxLimits, check_isolation
from rewards.shaping import format_reward, overlong_penalty, shaped_score

REPO = Path(__file__).resolve().parents[1]
DOUBLE = json.dumps({"tests": [{"input": "2", "output": "4"}, {"input": "5", "output": "10"}]})
SQUARE = json.dumps({"asserts": ["assert f(2) == 4", "assert f(3) == 9", "assert f(10) == 100"]})
NEAR = json.dumps({"asserts": ["assert abs(f(2) - 4) < 1e-9", "assert abs(f(3) - 9) < 1e-9"]})


def sol(body: str) -> str:
    return f"Here is my solution:\n```python\n{body}\n```\n"


def test_honest_right_partial_wrong_and_missing_solutions():
    assert score_code(sol("print(int(input()) * 2)"), DOUBLE) == (1.0, "correct")
    assert score_code(sol("n = int(input())\nprint(4 if n == 2 else 0)"), DOUBLE)[0] == 0.5
    assert score_code(sol("print(0)"), DOUBLE) == (0.0, "wrong")
    assert score_code("no code here", DOUBLE) == (0.0, "no_answer")
    assert score_code(sol("def f(x):\n    return x * x"), SQUARE) == (1.0, "correct")
    assert score_code(sol("def f(x):\n    return x * x"), NEAR) == (1.0, "correct")
    assert score_code(sol("def f(x):\n    return 0"), SQUARE) == (0.0, "wrong")
    asserts = json.dumps({"asserts": ["assert f(1) == 2", "assert f(2) == 4", "assert f(0) == 1"]})
    assert score_code(sol("def f(x):\n    return x + 1"), asserts)[0] == pytest.approx(2 / 3)


def test_plain_data_round_trips_and_common_assert_forms_work():
    body = ("import math\ndef f():\n    return (1, [2.5, None], {'a': {3}}, b'x', True)\n"
            "def g(x):\n    return math.sqrt(x)\nclass Solution:\n    def solve(self, n):\n        return n + 1")
    gt = json.dumps({"asserts": [
        "assert f() == (1, [2.5, None], {'a': {3}}, b'x', True)", "assert isinstance(f()[0], int)",
        "assert math.isclose(g(2), 2 ** 0.5)", "assert Solution().solve(1) == 2", "assert g(4) == f()[0] * 2",
        "assert sorted([g(9), g(1)]) == [1.0, 3.0]", "assert f()[4] is True", "assert 3 in f()[2]['a']"]})
    assert score_code(sol(body), gt) == (1.0, "correct")


FORGERIES = {
    "sys.exit(0)": "import sys\ndef f(x):\n    return 0\nsys.exit(0)",
    "os._exit(0)": "import os\ndef f(x):\n    return 0\nos._exit(0)",
    "raise SystemExit": "def f(x):\n    return 0\nraise SystemExit",
    "atexit os._exit": "import atexit, os\natexit.register(lambda: os._exit(0))\ndef f(x):\n    return 0",
    "excepthook": "import sys\nsys.excepthook = lambda *a: None\ndef f(x):\n    return 0",
    "main guard exit": "import sys\ndef f(x):\n    return 0\ndef main():\n    return 0\n"
                       "if __name__ == '__main__':\n    sys.exit(main())",
    "exit inside f": "import sys\ndef f(x):\n    sys.exit(0)",
    "always-equal": "class E:\n    def __eq__(self, o):\n        return True\n    __hash__ = None\n"
                    "    def __sub__(self, o):\n        return 0\n    def __abs__(self):\n        return 0\n"
                    "    def __lt__(self, o):\n        return True\ndef f(x):\n    return E()",
    "int subclass": "class I(int):\n    def __eq__(self, o):\n        return True\ndef f(x):\n    return I(0)",
    "patched abs": "import builtins\nbuiltins.abs = lambda x: 0\ndef f(x):\n    return 0",
    "shadowed abs": "abs = lambda x: 0\ndef f(x):\n    return 0",
}


@pytest.mark.parametrize("name", sorted(FORGERIES))
def test_forged_verdicts_earn_nothing(name):
    for gt in (SQUARE, NEAR):
        score, status = score_code(sol(FORGERIES[name]), gt)
        assert score == 0.0 and status == "wrong", (name, gt, score, status)


def test_the_solution_never_sees_an_expected_value():
    probe, probes, _ = split_assert("assert abs(f(2) - 4) < 1e-9")
    assert probes == ["f(2)"] and "4" in probe and "__probe_0" in probe
    assert split_assert("assert Solution().solve([1, 2]) == 3")[1] == ["Solution().solve([1, 2])"]
    with pytest.raises(ValueError, match="name bound inside the assert"):
        split_assert("assert all(f(x) == x * x for x in range(3))")
    with pytest.raises(ValueError, match="not one assert"):
        split_assert("x = f(2)\nassert x == 4")


@pytest.fixture
def secret(tmp_path):
    """A file like a dataset with its answers: readable by anyone on the machine."""
    path = Path(tempfile.mkdtemp(prefix="forkrl-test-secret-", dir="/tmp")) / "answers.txt"
    path.parent.chmod(0o755)
    value = f"secret-{uuid.uuid4().hex}"
    path.write_text(value)
    path.chmod(0o644)
    yield path, value
    shutil.rmtree(path.parent)


READS = {
    "open": "print(open(P).read())",
    "os.open dir_fd": "import os\nd = os.open(os.path.dirname(P), os.O_RDONLY)\n"
                      "print(os.read(os.open(os.path.basename(P), os.O_RDONLY, dir_fd=d), 999).decode())",
    "subprocess cat": "import subprocess\nprint(subprocess.run(['cat', P], capture_output=True, text=True).stdout)",
    "_posixsubprocess": "import os, subprocess\nr, w = os.pipe()\nsubprocess.Popen(['/bin/cat', P], stdout=w)\n"
                        "os.close(w)\nimport time\ntime.sleep(0.3)\nprint(os.read(r, 999).decode())",
    "sqlite3": "import sqlite3\ncon = sqlite3.connect(P)\nprint(open(P).read())",
    "realpath patch": "import os\nos.path.realpath = lambda p, **k: '/sandbox/x'\nprint(open(P).read())",
    "frames and gc": "import gc, sys\n[setattr(o, 'DENIED', set()) for o in gc.get_objects() if hasattr(o, 'DENIED')]\n"
                     "print(open(P).read())",
    "/proc of the parent": "import os\nprint(open('/proc/1/root' + P).read())",
}


@pytest.mark.parametrize("name", sorted(READS))
def test_files_outside_cannot_be_read(name, secret):
    path, value = secret
    gt = json.dumps({"tests": [{"input": "", "output": value}]})
    assert score_code(sol(f"P = {str(path)!r}\n" + READS[name]), gt)[0] == 0.0, name


def test_writes_and_deletes_outside_change_nothing(tmp_path):
    keep = Path(tempfile.mkdtemp(prefix="forkrl-test-keep-", dir="/tmp"))
    keep.chmod(0o777)
    (keep / "checkpoint.pt").write_text("weights")
    marker = f"/tmp/forkrl-sbx-marker-{uuid.uuid4().hex}"
    body = (f"import os, shutil\nopen({marker!r}, 'w').write('x')\n"
            f"shutil.rmtree({str(keep)!r}, ignore_errors=True)\n"
            f"open({str(REPO / 'rewards' / 'bounded.py')!r}, 'a').write('# planted')\n"
            "print(int(input()) * 2)")
    try:
        before = (REPO / "rewards" / "bounded.py").read_text()
        score_code(sol(body), DOUBLE)
        assert not os.path.exists(marker)
        assert (keep / "checkpoint.pt").read_text() == "weights"
        assert (REPO / "rewards" / "bounded.py").read_text() == before
    finally:
        shutil.rmtree(keep)


def test_no_unix_socket_or_network_is_in_reach(tmp_path):
    """A raylet's socket sits in a world-writable /tmp/ray folder on a Ray node."""
    folder = Path(tempfile.mkdtemp(prefix="forkrl-test-ray-", dir="/tmp"))
    folder.chmod(0o777)
    unix = socket.socket(socket.AF_UNIX)
    unix.bind(str(folder / "raylet"))
    os.chmod(folder / "raylet", 0o777)
    unix.listen()
    tcp = socket.create_server(("127.0.0.1", 0))
    port = tcp.getsockname()[1]
    body = ("import socket, os\nok = []\n"
            f"s = socket.socket(socket.AF_UNIX)\ntry:\n    s.connect({str(folder / 'raylet')!r}); ok.append('unix')\n"
            "except OSError:\n    pass\n"
            f"try:\n    socket.create_connection(('127.0.0.1', {port}), timeout=1); ok.append('tcp')\n"
            "except OSError:\n    pass\n"
            f"try:\n    os.remove({str(folder / 'raylet')!r}); ok.append('rm')\nexcept OSError:\n    pass\n"
            "print(' '.join(ok) or 'none')")
    try:
        gt = json.dumps({"tests": [{"input": "", "output": "none"}]})
        assert score_code(sol(body), gt) == (1.0, "correct")  # it ran, and reached nothing
        for s in (unix, tcp):
            s.settimeout(0.2)
            with pytest.raises(TimeoutError):
                s.accept()
        assert (folder / "raylet").exists()
    finally:
        unix.close()
        tcp.close()
        shutil.rmtree(folder)


def test_sandboxed_code_inherits_no_environment(monkeypatch):
    """A generation actor runs with tcmalloc preloaded (generation.allocator) and other variables
    of its own; code run in the sandbox for it sees PATH, LANG and the PWD that bwrap sets, so a
    preload that the sandbox cannot map never prints a loader error into the tool output the model
    reads."""
    from rewards.sandbox import run

    monkeypatch.setenv("LD_PRELOAD", "libtcmalloc_minimal.so.4")
    monkeypatch.setenv("FORKRL_SECRET", "hunter2")
    res = run("import os\nprint(sorted(os.environ))", "", SandboxLimits(timeout_s=30.0), mode="tool")
    assert res.status == "ok" and res.stdout.strip() == "['LANG', 'PATH', 'PWD']", res


def test_processes_started_by_a_solution_die_with_it():
    tag = f"{600 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**6}"
    body = ("import os, subprocess\nif os.fork() == 0:\n    os.setsid()\n    if os.fork() == 0:\n"
            f"        os.execv('/bin/sleep', ['sleep', '{tag}'])\n    os._exit(0)\n"
            f"subprocess.Popen(['/bin/sleep', '{tag}'], start_new_session=True)\nprint(int(input()) * 2)")
    assert score_code(sol(body), DOUBLE)[0] == 1.0
    time.sleep(0.5)
    left = subprocess.run(["pgrep", "-f", f"sleep {tag}"], capture_output=True, text=True).stdout.split()
    assert left == [], "orphans outlived their sandbox"


def test_nothing_is_left_behind_after_a_kill():
    before = set(os.listdir("/tmp"))
    body = "import os\nos.makedirs('a/b')\nopen('a/b/big', 'w').write('x' * 1000)\nos.chmod('a', 0)\nwhile True:\n    pass"
    limits = SandboxLimits(timeout_s=0.5)
    assert score_code(sol(body), DOUBLE, limits) == (0.0, "timeout")
    assert score_code(sol(body), DOUBLE, SandboxLimits(timeout_s=0.5, isolation="none")) == (0.0, "timeout")
    assert not [n for n in set(os.listdir("/tmp")) - before if n.startswith("forkrl-sbx")]


@pytest.mark.parametrize("body", ["while True:\n    pass", "import time\ntime.sleep(60)",
                                  "while True:\n    print('x' * 100000)", "import os\nwhile True:\n    os.fork()",
                                  "x = bytearray(8 * 1024**3)", "open('f', 'w').write('x' * (64 << 20))"])
def test_loops_sleeps_floods_bombs_and_hogs_are_cut_off(body):
    limits = SandboxLimits(timeout_s=1.0)
    t0 = time.perf_counter()
    assert score_code(sol(body), DOUBLE, limits)[0] == 0.0
    assert time.perf_counter() - t0 < 2 * (1.0 + 1.0)  # two tests, each bounded by the limit


def test_a_hanging_solution_is_a_timeout_that_scores_what_it_passed():
    gt = json.dumps({"asserts": ["assert f(1) == 1", "assert f(2) == 4"]})
    body = "def f(x):\n    while x == 2:\n        pass\n    return x * x"
    assert score_code(sol(body), gt, SandboxLimits(timeout_s=0.5)) == (0.5, "timeout")


def test_a_planted_module_in_the_working_directory_is_not_run(tmp_path, monkeypatch):
    marker = tmp_path / "planted-ran"
    (tmp_path / "rewards").mkdir()
    (tmp_path / "rewards" / "__init__.py").write_text("")
    (tmp_path / "rewards" / "bounded.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    monkeypatch.chdir(tmp_path)
    from rewards.registry import RewardScorer

    s = RewardScorer("math", timeout_s=10.0)
    try:
        assert s.score_batch([r"\boxed{4}"], ["4"])[0].status == "correct"
    finally:
        s.close()
    assert not marker.exists()


def test_the_verifier_survives_a_solution_that_signals_everything():
    from rewards.registry import RewardScorer

    s = RewardScorer("code", timeout_s=10.0, code_limits=SandboxLimits(timeout_s=1.0))
    try:
        kill = sol("import os, signal\nfor pid in range(1, 4096):\n    try:\n        os.kill(pid, 9)\n"
                   "    except OSError:\n        pass\nprint(int(input()) * 2)")
        s.score_batch([kill], [DOUBLE])
        good = s.score_batch([sol("print(int(input()) * 2)")], [DOUBLE])[0]
        assert (good.score, good.status) == (1.0, "correct") and s.restarts == 0
    finally:
        s.close()


def test_code_reward_through_the_scorer_with_configured_limits():
    from rewards.registry import RewardScorer

    s = RewardScorer("code", timeout_s=10.0, code_limits=SandboxLimits(timeout_s=0.5))
    try:
        good, slow = s.score_batch([sol("print(int(input()) * 2)"),
                                    sol("import time\ntime.sleep(1.0)\nprint(int(input()) * 2)")], [DOUBLE, DOUBLE])
        assert (good.score, good.status) == (1.0, "correct")
        assert (slow.score, slow.status) == (0.0, Status.TIMEOUT)  # 1 s of sleep is over the 0.5 s limit
    finally:
        s.close()


NON_ROOT = r"""
import json, subprocess, sys
sys.path.insert(0, sys.argv[1])
from rewards.code import score_code
sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(150)]  # this user's processes: many
try:
    sol = lambda b: "```python\n" + b + "\n```"
    double = json.dumps({"tests": [{"input": "2", "output": "4"}, {"input": "5", "output": "10"}]})
    square = json.dumps({"asserts": ["assert f(2) == 4", "assert f(3) == 9"]})
    print(json.dumps([score_code(sol("print(int(input()) * 2)"), double),
                      score_code(sol("def f(x):\n    return x * x"), square),
                      score_code(sol("import sys\ndef f(x):\n    return 0\nsys.exit(0)"), square),
                      score_code(sol("import os\nwhile True:\n    os.fork()"), double)]))
finally:
    for p in sleepers:
        p.kill()
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="drops to an unprivileged user, which needs root")
def test_an_unprivileged_trainer_with_many_processes_still_scores(tmp_path):
    """As a non-root user the sandbox's process limit counts only its own processes (its user
    namespace), so a trainer with more threads than the limit still scores right answers."""
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3 an unprivileged user can run")
    copy = Path(tempfile.mkdtemp(prefix="forkrl-test-nonroot-", dir="/tmp"))
    try:
        shutil.copytree(REPO / "rewards", copy / "rewards", ignore=shutil.ignore_patterns("__pycache__"))
        for p in [copy, *copy.rglob("*")]:
            p.chmod(0o755 if p.is_dir() else 0o644)
        res = subprocess.run(["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", python, "-c", NON_ROOT,
                              str(copy)], capture_output=True, text=True, timeout=120, cwd="/tmp")
        assert res.returncode == 0, res.stderr[-2000:]
        right, asserts, forged, bomb = json.loads(res.stdout.strip().splitlines()[-1])
        assert right == [1.0, "correct"] and asserts == [1.0, "correct"]
        assert forged[0] == 0.0 and bomb[0] == 0.0
    finally:
        shutil.rmtree(copy)


def test_no_isolation_no_start(monkeypatch, caplog):
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(IsolationError, match="bubblewrap, which is not installed"):
        check_isolation("bwrap")
    check_isolation("none")  # the explicit opt-out starts, and says what it gives up
    assert "reward.code_isolation=none" in caplog.text
    monkeypatch.undo()
    limits = SandboxLimits(isolation="none")
    assert score_code(sol("print(int(input()) * 2)"), DOUBLE, limits) == (1.0, "correct")
    assert score_code(sol(FORGERIES["patched abs"]), NEAR, limits)[0] == 0.0  # verdicts hold even so


def test_last_code_block_counts():
    assert extract_code("```python\nprint(1)\n```\nbetter:\n```python\nprint(2)\n```") == "print(2)\n"


def test_bad_ground_truth_is_an_error_not_a_zero():
    with pytest.raises(ValueError, match="not JSON"):
        score_code(sol("print(1)"), "{oops")
    with pytest.raises(ValueError, match="'tests' or 'asserts'"):
        score_code(sol("print(1)"), json.dumps({"cases": []}))


def test_an_assert_that_checks_nothing_of_the_solution_is_refused():
    """Builtins are always the judge's, so `assert max([1, 5, 3]) == 5` has no probe: any code, or
    none, would pass it. It is bad ground truth, and the driver refuses the row up front."""
    from rewards.code import check_ground_truth
    from rewards.registry import RewardSpecError, check_ground_truths

    gold = json.dumps({"asserts": ["assert max([1, 5, 3]) == 5", "assert sum([1, 2]) == 3"]})
    with pytest.raises(ValueError, match="calls no name of the solution's"):
        score_code(sol("pass"), gold)
    with pytest.raises(ValueError, match="each of 'tests' needs an 'output'"):
        check_ground_truth(json.dumps({"tests": [{"input": "1"}]}))
    check_ground_truth(SQUARE)

    class Cfg:
        fn, extra_fns, extra_weights = "math", ["code"], []
    rows = [type("P", (), {"uid": 0, "answer": SQUARE}), type("P", (), {"uid": 6, "answer": gold})]
    with pytest.raises(RewardSpecError, match=r"^data.jsonl row 7: code ground truth: assert 'assert max"):
        check_ground_truths(Cfg, rows, "data.jsonl")
    Cfg.extra_fns = []
    check_ground_truths(Cfg, rows, "data.jsonl")  # no code reward: the answers are not code specs


def test_a_probe_value_nested_to_break_the_judge_fails_its_assert():
    """A solution writes its own probe answers, nested so deep that they read back but cannot be
    sent on to the judge (json's encoder recurses two levels deeper than its decoder did, so a
    window of about three depths, set by the process's stack, read but could not be re-sent). The
    encoder's RecursionError made the response an error, which is left out of training: a wrong
    solution dodged its penalty. Depths 600-999 cover the window at any stack depth the scorer
    runs at; too deep a value now fails its probe."""
    asserts = json.dumps({"asserts": [f"assert f({i}) == {i + 1}" for i in range(400)]})
    forger = """
import os
for fd in [int(x) for x in os.listdir('/proc/self/fd') if int(x) > 2]:
    try:
        for i in range(400):
            n = 600 + i
            os.write(fd, ('{"i":%d,"value":%s%s}\\n' % (i, '[' * n, ']' * n)).encode())
    except OSError:
        pass
def f(x):
    return 0
"""
    from rewards.registry import RewardScorer

    scorer = RewardScorer("code", timeout_s=60)
    try:
        (res,) = scorer.score_batch([sol(forger)], [asserts])
    finally:
        scorer.close()
    assert (res.score, res.status) == (0.0, "wrong"), res
    deep = "[" * 150 + "1" + "]" * 150
    gold = json.dumps({"asserts": [f"assert f(0) == {deep}", "assert f(1) == 2"]})
    assert score_code(sol(f"def f(x):\n    return {deep} if x == 0 else 2"), gold) == (0.5, "wrong")


def test_format_and_overlong_shaping():
    assert format_reward(r"so \boxed{3}", True) == 1.0
    assert format_reward(r"so \boxed{3}", False) == 0.0  # cut by the length limit
    assert format_reward("so 3", True) == 0.0
    assert format_reward(r"so \boxed{}", True) == format_reward(r"so \boxed{ }", True) == 0.0  # nothing in it
    # the code reward's form is a code block: a junk box earns nothing there
    assert format_reward("```python\nprint(1)\n```", True, "code") == 1.0
    assert format_reward(r"I think \boxed{3}", True, "code") == 0.0
    assert format_reward("```python\n\n```", True, "code") == 0.0
    # L_max = 100, L_cache = 20: free up to 80, linear to -1 at 100
    assert overlong_penalty(80, 100, 20) == 0.0
    assert overlong_penalty(90, 100, 20) == pytest.approx(-0.5)
    assert overlong_penalty(100, 100, 20) == -1.0
    assert overlong_penalty(100, 100, 0) == 0.0
    assert shaped_score(1.0, r"\boxed{3}", True, 90, format_weight=0.5, overlong_weight=1.0, max_len=100,
                        overlong_cache=20) == pytest.approx(1.0 + 0.5 - 0.5)


def test_shaping_is_linear_in_the_response():
    """8,000 unclosed boxes took 14 s when each was matched by its own scan to the end."""
    hostile = r"\boxed{" * 200_000 + r"\boxed{7}"
    t0 = time.perf_counter()
    assert format_reward(hostile, True) == 1.0
    assert time.perf_counter() - t0 < 5.0
    from rewards.math import last_boxed

    assert last_boxed(r"a \boxed{x^{2}} b \boxed{3") == "x^{2}"
    assert last_boxed(r"\boxed{1} \fbox{2}") == "2"


def test_a_verifier_that_cannot_start_is_an_error_status(monkeypatch):
    from rewards import bounded
    from rewards.registry import RewardScorer

    s = RewardScorer("math", timeout_s=5.0)
    monkeypatch.setattr(bounded, "STARTUP_TIMEOUT_S", 0.001)
    monkeypatch.setattr(bounded, "PROJECT_ROOT", "/nonexistent")  # the child cannot import rewards
    try:
        res = s.score_batch([r"\boxed{4}"], ["4"])[0]
        assert res.status == "error" and "did not start" in res.detail
    finally:
        s.close()
    assert sys.modules.get("rewards.bounded") is bounded
