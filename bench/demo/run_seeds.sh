#!/usr/bin/env bash
# The `make demo` learning result for several seeds, each timed as a user would see it.
# Seed 0 is `make demo` itself, from an empty model cache (conversion included); the others run
# the same config with seed=N. Logs land in bench/demo/seed*.log, metrics under runs/.
# Usage: bash bench/demo/run_seeds.sh [seeds...]   (default 0 1 2)
set -uo pipefail
cd "$(dirname "$0")/../.."
for seed in "${@:-0 1 2}"; do
  for s in $seed; do
    start=$(date +%s)
    if [ "$s" = 0 ]; then
      FORKRL_CACHE=$(mktemp -d) make demo > "bench/demo/seed0.log" 2>&1
    else
      .venv/bin/forkrl train --config configs/demo.yaml "seed=$s" "tracking.name=demo-seed$s" > "bench/demo/seed$s.log" 2>&1
    fi
    echo "seed $s: exit $? in $(( $(date +%s) - start )) s: $(grep -o 'held-out accuracy.*' "bench/demo/seed$s.log" | tail -1)"
  done
done
