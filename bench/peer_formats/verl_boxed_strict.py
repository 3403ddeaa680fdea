"""A strict reward in verl's shape, as a MATH-style user writes it: the last \\boxed{} of the
response, compared as a string with the ground truth after dropping spaces and `$`, returned as
verl's dict (score, acc, pred, boxed). By file path:
reward.fn=bench/peer_formats/verl_boxed_strict.py:compute_score. On the demo's task the base
model almost never fills a box, so this trains on length alone (bench/README.md "Peer formats")."""


def last_boxed(text):
    start = text.rfind("\\boxed{")
    if start < 0:
        return None
    depth, i = 0, start + len("\\boxed")
    for j in range(i, len(text)):
        depth += {"{": 1, "}": -1}.get(text[j], 0)
        if depth == 0:
            return text[i + 1:j]
    return None


def _norm(s):
    return "".join(str(s).split()).replace("$", "")


def compute_score(data_source, solution_str, ground_truth, extra_info=None):
    pred = last_boxed(solution_str)
    right = pred is not None and _norm(pred) == _norm(ground_truth)
    return {"score": 1.0 if right else 0.0, "acc": right, "pred": "" if pred is None else pred,
            "boxed": float(pred is not None)}
