"""Config helpers shared by the CLI and the tests: resolvers and checks Hydra cannot do itself."""

from __future__ import annotations

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError

from mwp.data.datamodule import EVAL_FORMATS
from mwp.data.formats import FORMATS
from mwp.paths import default_data_dir, default_models_dir

STEPS = ("distill", "train", "evaluate")


def register_resolvers() -> None:
    if not OmegaConf.has_resolver("mwp.data_dir"):
        OmegaConf.register_new_resolver("mwp.data_dir", lambda: str(default_data_dir()))
    if not OmegaConf.has_resolver("mwp.models_dir"):
        OmegaConf.register_new_resolver("mwp.models_dir", lambda: str(default_models_dir()))


def validate(cfg: DictConfig) -> None:
    """Range and consistency checks, each naming the offending key."""
    steps = list(cfg.stage.steps)
    bad = [s for s in steps if s not in STEPS]
    if bad or not steps:
        raise ValueError(f"stage.steps={steps}: each step must be one of {list(STEPS)}")
    d = cfg.data
    for key in ("batch_size", "eval_batch_size", "max_source_len", "max_target_len", "max_new_tokens"):
        if d[key] < 1:
            raise ValueError(f"data.{key} must be >= 1, got {d[key]}")
    if d.eval_format not in EVAL_FORMATS:
        raise ValueError(f"data.eval_format must be one of {list(EVAL_FORMATS)}, got {d.eval_format!r}")
    unknown = [f for f in d.formats if f not in FORMATS]
    if unknown or not d.formats:
        raise ValueError(f"data.formats={list(d.formats)}: each must be one of {list(FORMATS)}")
    if not 0 <= d.val_fraction < 1:
        raise ValueError(f"data.val_fraction must be in [0, 1), got {d.val_fraction}")
    if d.num_exemplars < 0:
        raise ValueError(f"data.num_exemplars must be >= 0, got {d.num_exemplars}")
    if cfg.evaluation.limit is not None and cfg.evaluation.limit < 1:
        raise ValueError(f"evaluation.limit must be >= 1 or null, got {cfg.evaluation.limit}")
    accumulate = cfg.trainer.get("accumulate_grad_batches", 1)
    if not isinstance(accumulate, int) or accumulate < 1:
        raise ValueError(f"trainer.accumulate_grad_batches must be an integer >= 1, got {accumulate!r}")
    validate_loss(cfg)


SIGNAL_SOURCES = ("sparse", "dense")


def validate_loss(cfg: DictConfig) -> None:
    """`loss.terms` through `LossTerm.from_config`, and `loss.signal` where a term needs a teacher."""
    from mwp.student.losses import terms_from_config

    loss = cfg.get("loss")
    if loss is None or "terms" not in loss:
        raise ValueError("loss.terms is missing: pick a loss group option (loss=ce, loss=ce_kl, ...)")
    terms = terms_from_config(OmegaConf.to_container(loss.terms, resolve=True))  # type: ignore[arg-type]
    if not any(t.needs_teacher for t in terms):
        return
    from mwp.signals.build import MISSING_CHOICES

    try:
        signal = loss.signal
        source, missing = signal.source, signal.missing
    except (ConfigKeyError, AttributeError) as err:
        raise ValueError(f"loss.signal is incomplete ({err}); see conf/loss/ce.yaml") from err
    if source not in SIGNAL_SOURCES:
        raise ValueError(f"loss.signal.source must be one of {list(SIGNAL_SOURCES)}, got {source!r}")
    if source == "dense" and not signal.get("teacher_model"):
        raise ValueError("loss.signal.source=dense needs loss.signal.teacher_model (a T5 checkpoint folder)")
    if missing not in MISSING_CHOICES:
        raise ValueError(f"loss.signal.missing must be one of {list(MISSING_CHOICES)}, got {missing!r}")
    if source == "sparse" and missing == "score" and not signal.get("scorer"):
        raise ValueError("loss.signal.missing=score needs loss.signal.scorer (a local causal LM)")


register_resolvers()
