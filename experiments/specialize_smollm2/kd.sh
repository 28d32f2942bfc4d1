#!/usr/bin/env bash
# SmolLM2-135M-Instruct specialised with and without a same-tokenizer teacher's distribution
# (conf/experiment/specialize_smollm2_kd.yaml): the merged teacher is made once from a trained
# experiment=specialize_smollm2 student, then both arms (loss=ce, and ce_kl from the dense teacher) train
# and are scored side by side, one thread each, and their accuracies are printed.
#   TEACHER_FROM=<specialize_smollm2 run>/seed1/student bash experiments/specialize_smollm2/kd.sh
#   TEACHER_FROM=... bash experiments/specialize_smollm2/kd.sh trainer.max_steps=2 evaluation.limit=2   # smoke
# TEACHER (default $OUT/teacher): where the merged teacher goes, or an existing one (then TEACHER_FROM is unused).
# ARMS (default "ce ce_kl"): the arms to run, side by side; each holds about 6.5 GB of memory on CPU
# (resident size measured at batch 8), so on a small machine run them one after the other (ARMS=ce, then
# ARMS=ce_kl with the same OUT).
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
OUT=${OUT:-outputs/specialize_smollm2_kd/$(date +%Y-%m-%d_%H-%M-%S)}
TEACHER=${TEACHER:-$OUT/teacher}
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
mkdir -p "$OUT/logs"
started=$(date +%s)

if [[ ! -f "$TEACHER/config.json" ]]; then
  : "${TEACHER_FROM:?set TEACHER_FROM to a trained experiment=specialize_smollm2 student folder, or TEACHER to a merged teacher}"
  "$BIN/python" experiments/specialize_smollm2/make_teacher.py "$TEACHER_FROM" "$TEACHER"
fi

job() {  # name, overrides...: one mwp run with its log; fails the script if it fails
  local name=$1; shift
  if ! "$BIN/mwp" experiment=specialize_smollm2_kd hydra.run.dir="$OUT/$name" "$@" >"$OUT/logs/$name.log" 2>&1; then
    tail -n 30 "$OUT/logs/$name.log" >&2; echo "specialize_smollm2_kd: $name failed (log: $OUT/logs/$name.log)" >&2; return 1
  fi
  echo "specialize_smollm2_kd: $name done ($(( $(date +%s) - started )) s)"
}

# the distilled data first (once per OUT), so both arms reuse it instead of waiting on its lock
[[ -f "$OUT/distill/summary.json" ]] || job distill stage=distill loss=ce "$@"
ARMS=(${ARMS:-ce ce_kl})
pids=()
for arm in "${ARMS[@]}"; do
  case $arm in
    ce) job ce loss=ce "$@" & pids+=($!) ;;
    ce_kl) job ce_kl loss.signal.teacher_model="$(realpath "$TEACHER")" "$@" & pids+=($!) ;;
    *) echo "specialize_smollm2_kd: unknown arm $arm (ce, ce_kl)" >&2; exit 2 ;;
  esac
done
for pid in "${pids[@]}"; do wait "$pid"; done
for arm in ce ce_kl; do
  [[ -f "$OUT/$arm/eval/results.json" ]] || continue
  "$BIN/python" - "$OUT/$arm/eval/results.json" "$arm" <<'PY'
import json, sys
for row in json.load(open(sys.argv[1])):
    print(f"{sys.argv[2]:6} {row['dataset']:8} {row['split']:5} n={row['size']:<4} strict {100 * row['strict_acc']:5.1f}  flexible {100 * row['flexible_acc']:5.1f}")
PY
done
echo "specialize_smollm2_kd: wall time $(( $(date +%s) - started )) s; runs under $OUT"
