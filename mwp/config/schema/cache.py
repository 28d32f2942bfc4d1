"""`cache`: the stage cache."""

from __future__ import annotations

from pydantic import ValidationInfo, field_validator

from mwp.config.schema.base import Section, closest, help_field
from mwp.config.schema.stage import pipeline_steps


class CacheConfig(Section):
    dir: str = help_field(
        help="the stage cache: every stage's output under <dir>/<stage>/<key> ($MWP_STAGE_CACHE, "
        "else <paths.log_dir>/cache)"
    )
    force: bool | list[str] = help_field(
        False,
        help="recompute instead of reusing: true = every stage, or a list of stages (each recomputes "
        "the stages after it too)",
    )

    @field_validator("force")
    @classmethod
    def _known_stages(cls, force: bool | list[str], info: ValidationInfo) -> bool | list[str]:
        if isinstance(force, list):
            known = pipeline_steps(info)
            for index, name in enumerate(force):
                if name not in known:
                    raise ValueError(
                        f"cache.force.{index}={name!r}: not a stage; stages: {list(known)}{closest(name, known)}"
                    )
        return force
