"""The pipeline's stages, in the order they run: each a `Stage` object (`mwp.stages.base`).

`STAGES` is the one list of them: the pipeline loops over it, the config check (`load_config`) takes
its names (what `stage.steps` and `cache.force` may say), `mwp-cache` describes entries with it.
Stage modules import their heavy machinery when they run, so importing them stays cheap.
"""

from __future__ import annotations

from omegaconf import DictConfig

from mwp.config import validate
from mwp.config.schema import RunConfig
from mwp.stages.base import Stage, StageContext, StageError, StageInput
from mwp.stages.distill import DistillStage
from mwp.stages.evaluate import EvaluateStage
from mwp.stages.refine import RefineStage
from mwp.stages.train import TrainStage

STAGES: dict[str, Stage] = {
    stage.name: stage for stage in (DistillStage(), RefineStage(), TrainStage(), EvaluateStage())
}


def stage_names() -> tuple[str, ...]:
    return tuple(STAGES)


def load_config(cfg: DictConfig) -> RunConfig:
    """The composed config checked against the schema and these stages (`ConfigError` names every bad
    key): what the pipeline and `mwp-config --check` use. Imports no model library."""
    return validate(cfg, steps=stage_names())


__all__ = ["STAGES", "Stage", "StageContext", "StageError", "StageInput", "load_config", "stage_names"]
