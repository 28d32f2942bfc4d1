#!/usr/bin/env bash
# SmolLM2-135M-Instruct before and after specialisation on PaLM-540B's SVAMP chains of thought
# (conf/experiment/specialize_smollm2.yaml): the model as built is scored once (stage=evaluate,
# evaluation.models=[initial]), three seeds are trained and scored (the distill stage is computed once
# and reused through the stage cache), two jobs at a time with one thread each, then the table and plot.
#   bash experiments/specialize_smollm2/run.sh                    # SEEDS="1 2 3"
#   SEEDS=1 bash experiments/specialize_smollm2/run.sh trainer.max_steps=2 evaluation.limit=2 \
#     evaluation.bbh.limit_per_task=2                             # a smoke run
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
SEEDS=(${SEEDS:-1 2 3})
OUT=${OUT:-outputs/specialize_smollm2/$(date +%Y-%m-%d_%H-%M-%S)}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT/logs"
started=$(date +%s)

job() {  # name, overrides...: one mwp run with its log; fails the script if it fails
  local name=$1; shift
  if ! "$BIN/mwp" experiment=specialize_smollm2 hydra.run.dir="$OUT/$name" "$@" >"$OUT/logs/$name.log" 2>&1; then
    tail -n 30 "$OUT/logs/$name.log" >&2; echo "specialize_smollm2: $name failed (log: $OUT/logs/$name.log)" >&2; return 1
  fi
  echo "specialize_smollm2: $name done ($(( $(date +%s) - started )) s)"
}

# the distilled data first, so the parallel seeds reuse it instead of waiting on its lock
job distill stage=distill "$@"
pids=()
job before stage=evaluate 'evaluation.models=[initial]' "$@" & pids+=($!)
for seed in "${SEEDS[@]}"; do
  if (( ${#pids[@]} >= 2 )); then wait "${pids[0]}"; pids=("${pids[@]:1}"); fi
  job "seed$seed" "seed=$seed" 'evaluation.models=[student]' "$@" & pids+=($!)
done
for pid in "${pids[@]}"; do wait "$pid"; done
"$BIN/python" experiments/specialize_smollm2/report.py "$OUT" --out "$OUT/report"
echo "specialize_smollm2: wall time $(( $(date +%s) - started )) s; runs and report under $OUT"
