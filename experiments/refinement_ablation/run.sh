#!/usr/bin/env bash
# From Large to Tiny's refinement ablation: distill only vs + middle-model search vs + teacher feedback vs
# + enumeration search, over seeds, on
#   (a) SVAMP with the recorded PaLM-540B teacher (teacher feedback is n/a there: a recording cannot
#       answer new prompts; run it with a live teacher, see conf/experiment/refinement_ablation_svamp.yaml),
#   (b) Math23K with the SIMULATED teacher (answers from gold equations at set error rates), or with
#       TEACHER=smollm2 a live local one (SmolLM2-135M-Instruct, offline on CPU) that writes the chain's
#       equations and answers the teacher-feedback arm itself;
# each a Hydra multirun (one W&B offline run per job, group = experiment, job_type = stage), then the
# report: a table per dataset that names its teacher (a simulated one as such) and who proposed each
# method's equations (step yields, failed/recovered per method and round, semantic precision, student
# accuracy per evaluation set with the most-frequent-template baseline, teacher calls, wall time) and
# PNG plots.
#   bash experiments/refinement_ablation/run.sh                        # SEEDS=1,2,3
#   SEEDS=1 bash experiments/refinement_ablation/run.sh debug=default  # a smoke run
#   DATASETS=svamp bash experiments/refinement_ablation/run.sh         # one half only
#   TEACHER=smollm2 DATASETS=math23k bash experiments/refinement_ablation/run.sh  # a live Math23K teacher
#   TEACHER=llamacpp LLAMACPP_URL=http://127.0.0.1:8000/v1 DATASETS=math23k bash experiments/...  # served
#   MIDDLE_MODEL=student bash experiments/refinement_ablation/run.sh   # the student's T5 as middle model
set -euo pipefail
cd "$(dirname "$0")/../.."
BIN=${BIN:-.venv/bin}
SEEDS=${SEEDS:-1,2,3}
DATASETS=${DATASETS:-svamp math23k}
OUT=${OUT:-outputs/refinement_ablation/$(date +%Y-%m-%d_%H-%M-%S)}
# one thread per job: small models on CPU train faster that way, and jobs can share the cores
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
# Math23K's teacher: simulated (default), smollm2 (live, in process) or llamacpp (live, a llama.cpp
# server already serving at LLAMACPP_URL, e.g. the same SmolLM2 GGUF; see conf/teacher/llamacpp.yaml):
# 2 samples of at most 64 tokens a problem (an equation is short, and a CPU takes seconds a call)
TEACHER=${TEACHER:-simulated}
case $TEACHER in
  simulated) MATH23K_TEACHER=() ;;
  smollm2) MATH23K_TEACHER=(teacher=smollm2 teacher.n=2 teacher.max_tokens=64) ;;
  llamacpp) MATH23K_TEACHER=(teacher=llamacpp "teacher.base_url=${LLAMACPP_URL:-http://127.0.0.1:8000/v1}"
                             "teacher.model=${LLAMACPP_MODEL:-smollm2}" teacher.n=2 teacher.max_tokens=64) ;;
  *) echo "TEACHER=$TEACHER: simulated, smollm2 or llamacpp" >&2; exit 2 ;;
esac
# The middle model: refine=middle_model's default (SmolLM2-135M-Instruct with LoRA), or MIDDLE_MODEL=<a
# student option> (e.g. t5_equation), or MIDDLE_MODEL=student (the run's student architecture). Set here,
# not as an override: `student@refine.middle_model.student=...` does not compose for the other methods.
case ${MIDDLE_MODEL:-} in
  "") MIDDLE=() ;;
  student) MIDDLE=(refine.middle_model.student=null) ;;
  *) MIDDLE=("student@refine.middle_model.student=$MIDDLE_MODEL") ;;
esac

declare -A METHODS=(
  [svamp]=none,middle_model,enumeration
  [math23k]=none,middle_model,teacher_feedback,enumeration
)
started=$(date +%s)
failed=()
for dataset in $DATASETS; do
  teacher=()
  [[ $dataset == math23k ]] && teacher=("${MATH23K_TEACHER[@]}")
  # One multirun per method (over the seeds): a method whose runs fail does not stop the others (with
  # a weak live teacher a distill can keep nothing, and then `none` has nothing to train on); its runs
  # are rows of the report with their status.
  for method in ${METHODS[$dataset]//,/ }; do
    middle=()
    [[ $method == middle_model ]] && middle=("${MIDDLE[@]}")
    "$BIN/mwp" -m "experiment=refinement_ablation_$dataset" "refine=$method" "seed=$SEEDS" \
      "hydra.sweep.dir=$OUT/$dataset/$method" ${teacher[@]+"${teacher[@]}"} ${middle[@]+"${middle[@]}"} "$@" \
      || failed+=("$dataset refine=$method")
  done
done
for dataset in $DATASETS; do
  echo
  # the report's first line names the teacher (from the runs' own stats, a simulated one as such)
  echo "== refinement ablation, $dataset$([[ $dataset == svamp ]] && echo ' (teacher feedback: n/a, a recording cannot answer new prompts)')"
  "$BIN/mwp-report" "$OUT/$dataset" --aggregate seed --out "$OUT/report/$dataset"
done
echo
echo "ablation wall time: $(( $(date +%s) - started )) s; runs and reports under $OUT"
if (( ${#failed[@]} )); then
  printf 'failed: %s\n' "${failed[@]}" >&2
  exit 1
fi
