"""Checking the composed config: one call, `validate(cfg)`, before any stage does work.

`validate` resolves the config, runs it through the schema (`mwp.config.schema.RunConfig`) and
raises `ConfigError`, whose message has one line per problem: the full key, the value given and
what is allowed. Nothing here imports torch, Lightning or transformers, so a bad config fails in
milliseconds.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Iterator, Sequence
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from pydantic import BaseModel, ValidationError

from mwp.config.schema import TEACHER_SCHEMAS, OpenSection, RunConfig, TeacherConfig
from mwp.config.schema.teacher import teacher_config
from mwp.data.formats import ANSWER_ONLY, EQUATION
from mwp.paths import REPO_ROOT, default_data_dir, default_models_dir


class ConfigError(ValueError):
    """A config mistake; the message names the key(s). The CLI prints it as one line per problem."""


def register_resolvers() -> None:
    """The `${mwp.*:}` resolvers the config files use; called by the entry points before composing."""
    if not OmegaConf.has_resolver("mwp.data_dir"):
        OmegaConf.register_new_resolver("mwp.data_dir", lambda: str(default_data_dir()))
    if not OmegaConf.has_resolver("mwp.repo_root"):  # files shipped with the repository (fixtures)
        OmegaConf.register_new_resolver("mwp.repo_root", lambda: str(REPO_ROOT))
    if not OmegaConf.has_resolver("mwp.models_dir"):
        OmegaConf.register_new_resolver("mwp.models_dir", lambda: str(default_models_dir()))
    if not OmegaConf.has_resolver("mwp.val_format"):  # `data.eval_format: ${mwp.val_format:${data.formats}}`
        OmegaConf.register_new_resolver("mwp.val_format", validation_format)


def validation_format(formats: Any) -> str:
    """The validation format that fits training `formats`: equation for equation-only students,
    zero_shot_answer for answer-only ones, else zero_shot_cot (validation sources carry no exemplars)."""
    names = [str(f) for f in formats]
    if names and all(f == EQUATION for f in names):
        return EQUATION
    if names and all(f in ANSWER_ONLY for f in names):
        return "zero_shot_answer"
    return "zero_shot_cot"


def _key(loc: tuple[Any, ...]) -> str:
    # pydantic names union members and dataclass/function validators in the location: drop them.
    parts = [str(p) for p in loc if not (isinstance(p, str) and ("[" in p or p.startswith("function-")))]
    return ".".join(parts)


def _value_at(container: Any, loc: tuple[Any, ...]) -> tuple[bool, Any]:
    node = container
    for part in loc:
        if (isinstance(node, dict) and part in node) or (
            isinstance(node, list) and isinstance(part, int) and part < len(node)
        ):
            node = node[part]
        else:
            return False, None
    return True, node


# A message that already starts with a dotted key ("loss.signal.source=dense needs ...") is kept as it is.
_NAMES_A_KEY = re.compile(r"^[a-z_]+(\.[\w\[\]]+)+[:= ]")


def _messages(err: ValidationError, container: dict[str, Any]) -> Iterator[str]:
    for item in err.errors(include_url=False):
        loc = tuple(item["loc"])
        key = _key(loc)
        message = str(item["msg"]).removeprefix("Value error, ").removeprefix("Assertion failed, ")
        if key.startswith("loss.terms."):  # LossTerm names itself by term name; the index is clearer
            message = re.sub(r"^loss\.terms\.[^.\s]+\.", f"{key}.", message)
        if _NAMES_A_KEY.match(message):
            yield message
            continue
        if item["type"] in ("extra_forbidden", "unexpected_keyword_argument"):
            yield f"{key}: unknown key"
            continue
        if item["type"] == "missing":
            yield f"{key}: is required but not set"
            continue
        found, value = _value_at(container, tuple(p for p in loc if isinstance(p, int | str)))
        given = f" (got {value!r})" if found and not isinstance(value, dict | list) else ""
        yield f"{key}: {message}{given}" if key else message


def to_container(cfg: DictConfig) -> dict[str, Any]:
    """The config as plain data, resolved, without the `hydra` node; a missing value names its key."""
    try:
        container = OmegaConf.to_container(cfg, resolve=True, throw_on_missing=True)
    except OmegaConfBaseException as err:
        key = getattr(err, "full_key", None) or ""
        raise ConfigError(f"{key}: {type(err).__name__}: {str(err).splitlines()[0]}") from None
    assert isinstance(container, dict)
    container.pop("hydra", None)
    return container


def validate(cfg: DictConfig, *, steps: Sequence[str]) -> RunConfig:
    """The typed, checked run config; raises `ConfigError` naming every bad key.

    `steps` are the pipeline's stage names in order (`mwp.stages.STAGES`): what `stage.steps` and
    `cache.force` may name. The pipeline and `mwp-config` pass them (`mwp.stages.load_config`).
    """
    container = to_container(cfg)
    context = {"steps": tuple(steps)}
    try:
        return RunConfig.model_validate(container, context=context)
    except ValidationError as err:
        messages = list(dict.fromkeys(_messages(err, container)))
        messages += _errors_behind(err, container, context, messages)
        raise ConfigError("\n".join(messages)) from None


def _errors_behind(
    err: ValidationError, container: dict[str, Any], context: dict[str, Any], known: list[str]
) -> list[str]:
    """The errors the first ones hid: checks across sections run only once every value is valid, so
    the bad values are dropped (their defaults stand in) and the config is checked again."""
    found: list[str] = []
    trial = copy.deepcopy(container)
    dropped: set[str] = set()
    for _ in range(3):
        for item in err.errors(include_url=False):
            if item["type"] != "missing" and _drop(trial, tuple(item["loc"])):
                dropped.add(_key(tuple(item["loc"])))
        try:
            RunConfig.model_validate(trial, context=context)
            return found
        except ValidationError as again:
            err = again
        fresh = [
            message
            for item, message in zip(err.errors(include_url=False), _messages(err, trial), strict=False)
            if not (item["type"] == "missing" and _key(tuple(item["loc"])) in dropped)
            and message not in known
            and message not in found
        ]
        if not fresh:
            return found
        found += fresh
    return found


def _drop(container: dict[str, Any], loc: tuple[Any, ...]) -> bool:
    """Delete the value at `loc` (parts that are not keys, like pydantic's union tags, skipped)."""
    node: Any = container
    parts = [p for p in loc if isinstance(p, int | str)]
    for index, part in enumerate(parts):
        last = index == len(parts) - 1
        if isinstance(node, dict) and part in node:
            if last:
                del node[part]
                return True
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and part < len(node):
            if last:
                return False  # a list keeps its shape; its section's check reports it
            node = node[part]
    return False


def check_teacher(container: dict[str, Any]) -> TeacherConfig:
    """The `teacher` section alone, checked by its backend's schema (batch export composes no run);
    raises `ConfigError` naming every bad `teacher.*` key."""
    try:
        return teacher_config(container)
    except ValidationError as err:
        lines = [
            message if message.startswith("teacher.") else f"teacher.{message}"
            for message in _messages(err, container)
        ]
        raise ConfigError("\n".join(dict.fromkeys(lines))) from None


def describe(section: BaseModel, prefix: str = "") -> Iterator[tuple[str, Any, str]]:
    """(key, value, help) for every field of a validated section, nested sections expanded."""
    for name, info in type(section).model_fields.items():
        key = f"{prefix}{info.alias or name}"
        value = getattr(section, name)
        if isinstance(value, BaseModel):
            yield from describe(value, f"{key}.")
        elif (
            isinstance(value, dict) and value and all(isinstance(v, BaseModel | None) for v in value.values())
        ):
            for entry, sub in value.items():
                if sub is None:
                    yield f"{key}.{entry}", None, info.description or ""
                    continue
                yield from describe(sub, f"{key}.{entry}.")
                for extra, extra_value in (sub.model_extra or {}).items():
                    yield f"{key}.{entry}.{extra}", extra_value, ""
        else:
            yield key, value, info.description or ""
    if prefix and section.model_extra:
        for extra, extra_value in section.model_extra.items():
            if not isinstance(section, OpenSection):
                yield f"{prefix}{extra}", extra_value, "passed to the constructor"


__all__ = [
    "TEACHER_SCHEMAS",
    "ConfigError",
    "RunConfig",
    "check_teacher",
    "describe",
    "register_resolvers",
    "validate",
]
