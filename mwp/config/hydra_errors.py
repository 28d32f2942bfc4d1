"""Hydra's and OmegaConf's composition errors as one line each, with the closest valid names.

Hydra answers a mistyped key or option with a block of text (the search path, every option one a
line, a hint to set HYDRA_FULL_ERROR); `explain` turns it into the line every other config error
gets: the key or `group=option` the user typed, what is wrong, and what is allowed ("did you mean
svamp?"). Every entry point that composes a config (`mwp`, `mwp-config`, batch export) uses it.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from hydra.errors import (
    HydraException,
    InstantiationException,
    MissingConfigException,
    OverrideParseException,
)
from omegaconf import DictConfig
from omegaconf.errors import OmegaConfBaseException

from mwp.config.schema.base import closest
from mwp.paths import REPO_ROOT

CONF_DIR = REPO_ROOT / "conf"
_QUOTED = re.compile(r"'([^']+)'")
_INTERPOLATION = re.compile(r"\$\{([^${}]+)\}")


def explain(err: BaseException, overrides: Sequence[str] = (), conf_dir: Path = CONF_DIR) -> list[str]:
    """One line per problem in a composition error (never empty)."""
    if isinstance(err, MissingConfigException) and err.missing_cfg_file and "/" in err.missing_cfg_file:
        group, _, option = err.missing_cfg_file.rpartition("/")
        options = sorted(err.options or ())
        return [
            f"{group}={option}: no such option{closest(option, options)}; {group} options: {', '.join(options)}"
        ]
    if isinstance(err, OverrideParseException):
        return [f"{err.override}: cannot parse this override ({_first_line(err.message)})"]
    if isinstance(err, InstantiationException) and err.__cause__ is not None:
        return [_first_line(str(err.__cause__)) or type(err.__cause__).__name__]
    cause = err.__cause__ if isinstance(err.__cause__, OmegaConfBaseException) else err
    key = getattr(cause, "full_key", None)
    if isinstance(cause, OmegaConfBaseException) and "not in struct" in str(cause) and key:
        suggestion = _closest_key(str(key), overrides, conf_dir)
        return [f"{key}: unknown key{suggestion or f' (to add a key, write +{key}=...)'}"]
    if isinstance(cause, OmegaConfBaseException):
        return [_interpolation_error(cause, overrides)]
    return [_first_line(str(err)) or type(err).__name__]


def is_composition_error(err: BaseException) -> bool:
    return isinstance(err, HydraException | OmegaConfBaseException)


def _first_line(text: str) -> str:
    return next((line.strip() for line in str(text).splitlines() if line.strip()), "")


def _interpolation_error(err: OmegaConfBaseException, overrides: Sequence[str]) -> str:
    """An unresolvable `${...}`: named by the override that wrote it when there is one."""
    message = _first_line(str(err))
    for missing in _QUOTED.findall(message):
        for override in overrides:
            key, _, value = override.partition("=")
            if missing in _INTERPOLATION.findall(value):
                return f"{key.lstrip('+~')}: {message}"
    key = getattr(err, "full_key", None)
    return f"{key}: {message}" if key else message


def _closest_key(key: str, overrides: Sequence[str], conf_dir: Path) -> str:
    """ " (did you mean X?)" among the keys beside `key` in the config the group choices compose."""
    parent, _, _ = key.rpartition(".")
    node: Any = _composed(overrides, conf_dir)
    for part in parent.split(".") if parent else ():
        node = node.get(part) if isinstance(node, DictConfig) else None
    if not isinstance(node, DictConfig):
        return ""
    siblings = [f"{parent}.{name}" if parent else str(name) for name in node]
    return closest(key, siblings)


def _composed(overrides: Sequence[str], conf_dir: Path) -> DictConfig | None:
    """The config of the command's group choices alone (`dataset=gsm8k`, not `optim.lr=...`)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    choices = [o for o in overrides if "=" in o and "." not in o.partition("=")[0] and not o.startswith("-")]
    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(str(conf_dir), version_base="1.3"):
            return compose("config", overrides=choices)
    except Exception:
        return None
    finally:
        GlobalHydra.instance().clear()
