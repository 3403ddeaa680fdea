#!/usr/bin/env bash
# The demo's task as verl data and a verl reward, both unchanged (bench/README.md "Peer formats").
# Usage: bench/peer_formats/run.sh SEED [SEED ...]   (from the repository root; one run per seed)
set -euo pipefail
BIN=${BIN:-.venv/bin}
DATA=runs/peer_formats_data
$BIN/python bench/peer_formats/make_data.py $DATA
$BIN/forkrl prepare-model
for seed in "$@"; do
  [ -f runs/verl-format-s$seed/metrics.jsonl ] && grep -q '"step": 32' runs/verl-format-s$seed/metrics.jsonl && continue
  rm -rf runs/verl-format-s$seed  # a run cut off before its end starts again
  $BIN/forkrl train --config configs/demo.yaml seed=$seed tracking.name=verl-format-s$seed tracking.wandb_mode=offline \
    data.train_files=[$DATA/train.parquet] eval.files=[$DATA/test.parquet] \
    data.prompt_key=prompt data.answer_key=reward_model.ground_truth data.instruction='' \
    reward.fn=bench/peer_formats/verl_math.py:compute_score
done
