#!/usr/bin/env bash
# The demo's task as verl parquet and a reward in verl's shape, by file path (bench/README.md "Peer
# formats"). Usage, from the repository root: bench/peer_formats/run.sh SEED [SEED ...]
#   REWARD=path.py:fn  the reward (default bench/peer_formats/verl_math.py:compute_score)
#   PREFIX=name        runs/PREFIX-sSEED (default verl-format)
# A seed whose run reached step 32 is skipped, so a cut-off sweep resumes by running it again.
set -euo pipefail
BIN=${BIN:-.venv/bin}
DATA=runs/peer_formats_data
REWARD=${REWARD:-bench/peer_formats/verl_math.py:compute_score}
PREFIX=${PREFIX:-verl-format}
$BIN/python bench/peer_formats/make_data.py $DATA
$BIN/forkrl prepare-model
for seed in "$@"; do
  run=runs/$PREFIX-s$seed
  if [ -f $run/metrics.jsonl ] && grep -q '"step": 32' $run/metrics.jsonl; then continue; fi
  rm -rf $run  # a run cut off before its end starts again
  $BIN/forkrl train --config configs/demo.yaml seed=$seed tracking.name=$PREFIX-s$seed tracking.wandb_mode=offline \
    data.train_files=[$DATA/train.parquet] eval.files=[$DATA/test.parquet] \
    data.prompt_key=prompt data.answer_key=reward_model.ground_truth data.instruction='' reward.fn=$REWARD
done
