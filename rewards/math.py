"""Math answer verification: extract the final answer, compare it with the ground truth by value.

Departures from a plain `math_verify.verify(parse(gold), parse(response))`:
- Only the *last* `\\boxed{}`/`\\fbox{}` counts (else a stated "final answer is ..."/"Answer: ..."/
  GSM8K's "#### 72").
  Handing the whole response to math-verify lets it try every candidate, so spraying boxes or a
  stray earlier number could earn reward.
- Only LaTeX parsing (latex2sympy, an ANTLR grammar) is used; math-verify's plain-expression path
  goes through sympy's `parse_expr`, which calls `eval`, and model text must never be evaluated.
- Parsing and comparison run in a killable process (`rewards.bounded`) with a wall-clock limit, so
  any input gets an answer in bounded time, in any thread. The reason for a 0 is returned as well.
"""
from __future__ import annotations

import functools
import re

from rewards.normalize import is_written_number, normalise_answer, normalise_gold
from rewards.result import Status

MAX_ANSWER_CHARS = 1000  # longer "final answers" are treated as unparseable, not verified
_BOX_RE = re.compile(r"\\(?:boxed|fbox)\s*\{")
# A last line that is a worked equation ending in a number ("3 + 4 = 7"): small models state
# results this way, and reading it is what a person does. Only a plain number after the last '='
# at the very end of the response counts, so this adds no expression or variable matching.
_EQUATION_END_RE = re.compile(r"=\s*\$?\s*(-?\d+(?:\.\d+)?(?:/\d+)?)\s*\$?\s*[.!]?\s*$")
_STATED_MARK_RE = re.compile(r"final answer is|final answer\s*:|answer is|answer\s*:", re.IGNORECASE)
# GSM8K's answer line (its solutions end so, and verl's GSM8K prompt asks for it): `####` then a
# number, alone on its line. A Markdown heading (`#### 2. Compute the area`, `#### Verification`)
# is not an answer: read as one, a section number would score wherever it equals the gold.
_HASH_LINE_RE = re.compile(r"^[ \t]*####[ \t]*(-?\d[\d,]*(?:\.\d+)?(?:/\d+)?)[ \t]*\.?[ \t]*$", re.MULTILINE)
_STATED_VALUE_RE = re.compile(r"\s*:?\s*(?:\$+)?([^\n$]{1,200})")
_SENTENCE_END_RE = re.compile(r"\.(?:\s|$)")

_IMAGINARY_RE = re.compile(r"(?<![A-Za-z\\])i(?![A-Za-z])")


def last_boxed(text: str) -> str | None:
    """Content of the last complete \\boxed{...} or \\fbox{...}, or None. Linear time: every brace's
    partner is found in one pass (unclosed boxes cannot make it quadratic)."""
    partner, opened = {}, []
    for i, c in enumerate(text):
        if c == "{":
            opened.append(i)
        elif c == "}" and opened:
            partner[opened.pop()] = i
    for m in reversed(list(_BOX_RE.finditer(text))):
        end = partner.get(m.end() - 1)
        if end is not None:
            return text[m.end():end]
    return None


def extract_final_answer(text: str) -> str | None:
    """The response's final answer: the last box, else the last stated answer ("The answer is 7",
    or GSM8K's `#### 7` line), else the number that ends a final-line equation ("2 + 5 = 7"), else None."""
    text = text.replace("\x00", "")
    boxed = last_boxed(text)
    if boxed is not None:
        return boxed.strip()
    tail = text[-4000:]  # a stated answer sits at the end; bounds the regex work on huge inputs
    marks = list(_STATED_MARK_RE.finditer(tail))
    hashes = list(_HASH_LINE_RE.finditer(tail))
    if hashes and (not marks or hashes[-1].start() > marks[-1].start()):  # the last statement wins
        return hashes[-1].group(1)
    if marks:  # the last statement wins: "Final Answer: The final answer is $100$. I hope it is correct."
        value = _STATED_VALUE_RE.match(tail, marks[-1].end())
        if value:
            return _SENTENCE_END_RE.split(value.group(1), maxsplit=1)[0].strip().rstrip(".").strip()
    lines = tail.strip().splitlines()
    equation = _EQUATION_END_RE.search(lines[-1][-200:]) if lines else None
    return equation.group(1) if equation else None


_MATH_DELIMITERS_RE = re.compile(r"^(?:\$\$|\$|\\\(|\\\[)(.*?)(?:\$\$|\$|\\\)|\\\])\.?$", re.DOTALL)


def _as_gold(ground_truth: str) -> str:
    """The dataset's answer: its last box if it has one, else what follows GSM8K's last `####`
    (a raw GSM8K answer is the worked solution, then `#### 72`), without `$ $`, `\\( \\)` or
    `\\[ \\]` around it."""
    gt = ground_truth.replace("\x00", "").strip()
    boxed = last_boxed(gt)
    if boxed is None and "####" in gt and gt.rsplit("####", 1)[1].strip():
        gt = gt.rsplit("####", 1)[1]
    gt = (boxed if boxed is not None else gt).strip()
    m = _MATH_DELIMITERS_RE.match(gt)
    return (m.group(1) if m else gt).strip()


@functools.lru_cache(maxsize=1)
def _latex_only_config():
    from latex2sympy2_extended.math_normalization import NormalizationConfig
    from math_verify import LatexExtractionConfig

    # boxed_match_priority=0 lets a boxed gold like "\boxed{3}" unwrap; answers arrive pre-extracted.
    # units=False: math-verify's unit stripping deletes trailing letters (gold `x+2m` accepted
    # `x+2`); forkrl strips units itself, gold-aware (rewards.normalize).
    norm = NormalizationConfig(basic_latex=True, units=False, malformed_operators=True, nits=True, boxed="all",
                               equations=False)
    return [LatexExtractionConfig(boxed_match_priority=0, normalization_config=norm)]


def _with_imaginary_unit(parsed: list) -> list:
    """The parsed answer with the symbol i read as the imaginary unit."""
    import sympy

    out = []
    for p in parsed:
        if isinstance(p, sympy.Basic):  # the parser's symbol may carry assumptions: match by name
            p = p.subs({s: sympy.I for s in p.free_symbols if getattr(s, "name", None) == "i"})
        out.append(p)
    return out


def compare_answers(answer: str, gold: str, number_form: bool = False) -> tuple[bool, str]:
    """Runs inside the verifier process: (equal, status). Both sides parsed as LaTeX only, after
    forkrl's conventions (rewards.normalize). `i` is the imaginary unit: when the plain comparison
    fails and either side uses `i`, both are compared again with i = sqrt(-1). `number_form`
    (reward.math_answer_form=number): where the gold is a number, an answer not written as one
    (`345+678`, `2^{10}`) is wrong whatever its value."""
    from math_verify import parse, verify

    cfg = _latex_only_config()
    gold = normalise_gold(gold)
    gold_parsed = parse(f"${gold}$", extraction_config=cfg)
    if not gold_parsed:
        raise ValueError(f"ground truth {gold[:80]!r} could not be parsed")
    # The gold parsed, so whatever raises from here on was raised by the answer, and the answer is
    # not right. It must not become status `error`: an errored response is left out of training,
    # and a policy would learn to dodge a wrong answer's penalty by writing one that raises
    # (`99\times10^{999999}` overflowed a Decimal; `[i, 5]` with i = sqrt(-1) is no interval).
    try:
        written = normalise_answer(answer, gold)
        # An equation's last side is its answer, as math-verify reads it: `9 - 4 = 5` shows the
        # work and ends in a number; `345+678` alone does not.
        if number_form and is_written_number(gold) and not is_written_number(written.rsplit("=", 1)[-1]):
            return False, ""
        ans_parsed = parse(f"${written}$", extraction_config=cfg)
        if not ans_parsed:
            return False, Status.UNPARSEABLE
        if verify(gold_parsed, ans_parsed):
            return True, ""
        if _IMAGINARY_RE.search(gold) or _IMAGINARY_RE.search(answer):
            return bool(verify(_with_imaginary_unit(gold_parsed), _with_imaginary_unit(ans_parsed))), ""
        return False, ""
    except Exception:  # noqa: BLE001 - see above. A timeout kills the verifier process: it stays `timeout`
        return False, Status.UNPARSEABLE


def score_math(response: str, ground_truth: str, number_form: bool = False) -> tuple[float, str]:
    """(score, status) for one response (`number_form`: see compare_answers). Unbounded in time:
    call it through a RewardScorer."""
    answer = extract_final_answer(response)
    if answer is None:
        return 0.0, Status.NO_ANSWER
    if not answer or len(answer) > MAX_ANSWER_CHARS:
        return 0.0, Status.UNPARSEABLE
    equal, why = compare_answers(answer, _as_gold(ground_truth), number_form)
    return (1.0, Status.CORRECT) if equal else (0.0, why or Status.WRONG)
