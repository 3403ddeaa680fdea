"""The learner on one GPU: the cost curve (issue 26) and LoRA against full fine-tuning at a 1.7B
shape (issue 24), each through bench/learner_speed.py, under one deadline.

A GPU lease here is short and has no Hub, so the models are random-init copies of real
architectures, written on the GPU machine from a config and a tokenizer carried with the tree:
- `135m`: SmolLM2-135M's architecture (the demo's model);
- `1.7b`: SmolLM2-1.7B's (hidden 2048, 24 layers, 32 heads, vocabulary 49,152), the size the
  single-GPU LoRA config is for.
Random weights change no timing or memory figure: the same shapes run the same kernels.

    python bench/gpu_learner.py --tokenizer <folder with SmolLM2's config.json and tokenizer> \
        --out <dir> --deadline-s 420 [--set round2|next]

The tokenizer folder is the packaged model's (~/.cache/forkrl/smollm2-135m-instruct, less
model.safetensors); carry it and the wheels the GPU image lacks (transformers 5.19, DeepSpeed
0.19.8 built with DS_BUILD_OPS=0, peft, accelerate, pydantic and pydantic-core, annotated-types,
typing-inspection, typing-extensions, hjson, regex, tokenizers).

Each shape runs only if the deadline leaves room for it (cases are ordered by priority), and each
result row is appended to <out>/learner_speed_gpu.jsonl as soon as it exists, so a lease that ends
early still returns what finished.
"""
from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SHAPES = {
    "135m": {},
    "1.7b": {"hidden_size": 2048, "intermediate_size": 8192, "num_hidden_layers": 24,
             "num_attention_heads": 32, "num_key_value_heads": 32},
    # Qwen2.5-1.5B's sizes in SmolLM2's (Llama) architecture: its vocabulary, GQA and depth
    "qwen1.5b": {"hidden_size": 1536, "intermediate_size": 8960, "num_hidden_layers": 28, "num_attention_heads": 12,
                 "num_key_value_heads": 2, "vocab_size": 151936, "tie_word_embeddings": True},
}
LONG = ["--resp-min", "128", "--resp-max", "512", "--informative", "1.0", "prompts_per_step=16",
        "generation.max_new_tokens=512", "generation.max_model_len=1024", "learner.micro_batch_size=8"]

# Each set: (label, model shape, learner_speed.py arguments, a rough upper bound of its seconds on an H200).
# "round2" ran on 2026-12-04 (bench/README.md "On GPU, second round"). "next" is prepared for the
# next lease, not yet run: at issue 26's 1.5B shape, whether the packed rows' 4-D mask (share_prompt)
# or ZeRO-3's hooks cost more, with one profiled step.
SETS = {}
SETS["next"] = [
    ("qwen1.5b shared vs unshared prompt, profiled", "qwen1.5b", [*LONG, "--profile", "30",
                                                                   "--variant", "learner.share_prompt=false"], 200),
    ("qwen1.5b persistence 1e9", "qwen1.5b", [*LONG, "--variant", "learner.zero_persistence_threshold=1000000000"], 150),
    ("qwen1.5b lora persistence 1e9", "qwen1.5b", [*LONG, "learner.lora.rank=32", "learner.lora.alpha=64",
                                                   "--variant", "learner.zero_persistence_threshold=1000000000"], 150),
]
SETS["round2"] = [
    ("cost 135m 32x(64-256)", "135m",
     ["--resp-min", "64", "--resp-max", "256", "--informative", "1.0", "generation.max_new_tokens=256",
      "generation.max_model_len=512"], 60),
    ("cost 135m 128x(256-1024)", "135m",
     ["--resp-min", "256", "--resp-max", "1024", "--informative", "1.0", "prompts_per_step=16",
      "generation.max_new_tokens=1024", "generation.max_model_len=1280", "learner.micro_batch_size=16"], 90),
    ("lora vs full 1.7b 128x(128-512)", "1.7b",
     ["--resp-min", "128", "--resp-max", "512", "--informative", "1.0", "prompts_per_step=16",
      "generation.max_new_tokens=512", "generation.max_model_len=1024", "learner.micro_batch_size=8",
      "--variant", "learner.lora.rank=32", "learner.lora.alpha=64", "learner.lr=1e-4"], 180),
    ("cost 135m demo 32x(8-32)", "135m", ["--informative", "1.0"], 45),
]


def build_model(shape: str, tokenizer: Path, out: Path) -> Path:
    """A random-init model of `shape` in bf16, with the carried tokenizer, written to out/<shape>."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    folder = out / shape
    if (folder / "config.json").is_file():
        return folder
    cfg = AutoConfig.from_pretrained(tokenizer)
    for k, v in SHAPES[shape].items():
        setattr(cfg, k, v)
    torch.manual_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    model.save_pretrained(folder)
    for f in tokenizer.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens", "vocab", "merges", "generation_config", "chat_template")):
            shutil.copy(f, folder / f.name)
    print(f"[gpu] built {shape}: {sum(p.numel() for p in model.parameters()) / 1e9:.2f}B parameters", flush=True)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tokenizer", type=Path, required=True, help="folder with config.json and tokenizer files")
    ap.add_argument("--models", type=Path, default=Path("/tmp/gpu_models"))
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--deadline-s", type=float, default=420)
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--set", choices=sorted(SETS), default="next")
    ap.add_argument("--only", nargs="*", default=[], help="labels to run (default: all of the set, in order)")
    args = ap.parse_args()
    start = time.monotonic()
    args.out.mkdir(parents=True, exist_ok=True)
    results = args.out / "learner_speed_gpu.jsonl"
    for label, shape, extra, budget in SETS[args.set]:
        if args.only and label not in args.only:
            continue
        left = args.deadline_s - (time.monotonic() - start)
        if left < budget:
            print(f"[gpu] skipped {label!r}: {left:.0f} s left, it needs up to {budget}", flush=True)
            continue
        model = build_model(shape, args.tokenizer, args.models)
        cmd = [sys.executable, str(ROOT / "bench" / "learner_speed.py"), "--config", "configs/demo.yaml",
               "--repeats", "3", "--rounds", "1", "--threads", str(args.threads), "--results", str(results),
               "--label", f"gpu {label}", f"model.path={model}", *extra]
        t0 = time.monotonic()
        print(f"[gpu] {label}: {' '.join(cmd[2:])}", flush=True)
        try:
            proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=max(left - 5, 10))
            print(proc.stdout[-2000:], proc.stderr[-6000:] if proc.returncode or "--profile" in extra else "", flush=True)
        except subprocess.TimeoutExpired:
            print(f"[gpu] {label}: timed out", flush=True)
        print(f"[gpu] {label}: {time.monotonic() - t0:.0f} s", flush=True)
    print(f"[gpu] done in {time.monotonic() - start:.0f} s; rows in {results}", flush=True)
    if results.exists():
        for line in results.read_text().splitlines():
            row = json.loads(line)
            print(json.dumps({k: row.get(k) for k in ("label", "tokens", "reference_s", "learner_s", "ratio",
                                                      "learner_peak_gpu_gb", "reference_peak_gpu_gb", "variant_s",
                                                      "variant_peak_gpu_gb")}))


if __name__ == "__main__":
    main()
