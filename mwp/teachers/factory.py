"""Build a teacher from its config group (`conf/teacher/*.yaml`) with `hydra.utils.instantiate`.

A teacher config is the backend's constructor arguments under its `_target_`, plus the sampling
parameters (`SamplingParams`) and, for live backends, the completion cache settings. A new backend
is one class and one YAML file; the class is imported only when a config names it, so a recorded
run never imports an HTTP client or a model library.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import fields
from typing import Any

from hydra.utils import instantiate

from mwp.config.schema import TeacherConfig
from mwp.teachers.base import SamplingParams, Teacher

SAMPLING_KEYS = tuple(f.name for f in fields(SamplingParams))
CACHE_KEYS = ("cache", "cache_path")


def _as_dict(cfg: TeacherConfig | Mapping[str, Any]) -> dict[str, Any]:
    """The validated section's values as the user set them (the backend keeps its own defaults)."""
    return cfg.arguments() if isinstance(cfg, TeacherConfig) else dict(cfg)


def build_teacher(cfg: TeacherConfig | Mapping[str, Any]) -> Teacher:
    """The configured backend, wrapped in the completion cache when the config has `cache: true`."""
    conf = _as_dict(cfg)
    if "_target_" not in conf:
        raise ValueError(
            "teacher._target_ is missing: pick a teacher option (teacher=palm_svamp, smollm2, openai, ...)"
        )
    arguments = {k: v for k, v in conf.items() if k not in SAMPLING_KEYS and k not in CACHE_KEYS}
    teacher: Teacher = instantiate(arguments, _convert_="all")
    if any(k in conf for k in CACHE_KEYS):
        from mwp.teachers.completion_cache import with_cache

        teacher = with_cache(teacher, conf)
    return teacher


def sampling_params(cfg: TeacherConfig | Mapping[str, Any]) -> SamplingParams:
    """The sampling parameters of a teacher config (the validated values, defaults included)."""
    conf = cfg.model_dump() if isinstance(cfg, TeacherConfig) else dict(cfg)
    kwargs = {k: conf[k] for k in SAMPLING_KEYS if k in conf and conf[k] is not None}
    if "stop" in kwargs:
        kwargs["stop"] = tuple(kwargs["stop"])
    return SamplingParams(**kwargs)
