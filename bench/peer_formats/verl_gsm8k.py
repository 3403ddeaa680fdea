"""A reward written for verl, unchanged: the strict rule of verl's GSM8K scorer (the last
`#### N` in the response must equal the ground truth; no format score), as a user would bring it.
Plugged in by file path: reward.fn=bench/peer_formats/verl_gsm8k.py:compute_score."""
import re

_SOLUTION = re.compile(r"#### (\-?[0-9\.\,]+)")


def extract_solution(solution_str):
    found = _SOLUTION.findall(solution_str)
    return found[-1].replace(",", "").replace("$", "") if found else None


def compute_score(data_source, solution_str, ground_truth, extra_info=None, format_score=0.0, score=1.0):
    answer = extract_solution(solution_str)
    if answer is None:
        return 0.0
    return score if answer == ground_truth else format_score
