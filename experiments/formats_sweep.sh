#!/usr/bin/env bash
# Fu et al. (2023), Table/§4: which data formats the student is tuned on.
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/mwp -m experiment=demo \
  'data.formats=[zero_shot_cot],[zero_shot_cot,zero_shot_answer],[zero_shot_cot,in_context_cot],[zero_shot_cot,zero_shot_answer,in_context_cot,in_context_answer]' \
  logger.wandb.group=formats "$@"
