"""Build a teacher from its config group (`conf/teacher/*.yaml`): `backend` picks the class."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, OmegaConf

from mwp.teachers.base import SamplingParams, Teacher

# backend name -> "module:factory"; factories take the teacher config as a plain dict.
# Imported lazily so that a recorded run never imports an HTTP client or a model library.
BACKENDS: dict[str, str] = {
    "recorded": "mwp.teachers.recorded:RecordedTeacher.from_config",
    "openai": "mwp.teachers.openai_compat:OpenAITeacher.from_config",
    "hf": "mwp.teachers.hf:HFTeacher.from_config",
    "batch_file": "mwp.teachers.batch:BatchFileTeacher.from_config",
}

SAMPLING_KEYS = ("n", "temperature", "top_p", "max_tokens", "stop", "top_logprobs", "seed")


def _as_dict(cfg: DictConfig | Mapping[str, Any]) -> dict[str, Any]:
    if isinstance(cfg, DictConfig):
        return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    return dict(cfg)


def build_teacher(cfg: DictConfig | Mapping[str, Any]) -> Teacher:
    conf = _as_dict(cfg)
    backend = conf.get("backend")
    if backend not in BACKENDS:
        raise ValueError(f"teacher.backend={backend!r} is unknown; choose one of {sorted(BACKENDS)}")
    module_name, _, attr = BACKENDS[backend].partition(":")
    factory: Any = importlib.import_module(module_name)
    for part in attr.split("."):
        factory = getattr(factory, part)
    return factory(conf)


def sampling_params(cfg: DictConfig | Mapping[str, Any]) -> SamplingParams:
    conf = _as_dict(cfg)
    kwargs = {k: conf[k] for k in SAMPLING_KEYS if k in conf and conf[k] is not None}
    if "stop" in kwargs:
        kwargs["stop"] = tuple(kwargs["stop"])
    return SamplingParams(**kwargs)
