"""Answer-string conventions settled before math-verify parses anything (pure string functions).

math-verify's own unit stripping deletes trailing letters it takes for units, so gold `x+2m`
accepted `x+2` and gold `\\pi r^2 h` accepted `\\pi r^2`: a wrong answer earning full reward, the
kind of hole RL finds. forkrl turns that off and strips units itself, by one rule: a unit goes only
where it follows a number and is a `\\text{}`-style unit or a known unit word, and never when the
same symbol appears in the gold as a variable. The other conventions here:
- thousands separators (`1\\,000`, `1 000`, `1{,}000`) are removed between groups of three digits;
- a plain-text mixed number `1 1/2` is 1 + 1/2;
- scientific notation `6.02\\times10^{23}` becomes the exact decimal it names;
- inside trigonometric functions, `30^\\circ` is 30 pi / 180; elsewhere a trailing degree sign is a
  unit.
The imaginary unit is handled at comparison (`rewards.math`).
"""
from __future__ import annotations

import re
from decimal import Decimal

# Units that may follow a number and be dropped (whole words, singular or plural). Single letters
# are on the list because answers like "10 m" are common, but the gold-variable rule protects them.
UNIT_WORDS = frozenset("""
m cm mm km g kg mg s ms h hr hrs min l ml
meter meters metre metres centimeter centimeters millimeter millimeters kilometer kilometers
inch inches foot feet ft yard yards mile miles mph kmh gram grams kilogram kilograms pound pounds lb lbs
ounce ounces oz second seconds minute minutes hour hours day days week weeks month months year years
dollar dollars cent cents unit units degree degrees deg liter liters litre litres gallon gallons
square cubic sq percent
""".split())

_UNIT_TAIL_RE = re.compile(
    r"(?:\\[,;:! ]|~|\s)*(?:\\(?:text|textrm|textbf|textit|textnormal|mbox|mathrm)\s*\{\s*(?P<text>[^{}]*)\}|(?P<word>[A-Za-z]+(?:\s+[A-Za-z]+)?))"
    r"\s*(?:\^\s*\{?\s*[23]\s*\}?)?\s*\.?\s*$")
_LETTERS_RE = re.compile(r"[A-Za-z]")
_THOUSANDS_RE = re.compile(r"(?<![\d.])(\d{1,3})((?:(?:\\,|\\ |\\;|~|\{,\}|,|\s)\d{3})+)(?![\d])")
_SEP_RE = re.compile(r"\\,|\\ |\\;|~|\{,\}|,|\s")
_MIXED_RE = re.compile(r"^\s*(-?)(\d+)\s+(\d+)\s*/\s*(\d+)\s*$")
_SCI_RE = re.compile(r"(-?\d+(?:\.\d+)?)\s*(?:\\times|\\cdot|\*|x)\s*10\s*\^\s*\{?\s*(-?\d+)\s*\}?")
_TRIG_RE = re.compile(r"\\(?:sin|cos|tan|cot|sec|csc)\b")
_DEGREE_RE = re.compile(r"(\d+(?:\.\d+)?)\s*\^\s*\{?\s*\\circ\s*\}?")
_TRAILING_DEGREE_RE = re.compile(r"\s*\^\s*\{?\s*\\circ\s*\}?\s*$|\s*°\s*$")


def gold_symbols(gold: str) -> set[str]:
    """Letters and words the gold uses outside LaTeX command names: its variables."""
    bare = re.sub(r"\\[A-Za-z]+", " ", gold)  # \pi, \frac, \text ... are not variables
    return set(re.findall(r"[A-Za-z]+", bare)) | set(re.findall(r"[A-Za-z]", bare))


def _is_number(text: str) -> bool:
    r"""A numeric expression: digits and LaTeX commands (\frac, \sqrt, \pi), no bare letter."""
    bare = re.sub(r"\\[A-Za-z]+", "", text)
    return bool(re.search(r"\d", bare)) and not _LETTERS_RE.search(bare)


def strip_units(text: str, protected: set[str], single_letters: bool) -> str:
    """Drop one trailing unit from a number: a `\\text{}`-style unit, or a known unit word
    (single letters like `m` only when `single_letters`). Nothing is dropped unless what remains
    is a plain number, or when the unit is one of the `protected` symbols (the gold's variables)."""
    m = _UNIT_TAIL_RE.search(text)
    if not m or not _is_number(text[: m.start()]):
        return text
    if m.group("text") is not None:
        words = m.group("text").split()
    else:
        words = m.group("word").split()
        if not all(w.lower() in UNIT_WORDS for w in words):
            return text
        if not single_letters and any(len(w) == 1 for w in words):
            return text
    if any(w in protected for w in words):
        return text
    return text[: m.start()].rstrip()


def drop_thousands_separators(text: str) -> str:
    """`1\\,000`, `1 000`, `1{,}000`, `12,345,678` -> digits only (groups of exactly three).

    A comma between numbers in a list (`1,2`) is not three digits and stays."""
    if "\\frac" not in text and re.fullmatch(r"\s*\d{1,3}(,\d{3})+\s*,\s*\d", text):
        return text  # a list whose first item has separators: ambiguous, leave it
    return _THOUSANDS_RE.sub(lambda m: m.group(1) + _SEP_RE.sub("", m.group(2)), text)


def mixed_number(text: str) -> str:
    """Plain-text `1 1/2` -> `(1+\\frac{1}{2})` (negative: `-1 1/2` -> `-(1+\\frac{1}{2})`)."""
    m = _MIXED_RE.match(text)
    if not m:
        return text
    sign, whole, num, den = m.groups()
    return f"{sign}({whole}+\\frac{{{num}}}{{{den}}})"


def expand_scientific(text: str) -> str:
    """`6.02\\times10^{23}` -> `602000000000000000000000`: the exact decimal, compared by value."""
    def plain(m: re.Match) -> str:
        if len(m.group(2).lstrip("-")) > 3 or abs(int(m.group(2))) > 400:  # int() of 4301 digits raises
            return m.group(0)  # leave astronomically long expansions to the parser
        try:
            value = Decimal(m.group(1)).scaleb(int(m.group(2)))
        except (ArithmeticError, ValueError):  # InvalidOperation and Overflow: the answer's, so not an error
            return m.group(0)
        out = format(value, "f")
        return out.rstrip("0").rstrip(".") if "." in out else out
    return _SCI_RE.sub(plain, text)


def degrees(text: str) -> str:
    """Inside trigonometric functions a degree is pi/180; otherwise a trailing degree sign is a unit."""
    if _TRIG_RE.search(text):
        return _DEGREE_RE.sub(lambda m: f"\\frac{{{m.group(1)}\\pi}}{{180}}", text)
    return _TRAILING_DEGREE_RE.sub("", text)


def _conventions(text: str) -> str:
    return degrees(expand_scientific(mixed_number(drop_thousands_separators(text.strip()))))


def normalise_gold(gold: str) -> str:
    """The gold as compared: a `\text{}` or multi-letter unit after a number dropped (a bare
    letter in the gold is taken as a variable), then separators, mixed numbers, notation, degrees."""
    return _conventions(strip_units(gold.strip(), protected=set(), single_letters=False))


def normalise_answer(answer: str, gold: str) -> str:
    """The answer as compared with `gold` (already normalised): a unit after a number dropped
    unless the gold uses that symbol, then the same conventions as the gold."""
    return _conventions(strip_units(answer.strip(), protected=gold_symbols(gold), single_letters=True))


# A number as written, after normalise_answer (separators dropped, notation expanded, units gone):
# an integer or decimal, a fraction of integers, or a mixed number (`(1+\frac{1}{2})`), signed.
_INT = r"[+-]?\d+"
_DIGIT_OR_GROUP = rf"(?:\d|\{{{_INT}\}})"
_NUMBER_RE = re.compile(
    rf"[+-]?(?:\d+(?:\.\d*)?|\.\d+)"  # 12, -3.5, .5
    rf"|[+-]?\\[dt]?frac{_DIGIT_OR_GROUP}{_DIGIT_OR_GROUP}"  # \frac{3}{4}, \frac12, \dfrac{-1}{2}
    rf"|{_INT}/\d+"  # 3/4
    rf"|[+-]?\(\d+\+\\frac\{{\d+\}}\{{\d+\}}\)")  # a mixed number, as mixed_number writes it
_WRAPPERS = re.compile(r"\$|\\left|\\right|\\[!,;: ]|\s|\\%|%|\\\$|\.$")


def is_written_number(text: str) -> bool:
    """`text` (normalised) is a number as written, not an expression of several: `1023`, `-\\frac{1}{2}`
    and `x = 4` are; `345+678`, `2^{10}` and `5!` are not."""
    t = re.sub(r"^[A-Za-z]\w*=", "", _WRAPPERS.sub("", text))  # x = 4: the value after the variable
    t = re.sub(r"^\\(?:text|mathrm|textbf|mathbf)\{(.*)\}$", r"\1", t)
    while len(t) > 2 and t[0] + t[-1] in ("{}", "()") and _NUMBER_RE.fullmatch(t[1:-1]):
        t = t[1:-1]
    return _NUMBER_RE.fullmatch(t) is not None

