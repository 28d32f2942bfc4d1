#!/usr/bin/env bash
# Learning-rate grid with Hydra's basic sweeper (conf/hparams_search/lr.yaml).
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/mwp experiment=demo hparams_search=lr logger.wandb.group=lr "$@"
