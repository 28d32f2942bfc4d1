"""Build a teacher from its config group (`conf/teacher/*.yaml`) with `hydra.utils.instantiate`.

A teacher config is the backend's constructor arguments under its `_target_`, plus the sampling
parameters (`SamplingParams`) and, for live backends, the completion cache settings. A new backend
is one class and one YAML file; the class is imported only when a config names it, so a recorded
run never imports an HTTP client or a model library.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import fields
from pathlib import Path
from typing import Any

from hydra.errors import InstantiationException
from hydra.utils import instantiate

from mwp.config.schema import TeacherConfig
from mwp.config.schema.teacher import BatchFileTeacherConfig, OpenAITeacherConfig, RecordedTeacherConfig
from mwp.teachers.base import SamplingParams, Teacher, TeacherError

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
    try:
        teacher: Teacher = instantiate(arguments, _convert_="all")
    except InstantiationException as err:
        # The backend's own error (an unset key variable, a missing file) says what to fix; Hydra's
        # wrapper only adds its own lines around it.
        if isinstance(err.__cause__, Exception):
            raise err.__cause__ from None
        raise
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


def input_problems(cfg: TeacherConfig, split: str) -> list[str]:
    """What would stop the configured teacher before its first sample, found without building it:
    an unset API key variable, a recording's or batch file's missing files. One line each."""
    problems = []
    key_env = cfg.api_key_env if isinstance(cfg, OpenAITeacherConfig) and cfg.api_key_required else None
    if key_env and not os.environ.get(key_env):
        problems.append(
            f"teacher.api_key_env={key_env!r}: that environment variable is not set (needed for "
            f"{getattr(cfg, 'base_url', None) or 'https://api.openai.com/v1'}; set "
            "teacher.api_key_required=false for a server without keys)"
        )
    if isinstance(cfg, RecordedTeacherConfig):
        folder = Path(cfg.path)
        if not folder.is_dir():
            problems.append(f"teacher.path={cfg.path!r}: no such folder (the recorded teacher's files)")
        else:
            files = [cfg.inputs.get(split), *cfg.completions.get(split, [])]
            problems += [
                f"teacher.path: {folder / name} does not exist (named by teacher.inputs/completions)"
                for name in files
                if name and not (folder / name).is_file()
            ]
    if isinstance(cfg, BatchFileTeacherConfig):
        for key in ("results", "requests"):
            value = getattr(cfg, key)
            if value and not Path(value).is_file():
                problems.append(f"teacher.{key}={value!r}: no such file")
    return problems


def connection_problem(cfg: TeacherConfig) -> str | None:
    """Why a teacher behind an OpenAI-compatible API cannot serve a run (its GET /models preflight:
    refused connection, rejected key, no API at base_url), or None. Only with `teacher.preflight`."""
    if not isinstance(cfg, OpenAITeacherConfig) or not cfg.preflight:
        return None
    conf = cfg.arguments()
    arguments = {k: v for k, v in conf.items() if k not in SAMPLING_KEYS and k not in CACHE_KEYS}
    teacher = None
    try:
        teacher = build_teacher(arguments)
        check = getattr(teacher, "check", None)
        if check is not None:
            check()
    except TeacherError as err:
        return str(err)
    finally:
        if teacher is not None:
            teacher.close()
    return None
