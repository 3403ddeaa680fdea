"""Sandboxed code rewards: correct solutions pass, escapes fail their tests and harm nothing."""
import json
import os
import time

import pytest

from rewards.code import SandboxLimits, extract_code, score_code
from rewards.shaping import format_reward, overlong_penalty, shaped_score

DOUBLE = json.dumps({"tests": [{"input": "2", "output": "4"}, {"input": "5", "output": "10"}]})


def sol(body: str) -> str:
    return f"Here is my solution:\n```python\n{body}\n```\n"


def test_correct_partial_and_missing_solutions():
    assert score_code(sol("print(int(input()) * 2)"), DOUBLE) == (1.0, "correct")
    assert score_code(sol("n = int(input())\nprint(4 if n == 2 else 0)"), DOUBLE)[0] == 0.5
    assert score_code("no code here", DOUBLE) == (0.0, "no_answer")
    asserts = json.dumps({"asserts": ["assert f(1) == 2", "assert f(2) == 4", "assert f(0) == 1"]})
    assert score_code(sol("def f(x):\n    return x + 1"), asserts)[0] == pytest.approx(2 / 3)


def test_last_code_block_counts():
    assert extract_code("```python\nprint(1)\n```\nbetter:\n```python\nprint(2)\n```") == "print(2)\n"


@pytest.mark.parametrize("name, body, marker", [
    ("write outside", "open('/tmp/forkrl_sbx_escape_w', 'w').write('x')", "/tmp/forkrl_sbx_escape_w"),
    ("subprocess", "import subprocess\nsubprocess.run(['touch', '/tmp/forkrl_sbx_escape_p'])", "/tmp/forkrl_sbx_escape_p"),
    ("os.system", "import os\nos.system('touch /tmp/forkrl_sbx_escape_s')", "/tmp/forkrl_sbx_escape_s"),
    ("remove outside", "import os\nos.remove('/tmp/forkrl_sbx_keep')", None),
    ("read outside", "print(open('/etc/hostname').read())", None),
    ("socket", "import socket\nsocket.create_connection(('127.0.0.1', 80), timeout=1)", None),
    ("ctypes", "import ctypes\nctypes.CDLL(None).system(b'touch /tmp/forkrl_sbx_escape_c')", "/tmp/forkrl_sbx_escape_c"),
    ("fork bomb", "import os\nwhile True:\n    os.fork()", None),
    ("memory", "x = bytearray(8 * 1024**3)", None),
])
def test_escapes_fail_their_tests_and_harm_nothing(name, body, marker, tmp_path):
    keep = "/tmp/forkrl_sbx_keep"
    open(keep, "w").close()
    # the escape attempt comes first; a correct answer follows, so only a blocked escape fails it
    score, _ = score_code(sol(body + "\nprint(int(input()) * 2)"), DOUBLE)
    assert score == 0.0, name
    if marker:
        assert not os.path.exists(marker), name
    assert os.path.exists(keep)


@pytest.mark.parametrize("body", ["while True:\n    pass", "import time\ntime.sleep(60)",
                                  "while True:\n    print('x' * 100000)"])
def test_loops_sleeps_and_floods_are_cut_off_in_time(body):
    limits = SandboxLimits(timeout_s=1.0)
    t0 = time.perf_counter()
    assert score_code(sol(body), DOUBLE, limits)[0] == 0.0
    assert time.perf_counter() - t0 < 2 * (1.0 + 1.0)  # two tests, each bounded by the limit


def test_bad_ground_truth_is_an_error_not_a_zero():
    with pytest.raises(ValueError, match="not JSON"):
        score_code(sol("print(1)"), "{oops")
    with pytest.raises(ValueError, match="'tests' or 'asserts'"):
        score_code(sol("print(1)"), json.dumps({"cases": []}))


def test_format_and_overlong_shaping():
    assert format_reward(r"so \boxed{3}", True) == 1.0
    assert format_reward(r"so \boxed{3}", False) == 0.0  # cut by the length limit
    assert format_reward("so 3", True) == 0.0
    # L_max = 100, L_cache = 20: free up to 80, linear to -1 at 100
    assert overlong_penalty(80, 100, 20) == 0.0
    assert overlong_penalty(90, 100, 20) == pytest.approx(-0.5)
    assert overlong_penalty(100, 100, 20) == -1.0
    assert overlong_penalty(100, 100, 0) == 0.0
    assert shaped_score(1.0, r"\boxed{3}", True, 90, format_weight=0.5, overlong_weight=1.0, max_len=100,
                        overlong_cache=20) == pytest.approx(1.0 + 0.5 - 0.5)


def test_code_reward_through_the_scorer_with_configured_limits():
    from rewards.registry import RewardScorer

    s = RewardScorer("code", timeout_s=10.0, code_limits=SandboxLimits(timeout_s=0.5))
    try:
        good, slow = s.score_batch([sol("print(int(input()) * 2)"),
                                    sol("import time\ntime.sleep(1.0)\nprint(int(input()) * 2)")], [DOUBLE, DOUBLE])
        assert (good.score, good.status) == (1.0, "correct")
        assert slow.score == 0.0  # 1 s of sleep is over the 0.5 s per-test limit
    finally:
        s.close()
