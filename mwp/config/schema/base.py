"""What every config section shares: unknown keys are errors, values are checked, every field has help.

A section also says which of its values determine what a stage computes (`settings`, the stage
cache's key) and which only change how it runs (fields declared with `operational=True`: progress
bars, HTTP concurrency, retries), and hands a constructor the values the user set (`arguments`).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

# Keys naming where a run writes (its own folder), wherever they appear: never part of what a stage computes.
RUN_FOLDER_KEYS = frozenset({"dirpath", "save_dir", "default_root_dir"})


def help_field(default: Any = ..., help: str = "", *, operational: bool = False, **constraints: Any) -> Any:
    """A field with a help string (the TRL `metadata={"help": ...}` convention, pydantic-style).

    `operational=True`: the value changes how a stage runs, never what it writes (left out of `settings`).
    """
    extra = {"operational": True} if operational else None
    return Field(default, description=help, json_schema_extra=extra, **constraints)


class Section(BaseModel):
    """A config group: unknown keys are errors, values are checked, nothing is coerced silently."""

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)
    # Undeclared keys a section allows (`extra="allow"`) that are operational too.
    operational_extras: ClassVar[frozenset[str]] = frozenset()

    def arguments(self) -> dict[str, Any]:
        """The values the user set, under their config names (`_target_` too): what a constructor or
        `hydra.utils.instantiate` receives; unset keys keep the constructor's own defaults."""
        return self.model_dump(by_alias=True, exclude_unset=True)

    def settings(self) -> dict[str, Any]:
        """Every value that determines a stage's output, defaults included, as plain JSON data: the
        section without its operational keys and without run-folder paths."""
        return _settings(self, self.model_dump(mode="json", by_alias=True))


class OpenSection(Section):
    """A `_target_` mapping whose remaining keys are the constructor's arguments."""

    model_config = ConfigDict(extra="allow", frozen=True, populate_by_name=True)
    target: str = help_field(alias="_target_", help="the class or function hydra.utils.instantiate calls")


def is_operational(section: type[BaseModel], name: str) -> bool:
    info = section.model_fields.get(name)
    extra = info.json_schema_extra if info is not None else None
    if isinstance(extra, dict) and extra.get("operational"):
        return True
    return name in getattr(section, "operational_extras", ())


def _settings(model: BaseModel, dumped: dict[str, Any]) -> dict[str, Any]:
    kind = type(model)
    out: dict[str, Any] = {}
    for name, info in kind.model_fields.items():
        key = info.alias or name
        if is_operational(kind, name) or key in RUN_FOLDER_KEYS:
            continue
        out[key] = _value_settings(getattr(model, name), dumped[key])
    for name in model.model_extra or {}:
        if not is_operational(kind, name) and name not in RUN_FOLDER_KEYS:
            out[name] = _without_run_folders(dumped[name])
    return out


def _value_settings(value: Any, dumped: Any) -> Any:
    if isinstance(value, BaseModel):
        return _settings(value, dumped)
    if isinstance(value, dict):
        return {k: _value_settings(v, dumped[k]) for k, v in value.items() if k not in RUN_FOLDER_KEYS}
    if isinstance(value, list | tuple):
        return [_value_settings(v, d) for v, d in zip(value, dumped, strict=True)]
    return _without_run_folders(dumped)


def _without_run_folders(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_run_folders(v) for k, v in value.items() if k not in RUN_FOLDER_KEYS}
    if isinstance(value, list):
        return [_without_run_folders(v) for v in value]
    return value


def closest(name: str, choices: Iterable[str]) -> str:
    """ " (did you mean X?)" when a choice is spelt like `name`, else ""."""
    match = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.6)
    return f" (did you mean {match[0]}?)" if match else ""
