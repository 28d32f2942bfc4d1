"""The schema of the composed config: one pydantic model per config group (one module each), checked once, up front.

Every field has a default (or is required), a help string (`mwp-config` prints them) and a range or
a set of choices. `mwp.config.validate` runs the whole composed config through `RunConfig` before
the first stage starts, so a mistake surfaces before any teacher call, model load or W&B run, and
the error names the full key (`data.batch_size`), the bad value and what is allowed. The validated
sections are what the stages and the objects they build receive.

Teacher backends are told apart by `_target_` (the class `hydra.utils.instantiate` builds); a
backend without a schema here still gets the sampling fields checked. Loggers and callbacks are
open `_target_` mappings: their constructors are the schema.
"""

from mwp.config.schema.base import OpenSection, Section, closest, help_field
from mwp.config.schema.cache import CacheConfig
from mwp.config.schema.data import DataConfig
from mwp.config.schema.dataset import DatasetConfig, DatasetSourceConfig, EvalSetConfig, SourceFieldsConfig
from mwp.config.schema.evaluation import BBHEvalConfig, EvaluationConfig
from mwp.config.schema.loss import (
    MISSING_SIGNAL,
    SIGNAL_ALIGNMENTS,
    SIGNAL_SOURCES,
    LossConfig,
    OnPolicyConfig,
    ScorerConfig,
    SignalConfig,
)
from mwp.config.schema.loss_terms import LossTerm, terms_from_config
from mwp.config.schema.optim import SCHEDULERS, OptimConfig
from mwp.config.schema.paths import PathsConfig
from mwp.config.schema.prompt import PromptConfig
from mwp.config.schema.refine import (
    REFINE_METHODS,
    EnumerationConfig,
    MiddleModelConfig,
    RefineConfig,
    TeacherFeedbackConfig,
)
from mwp.config.schema.run import RunConfig
from mwp.config.schema.stage import EXTRACTIONS, ChainConfig, StageConfig
from mwp.config.schema.student import PeftConfig, StudentConfig, StudentSizeConfig
from mwp.config.schema.teacher import (
    TEACHER_SCHEMAS,
    BatchFileTeacherConfig,
    CachedTeacherConfig,
    HFTeacherConfig,
    OpenAITeacherConfig,
    RecordedTeacherConfig,
    SimulatedTeacherConfig,
    TeacherConfig,
)
from mwp.config.schema.trainer import PRECISIONS, TrainerConfig

__all__ = [
    "EXTRACTIONS",
    "MISSING_SIGNAL",
    "PRECISIONS",
    "REFINE_METHODS",
    "SCHEDULERS",
    "SIGNAL_ALIGNMENTS",
    "SIGNAL_SOURCES",
    "TEACHER_SCHEMAS",
    "BBHEvalConfig",
    "BatchFileTeacherConfig",
    "CacheConfig",
    "CachedTeacherConfig",
    "ChainConfig",
    "DataConfig",
    "DatasetConfig",
    "DatasetSourceConfig",
    "EnumerationConfig",
    "EvalSetConfig",
    "EvaluationConfig",
    "HFTeacherConfig",
    "LossConfig",
    "LossTerm",
    "MiddleModelConfig",
    "OnPolicyConfig",
    "OpenAITeacherConfig",
    "OpenSection",
    "OptimConfig",
    "PathsConfig",
    "PeftConfig",
    "PromptConfig",
    "RecordedTeacherConfig",
    "RefineConfig",
    "RunConfig",
    "ScorerConfig",
    "Section",
    "SignalConfig",
    "SimulatedTeacherConfig",
    "SourceFieldsConfig",
    "StageConfig",
    "StudentConfig",
    "StudentSizeConfig",
    "TeacherConfig",
    "TeacherFeedbackConfig",
    "TrainerConfig",
    "closest",
    "help_field",
    "terms_from_config",
]
