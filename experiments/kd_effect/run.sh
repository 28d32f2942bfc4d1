#!/usr/bin/env bash
# The offline KD-effect experiment (experiments/kd_effect/README.md): data, teacher, five student arms x seeds,
# then the table. Usage: experiments/kd_effect/run.sh [OUT_DIR] [extra Hydra overrides for every run]
#   SEEDS=1,2,3 (default)  PYTHON=python (default: the one on PATH)
# Two jobs run at a time (one per core): the teacher beside the CE arm, which needs no teacher, then the
# four KD arms in two queues. Each job's output goes to OUT_DIR/logs/.
set -euo pipefail
cd "$(dirname "$0")/../.."
OUT=$(realpath -m "${1:-outputs/kd_effect_experiment}")
shift || true
SEEDS=${SEEDS:-1,2,3}
PY=${PYTHON:-python}
# One thread per run: on a shared CPU, more threads only contend (a step took 5x longer with 2).
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} HF_HUB_OFFLINE=1 WANDB_MODE=${WANDB_MODE:-disabled}
mwp() { "$PY" -m mwp.cli "$@"; }
stamp() { echo "[$(date -u +%H:%M:%S)] $*"; }
mkdir -p "$OUT/logs"
EXTRA=("$@")

DATA=$OUT/data/distill
if [[ ! -f $DATA/distilled.jsonl ]]; then
  stamp "1/3 rows: the simulated gold-equation teacher on four fifths of MAWPS+ASDiv-A train"
  mwp experiment=kd_effect stage=distill hydra.run.dir="$OUT/data" "${EXTRA[@]}" >"$OUT/logs/data.log" 2>&1 ||
    { tail -n 30 "$OUT/logs/data.log" >&2; exit 1; }
fi
TEACHER=$OUT/teacher/student
common=(experiment=kd_effect 'stage.steps=[train,evaluate]' stage.data="$DATA" "seed=$SEEDS")
dense=(loss=ce_kl loss.signal.source=dense loss.signal.teacher_model="$TEACHER")
run_arm() {
  local name=$1
  shift
  [[ -f $OUT/students/$name/multirun.yaml ]] && { stamp "  $name: done before"; return; }
  stamp "  $name"
  mwp -m "${common[@]}" "$@" hydra.sweep.dir="$OUT/students/$name" "${EXTRA[@]}" >"$OUT/logs/$name.log" 2>&1 ||
    { tail -n 30 "$OUT/logs/$name.log" >&2; exit 1; }
  stamp "  $name: done"
}
teacher() {
  [[ -f $TEACHER/model.safetensors ]] && return
  stamp "  teacher: the larger T5, trained and scored on the held-out fifth"
  mwp experiment=kd_effect_teacher 'stage.steps=[train,evaluate]' stage.data="$DATA" hydra.run.dir="$OUT/teacher" \
    "${EXTRA[@]}" >"$OUT/logs/teacher.log" 2>&1 || { tail -n 30 "$OUT/logs/teacher.log" >&2; exit 1; }
  stamp "  teacher: done"
}
# Runs two functions side by side, each in its own subshell (a failed run exits only that one), and fails
# if either does.
both() {
  ("$1") &
  local first=$!
  ("$2") || { wait "$first" || true; return 1; }
  wait "$first"
}

ce_arm() {
  run_arm ce loss=ce
}
stamp "2/3 teacher beside the student alone (seeds $SEEDS)"
both teacher ce_arm

kd_queue_a() {
  run_arm kl_dense "${dense[@]}"
  run_arm kl_top5 "${dense[@]}" loss.signal.dense_top_k=5
}
kd_queue_b() {
  run_arm kl_top20 "${dense[@]}" loss.signal.dense_top_k=20
  run_arm on_policy "${dense[@]}" loss.on_policy.fraction=0.5
}
stamp "3/3 the four KD arms, two at a time (seeds $SEEDS)"
both kd_queue_a kd_queue_b

# The dense KL needs the teacher's ids to be the student's: both vocabularies are built from the same rows.
for student in "$OUT"/students/*/0/student; do
  cmp -s "$student/tokenizer.json" "$TEACHER/tokenizer.json" ||
    { echo "vocabulary of $student differs from the teacher's" >&2; exit 1; }
done
stamp "teacher:"
"$PY" -m mwp.report "$OUT/teacher"
stamp "students (mean ± std over seeds):"
"$PY" -m mwp.report "$OUT/students" --aggregate seed --out "$OUT/report"
