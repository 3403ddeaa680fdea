import time

import pytest

from rewards.math import extract_final_answer
from rewards.registry import RewardScorer, check_spec, math_reward

# (response, ground truth, expected reward)
CASES = [
    # integers, decimals, fractions
    (r"So the answer is \boxed{42}.", "42", 1.0),
    (r"\boxed{42}", "43", 0.0),
    (r"\boxed{\frac12}", "0.5", 1.0),
    (r"\boxed{\dfrac{3}{4}}", "0.75", 1.0),
    (r"\boxed{\tfrac{1}{2}}", r"\frac{1}{2}", 1.0),
    (r"\boxed{0.25}", r"\frac14", 1.0),
    (r"\boxed{2/4}", r"\frac{1}{2}", 1.0),
    # signs, surds, pi, e, powers, factorials, logs
    (r"\boxed{-3}", "3", 0.0),
    (r"\boxed{-3}", "-3", 1.0),
    (r"\boxed{2\sqrt{2}}", r"\sqrt{8}", 1.0),
    (r"\boxed{1.4142}", r"\sqrt{2}", 0.0),  # a truncated decimal is not the surd
    (r"\boxed{2\pi}", r"2\pi", 1.0),
    (r"\boxed{6.28}", r"2\pi", 0.0),
    (r"\boxed{e^{2}}", "e^2", 1.0),
    (r"\boxed{2^{10}}", "1024", 1.0),
    (r"\boxed{5!}", "120", 1.0),
    (r"\boxed{\log_2 8}", "3", 1.0),
    # scientific notation, degrees, units, text
    (r"\boxed{1.5\times10^{3}}", "1500", 1.0),
    (r"\boxed{30^\circ}", "30", 1.0),
    (r"\boxed{3\text{ cm}}", "3", 1.0),
    (r"\boxed{\text{5}}", "5", 1.0),
    # x = 5 against 5
    (r"\boxed{x=5}", "5", 1.0),
    (r"\boxed{x = 6}", "5", 0.0),
    # tuples ordered, sets unordered, intervals closure
    (r"\boxed{(1,2)}", "(1,2)", 1.0),
    (r"\boxed{(2,1)}", "(1,2)", 0.0),
    (r"\boxed{\{1,2\}}", r"\{2,1\}", 1.0),
    (r"\boxed{[1,2]}", "[1,2]", 1.0),
    (r"\boxed{[1,2)}", "[1,2]", 0.0),
    (r"\boxed{(0,\infty)}", r"(0, \infty)", 1.0),
    # polynomials and expressions
    (r"\boxed{(x+1)^2}", "x^2+2x+1", 1.0),
    (r"\boxed{x^2+1}", "x^2+2x+1", 0.0),
    (r"\boxed{\frac{x^2-1}{x-1}}", "x+1", 1.0),
    # ground truth in any form, boxed or not
    (r"\boxed{7}", r"\boxed{7}", 1.0),
    (r"\boxed{0.5}", r"$\frac{1}{2}$", 1.0),
    # which answer counts
    (r"First I got 7, but \boxed{3}", "7", 0.0),  # a stray number never beats the box
    (r"\boxed{1} no wait \boxed{2}", "2", 1.0),  # the last box counts
    (r"\boxed{1}\boxed{2}\boxed{3}\boxed{4}", "1", 0.0),  # spraying boxes earns nothing
    (r"\boxed{}", "1", 0.0),
    ("I don't know.", "1", 0.0),
    ("", "1", 0.0),
    ("The final answer is 12.", "12", 1.0),
    ("Answer: 12", "12", 1.0),
    (r"\fbox{9}", "9", 1.0),
    # more integers and formatting
    (r"\boxed{1,000}", "1000", 1.0),
    (r"\boxed{1000}", "1,000", 1.0),
    (r"\boxed{007}", "7", 1.0),
    (r"\boxed{+5}", "5", 1.0),
    (r"\boxed{5.0}", "5", 1.0),
    (r"\boxed{5.01}", "5", 0.0),
    (r"\boxed{0}", "0", 1.0),
    (r"\boxed{-0}", "0", 1.0),
    (r"\boxed{10^{6}}", "1000000", 1.0),
    (r"\boxed{2^{-1}}", "0.5", 1.0),
    # fractions and mixed forms
    (r"\boxed{\frac{6}{8}}", r"\frac{3}{4}", 1.0),
    (r"\boxed{\frac{3}{5}}", r"\frac{3}{4}", 0.0),
    (r"\boxed{-\frac{1}{2}}", r"\frac{-1}{2}", 1.0),
    (r"\boxed{\frac{1}{3}}", "0.333", 0.0),
    (r"\boxed{0.3333333}", r"\frac{1}{3}", 1.0),
    (r"\boxed{\frac{22}{7}}", r"\pi", 0.0),
    (r"\boxed{3.14}", r"\pi", 0.0),
    # surds and radicals
    (r"\boxed{\sqrt{12}}", r"2\sqrt{3}", 1.0),
    (r"\boxed{\frac{\sqrt{2}}{2}}", r"\frac{1}{\sqrt{2}}", 1.0),
    (r"\boxed{\sqrt[3]{27}}", "3", 1.0),
    (r"\boxed{\sqrt{2}}", r"\sqrt{3}", 0.0),
    (r"\boxed{3+2\sqrt{2}}", r"(1+\sqrt{2})^2", 1.0),
    # pi and e
    (r"\boxed{\frac{\pi}{2}}", r"\pi/2", 1.0),
    (r"\boxed{\pi}", r"2\pi", 0.0),
    (r"\boxed{e}", r"e^{1}", 1.0),
    (r"\boxed{\ln e^{3}}", "3", 1.0),
    # powers, factorials, logs
    (r"\boxed{3^4}", "81", 1.0),
    (r"\boxed{3^4}", "64", 0.0),
    (r"\boxed{4!}", "24", 1.0),
    (r"\boxed{\log_{10} 1000}", "3", 1.0),
    (r"\boxed{\log_3 9}", "3", 0.0),
    (r"\boxed{\binom{5}{2}}", "10", 1.0),
    # units, percent, degrees, text
    (r"\boxed{12\text{ apples}}", "12", 1.0),
    (r"\boxed{45^{\circ}}", "45", 1.0),
    (r"\boxed{\$5}", "5", 1.0),
    (r"\boxed{5\text{ m}}", "6", 0.0),
    (r"\boxed{\text{(B)}}", "B", 1.0),
    # equations and assignments
    (r"\boxed{y = 2x + 1}", "2x+1", 1.0),
    (r"\boxed{x = -2}", "-2", 1.0),
    (r"\boxed{x = 2}", "-2", 0.0),
    # tuples and sets
    (r"\boxed{(1, 2, 3)}", "(1,2,3)", 1.0),
    (r"\boxed{(1, 3, 2)}", "(1,2,3)", 0.0),
    (r"\boxed{\{3, 1, 2\}}", r"\{1,2,3\}", 1.0),
    (r"\boxed{\{1, 2\}}", r"\{1,2,3\}", 0.0),
    (r"\boxed{(\frac{1}{2}, 3)}", "(0.5, 3)", 1.0),
    # intervals
    (r"\boxed{(1,2]}", "(1,2]", 1.0),
    (r"\boxed{(1,2]}", "[1,2]", 0.0),
    (r"\boxed{(-\infty, 0)}", r"(-\infty, 0]", 0.0),
    (r"\boxed{[0, \infty)}", r"[0,\infty)", 1.0),
    (r"\boxed{(1,3)}", "(1,2)", 0.0),
    # expressions and polynomials
    (r"\boxed{x^2 - 1}", "(x-1)(x+1)", 1.0),
    (r"\boxed{2x}", "x+x", 1.0),
    (r"\boxed{x^3}", "x^2", 0.0),
    (r"\boxed{\frac{1}{x}}", "x^{-1}", 1.0),
    (r"\boxed{a+b}", "b+a", 1.0),
    (r"\boxed{a-b}", "b-a", 0.0),
    (r"\boxed{\sin^2 x + \cos^2 x}", "1", 1.0),
    # stated final answers (no box)
    ("So the final answer is 3/4.", "0.75", 1.0),
    ("Therefore, the final answer is: 10", "10", 1.0),
    ("I think the answer is 11", "10", 0.0),
    # a final-line equation ending in a number
    ("2 + 1 = 3", "3", 1.0),
    ("So, 8 - 3 = 5.", "5", 1.0),
    ("Ana has 4 + 5 = $9$", "9", 1.0),
    ("2 + 1 = 4", "3", 0.0),
    ("2 + 1 = 3\nThat was easy.", "3", 0.0),  # the equation is not the end: no answer
    ("2 + 1 = 3 apples, I think", "3", 0.0),
    ("\\boxed{4}\n2 + 1 = 3", "3", 0.0),  # a box always wins
    ("x + 1 = y", "3", 0.0),
    ("The answer is 4.\n1 + 2 = 3", "3", 0.0),  # a stated answer wins
    # junk
    (r"\boxed{\boxed{5}}", "5", 1.0),
    (r"\boxed{???}", "5", 0.0),
    (r"\boxed{5", "5", 0.0),
]

# The verifier defects found against outside equivalence suites, several variants each.
DEFECT_CASES = [
    # 1. a unit stripped from the answer must never delete a variable the gold has (false positives)
    (r"\boxed{\pi r^2}", r"\pi r^2 h", 0.0),
    (r"\boxed{x+2}", "x+2m", 0.0),
    (r"\boxed{2\pi r s}", r"2\pi r h", 0.0),
    (r"\boxed{0}", "1 000", 0.0),
    (r"\boxed{3}", "x+3", 0.0),
    (r"\boxed{2\pi r}", r"2\pi r h", 0.0),
    (r"\boxed{4ab}", "4abh", 0.0),
    (r"\boxed{x+2m}", "x+2", 0.0),  # nor add one: the extra term is no unit
    (r"\boxed{\pi r^2 h}", r"\pi r^2 h", 1.0),
    (r"\boxed{x+2m}", "x+2m", 1.0),
    # ... while real units after a number still go
    (r"\boxed{10 \text{ m}}", "10", 1.0),
    (r"\boxed{10\text{cm}}", "10", 1.0),
    (r"\boxed{5 cm}", "5", 1.0),
    (r"\boxed{3 hours}", "3", 1.0),
    (r"\boxed{12 \text{ square units}}", "12", 1.0),
    (r"\boxed{7\text{ cm}^2}", r"7\text{ cm}^2", 1.0),
    (r"\boxed{10}", r"10\text{ m}", 1.0),
    # 2. Minerva's answer line: the last statement, not the sentence after it
    ("Final Answer: The final answer is $100$. I hope it is correct.", "100", 1.0),
    ("Final Answer: The final answer is 100. I hope it is correct.", "100", 1.0),
    ("Final Answer: The final answer is $\\frac{3}{4}$. I hope it is correct.", "0.75", 1.0),
    ("Final Answer: The final answer is $99$. I hope it is correct.", "100", 0.0),
    ("The answer is 3. Then, checking again, the answer is 4.", "4", 1.0),
    # 3. i is the imaginary unit
    (r"\boxed{i(2-i)}", "1+2i", 1.0),
    (r"\boxed{i^2}", "-1", 1.0),
    (r"\boxed{(1+i)^2}", "2i", 1.0),
    (r"\boxed{\frac{1}{i}}", "-i", 1.0),
    (r"\boxed{2+i}", "1+2i", 0.0),
    (r"\boxed{i^3}", "i", 0.0),
    # 4. scientific notation with a decimal mantissa
    (r"\boxed{6.02\times10^{23}}", "602000000000000000000000", 1.0),
    (r"\boxed{2.314814814815\times10^{-3}}", r"\frac{1}{432}", 1.0),
    (r"\boxed{1.5 \times 10^{3}}", "1500", 1.0),
    (r"\boxed{2.5\cdot 10^{-2}}", "0.025", 1.0),
    (r"\boxed{6.03\times10^{23}}", "602000000000000000000000", 0.0),
    # 5. degrees inside trigonometric functions
    (r"\boxed{\sin 30^\circ}", r"\frac12", 1.0),
    (r"\boxed{\sin(90^\circ - x)}", r"\cos x", 1.0),
    (r"\boxed{\cos 60^{\circ}}", "0.5", 1.0),
    (r"\boxed{\tan 45^\circ}", "1", 1.0),
    (r"\boxed{\sin 60^\circ}", r"\frac12", 0.0),
    (r"\boxed{30^\circ}", "30", 1.0),
    # 6. plain-text mixed numbers and thousands separators
    (r"\boxed{1 1/2}", "1.5", 1.0),
    (r"\boxed{-2 3/4}", "-2.75", 1.0),
    (r"\boxed{1 1/2}", "2", 0.0),
    (r"\boxed{1\,000}", "1000", 1.0),
    (r"\boxed{1 000}", "1000", 1.0),
    (r"\boxed{1{,}000}", "1000", 1.0),
    (r"\boxed{12,345,678}", "12345678", 1.0),
    (r"\boxed{1\,000}", "100", 0.0),
    (r"\boxed{1,2}", "1,2", 1.0),
]


@pytest.fixture(scope="module")
def scorer():
    s = RewardScorer("math", timeout_s=5.0, num_workers=2)
    yield s
    s.close()


@pytest.mark.parametrize("case", DEFECT_CASES, ids=[f"{c[0][:40]}|{c[1]}" for c in DEFECT_CASES])
def test_verifier_defect_classes(scorer, case):
    response, gold, expected = case
    (result,) = scorer.score_batch([response], [gold])
    assert result.score == expected, result


def test_math_cases(scorer):
    results = scorer.score_batch([c[0] for c in CASES], [c[1] for c in CASES])
    wrong = [(c, r) for c, r in zip(CASES, results) if r.score != c[2]]
    assert not wrong, wrong


# Answers that made the verifier raise. An errored response is left out of training, so a wrong
# answer that raises dodges its penalty: each must score as wrong, with a status that is trained on.
RAISING_ANSWERS = [
    r"\boxed{99\times10^{999999}}",  # decimal.Overflow in the scientific-notation expansion
    r"\boxed{[i, 5]}",  # i read as sqrt(-1) makes a non-real interval
    r"\boxed{(i, 5]}",
]


@pytest.mark.parametrize("answer", RAISING_ANSWERS, ids=range(len(RAISING_ANSWERS)))
def test_an_answer_that_makes_the_verifier_raise_is_wrong_not_an_error(scorer, answer):
    (result,) = scorer.score_batch([answer], ["3"])
    assert (result.score, result.status) in ((0.0, "wrong"), (0.0, "unparseable")), result


# reward.math_answer_form=number: where the gold is a number, the answer must be written as one.
NUMBER_FORM_CASES = [
    (r"\boxed{345+678}", "1023", 0.0),  # the question restated: equal in value, no answer
    (r"The answer is 345 + 678.", "1023", 0.0),
    (r"\boxed{7-3}", "4", 0.0),
    (r"\boxed{2^{10}}", "1024", 0.0),
    (r"\boxed{4!}", "24", 0.0),
    (r"\boxed{\binom{5}{2}}", "10", 0.0),
    (r"\boxed{1023}", "1023", 1.0),
    (r"\boxed{1,023}", "1023", 1.0),
    (r"\boxed{x = 4}", "4", 1.0),
    (r"\boxed{9 - 4 = 5}", "5", 1.0),  # the work shown, ending in the number
    ("So, 8 - 3 = 5.", "5", 1.0),
    (r"\boxed{345+678 = 345+678}", "1023", 0.0),
    (r"\boxed{9 - 4 = 6}", "5", 0.0),
    (r"\boxed{12\text{ apples}}", "12", 1.0),
    (r"\boxed{1.5\times10^{3}}", "1500", 1.0),  # scientific notation is a way to write a number
    (r"\boxed{\frac{6}{8}}", r"\frac{3}{4}", 1.0),
    (r"\boxed{0.75}", r"\frac{3}{4}", 1.0),
    (r"\boxed{1 1/2}", "1.5", 1.0),
    (r"\boxed{-\frac{1}{2}}", "-0.5", 1.0),
    (r"\boxed{1024}", "1023", 0.0),
    # a gold that is not a number keeps the value rule
    (r"\boxed{\sqrt{12}}", r"2\sqrt{3}", 1.0),
    (r"\boxed{(x+1)^2}", "x^2+2x+1", 1.0),
]


def test_the_number_form_refuses_an_expression_for_a_number_and_keeps_the_rest():
    values = RewardScorer("math", timeout_s=5.0, num_workers=2)
    numbers = RewardScorer("math", timeout_s=5.0, num_workers=2, math_form="number")
    try:
        got = numbers.score_batch([c[0] for c in NUMBER_FORM_CASES], [c[1] for c in NUMBER_FORM_CASES])
        wrong = [(c, r) for c, r in zip(NUMBER_FORM_CASES, got) if r.score != c[2]]
        assert not wrong, wrong
        # the default rule pays the restated question: why the arithmetic configs set `number`
        assert values.score_batch([r"\boxed{345+678}"], ["1023"])[0].score == 1.0
    finally:
        values.close()
        numbers.close()


def test_math_reward_contract():
    assert math_reward(r"\boxed{\frac{1}{2}}", "0.5") == 1.0
    assert math_reward("no answer", "0.5") == 0.0
    assert isinstance(math_reward(None, None), float)  # never raises


def test_extraction_is_linear_and_picks_the_last_complete_box():
    assert extract_final_answer(r"\boxed{a{b}c} then \boxed{\frac{1}{2}}") == r"\frac{1}{2}"
    assert extract_final_answer(r"\boxed{3} and an unclosed \boxed{4") == "3"
    t0 = time.perf_counter()
    assert extract_final_answer("{" * 100_000 + r"\boxed{" + "{" * 100_000) is None
    assert time.perf_counter() - t0 < 2.0


HOSTILE = [
    r"\boxed{9^{9^{9^{9^{9^{9}}}}}}",
    r"\boxed{100000000!}",
    r"\boxed{\sum_{n=1}^{10^{12}} n^{n}}",
    "\\boxed{" + "{" * 5000 + "1" + "}" * 5000 + "}",
    "x" * 200_000 + r"\boxed{3}",
    "a\x00b\x00" * 1000 + r"\boxed{3}",
    r"\boxed{\input{/etc/passwd}}",
    r"\boxed{__import__('os').system('touch /tmp/forkrl_pwned')}",
]


def test_hostile_inputs_get_results_within_the_time_bound():
    s = RewardScorer("math", timeout_s=2.0, num_workers=1)
    try:
        for h in HOSTILE:
            t0 = time.perf_counter()
            (res,) = s.score_batch([h], ["3"])
            elapsed = time.perf_counter() - t0
            assert res.score in (0.0, 1.0)
            assert elapsed < 2.0 + 3.0, (h[:40], elapsed)  # limit + a process restart
        # after timeouts the scorer still works
        assert s.score_batch([r"\boxed{3}"], ["3"])[0].score == 1.0
    finally:
        s.close()
    import os

    assert not os.path.exists("/tmp/forkrl_pwned")


def test_power_tower_is_reported_as_timeout_not_wrong():
    s = RewardScorer("math", timeout_s=1.0)
    try:
        (res,) = s.score_batch([r"\boxed{9^{9^{9^{9^{9}}}}}"], ["1"])
        assert res.status == "timeout" and res.score == 0.0
        assert s.restarts == 1
    finally:
        s.close()


def test_custom_and_builtin_rewards():
    s = RewardScorer("tests.fixtures.my_reward:length_bonus", timeout_s=5.0)
    assert [r.score for r in s.score_batch(["x" * 50, "x" * 500], ["", ""])] == [0.5, 1.0]
    s.close()
    s = RewardScorer("starts_with", timeout_s=5.0)
    assert [r.score for r in s.score_batch(["yes it is", "no yes", ""], ["yes"] * 3)] == [1.0, 0.0, 0.0]
    s.close()


def test_custom_reward_failures_are_reported_with_the_function_name():
    s = RewardScorer("tests.fixtures.my_reward:broken", timeout_s=5.0)
    (res,) = s.score_batch(["a"], ["b"])
    assert res.status == "error" and "my_reward:broken" in res.detail and "KeyError" in res.detail
    s.close()
    s = RewardScorer("tests.fixtures.my_reward:not_a_number", timeout_s=5.0)
    (res,) = s.score_batch(["a"], ["b"])
    assert res.status == "error" and "expected a finite float" in res.detail
    s.close()
    s = RewardScorer("tests.fixtures.my_reward:sleepy", timeout_s=0.5)
    (res,) = s.score_batch(["a"], ["b"])
    assert res.status == "timeout"
    s.close()


@pytest.mark.parametrize("spec, needle", [
    ("nope", "expected one of"),
    ("no_such_module_xyz:f", "cannot import"),
    ("tests.fixtures.my_reward:missing", "has no function missing"),
])
def test_bad_reward_spec_is_rejected_up_front(spec, needle):
    with pytest.raises(ValueError, match=needle):
        check_spec(spec)
