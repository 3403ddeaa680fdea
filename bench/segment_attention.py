"""Segment attention against the explicit T x T mask: one group's packed row through the whole
model, forward (final hidden states at the scored positions) and backward, each way in turn in one
process, on the same 2 threads. Prints each pass's time, the process's peak RSS so far, the
gradient norm of both (the same) and the largest hidden-state difference.

    python bench/segment_attention.py MODEL_DIR GROUP RESP_MIN RESP_MAX PROMPT ORDER
    python bench/segment_attention.py ~/.cache/forkrl/smollm2-135m-instruct 8 256 1024 51 seg,dense

ORDER is `seg,dense` or `dense,seg`: peak RSS only grows, so the first pass's peak is its own and
the second's is the larger of the two; run both orders to read each peak.
"""
import random
import resource
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from learner.attention import LAYOUT_KWARG, SEGMENT_ATTENTION, register  # noqa: E402
from learner.packing import pack  # noqa: E402


def main() -> None:
    from transformers import AutoModelForCausalLM

    torch.manual_seed(0)
    random.seed(0)
    torch.set_num_threads(2)
    path, g, lo, hi, P = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
    order = [s == "seg" for s in sys.argv[6].split(",")]
    register()
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation=SEGMENT_ATTENTION)
    V = model.config.vocab_size
    prompt = torch.randint(100, V, (P,))
    resps = [torch.randint(100, V, (random.randint(lo, hi),)) for _ in range(g)]
    L = P + max(len(r) for r in resps)
    ids = torch.zeros(g, L, dtype=torch.long)
    lengths = torch.tensor([P + len(r) for r in resps])
    valid = torch.zeros(g, L - 1, dtype=torch.bool)
    for i, r in enumerate(resps):
        ids[i, :P], ids[i, P : P + len(r)] = prompt, r
        valid[i, P - 1 : P - 1 + len(r)] = True
    row = pack(ids, lengths, torch.full((g,), P), valid, True, torch.float32)
    T = row.input_ids.shape[1]
    print("T", T, "query-key pairs: mask", T * T, "segments", sum(len(r) * (P + len(r)) for r in resps))
    hidden = {}
    for seg in order:
        model.zero_grad()
        kw = dict(input_ids=row.input_ids, position_ids=row.position_ids)
        if seg:
            kw.update(attention_mask=torch.ones_like(row.input_ids), **{LAYOUT_KWARG: row.layout})
        else:
            kw.update(attention_mask=row.attention_mask)
        t = time.perf_counter()
        out = model(**kw, output_hidden_states=True, logits_to_keep=torch.zeros(0, dtype=torch.long))
        h = out.hidden_states[-1][0, row.predictors]
        h.pow(2).mean().backward()
        dt = time.perf_counter() - t
        gnorm = torch.sqrt(sum(p.grad.pow(2).sum() for p in model.parameters() if p.grad is not None))
        hidden[seg] = h.detach()
        print("segments" if seg else "T x T mask", f"{dt:.2f} s  grad norm {float(gnorm):.6f}  peak RSS so far "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6:.2f} GB")
    if len(hidden) == 2:
        print("max |hidden difference|", float((hidden[True] - hidden[False]).abs().max()),
              "of", float(hidden[False].abs().max()))


if __name__ == "__main__":
    main()
